"""CIFAR-10 with the three retrieval protocols of DeepHash-pytorch (utils/tools.py ``cifar_dataset``).

All 60,000 images (the five training batches, then the test batch) are pooled, and each class is shuffled with the
split seed. Per class, the first images become queries, the next ones training images, the rest database:

* ``cifar10``:   100 queries and 500 training images per class (1,000 / 5,000); database = the other 54,000.
* ``cifar10-1``: the same draw; database = the other 59,000, training images included. This is also PPL's
  setting (AAAI 2021, Sec. Experiments: 59,000 database, 1,000 test), with 10,000 training points
  (``n_train=10000``); PPL draws them at random from the database, here they are drawn per class (1,000 each).
* ``cifar10-2``: 1,000 queries and 5,000 training images per class (10,000 / 50,000); database = the training set.

mAP is over the whole database. The images stay 32x32 in memory; the victim resizes inside the model. The pickled
batches (``cifar-10-batches-py``) are looked for under --data-root / $HASHBENCH_DATA when either is given (only
there), else in hashbench's download folder, where torchvision can fetch them if the network allows.
"""
from __future__ import annotations

import pickle
import typing
from pathlib import Path

import numpy as np
import torch

from benchmark import Dataset, DatasetNotFound, Splits, TensorImages, data_roots, given_data_roots, one_hot

DOWNLOAD_FOLDER = Path.home() / ".cache" / "hashbench" / "data"
BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
PROTOCOLS = {  # name -> (queries, training images) in total, and whether the database holds the rest, train, both
    "cifar10": (1_000, 5_000, "rest"),
    "cifar10-1": (1_000, 5_000, "rest+train"),
    "cifar10-2": (10_000, 50_000, "train"),
}


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One python-pickle batch as uint8 images (N, 3, 32, 32) and int64 labels (N,)."""
    try:
        with open(path, "rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
        data, labels = batch[b"data"], batch[b"labels"]
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a CIFAR-10 python batch (a pickled dict with b'data' and b'labels'): "
                         f"{type(exc).__name__}: {exc}") from None
    data = np.asarray(data, dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise ValueError(f"{path}: b'data' has shape {data.shape} for {len(labels)} labels; expected (N, 3072)")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: labels must lie in 0..9, found {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32), labels  # rows hold the red, green, blue 32x32 planes in turn


def find_folder(candidates: list[Path]) -> Path | None:
    for folder in candidates:
        if all((folder / name).is_file() for name in BATCHES):
            return folder
    return None


def try_download() -> Path | None:
    try:
        from torchvision.datasets import CIFAR10

        CIFAR10(str(DOWNLOAD_FOLDER), train=True, download=True)
    except Exception:
        return None
    return find_folder([DOWNLOAD_FOLDER / "cifar-10-batches-py"])


def build_split(labels: np.ndarray, protocol_name: str, seed: int, n_query: int = 0, n_train: int = 0,
                classes: int = 10) -> dict[str, np.ndarray]:
    """Sorted query/database/train indices into the pooled 60,000 images; 0 sizes mean the protocol's own."""
    if protocol_name not in PROTOCOLS:
        raise ValueError(f"unknown CIFAR-10 protocol {protocol_name!r}; choose one of {', '.join(PROTOCOLS)}")
    default_query, default_train, database = PROTOCOLS[protocol_name]
    n_query, n_train = n_query or default_query, n_train or default_train
    if n_query % classes or n_train % classes:
        raise ValueError(f"n_query ({n_query}) and n_train ({n_train}) must be multiples of {classes}: the draw is "
                         f"per class")
    per_query, per_train = n_query // classes, n_train // classes
    rng = np.random.default_rng(seed)
    parts: dict[str, list] = {"query": [], "train": [], "rest": []}
    for label in range(classes):
        members = rng.permutation(np.flatnonzero(labels == label))
        if len(members) < per_query + per_train:
            raise ValueError(f"class {label} has {len(members)} images, fewer than {per_query} queries + "
                             f"{per_train} training images")
        parts["query"].append(members[:per_query])
        parts["train"].append(members[per_query:per_query + per_train])
        parts["rest"].append(members[per_query + per_train:])
    split = {key: np.sort(np.concatenate(value)) for key, value in parts.items()}
    kept = [split[key] for key in database.split("+")]
    return {"query": split["query"], "database": np.sort(np.concatenate(kept)), "train": split["train"]}


