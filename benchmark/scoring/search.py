"""Hamming ranking of {-1, +1} codes: an exact torch kernel and a FAISS backend with the same order.

Every backend orders the database by Hamming distance ascending and breaks ties by database index
ascending (``TIE_RULE``), so the two give identical rankings, also where the top k cuts through a group
of items at equal distance.

    indices, distances = rank(query_codes, database_codes, k=1000)              # exact torch kernel
    indices, distances = rank(query_codes, database_codes, k=1000, backend="faiss")

The torch kernel builds one exact sort key per (query, item) pair, ``distance * N + index``, as one matrix
product (float32 or float64, whichever holds the keys exactly), and takes its ``k`` smallest; for most of
the database it stable-sorts the distances instead (a radix sort on 8-bit integers). FAISS finds the distance
of the k-th item, gathers every item at most that far (a range search), and sorts those by the key.
"""
from __future__ import annotations

import numbers

import numpy as np
import torch

TIE_RULE = "distance_then_database_index"
BACKENDS = ("torch", "faiss")

_BATCH_ELEMENTS = 1 << 25   # a query batch's (B, N) work arrays hold about this many elements
_GPU_FAISS_MAX_K = 2048     # GpuIndexBinaryFlat answers k up to this
_FP16_EXACT_BITS = 2048     # half precision holds every integer up to 2048 exactly


def available_backends() -> list[str]:
    """The backends ``rank`` accepts here: "torch" always, "faiss" when it imports."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return ["torch"]
    return ["torch", "faiss"]


def check_codes(query_codes: torch.Tensor, database_codes: torch.Tensor) -> None:
    """Raise ValueError unless both are 2-D, of the same code length, on one device, and all +-1."""
    for name, codes in (("query_codes", query_codes), ("database_codes", database_codes)):
        if codes.ndim != 2:
            raise ValueError(f"{name} must be (n, K); got shape {tuple(codes.shape)}")
        if codes.numel() and not (codes.abs() == 1).all():
            raise ValueError(f"{name} must hold only -1 and +1 (binarize them first)")
    if query_codes.shape[1] != database_codes.shape[1]:
        raise ValueError(f"code lengths differ: queries have K={query_codes.shape[1]}, "
                         f"the database K={database_codes.shape[1]}")
    if query_codes.device != database_codes.device:
        raise ValueError(f"query codes are on {query_codes.device} but database codes on {database_codes.device}")


def check_k(k: int | None) -> None:
    """Raise ValueError unless ``k`` is a positive integer or None (the whole database)."""
    if k is not None and (isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1):
        raise ValueError(f"k must be a positive int or None (the whole database); got {k!r}")


def hamming_distances(query_codes: torch.Tensor, database_codes: torch.Tensor) -> torch.Tensor:
    """Hamming distances (K - q.b) / 2 between +-1 codes, int32 (Q, N).

    One matrix product: half precision on CUDA (exact for K up to 2048), float32 on the CPU.
    """
    check_codes(query_codes, database_codes)
    return distance_matrix(query_codes, database_codes).round().int()


def distance_matrix(query_codes: torch.Tensor, database_codes: torch.Tensor) -> torch.Tensor:
    """(K - q.b) / 2 as a float matrix whose entries are exact integers."""
    bits = query_codes.shape[1]
    dtype = torch.float16 if query_codes.is_cuda and bits <= _FP16_EXACT_BITS else torch.float32
    half = torch.full((len(database_codes),), bits / 2, dtype=dtype, device=query_codes.device)
    return torch.addmm(half, query_codes.to(dtype), database_codes.to(dtype).T, alpha=-0.5)


def rank(query_codes: torch.Tensor, database_codes: torch.Tensor, k: int | None, backend: str = "torch",
         batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest database items of each query, int64 indices and int32 distances, both (Q, k').

    k' = min(k, N); ``k=None`` ranks the whole database. Rows are ordered by Hamming distance, ties by
    database index (``TIE_RULE``). Queries go in batches of ``batch_size`` (None: as many as keep a batch's
    (B, N) work arrays near 2**25 elements). Results are on the codes' device.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown search backend {backend!r}; accepted: {', '.join(BACKENDS)}")
    if backend not in available_backends():
        raise ValueError(f"search backend {backend!r} is not available here (faiss does not import); "
                         f"available: {', '.join(available_backends())}")
    check_codes(query_codes, database_codes)
    check_k(k)
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be a positive int or None; got {batch_size!r}")
    n_query, n_database = len(query_codes), len(database_codes)
    kept = n_database if k is None else min(int(k), n_database)
    device = query_codes.device
    indices = torch.empty(n_query, kept, dtype=torch.long, device=device)
    distances = torch.empty(n_query, kept, dtype=torch.int32, device=device)
    if kept == 0 or n_query == 0:
        return indices, distances
    step = batch_size or query_batch_size(n_database)
    if backend == "faiss":
        batches = _faiss_rank(query_codes, database_codes, kept, step)
    else:
        batches = (_torch_rank_batch(query_codes[start:start + step], database_codes, kept)
                   for start in range(0, n_query, step))
    start = 0
    for batch_indices, batch_distances in batches:
        indices[start:start + len(batch_indices)] = batch_indices
        distances[start:start + len(batch_indices)] = batch_distances
        start += len(batch_indices)
    return indices, distances


def query_batch_size(n_database: int, elements: int = _BATCH_ELEMENTS) -> int:
    """Queries per batch so that a (B, N) array has about ``elements`` entries."""
    return max(1, elements // max(1, n_database))


def _torch_rank_batch(query_codes: torch.Tensor, database_codes: torch.Tensor,
                      kept: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One query batch of the torch kernel, as (indices, distances) views or tensors on the codes' device."""
    n_database, bits = database_codes.shape
    if not query_codes.is_cuda and 8 * kept > n_database:  # most of each row: a stable radix sort of distances
        narrow = torch.uint8 if bits < 256 else torch.int16 if bits < 32768 else torch.int32
        indices, distances = sort_rows(distance_matrix(query_codes, database_codes).to(narrow).numpy())
        return torch.from_numpy(indices[:, :kept]), torch.from_numpy(distances[:, :kept])
    # key = N * (K - q.b) / 2 + index = distance * N + index: every partial result is a multiple of 1/2 below
    # (K + 1) * N, exact in float32 while that is below 2**23, else in float64 (below 2**52)
    dtype = torch.float32 if 2 * (bits + 1) * n_database <= 1 << 24 else torch.float64
    offsets = torch.arange(n_database, dtype=dtype, device=query_codes.device) + bits * n_database / 2
    keys = torch.addmm(offsets, query_codes.to(dtype), database_codes.to(dtype).T, alpha=-n_database / 2)
    if 4 * kept > n_database:
        values = torch.sort(keys, dim=1).values[:, :kept]  # keys are unique: any sort gives the stable order
    else:
        values = torch.topk(keys, kept, dim=1, largest=False, sorted=True).values
    del keys
    values = values.double()
    distances = torch.floor(values / n_database)  # each key encodes its own index
    return (values - distances * n_database).long(), distances.int()


