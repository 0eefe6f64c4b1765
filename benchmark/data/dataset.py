"""The retrieval protocol (``Splits``: queries, database, training set, cut-off) and the Dataset plugin base."""
from __future__ import annotations

import hashlib
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from benchmark.data.images import DatasetNotFound, ImageSet  # noqa: F401 - DatasetNotFound is raised by loaders
from benchmark.plugins import Plugin


@dataclass
class Splits:
    """The retrieval protocol: queries searched against a database; a model trained on ``train``."""

    query: ImageSet
    database: ImageSet
    train: ImageSet
    topk: int | None  # mAP cut-off; None means the whole database
    num_classes: int
    mean: tuple | None = None  # channel statistics for the small network's normalisation
    std: tuple | None = None
    notes: dict = field(default_factory=dict)
    folder: str = ""  # the folder the data were read from (on every result row as data_folder); "" if generated

    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images, read from the first query."""
        return tuple(self.query.load(torch.tensor([0])).shape[1:])

    def fingerprint(self) -> str:
        parts = [self.query.fingerprint(), self.database.fingerprint(), self.train.fingerprint(), str(self.topk)]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    def sizes(self) -> dict[str, int]:
        return {"n_query": len(self.query), "n_database": len(self.database), "n_train": len(self.train)}


def given_data_roots(data_root: str | Path | None) -> list[tuple[str, Path]]:
    """The data roots the user gave, as (how it was given, folder): --data-root, then $HASHBENCH_DATA.

    A given root that does not exist is a ValueError naming it (a mistyped folder must not fall back to another
    copy of the data).
    """
    given = [("--data-root", " ", data_root), ("$HASHBENCH_DATA", "=", os.environ.get("HASHBENCH_DATA"))]
    roots = [(option, Path(base)) for option, _, base in given if base]
    for option, separator, base in given:
        if base and not Path(base).is_dir():
            state = "is not a folder" if Path(base).exists() else "does not exist"
            raise ValueError(f"{option}{separator}{base} {state}; give the folder that holds the datasets, or leave "
                             f"{option} out to read them from the dataset plugins' default places (for FashionMNIST "
                             f"Debian's /usr/share/datasets/fashion-mnist)")
    return roots


def data_roots(name: str, data_root: str | Path | None, extra: Sequence[str | Path] = ()) -> list[Path]:
    """Where to look for dataset ``name``: --data-root and $HASHBENCH_DATA (each ROOT and ROOT/name) when given,
    else ``extra`` (the plugin's default places), so a given root that lacks the data is an error, never a
    silent fall-back."""
    given = given_data_roots(data_root)
    if given:
        return [folder for _, root in given for folder in (root, root / name)]
    return [Path(p) for p in extra]


class Dataset(Plugin, base=True):
    """A dataset plugin: where the files are, the split protocol, the mAP cut-off.

    Subclasses set ``num_classes``, ``protocol`` (a short card) and implement ``load(data_root)``, which
    returns ``Splits``. ``query_subset`` (0 = all queries) draws a seeded subset of the queries for
    quick grids; it is part of the protocol and recorded on every row.
    """

    kind: typing.ClassVar[str] = "datasets"
    num_classes: typing.ClassVar[int] = 0
    multi_label: typing.ClassVar[bool] = False
    protocol: typing.ClassVar[str] = ""

    split_seed: int = 0
    query_subset: int = 0

    def load(self, data_root: str | Path | None = None) -> Splits:
        raise NotImplementedError

    def card(self) -> dict[str, object]:
        return {"protocol": self.protocol, "classes": self.num_classes, "multi_label": self.multi_label,
                **self.params()}

    def splits(self, data_root: str | Path | None = None) -> Splits:
        """``load`` plus the seeded query subset."""
        splits = self.load(data_root)
        if self.query_subset and self.query_subset < len(splits.query):
            generator = torch.Generator().manual_seed(self.split_seed + 1)
            pick = torch.randperm(len(splits.query), generator=generator)[: self.query_subset].sort().values
            splits.query = splits.query.subset(pick)
        return splits


def seeded_permutation(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n)


def random_split(n_items: int, seed: int, n_query: int, n_train: int) -> dict[str, np.ndarray]:
    """Random queries, the rest as the database, the training set drawn from the database (sorted indices)."""
    if n_query + n_train > n_items:
        raise ValueError(f"{n_items} images cannot give {n_query} queries and {n_train} training images")
    order = seeded_permutation(n_items, seed)
    return {"query": np.sort(order[:n_query]), "database": np.sort(order[n_query:]),
            "train": np.sort(order[n_query:n_query + n_train])}


def shares_label(labels_a: torch.Tensor, labels_b: torch.Tensor) -> torch.Tensor:
    """(A, B) bool: row a of ``labels_a`` and row b of ``labels_b`` (multi-hot) share at least one class. The
    papers' relevance of a retrieved item, and the pairwise similarity of the training losses."""
    return labels_a.float() @ labels_b.float().T > 0


def one_hot(classes: torch.Tensor | np.ndarray, num_classes: int) -> torch.Tensor:
    classes = torch.as_tensor(np.asarray(classes, dtype=np.int64))
    return torch.nn.functional.one_hot(classes, num_classes).float()
