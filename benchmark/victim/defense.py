"""The defense plugin base: a training procedure that yields a victim, or a data protection.

``fit(method, model, train, ctx)`` trains ``model`` in place. The "none" defense simply calls the
hashing method's own ``fit``; adversarial training (ATRDH, CgAT) writes its own loop and calls
``method.training_loss`` for the benign term (``observe`` records the clean batch in the method's
state, then ``loss``); ``method.loss`` itself never writes there, so adversarial outputs cannot leak
into memory banks, counters or schedules.

A *protection* (PPL; ``protects = True``) is trained before data release: ``prepare_protection`` learns
a generator from the training set (once per dataset, parameters and seed; its ``state_dict`` is cached
like a victim), and ``protect`` maps clean images to released ones. The harness then evaluates the
scenarios C->C, C->A, A->C and A->A (which of the queries and the database are protected) with models
trained on clean or on protected data (the ``train_data`` axis); a protection's victims are trained by
the method's own procedure.
"""
from __future__ import annotations

import typing

import torch

from benchmark.data.images import ImageSet
from benchmark.plugins import Plugin
from benchmark.victim.hashing import HashingMethod, TrainContext
from benchmark.victim.model import HashModel


def lr_milestones(optimizer: torch.optim.Optimizer, total_steps: int, fractions: tuple[float, ...] = (0.5, 0.75),
                  factor: float = 0.1) -> torch.optim.lr_scheduler.MultiStepLR:
    """The adversarial-training references' schedule (CgAT, TAD, SAAT): the lr times ``factor`` after
    ``fractions`` of ``total_steps`` optimiser steps. Call ``step()`` after every optimiser step."""
    milestones = sorted({int(total_steps * fraction) for fraction in fractions})
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=factor)


class Defense(Plugin, base=True):
    kind: typing.ClassVar[str] = "defenses"
    protects: typing.ClassVar[bool] = False  # True: a data protection (PPL), evaluated by scenario
    # True: ``fit`` receives the model already trained by the method without defense (same method, backbone,
    # bits, seed; taken from the cache), as adversarial fine-tuning does (CgAT: 30 epochs from the victim)
    starts_from_victim: typing.ClassVar[bool] = False
    # a protection's parameters that only change what is released (not what is learned): changing them
    # reuses the trained generator and the victims trained on protected data
    release_parameters: typing.ClassVar[tuple[str, ...]] = ()
    # True: a protection whose released perturbation is a learned generator's bounded output (PPL's epsilon *
    # tanh), so one at its bound everywhere means its training diverged (flag ``generator_saturated``)
    learned_generator: typing.ClassVar[bool] = False

    def fit(self, method: HashingMethod, model: HashModel, train: ImageSet, ctx: TrainContext) -> None:
        """Train ``model`` in place (with ``starts_from_victim``: go on training the trained victim)."""
        method.fit(model, train, ctx)

    def prepare_protection(self, train: ImageSet, ctx: TrainContext) -> None:
        """Learn the protection from the training set (a protection overrides this)."""
        raise NotImplementedError(f"defense {self.name!r} is not a data protection")

    def protect(self, x: torch.Tensor) -> torch.Tensor:
        """Released images for clean images ``x`` in [0, 1], (B, C, H, W) -> same shape, in [0, 1]."""
        raise NotImplementedError(f"defense {self.name!r} is not a data protection")

    def database_mask(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Bool (n,): which database items are released protected (a protection may protect a share only)."""
        return torch.ones(n, dtype=torch.bool)

    def state_dict(self) -> dict | None:
        """What ``prepare_protection`` learned (cached); None for defenses that learn nothing apart."""
        return None

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError
