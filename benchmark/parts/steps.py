"""Optimisation steps shared by the papers' attacks (and by the adversarial training of CgAT and ATRDH).

- ``pgd_toward_codes``: projected gradient descent toward target codes (DHTA Eq. 7-8, P2P, THA, CgAT, PGD);
- ``descend_images``: SGD on the images through a loss closure, clipped to the epsilon ball (HAG, SDHA);
- DHTA's anchor codes (Eq. 6) by label vote, the tanh continuation schedule, snapshot milestones;
- HAG's bit mask and loss (Eq. 6-7).
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Sequence

import torch

from benchmark.attack.base import project
from benchmark.victim.model import HashModel, binarize

ITERATION_REPORT: contextvars.ContextVar = contextvars.ContextVar("iteration_report", default=None)


@contextlib.contextmanager
def reporting_iterations(report: Callable[[int, int], None]):
    """Within the block, the shared loops below tell ``report(done, total)`` after every iteration (the harness
    shows a slow attack's progress inside a batch, whatever plugin runs the loop)."""
    token = ITERATION_REPORT.set(report)
    try:
        yield
    finally:
        ITERATION_REPORT.reset(token)


def report_iteration(done: int, total: int) -> None:
    report = ITERATION_REPORT.get()
    if report is not None:
        report(done, total)


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
    items whose label vector equals the target, (B, K) in {-1, +1}. ``n_anchors = 1`` is P2P's target code.

    The items are drawn as ``codes_with_label`` draws them, query after query from ``generator``; the matching
    is done for the whole batch at once, with two host reads per batch (the matches and their counts)."""
    device = database_labels.device
    matches = equal_rows(target_labels.to(device, database_labels.dtype), database_labels)     # (B, N)
    items = torch.nonzero(matches)[:, 1]          # the matching items' indices, query after query, ascending
    counts = matches.sum(1).tolist()
    picks, start = [], 0
    for query, count in enumerate(counts):
        if count == 0:
            raise ValueError(f"no database item has the target label vector {target_labels[query].int().tolist()}")
        pick = (torch.randperm(count, generator=generator)[:n_anchors] if count >= n_anchors
                else torch.randint(count, (n_anchors,), generator=generator))
        picks.append(pick + start)
        start += count
    chosen = items[torch.stack(picks).to(device)]                                                  # (B, n_anchors)
    return torch.where(database_codes[chosen].sum(1) >= 0, 1.0, -1.0)


def equal_rows(rows: torch.Tensor, table: torch.Tensor, elements: int = 2 ** 26) -> torch.Tensor:
    """(B, N) bool: whether ``rows[i]`` equals ``table[j]`` exactly, compared in chunks of at most ``elements``."""
    step = max(1, elements // max(1, table.numel()))
    return torch.cat([(rows[i:i + step, None, :] == table[None]).all(-1) for i in range(0, len(rows), step)])


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
        report_iteration(iteration + 1, iterations)
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
        report_iteration(iteration + 1, iterations)
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
