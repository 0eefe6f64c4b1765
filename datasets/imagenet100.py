"""ImageNet-100, HashNet's 100-class ImageNet subset, with the HashNet / DHTA protocol.

HashNet (ICCV 2017): the ImageNet training images of 100 classes form the database (about 128,000), their validation
images the 5,000 queries (50 per class), and 100 images per class from the database the 10,000 training images
(DHTA's lists; DeepHash-pytorch's lists draw 13,000: ``n_train=13000``). mAP@1000 (DHTA attack_imagenet.py R=1000;
DeepHash-pytorch topK 1000). Single-label: each row is one-hot over the 100 classes.

The lists are read in either format: xunguangwang ``{test,database,train}_img.txt`` + ``_label.txt`` (0/1 rows),
or swuxyj/DeepHash-pytorch/DHTA ``{test,database,train}.txt`` ("path l1 ... l100"); DHTA ships no database list,
so with its test and train lists plus a full list the database is the full list minus the test list. With only a
full list (``all.txt``, or ``all_img.txt`` + ``all_label.txt``) the split is built here per class with the sizes
above (seeded), which cannot tell validation from training images: the queries are a random 50 per class.
Image paths are relative to the dataset folder (plus ``image_dir``); images stream from disk.
"""
from __future__ import annotations

import typing

import numpy as np

from benchmark import Dataset, Splits, load_lists, seeded_permutation

ALIASES = ("imagenet", "ImageNet", "imagenet100", "ImageNet100")
HOW_TO_GET = ("Get the ILSVRC2012 images from https://image-net.org and the lists of the 100-class subset from "
              "github.com/swuxyj/DeepHash-pytorch (data/imagenet) or github.com/jiawangbai/DHTA-master "
              "(data/imagenet), into one folder.")


def build_split(labels: np.ndarray, seed: int, n_query: int = 5_000, n_train: int = 10_000) -> dict[str, np.ndarray]:
    """Per class (seeded): n_query/C queries and n_train/C training images; the database is all but the queries."""
    classes = labels.shape[1]
    if n_query % classes or n_train % classes:
        raise ValueError(f"n_query ({n_query}) and n_train ({n_train}) must be multiples of {classes}: the draw is "
                         f"per class")
    if not (labels.sum(axis=1) == 1).all():
        raise ValueError(f"row {np.flatnonzero(labels.sum(axis=1) != 1)[0]} of the full list is not one-hot")
    per_query, per_train = n_query // classes, n_train // classes
    order = seeded_permutation(len(labels), seed)
    query, train = [], []
    for label in range(classes):
        members = order[labels[order, label] > 0]
        if len(members) < per_query + per_train:
            raise ValueError(f"class {label} has {len(members)} images, fewer than {per_query} queries + "
                             f"{per_train} training images")
        query.append(members[:per_query])
        train.append(members[per_query:per_query + per_train])
    query = np.sort(np.concatenate(query))
    return {"query": query, "database": np.setdiff1d(np.arange(len(labels)), query),
            "train": np.sort(np.concatenate(train))}


class ImageNet100(Dataset):
    """ImageNet (Deng et al. 2009), HashNet's 100-class subset, single-label; the HashNet/DHTA split."""

    name = "imagenet100"
    paper = ("Deng et al., ImageNet, CVPR 2009; 100-class retrieval protocol of HashNet (ICCV 2017) as used by "
             "DHTA/P2P (ECCV 2020)")
    url = "https://image-net.org"
    num_classes: typing.ClassVar[int] = 100
    protocol: typing.ClassVar[str] = (
        "100 ImageNet classes; queries: 5,000 (50/class validation images, test list); database: the classes' "
        "training images (about 128,000; database list, or the full list minus the queries); train: 10,000 from the "
        "database (100/class, train list; DeepHash-pytorch: 13,000); mAP@1000; split seed split_seed when built "
        "from a full list")

    topk: int = 1_000  # DHTA attack_imagenet.py R = 1000; DeepHash-pytorch topK for imagenet
    zero_label: str = "error"  # error | drop | keep; every ImageNet image has a class
    n_query: int = 5_000  # HashNet/DHTA/DeepHash-pytorch test lists; full list only
    n_train: int = 10_000  # DHTA train list (DeepHash-pytorch: 13,000); full list only
    image_dir: str = ""  # sub-folder of the dataset folder that the list paths are relative to
    check_files: bool = True  # check at load time that every listed image exists
    duplicates: str = "error"  # error | keep: a path listed twice in one list (same labels) is kept
    paths_outside_folder: bool = False  # True: list paths may lead outside the dataset folder (absolute, ..)

    def load(self, data_root=None) -> Splits:
        return load_lists(self, data_root, ALIASES, HOW_TO_GET,
                          lambda labels: build_split(labels, self.split_seed, self.n_query, self.n_train))
