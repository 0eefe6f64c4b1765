"""The defense plugin base: a training procedure that yields a victim.

``fit(method, model, train, ctx)`` trains ``model`` in place. The "none" defense simply calls the
hashing method's own ``fit``; adversarial training (ATRDH, CgAT) writes its own loop and calls
``method.loss`` for the benign term. Data protection (PPL) is a defense whose ``protect`` returns
perturbed images for the database and the queries, evaluated in the C->C, C->A, A->C, A->A scenarios.
"""
from __future__ import annotations

import typing

import torch

from benchmark.data import ImageSet
from benchmark.hashing import HashingMethod, TrainContext
from benchmark.model import HashModel
from benchmark.plugins import Plugin


class Defense(Plugin):
    kind: typing.ClassVar[str] = "defenses"

    def fit(self, method: HashingMethod, model: HashModel, train: ImageSet, ctx: TrainContext) -> None:
        method.fit(model, train, ctx)

    def protect(self, x: torch.Tensor) -> torch.Tensor | None:
        """Protected images for release (PPL); None for defenses that do not alter the data."""
        return None
