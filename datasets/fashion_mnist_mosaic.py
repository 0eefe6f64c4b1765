"""FashionMNIST mosaics: a small multi-label retrieval set made of real FashionMNIST images (hashbench's own).

Each image is a 2x2 mosaic (56x56 grey) of FashionMNIST images, labelled with the multi-hot of the classes it
shows. A mosaic holds k distinct classes, k uniform in 1..max_classes: k classes are drawn without repeats, each
fills at least one cell, the other cells repeat one of them, the cells are shuffled, and each cell is a random
image of its class. So some mosaics are single-class and two mosaics can share one of several labels, as in
FLICKR-25K, NUS-WIDE and MS-COCO, at a size a CPU handles. Queries are built from the 10,000 test images, the
database from the 60,000 training images, and the training set is a seeded draw from the database; mAP is over
the whole database, relevance being "shares at least one class". The IDX files are found by the fashion_mnist
plugin (same data roots and download).
"""
from __future__ import annotations

import typing
from typing import Annotated
from pathlib import Path

import numpy as np
import torch

from benchmark import Dataset, Range, Registry, Splits, TensorImages, seeded_permutation

GRID = 2  # cells per side
CLASSES = 10


def draw_cells(source_labels: np.ndarray, n: int, max_classes: int, rng: np.random.Generator) -> np.ndarray:
    """(n, GRID*GRID) indices into the source images, row-major cells, following the rule in the docstring."""
    cells = GRID * GRID
    k = rng.integers(1, max_classes + 1, size=n)[:, None]
    classes = rng.random((n, CLASSES)).argsort(axis=1)  # each mosaic's classes in random order; it uses the first k
    position = np.arange(cells)[None, :]
    slot = np.where(position < k, position, (rng.random((n, cells)) * k).astype(np.int64))  # which of the k
    slot = np.take_along_axis(slot, rng.random((n, cells)).argsort(axis=1), axis=1)  # shuffle the cells
    cell_class = np.take_along_axis(classes, slot, axis=1)
    by_class = np.argsort(source_labels, kind="stable")
    count = np.bincount(source_labels, minlength=CLASSES)
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    pick = start[cell_class] + (rng.random((n, cells)) * count[cell_class]).astype(np.int64)
    return by_class[pick]


def assemble(images: torch.Tensor, cells: np.ndarray) -> torch.Tensor:
    """Mosaics (n, 1, 28*GRID, 28*GRID) from source images (N, 1, 28, 28) and cell indices (n, GRID*GRID)."""
    tiles = images[torch.from_numpy(cells)][:, :, 0]  # (n, cells, 28, 28)
    n, _, height, width = tiles.shape
    grid = tiles.reshape(n, GRID, GRID, height, width).permute(0, 1, 3, 2, 4)
    return grid.reshape(n, 1, GRID * height, GRID * width).contiguous()


def mosaic_labels(source_labels: np.ndarray, cells: np.ndarray) -> torch.Tensor:
    labels = np.zeros((len(cells), CLASSES), dtype=np.float32)
    np.put_along_axis(labels, source_labels[cells], 1.0, axis=1)
    return torch.from_numpy(labels)


class FashionMNISTMosaic(Dataset):
    """2x2 mosaics of FashionMNIST images (Xiao et al. 2017), 10 classes, multi-label; hashbench's CPU-sized set."""

    name = "fashion_mnist_mosaic"
    paper = ("Xiao, Rasul, Vollgraf, arXiv:1708.07747 (2017); hashbench's mosaic construction (multi-label stand-in "
             "for FLICKR-25K / NUS-WIDE / MS-COCO)")
    url = "https://github.com/zalandoresearch/fashion-mnist"
    num_classes: typing.ClassVar[int] = CLASSES
    multi_label: typing.ClassVar[bool] = True
    protocol: typing.ClassVar[str] = (
        "2x2 mosaics (56x56 grey) of FashionMNIST images with 1..max_classes distinct classes each (uniform), "
        "label = multi-hot of the classes shown; queries: 5,000 mosaics of test images; database: 20,000 mosaics "
        "of training images; train: 5,000 of the database; all drawn with split_seed; mAP over the whole database")

    n_query: Annotated[int, Range(1)] = 5_000  # hashbench's choice: a CPU evaluates 5,000 x 20,000 in seconds
    n_database: Annotated[int, Range(1)] = 20_000  # hashbench's choice
    n_train: Annotated[int, Range(1)] = 5_000  # hashbench's choice; drawn from the database as in PPL's FashionMNIST protocol
    max_classes: int = 4  # distinct classes per mosaic are uniform in 1..max_classes (at most 4 cells)
    topk: int = 0  # 0 = the whole database
    download: bool = True  # passed to the fashion_mnist plugin

    def load(self, data_root=None) -> Splits:
        if not 1 <= self.max_classes <= GRID * GRID:
            raise ValueError(f"{self.name}.max_classes must lie in 1..{GRID * GRID}; got {self.max_classes}")
        if self.n_train > self.n_database:
            raise ValueError(f"{self.name}: n_train ({self.n_train}) exceeds n_database ({self.n_database})")
        source_class = Registry.load_one("datasets", "fashion_mnist", Path(__file__).resolve().parent.parent)
        source_plugin = source_class.configure({"download": self.download})
        source = source_plugin.load(data_root)
        sets = {}
        for role, images, n, stream in (("query", source.query, self.n_query, 0),
                                        ("database", source.database, self.n_database, 1)):
            labels = images.labels.argmax(dim=1).numpy()
            cells = draw_cells(labels, n, self.max_classes, np.random.default_rng((self.split_seed, stream)))
            sets[role] = TensorImages(assemble(images.images, cells), mosaic_labels(labels, cells))
        train_index = np.sort(seeded_permutation(self.n_database, self.split_seed)[: self.n_train])
        return Splits(query=sets["query"], database=sets["database"], train=sets["database"].subset(train_index),
                      topk=self.topk or None, num_classes=self.num_classes, mean=source.mean, std=source.std,
                      notes={"source": source.notes.get("folder"), "grid": GRID}, folder=source.folder)