class CIFAR10(Dataset):
    """CIFAR-10 (Krizhevsky 2009), 10 classes, 32x32 colour; DeepHash-pytorch's and PPL's retrieval splits."""

    name = "cifar10"
    paper = ("Krizhevsky, Learning Multiple Layers of Features from Tiny Images, 2009; retrieval protocols of "
             "DeepHash-pytorch (utils/tools.py cifar_dataset) and PPL (AAAI 2021)")
    url = "https://www.cs.toronto.edu/~kriz/cifar.html"
    num_classes: typing.ClassVar[int] = 10
    protocol: typing.ClassVar[str] = (
        "60,000 images pooled, per-class seeded draw (split_seed); protocol_name cifar10-1 (default): queries "
        "1,000 (100/class), train 5,000 (500/class), database the other 59,000 incl. train (PPL: n_train=10000); "
        "cifar10: database the 54,000 outside queries and train; cifar10-2: queries 10,000, train 50,000 = "
        "database; mAP over the whole database")
    channel_mean: typing.ClassVar[tuple] = (0.4914, 0.4822, 0.4465)  # over the 50,000 training images
    channel_std: typing.ClassVar[tuple] = (0.2470, 0.2435, 0.2616)

    protocol_name: str = "cifar10-1"  # cifar10 | cifar10-1 | cifar10-2 (DeepHash-pytorch); cifar10-1 is PPL's
    n_query: int = 0  # 0 = the protocol's (1,000; 10,000 for cifar10-2)
    n_train: int = 0  # 0 = the protocol's (5,000; 50,000 for cifar10-2); PPL uses 10,000 (Sec. Experiments)
    topk: int = 0  # 0 = the whole database (DeepHash-pytorch topK = -1 for cifar10)
    download: bool = True

    def locate(self, data_root) -> Path:
        candidates = []
        for root in data_roots(self.name, data_root, [DOWNLOAD_FOLDER]):
            candidates += [root, root / "cifar-10-batches-py"]
        candidates = list(dict.fromkeys(candidates))
        given = given_data_roots(data_root)
        folder = find_folder(candidates) or (not given and self.download and try_download())
        if not folder:
            searched = "\n  ".join(str(c) for c in candidates)
            download = ("not tried: only the data root given was searched" if given else
                        "tried and failed" if self.download else "disabled (download=False)")
            raise DatasetNotFound(
                f"CIFAR-10 python batches ({', '.join(BATCHES)}) were not found. Looked in:\n  {searched}\n"
                f"Get cifar-10-python.tar.gz from {self.url}, unpack it and pass --data-root FOLDER (or set "
                f"HASHBENCH_DATA); torchvision's download was {download}.")
        return folder

    def load(self, data_root=None) -> Splits:
        folder = self.locate(data_root)
        batches = [read_batch(folder / name) for name in BATCHES]
        images = torch.from_numpy(np.concatenate([images for images, _ in batches]))
        labels = np.concatenate([labels for _, labels in batches])
        index = build_split(labels, self.protocol_name, self.split_seed, self.n_query, self.n_train)
        pool = TensorImages(images, one_hot(labels, self.num_classes))
        return Splits(query=pool.subset(index["query"]), database=pool.subset(index["database"]),
                      train=pool.subset(index["train"]), topk=self.topk or None, num_classes=self.num_classes,
                      mean=self.channel_mean, std=self.channel_std,
                      notes={"folder": str(folder), "protocol_name": self.protocol_name}, folder=str(folder))
