"""The evaluation this project used before ``benchmark.scoring`` (commit bd5ded8), frozen as a reference.

It ranks the whole database per query batch (``search.rank``) and reads every metric off the ranking, and
its tie-aware AP evaluates the hypergeometric table with log-gamma functions. Only tests import it: the
new counting evaluation must give the same numbers.
"""
from __future__ import annotations

import math

import torch

from benchmark.scoring import metrics, search

PRECISION_AT = (100, 200, 300, 400, 500, 600, 700, 800, 900, 1000)


def _expected_group_precision(before, slots, hits, hits_before):
    inverse = torch.special.digamma(before + slots + 1) - torch.special.digamma(before + 1)
    ramp = slots - (before + 1) * inverse
    spread = torch.where(slots > 1, (hits - 1) / (slots - 1).clamp(min=1), 0.0)
    value = hits / slots.clamp(min=1) * ((hits_before + 1) * inverse + spread * ramp)
    return torch.where((slots > 0) & (hits > 0), value, 0.0)


def _log_binomial(n: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    return torch.lgamma(n + 1) - torch.lgamma(r + 1) - torch.lgamma((n - r).clamp(min=0) + 1)


def expected_average_precision(counts: torch.Tensor, relevant_counts: torch.Tensor, k: int | None,
                               zero_relevant: str = "count_as_zero") -> torch.Tensor:
    parts = [_expected_average_precision(counts[start:start + 1024].double(),
                                         relevant_counts[start:start + 1024].double(), k, zero_relevant)
             for start in range(0, len(counts), 1024)]
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.float64)


def _expected_average_precision(counts, relevant_counts, k, zero_relevant):
    sizes = counts.sum(1, keepdim=True)
    kept = sizes if k is None else sizes.clamp(max=k)
    before = counts.cumsum(1) - counts
    hits_before = relevant_counts.cumsum(1) - relevant_counts
    full = before + counts <= kept
    expected_full = torch.where(full, _expected_group_precision(before, counts, relevant_counts,
                                                                        hits_before), 0.0)
    precision_sum = expected_full.sum(1, keepdim=True)
    found = torch.where(full, relevant_counts, 0.0).sum(1, keepdim=True)  # r: relevant in the full groups
    # the boundary group, cut by the k-th position (none when k falls on a group's end: then g = q = t = 0)
    cut = (before < kept) & (before + counts > kept)
    group = cut.double().argmax(1, keepdim=True)
    has_cut = cut.any(1, keepdim=True)
    g = torch.where(has_cut, counts.gather(1, group), 0.0)
    q = torch.where(has_cut, relevant_counts.gather(1, group), 0.0)
    m = torch.where(has_cut, before.gather(1, group), 0.0)
    t = torch.where(has_cut, kept - m, 0.0)
    top = int(torch.minimum(q, t).max()) if len(q) else 0
    x = torch.arange(top + 1, dtype=torch.float64, device=counts.device).unsqueeze(0)  # (1, X)
    possible = (x <= q) & (x <= t) & (t - x <= g - q)
    log_pmf = _log_binomial(q, x) + _log_binomial(g - q, t - x) - _log_binomial(g, t)
    pmf = torch.where(possible, torch.exp(torch.where(possible, log_pmf, 0.0)), 0.0)
    pmf = pmf / pmf.sum(1, keepdim=True)
    block = _expected_group_precision(m.expand_as(pmf), t.expand_as(pmf), x.expand_as(pmf),
                                              found.expand_as(pmf))
    denominator = found + x
    value = torch.where(denominator > 0, (precision_sum + block) / denominator.clamp(min=1), 0.0)
    expected = (pmf * value).sum(1)
    if zero_relevant == "count_as_zero":
        return expected
    reachable = ((found > 0) | ((q > 0) & (t > 0))).squeeze(1)
    p_some_relevant = 1 - torch.where(found > 0, 0.0, pmf[:, :1]).squeeze(1)
    return torch.where(reachable, expected / p_some_relevant.clamp(min=1e-300), math.nan)


def evaluate_queries(query_codes, database_codes, query_labels, target_labels, database_labels, topk,
                     backend="torch", zero_relevant="count_as_zero") -> tuple[list[dict], dict[str, torch.Tensor]]:
    """The previous ``evaluation.evaluate_queries``: its rows and per-query APs."""
    rows, per_query_ap = [], {}
    cutoff = topk or 0
    labelings = {"": query_labels, "t": target_labels}
    ap = {prefix: [] for prefix in labelings}
    precision = {prefix: torch.zeros(len(PRECISION_AT), dtype=torch.float64) for prefix in labelings}
    pr_sum = {prefix: 0.0 for prefix in labelings}
    pr_count = {prefix: 0 for prefix in labelings}
    levels = None
    step = search.query_batch_size(len(database_codes))
    for start in range(0, len(query_codes), step):
        ranked, _ = search.rank(query_codes[start:start + step], database_codes, None, backend=backend)
        top = ranked if topk is None else ranked[:, :topk]
        for prefix, labels in labelings.items():
            batch = labels[start:start + step]
            ap[prefix].append(metrics.average_precision_at_k(top, batch, database_labels,
                                                             zero_relevant=zero_relevant))
            at_n = metrics.precision_at_n(ranked, batch, database_labels, list(PRECISION_AT))
            precision[prefix] += torch.tensor([at_n[n] for n in PRECISION_AT], dtype=torch.float64) * len(batch)
            valid = int((batch @ database_labels.sum(0) > 0).sum())
            if valid:
                levels, curve = metrics.precision_recall_curve(ranked, batch, database_labels)
                pr_sum[prefix] = pr_sum[prefix] + curve * valid
                pr_count[prefix] += valid
    for prefix, labels in labelings.items():
        per_query = torch.cat(ap[prefix])
        counts, relevant_counts = metrics.distance_histograms(query_codes, database_codes, labels, database_labels)
        tie_aware = expected_average_precision(counts, relevant_counts, topk, zero_relevant)
        per_query_ap[f"{prefix}ap"] = per_query
        rows += [{"metric": f"{prefix}map", "topk": cutoff, "value": float(torch.nanmean(per_query))},
                 {"metric": f"{prefix}map_tie_aware", "topk": cutoff, "value": float(torch.nanmean(tie_aware))}]
        for n, total in zip(PRECISION_AT, precision[prefix] / len(query_codes)):
            rows.append({"metric": f"{prefix}precision_at", "topk": n, "value": float(total)})
        if pr_count[prefix]:
            for level, value in zip(levels, pr_sum[prefix] / pr_count[prefix]):
                rows.append({"metric": f"{prefix}pr_precision", "recall": float(level), "value": float(value)})
    return rows, per_query_ap
