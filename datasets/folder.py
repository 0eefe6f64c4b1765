"""Your own data folder, without code: an ImageFolder tree, DeepHash-pytorch/HashNet list files, or ProS-GAN/CgAT
list pairs, recognised automatically (``benchmark.data.layouts``: the layouts, the refusals, the seeded split).

    python bench.py --grid my.toml --set datasets.folder.path=/data/my_coco     # a grid block: dataset = "folder"
    python bench.py splits card /data/my_coco                                   # the card without a run

``path`` is the folder; a relative one is read under --data-root / $HASHBENCH_DATA when either is given, else from
the current folder. On load the card is logged: counts per split, classes, labels per image, the relevance base
rate, the share of queries with fewer than 10 relevant items, and which registered list each split is
(``benchmark/data/split_registry.json``). Images stream from disk, resized to 256 and centre-cropped to 224.
"""
from __future__ import annotations

import typing
from pathlib import Path
from typing import Annotated

from benchmark import Dataset, Range, Splits, folder_splits, given_data_roots


class Folder(Dataset):
    """A data folder in one of the recognised layouts; the classes and the split come from the folder."""

    name = "folder"
    paper = ("your own data: an ImageFolder tree, DeepHash-pytorch/HashNet list files (test/database/train.txt) or "
             "ProS-GAN/CgAT list pairs (*_img.txt + *_label.txt)")
    url = ""
    protocol: typing.ClassVar[str] = (
        "the folder's own lists (query = test list or query/ folder); an ImageFolder tree or a full list is split "
        "here: per class (single-label) or overall, query_share of a split_seed permutation as queries, the rest "
        "the database, train_share of the database as the training set; mAP over topk (0 = the whole database)")

    path: str = ""  # the data folder; relative: under --data-root / $HASHBENCH_DATA when given
    topk: int = 0  # 0 = the whole database
    query_share: Annotated[float, Range(0, 1)] = 0.1  # drawn splits only
    train_share: Annotated[float, Range(0, 1, low_open=True)] = 1.0  # drawn splits only; 1 = the whole database
    zero_label: str = "error"  # error | drop | keep
    image_dir: str = ""  # sub-folder of the data folder that the list paths are relative to
    check_files: bool = True  # check at load time that every listed image exists
    duplicates: str = "error"  # error | keep: a path listed twice in one list (same labels) is kept
    paths_outside_folder: bool = False  # True: list paths may lead outside the data folder (absolute, ..)

    def folder(self, data_root=None) -> Path:
        if not self.path:
            raise ValueError("datasets.folder.path is not set; give the data folder, e.g. --set "
                             "datasets.folder.path=/data/my_set")
        path = Path(self.path).expanduser()
        if path.is_absolute():
            return path
        roots = given_data_roots(data_root)
        return (roots[0][1] / path) if roots else path.resolve()

    def load(self, data_root=None) -> Splits:
        return folder_splits(self, self.folder(data_root))
