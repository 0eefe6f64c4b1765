"""FashionMNIST with PPL's retrieval protocol (Zhang et al., AAAI 2021, Sec. Experiments).

The 10,000 test images are the queries, the 60,000 training images the database, and 10,000 of
those (a seeded draw) the training set. mAP is over the whole database. The IDX files are looked for
under --data-root / $HASHBENCH_DATA when either is given (and only there: a root that lacks them is an
error), else in Debian's dataset-fashion-mnist folder, then torchvision's download folder (downloading
there if the network allows).
"""
from __future__ import annotations

import gzip
import typing
import zlib
from typing import Annotated
from pathlib import Path

import numpy as np
import torch

from benchmark import (Dataset, DatasetNotFound, Range, Splits, TensorImages, data_roots, given_data_roots,
                       one_hot, seeded_permutation)

DEBIAN_FOLDER = Path("/usr/share/datasets/fashion-mnist")
DOWNLOAD_FOLDER = Path.home() / ".cache" / "hashbench" / "data"
FILES = {
    "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte",
}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a numpy array; a file that is not one raises ValueError naming it."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (EOFError, OSError, zlib.error) as exc:  # a truncated or corrupt .gz (gzip.BadGzipFile is an OSError)
        raise ValueError(f"{path} cannot be read ({type(exc).__name__}: {exc}); expected a complete "
                         f"{'gzipped ' if opener is gzip.open else ''}IDX file, as Debian's dataset-fashion-mnist "
                         f"or torchvision's download provides") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: expected {int(np.prod(shape))} values, found {array.size}")
    return array.reshape(shape)


def read_images(path: Path) -> np.ndarray:
    """(N, 28, 28) uint8 images of an IDX image file."""
    images = read_idx(path)
    if images.shape[1:] != (28, 28):
        raise ValueError(f"{path} holds an array of shape {images.shape}; FashionMNIST images are (N, 28, 28)")
    return images


def read_labels(path: Path, num_classes: int, count: int) -> np.ndarray:
    """(N,) class numbers of an IDX label file, each in 0..num_classes-1, one per image of its image file."""
    labels = read_idx(path)
    if labels.shape != (count,):
        raise ValueError(f"{path} holds labels of shape {labels.shape}; expected ({count},), one per image")
    bad = np.flatnonzero(labels >= num_classes)
    if bad.size:
        raise ValueError(f"{path}: label {labels[bad[0]]} of image {bad[0]} is not a class; FashionMNIST labels "
                         f"are 0..{num_classes - 1} (labels out of range: {bad.size})")
    return labels


def find_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_folder(candidates: list[Path]) -> Path | None:
    for folder in candidates:
        if all(find_file(folder, stem) for stem in FILES.values()):
            return folder
    return None


def try_download() -> Path | None:
    try:
        from torchvision.datasets import FashionMNIST as TorchvisionFashionMNIST

        TorchvisionFashionMNIST(str(DOWNLOAD_FOLDER), train=True, download=True)
        TorchvisionFashionMNIST(str(DOWNLOAD_FOLDER), train=False, download=True)
    except Exception:
        return None
    return find_folder([DOWNLOAD_FOLDER / "FashionMNIST" / "raw"])


class FashionMNIST(Dataset):
    """FashionMNIST (Xiao et al. 2017), 10 classes, 28x28 grey; the query/database/train split of PPL."""

    name = "fashion_mnist"
    paper = "Xiao, Rasul, Vollgraf, arXiv:1708.07747 (2017); retrieval protocol of PPL, AAAI 2021"
    url = "https://github.com/zalandoresearch/fashion-mnist"
    num_classes: typing.ClassVar[int] = 10
    protocol: typing.ClassVar[str] = ("queries: the 10,000 test images; database: the 60,000 training images; "
                                      "train: 10,000 of the database (seeded); mAP over the whole database")
    channel_mean: typing.ClassVar[tuple] = (0.2860,)
    channel_std: typing.ClassVar[tuple] = (0.3530,)

    n_train: Annotated[int, Range(1)] = 10_000
    topk: int = 0  # 0 = the whole database
    download: bool = True
    system_folder: str = str(DEBIAN_FOLDER)  # where Debian's dataset-fashion-mnist puts the files

    def locate(self, data_root) -> Path:
        """The folder of the IDX files: under --data-root / $HASHBENCH_DATA when given (only there), else
        Debian's folder or torchvision's download."""
        candidates = []
        for root in data_roots(self.name, data_root, [Path(self.system_folder), DOWNLOAD_FOLDER / "FashionMNIST" / "raw"]):
            candidates += [root, root / "raw", root / "FashionMNIST" / "raw", root / "fashion-mnist"]
        given = given_data_roots(data_root)
        folder = find_folder(candidates) or (not given and self.download and try_download())
        if not folder:
            searched = "\n  ".join(str(c) for c in dict.fromkeys(candidates))
            if given:
                fallback = (f"Only the data root given ({', '.join(option for option, _ in given)}) was searched; "
                            f"leave it out to use Debian's or torchvision's copy.")
            else:
                fallback = (f"torchvision's download was "
                            f"{'tried and failed' if self.download else 'disabled (download=False)'}.")
            raise DatasetNotFound(
                f"FashionMNIST IDX files ({', '.join(FILES.values())}, optionally .gz) were not found. Looked in:\n  "
                f"{searched}\nGet them with `apt-get install dataset-fashion-mnist` (Debian), or put them in a folder "
                f"and pass --data-root FOLDER (or set HASHBENCH_DATA). {fallback}")
        return folder

    def load(self, data_root=None) -> Splits:
        folder = self.locate(data_root)
        arrays = {}
        for part in ("train", "test"):
            images = read_images(find_file(folder, FILES[f"{part}_images"]))
            arrays[f"{part}_images"] = images
            arrays[f"{part}_labels"] = read_labels(find_file(folder, FILES[f"{part}_labels"]), self.num_classes,
                                                   len(images))
        database = TensorImages(torch.from_numpy(arrays["train_images"].copy()).unsqueeze(1),
                                one_hot(arrays["train_labels"], self.num_classes))
        query = TensorImages(torch.from_numpy(arrays["test_images"].copy()).unsqueeze(1),
                             one_hot(arrays["test_labels"], self.num_classes))
        train_index = np.sort(seeded_permutation(len(database), self.split_seed)[: self.n_train])
        return Splits(query=query, database=database, train=database.subset(train_index),
                      topk=self.topk or None, num_classes=self.num_classes,
                      mean=self.channel_mean, std=self.channel_std, notes={"folder": str(folder)},
                      folder=str(folder))
