"""Every stored cell's per-query AP, kept in the result store itself (``<results>/_per_query.parquet``).

A cell's rows hold mean metrics; its per-query APs live in the stage cache (``cells/<cell_key>.pt``), which
is not committed with a published store and may be cleaned. The robustness page's per-query worst case needs
them, so at the end of every run they are copied into the store folder, one row per (cell, query):

    import pandas as pd
    pd.read_parquet("results/_per_query.parquet")   # cell_key, query, ap (NaN: a query with no relevant item)

The leading underscore keeps the file out of ``pd.read_parquet("results")`` and out of the cell files.
"""
from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.storage.cache import StageCache, atomic_write_bytes
from benchmark.storage.results import cell_files

log = logging.getLogger("hashbench")

PER_QUERY_FILE = "_per_query.parquet"
CELL_RECORDS = "cells"  # benchmark/cell.py saves {"average_precision": {"ap": (Q,), ...}, ...} under this stage


def read_per_query(results_dir: str | Path) -> dict[str, np.ndarray]:
    """{cell_key: per-query AP in query order} from the store's file; empty if it has none or it is unreadable."""
    path = Path(results_dir) / PER_QUERY_FILE
    if not path.is_file():
        return {}
    try:
        table = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - an unreadable file only loses the per-query curves
        log.warning("%s is unreadable (%s: %s); the per-query curves are left out", path, type(exc).__name__, exc)
        return {}
    table = table.sort_values(["cell_key", "query"])
    return {str(key): group["ap"].to_numpy(np.float64) for key, group in table.groupby("cell_key", sort=False)}


def cached_per_query(cache_dir: str | Path | None, cell_key: str) -> np.ndarray | None:
    """A cell's per-query AP from the stage cache; None when its record is absent or unreadable."""
    if cache_dir is None or not cell_key:
        return None
    record = StageCache(cache_dir).load(CELL_RECORDS, cell_key)  # an unreadable record is moved aside: None
    try:
        ap = record["average_precision"]["ap"]
    except (TypeError, KeyError):  # absent, or a record of an older version
        return None
    return np.asarray(ap, dtype=np.float64).reshape(-1)


def export_per_query(results_dir: str | Path, cache_dir: str | Path | None) -> int:
    """Add to the store's file the per-query AP of every stored cell it lacks and the cache holds; returns how
    many cells were added. Cells no longer in the store are dropped from the file (pruned ones)."""
    keys = {path.stem for path in cell_files(results_dir)}
    have = read_per_query(results_dir)
    kept = {key: ap for key, ap in have.items() if key in keys}
    added = {}
    for key in sorted(keys - kept.keys()):
        ap = cached_per_query(cache_dir, key)
        if ap is not None:
            added[key] = ap
    if not added and len(kept) == len(have):
        return 0
    frames = [pd.DataFrame({"cell_key": key, "query": np.arange(len(ap), dtype=np.int32), "ap": ap})
              for key, ap in sorted({**kept, **added}.items())]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["cell_key", "query", "ap"])
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False, compression="zstd")
    atomic_write_bytes(Path(results_dir) / PER_QUERY_FILE, buffer.getvalue())
    return len(added)
