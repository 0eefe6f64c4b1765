"""Every retrieval score of a query from counting over the database, without sorting it.

Hamming distances between K-bit codes are integers 0..K, so the order by (distance, database index)
(``search.TIE_RULE``) is a counting sort: item j at distance d sits at rank

    rank_j = (items closer than d) + p_j + 1,   p_j = items at distance d with a smaller index.

One pass over the database in index order gives every item its distance and p_j, and the number of items
at each distance. For each labeling (the query's own labels, the target labels) the relevant items, taken
in index order and placed by distance, then come out with their ranks r_1 < r_2 < ... < r_R in rank order
(the h-th relevant item at distance d follows every relevant item closer than d), and the per-distance
counts of relevant items fall out too. On a single-label database the relevant items of a one-label query
are its class's items, listed once per call; otherwise they are found item by item.
Everything is read from the ranks and counts, with the conventions of ``benchmark.metrics``:

    AP@k     = (1 / R_k) * sum_{n <= R_k} n / r_n,   R_k = #{n : r_n <= k}    (0 or NaN when R_k = 0)
    P@N      = #{n : r_n <= N} / N
    PR at l  = m / r_m,   m = ceil(l * R)                                        (NaN when R = 0)
    tie-aware AP@k from the per-distance counts (``metrics.expected_average_precision``)

Three ways to the same numbers (``ORDERS``): "count", the above as a compiled loop (numba, CPU, blocks of
queries in parallel, two queries' counting passes interleaved; an item's distance and p_j packed in one
key); "sort", a stable sort of each query's 8- or 16-bit distances (on the GPU a radix sort, i.e. a counting
pass per 8-bit digit) read in rank order with cumulative sums (torch, on the codes' device: the GPU's path);
and "faiss", FAISS's ranking (``search.rank(backend="faiss")``) read the same way. The counts, P@N and PR
are the same integers and divisions in every path, so they agree to the bit; AP sums the same correctly
rounded terms n / r_n, left to right in "sort" and "faiss", in the compiled path in the order the compiler
vectorises the sum, so it agrees to float64 rounding, as does the tie-aware AP (the compiled path walks the
hypergeometric weights by their ratios, torch takes them from log-sums).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from benchmark.data.dataset import shares_label
from benchmark.scoring import metrics, search

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
    the whole database), the relevant items in the top N for each N in ``ns``, the precision at recall
    1/levels ... 1 (none when ``levels`` = 0) and the per-distance histograms. The labelings share the
    distances. ``order`` picks the path (``ORDERS``; "auto": "count" for CPU codes when numba imports, else
    "sort"); results are on the codes' device, except "count"'s, which are on the CPU.
    """
    _check_inputs(query_codes, database_codes, labelings, database_labels, cutoffs, ns, levels, zero_relevant)
    n_database = len(database_codes)
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
    elements = _SORT_ELEMENTS_CUDA if query_codes.is_cuda else _SORT_ELEMENTS
    step = batch_size or search.query_batch_size(n_database, elements)
    parts = [_rank_and_read(query_codes[start:start + step], database_codes,
                            [labels[start:start + step] for labels in labelings], database_labels, cutoffs, ns,
                            int(levels), zero_relevant, order)
             for start in range(0, len(query_codes), step)]
    if not parts:
        return [_empty_scores(query_codes, len(cutoffs), len(ns), levels) for _ in labelings]
    return [QueryScores(*(torch.cat(field) for field in zip(*(vars(part[s]).values() for part in parts))))
            for s in range(len(labelings))]


