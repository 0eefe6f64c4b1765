"""Retrieval metrics with the attack papers' conventions, and perturbation sizes.

Relevance (``RELEVANCE``): a database item is relevant to a query when their multi-hot label vectors
share at least one label. t-MAP is mAP with the *target* labels passed as the query labels.

AP@k (``AP_DENOMINATOR``): over the top-k list, the mean of n / r_n over the relevant positions
r_1 < r_2 < ..., i.e. divided by the number of relevant items *within the top k*. A query without any
relevant item in its top k scores 0 (``"count_as_zero"``, xunguangwang's code) or is left out of the
mean (``"exclude"``, DHTA's code; its AP is NaN and means are NaN-means).

Rankings come from ``benchmark.search`` (ties by database index); the tie-aware AP is the exact
expectation over every order of the items at equal Hamming distance instead.

Relevance is only ever computed for ranked items, a batch of queries at a time, so 10,000 queries
against 60,000 items never hold a dense (Q, N) matrix.
"""
from __future__ import annotations

import math

import torch

from benchmark.data.dataset import shares_label
from benchmark.scoring import search

RELEVANCE = "share_one_label"
AP_DENOMINATOR = "relevant_in_top_k"
ZERO_RELEVANT_RULES = ("count_as_zero", "exclude")
TIE_AWARE = "expected_ap_over_uniform_tie_orders"
PR_DEFINITION = "precision_at_first_rank_reaching_ceil_level_times_relevant"
PERCEPTIBILITY = "rmse_over_all_pixels"
RECALL_LEVELS = 20  # precision_recall_curve's levels: 1/20, 2/20, ..., 1

_GATHER_ELEMENTS = 1 << 24  # a batch's (B, k, C) gathered labels hold about this many elements
_DENSE_ELEMENTS = 1 << 24   # a batch's (B, N) arrays hold about this many elements
_TIE_AWARE_ROWS = 1024      # queries per step of the expected AP: its (rows, X) hypergeometric table


def check_zero_relevant(zero_relevant: str) -> None:
    if zero_relevant not in ZERO_RELEVANT_RULES:
        raise ValueError(f"unknown zero_relevant rule {zero_relevant!r}; accepted: {', '.join(ZERO_RELEVANT_RULES)}")


def check_labels(n_query: int, query_labels: torch.Tensor, database_labels: torch.Tensor) -> None:
    if query_labels.ndim != 2 or database_labels.ndim != 2:
        raise ValueError("labels must be (n, C) multi-hot matrices")
    if len(query_labels) != n_query:
        raise ValueError(f"{n_query} queries but {len(query_labels)} query label rows")
    if query_labels.shape[1] != database_labels.shape[1]:
        raise ValueError(f"query labels have C={query_labels.shape[1]} classes, "
                         f"database labels C={database_labels.shape[1]}")


def relevance_batches(ranked_indices: torch.Tensor, query_labels: torch.Tensor, database_labels: torch.Tensor):
    """Yield ``(start, relevant)``: bool (B, k) relevance of the ranked items of queries start..start+B-1.

    The ranked items' labels are gathered, (B, k, C) at a time; when k * C > N one (B, N) label product
    per batch is cheaper, and the ranked entries are gathered from it.
    """
    check_labels(len(ranked_indices), query_labels, database_labels)
    device = ranked_indices.device
    database_labels = database_labels.to(device=device, dtype=torch.float32)
    n_query, k = ranked_indices.shape
    n_database, n_classes = database_labels.shape
    dense = k * n_classes > n_database
    rows = _DENSE_ELEMENTS // max(1, n_database) if dense else _GATHER_ELEMENTS // max(1, k * n_classes)
    rows = max(1, rows)
    for start in range(0, n_query, rows):
        ranked = ranked_indices[start:start + rows]
        labels = query_labels[start:start + rows].to(device=device, dtype=torch.float32)
        if dense:
            relevant = shares_label(labels, database_labels).gather(1, ranked)
        else:
            relevant = torch.bmm(database_labels[ranked], labels.unsqueeze(2)).squeeze(2) > 0
        yield start, relevant