def sort_rows(distances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stable sort of each row of a (B, N) distance array whose columns are the database indices.

    Returns int64 indices and the sorted distances (same dtype), in rank order. On 8- and 16-bit
    integers numpy's stable sort is a radix sort, so narrow distances are fast.
    """
    return np.argsort(distances, axis=1, kind="stable"), np.sort(distances, axis=1, kind="stable")


def pack_codes(codes: torch.Tensor) -> np.ndarray:
    """+-1 codes as FAISS binary vectors: +1 -> bit 1, rows padded with 0 bits to whole bytes, uint8 (n, ceil(K/8))."""
    bits = (codes > 0).cpu().numpy().astype(np.uint8)
    return np.packbits(bits, axis=1)  # the same zero padding on both sides leaves distances unchanged


def _faiss_rank(query_codes: torch.Tensor, database_codes: torch.Tensor, kept: int, step: int, index=None):
    """Yield (indices, distances) per query batch from ``faiss.IndexBinaryFlat``, ties ordered by index.

    FAISS's order among equally distant items is not part of its contract (it may depend on the index
    type, the device and the threading), so only the k-th distance is taken from its k-NN search; a range
    search then gathers every item at most that far, sorted by (distance, index). ``index`` replaces the
    index built from ``database_codes``.
    """
    import faiss

    n_database = len(database_codes)
    if index is None:
        packed_database = pack_codes(database_codes)
        index = faiss.IndexBinaryFlat(8 * packed_database.shape[1])
        index.add(packed_database)
        index.use_heap = False  # its counting k-NN search is the faster one for short codes
    searcher = index
    if (query_codes.is_cuda and kept < n_database and kept <= _GPU_FAISS_MAX_K
            and hasattr(faiss, "GpuIndexBinaryFlat")):
        resources = faiss.StandardGpuResources()
        searcher = faiss.GpuIndexBinaryFlat(resources, index)  # k-NN on the GPU; range search stays on the CPU
    for start in range(0, len(query_codes), step):
        packed = pack_codes(query_codes[start:start + step])
        if kept == n_database:
            indices, distances = _faiss_everything(index, packed, n_database)
        else:
            kth = searcher.search(packed, kept)[0][:, kept - 1]
            indices, distances = _faiss_within(index, packed, kth, kept, n_database)
        yield (torch.from_numpy(indices).to(query_codes.device),
               torch.from_numpy(distances).to(query_codes.device))


def _faiss_everything(index, packed: np.ndarray, n_database: int) -> tuple[np.ndarray, np.ndarray]:
    """The whole database for each query, sorted by (distance, index)."""
    limits, distances, indices = index.range_search(packed, index.d + 1)  # every item: distance <= d
    if not np.array_equal(np.diff(limits.astype(np.int64)), np.full(len(packed), n_database)):
        raise RuntimeError("faiss range search did not return the whole database for every query")
    shape = (len(packed), n_database)
    by_index = np.empty(shape, dtype=np.uint8 if index.d < 256 else np.int32)
    np.put_along_axis(by_index, indices.reshape(shape), distances.reshape(shape), axis=1)  # columns by index
    return sort_rows(by_index)


def _faiss_within(index, packed: np.ndarray, kth: np.ndarray, kept: int,
                  n_database: int) -> tuple[np.ndarray, np.ndarray]:
    """Every item at most the k-th distance away (one range search per distinct k-th distance), cut to ``kept``."""
    rows, found_distances, found_indices = [], [], []
    for radius in np.unique(kth):
        group = np.flatnonzero(kth == radius)
        limits, distances, indices = index.range_search(packed[group], int(radius) + 1)  # distance < radius + 1
        rows.append(np.repeat(group, np.diff(limits.astype(np.int64))))
        found_distances.append(distances)
        found_indices.append(indices)
    rows, distances, indices = np.concatenate(rows), np.concatenate(found_distances), np.concatenate(found_indices)
    counts = np.bincount(rows, minlength=len(packed))
    if (counts < kept).any():
        raise RuntimeError("faiss range search found fewer items than the k-th distance promises")
    span = index.d + 1  # one int64 key per item orders by (query, distance, index); B * (d + 1) * N < 2**63
    keys = (rows.astype(np.int64) * span + distances) * n_database + indices
    keys.sort()
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    keys = keys[(starts[:, None] + np.arange(kept)).ravel()].reshape(-1, kept)
    return keys % n_database, ((keys // n_database) % span).astype(np.int32)
