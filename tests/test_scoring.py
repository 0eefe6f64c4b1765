"""The counting scorer and evaluate_queries: against brute force, exact enumeration, each other, and the
evaluation they replaced (tests/previous_evaluation.py)."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import previous_evaluation
import pytest
import torch
from test_metrics import brute_force_ap, brute_force_ranking, cut_in_a_tie, enumerate_tie_orders, random_problem

from benchmark.scoring import kernel as scoring
from benchmark.scoring import metrics, search
from benchmark.scoring.evaluate import EvaluationConventions, evaluate_queries

ORDERS = [order for order in ("count", "sort", "faiss")
          if (order != "count" or scoring.numba_available()) and (order != "faiss" or "faiss" in
                                                                   search.available_backends())]
needs_numba = pytest.mark.skipif(not scoring.numba_available(), reason="numba does not import")


def target_labels(n_query: int, n_classes: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.eye(n_classes, dtype=np.float32)[rng.integers(0, n_classes, n_query)])


def brute_force_pr(relevant: list[bool], levels: int) -> list[float]:
    total = sum(relevant)
    if total == 0:
        return [math.nan] * levels
    out = []
    for level in range(1, levels + 1):
        needed = math.ceil(Fraction(level, levels) * total)
        found = 0
        for position, is_relevant in enumerate(relevant, start=1):
            found += is_relevant
            if found == needed:
                out.append(needed / position)
                break
    return out


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("bits, n_classes, seed, single_label", [(4, 3, 20, False), (8, 10, 21, False),
                                                                  (12, 5, 22, False), (70, 4, 23, False),
                                                                  (8, 4, 24, True), (70, 66, 25, True)])
@pytest.mark.parametrize("zero_relevant", ["count_as_zero", "exclude"])
def test_scores_against_brute_force(order, bits, n_classes, seed, single_label, zero_relevant):
    """Two labelings at once; cut-offs inside a tie, at and beyond the database; 70 bits (and 66 classes) take
    two words. A single-label database lets one-label queries read their class's items (the others, with
    several labels, are matched item by item)."""
    query_codes, database_codes, query_labels, database_labels = random_problem(40, 300, bits, n_classes, seed)
    if single_label:
        database_labels = torch.eye(n_classes)[database_labels.argmax(1)]
    targets = target_labels(40, n_classes, seed + 100)
    labelings = [query_labels, targets]
    reference = {id(labels): brute_force_ranking(query_codes, database_codes, labels, database_labels)
                 for labels in labelings}
    cutoffs = [100, 1, cut_in_a_tie(reference[id(query_labels)][0][0]), 7, 300, 1000]
    ns = [300, 1, 10, 123]
    scores = scoring.score_queries(query_codes, database_codes, labelings, database_labels, cutoffs, ns, 20,
                                   zero_relevant, order=order, batch_size=16)
    for labels, score in zip(labelings, scores):
        ranking = reference[id(labels)]
        expected_ap = [[brute_force_ap(relevant[:k], zero_relevant) for k in cutoffs] for _, relevant in ranking]
        np.testing.assert_allclose(score.average_precision.numpy(), expected_ap, rtol=1e-12, atol=1e-15)
        assert score.relevant_at.tolist() == [[sum(relevant[:n]) for n in ns] for _, relevant in ranking]
        np.testing.assert_allclose(score.pr_precision.numpy(), [brute_force_pr(relevant, 20) for _, relevant in
                                                                ranking], rtol=1e-12)
        histograms = metrics.distance_histograms(query_codes, database_codes, labels, database_labels)
        assert torch.equal(score.counts, histograms[0]) and torch.equal(score.relevant_counts, histograms[1])
        for column, k in enumerate(cutoffs):
            expected = metrics.expected_average_precision(*histograms, k, zero_relevant)
            torch.testing.assert_close(score.expected_average_precision[:, column], expected, rtol=1e-12, atol=0,
                                       equal_nan=True)


@needs_numba
@pytest.mark.parametrize("zero_relevant", ["count_as_zero", "exclude"])
def test_compiled_tie_aware_against_exact_enumeration(zero_relevant):
    rng = np.random.default_rng(25)
    for case in range(60):
        n_database, bits = int(rng.integers(1, 8)), int(rng.integers(1, 4))
        problem = random_problem(2, n_database, bits, 3, 2000 + case)
        reference = brute_force_ranking(*problem)
        cutoffs = [1, 2, 3, 5, n_database]
        score, = scoring.score_queries(problem[0], problem[1], [problem[2]], problem[3], cutoffs, (), 0,
                                       zero_relevant, order="count")
        for row, (distances, relevant) in zip(score.expected_average_precision.tolist(), reference):
            for value, k in zip(row, cutoffs):
                expected = enumerate_tie_orders(distances, relevant, k, zero_relevant)
                assert (math.isnan(value) and math.isnan(expected)) or math.isclose(value, expected, rel_tol=1e-12,
                                                                                    abs_tol=1e-15), (case, k)


@needs_numba
def test_compiled_harmonic_difference_is_exact_to_rounding():
    for start, stop in [(0, 0), (0, 1), (3, 40), (31, 33), (32, 64), (40, 41), (50_000, 50_010), (7, 60_000),
                        (59_990, 60_000), (1_000_000, 1_000_001)]:
        exact = sum(Fraction(1, i) for i in range(start + 1, stop + 1))
        got = scoring._harmonic_difference(start, stop)
        assert abs(Fraction(got) - exact) <= 4e-16 * exact, (start, stop)


@needs_numba
def test_count_and_sort_agree_to_the_bit_where_they_should():
    """Counts, P@N and PR are the same integers and divisions; AP sums the same correctly rounded terms (the
    compiled path in a vectorised order) and the tie-aware AP's harmonic sums differ, so those agree to
    rounding."""
    problem = random_problem(60, 2000, 16, 6, 26)
    cutoffs, ns = [1000, 2000, 37], [100, 1000]
    counted, = scoring.score_queries(problem[0], problem[1], [problem[2]], problem[3], cutoffs, ns, 20,
                                     order="count")
    sorted_, = scoring.score_queries(problem[0], problem[1], [problem[2]], problem[3], cutoffs, ns, 20,
                                     order="sort", batch_size=7)
    for name in ("relevant_at", "pr_precision", "counts", "relevant_counts"):
        assert torch.equal(getattr(counted, name), getattr(sorted_, name)), name
    for name in ("average_precision", "expected_average_precision"):
        torch.testing.assert_close(getattr(counted, name), getattr(sorted_, name), rtol=1e-13, atol=0)


@needs_numba
@pytest.mark.parametrize("n_query", [1, 2, 33, 67])
def test_count_scores_every_query_of_an_odd_count_across_its_blocks(n_query):
    """The kernel scores queries in pairs within blocks of 32: an odd count's last query has no partner, and a
    query in one block must not see another's tallies. Each query alone gives the same scores."""
    problem = random_problem(n_query, 500, 12, 4, 40 + n_query)
    together, = scoring.score_queries(problem[0], problem[1], [problem[2]], problem[3], [50, 500], [10], 5,
                                      order="count")
    for q in (0, n_query // 2, n_query - 1):
        alone, = scoring.score_queries(problem[0][q:q + 1], problem[1], [problem[2][q:q + 1]], problem[3],
                                       [50, 500], [10], 5, order="count")
        for name, value in vars(alone).items():
            assert torch.equal(getattr(together, name)[q:q + 1].nan_to_num(-1), value.nan_to_num(-1)), (q, name)


def test_class_lists_only_for_one_label_queries_on_a_single_label_database():
    database = np.eye(3, dtype=bool)[[2, 0, 2, 1, 0]]
    queries = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0]], dtype=bool)
    query_class, offsets, items = scoring._class_lists([queries], database)
    assert query_class.tolist() == [[0, -1, -1]]
    assert offsets.tolist() == [0, 2, 3, 5] and items.tolist() == [1, 4, 3, 0, 2]
    multi = database.copy()
    multi[0, 0] = True
    assert scoring._class_lists([queries], multi)[0].tolist() == [[-1, -1, -1]]