def relevance(ranked_indices: torch.Tensor, query_labels: torch.Tensor, database_labels: torch.Tensor) -> torch.Tensor:
    """Bool (Q, k): ranked item j of query i shares at least one label with it."""
    out = torch.empty(ranked_indices.shape, dtype=torch.bool, device=ranked_indices.device)
    for start, relevant in relevance_batches(ranked_indices, query_labels, database_labels):
        out[start:start + len(relevant)] = relevant
    return out


def _average_precision(relevant: torch.Tensor, zero_relevant: str) -> torch.Tensor:
    """AP of each row of a bool (B, k) relevance list, divided by the relevant count in the list, float64 (B,)."""
    hits = relevant.double()
    found = hits.cumsum(1)
    positions = torch.arange(1, hits.shape[1] + 1, dtype=torch.float64, device=hits.device)
    total = found[:, -1] if hits.shape[1] else torch.zeros(len(hits), dtype=torch.float64, device=hits.device)
    precision_sum = (hits * found / positions).sum(1)
    empty = 0.0 if zero_relevant == "count_as_zero" else math.nan
    return torch.where(total > 0, precision_sum / total.clamp(min=1), empty)


def average_precision_at_k(ranked_indices: torch.Tensor, query_labels: torch.Tensor, database_labels: torch.Tensor,
                           zero_relevant: str = "count_as_zero") -> torch.Tensor:
    """The papers' AP@k of each query's ranked list (Q, k), float64 (Q,).

    AP = (1 / R_k) * sum over the relevant positions r_n (n = 1, 2, ...) of n / r_n, where R_k is the
    number of relevant items within the list (``AP_DENOMINATOR``). R_k = 0 gives 0 ("count_as_zero") or
    NaN ("exclude"). For t-MAP pass the target labels as ``query_labels``.
    """
    check_zero_relevant(zero_relevant)
    out = torch.empty(len(ranked_indices), dtype=torch.float64, device=ranked_indices.device)
    for start, relevant in relevance_batches(ranked_indices, query_labels, database_labels):
        out[start:start + len(relevant)] = _average_precision(relevant, zero_relevant)
    return out


def _mean(values: torch.Tensor) -> float:
    return float(torch.nanmean(values)) if len(values) else math.nan


def mean_average_precision(query_codes: torch.Tensor, database_codes: torch.Tensor, query_labels: torch.Tensor,
                           database_labels: torch.Tensor, k: int | None, backend: str = "torch",
                           zero_relevant: str = "count_as_zero", batch_size: int | None = None) -> float:
    """mAP@k: rank (``search.rank``), AP@k per query, mean over queries (a NaN-mean under "exclude").

    Queries are ranked a batch at a time, so ``k=None`` (the whole database) stays memory-safe.
    """
    return _mean(average_precisions(query_codes, database_codes, query_labels, database_labels, k, backend,
                                    zero_relevant, batch_size))


def average_precisions(query_codes: torch.Tensor, database_codes: torch.Tensor, query_labels: torch.Tensor,
                       database_labels: torch.Tensor, k: int | None, backend: str = "torch",
                       zero_relevant: str = "count_as_zero", batch_size: int | None = None) -> torch.Tensor:
    """AP@k of every query, float64 (Q,), ranking a batch of queries at a time."""
    check_zero_relevant(zero_relevant)
    check_labels(len(query_codes), query_labels, database_labels)
    step = batch_size or search.query_batch_size(len(database_codes))
    out = torch.empty(len(query_codes), dtype=torch.float64, device=query_codes.device)
    for start in range(0, len(query_codes), step):
        ranked, _ = search.rank(query_codes[start:start + step], database_codes, k, backend=backend,
                                batch_size=step)
        out[start:start + len(ranked)] = average_precision_at_k(ranked, query_labels[start:start + step],
                                                                database_labels, zero_relevant)
    return out


