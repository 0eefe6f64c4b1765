"""Timing of mAP@1000 for 10,000 queries x 60,000 codes at 32 bits, per search backend (pytest-benchmark).

    .venv/bin/python -m pytest tests/bench_search.py --benchmark-only

Not collected by ``pytest tests/`` (``python_files = test_*.py``): it takes minutes on a small CPU.
"""
from __future__ import annotations

import pytest
import torch

from benchmark.scoring import metrics, search

N_QUERY, N_DATABASE, BITS, CLASSES, TOPK = 10_000, 60_000, 32, 10, 1000
FLIP = 0.25  # each bit of an item's code differs from its class's code with this probability


def clustered_codes(n: int, centres: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes scattered around ten class codes, and one-hot labels: near items tend to be relevant."""
    classes = torch.randint(0, len(centres), (n,), generator=generator)
    flips = torch.rand(n, centres.shape[1], generator=generator) < FLIP
    codes = torch.where(flips, -centres[classes], centres[classes])
    return codes, torch.nn.functional.one_hot(classes, len(centres)).float()


@pytest.fixture(scope="module")
def problem():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randint(0, 2, (CLASSES, BITS), generator=generator).float() * 2 - 1
    query_codes, query_labels = clustered_codes(N_QUERY, centres, generator)
    database_codes, database_labels = clustered_codes(N_DATABASE, centres, generator)
    return query_codes, database_codes, query_labels, database_labels


@pytest.mark.parametrize("backend", search.available_backends())
def test_map_at_1000(benchmark, problem, backend):
    benchmark.extra_info.update({"queries": N_QUERY, "database": N_DATABASE, "bits": BITS, "topk": TOPK,
                                 "threads": torch.get_num_threads()})
    value = benchmark.pedantic(metrics.mean_average_precision, args=(*problem, TOPK),
                               kwargs={"backend": backend}, rounds=3, iterations=1)
    benchmark.extra_info["map"] = value
    assert 0.3 < value < 1.0
