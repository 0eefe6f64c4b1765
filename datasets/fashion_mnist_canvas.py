"""FashionMNIST canvases: a multi-label stand-in for NUS-WIDE (and FLICKR-25K, MS-COCO) chosen by its label
statistics (hashbench's own construction).

Each image is a 64x64 grey canvas holding 1..max_items FashionMNIST items (28x28, uniform in number) at uniform
random positions, composited by the pixel-wise maximum (items overlap as objects occlude each other). The 20
concepts are the 10 classes upright and turned a quarter turn (concept = class + 10 * turned); a canvas's items
are distinct concepts drawn without replacement with Zipf weights rank**-zipf_exponent over a fixed order of the
concepts (``CONCEPT_ORDER``), and its label is the multi-hot of its concepts. Queries are built from the 10,000
test images, the database from the 60,000 training images, the training set is a seeded draw from the
database; mAP over the whole database, relevance "shares at least one concept".

The defaults were chosen by label statistics alone (never by an attack's outcome), against the NUS-WIDE-21 lists
of DeepHash-pytorch (data/nuswide_21: test 2,100 x train 10,500) and ProS-GAN (data/NUS-WIDE: train 10,500),
and beside them MS-COCO's (DeepHash-pytorch data/coco and ProS-GAN data/MS-COCO: test 5,000 x train 10,000),
computed with ``python tools/label_statistics.py`` (README, "Datasets"); a sample of 2,000 queries x 8,000
database images at split_seed 0:

| statistic                          | this set | mosaics | NUS-WIDE-21 | MS-COCO | FLICKR-25K |
|------------------------------------|----------|---------|-------------|---------|------------|
| concepts                           | 20       | 10      | 21          | 80      | 38         |
| labels per image                   | 2.50     | 2.50    | 2.85-2.99   | 2.93    | 4.71-4.77  |
| relevance base rate (random pair)  | 0.42     | 0.50    | 0.42-0.44   | 0.35    | 0.53       |
| median query's share relevant      | 0.44     | 0.46    | 0.53-0.55   | 0.54    | 0.57       |
| queries with < 5% relevant         | 0.00     | 0.00    | 0.00        | 0.22    | 0.02       |
| queries with < 20% relevant        | 0.19     | 0.00    | 0.25-0.28   | 0.43    | 0.04       |
| most frequent concept's share      | 0.44     | 0.26    | 0.48-0.50   | 0.54    | 0.41-0.42  |
| second concept's share             | 0.30     | 0.25    | 0.37-0.38   | 0.11    | 0.40       |
| median concept's share             | 0.08     | 0.25    | 0.10        | 0.027   | 0.080      |

(ranges: the two repositories' lists; FLICKR-25K: test x database lists of both. NUS-WIDE's lists are drawn
by per-concept quotas, which flattens their concept frequencies, and its database list is not published, so its
training list stands for the database.) MS-COCO's one dominant concept (person) and its 80 concepts are beyond
20 concepts of 2.5 labels: no Zipf exponent gives both its base rate and its 22% of queries with under 5%
relevant, so this set follows NUS-WIDE-21, the dataset of most of the multi-label tables. The mosaics match the
base rate nearly as well; what they lack is the spread (no query has under 20% relevant) and the skew.
``tests/test_fashion_mnist_canvas.py`` keeps the figures within stated bounds. The IDX files are found by the
fashion_mnist plugin (same data roots and download).
"""
from __future__ import annotations

import typing
from pathlib import Path
from typing import Annotated

import numpy as np
import torch

from benchmark import Dataset, Range, Registry, Splits, TensorImages, seeded_permutation

CLASSES = 10
TURNS = 2  # upright, a quarter turn
CONCEPTS = CLASSES * TURNS
ITEM = 28  # FashionMNIST's side
# The concepts from most to least frequent: a fixed shuffle (numpy's PCG64 with seed 20), so that the frequent
# concepts mix classes and turns; part of the construction, the same for every split_seed.
CONCEPT_ORDER = tuple(int(c) for c in np.random.default_rng(20).permutation(CONCEPTS))


def concept_weights(zipf_exponent: float) -> np.ndarray:
    """(CONCEPTS,) the draw weight of each concept: rank ** -zipf_exponent at its rank in CONCEPT_ORDER."""
    weights = np.empty(CONCEPTS)
    weights[list(CONCEPT_ORDER)] = np.arange(1, CONCEPTS + 1, dtype=np.float64) ** -zipf_exponent
    return weights / weights.sum()


def draw_concepts(n: int, max_items: int, zipf_exponent: float, rng: np.random.Generator) -> np.ndarray:
    """(n, max_items) concepts of each canvas, -1 past its item count: the count uniform in 1..max_items, the
    concepts distinct, drawn without replacement with the Zipf weights (the Gumbel top-k trick)."""
    count = rng.integers(1, max_items + 1, size=n)
    keys = np.log(concept_weights(zipf_exponent))[None, :] + rng.gumbel(size=(n, CONCEPTS))
    concepts = np.argsort(-keys, axis=1)[:, :max_items]
    return np.where(np.arange(max_items)[None, :] < count[:, None], concepts, -1)


def draw_sources(source_labels: np.ndarray, concepts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n, max_items) a random source image of each item's class (-1 where there is no item)."""
    by_class = np.argsort(source_labels, kind="stable")
    count = np.bincount(source_labels, minlength=CLASSES)
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    item_class = np.where(concepts >= 0, concepts % CLASSES, 0)
    pick = start[item_class] + (rng.random(concepts.shape) * count[item_class]).astype(np.int64)
    return np.where(concepts >= 0, by_class[pick], -1)