def distance_histograms(query_codes: torch.Tensor, database_codes: torch.Tensor, query_labels: torch.Tensor,
                        database_labels: torch.Tensor,
                        batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query and Hamming distance d = 0..K: how many database items, and how many relevant ones, int64 (Q, K+1)."""
    check_labels(len(query_codes), query_labels, database_labels)
    device = query_codes.device
    bits = query_codes.shape[1]
    database_labels = database_labels.to(device=device, dtype=torch.float32)
    counts = torch.zeros(len(query_codes), bits + 1, dtype=torch.long, device=device)
    relevant_counts = torch.zeros_like(counts)
    search.check_codes(query_codes, database_codes)
    step = batch_size or search.query_batch_size(len(database_codes))
    groups = 2 * (bits + 1)  # (distance, relevant) pairs
    for start in range(0, len(query_codes), step):
        cells = search.distance_matrix(query_codes[start:start + step], database_codes).float().mul_(2)
        labels = query_labels[start:start + step].to(device=device, dtype=torch.float32)
        cells += shares_label(labels, database_labels)
        index_dtype = torch.int32 if len(cells) * groups < 2 ** 31 else torch.long
        rows = torch.arange(len(cells), dtype=index_dtype, device=device).unsqueeze(1) * groups
        tally = torch.bincount((cells.to(index_dtype) + rows).flatten(), minlength=len(cells) * groups)
        tally = tally.view(-1, bits + 1, 2)
        counts[start:start + step] = tally.sum(2)
        relevant_counts[start:start + step] = tally[:, :, 1]
    return counts, relevant_counts


_DIRECT_TERMS = 32  # harmonic sums: up to this many leading terms are added one by one


def _harmonic_difference(start: torch.Tensor, stop: torch.Tensor) -> torch.Tensor:
    """H_stop - H_start = sum_{i=start+1..stop} 1 / i for integers 0 <= start <= stop (float64), to rounding.

    A difference of digamma values cancels (up to ~1e-13 relative for long, far ranges), so ranges of up to
    32 terms and terms below 33 are added one by one, and the rest takes the asymptotic series of H_n (to
    n**-8; error below 1e-17) differenced term by term, with its logarithm as log1p.
    """
    start, stop = torch.broadcast_tensors(start.double(), stop.double())
    direct = torch.where(stop - start <= _DIRECT_TERMS, stop - start, (_DIRECT_TERMS - start).clamp(min=0))
    terms = start.unsqueeze(-1) + 1 + torch.arange(_DIRECT_TERMS, dtype=torch.float64, device=start.device)
    total = torch.where(terms <= (start + direct).unsqueeze(-1), 1 / terms, 0.0).sum(-1)
    a, b = (start + direct).clamp(min=1), stop.clamp(min=1)
    series = (torch.log1p((b - a) / a) + (1 / b - 1 / a) / 2 - (1 / b ** 2 - 1 / a ** 2) / 12
              + (1 / b ** 4 - 1 / a ** 4) / 120 - (1 / b ** 6 - 1 / a ** 6) / 252 + (1 / b ** 8 - 1 / a ** 8) / 240)
    return total + torch.where(start + direct < stop, series, 0.0)


def _expected_group_precision(before: torch.Tensor, slots: torch.Tensor, hits: torch.Tensor,
                              hits_before: torch.Tensor) -> torch.Tensor:
    """E[sum of precision over the relevant positions] of a block at positions before+1..before+slots.

    The block holds ``hits`` relevant items at uniformly random slots; ``hits_before`` relevant items precede
    it. Slot j is relevant with probability hits/slots and, given that, has (j-1)(hits-1)/(slots-1)
    relevant items before it in the block on average, so the expectation is
    sum_j hits/slots * (hits_before + 1 + (j-1)(hits-1)/(slots-1)) / (before + j), in harmonic numbers.
    """
    inverse = _harmonic_difference(before, before + slots)       # sum_j 1 / (before + j)
    ramp = slots - (before + 1) * inverse                         # sum_j (j - 1) / (before + j)
    spread = torch.where(slots > 1, (hits - 1) / (slots - 1).clamp(min=1), 0.0)
    value = hits / slots.clamp(min=1) * ((hits_before + 1) * inverse + spread * ramp)
    return torch.where((slots > 0) & (hits > 0), value, 0.0)


def expected_average_precision(counts: torch.Tensor, relevant_counts: torch.Tensor, k: int | None,
                               zero_relevant: str = "count_as_zero") -> torch.Tensor:
    """Exact expected AP@k over uniformly random orders within each distance group, float64 (Q,).

    ``counts`` and ``relevant_counts`` (Q, G) hold, per query and distance group in rank order, how many
    items the group has and how many of them are relevant (``distance_histograms``). Groups that end
    within the top k are wholly in it; the boundary group (g items, q relevant) has t = k - m of its items
    in, m = items strictly closer, and the number X of relevant ones among them is hypergeometric(g, q, t).
    Given X = x the denominator is R_k = r + x (r = relevant strictly closer), so
    E[AP] = sum_x P(X = x) * (E[precision sum of the full groups] + E[of the boundary block | x]) / (r + x).
    Under "count_as_zero" an order with R_k = 0 scores 0. Under "exclude" the result is E[AP | R_k > 0]
    (what averaging over tie orders with a NaN-mean gives), NaN when no order has a relevant item in the top k.
    """
    check_zero_relevant(zero_relevant)
    search.check_k(k)
    k = None if k is None else int(k)
    rows = _TIE_AWARE_ROWS
    parts = [_expected_average_precision(counts[start:start + rows].double(),
                                         relevant_counts[start:start + rows].double(), k, zero_relevant)
             for start in range(0, len(counts), rows)]
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.float64, device=counts.device)


def _expected_average_precision(counts: torch.Tensor, relevant_counts: torch.Tensor, k: int | None,
                                zero_relevant: str) -> torch.Tensor:
    sizes = counts.sum(1, keepdim=True)
    kept = sizes if k is None else sizes.clamp(max=k)
    before = counts.cumsum(1) - counts
    hits_before = relevant_counts.cumsum(1) - relevant_counts
    full = before + counts <= kept
    expected_full = torch.where(full, _expected_group_precision(before, counts, relevant_counts, hits_before), 0.0)
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
    # X = relevant items among the t boundary items taken: hypergeometric on low..high. Its pmf up to a constant
    # is exp of the summed log ratios P(x + 1) / P(x) = (q - x)(t - x) / ((x + 1)(g - q - t + x + 1)), each a
    # ratio of integers exact in float64 (no log-gamma of large arguments, whose rounding is larger)
    low = (t - (g - q)).clamp(min=0)
    high = torch.minimum(q, t)
    width = int((high - low).max()) + 1 if len(q) else 1
    x = low + torch.arange(width, dtype=torch.float64, device=counts.device)  # (rows, width)
    possible = x <= high
    steps = torch.log((q - x) * (t - x)) - torch.log((x + 1) * (g - q - t + x + 1))
    log_weight = torch.cat([torch.zeros_like(low), steps[:, :-1]], 1).cumsum(1)
    log_weight = torch.where(possible, log_weight, -math.inf)
    weight = torch.exp(log_weight - log_weight.max(1, keepdim=True).values)
    pmf = weight / weight.sum(1, keepdim=True)
    # the boundary block's expected precision sum given x (``_expected_group_precision`` with hits = x):
    # its harmonic sums depend on the row only
    inverse = _harmonic_difference(m, m + t)
    ramp = t - (m + 1) * inverse
    spread = torch.where(t > 1, (x - 1) / (t - 1).clamp(min=1), 0.0)
    block = torch.where((t > 0) & (x > 0), x / t.clamp(min=1) * ((found + 1) * inverse + spread * ramp), 0.0)
    denominator = found + x
    value = torch.where(denominator > 0, (precision_sum + block) / denominator.clamp(min=1), 0.0)
    expected = (pmf * value).sum(1)
    if zero_relevant == "count_as_zero":
        return expected
    reachable = ((found > 0) | ((q > 0) & (t > 0))).squeeze(1)
    p_none = torch.where((found == 0) & (low == 0), pmf[:, :1], 0.0)  # P(R_k = 0): none closer and X = 0
    p_some_relevant = 1 - p_none.squeeze(1)
    return torch.where(reachable, expected / p_some_relevant.clamp(min=1e-300), math.nan)


def tie_aware_average_precision(query_codes: torch.Tensor, database_codes: torch.Tensor,
                                query_labels: torch.Tensor, database_labels: torch.Tensor, k: int | None,
                                zero_relevant: str = "count_as_zero",
                                batch_size: int | None = None) -> torch.Tensor:
    """Expected AP@k of each query over random orders of equally distant items (``TIE_AWARE``), float64 (Q,).

    Needs no ranking: only how many items, and relevant items, each query has at each Hamming distance.
    """
    search.check_k(k)
    counts, relevant_counts = distance_histograms(query_codes, database_codes, query_labels, database_labels,
                                                  batch_size)
    return expected_average_precision(counts, relevant_counts, k, zero_relevant)


def tie_aware_mean_average_precision(query_codes: torch.Tensor, database_codes: torch.Tensor,
                                     query_labels: torch.Tensor, database_labels: torch.Tensor, k: int | None,
                                     zero_relevant: str = "count_as_zero", batch_size: int | None = None) -> float:
    """Mean of ``tie_aware_average_precision`` over queries (a NaN-mean under "exclude")."""
    return _mean(tie_aware_average_precision(query_codes, database_codes, query_labels, database_labels, k,
                                             zero_relevant, batch_size))


def precision_at_n(ranked_indices: torch.Tensor, query_labels: torch.Tensor, database_labels: torch.Tensor,
                   ns: list[int]) -> dict[int, float]:
    """P@N for each N in ``ns``: the mean over queries of (relevant items in the top N) / N."""
    if not ns:
        return {}
    if min(ns) < 1 or max(ns) > ranked_indices.shape[1]:
        raise ValueError(f"every N must be in 1..{ranked_indices.shape[1]} (the ranked list's length); got {ns}")
    unique = sorted(set(ns))
    cut = torch.tensor(unique, device=ranked_indices.device) - 1
    found = torch.zeros(len(unique), dtype=torch.float64, device=ranked_indices.device)
    for _, relevant in relevance_batches(ranked_indices[:, :unique[-1]], query_labels, database_labels):
        found += relevant.long().cumsum(1)[:, cut].sum(0).double()
    n_query = len(ranked_indices)
    by_n = {n: float(total) / (n_query * n) if n_query else math.nan for n, total in zip(unique, found.tolist())}
    return {n: by_n[n] for n in ns}


def precision_recall_curve(ranked_indices: torch.Tensor, query_labels: torch.Tensor, database_labels: torch.Tensor,
                           levels: int = RECALL_LEVELS) -> tuple[torch.Tensor, torch.Tensor]:
    """Precision at recall 1/levels, 2/levels, ..., 1 (``PR_DEFINITION``), float64 (levels,) each.

    Interpolation-free: for a query with R relevant items in the whole database, the precision at recall
    level l is n / r, where n = ceil(l * R) and r is the first rank at which n relevant items have been
    retrieved. Averaged over the queries with R > 0 (NaN if there are none). ``ranked_indices`` must rank
    the whole database (``search.rank(..., k=None)``), so that R is known.
    """
    if ranked_indices.shape[1] != len(database_labels):
        raise ValueError(f"the precision-recall curve needs the whole database ranked ({len(database_labels)} "
                         f"items per query); got lists of {ranked_indices.shape[1]}")
    device = ranked_indices.device
    steps = torch.arange(1, levels + 1, device=device)
    totals = torch.zeros(levels, dtype=torch.float64, device=device)
    counted = 0
    for _, relevant in relevance_batches(ranked_indices, query_labels, database_labels):
        found = relevant.long().cumsum(1)
        total = found[:, -1:]
        needed = (steps * total + levels - 1) // levels  # ceil(level * R) in integers
        reached = torch.searchsorted(found, needed)       # first 0-based rank holding that many relevant items
        keep = total.squeeze(1) > 0
        totals += (needed[keep].double() / (reached[keep] + 1).double()).sum(0)
        counted += int(keep.sum())
    precision = totals / counted if counted else torch.full_like(totals, math.nan)
    return steps.double() / levels, precision


def _check_images(x: torch.Tensor, x_adv: torch.Tensor) -> None:
    if x.shape != x_adv.shape:
        raise ValueError(f"clean and adversarial images differ in shape: {tuple(x.shape)} vs {tuple(x_adv.shape)}")


def perceptibility(x: torch.Tensor, x_adv: torch.Tensor) -> float:
    """Per-pixel RMSE over every pixel of every image in [0, 1]: sqrt(mean((x_adv - x)^2)) (ProS-GAN Table 2)."""
    _check_images(x, x_adv)
    return float(torch.sqrt(torch.mean((x_adv.double() - x.double()) ** 2)))


def linf(x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    """L-inf norm of each image's perturbation, (B,)."""
    _check_images(x, x_adv)
    return (x_adv - x).flatten(1).abs().amax(1)


def l2(x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    """L2 norm of each image's perturbation, (B,)."""
    _check_images(x, x_adv)
    return torch.linalg.vector_norm((x_adv - x).flatten(1), dim=1)
