"""The attack plugin base, its context, and helpers shared by attacks.

An attack is prepared once per victim (``prepare``: pick anchor codes, train a generator, ...) and
then perturbs batches of queries (``perturb``). Epsilon is an L-inf budget in [0, 1] pixel units,
set by the harness from the grid. Whatever a plugin returns, the harness projects it onto the
epsilon ball and [0, 1] afterwards and records the achieved L-inf.

Targeted attacks get ``target_labels`` drawn by the harness (seeded, stored per query); untargeted
attacks receive them too and may ignore them.

``perturb`` returns the adversarial images, or a ``Perturbed`` when it has more to say: snapshots of one
run at iteration milestones (each scored as its own rows, HAG Table I), and the codes it aimed at
(DHTA's anchor code, ProS-GAN's prototype code), which the harness scores as queries themselves.
An attack whose ``bounded`` is False (ProS-GAN) has no epsilon: its cells carry none, the harness does
not project its output, and its achieved L-inf, L2 and perceptibility are recorded as for any attack.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass, field

import torch

from benchmark.data.images import ImageSet
from benchmark.plugins import Plugin, Range
from benchmark.victim.model import HashModel


@dataclass
class AttackContext:
    """What ``prepare`` may use. The model is the surrogate (the victim itself in white-box cells)."""

    model: HashModel                  # eval mode, frozen
    database_codes: torch.Tensor      # (N, K) in {-1, +1}, on ``device``
    database_labels: torch.Tensor     # (N, C) multi-hot, on ``device``
    train: ImageSet                   # the surrogate's training set (images on demand)
    num_classes: int
    bits: int
    device: torch.device
    generator: torch.Generator        # seeded, CPU
    info: dict = field(default_factory=dict)  # anything the attack wants recorded (e.g. prepare details)
    progress: typing.Callable[[str], None] = lambda message: None  # one line on the progress view

    def train_codes(self, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes and labels of the training set under the model, (N_train, K) and (N_train, C)."""
        if "_train_codes" not in self.info:
            codes = [self.model.codes(x.to(self.device)) for x, _, _ in self.train.batches(batch_size)]
            self.info["_train_codes"] = torch.cat(codes)
        return self.info["_train_codes"], self.train.labels.to(self.device)


@dataclass
class Perturbed:
    """What ``perturb`` may return instead of a plain tensor of adversarial images.

    ``images``: the final adversarial images (B, C, H, W), or ``{iteration: images}`` snapshots of one run at
    its milestones (the largest iteration is the final result). ``codes``: target codes the attack aimed at,
    ``{"anchor_code": (B, K) +-1}``; each is scored as a query (rows ``<name>_tmap`` and ``<name>_map``).
    """

    images: torch.Tensor | dict[int, torch.Tensor]
    codes: dict[str, torch.Tensor] = field(default_factory=dict)

    def snapshots(self) -> dict[int, torch.Tensor]:
        return self.images if isinstance(self.images, dict) else {}

    def final(self) -> torch.Tensor:
        return self.images[max(self.images)] if isinstance(self.images, dict) else self.images


class Attack(Plugin, base=True):
    """Base of the attacks. Subclasses set ``targeted`` and implement ``perturb`` (and maybe ``prepare``)."""

    kind: typing.ClassVar[str] = "attacks"
    targeted: typing.ClassVar[bool] = False
    perturbs: typing.ClassVar[bool] = True  # False only for the identity ("none"): no epsilon axis
    bounded: typing.ClassVar[bool] = True   # False: no epsilon (ProS-GAN); a plugin may make it a parameter
    # True: the output is a learned generator's (a bounded tanh, ProS-GAN), so one at its bound everywhere means
    # its training diverged (flag ``generator_saturated``); sign-gradient attacks sit there by design
    learned_generator: typing.ClassVar[bool] = False
    axis_parameters: typing.ClassVar[tuple[str, ...]] = ("epsilon",)
    # parameters that only ``perturb`` reads: changing them (or epsilon) reuses what ``prepare`` learned
    perturb_parameters: typing.ClassVar[tuple[str, ...]] = ()

    epsilon: typing.Annotated[float, Range(0, 1)] = 8 / 255  # set from the grid's epsilon axis

    def is_bounded(self) -> bool:
        """Whether this configured attack works inside the epsilon ball (and has an epsilon axis)."""
        return bool(self.bounded)

    def prepare_parameters(self) -> dict:
        """The parameters ``prepare`` depends on (its cached state is keyed by them)."""
        skip = set(self.axis_parameters) | set(self.perturb_parameters)
        return {key: value for key, value in self.params().items() if key not in skip}

    def iteration_count(self) -> int:
        """Optimisation steps per query (recorded as ``iterations`` on its rows); 0 for one-shot attacks."""
        return int(getattr(self, "iterations", 0) or 0)

    def prepare(self, ctx: AttackContext) -> None:
        self.ctx = ctx

    def perturb(self, x: torch.Tensor, labels: torch.Tensor,
                target_labels: torch.Tensor) -> "torch.Tensor | Perturbed":
        """Adversarial images for queries ``x`` in [0, 1], (B, C, H, W), or a ``Perturbed``.

        ``x`` is the plugin's own copy: the harness keeps another to check the budget against.
        """
        raise NotImplementedError

    def state_dict(self) -> dict | None:
        """What ``prepare`` learned, if it is worth caching (a trained generator); None otherwise."""
        return None

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError


def project(x_adv: torch.Tensor, x: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Clip ``x_adv`` to the L-inf ball of radius ``epsilon`` around ``x``, then to [0, 1]."""
    delta = torch.clamp(x_adv - x, -epsilon, epsilon)
    return torch.clamp(x + delta, 0.0, 1.0)
