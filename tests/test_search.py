"""Hamming ranking: exact distances, the tie rule, and identical rankings from the torch and faiss backends."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark.scoring import search

needs_faiss = pytest.mark.skipif("faiss" not in search.available_backends(), reason="faiss does not import")


def random_codes(n: int, bits: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (n, bits), generator=generator).float() * 2 - 1


def reference_ranking(query_codes: torch.Tensor, database_codes: torch.Tensor,
                      k: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Distances by counting differing bits, order by np.lexsort((index, distance)); independent of search.py."""
    q = query_codes.numpy() > 0
    b = database_codes.numpy() > 0
    distances = (q[:, None, :] != b[None, :, :]).sum(2)
    index = np.arange(len(b))
    order = np.stack([np.lexsort((index, row)) for row in distances])[:, :k]
    return order, np.take_along_axis(distances, order, 1)


def test_hamming_distances_by_hand():
    query = torch.tensor([[1.0, 1.0, -1.0]])
    database = torch.tensor([[1.0, 1.0, -1.0], [-1.0, -1.0, 1.0], [1.0, -1.0, -1.0], [-1.0, 1.0, 1.0]])
    distances = search.hamming_distances(query, database)
    assert distances.dtype == torch.int32
    assert distances.tolist() == [[0, 3, 1, 2]]


def test_ties_go_to_the_lower_database_index():
    query = torch.ones(1, 4)
    database = -torch.ones(8, 4)          # distance 4 by default
    database[[6, 2, 5], :] = 1.0          # distance 0 at indices 2, 5, 6
    database[[7, 1], 0] = 1.0             # distance 3 at indices 1, 7
    indices, distances = search.rank(query, database, 4)
    assert indices.tolist() == [[2, 5, 6, 1]]
    assert distances.tolist() == [[0, 0, 0, 3]]
    indices, distances = search.rank(query, database, None)
    assert indices.tolist() == [[2, 5, 6, 1, 7, 0, 3, 4]]
    assert distances.tolist() == [[0, 0, 0, 3, 3, 4, 4, 4]]


@pytest.mark.parametrize("bits, k", [(8, 1), (8, 10), (8, 777), (8, None), (5, 50), (12, 3000), (12, None),
                                     (300, 20), (300, None), (4096, 10)])
def test_torch_ranking_matches_lexsort_reference(bits, k):
    """Covers float32 and float64 keys (4096 bits), 8- and 16-bit distances for the full sort (300 bits)."""
    queries, database = random_codes(60 if bits < 1000 else 5, bits, 1), random_codes(3000, bits, 2)
    expected_indices, expected_distances = reference_ranking(queries, database, k)
    indices, distances = search.rank(queries, database, k, batch_size=17)
    assert indices.dtype == torch.long and distances.dtype == torch.int32
    np.testing.assert_array_equal(indices.numpy(), expected_indices)
    np.testing.assert_array_equal(distances.numpy(), expected_distances)


@needs_faiss
@pytest.mark.parametrize("bits, k", [(8, 1), (8, 777), (8, None), (5, 50), (12, 2999), (13, None), (64, 100),
                                     (300, None)])
def test_faiss_ranking_matches_lexsort_reference(bits, k):
    """Includes code lengths that are not whole bytes (padding must not change distances)."""
    queries, database = random_codes(60, bits, 3), random_codes(3000, bits, 4)
    expected_indices, expected_distances = reference_ranking(queries, database, k)
    indices, distances = search.rank(queries, database, k, backend="faiss", batch_size=17)
    assert indices.dtype == torch.long and distances.dtype == torch.int32
    np.testing.assert_array_equal(indices.numpy(), expected_indices)
    np.testing.assert_array_equal(distances.numpy(), expected_distances)


@needs_faiss
@pytest.mark.parametrize("k", [1000, None])
def test_backends_agree_on_a_large_database_with_many_ties(k):
    """2,000 queries x 60,000 codes at 16 bits: thousands of items per distance, the top k cuts through ties."""
    queries, database = random_codes(2000, 16, 5), random_codes(60000, 16, 6)
    for part in queries.split(1000):  # two halves keep the memory of whole rankings near 2 GB
        torch_indices, torch_distances = search.rank(part, database, k)
        faiss_indices, faiss_distances = search.rank(part, database, k, backend="faiss")
        assert torch_indices.shape == (1000, 1000 if k else 60000)
        assert torch.equal(torch_indices, faiss_indices)
        assert torch.equal(torch_distances, faiss_distances)
    if k:  # the k-th item sits inside a tie group, so the rule was needed
        full = search.hamming_distances(part[:20], database)
        kth = torch_distances[:20, -1:]
        assert ((full == kth).sum(1) > (torch_distances[:20] == kth).sum(1)).all()


