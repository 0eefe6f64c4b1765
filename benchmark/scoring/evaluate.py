"""From adversarial query codes to metric rows: mAP, t-MAP, tie-aware variants, P@N and PR curves.

Every metric is read from one counting pass per query (``benchmark.scoring``), at every cut-off at once.
The conventions that change numbers are explicit (``EvaluationConventions``) and recorded on every row.

Cut-offs: ``cutoffs[0]`` is the dataset's own (its AP is kept per query), the others are extra; None is
the whole database. Repeats are dropped. A cut-off at or beyond the database size is clipped: it scores
the whole database (AP over min(k, N) items, as the papers' code slices) and keeps the label it was asked
under, so the rows a grid writes do not depend on the database size.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from benchmark.scoring import kernel as scoring
from benchmark.scoring import metrics, search

EXTRA_CUTOFFS = (None, 1000, 5000)  # besides the dataset's own: the papers' cut-offs (whole database, 1000, 5000)
PRECISION_AT = (100, 200, 300, 400, 500, 600, 700, 800, 900, 1000)


@dataclass(frozen=True)
class EvaluationConventions:
    """``backend``: "torch", the counting kernel (numba on a CPU, torch on a GPU); "faiss", FAISS's
    ``IndexBinaryFlat`` ranks the whole database and the metrics are read off its ranked lists (an
    independent check of the kernel, several times slower). Both give the same rankings and numbers.
    ``zero_relevant``: a query with no relevant item in the top k has AP 0 ("count_as_zero") or is left out
    of the mean ("exclude")."""

    backend: str = "torch"
    zero_relevant: str = "count_as_zero"

    def __post_init__(self):
        if self.backend not in search.BACKENDS:
            raise ValueError(f"unknown search backend {self.backend!r}; accepted: {', '.join(search.BACKENDS)}")
        metrics.check_zero_relevant(self.zero_relevant)

    def as_dict(self) -> dict[str, str]:
        return {"search_backend": self.backend, "zero_relevant": self.zero_relevant, "tie_rule": search.TIE_RULE,
                "ap_denominator": metrics.AP_DENOMINATOR, "relevance": metrics.RELEVANCE}


@dataclass
class Evaluation:
    rows: list[dict] = field(default_factory=list)
    per_query: dict[str, torch.Tensor] = field(default_factory=dict)


def mean(values: torch.Tensor) -> float:
    return float(torch.nanmean(values.double())) if len(values) else math.nan


def distinct_cutoffs(cutoffs: Sequence[int | None] | int | None) -> list[int | None]:
    """``cutoffs`` without repeats, in order (a lone int or None is the one cut-off); raises ValueError unless
    each is a positive int or None."""
    if cutoffs is None or isinstance(cutoffs, numbers.Integral):
        cutoffs = [cutoffs]
    if isinstance(cutoffs, str) or not isinstance(cutoffs, Sequence) or not len(cutoffs):
        raise ValueError(f"cutoffs must be a non-empty sequence of positive ints or None; got {cutoffs!r}")
    for k in cutoffs:
        search.check_k(k)
    return list(dict.fromkeys(None if k is None else int(k) for k in cutoffs))


def evaluate_queries(query_codes: torch.Tensor, database_codes: torch.Tensor, query_labels: torch.Tensor,
                     target_labels: torch.Tensor | None, database_labels: torch.Tensor,
                     cutoffs: Sequence[int | None] | int | None, conventions: EvaluationConventions,
                     curves: bool = True) -> Evaluation:
    """Score ``query_codes`` against the true labels (mAP) and, when given, the target labels (t-MAP).

    Rows, for each cut-off k (``topk`` = k, 0 for the whole database): ``map``, ``map_tie_aware`` and, with
    target labels, ``tmap``, ``tmap_tie_aware``. With ``curves``: ``precision_at`` (``topk`` = N, for the N
    in ``PRECISION_AT`` up to the database size) and ``pr_precision`` (``recall`` = 1/20 ... 1; averaged over
    the queries with a relevant item, absent when none has one), and their ``t`` twins. ``per_query``:
    float64 (Q,) ``ap`` (and ``tap``) at ``cutoffs[0]``, on the CPU.
    """
    cutoffs = distinct_cutoffs(cutoffs)
    n_database = len(database_codes)
    if n_database == 0:
        raise ValueError("the database is empty: there is nothing to rank")
    labelings = {"": query_labels} if target_labels is None else {"": query_labels, "t": target_labels}
    ns = [n for n in PRECISION_AT if n <= n_database] if curves else []
    levels = metrics.RECALL_LEVELS if curves else 0
    scores = scoring.score_queries(query_codes, database_codes, list(labelings.values()), database_labels,
                                   [k or n_database for k in cutoffs], ns, levels, conventions.zero_relevant,
                                   order="faiss" if conventions.backend == "faiss" else "auto")
    scores = dict(zip(labelings, scores))
    result = Evaluation()
    for prefix, score in scores.items():
        result.per_query[f"{prefix}ap"] = score.average_precision[:, 0].cpu()
    for column, k in enumerate(cutoffs):
        for prefix, score in scores.items():
            result.rows += [
                {"metric": f"{prefix}map", "topk": k or 0, "value": mean(score.average_precision[:, column])},
                {"metric": f"{prefix}map_tie_aware", "topk": k or 0,
                 "value": mean(score.expected_average_precision[:, column])},
            ]
    if curves:
        for prefix, score in scores.items():
            result.rows += curve_rows(prefix, score, ns)
    return result


def curve_rows(prefix: str, score: scoring.QueryScores, ns: list[int]) -> list[dict]:
    """``precision_at`` rows (mean over queries of relevant-in-top-N / N) and ``pr_precision`` rows."""
    rows = []
    n_query = len(score.relevant_at)
    found = score.relevant_at.sum(0).tolist()  # exact integer totals
    for n, total in zip(ns, found):
        rows.append({"metric": f"{prefix}precision_at", "topk": n, "value": total / (n_query * n) if n_query
                     else math.nan})
    counted = score.pr_precision[:, :1].isfinite().squeeze(1)  # the queries with a relevant item
    if counted.any():
        levels = score.pr_precision.shape[1]
        curve = score.pr_precision[counted].sum(0) / int(counted.sum())
        for level, value in enumerate(curve.tolist(), start=1):
            rows.append({"metric": f"{prefix}pr_precision", "recall": level / levels, "value": value})
    return rows
