"""NUS-WIDE, the 21 most frequent concepts (195,834 images), with the DeepHash-pytorch / ProS-GAN protocol.

2,100 queries (100 per concept), the rest as the database, and 10,500 training images (500 per concept) that
are part of the database; mAP@5000 (CgAT Sec. 4.1; DeepHash-pytorch's topK for NUS-WIDE). ProS-GAN's and
DeepHash-pytorch's lists follow these sizes with different random draws; ProS-GAN ships no database list, so with
only its test and train lists plus a full list the database is the full list minus the test list (spec 5.2).

The lists are read in either format: xunguangwang ``{test,database,train}_img.txt`` + ``_label.txt`` (0/1 rows),
or swuxyj/DeepHash-pytorch ``{test,database,train}.txt`` ("path l1 ... l21"). With only a full list
(``all.txt``, or ``all_img.txt`` + ``all_label.txt``) the split is built here by DeepHash-pytorch's per-concept
quota rule over a seeded permutation (``build_split``). Every image of the 21-concept subset has a concept, so an
unlabelled row is an error by default. Image paths are relative to the dataset folder (plus ``image_dir``);
images stream from disk.
"""
from __future__ import annotations

import typing

import numpy as np

from benchmark import Dataset, Splits, load_lists, seeded_permutation

ALIASES = ("NUS-WIDE", "nuswide_21", "nus_wide", "nuswide", "NUS_WIDE")
HOW_TO_GET = ("Get the images (NUS-WIDE.tar.gz, e.g. via github.com/TreezzZ/DSDH_PyTorch) and the lists from "
              "github.com/swuxyj/DeepHash-pytorch (data/nuswide_21) or github.com/xunguangwang/ProS-GAN "
              "(data/NUS-WIDE, plus a full list for the database), into one folder.")


def build_split(labels: np.ndarray, seed: int, query_quota: int = 100, train_quota: int = 500) -> dict[str, np.ndarray]:
    """DeepHash-pytorch's rule (data/nuswide_21/code.py): walk a seeded permutation; each image tries its concepts
    in index order and joins the training set (part of the database) for the first concept with training quota
    left, or the queries if that concept has only query quota left; images no concept takes are database only."""
    has = labels > 0
    left = {"train": np.full(labels.shape[1], train_quota), "query": np.full(labels.shape[1], query_quota)}
    role = np.zeros(len(labels), dtype=np.int8)  # 0 database, 1 query, 2 train (and database)
    for i in seeded_permutation(len(labels), seed):
        if not (left["train"].any() or left["query"].any()):
            break
        for concept in np.flatnonzero(has[i]):
            kind = "train" if left["train"][concept] else "query" if left["query"][concept] else None
            if kind:
                left[kind][concept] -= 1
                role[i] = 2 if kind == "train" else 1
                break
    for kind, quota in (("query", query_quota), ("train", train_quota)):
        short = np.flatnonzero(left[kind])
        if short.size:
            raise ValueError(f"concept {short[0]} fills only {quota - left[kind][short[0]]} of its {quota} {kind} "
                             f"places ({has[:, short[0]].sum()} images carry it)")
    return {"query": np.flatnonzero(role == 1), "database": np.flatnonzero(role != 1),
            "train": np.flatnonzero(role == 2)}


class NUSWIDE(Dataset):
    """NUS-WIDE (Chua et al. 2009), 21 most frequent concepts, multi-label; the DeepHash-pytorch/ProS-GAN split."""

    name = "nuswide"
    paper = ("Chua et al., NUS-WIDE, ACM CIVR 2009; retrieval protocol of DeepHash-pytorch (data/nuswide_21), "
             "ProS-GAN (CVPR 2021) and CgAT (WWW 2023)")
    url = "https://lms.comp.nus.edu.sg/wp-content/uploads/2019/research/nuswide/NUS-WIDE.html"
    num_classes: typing.ClassVar[int] = 21
    multi_label: typing.ClassVar[bool] = True
    protocol: typing.ClassVar[str] = (
        "21 most frequent concepts, 195,834 images; queries: 2,100 (100 per concept, test list); database: the "
        "rest (193,734; database list, or the full list minus the queries); train: 10,500 of the database (500 "
        "per concept, train list); mAP@5000; split seed split_seed when built from a full list")

    topk: int = 5_000  # CgAT Sec. 4.1; DeepHash-pytorch config topK for nuswide_21
    zero_label: str = "error"  # error | drop | keep; every image of the 21-concept subset has a concept
    query_quota: int = 100  # queries per concept (DeepHash-pytorch code.py; ProS-GAN Sec. 4.1: 2,100); full list only
    train_quota: int = 500  # training images per concept (code.py; CgAT: 10,500); full list only
    image_dir: str = ""  # sub-folder of the dataset folder that the list paths are relative to
    check_files: bool = True  # check at load time that every listed image exists
    duplicates: str = "error"  # error | keep: a path listed twice in one list (same labels) is kept
    paths_outside_folder: bool = False  # True: list paths may lead outside the dataset folder (absolute, ..)

    def load(self, data_root=None) -> Splits:
        return load_lists(self, data_root, ALIASES, HOW_TO_GET,
                          lambda labels: build_split(labels, self.split_seed, self.query_quota, self.train_quota))
