"""Every retrieval score of a query from counting over the database, without sorting it.

Hamming distances between K-bit codes are integers 0..K, so the order by (distance, database index)
(``search.TIE_RULE``) is a counting sort: item j at distance d sits at rank

    rank_j = (items closer than d) + p_j + 1,   p_j = items at distance d with a smaller index.

One pass over the database in index order gives every item its distance and p_j, and the number of items
at each distance. For each labeling (the query's own labels, the target labels) the relevant items, taken
in index order and placed by distance, then come out with their ranks r_1 < r_2 < ... < r_R in rank order
(the n-th relevant item at distance d follows every relevant item closer than d), and the per-distance
histograms of relevant items fall out too (what the tie-aware AP needs, ``metrics.expected_average_precision``).
Everything else is read from the ranks, with the conventions of ``benchmark.metrics``:

    AP@k     = (1 / R_k) * sum_{n <= R_k} n / r_n,   R_k = #{n : r_n <= k}    (0 or NaN when R_k = 0)
    P@N      = #{n : r_n <= N} / N
    PR at l  = m / r_m,   m = ceil(l * R)                                        (NaN when R = 0)

Three ways to the same numbers (``ORDERS``): "count", the above as a compiled loop per query (numba, CPU,
queries in parallel); "sort", a stable sort of each query's 8- or 16-bit distances (on the GPU a radix
sort, i.e. a counting pass per 8-bit digit) read in rank order with cumulative sums (torch, on the codes'
device: the GPU's path); and "faiss", FAISS's ranking (``search.rank(backend="faiss")``) read the same way.
AP sums its terms in rank order in every path, so on a CPU the three agree to the bit.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from benchmark import metrics, search

ORDERS = ("auto", "count", "sort", "faiss")

try:
    import numba
    from numba.extending import intrinsic
except ImportError:  # the "sort" path still scores everything, only slower on a CPU
    numba = None


@dataclass
class QueryScores:
    """Per-query scores under one labeling; each row is one query."""

    average_precision: torch.Tensor  # float64 (Q, len(cutoffs)): AP@k for each cut-off
    expected_average_precision: torch.Tensor  # float64 (Q, len(cutoffs)): the tie-aware AP@k for each cut-off
    relevant_at: torch.Tensor        # int64 (Q, len(ns)): relevant items within the top N, for each N
    pr_precision: torch.Tensor       # float64 (Q, levels): precision at recall l / levels; NaN if no relevant item
    counts: torch.Tensor             # int64 (Q, K + 1): database items at each Hamming distance
    relevant_counts: torch.Tensor    # int64 (Q, K + 1): relevant ones among them


def numba_available() -> bool:
    return numba is not None


def score_queries(query_codes: torch.Tensor, database_codes: torch.Tensor, labelings: Sequence[torch.Tensor],
                  database_labels: torch.Tensor, cutoffs: Sequence[int], ns: Sequence[int] = (),
                  levels: int = 0, zero_relevant: str = "count_as_zero", order: str = "auto",
                  batch_size: int | None = None) -> list[QueryScores]:
    """Scores of every query under each labeling (its own labels for mAP, target labels for t-MAP, ...).

    AP@k and the tie-aware AP@k for each k in ``cutoffs`` (a cut-off at or beyond the database size scores
    the whole database), the relevant items in the top N for each N in ``ns``, the precision at recall 1/levels ... 1 (none when
    ``levels`` = 0) and the per-distance histograms. The labelings share one pass over the distances.
    ``order`` picks the path (``ORDERS``; "auto": "count" for CPU codes when numba imports, else "sort");
    results are on the codes' device, except "count"'s, which are on the CPU.
    """
    search.check_codes(query_codes, database_codes)
    metrics._check_zero_relevant(zero_relevant)
    n_database = len(database_codes)
    if len(database_labels) != n_database:
        raise ValueError(f"{n_database} database codes but {len(database_labels)} database label rows")
    for labels in labelings:
        metrics._check_labels(len(query_codes), labels, database_labels)
    for labels in (*labelings, database_labels):
        if labels.numel() and labels.min() < 0:  # with non-negative labels, a positive product = a shared label
            raise ValueError("labels must be non-negative (multi-hot); got a negative entry")
    for k in cutoffs:
        search.check_k(k)
    if any(isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 1 <= n <= n_database for n in ns):
        raise ValueError(f"every N must be an int in 1..{n_database} (the database size); got {list(ns)}")
    if isinstance(levels, bool) or not isinstance(levels, numbers.Integral) or levels < 0:
        raise ValueError(f"levels must be an int >= 0; got {levels!r}")
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; accepted: {', '.join(ORDERS)}")
    if order == "auto":
        order = "count" if numba is not None and not query_codes.is_cuda else "sort"
    if order == "count" and numba is None:
        raise ValueError("order 'count' needs numba, which does not import here; use 'sort'")
    if not labelings:
        return []
    cutoffs = [min(int(k), n_database) for k in cutoffs]
    ns = [int(n) for n in ns]
    if order == "count":
        return _count(query_codes, database_codes, labelings, database_labels, cutoffs, ns, int(levels),
                      zero_relevant == "exclude")
    step = batch_size or search.query_batch_size(n_database, _SORT_ELEMENTS)
    parts = [_rank_and_read(query_codes[start:start + step], database_codes,
                            [labels[start:start + step] for labels in labelings], database_labels, cutoffs, ns,
                            int(levels), zero_relevant, order)
             for start in range(0, len(query_codes), step)]
    if not parts:
        return [_empty_scores(query_codes, len(cutoffs), len(ns), levels) for _ in labelings]
    return [QueryScores(*(torch.cat(field) for field in zip(*(vars(part[s]).values() for part in parts))))
            for s in range(len(labelings))]


def _empty_scores(query_codes: torch.Tensor, n_cutoffs: int, n_ns: int, levels: int) -> QueryScores:
    def empty(width: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(0, width, dtype=dtype, device=query_codes.device)

    groups = query_codes.shape[1] + 1
    return QueryScores(empty(n_cutoffs, torch.float64), empty(n_cutoffs, torch.float64), empty(n_ns, torch.long),
                       empty(levels, torch.float64), empty(groups, torch.long), empty(groups, torch.long))


# ---------------------------------------------------------------- "sort" and "faiss": read a ranked list

_SORT_ELEMENTS = 1 << 24  # a query batch's (B, N) work arrays hold about this many elements


def _rank_and_read(query_codes: torch.Tensor, database_codes: torch.Tensor, labelings: list[torch.Tensor],
                   database_labels: torch.Tensor, cutoffs: list[int], ns: list[int], levels: int,
                   zero_relevant: str, order: str) -> list[QueryScores]:
    """One query batch: rank the whole database (stable sort of distances, or FAISS), then read the list."""
    device = query_codes.device
    groups = query_codes.shape[1] + 1
    empty = 0.0 if zero_relevant == "count_as_zero" else math.nan
    if order == "faiss":
        indices, distances = search.rank(query_codes, database_codes, None, backend="faiss")
    else:
        narrow = torch.uint8 if groups <= 256 else torch.int16 if groups <= 32768 else torch.int32
        distances, indices = torch.sort(search._distance_matrix(query_codes, database_codes).to(narrow), dim=1,
                                        stable=True)
    distances = distances.long()
    counts = _histogram(distances, groups)
    database_labels = database_labels.to(device=device, dtype=torch.float32)
    scores = []
    for labels in labelings:
        relevant = (labels.to(device=device, dtype=torch.float32) @ database_labels.T > 0).gather(1, indices)
        relevant_counts = _histogram(torch.where(relevant, distances, -1), groups)
        average_precision, relevant_at, pr_precision = _read_ranked(relevant, cutoffs, ns, levels, empty)
        tie_aware = torch.stack([metrics.expected_average_precision(counts, relevant_counts, k, zero_relevant)
                                 for k in cutoffs], 1)
        scores.append(QueryScores(average_precision, tie_aware, relevant_at, pr_precision, counts, relevant_counts))
    return scores


def _histogram(values: torch.Tensor, groups: int) -> torch.Tensor:
    """Per row, how many entries equal 0 .. groups - 1 (entries of -1 are not counted), int64 (B, groups)."""
    rows = torch.arange(len(values), device=values.device).unsqueeze(1) * (groups + 1)
    tally = torch.bincount((values + 1 + rows).flatten(), minlength=len(values) * (groups + 1))
    return tally.view(len(values), groups + 1)[:, 1:]


def _read_ranked(relevant: torch.Tensor, cutoffs: list[int], ns: list[int], levels: int,
                 empty: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """AP@k, relevant counts at N and the PR precision from a bool (B, N) relevance list in rank order."""
    device = relevant.device
    found = relevant.cumsum(1, dtype=torch.int32)                      # relevant items within the top r
    positions = torch.arange(1, relevant.shape[1] + 1, dtype=torch.float64, device=device)
    precision_sums = torch.where(relevant, found / positions, 0.0).cumsum(1)
    ends = torch.tensor(cutoffs, dtype=torch.long, device=device) - 1
    found_at_k = found[:, ends].double()
    average_precision = torch.where(found_at_k > 0, precision_sums[:, ends] / found_at_k.clamp(min=1), empty)
    del precision_sums
    relevant_at = found[:, torch.tensor(ns, dtype=torch.long, device=device) - 1].long()
    total = found[:, -1:].long()
    steps = torch.arange(1, levels + 1, device=device)
    needed = (steps * total + levels - 1) // levels                    # ceil(level * R) in integers
    reached = torch.searchsorted(found, needed.to(torch.int32)) + 1    # the rank of the needed-th relevant item
    pr_precision = torch.where(total > 0, needed.double() / reached, math.nan)
    return average_precision, relevant_at, pr_precision


# ---------------------------------------------------------------- "count": the compiled counting passes

def _pack(bits: np.ndarray) -> np.ndarray:
    """Rows of a bool (n, m) array as uint64 words (n, ceil(m / 64)), zero-padded alike on every row."""
    packed = np.packbits(bits, axis=1)
    padded = np.zeros((len(bits), 8 * max(1, -(-packed.shape[1] // 8))), dtype=np.uint8)
    padded[:, :packed.shape[1]] = packed
    return padded.view(np.uint64)


def _count(query_codes: torch.Tensor, database_codes: torch.Tensor, labelings: Sequence[torch.Tensor],
           database_labels: torch.Tensor, cutoffs: list[int], ns: list[int], levels: int,
           exclude: bool) -> list[QueryScores]:
    (n_query, bits), n_labelings = query_codes.shape, len(labelings)
    cutoff_order, n_order = np.argsort(cutoffs, kind="stable"), np.argsort(ns, kind="stable")
    average_precision = np.empty((n_labelings, n_query, len(cutoffs)), dtype=np.float64)
    expected_average_precision = np.empty_like(average_precision)
    relevant_at = np.empty((n_labelings, n_query, len(ns)), dtype=np.int64)
    pr_precision = np.empty((n_labelings, n_query, levels), dtype=np.float64)
    counts = np.empty((n_query, bits + 1), dtype=np.int64)
    relevant_counts = np.empty((n_labelings, n_query, bits + 1), dtype=np.int64)
    # word-major database arrays (words, N): the kernel's inner loops run along the database
    query_words = _pack(query_codes.cpu().numpy() > 0)
    database_words = np.ascontiguousarray(_pack(database_codes.cpu().numpy() > 0).T)
    label_words = np.stack([_pack(labels.cpu().numpy() > 0) for labels in labelings])
    database_label_words = np.ascontiguousarray(_pack(database_labels.cpu().numpy() > 0).T)
    threads = numba.get_num_threads()
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    try:
        _count_kernel(query_words, database_words, label_words, database_label_words,
                      np.asarray(cutoffs, dtype=np.int64)[cutoff_order], np.asarray(ns, dtype=np.int64)[n_order],
                      levels, exclude, average_precision, expected_average_precision, relevant_at, pr_precision,
                      counts, relevant_counts)
    finally:
        numba.set_num_threads(threads)
    average_precision[:, :, cutoff_order] = average_precision.copy()  # the kernel wrote them by ascending k
    expected_average_precision[:, :, cutoff_order] = expected_average_precision.copy()
    relevant_at[:, :, n_order] = relevant_at.copy()
    return [QueryScores(*(torch.from_numpy(array) for array in
                          (average_precision[s], expected_average_precision[s], relevant_at[s], pr_precision[s],
                           counts, relevant_counts[s])))
            for s in range(n_labelings)]


if numba is not None:
    @intrinsic
    def _popcount(typingctx, word):
        """The number of set bits of a uint64 (LLVM's ctpop: one instruction where the CPU has it)."""
        def codegen(context, builder, signature, args):
            return builder.ctpop(args[0])

        return numba.types.int64(numba.types.uint64), codegen

    @numba.njit(parallel=True, cache=True, nogil=True)
    def _count_kernel(query_words, database_words, label_words, database_label_words, cutoffs, ns, levels, exclude,
                      average_precision, expected_average_precision, relevant_at, pr_precision, counts,
                      relevant_counts):
        """Every query (in parallel) and labeling: see the module docstring. Cut-offs and ns come ascending."""
        n_database = database_words.shape[1]
        groups = counts.shape[1]
        empty = np.nan if exclude else 0.0  # the AP of a query without a relevant item in the top k
        for q in numba.prange(query_words.shape[0]):
            # the Hamming distance of every item, word by word (simple loops the compiler vectorises)
            distance = np.zeros(n_database, dtype=np.int32)
            position = np.empty(n_database, dtype=np.int32)
            tally = np.zeros(groups, dtype=np.int64)
            if query_words.shape[1] == 1:
                word, column = query_words[q, 0], database_words[0]
                for j in range(n_database):
                    d = _popcount(word ^ column[j])
                    distance[j] = d
                    position[j] = tally[d]
                    tally[d] += 1
            else:
                for w in range(query_words.shape[1]):
                    word, column = query_words[q, w], database_words[w]
                    for j in range(n_database):
                        distance[j] += _popcount(word ^ column[j])
                for j in range(n_database):
                    position[j] = tally[distance[j]]
                    tally[distance[j]] += 1
            closer = np.empty(groups, dtype=np.int64)
            items = 0
            for d in range(groups):
                closer[d] = items
                counts[q, d] = tally[d]
                items += tally[d]
            for s in range(label_words.shape[0]):
                rank_of = _relevant_ranks(label_words[s, q], database_label_words, distance, position, closer,
                                          relevant_counts[s, q])
                _read_ranks(rank_of, cutoffs, ns, levels, empty, average_precision[s, q], relevant_at[s, q],
                            pr_precision[s, q])
                scratch = np.empty(len(rank_of) + 1, dtype=np.float64)
                for c in range(len(cutoffs)):
                    expected_average_precision[s, q, c] = _expected_average_precision(
                        counts[q], relevant_counts[s, q], cutoffs[c], exclude, scratch)

    @numba.njit(nogil=True)
    def _relevant_ranks(query_label_words, database_label_words, distance, position, closer, relevant_counts):
        """The ranks (1-based, ascending) of the items sharing a label with the query; fills ``relevant_counts``."""
        n_database = len(distance)
        relevant = np.empty(n_database + 1, dtype=np.int32)  # their indices, ascending (branch-free: every
        found = 0                                             # index is written, a relevant one is kept)
        if len(query_label_words) == 1:  # up to 64 classes: one word per item
            word, column = query_label_words[0], database_label_words[0]
            for j in range(n_database):
                relevant[found] = j
                found += (word & column[j]) != 0
        else:
            shares = np.zeros(n_database, dtype=np.uint8)
            for w in range(len(query_label_words)):
                word, column = query_label_words[w], database_label_words[w]
                for j in range(n_database):
                    shares[j] |= (word & column[j]) != 0
            for j in range(n_database):
                relevant[found] = j
                found += shares[j]
        relevant_counts[:] = 0
        for i in range(found):
            relevant_counts[distance[relevant[i]]] += 1
        next_slot = np.empty(len(closer), dtype=np.int64)  # where the next relevant item at each distance goes
        closer_relevant = 0
        for d in range(len(closer)):
            next_slot[d] = closer_relevant
            closer_relevant += relevant_counts[d]
        rank_of = np.empty(found, dtype=np.int64)
        for i in range(found):
            j = relevant[i]
            d = distance[j]
            rank_of[next_slot[d]] = closer[d] + position[j] + 1
            next_slot[d] += 1
        return rank_of

    @numba.njit(nogil=True)
    def _read_ranks(rank_of, cutoffs, ns, levels, empty, average_precision, relevant_at, pr_precision):
        """AP@k, relevant counts at N and PR precision of one query from its ascending relevant ranks."""
        relevant = len(rank_of)
        found, precision_sum = 0, 0.0  # AP@k sums n / r_n in rank order, read at each cut-off
        for c in range(len(cutoffs)):
            while found < relevant and rank_of[found] <= cutoffs[c]:
                found += 1
                precision_sum += found / rank_of[found - 1]
            average_precision[c] = precision_sum / found if found else empty
        found = 0
        for i in range(len(ns)):
            while found < relevant and rank_of[found] <= ns[i]:
                found += 1
            relevant_at[i] = found
        for level in range(1, levels + 1):
            needed = (level * relevant + levels - 1) // levels  # ceil(level / levels * R) in integers
            pr_precision[level - 1] = needed / rank_of[needed - 1] if needed else np.nan

    @numba.njit(nogil=True)
    def _harmonic_difference(start, stop):
        """H_stop - H_start = sum_{i=start+1..stop} 1 / i for integers 0 <= start <= stop, to float64 rounding.

        Short or low ranges are summed; above 32 the asymptotic series of H_n (to n**-8, error below 1e-17)
        is differenced term by term, its logarithm as log1p, so nothing cancels."""
        total = 0.0
        while start < stop and (start < 32 or stop - start <= 32):
            start += 1
            total += 1.0 / start
        if start == stop:
            return total
        a, b = float(start), float(stop)
        series = (np.log1p((b - a) / a) + (1 / b - 1 / a) / 2 - (1 / b ** 2 - 1 / a ** 2) / 12
                  + (1 / b ** 4 - 1 / a ** 4) / 120 - (1 / b ** 6 - 1 / a ** 6) / 252 + (1 / b ** 8 - 1 / a ** 8) / 240)
        return total + series

    @numba.njit(nogil=True)
    def _expected_group_precision(before, slots, hits, hits_before):
        """``metrics._expected_group_precision`` for one block."""
        if slots == 0 or hits == 0:
            return 0.0
        inverse = _harmonic_difference(before, before + slots)
        ramp = slots - (before + 1) * inverse
        spread = (hits - 1) / (slots - 1) if slots > 1 else 0.0
        return hits / slots * ((hits_before + 1) * inverse + spread * ramp)

    @numba.njit(nogil=True)
    def _expected_average_precision(counts, relevant_counts, kept, exclude, log_weight):
        """``metrics.expected_average_precision`` of one query at cut-off ``kept`` (<= N); ``log_weight`` is
        scratch of at least max(relevant_counts) + 1 entries."""
        before, found, precision_sum = 0, 0, 0.0
        g = q = t = 0
        for d in range(len(counts)):
            if before + counts[d] <= kept:  # a group wholly within the top k
                precision_sum += _expected_group_precision(before, counts[d], relevant_counts[d], found)
                before += counts[d]
                found += relevant_counts[d]
            else:                           # the group the k-th position cuts
                if before < kept:
                    g, q, t = counts[d], relevant_counts[d], kept - before
                break
        # X = relevant items among the t boundary items taken: hypergeometric on low..high, weights from the
        # summed log ratios P(x + 1) / P(x) = (q - x)(t - x) / ((x + 1)(g - q - t + x + 1))
        low, high = max(0, t - (g - q)), min(q, t)
        log_weight[0] = 0.0
        largest = 0.0
        for i in range(high - low):
            x = low + i
            log_weight[i + 1] = log_weight[i] + np.log((q - x) * (t - x) / ((x + 1) * (g - q - t + x + 1)))
            largest = max(largest, log_weight[i + 1])
        inverse = _harmonic_difference(before, before + t) if t > 0 else 0.0
        ramp = t - (before + 1) * inverse
        weights, expected = 0.0, 0.0
        for i in range(high - low + 1):
            x = low + i
            weight = np.exp(log_weight[i] - largest)
            block = 0.0
            if x > 0:
                spread = (x - 1) / (t - 1) if t > 1 else 0.0
                block = x / t * ((found + 1) * inverse + spread * ramp)
            if found + x > 0:
                expected += weight * (precision_sum + block) / (found + x)
            weights += weight
        expected /= weights
        if not exclude:
            return expected
        if found == 0 and not (q > 0 and t > 0):
            return np.nan
        p_none = np.exp(log_weight[0] - largest) / weights if found == 0 and low == 0 else 0.0
        return expected / (1 - p_none)
