"""FLICKR-25K (MIRFlickr-25K) with the ProS-GAN / CgAT retrieval protocol.

ProS-GAN (CVPR 2021, Sec. 4.1) and the xunguangwang lists (also used by CgAT, THA/ATRDH and SAAT): all 25,000
images with 38 labels (24 "potential" + 14 "relevant" annotations); 1,700 random queries, the other 23,300 images
as the database, and 5,000 training images drawn from the database. mAP@5000 by default (CgAT Sec. 4.1); ProS-GAN
reports mAP over the whole database (``topk=0``). CgAT's text says 1,000 queries, but its code reads these lists.

The published lists contain 381 database, 38 test and 95 train rows with no label, and the train list has 5,000
lines but 4,496 unique images (spec 5.1). Both are kept as published: ``zero_label="keep"`` (the count is
logged; an unlabelled query has no relevant item, so it scores AP 0 or is skipped by the evaluation's
zero-relevant rule, and an unlabelled database image is relevant to no query), and the
repeated train lines stay (``duplicates="keep"``; a repeat with other labels is an error, and ``"error"`` refuses
every repeat). ``zero_label="drop"`` removes the unlabelled rows, ``"error"`` refuses them.

The lists are read in either format: xunguangwang ``{test,database,train}_img.txt`` + ``_label.txt`` (0/1 rows),
or swuxyj/DeepHash-pytorch ``{test,database,train}.txt`` ("path l1 ... l38"). With only a full list
(``all.txt``, or ``all_img.txt`` + ``all_label.txt``) the split is built here with the sizes above (seeded).
Image paths are relative to the dataset folder (plus ``image_dir``); images stream from disk.
"""
from __future__ import annotations

import typing

import numpy as np

from benchmark import Dataset, Splits, load_lists, random_split

ALIASES = ("FLICKR-25K", "flickr25k", "mirflickr25k", "mirflickr", "flickr")
HOW_TO_GET = ("Get the images from https://press.liacs.nl/mirflickr/ (mirflickr25k.zip) and the lists from "
              "github.com/xunguangwang/ProS-GAN (data/FLICKR-25K) or github.com/swuxyj/DeepHash-pytorch "
              "(data/mirflickr), into one folder.")


def build_split(labels: np.ndarray, seed: int, n_query: int = 1_700, n_train: int = 5_000) -> dict[str, np.ndarray]:
    """Random queries, the rest as the database, the training set drawn from the database (sorted indices)."""
    return random_split(len(labels), seed, n_query, n_train)


class Flickr25K(Dataset):
    """MIRFlickr-25K (Huiskes and Lew 2008), 38 labels, multi-label; the ProS-GAN/CgAT split."""

    name = "flickr25k"
    paper = ("Huiskes and Lew, MIR Flickr, ACM MIR 2008; retrieval protocol of ProS-GAN (CVPR 2021) and CgAT "
             "(WWW 2023)")
    url = "https://press.liacs.nl/mirflickr/"
    num_classes: typing.ClassVar[int] = 38
    multi_label: typing.ClassVar[bool] = True
    protocol: typing.ClassVar[str] = (
        "queries: 1,700 images (test list); database: the other 23,300 (database list); train: 5,000 drawn from "
        "the database (train list, duplicates kept); mAP@5000 (CgAT; topk=0 gives ProS-GAN's whole-database mAP); "
        "unlabelled rows kept (zero_label=keep); split seed split_seed when built from a full list")

    topk: int = 5_000  # CgAT Sec. 4.1 "top 5000"; ProS-GAN Sec. 4.2 uses the whole database (0)
    zero_label: str = "keep"  # error | drop | keep; the published lists hold unlabelled rows (spec 5.1)
    n_query: int = 1_700  # ProS-GAN Sec. 4.1; used only when building the split from a full list
    n_train: int = 5_000  # ProS-GAN Sec. 4.1, CgAT Sec. 4.1; full list only
    image_dir: str = ""  # sub-folder of the dataset folder that the list paths are relative to
    check_files: bool = True  # check at load time that every listed image exists
    duplicates: str = "keep"  # error | keep (repeats whose labels agree); the published train list repeats 504 lines
    paths_outside_folder: bool = False  # True: list paths may lead outside the dataset folder (absolute, ..)

    def load(self, data_root=None) -> Splits:
        return load_lists(self, data_root, ALIASES, HOW_TO_GET,
                          lambda labels: build_split(labels, self.split_seed, self.n_query, self.n_train))