@needs_numba
def test_the_kernel_leaves_torch_threads_alone():
    problem = random_problem(5, 50, 8, 3, 36)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        scoring.score_queries(problem[0], problem[1], [problem[2]], problem[3], [10], order="count")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_score_queries_errors():
    problem = random_problem(3, 20, 8, 3, 27)
    codes, database, labels, database_labels = problem
    with pytest.raises(ValueError, match="1..20"):
        scoring.score_queries(codes, database, [labels], database_labels, [5], ns=[21])
    with pytest.raises(ValueError, match="positive int or None"):
        scoring.score_queries(codes, database, [labels], database_labels, [0])
    with pytest.raises(ValueError, match="non-negative"):
        scoring.score_queries(codes, database, [-labels], database_labels, [5])
    with pytest.raises(ValueError, match="20 database codes but 19"):
        scoring.score_queries(codes, database, [labels], database_labels[:19], [5])
    with pytest.raises(ValueError, match="accepted: auto, count, sort, faiss"):
        scoring.score_queries(codes, database, [labels], database_labels, [5], order="heap")
    with pytest.raises(ValueError, match="levels"):
        scoring.score_queries(codes, database, [labels], database_labels, [5], levels=-1)


def test_empty_query_set():
    problem = random_problem(3, 20, 8, 3, 28)
    score, = scoring.score_queries(problem[0][:0], problem[1], [problem[2][:0]], problem[3], [5], [3], 4,
                                   order="sort")
    assert score.average_precision.shape == (0, 1) and score.counts.shape == (0, 9)


