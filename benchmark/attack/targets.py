"""Target labels for targeted attacks, drawn by the harness from a seeded generator, one per query.

The papers' code draws them differently (methods-spec 3.3), so the rule is recorded on every row. Each rule
draws uniformly among the database's distinct label vectors that it allows for the query:
- "disjoint" (default; THA, SAAT, CgAT Sec. 4.1 "target labels that do not share the same category"): shares
  no class with the query's labels;
- "different" (the original DHTA code's first condition): any label vector other than the query's own;
- "any" (ProS-GAN's and THA's code, ``database_labels.unique(dim=0)``): any label vector, the query's own
  included;
- "frequent" (the original DHTA code): different from the query's and carried by more than ``n_anchors``
  database items (the code's strict ``count > n_a``), so each anchor code can be voted from ``n_anchors``
  distinct items drawn without replacement.
Every rule leaves out the all-zero vector (FLICKR-25K has such rows; ProS-GAN's and THA's ``unique`` keep
it): a target with no class has no relevant item, its t-MAP is 0 whatever the attack does.
"""
from __future__ import annotations

import torch

TARGET_RULES = ("disjoint", "different", "any", "frequent")


def allowed_targets(queries: torch.Tensor, candidates: torch.Tensor, counts: torch.Tensor, rule: str,
                    n_anchors: int) -> torch.Tensor:
    """(B, U) mask: may query b (its label vector) get candidate label vector u under ``rule``."""
    if rule == "disjoint":
        return (queries @ candidates.t()) == 0
    if rule == "any":
        return torch.ones(len(queries), len(candidates), dtype=torch.bool)
    different = ~(queries[:, None, :] == candidates[None]).all(-1)
    if rule == "different":
        return different
    return different & (counts > n_anchors)[None, :]


def draw_target_labels(query_labels: torch.Tensor, database_labels: torch.Tensor, generator: torch.Generator,
                       rule: str = "disjoint", n_anchors: int = 9) -> torch.Tensor:
    """(Q, C) target label vectors, one per query, uniform over the database label vectors ``rule`` allows.

    ``n_anchors`` is used by the "frequent" rule only (DHTA's n_a = 9).
    """
    if rule not in TARGET_RULES:
        raise ValueError(f"unknown target rule {rule!r}; accepted: {', '.join(TARGET_RULES)}")
    candidates, counts = torch.unique(database_labels.cpu(), dim=0, return_counts=True)
    keep = candidates.sum(1) > 0
    candidates, counts = candidates[keep], counts[keep]                  # (U, C), (U,): no all-zero vector
    candidates = candidates.float()
    queries = query_labels.cpu().float()
    targets = torch.empty_like(query_labels.cpu())
    for start in range(0, len(queries), 4096):
        block = queries[start:start + 4096]
        allowed = allowed_targets(block, candidates, counts, rule, n_anchors)  # (B, U)
        if not allowed.any(1).all():
            row = int(torch.nonzero(~allowed.any(1))[0]) + start
            raise ValueError(f"query {row} (labels {queries[row].int().tolist()}) has no allowed target label "
                             f"under rule {rule!r}")
        scores = torch.rand(allowed.shape, generator=generator).masked_fill(~allowed, -1.0)
        targets[start:start + 4096] = candidates[scores.argmax(1)].to(targets.dtype)
    return targets
