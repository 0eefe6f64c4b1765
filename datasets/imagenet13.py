"""ImageNet-13, the 13-class ImageNet subset of PPL (Zhang, Huang, Xu, AAAI 2021, Sec. Experiments).

PPL: "a subset of 13 categories amounts to 16,900 samples to constitute the retrieval database, and 1,300 images
for testing"; 10,000 training points drawn at random from the database. Which 13 classes, and how the images were
drawn, is not published (no code was released), so the split comes from your lists. With only a full list
(``all.txt``, or ``all_img.txt`` + ``all_label.txt``) it is built here (seeded): per class 100 queries and up to
1,300 database images, then 10,000 training images drawn from the database. mAP is over the whole database
(PPL does not state a cut-off). Single-label: each row is one-hot over the 13 classes.

The lists are read in either format: xunguangwang ``{test,database,train}_img.txt`` + ``_label.txt`` (0/1 rows),
or swuxyj/DeepHash-pytorch ``{test,database,train}.txt`` ("path l1 ... l13"). Image paths are relative to the
dataset folder (plus ``image_dir``); images stream from disk.
"""
from __future__ import annotations

import typing

import numpy as np

from benchmark import Dataset, Splits, load_lists, seeded_permutation

ALIASES = ("imagenet13", "ImageNet13", "imagenet-13")
HOW_TO_GET = ("Get the ILSVRC2012 images of 13 classes from https://image-net.org and write a full list (all.txt: "
              "'path l1 ... l13' per line, paths relative to this folder); PPL published no list.")


def build_split(labels: np.ndarray, seed: int, query_per_class: int = 100, database_per_class: int = 1_300,
                n_train: int = 10_000) -> dict[str, np.ndarray]:
    """Per class (seeded): the first ``query_per_class`` images of a permutation are queries, the next ones up to
    ``database_per_class`` (0 = all the rest) the database; then ``n_train`` random database images train."""
    if not (labels.sum(axis=1) == 1).all():
        raise ValueError(f"row {np.flatnonzero(labels.sum(axis=1) != 1)[0]} of the full list is not one-hot")
    order = seeded_permutation(len(labels), seed)
    query, database = [], []
    for label in range(labels.shape[1]):
        members = order[labels[order, label] > 0]
        if len(members) <= query_per_class:
            raise ValueError(f"class {label} has {len(members)} images, too few for {query_per_class} queries and "
                             f"a database")
        query.append(members[:query_per_class])
        database.append(members[query_per_class:query_per_class + database_per_class if database_per_class else None])
    database = np.sort(np.concatenate(database))
    if n_train > len(database):
        raise ValueError(f"the database has {len(database)} images, fewer than n_train = {n_train}")
    train = database[np.random.default_rng((seed, 1)).permutation(len(database))[:n_train]]
    return {"query": np.sort(np.concatenate(query)), "database": database, "train": np.sort(train)}


class ImageNet13(Dataset):
    """ImageNet (Deng et al. 2009), PPL's 13-class subset, single-label."""

    name = "imagenet13"
    paper = "Deng et al., ImageNet, CVPR 2009; 13-class retrieval protocol of PPL (Zhang, Huang, Xu, AAAI 2021)"
    url = "https://image-net.org"
    num_classes: typing.ClassVar[int] = 13
    protocol: typing.ClassVar[str] = (
        "13 ImageNet classes (PPL; classes unpublished); queries: 1,300 (100/class, test list); database: 16,900 "
        "(1,300/class, database list); train: 10,000 drawn from the database (train list); mAP over the whole "
        "database; split seed split_seed when built from a full list")

    topk: int = 0  # 0 = the whole database; PPL states no cut-off
    zero_label: str = "error"  # error | drop | keep; every ImageNet image has a class
    query_per_class: int = 100  # PPL: 1,300 test images over 13 classes; full list only
    database_per_class: int = 1_300  # PPL: 16,900 database images over 13 classes; 0 = all the rest; full list only
    n_train: int = 10_000  # PPL: 10,000 training points from the database; full list only
    image_dir: str = ""  # sub-folder of the dataset folder that the list paths are relative to
    check_files: bool = True  # check at load time that every listed image exists
    duplicates: str = "error"  # error | keep: a path listed twice in one list (same labels) is kept
    paths_outside_folder: bool = False  # True: list paths may lead outside the dataset folder (absolute, ..)

    def load(self, data_root=None) -> Splits:
        return load_lists(self, data_root, ALIASES, HOW_TO_GET,
                          lambda labels: build_split(labels, self.split_seed, self.query_per_class,
                                                     self.database_per_class, self.n_train))