# ---------------------------------------------------------------- evaluate_queries

def rows_by_key(rows: list[dict]) -> dict:
    return {(row["metric"], row.get("topk"), row.get("recall")): row["value"] for row in rows}


def test_evaluation_rows_cutoffs_and_per_query():
    query_codes, database_codes, query_labels, database_labels = random_problem(30, 700, 8, 4, 29)
    targets = target_labels(30, 4, 30)
    result = evaluate_queries(query_codes, database_codes, query_labels, targets, database_labels,
                              (250, None, 250, 5000), EvaluationConventions())
    cut_metrics = [row for row in result.rows if row["metric"].replace("t", "", 1).startswith("map")]
    assert [(row["metric"], row["topk"]) for row in cut_metrics] == [
        (metric, topk) for topk in (250, 0, 5000) for metric in ("map", "map_tie_aware", "tmap", "tmap_tie_aware")]
    values = rows_by_key(result.rows)
    # 5000 is beyond the 700 items: clipped, it scores the whole database under its own label
    assert values[("map", 5000, None)] == values[("map", 0, None)]
    assert values[("tmap_tie_aware", 5000, None)] == values[("tmap_tie_aware", 0, None)]
    assert sorted(n for metric, n, _ in values if metric == "precision_at") == [100, 200, 300, 400, 500, 600, 700]
    assert len([key for key in values if key[0] == "tpr_precision"]) == metrics.RECALL_LEVELS
    assert set(result.per_query) == {"ap", "tap"}
    expected = metrics.average_precisions(query_codes, database_codes, targets, database_labels, 250)
    assert result.per_query["tap"].dtype == torch.float64 and result.per_query["tap"].device.type == "cpu"
    torch.testing.assert_close(result.per_query["tap"], expected, rtol=1e-12, atol=1e-15)
    assert math.isclose(values[("tmap", 250, None)], float(expected.mean()), rel_tol=1e-12)


def test_evaluation_without_targets_or_curves():
    problem = random_problem(10, 200, 8, 4, 31)
    result = evaluate_queries(problem[0], problem[1], problem[2], None, problem[3], [None],
                              EvaluationConventions(), curves=False)
    assert [row["metric"] for row in result.rows] == ["map", "map_tie_aware"]
    assert set(result.per_query) == {"ap"}
    alone = evaluate_queries(problem[0], problem[1], problem[2], None, problem[3], 50, EvaluationConventions())
    assert {row["topk"] for row in alone.rows if row["metric"] == "map"} == {50}  # a lone cut-off