def _check_inputs(query_codes, database_codes, labelings, database_labels, cutoffs, ns, levels,
                  zero_relevant) -> None:
    search.check_codes(query_codes, database_codes)
    metrics.check_zero_relevant(zero_relevant)
    n_database = len(database_codes)
    if len(database_labels) != n_database:
        raise ValueError(f"{n_database} database codes but {len(database_labels)} database label rows")
    for labels in labelings:
        metrics.check_labels(len(query_codes), labels, database_labels)
    for labels in (*labelings, database_labels):
        if labels.numel() and labels.min() < 0:  # with non-negative labels, a positive product = a shared label
            raise ValueError("labels must be non-negative (multi-hot); got a negative entry")
    for k in cutoffs:
        search.check_k(k)
    if any(isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 1 <= n <= n_database for n in ns):
        raise ValueError(f"every N must be an int in 1..{n_database} (the database size); got {list(ns)}")
    if isinstance(levels, bool) or not isinstance(levels, numbers.Integral) or levels < 0:
        raise ValueError(f"levels must be an int >= 0; got {levels!r}")


def _empty_scores(query_codes: torch.Tensor, n_cutoffs: int, n_ns: int, levels: int) -> QueryScores:
    def empty(width: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(0, width, dtype=dtype, device=query_codes.device)

    groups = query_codes.shape[1] + 1
    return QueryScores(empty(n_cutoffs, torch.float64), empty(n_cutoffs, torch.float64), empty(n_ns, torch.long),
                       empty(levels, torch.float64), empty(groups, torch.long), empty(groups, torch.long))


# ---------------------------------------------------------------- "sort" and "faiss": read a ranked list

_SORT_ELEMENTS = 1 << 24       # a query batch's (B, N) work arrays hold about this many elements (~0.4 GB)
_SORT_ELEMENTS_CUDA = 1 << 26  # on a GPU (~1.6 GB)


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
        distances, indices = torch.sort(search.distance_matrix(query_codes, database_codes).to(narrow), dim=1,
                                        stable=True)
    distances = distances.long()
    counts = _histogram(distances, groups)
    database_labels = database_labels.to(device=device, dtype=torch.float32)
    scores = []
    for labels in labelings:
        relevant = shares_label(labels.to(device), database_labels).gather(1, indices)
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

def _pack(bits: np.ndarray, word: type = np.uint64) -> np.ndarray:
    """Rows of a bool (n, m) array as ``word``s (n, ceil(m / word bits)), zero-padded alike on every row."""
    packed = np.packbits(bits, axis=1)
    size = np.dtype(word).itemsize
    padded = np.zeros((len(bits), size * max(1, -(-packed.shape[1] // size))), dtype=np.uint8)
    padded[:, :packed.shape[1]] = packed
    return padded.view(word)


def _count(query_codes: torch.Tensor, database_codes: torch.Tensor, labelings: Sequence[torch.Tensor],
           database_labels: torch.Tensor, cutoffs: list[int], ns: list[int], levels: int,
           exclude: bool) -> list[QueryScores]:
    (n_query, bits), n_labelings = query_codes.shape, len(labelings)
    n_database = len(database_codes)
    cutoff_order, n_order = np.argsort(cutoffs, kind="stable"), np.argsort(ns, kind="stable")
    average_precision = np.empty((n_labelings, n_query, len(cutoffs)), dtype=np.float64)
    expected_average_precision = np.empty_like(average_precision)
    relevant_at = np.empty((n_labelings, n_query, len(ns)), dtype=np.int64)
    pr_precision = np.empty((n_labelings, n_query, levels), dtype=np.float64)
    counts = np.empty((n_query, bits + 1), dtype=np.int64)
    relevant_counts = np.empty((n_labelings, n_query, bits + 1), dtype=np.int64)
    # word-major database arrays (words, N): the kernel's inner loops run along the database
    code_word = np.uint32 if bits <= 32 else np.uint64  # half the database's bytes for the common lengths
    query_words = _pack(query_codes.cpu().numpy() > 0, code_word)
    database_words = np.ascontiguousarray(_pack(database_codes.cpu().numpy() > 0, code_word).T)
    label_bits = [labels.cpu().numpy() > 0 for labels in labelings]
    label_words = np.stack([_pack(bits) for bits in label_bits])
    database_bits = database_labels.cpu().numpy() > 0
    database_label_words = np.ascontiguousarray(_pack(database_bits).T)
    query_class, class_offsets, class_items = _class_lists(label_bits, database_bits)
    # an item's key packs its distance (low ``shift`` bits) and its position among the items at that distance;
    # 32-bit keys where every key fits, and 8-bit distances where every distance does
    shift = max(1, bits.bit_length())
    key_type = np.int32 if (n_database << shift) < 2 ** 31 else np.int64
    distance_type = np.uint8 if bits < 256 else np.int32
    # as many threads as torch has; with numba's OpenMP layer the two share one thread count, so torch's is
    # put back afterwards
    torch_threads = torch.get_num_threads()
    numba.set_num_threads(max(1, min(torch_threads, numba.config.NUMBA_NUM_THREADS)))
    try:
        _count_kernel(query_words, database_words, np.empty(0, distance_type), np.empty(0, key_type), shift,
                      label_words, database_label_words, query_class, class_offsets, class_items,
                      np.asarray(cutoffs, dtype=np.int64)[cutoff_order], np.asarray(ns, dtype=np.int64)[n_order],
                      levels, exclude, average_precision, expected_average_precision, relevant_at, pr_precision,
                      counts, relevant_counts)
    finally:
        torch.set_num_threads(torch_threads)
    average_precision[:, :, cutoff_order] = average_precision.copy()  # the kernel wrote them by ascending k
    expected_average_precision[:, :, cutoff_order] = expected_average_precision.copy()
    relevant_at[:, :, n_order] = relevant_at.copy()
    return [QueryScores(*(torch.from_numpy(array) for array in
                          (average_precision[s], expected_average_precision[s], relevant_at[s], pr_precision[s],
                           counts, relevant_counts[s])))
            for s in range(n_labelings)]


def _class_lists(label_bits: list[np.ndarray], database_bits: np.ndarray) -> tuple[np.ndarray, ...]:
    """For a single-label database, its items grouped by class (index order within each), and per labeling
    and query the class whose items are its relevant ones: the query's one label, or -1 (a multi-label
    database or query: the kernel then finds the items sharing a label item by item)."""
    n_query = len(label_bits[0])
    query_class = np.full((len(label_bits), n_query), -1, dtype=np.int64)
    if not len(database_bits) or not (database_bits.sum(1) == 1).all():
        return query_class, np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int32)
    classes = database_bits.argmax(1)
    class_items = np.argsort(classes, kind="stable").astype(np.int32)
    class_offsets = np.concatenate([[0], np.cumsum(np.bincount(classes, minlength=database_bits.shape[1]))])
    for s, bits in enumerate(label_bits):
        one_label = bits.sum(1) == 1
        query_class[s, one_label] = bits[one_label].argmax(1)
    return query_class, class_offsets.astype(np.int64), class_items

if numba is not None:
    @intrinsic
    def _popcount(typingctx, word):
        """The number of set bits of an unsigned word (LLVM's ctpop: one instruction where the CPU has it)."""
        def codegen(context, builder, signature, args):
            return builder.ctpop(args[0])

        return word(word), codegen

    _QUERY_BLOCK = 32  # queries per parallel task (their work arrays are allocated once per task)
    _STREAMS = 4       # a query's relevant items are placed as this many interleaved runs (see _relevant_ranks)

    @numba.njit(parallel=True, cache=True, nogil=True, error_model="numpy")
    def _count_kernel(query_words, database_words, distance_template, key_template, shift, label_words,
                      database_label_words, query_class, class_offsets, class_items, cutoffs, ns, levels, exclude,
                      average_precision, expected_average_precision, relevant_at, pr_precision, counts,
                      relevant_counts):
        """Every query (blocks in parallel) and labeling: see the module docstring. Cut-offs and ns come ascending.

        Queries go in pairs: the two counting passes over the database interleave, so each hides the other's
        wait on its tallies."""
        n_query, n_database = query_words.shape[0], database_words.shape[1]
        groups = counts.shape[1]
        empty = np.nan if exclude else 0.0  # the AP of a query without a relevant item in the top k
        for block in numba.prange((n_query + _QUERY_BLOCK - 1) // _QUERY_BLOCK):
            distance = np.empty((2, n_database), dtype=distance_template.dtype)
            key = np.empty((2, n_database), dtype=key_template.dtype)
            rank_of = np.empty(n_database, dtype=np.int64)
            buffer = np.empty(n_database, dtype=key_template.dtype)
            tally = np.empty((2, groups), dtype=np.int64)
            next_slot = np.empty((_STREAMS, groups), dtype=np.int64)
            closer = np.empty(groups, dtype=np.int64)
            inverse = np.empty(groups)
            for first in range(block * _QUERY_BLOCK, min(n_query, (block + 1) * _QUERY_BLOCK), 2):
                pair = (first, min(first + 1, n_query - 1))  # an odd last query is counted twice, scored once
                _distances(query_words, pair, database_words, distance)
                _keys(distance, shift, key, tally)
                for b in range(2 if pair[1] != pair[0] else 1):
                    q = pair[b]
                    items = 0
                    for d in range(groups):
                        closer[d] = items
                        counts[q, d] = tally[b, d]
                        inverse[d] = _harmonic_difference(items, items + tally[b, d])
                        items += tally[b, d]
                    for s in range(label_words.shape[0]):
                        if query_class[s, q] >= 0:  # a single-label database and a one-label query: its class
                            c = query_class[s, q]
                            relevant = class_items[class_offsets[c]:class_offsets[c + 1]]
                        else:
                            relevant = _sharing_items(label_words[s, q], database_label_words)
                        found = _relevant_ranks(relevant, key[b], shift, closer, relevant_counts[s, q], buffer,
                                                next_slot, rank_of)
                        _read_ranks(rank_of[:found], cutoffs, ns, levels, empty, average_precision[s, q],
                                    relevant_at[s, q], pr_precision[s, q])
                        _expected_average_precisions(counts[q], relevant_counts[s, q], closer, inverse, cutoffs,
                                                     exclude, expected_average_precision[s, q])

    @numba.njit(nogil=True, error_model="numpy")
    def _distances(query_words, pair, database_words, distance):
        """The Hamming distance of every item to both queries of ``pair``, word by word (loops the compiler
        vectorises)."""
        for b in range(2):
            word, column = query_words[pair[b], 0], database_words[0]
            for j in range(database_words.shape[1]):
                distance[b, j] = _popcount(word ^ column[j])
            for w in range(1, query_words.shape[1]):
                word, column = query_words[pair[b], w], database_words[w]
                for j in range(database_words.shape[1]):
                    distance[b, j] += _popcount(word ^ column[j])

    @numba.njit(nogil=True, error_model="numpy")
    def _keys(distance, shift, key, tally):
        """The counting sort's bookkeeping for two queries at once: each item's key, (its position among the
        items at its distance, those with a smaller index) << shift | its distance, and the items at each
        distance."""
        tally[:] = 0
        for j in range(distance.shape[1]):
            a, b = distance[0, j], distance[1, j]
            x, y = tally[0, a], tally[1, b]
            key[0, j] = (x << shift) | a
            key[1, j] = (y << shift) | b
            tally[0, a] = x + 1
            tally[1, b] = y + 1

    @numba.njit(nogil=True, error_model="numpy")
    def _sharing_items(query_label_words, database_label_words):
        """Indices (ascending) of the items sharing a label with the query."""
        n_database = database_label_words.shape[1]
        shares = np.zeros(n_database, dtype=np.uint8)
        for w in range(len(query_label_words)):
            word, column = query_label_words[w], database_label_words[w]
            for j in range(n_database):
                shares[j] |= (word & column[j]) != 0
        items = np.empty(n_database + 1, dtype=np.int32)  # branch-free: every index is written, a sharing
        found = 0                                          # one is kept
        for j in range(n_database):
            items[found] = j
            found += shares[j]
        return items[:found]

    @numba.njit(nogil=True, error_model="numpy")
    def _relevant_ranks(relevant, key, shift, closer, relevant_counts, buffer, next_slot, rank_of):
        """Ranks (1-based, ascending) of the ``relevant`` items (indices, ascending) into ``rank_of[:R]``; returns
        R and fills ``relevant_counts``.

        The h-th relevant item at distance d (index order) is the (relevant items closer than d + h + 1)-th
        relevant item in rank order, at rank closer[d] + its position + 1. The items go as ``_STREAMS`` runs of
        consecutive indices, a step of each in turn, each with its own next slot per distance (run s's slots at
        d follow those of runs before it): four independent chains of counter updates instead of one."""
        mask = (1 << shift) - 1
        total = len(relevant)
        run = total // _STREAMS
        next_slot[:] = 0
        for i in range(run):  # the keys, and each run's count per distance
            for s in range(_STREAMS):
                k = key[relevant[s * run + i]]
                buffer[s * run + i] = k
                next_slot[s, k & mask] += 1
        for i in range(_STREAMS * run, total):  # the last run's tail
            k = key[relevant[i]]
            buffer[i] = k
            next_slot[_STREAMS - 1, k & mask] += 1
        found = 0
        for d in range(len(closer)):
            relevant_counts[d] = 0
            for s in range(_STREAMS):
                count = next_slot[s, d]
                next_slot[s, d] = found
                found += count
                relevant_counts[d] += count
        for i in range(run):
            for s in range(_STREAMS):
                k = buffer[s * run + i]
                d = k & mask
                slot = next_slot[s, d]
                rank_of[slot] = closer[d] + (k >> shift) + 1
                next_slot[s, d] = slot + 1
        for i in range(_STREAMS * run, total):  # the last run's tail
            k = buffer[i]
            d = k & mask
            slot = next_slot[_STREAMS - 1, d]
            rank_of[slot] = closer[d] + (k >> shift) + 1
            next_slot[_STREAMS - 1, d] = slot + 1
        return total

    @numba.njit(nogil=True, error_model="numpy")
    def _read_ranks(rank_of, cutoffs, ns, levels, empty, average_precision, relevant_at, pr_precision):
        """AP@k, relevant counts at N and PR precision of one query from its ascending relevant ranks."""
        relevant = len(rank_of)
        found, precision_sum = 0, 0.0  # AP@k sums n / r_n over the ranks up to each cut-off in turn
        for c in range(len(cutoffs)):
            within = np.searchsorted(rank_of, cutoffs[c], side="right")
            precision_sum += _precision_sum(rank_of, found, within)
            found = within
            average_precision[c] = precision_sum / found if found else empty
        for i in range(len(ns)):
            relevant_at[i] = np.searchsorted(rank_of, ns[i], side="right")
        for level in range(1, levels + 1):
            needed = (level * relevant + levels - 1) // levels  # ceil(level / levels * R) in integers
            pr_precision[level - 1] = needed / rank_of[needed - 1] if needed else np.nan

    @numba.njit(nogil=True, error_model="numpy", fastmath={"reassoc", "nsz"})
    def _precision_sum(rank_of, start, stop):
        """sum_{n = start..stop - 1} (n + 1) / rank_of[n]: every term correctly rounded, their sum in the order the
        compiler vectorises it (so it may differ from a left-to-right sum in the last bits)."""
        total = 0.0
        for n in range(start, stop):
            total += (n + 1) / rank_of[n]
        return total

    @numba.njit(nogil=True, error_model="numpy")
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
    def _block_precision(before, slots, hits, hits_before, inverse):
        """``metrics._expected_group_precision`` of one block, given its sum of 1 / rank ``inverse``."""
        if slots == 0 or hits == 0:
            return 0.0
        spread = (hits - 1) / (slots - 1) if slots > 1 else 0.0
        return hits / slots * ((hits_before + 1) * inverse + spread * (slots - (before + 1) * inverse))

    _NEGLIGIBLE = 1e-17  # a hypergeometric tail below this share of the weight so far is left out

    @numba.njit(nogil=True)
    def _expected_average_precisions(counts, relevant_counts, closer, inverse, cutoffs, exclude, out):
        """``metrics.expected_average_precision`` of one query at each cut-off (<= N).

        The boundary group's hypergeometric weights are walked from the mode outwards by their ratios
        P(x + 1) / P(x) = (q - x)(t - x) / ((x + 1)(g - q - t + x + 1)); the pmf is log-concave, so the
        ratios fall away from the mode and a walk stops once what is left is below ``_NEGLIGIBLE``."""
        groups = len(counts)
        precision_before = np.empty(groups + 1)  # expected precision sum and relevant count of the groups
        found_before = np.empty(groups + 1, dtype=np.int64)  # closer than each distance
        total, found = 0.0, 0
        for d in range(groups):
            precision_before[d], found_before[d] = total, found
            total += _block_precision(closer[d], counts[d], relevant_counts[d], found, inverse[d])
            found += relevant_counts[d]
        precision_before[groups], found_before[groups] = total, found
        for i in range(len(cutoffs)):
            cut = 0  # the first group not wholly within the top k
            while cut < groups and closer[cut] + counts[cut] <= cutoffs[i]:
                cut += 1
            precision_sum, found = precision_before[cut], found_before[cut]
            g = q = t = m = 0
            if cut < groups and closer[cut] < cutoffs[i]:
                g, q, m = counts[cut], relevant_counts[cut], closer[cut]
                t = cutoffs[i] - m
            low, high = max(0, t - (g - q)), min(q, t)
            block_inverse = _harmonic_difference(m, m + t)
            mode = min(max((q + 1) * (t + 1) // (g + 2), low), high)
            weights = 1.0
            expected = _boundary_value(mode, m, t, found, precision_sum, block_inverse)
            p_none = 1.0 if mode == 0 else 0.0
            x, weight = mode, 1.0
            while x < high:
                ratio = (q - x) * (t - x) / ((x + 1) * (g - q - t + x + 1))
                weight *= ratio
                x += 1
                weights += weight
                expected += weight * _boundary_value(x, m, t, found, precision_sum, block_inverse)
                if ratio < 1 and weight * ratio / (1 - ratio) < _NEGLIGIBLE * weights:
                    break
            x, weight = mode, 1.0
            while x > low:
                ratio = x * (g - q - t + x) / ((q - x + 1) * (t - x + 1))  # P(x - 1) / P(x)
                weight *= ratio
                x -= 1
                weights += weight
                expected += weight * _boundary_value(x, m, t, found, precision_sum, block_inverse)
                if x == 0:
                    p_none = weight
                if ratio < 1 and weight * ratio / (1 - ratio) < _NEGLIGIBLE * weights:
                    break
            expected /= weights
            if not exclude:
                out[i] = expected
            elif found == 0 and not (q > 0 and t > 0):
                out[i] = np.nan  # no order puts a relevant item in the top k
            else:               # E[AP | R_k > 0]: R_k = 0 only when nothing closer is relevant and X = 0
                out[i] = expected / (1 - (p_none / weights if found == 0 else 0.0))

    @numba.njit(nogil=True)
    def _boundary_value(x, before, slots, found, precision_sum, inverse):
        """AP given x relevant items among the boundary group's ``slots`` items in the top k."""
        if found + x == 0:
            return 0.0
        block = _block_precision(before, slots, x, found, inverse)
        return (precision_sum + block) / (found + x)
