"""Target labels for targeted attacks, drawn by the harness from a seeded generator, one per query.

Rules (the reference implementations differ, so the rule is recorded on every row):
- "disjoint" (default; THA and SAAT): a label vector that occurs in the database, is not all-zero and
  shares no class with the query's labels.
- "different" (DHTA's original): any database label vector other than the query's own.
"""
from __future__ import annotations

import torch

TARGET_RULES = ("disjoint", "different")


def draw_target_labels(query_labels: torch.Tensor, database_labels: torch.Tensor, generator: torch.Generator,
                       rule: str = "disjoint") -> torch.Tensor:
    """(Q, C) target label vectors, one per query, uniform over the allowed database label vectors."""
    if rule not in TARGET_RULES:
        raise ValueError(f"unknown target rule {rule!r}; accepted: {', '.join(TARGET_RULES)}")
    candidates = torch.unique(database_labels.cpu(), dim=0)
    candidates = candidates[candidates.sum(1) > 0]                     # (U, C), no all-zero vector
    queries = query_labels.cpu()
    targets = torch.empty_like(queries)
    for start in range(0, len(queries), 4096):
        block = queries[start:start + 4096]
        if rule == "disjoint":
            allowed = (block @ candidates.t()) == 0                      # (B, U)
        else:
            allowed = ~(block[:, None, :] == candidates[None]).all(-1)
        if not allowed.any(1).all():
            row = int(torch.nonzero(~allowed.any(1))[0]) + start
            raise ValueError(f"query {row} (labels {queries[row].int().tolist()}) has no allowed target label "
                             f"under rule {rule!r}")
        scores = torch.rand(allowed.shape, generator=generator).masked_fill(~allowed, -1.0)
        targets[start:start + 4096] = candidates[scores.argmax(1)]
    return targets
