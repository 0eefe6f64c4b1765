"""From adversarial query codes to metric rows: mAP, t-MAP, tie-aware variants, P@N and PR curves.

The conventions that change numbers are explicit (``EvaluationConventions``) and recorded on every row.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from benchmark import metrics, search

PRECISION_AT = (100, 200, 300, 400, 500, 600, 700, 800, 900, 1000)


@dataclass(frozen=True)
class EvaluationConventions:
    backend: str = "torch"                 # "torch" (exact kernel) or "faiss" (IndexBinaryFlat); same rankings
    zero_relevant: str = "count_as_zero"   # a query with no relevant item in the top k: AP 0 ("exclude": skipped)

    def as_dict(self) -> dict[str, str]:
        return {"search_backend": self.backend, "zero_relevant": self.zero_relevant, "tie_rule": search.TIE_RULE,
                "ap_denominator": metrics.AP_DENOMINATOR, "relevance": metrics.RELEVANCE}


@dataclass
class Evaluation:
    rows: list[dict] = field(default_factory=list)
    per_query: dict[str, torch.Tensor] = field(default_factory=dict)


def mean(values: torch.Tensor) -> float:
    return float(torch.nanmean(values.double())) if len(values) else float("nan")


def has_relevant(labels: torch.Tensor, database_labels: torch.Tensor) -> torch.Tensor:
    """(Q,) bool: the query shares a label with at least one database item."""
    return labels @ database_labels.sum(0) > 0


def normalise_cutoffs(cutoffs, n_database: int) -> tuple[int | None, ...]:
    """Cut-offs in order, the first being the dataset's own; None (the whole database) for k >= N; no repeats."""
    out = []
    for k in cutoffs:
        k = None if k is None or k <= 0 or k >= n_database else int(k)
        if k not in out:
            out.append(k)
    return tuple(out)


def evaluate_queries(query_codes: torch.Tensor, database_codes: torch.Tensor, query_labels: torch.Tensor,
                     target_labels: torch.Tensor | None, database_labels: torch.Tensor, cutoffs,
                     conventions: EvaluationConventions, curves: bool = True) -> Evaluation:
    """Score ``query_codes`` against the true labels (mAP) and the target labels (t-MAP) at each cut-off.

    ``cutoffs[0]`` is the dataset's own cut-off (None = the whole database); ``per_query`` holds the APs at
    it. The database is ranked once per query batch (ties by database index) and every metric is read off
    that ranking, so memory stays at one (B, N) ranking whatever the number of queries.
    """
    cutoffs = normalise_cutoffs(cutoffs, len(database_codes))
    result = Evaluation()
    labelings = {"": query_labels.to(database_labels.device)}
    if target_labels is not None:
        labelings["t"] = target_labels.to(database_labels.device)
    ap = {(prefix, k): [] for prefix in labelings for k in cutoffs}
    precision = {prefix: torch.zeros(len(PRECISION_AT), dtype=torch.float64) for prefix in labelings}
    pr_sum = {prefix: 0.0 for prefix in labelings}
    pr_count = {prefix: 0 for prefix in labelings}
    levels = None
    step = search.query_batch_size(len(database_codes))
    for start in range(0, len(query_codes), step):
        ranked, _ = search.rank(query_codes[start:start + step], database_codes, None, backend=conventions.backend)
        for prefix, labels in labelings.items():
            batch = labels[start:start + step]
            for k in cutoffs:
                top = ranked if k is None else ranked[:, :k]
                ap[prefix, k].append(metrics.average_precision_at_k(top, batch, database_labels,
                                                                    zero_relevant=conventions.zero_relevant).cpu())
            if not curves:
                continue
            at_n = metrics.precision_at_n(ranked, batch, database_labels, list(PRECISION_AT))
            precision[prefix] += torch.tensor([at_n[n] for n in PRECISION_AT], dtype=torch.float64) * len(batch)
            valid = int(has_relevant(batch, database_labels).sum())
            if valid:
                levels, curve = metrics.precision_recall_curve(ranked, batch, database_labels)
                pr_sum[prefix] = pr_sum[prefix] + curve.cpu() * valid
                pr_count[prefix] += valid
    for prefix, labels in labelings.items():
        counts, relevant_counts = metrics.distance_histograms(query_codes, database_codes, labels, database_labels)
        for k in cutoffs:
            per_query = torch.cat(ap[prefix, k])
            tie_aware = metrics.expected_average_precision(counts, relevant_counts, k,
                                                           zero_relevant=conventions.zero_relevant)
            if k == cutoffs[0]:
                result.per_query[f"{prefix}ap"] = per_query
            result.rows += [
                {"metric": f"{prefix}map", "topk": k or 0, "value": mean(per_query)},
                {"metric": f"{prefix}map_tie_aware", "topk": k or 0, "value": mean(tie_aware)},
            ]
        if not curves:
            continue
        for n, total in zip(PRECISION_AT, precision[prefix] / len(query_codes)):
            result.rows.append({"metric": f"{prefix}precision_at", "topk": n, "value": float(total)})
        if pr_count[prefix]:
            for level, value in zip(levels, pr_sum[prefix] / pr_count[prefix]):
                result.rows.append({"metric": f"{prefix}pr_precision", "recall": float(level), "value": float(value)})
    return result
