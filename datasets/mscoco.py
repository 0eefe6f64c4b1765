"""MS-COCO (80 categories, 122,218 images with at least one category) with the HashNet protocol.

HashNet's protocol as used by HAG, ProS-GAN and CgAT (CgAT Sec. 4.1; spec 5.3): train2014 and val2014 combined,
images without a category removed, 5,000 random queries, the rest (117,218) as the database, and 10,000 training
images drawn from the database; mAP@5000. ProS-GAN's lists hold only the test and train files, so with those plus a
full list the database is the full list minus the test list.

The lists are read in either format: xunguangwang ``{test,database,train}_img.txt`` + ``_label.txt`` (0/1 rows),
or swuxyj/DeepHash-pytorch ``{test,database,train}.txt`` ("path l1 ... l80"). With only a full list
(``all.txt``, or ``all_img.txt`` + ``all_label.txt``) the split is built here with the sizes above (seeded). The
protocol removes unlabelled images, so an unlabelled row is an error by default. Image paths are relative to the
dataset folder (plus ``image_dir``); images stream from disk.
"""
from __future__ import annotations

import typing

import numpy as np

from benchmark import Dataset, Splits, load_lists, random_split

ALIASES = ("MS-COCO", "mscoco", "coco", "COCO")
HOW_TO_GET = ("Get train2014 and val2014 from https://cocodataset.org and the lists from "
              "github.com/swuxyj/DeepHash-pytorch (data/coco) or github.com/xunguangwang/ProS-GAN (data/MS-COCO, "
              "plus a full list for the database), into one folder.")


def build_split(labels: np.ndarray, seed: int, n_query: int = 5_000, n_train: int = 10_000) -> dict[str, np.ndarray]:
    """Random queries, the rest as the database, the training set drawn from the database (sorted indices)."""
    return random_split(len(labels), seed, n_query, n_train)


class MSCOCO(Dataset):
    """MS-COCO 2014 (Lin et al. 2014), 80 categories, multi-label; the HashNet split."""

    name = "mscoco"
    paper = ("Lin et al., Microsoft COCO, ECCV 2014; retrieval protocol of HashNet (ICCV 2017) as used by HAG "
             "(TCYB 2020), ProS-GAN (CVPR 2021) and CgAT (WWW 2023)")
    url = "https://cocodataset.org"
    num_classes: typing.ClassVar[int] = 80
    multi_label: typing.ClassVar[bool] = True
    protocol: typing.ClassVar[str] = (
        "122,218 labelled images; queries: 5,000 (test list); database: the rest (117,218; database list, or the "
        "full list minus the queries); train: 10,000 drawn from the database (train list); mAP@5000; split seed "
        "split_seed when built from a full list")

    topk: int = 5_000  # CgAT Sec. 4.1; DeepHash-pytorch config topK for coco
    zero_label: str = "error"  # error | drop | keep; the protocol removes unlabelled images (HAG Sec. IV-A)
    n_query: int = 5_000  # CgAT Sec. 4.1, ProS-GAN lists; full list only
    n_train: int = 10_000  # CgAT Sec. 4.1, HAG Sec. IV-A; full list only
    image_dir: str = ""  # sub-folder of the dataset folder that the list paths are relative to
    check_files: bool = True  # check at load time that every listed image exists
    duplicates: str = "error"  # error | keep: a path listed twice in one list (same labels) is kept
    paths_outside_folder: bool = False  # True: list paths may lead outside the dataset folder (absolute, ..)

    def load(self, data_root=None) -> Splits:
        return load_lists(self, data_root, ALIASES, HOW_TO_GET,
                          lambda labels: build_split(labels, self.split_seed, self.n_query, self.n_train))