def assemble(images: np.ndarray, concepts: np.ndarray, sources: np.ndarray, positions: np.ndarray,
             canvas: int) -> np.ndarray:
    """(n, 1, canvas, canvas) uint8 canvases: each item (its source image, turned as its concept says) at its
    (row, column) position, composited by the maximum."""
    turned = [images] + [np.rot90(images, k, axes=(1, 2)).copy() for k in range(1, TURNS)]
    out = np.zeros((len(concepts), canvas, canvas), dtype=np.uint8)
    for i, j in zip(*np.nonzero(concepts >= 0)):
        row, column = positions[i, j]
        window = out[i, row:row + ITEM, column:column + ITEM]
        np.maximum(window, turned[concepts[i, j] // CLASSES][sources[i, j]], out=window)
    return out[:, None]


def canvas_labels(concepts: np.ndarray) -> torch.Tensor:
    labels = np.zeros((len(concepts), CONCEPTS + 1), dtype=np.float32)  # the last column takes the -1s
    np.put_along_axis(labels, np.where(concepts >= 0, concepts, CONCEPTS), 1.0, axis=1)
    return torch.from_numpy(labels[:, :CONCEPTS].copy())


def build(images: np.ndarray, source_labels: np.ndarray, n: int, max_items: int, zipf_exponent: float, canvas: int,
          rng: np.random.Generator) -> TensorImages:
    """n canvases of FashionMNIST images (N, 28, 28) uint8 with classes (N,), drawn with ``rng``."""
    concepts = draw_concepts(n, max_items, zipf_exponent, rng)
    sources = draw_sources(source_labels, concepts, rng)
    positions = rng.integers(0, canvas - ITEM + 1, size=(*concepts.shape, 2))
    return TensorImages(torch.from_numpy(assemble(images, concepts, sources, positions, canvas)),
                        canvas_labels(concepts))


class FashionMNISTCanvas(Dataset):
    """Canvases of 1-4 FashionMNIST items (Xiao et al. 2017), 20 Zipf-distributed concepts, multi-label; the
    stand-in for FLICKR-25K / NUS-WIDE / MS-COCO whose label statistics follow NUS-WIDE-21's."""

    name = "fashion_mnist_canvas"
    paper = ("Xiao, Rasul, Vollgraf, arXiv:1708.07747 (2017); hashbench's canvas construction (multi-label stand-in "
             "for FLICKR-25K / NUS-WIDE / MS-COCO, label statistics after NUS-WIDE-21)")
    url = "https://github.com/zalandoresearch/fashion-mnist"
    num_classes: typing.ClassVar[int] = CONCEPTS
    multi_label: typing.ClassVar[bool] = True
    protocol: typing.ClassVar[str] = (
        "64x64 grey canvases of 1..max_items FashionMNIST items (uniform count) at random positions, composited by "
        "the maximum; 20 concepts (10 classes x upright/quarter-turned), distinct per canvas, Zipf-weighted "
        "(rank ** -zipf_exponent); label = multi-hot of the concepts; queries: 5,000 canvases of test images; "
        "database: 20,000 canvases of training images; train: 5,000 of the database; all drawn with split_seed; "
        "mAP over the whole database")

    n_query: Annotated[int, Range(1)] = 5_000  # as the mosaics: a CPU evaluates 5,000 x 20,000 in seconds
    n_database: Annotated[int, Range(1)] = 20_000  # as the mosaics
    n_train: Annotated[int, Range(1)] = 5_000  # as the mosaics; drawn from the database
    max_items: Annotated[int, Range(1, 4)] = 4  # items per canvas, uniform in 1..max_items (mean labels 2.5)
    zipf_exponent: Annotated[float, Range(0, 4)] = 0.8  # concept weights rank ** -s; 0.8: NUS-WIDE-21's base rate (0.43)
    canvas: Annotated[int, Range(ITEM, 256)] = 64  # side in pixels
    topk: int = 0  # 0 = the whole database
    download: bool = True  # passed to the fashion_mnist plugin

    def load(self, data_root=None) -> Splits:
        if self.n_train > self.n_database:
            raise ValueError(f"{self.name}: n_train ({self.n_train}) exceeds n_database ({self.n_database})")
        source_class = Registry.load_one("datasets", "fashion_mnist", Path(__file__).resolve().parent.parent)
        source = source_class.configure({"download": self.download}).load(data_root)
        sets = {}
        for role, images, n, stream in (("query", source.query, self.n_query, 0),
                                        ("database", source.database, self.n_database, 1)):
            pixels = images.images[:, 0].numpy()
            classes = images.labels.argmax(dim=1).numpy()
            sets[role] = build(pixels, classes, n, self.max_items, self.zipf_exponent, self.canvas,
                               np.random.default_rng((self.split_seed, stream)))
        train_index = np.sort(seeded_permutation(self.n_database, self.split_seed)[: self.n_train])
        train = sets["database"].subset(train_index)
        mean, std = channel_statistics(sets["database"].images[torch.from_numpy(train_index)])
        return Splits(query=sets["query"], database=sets["database"], train=train, topk=self.topk or None,
                      num_classes=self.num_classes, mean=mean, std=std,
                      notes={"source": source.notes.get("folder"), "canvas": self.canvas}, folder=source.folder)


def channel_statistics(images: torch.Tensor) -> tuple[tuple, tuple]:
    """The training canvases' pixel mean and standard deviation in [0, 1] (mostly background: lower than
    FashionMNIST's 0.286 / 0.353), rounded to 4 digits, for the small networks' normalisation."""
    pixels = images.double() / 255.0
    return (round(float(pixels.mean()), 4),), (round(float(pixels.std()), 4),)
