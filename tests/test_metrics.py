"""Retrieval metrics against hand-computed cases and independent brute-force computations."""
from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from benchmark.scoring import metrics, search

# four database items, three classes; item 3 has two labels
DATABASE_LABELS = torch.tensor([[1.0, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 1]])


def labels(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def ranked(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long)


def close(value, expected) -> bool:
    return math.isclose(float(value), float(expected), rel_tol=1e-12, abs_tol=1e-12)


# ---------------------------------------------------------------- hand-computed cases

def test_average_precision_by_hand():
    query = labels([1, 0, 0])
    ap = metrics.average_precision_at_k(ranked([0, 1, 2], [3, 0, 1]), labels([1, 0, 0], [0, 1, 0]),
                                        DATABASE_LABELS)
    assert ap.dtype == torch.float64
    assert close(ap[0], Fraction(1, 2) * (Fraction(1, 1) + Fraction(2, 3)))   # relevance [1, 0, 1]
    assert close(ap[1], Fraction(1, 2) * (Fraction(1, 1) + Fraction(2, 3)))   # relevance [1, 0, 1]
    ap = metrics.average_precision_at_k(ranked([1, 0, 3, 2]), query, DATABASE_LABELS)
    assert close(ap[0], Fraction(1, 2) * (Fraction(1, 2) + Fraction(2, 4)))   # relevance [0, 1, 0, 1]
    # the denominator is the relevant count within the top k (1 here), not min(k, R_total) = 2
    assert close(metrics.average_precision_at_k(ranked([0, 1]), query, DATABASE_LABELS)[0], 1)
    assert close(metrics.average_precision_at_k(ranked([1, 2]), query, DATABASE_LABELS)[0], Fraction(1, 2))


def test_multi_label_relevance_is_sharing_one_label():
    query = labels([0, 0, 1])  # shares class 2 with item 3 only
    assert metrics.relevance(ranked([0, 1, 2, 3]), query, DATABASE_LABELS).tolist() == [[False, False, False, True]]
    assert close(metrics.average_precision_at_k(ranked([0, 3, 1]), query, DATABASE_LABELS)[0], Fraction(1, 2))
    query = labels([1, 1, 0])  # shares a class with every item
    assert close(metrics.average_precision_at_k(ranked([3, 2, 1, 0]), query, DATABASE_LABELS)[0], 1)


def test_zero_relevant_conventions():
    lists, queries = ranked([0, 2], [1, 3]), labels([0, 1, 0], [0, 1, 0])  # query 0 finds nothing
    counted = metrics.average_precision_at_k(lists, queries, DATABASE_LABELS)
    excluded = metrics.average_precision_at_k(lists, queries, DATABASE_LABELS, zero_relevant="exclude")
    assert counted.tolist() == [0.0, 1.0]
    assert math.isnan(excluded[0]) and excluded[1] == 1.0
    with pytest.raises(ValueError, match="count_as_zero, exclude"):
        metrics.average_precision_at_k(lists, queries, DATABASE_LABELS, zero_relevant="skip")


def test_mean_average_precision_by_hand_with_both_conventions():
    # database codes at distances 0, 1, 2, 3 from the query, so the ranking is 0, 1, 2, 3
    database_codes = torch.tensor([[1.0, 1, 1], [-1, 1, 1], [-1, -1, 1], [-1, -1, -1]])
    query_codes = torch.tensor([[1.0, 1, 1], [1.0, 1, 1]])
    queries = labels([0, 0, 1], [1, 0, 0])  # relevance [0, 0, 0, 1] and [1, 0, 1, 0]
    counted = metrics.mean_average_precision(query_codes, database_codes, queries, DATABASE_LABELS, k=2)
    excluded = metrics.mean_average_precision(query_codes, database_codes, queries, DATABASE_LABELS, k=2,
                                              zero_relevant="exclude")
    assert close(counted, Fraction(1, 2) * (0 + 1))
    assert close(excluded, 1)
    everything = metrics.mean_average_precision(query_codes, database_codes, queries, DATABASE_LABELS, k=None)
    assert close(everything, Fraction(1, 2) * (Fraction(1, 4) + Fraction(1, 2) * (1 + Fraction(2, 3))))


def test_t_map_is_map_with_the_target_labels():
    database_codes = torch.tensor([[1.0, 1, 1], [-1, 1, 1], [-1, -1, 1], [-1, -1, -1]])
    query_codes = torch.tensor([[1.0, 1, 1]])
    true_labels, target_labels = labels([1, 0, 0]), labels([0, 1, 0])  # relevance [1,0,1,0] vs [0,1,0,1]
    t_map = metrics.mean_average_precision(query_codes, database_codes, target_labels, DATABASE_LABELS, k=None)
    assert close(t_map, Fraction(1, 2) * (Fraction(1, 2) + Fraction(2, 4)))
    ordinary = metrics.mean_average_precision(query_codes, database_codes, true_labels, DATABASE_LABELS, k=None)
    assert close(ordinary, Fraction(1, 2) * (1 + Fraction(2, 3)))


def test_tie_aware_by_hand():
    """Three items at the same distance: the expectation over the 3! orders, written out."""
    database_codes = torch.ones(3, 4)
    query_codes = torch.ones(1, 4)
    one_relevant = torch.tensor([[1.0, 0], [0, 1], [0, 1]])
    query = labels([1, 0])

    def tie_aware(database_labels, k, zero_relevant="count_as_zero"):
        return metrics.tie_aware_average_precision(query_codes, database_codes, query, database_labels, k,
                                                   zero_relevant)[0]

    # one relevant item at a uniformly random position 1, 2 or 3
    assert close(tie_aware(one_relevant, None), Fraction(1, 3) * (1 + Fraction(1, 2) + Fraction(1, 3)))
    assert close(tie_aware(one_relevant, 2), Fraction(1, 3) * (1 + Fraction(1, 2) + 0))
    assert close(tie_aware(one_relevant, 2, "exclude"), Fraction(1, 2) * (1 + Fraction(1, 2)))
    # two relevant items at positions {1,2}, {1,3} or {2,3}
    two_relevant = torch.tensor([[1.0, 0], [0, 1], [1, 1]])
    expected = Fraction(1, 3) * (1 + Fraction(1, 2) * (1 + Fraction(2, 3))
                                 + Fraction(1, 2) * (Fraction(1, 2) + Fraction(2, 3)))
    assert close(tie_aware(two_relevant, None), expected)
    # the ordinary AP takes the index order, [1, 0, 1]
    assert close(metrics.mean_average_precision(query_codes, database_codes, query, two_relevant, None),
                 Fraction(1, 2) * (1 + Fraction(2, 3)))


def test_tie_aware_with_a_closer_group():
    """Item 0 relevant at distance 0; items 1-3 tied at distance 1 with one relevant; k = 3."""
    database_codes = torch.tensor([[1.0, 1], [1, -1], [1, -1], [1, -1]])
    database_labels = torch.tensor([[1.0, 0], [0, 1], [1, 0], [0, 1]])
    value = metrics.tie_aware_average_precision(torch.ones(1, 2), database_codes, labels([1, 0]), database_labels, 3)
    # the relevant tied item lands at position 2, 3 (each 1/3) or outside the top 3 (1/3)
    expected = Fraction(1, 3) * (Fraction(1, 2) * (1 + 1) + Fraction(1, 2) * (1 + Fraction(2, 3)) + 1)
    assert close(value[0], expected)


def test_precision_at_n_by_hand():
    lists, queries = ranked([0, 1, 2, 3], [1, 0, 3, 2]), labels([1, 0, 0], [0, 0, 1])
    # relevance [1, 0, 1, 0] and [0, 0, 1, 0]
    result = metrics.precision_at_n(lists, queries, DATABASE_LABELS, [1, 2, 4])
    assert list(result) == [1, 2, 4]
    assert close(result[1], Fraction(1, 2) * (1 + 0))
    assert close(result[2], Fraction(1, 2) * (Fraction(1, 2) + 0))
    assert close(result[4], Fraction(1, 2) * (Fraction(2, 4) + Fraction(1, 4)))
    with pytest.raises(ValueError, match="1..4"):
        metrics.precision_at_n(lists, queries, DATABASE_LABELS, [5])


def test_precision_recall_curve_by_hand():
    lists, queries = ranked([0, 1, 2, 3], [1, 0, 3, 2]), labels([1, 0, 0], [1, 1, 1])
    # query 0: relevance [1, 0, 1, 0], R = 2; query 1: all relevant, precision 1 everywhere
    levels, precision = metrics.precision_recall_curve(lists, queries, DATABASE_LABELS, levels=4)
    assert levels.tolist() == [0.25, 0.5, 0.75, 1.0]
    # ceil(l * 2) relevant needed: 1, 1, 2, 2 -> precision 1/1, 1/1, 2/3, 2/3
    for got, first in zip(precision, [1, 1, Fraction(2, 3), Fraction(2, 3)]):
        assert close(got, Fraction(1, 2) * (first + 1))
    # a query without relevant items is left out of the average
    _, alone = metrics.precision_recall_curve(ranked([0, 1, 2, 3]), labels([0, 0, 0]), DATABASE_LABELS)
    assert torch.isnan(alone).all()
    with pytest.raises(ValueError, match="whole database"):
        metrics.precision_recall_curve(ranked([0, 1]), labels([1, 0, 0]), DATABASE_LABELS)


def test_precision_recall_curve_counts_in_integers():
    """R = 100, level 0.55: ceil(0.55 * 100) must be 55 (in floating point 0.55 * 100 = 55.00000000000001)."""
    database_labels = torch.tensor([[1.0, 0], [0, 1]] * 100)  # relevant at ranks 1, 3, 5, ...: n-th at 2n - 1
    levels, precision = metrics.precision_recall_curve(torch.arange(200).unsqueeze(0), labels([1, 0]),
                                                       database_labels)
    assert close(levels[10], 0.55)
    assert close(precision[10], Fraction(55, 109))
    assert close(precision[-1], Fraction(100, 199))


def test_perceptibility_and_norms_by_hand():
    x = torch.zeros(2, 1, 2, 2)
    x_adv = x.clone()
    x_adv[0, 0, 0, 0], x_adv[0, 0, 1, 1] = 0.5, -0.5
    # the RMSE over all 8 pixels (not the mean of per-image RMSEs, which would be sqrt(1/8) / 2)
    assert close(metrics.perceptibility(x, x_adv), math.sqrt(0.5 / 8))
    assert metrics.linf(x, x_adv).tolist() == [0.5, 0.0]
    assert torch.allclose(metrics.l2(x, x_adv), torch.tensor([math.sqrt(0.5), 0.0]))
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.perceptibility(x, x_adv[:1])


def test_convention_names():
    assert metrics.AP_DENOMINATOR == "relevant_in_top_k"
    assert metrics.RELEVANCE == "share_one_label"


# ---------------------------------------------------------------- brute force on random codes with many ties

def random_problem(n_query: int, n_database: int, bits: int, n_classes: int, seed: int):
    """Codes with heavy ties; single-label rows plus a few multi-label ones."""
    rng = np.random.default_rng(seed)

    def codes(n):
        return torch.tensor(rng.choice([-1.0, 1.0], (n, bits)), dtype=torch.float32)

    def label_rows(n):
        rows = np.eye(n_classes, dtype=np.float32)[rng.integers(0, n_classes, n)]
        extra = rng.random(n) < 0.15
        rows[extra, rng.integers(0, n_classes, extra.sum())] = 1
        return torch.from_numpy(rows)

    return codes(n_query), codes(n_database), label_rows(n_query), label_rows(n_database)


def brute_force_ranking(query_codes, database_codes, query_labels, database_labels):
    """Python loops: Hamming distance by counting, order by (distance, index), relevance by shared labels."""
    queries, database = query_codes.numpy() > 0, database_codes.numpy() > 0
    query_sets = [set(np.flatnonzero(row)) for row in query_labels.numpy()]
    database_sets = [set(np.flatnonzero(row)) for row in database_labels.numpy()]
    out = []
    for q, wanted in zip(queries, query_sets):
        distances = [int((q != b).sum()) for b in database]
        order = sorted(range(len(database)), key=lambda i: (distances[i], i))
        out.append(([distances[i] for i in order], [bool(wanted & database_sets[i]) for i in order]))
    return out


def brute_force_ap(relevant: list[bool], zero_relevant: str) -> float:
    hits, total = 0, 0.0
    for position, is_relevant in enumerate(relevant, start=1):
        if is_relevant:
            hits += 1
            total += hits / position
    if hits == 0:
        return 0.0 if zero_relevant == "count_as_zero" else math.nan
    return total / hits


def cut_in_a_tie(distances: list[int]) -> int:
    """A k that ends strictly inside a group of equal distances."""
    for k in range(len(distances) // 3, len(distances)):
        if distances[k - 1] == distances[k] and distances[k - 2] == distances[k - 1]:
            return k
    raise AssertionError("no tie to cut")


@pytest.mark.parametrize("bits, n_classes, seed", [(4, 3, 0), (8, 10, 1), (8, 5, 2)])
@pytest.mark.parametrize("zero_relevant", ["count_as_zero", "exclude"])
def test_map_against_brute_force(bits, n_classes, seed, zero_relevant):
    problem = random_problem(50, 300, bits, n_classes, seed)
    reference = brute_force_ranking(*problem)
    for k in (1, 7, cut_in_a_tie(reference[0][0]), 100, 300, None):
        expected = [brute_force_ap(relevant[:k], zero_relevant) for _, relevant in reference]
        for backend in search.available_backends():
            per_query = metrics.average_precisions(*problem, k, backend=backend, zero_relevant=zero_relevant,
                                                   batch_size=16)
            np.testing.assert_allclose(per_query.numpy(), expected, rtol=1e-12, atol=1e-12)
            got = metrics.mean_average_precision(*problem, k, backend=backend, zero_relevant=zero_relevant)
            assert close(got, np.nanmean(expected)), (k, backend)


def test_precision_at_n_and_pr_curve_against_brute_force():
    problem = random_problem(50, 300, 8, 4, 3)
    reference = brute_force_ranking(*problem)
    ranked_all, _ = search.rank(problem[0], problem[1], None)
    ns = [1, 10, 123, 300]
    got = metrics.precision_at_n(ranked_all, problem[2], problem[3], ns)
    for n in ns:
        assert close(got[n], np.mean([sum(relevant[:n]) / n for _, relevant in reference]))
    levels, precision = metrics.precision_recall_curve(ranked_all, problem[2], problem[3])
    expected = np.zeros(20)
    counted = 0
    for _, relevant in reference:
        total = sum(relevant)
        if total == 0:
            continue
        counted += 1
        for i in range(20):
            needed = math.ceil(Fraction(i + 1, 20) * total)
            found = 0
            for position, is_relevant in enumerate(relevant, start=1):
                found += is_relevant
                if found == needed:
                    expected[i] += needed / position
                    break
    np.testing.assert_allclose(levels.numpy(), np.arange(1, 21) / 20)
    np.testing.assert_allclose(precision.numpy(), expected / counted, rtol=1e-12)


def test_relevance_batching_and_dense_path_agree(monkeypatch):
    problem = random_problem(37, 200, 8, 6, 4)
    ranked_all, _ = search.rank(problem[0], problem[1], None)
    for k in (5, 200):  # k * C below and above N: gathered labels vs a label product
        expected = metrics.relevance(ranked_all[:, :k], problem[2], problem[3])
        brute = (problem[2] @ problem[3].T > 0).gather(1, ranked_all[:, :k])
        assert torch.equal(expected, brute)
        monkeypatch.setattr(metrics, "_GATHER_ELEMENTS", 50)
        monkeypatch.setattr(metrics, "_DENSE_ELEMENTS", 300)
        assert torch.equal(metrics.relevance(ranked_all[:, :k], problem[2], problem[3]), expected)
        monkeypatch.undo()


# ---------------------------------------------------------------- tie-aware AP: exact enumeration, Monte Carlo

def enumerate_tie_orders(distances: list[int], relevant: list[bool], k: int | None, zero_relevant: str) -> float:
    """Average AP@k over every order of the items within each distance group (all permutations)."""
    groups: dict[int, list[bool]] = {}
    for distance, is_relevant in zip(distances, relevant):
        groups.setdefault(distance, []).append(is_relevant)
    values = []
    per_group = [list(itertools.permutations(groups[d])) for d in sorted(groups)]
    for orders in itertools.product(*per_group):
        ranked_list = [item for order in orders for item in order]
        values.append(brute_force_ap(ranked_list[:k], zero_relevant))
    values = np.array(values)
    if np.isnan(values).all():
        return math.nan
    return float(np.nanmean(values))


@pytest.mark.parametrize("zero_relevant", ["count_as_zero", "exclude"])
def test_tie_aware_against_exact_enumeration(zero_relevant):
    rng = np.random.default_rng(5)
    checked = 0
    for case in range(120):
        n_database, bits = int(rng.integers(1, 8)), int(rng.integers(1, 4))
        problem = random_problem(2, n_database, bits, 3, 1000 + case)
        reference = brute_force_ranking(*problem)
        for k in (1, 2, 3, 5, None):
            got = metrics.tie_aware_average_precision(*problem, k, zero_relevant=zero_relevant)
            for value, (distances, relevant) in zip(got.tolist(), reference):
                expected = enumerate_tie_orders(distances, relevant, k, zero_relevant)
                assert (math.isnan(value) and math.isnan(expected)) or close(value, expected), (case, k)
                checked += 1
    assert checked == 120 * 5 * 2


@pytest.mark.parametrize("zero_relevant", ["count_as_zero", "exclude"])
def test_tie_aware_against_monte_carlo(zero_relevant):
    problem = random_problem(20, 300, 4, 6, 6)
    reference = brute_force_ranking(*problem)
    rng = np.random.default_rng(7)
    samples = 4000
    for k in (cut_in_a_tie(reference[0][0]), 37, None):
        got = metrics.tie_aware_average_precision(*problem, k, zero_relevant=zero_relevant)
        for value, (distances, relevant) in zip(got.tolist(), reference):
            distances, relevant = np.array(distances), np.array(relevant, dtype=float)
            order = np.argsort(distances + rng.random((samples, len(distances))), axis=1)[:, :k]
            hits = relevant[order]
            found = hits.cumsum(1)
            total = found[:, -1]
            sums = (hits * found / np.arange(1, hits.shape[1] + 1)).sum(1)
            empty = 0.0 if zero_relevant == "count_as_zero" else np.nan
            aps = np.where(total > 0, sums / np.maximum(total, 1), empty)
            assert abs(value - np.nanmean(aps)) < 1e-2


def test_tie_aware_equals_ap_without_ties():
    """Database item i differs from the query in its first i bits: all distances distinct."""
    bits = 40
    database_codes = torch.ones(bits, bits)
    for i in range(bits):
        database_codes[i, :i] = -1
    problem = random_problem(1, bits, 8, 3, 8)
    query_labels, database_labels = problem[2], problem[3]
    for k in (1, 13, None):
        tie_aware = metrics.tie_aware_average_precision(torch.ones(1, bits), database_codes, query_labels,
                                                        database_labels, k)
        ordinary = metrics.average_precisions(torch.ones(1, bits), database_codes, query_labels, database_labels, k)
        assert close(tie_aware[0], ordinary[0])


def test_distance_histograms_count_everything():
    problem = random_problem(30, 250, 8, 4, 9)
    counts, relevant_counts = metrics.distance_histograms(*problem, batch_size=7)
    assert counts.shape == (30, 9) and (counts.sum(1) == 250).all()
    assert torch.equal(relevant_counts.sum(1), (problem[2] @ problem[3].T > 0).sum(1))
    distances = search.hamming_distances(problem[0], problem[1])
    assert torch.equal(counts[:, 3], (distances == 3).sum(1))


def test_tie_aware_in_row_chunks_and_its_mean(monkeypatch):
    problem = random_problem(40, 300, 4, 5, 10)
    whole = metrics.tie_aware_average_precision(*problem, 45)
    monkeypatch.setattr(metrics, "_TIE_AWARE_ROWS", 3)
    chunked = metrics.tie_aware_average_precision(*problem, 45, batch_size=7)
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-12)
    assert close(metrics.tie_aware_mean_average_precision(*problem, 45), whole.mean())
    everything = metrics.tie_aware_average_precision(*problem, None)
    torch.testing.assert_close(metrics.tie_aware_average_precision(*problem, 10_000), everything,
                               rtol=1e-12, atol=1e-12)