@pytest.mark.skipif("faiss" not in search.available_backends(), reason="faiss does not import")
@pytest.mark.parametrize("zero_relevant", ["count_as_zero", "exclude"])
def test_faiss_backend_gives_the_same_rows(zero_relevant):
    problem = random_problem(50, 1500, 12, 5, 32)
    targets = target_labels(50, 5, 33)
    rows = {}
    for backend in ("torch", "faiss"):
        result = evaluate_queries(problem[0], problem[1], problem[2], targets, problem[3], [100, None],
                                  EvaluationConventions(backend, zero_relevant))
        rows[backend] = rows_by_key(result.rows)
    assert rows["torch"].keys() == rows["faiss"].keys()
    for key, value in rows["torch"].items():
        assert math.isclose(value, rows["faiss"][key], rel_tol=1e-12), key


def test_evaluation_errors():
    problem = random_problem(3, 20, 8, 3, 34)
    with pytest.raises(ValueError, match="non-empty sequence"):
        evaluate_queries(problem[0], problem[1], problem[2], None, problem[3], [], EvaluationConventions())
    with pytest.raises(ValueError, match="non-empty sequence"):
        evaluate_queries(problem[0], problem[1], problem[2], None, problem[3], "100", EvaluationConventions())
    with pytest.raises(ValueError, match="positive int or None"):
        evaluate_queries(problem[0], problem[1], problem[2], None, problem[3], True, EvaluationConventions())
    with pytest.raises(ValueError, match="positive int or None"):
        evaluate_queries(problem[0], problem[1], problem[2], None, problem[3], [100, -1], EvaluationConventions())
    with pytest.raises(ValueError, match="accepted: torch, faiss"):
        EvaluationConventions(backend="annoy")
    with pytest.raises(ValueError, match="count_as_zero, exclude"):
        EvaluationConventions(zero_relevant="skip")


@pytest.mark.parametrize("bits, topk", [(8, 1000), (16, 5000)])
def test_evaluation_matches_the_previous_one_at_scale(bits, topk):
    """2,000 queries x 60,000 codes with thousands of items per distance: every row and per-query AP as the
    evaluation this replaced computes them (its own ranking, relevance gathering and log-gamma table)."""
    generator = torch.Generator().manual_seed(bits)
    query_codes = torch.randint(0, 2, (2000, bits), generator=generator).float() * 2 - 1
    database_codes = torch.randint(0, 2, (60000, bits), generator=generator).float() * 2 - 1
    query_labels, targets, database_labels = (
        torch.nn.functional.one_hot(torch.randint(0, 10, (n,), generator=generator), 10).float()
        for n in (2000, 2000, 60000))
    new = evaluate_queries(query_codes, database_codes, query_labels, targets, database_labels, [topk],
                           EvaluationConventions())
    old_rows, old_per_query = previous_evaluation.evaluate_queries(query_codes, database_codes, query_labels,
                                                                   targets, database_labels, topk)
    new_values, old_values = rows_by_key(new.rows), rows_by_key(old_rows)
    assert new_values.keys() == old_values.keys()
    for key, value in old_values.items():
        assert math.isclose(new_values[key], value, rel_tol=1e-12), key
    for name, values in old_per_query.items():
        torch.testing.assert_close(new.per_query[name], values, rtol=1e-12, atol=1e-15)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_scores_match_cpu():
    problem = random_problem(200, 5000, 16, 6, 35)
    cpu = scoring.score_queries(problem[0], problem[1], [problem[2]], problem[3], [1000, 5000], [100], 20)[0]
    cuda = scoring.score_queries(*(tensor.cuda() for tensor in problem[:2]), [problem[2].cuda()], problem[3].cuda(),
                                 [1000, 5000], [100], 20)[0]
    for name, value in vars(cpu).items():
        torch.testing.assert_close(getattr(cuda, name).cpu(), value, rtol=1e-12, atol=1e-15, equal_nan=True)
