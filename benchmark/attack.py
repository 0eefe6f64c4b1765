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

import math
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from benchmark.data import ImageSet
from benchmark.model import HashModel, binarize
from benchmark.plugins import Plugin, Range


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


class Attack(Plugin):
    """Base of the attacks. Subclasses set ``targeted`` and implement ``perturb`` (and maybe ``prepare``)."""

    kind: typing.ClassVar[str] = "attacks"
    targeted: typing.ClassVar[bool] = False
    perturbs: typing.ClassVar[bool] = True  # False only for the identity ("none"): no epsilon axis
    bounded: typing.ClassVar[bool] = True   # False: no epsilon (ProS-GAN); a plugin may make it a parameter
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


def continuation_alpha(iteration: int, iterations: int,
                       schedule: tuple[float, ...] = (0.1, 0.1, 0.1, 0.1, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)) -> float:
    """tanh scale for iteration ``iteration`` of ``iterations``: ten equal stages (DHTA's get_factor).

    For 2000 iterations this is HAG's schedule too (Sec. IV-C): 0.1 for 1000, then 0.2 ... 1.0 every 200.
    """
    stage = min(len(schedule) - 1, (len(schedule) * iteration) // max(iterations, 1))
    return schedule[stage]


def snapshot_milestones(iterations: int, every: int) -> tuple[int, ...]:
    """Iterations at which one run keeps its images: every, 2 * every, ... and the last; () when every is 0."""
    if every <= 0:
        return ()
    return tuple(sorted({*range(every, iterations + 1, every), iterations}))


def check_milestones(milestones: Sequence[int], iterations: int) -> frozenset[int]:
    wanted = frozenset(int(m) for m in milestones)
    if any(m < 1 or m > iterations for m in wanted):
        raise ValueError(f"milestones must lie in 1..{iterations} (the iterations run); got {sorted(wanted)}")
    return wanted


def label_vote_code(codes: torch.Tensor) -> torch.Tensor:
    """Component-wise majority vote sign(sum_j b_j) of (n, K) codes; a tied component becomes +1."""
    return torch.where(codes.sum(0) >= 0, 1.0, -1.0)


def codes_with_label(database_codes: torch.Tensor, database_labels: torch.Tensor, label: torch.Tensor,
                     count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` codes of database items whose label vector equals ``label``.

    Drawn without replacement where at least ``count`` such items exist (the original DHTA code), with
    replacement otherwise (as ProS-GAN's and SAAT's DHTA always do), so a rare label still gets codes.
    Raises ValueError if no database item carries exactly that label vector.
    """
    matches = torch.nonzero((database_labels == label).all(dim=1)).flatten()
    if len(matches) == 0:
        raise ValueError(f"no database item has the target label vector {label.int().tolist()}")
    if len(matches) >= count:
        pick = torch.randperm(len(matches), generator=generator)[:count]
    else:
        pick = torch.randint(len(matches), (count,), generator=generator)
    return database_codes[matches[pick.to(matches.device)]]


def anchor_codes(database_codes: torch.Tensor, database_labels: torch.Tensor, target_labels: torch.Tensor,
                 n_anchors: int, generator: torch.Generator) -> torch.Tensor:
    """DHTA's anchor code for each target label (paper Eq. 6): the component vote over ``n_anchors`` database
    items whose label vector equals the target, (B, K) in {-1, +1}. ``n_anchors = 1`` is P2P's target code."""
    device = database_labels.device
    return torch.stack([label_vote_code(codes_with_label(database_codes, database_labels, target.to(device),
                                                         n_anchors, generator))
                        for target in target_labels])


STEP_RULES = ("sign", "l2", "raw")
STEP_SIZE_BY_RULE = {
    "sign": 1 / 255,  # L-inf step in [0, 1] pixels (THA, SAAT, CgAT)
    "l2": 1 / 255,    # root-mean-square step per pixel: the same L2 length as a sign step of 1/255
    "raw": 1.0,       # multiplier of the per-image gradient (ProS-GAN's dhta.py)
}


def pgd_toward_codes(model: HashModel, x: torch.Tensor, target_codes: torch.Tensor, epsilon: float,
                     iterations: int, step_size: float, step_rule: str = "sign", random_start: bool = False,
                     continuation: bool = False, alpha: float = 1.0, generator: torch.Generator | None = None,
                     milestones: Sequence[int] = ()) -> torch.Tensor | dict[int, torch.Tensor]:
    """Projected gradient descent on L = -mean_k f(x + delta)_k * target_k, within the epsilon ball.

    Maximises the inner product (minimises the Hamming distance) between the relaxed code of the
    adversarial image and ``target_codes`` (B, K). An untargeted attack passes the negated clean code.
    ``step_rule`` (every step in [0, 1] pixels):
    - "sign": delta -= step * sign(grad), an L-inf step (THA, SAAT, CgAT, I-FGSM);
    - "l2": delta -= step * grad / rms(grad) per image, rms = ||grad||_2 / sqrt(pixels): the original DHTA's
      L2-normalised step, measured as a root-mean-square change per pixel so that a size means the same on a
      28x28 and a 224x224 image (a sign step of s has rms s too);
    - "raw": delta -= step * grad of the per-image loss -(1/K) f^T target (ProS-GAN's DHTA, step 1).
    The relaxed code is tanh(alpha * y); ``continuation`` replaces the fixed ``alpha`` by DHTA's ten-stage
    schedule 0.1 ... 1.0. A small alpha matters: a victim trained towards binary outputs saturates tanh,
    and its gradient underflows to 0.
    ``milestones``: iteration counts at which to keep the images too; then the result is ``{iteration:
    images}`` including the last iteration (the images of a run without milestones, bit for bit).
    """
    if step_rule not in STEP_RULES:
        raise ValueError(f"step_rule must be one of {', '.join(map(repr, STEP_RULES))}; got {step_rule!r}")
    wanted = check_milestones(milestones, iterations)
    delta = torch.zeros_like(x)
    if random_start:
        noise = torch.rand(x.shape, generator=generator) if generator is not None else torch.rand(x.shape)
        delta = (noise.to(x.device) * 2 - 1) * epsilon
    delta = project(x + delta, x, epsilon) - x
    snapshots = {}
    for iteration in range(iterations):
        delta.requires_grad_(True)
        scale = continuation_alpha(iteration, iterations) if continuation else alpha
        loss = -(model(x + delta, alpha=scale) * target_codes).mean()
        grad, = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            if step_rule == "sign":
                step = grad.sign()
            elif step_rule == "l2":
                shape = (-1, *[1] * (grad.ndim - 1))
                rms = grad.flatten(1).norm(dim=1) / math.sqrt(grad[0].numel())
                step = grad / rms.clamp_min(1e-30).view(shape)
            else:
                step = grad * len(x)  # the loss is a batch mean: undo the 1/B to step on each image's own loss
            delta = project(x + delta - step_size * step, x, epsilon) - x
        if iteration + 1 in wanted:
            snapshots[iteration + 1] = (x + delta).detach()
    final = (x + delta).detach()
    return {**snapshots, iterations: final} if wanted else final


def descend_images(x: torch.Tensor, loss_of: Callable[[torch.Tensor, int], torch.Tensor], epsilon: float,
                   iterations: int, learning_rate: float, optimizer: str = "sgd", momentum: float = 0.9,
                   betas: tuple[float, float] = (0.9, 0.999),
                   milestones: Sequence[int] = ()) -> torch.Tensor | dict[int, torch.Tensor]:
    """Optimise the adversarial images themselves, from x, clipping them to the epsilon ball and [0, 1]
    after every step (HAG's Eq. 4; HAG: SGD with momentum, SDHA: Adam).

    ``loss_of(x_adv, iteration)`` is the scalar to minimise: the sum of per-image losses, so that each
    image's update does not depend on the batch it shares. ``milestones`` as in ``pgd_toward_codes``.
    """
    wanted = check_milestones(milestones, iterations)
    x_adv = x.clone().requires_grad_(True)
    if optimizer == "sgd":
        step = torch.optim.SGD([x_adv], lr=learning_rate, momentum=momentum)
    elif optimizer == "adam":
        step = torch.optim.Adam([x_adv], lr=learning_rate, betas=betas)
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'adam'; got {optimizer!r}")
    snapshots = {}
    for iteration in range(iterations):
        x_adv.grad, = torch.autograd.grad(loss_of(x_adv, iteration), x_adv)  # the frozen model gets no .grad
        step.step()
        with torch.no_grad():
            x_adv.copy_(project(x_adv, x, epsilon))
        if iteration + 1 in wanted:
            snapshots[iteration + 1] = x_adv.detach().clone()
    final = x_adv.detach().clone()
    return {**snapshots, iterations: final} if wanted else final


def hag_mask(relaxed: torch.Tensor, clean: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """HAG's mask (Eq. 7), (B, K): 1 on the bits where |F_i(x_adv) - sign F_i(x)| < 1 + t, i.e. the bits that
    still share the clean sign or have crossed it by less than t; 0 on those already flipped by a margin."""
    return ((relaxed.detach() - binarize(clean)).abs() < 1 + threshold).to(relaxed.dtype)


def hag_loss(relaxed: torch.Tensor, clean: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """HAG's objective per image (Eq. 6), (B,): ((1/m) F'(x) F'(x_adv)^T + 1)^2 with F' = mask * F and m the
    number of bits in the mask (no bit left: the loss is the constant 1)."""
    mask = hag_mask(relaxed, clean, threshold)
    inner = (mask * clean * relaxed).sum(1) / mask.sum(1).clamp_min(1)
    return (inner + 1) ** 2