class ScrambledTies:
    """A faiss binary index whose answers list equally distant items in a random order, and whose k-NN
    search keeps a random subset of the items tied at the k-th distance (FAISS promises nothing more)."""

    def __init__(self, index, n_database: int, seed: int):
        self.index, self.d, self.n_database = index, index.d, n_database
        self.rng = np.random.default_rng(seed)

    def search(self, x, k):
        distances, indices = self.index.search(x, self.n_database)
        order = np.lexsort((self.rng.random(distances.shape), distances))[:, :k]
        return np.take_along_axis(distances, order, 1), np.take_along_axis(indices, order, 1)

    def range_search(self, x, radius):
        limits, distances, indices = self.index.range_search(x, radius)
        bounds = limits.astype(np.int64)
        for start, stop in zip(bounds[:-1], bounds[1:]):
            shuffle = start + self.rng.permutation(stop - start)
            distances[start:stop], indices[start:stop] = distances[shuffle], indices[shuffle]
        return limits, distances, indices


@needs_faiss
@pytest.mark.parametrize("k", [1, 100, 777, None])
def test_faiss_backend_does_not_rely_on_faiss_tie_order(k):
    import faiss

    queries, database = random_codes(200, 8, 13), random_codes(3000, 8, 14)
    index = faiss.IndexBinaryFlat(8)
    index.add(search.pack_codes(database))
    scrambled = ScrambledTies(index, len(database), seed=15)
    expected_indices, expected_distances = search.rank(queries, database, k)
    kept = k or len(database)
    raw = scrambled.search(search.pack_codes(queries), kept)[1]
    assert not np.array_equal(raw, expected_indices.numpy())  # the wrapper does scramble
    indices, distances = zip(*search._faiss_rank(queries, database, kept, 64, index=scrambled))
    assert torch.equal(torch.cat(indices), expected_indices)
    assert torch.equal(torch.cat(distances).int(), expected_distances)


def test_distances_are_consistent_with_the_ranking():
    queries, database = random_codes(40, 24, 7), random_codes(500, 24, 8)
    indices, distances = search.rank(queries, database, 50)
    full = search.hamming_distances(queries, database)
    assert torch.equal(full.gather(1, indices), distances)
    assert (distances[:, 1:] >= distances[:, :-1]).all()


def test_batch_size_and_k_beyond_database():
    queries, database = random_codes(23, 8, 9), random_codes(40, 8, 10)
    whole = search.rank(queries, database, None)
    for batch_size in (1, 5, 100):
        indices, distances = search.rank(queries, database, 1000, batch_size=batch_size)
        assert indices.shape == (23, 40)
        assert torch.equal(indices, whole[0]) and torch.equal(distances, whole[1])


def test_numpy_integer_k():
    queries, database = random_codes(4, 8, 1), random_codes(30, 8, 2)
    assert torch.equal(search.rank(queries, database, np.int64(7))[0], search.rank(queries, database, 7)[0])


def test_empty_inputs():
    indices, distances = search.rank(random_codes(0, 8, 1), random_codes(5, 8, 2), 3)
    assert indices.shape == (0, 3) and distances.shape == (0, 3)


def test_available_backends_and_tie_rule():
    assert search.available_backends()[0] == "torch"
    assert set(search.available_backends()) <= set(search.BACKENDS)
    assert search.TIE_RULE == "distance_then_database_index"


def test_errors():
    queries, database = random_codes(3, 8, 1), random_codes(5, 8, 2)
    with pytest.raises(ValueError, match="accepted: torch, faiss"):
        search.rank(queries, database, 2, backend="annoy")
    with pytest.raises(ValueError, match="code lengths differ"):
        search.rank(queries, random_codes(5, 16, 2), 2)
    with pytest.raises(ValueError, match="only -1 and \\+1"):
        search.rank(queries, torch.zeros(5, 8), 2)
    with pytest.raises(ValueError, match="only -1 and \\+1"):
        search.hamming_distances(queries * 0.5, database)
    with pytest.raises(ValueError, match="positive int or None"):
        search.rank(queries, database, 0)
    with pytest.raises(ValueError, match="positive int or None"):
        search.rank(queries, database, 2.5)
    with pytest.raises(ValueError, match="must be \\(n, K\\)"):
        search.rank(queries[0], database, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("k", [1000, None])
def test_cuda_ranking_matches_cpu(k):
    queries, database = random_codes(300, 16, 11), random_codes(20000, 16, 12)
    expected = search.rank(queries, database, k)
    for backend in search.available_backends():
        indices, distances = search.rank(queries.cuda(), database.cuda(), k, backend=backend)
        assert indices.is_cuda and distances.is_cuda
        assert torch.equal(indices.cpu(), expected[0]) and torch.equal(distances.cpu(), expected[1])
    assert torch.equal(search.hamming_distances(queries.cuda(), database.cuda()).cpu(),
                       search.hamming_distances(queries, database))
