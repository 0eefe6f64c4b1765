"""Sanity flags: results that look fine but are degenerate are flagged on every row of their cell.

In the spirit of AutoAttack's flags, each flag is ``name: reason``; a cell's ``flags`` column joins them
with "; " and is empty when all is well. The victim's diagnostics are computed once, when its codes are
(cached with them); the cell's own flags come from its attack's outputs.

Victim flags
- ``victim_collapsed``: fewer distinct database codes than classes.
- ``dead_bits``: bits that never change sign over the database (wasted code length; common in undertrained
  victims).
- ``chance_map``: clean mAP (on a probe of the queries) within ``CHANCE_MARGIN`` of a random ranking's for
  those labels (the mean share of relevant database items per query).
- ``zero_gradients``: most probe queries have an all-zero input gradient at tanh scales 1 and 0.1, so a
  gradient attack cannot move them.
Training flags
- raised by a plugin's own training (``TrainContext.flag``) and carried by every cell that uses what it
  trained: a victim (its hashing method or defense) or a data protection. PPL raises ``surrogate_at_chance``
  when its surrogate retrieval model ends the game unable to retrieve (``probe_retrieval``).
Cell flags
- ``attack_changed_nothing``: an attack (or protection) that perturbs, yet no query's code changed.
- ``budget_violations``: the plugin returned images outside the epsilon ball or [0, 1] (the harness
  projected them; the share is also the ``budget_violations`` metric).
- ``target_unreachable``: a target label that no database item shares a label with (its t-AP is 0 by
  construction).
- ``perturbation_universal``: the queries' perturbation hardly depends on the image: more than
  ``UNIVERSAL_SHARE`` of its energy lies in its mean over images (``universal_share`` = N ||mean_i delta_i||^2
  / sum_i ||delta_i||^2, a metric row; 1 for a constant shift, about 0.3 for random +-epsilon signs on
  FashionMNIST, whose black background can only be pushed up). Any attack or protection.
- ``budget_unreached``: an attack with an epsilon whose queries moved, on average, less than
  ``BUDGET_REACHED_SHARE`` of it in L-inf (``linf_mean``): its schedule (iterations, step rule) stopped short of
  the budget, so its damage measures the schedule, not epsilon (HAG's fixed step on a victim with small
  outputs at 100 iterations: methods/attacks/hag.py). Not for protections, whose epsilon bounds a generator.
- ``generator_saturated``: a learned generator (``learned_generator`` on the attack or the protection:
  ProS-GAN, PPL) whose output sits at an end of its allowed range ([x - epsilon, x + epsilon] within [0, 1],
  or [0, 1] without an epsilon) on more than ``SATURATED_SHARE`` of the pixels (``saturated_share``, a metric
  row): its tanh is at its bound everywhere, a sign that its training diverged. Not raised for sign-gradient
  attacks (FGSM, PGD), which sit at the bound by design. For a protection both shares are measured on the
  queries it releases, also in cells whose scenario releases clean ones (c2c, c2a) but which use it.
"""
from __future__ import annotations

import torch

from benchmark.data.dataset import Splits, shares_label
from benchmark.scoring import metrics

CHANCE_MARGIN = 0.05        # clean mAP closer than this to a random ranking's is flagged
PROBE_QUERIES = 500         # queries scored for the clean-mAP probe
GRADIENT_PROBE = 32         # queries whose input gradient is checked
ZERO_GRADIENT_SHARE = 0.5   # flag when more than this share of probe queries has an all-zero gradient
UNIVERSAL_SHARE = 0.9       # flag a perturbation with more of its energy than this in its mean over images
SATURATED_SHARE = 0.95      # flag a learned generator with more of its pixels than this at their bound
BUDGET_REACHED_SHARE = 0.5  # flag an attack whose mean L-inf stays under this share of its epsilon


def victim_diagnostics(model, database_codes: torch.Tensor, query_codes: torch.Tensor, splits: Splits,
                       device: torch.device) -> dict:
    """Code diversity, a clean-mAP probe against chance, and an input-gradient probe of a trained victim."""
    distinct = len(torch.unique(database_codes, dim=0))
    constant = int(((database_codes == database_codes[:1]).all(0)).sum())
    probe = torch.arange(min(PROBE_QUERIES, len(query_codes)))
    query_labels = splits.query.labels[probe]
    clean_map = metrics.mean_average_precision(query_codes[probe], database_codes, query_labels,
                                               splits.database.labels, splits.topk)
    chance = chance_map(query_labels, splits.database.labels)
    x = splits.query.load(torch.arange(min(GRADIENT_PROBE, len(splits.query)))).to(device)
    return {"distinct_codes": distinct, "constant_bits": constant, "bits": int(database_codes.shape[1]),
            "num_classes": int(splits.num_classes), "probe_map": clean_map, "chance_map": chance,
            "probe_queries": len(probe), "zero_gradient_share": zero_gradient_share(model, x)}


