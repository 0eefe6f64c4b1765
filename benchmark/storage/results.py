"""The result store: one parquet file per grid cell in ``results/``, read as one tidy table.

    import pandas as pd
    table = pd.read_parquet("results")     # one row per (cell, metric)

Each file is written atomically under a name starting with '.', which pandas/pyarrow skip, then
renamed. Failed cells are stored too (status "error" and the reason) but never count as done, so a
rerun retries them.
"""
from __future__ import annotations

import io
import logging
from pathlib import Path

import pandas as pd

from benchmark.storage.cache import atomic_write_bytes, quarantine

log = logging.getLogger("hashbench")


def cell_files(results_dir: str | Path) -> list[Path]:
    """The store's cell files: its own ``*.parquet`` (not its sub-folders'), less those named '.' or '_'
    (a write in flight, a quarantined file, ``_per_query.parquet``)."""
    return sorted(p for p in Path(results_dir).glob("*.parquet") if p.is_file() and not p.name.startswith((".", "_")))


def cell_file(results_dir: str | Path, cell_key: str) -> Path:
    return Path(results_dir) / f"{cell_key}.parquet"


def write_cell(results_dir: str | Path, cell_key: str, rows: list[dict]) -> Path:
    frame = pd.DataFrame(rows)
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    path = cell_file(results_dir, cell_key)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def cell_done(results_dir: str | Path, cell_key: str) -> bool:
    """True if the cell's file exists, is readable, holds this cell's rows and a successful result.

    A file holding another cell's rows (copied or renamed) is moved aside like an unreadable one, so the cell
    is recomputed rather than taken for the other."""
    path = cell_file(results_dir, cell_key)
    if not path.exists():
        return False
    try:
        rows = pd.read_parquet(path, columns=["status", "cell_key"])
    except Exception as exc:
        quarantine(path, f"{type(exc).__name__}: {exc}")
        return False
    found = sorted(set(rows["cell_key"].astype(str)))
    if found != [cell_key]:
        quarantine(path, f"its rows are of cell {', '.join(found) or '(none)'}, not of cell {cell_key} "
                         f"(copied or renamed?)")
        return False
    return bool((rows["status"] == "ok").all())