def chance_map(query_labels: torch.Tensor, database_labels: torch.Tensor) -> float:
    """mAP of a random ranking, to first order: the mean share of database items relevant to each query."""
    relevant = shares_label(query_labels, database_labels).float().mean(1)
    return float(relevant.mean())


def zero_gradient_share(model, x: torch.Tensor) -> float:
    """Share of images whose input gradient of <tanh(alpha y), sign y> is all zero at both alpha 1 and 0.1."""
    zero = torch.ones(len(x), dtype=torch.bool)
    for alpha in (1.0, 0.1):
        x_probe = x.clone().requires_grad_(True)
        with torch.enable_grad():
            outputs = model(x_probe, alpha=alpha)
            grad, = torch.autograd.grad((outputs * outputs.detach().sign()).sum(), x_probe)
        zero &= (grad.flatten(1) == 0).all(1).cpu()
    return float(zero.float().mean())


def victim_flags(diagnostics: dict) -> list[str]:
    if not diagnostics:
        return []
    out = []
    if diagnostics["distinct_codes"] < diagnostics["num_classes"]:
        out.append(f"victim_collapsed: {diagnostics['distinct_codes']} distinct database codes for "
                   f"{diagnostics['num_classes']} classes")
    if diagnostics["constant_bits"]:
        out.append(f"dead_bits: {diagnostics['constant_bits']} of {diagnostics['bits']} bits never change sign over "
                   f"the database")
    if diagnostics["probe_map"] < diagnostics["chance_map"] + CHANCE_MARGIN:
        out.append(f"chance_map: clean mAP {diagnostics['probe_map']:.3f} on {diagnostics['probe_queries']} queries "
                   f"is within {CHANCE_MARGIN} of a random ranking's {diagnostics['chance_map']:.3f}")
    if diagnostics["zero_gradient_share"] > ZERO_GRADIENT_SHARE:
        out.append(f"zero_gradients: {diagnostics['zero_gradient_share']:.0%} of probe queries have an all-zero "
                   f"input gradient at tanh scales 1 and 0.1")
    return out


def training_flags(info: dict) -> list[str]:
    """The flags a training procedure raised (``TrainContext.flag``), as ``name: reason``."""
    return [f"{name}: {reason}" for name, reason in (info or {}).get("flags", {}).items()]


def probe_retrieval(query_codes: torch.Tensor, query_labels: torch.Tensor, database_codes: torch.Tensor,
                    database_labels: torch.Tensor) -> dict:
    """mAP over the whole database of a probe, a random ranking's (``chance_map``) and whether the first is
    within ``CHANCE_MARGIN`` of the second: the victims' ``chance_map`` test, for a plugin's own models."""
    probe_map = metrics.mean_average_precision(query_codes, database_codes, query_labels, database_labels, None)
    chance = chance_map(query_labels, database_labels)
    return {"map": probe_map, "chance": chance, "at_chance": probe_map < chance + CHANCE_MARGIN}


def cell_flags(perturbs: bool, changed_share: float, violations: float, unreachable_targets: int,
               n_queries: int, universal_share: float = float("nan"), saturated_share: float = float("nan"),
               learned_generator: bool = False, epsilon: float | None = None,
               linf_mean: float = float("nan")) -> list[str]:
    """``epsilon``: an attack's budget (None: unbounded, or a protection's release)."""
    out = []
    if perturbs and changed_share == 0:
        out.append("attack_changed_nothing: no query's code changed")
    if perturbs and epsilon and linf_mean < BUDGET_REACHED_SHARE * epsilon:
        out.append(f"budget_unreached: the queries moved {linf_mean:.4f} in L-inf on average, under "
                   f"{BUDGET_REACHED_SHARE:.0%} of epsilon {epsilon:.4f} (its schedule stopped short of the budget: "
                   f"its damage does not measure epsilon)")
    if violations > 0:
        out.append(f"budget_violations: {violations:.1%} of the returned images lay outside the epsilon ball or "
                   f"[0, 1] before the harness projected them")
    if unreachable_targets:
        out.append(f"target_unreachable: {unreachable_targets} of {n_queries} target labels share no label with "
                   f"any database item")
    if universal_share > UNIVERSAL_SHARE:  # NaN (nothing perturbed) compares False
        out.append(f"perturbation_universal: {universal_share:.1%} of the perturbation's energy is its mean over "
                   f"the queries (a perturbation that does not depend on the image; flagged above "
                   f"{UNIVERSAL_SHARE:.0%})")
    if learned_generator and saturated_share > SATURATED_SHARE:
        out.append(f"generator_saturated: {saturated_share:.1%} of the pixels sit at the bound of their allowed "
                   f"range (the generator's tanh at its bound everywhere: its training diverged; flagged above "
                   f"{SATURATED_SHARE:.0%})")
    return out


def unreachable_targets(target_labels: torch.Tensor, database_labels: torch.Tensor) -> int:
    carried = database_labels.sum(0) > 0
    return int(((target_labels > 0) & carried).sum(1).eq(0).sum())
