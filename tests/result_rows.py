"""Synthetic result-store rows for the leaderboard tests (the schema of README "Results")."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from leaderboard import store

ENV = {"device": "NVIDIA H100 80GB HBM3", "torch": "2.15.0+cu128", "faiss": "1.15.1", "git_commit": "abc1234",
       "harness_version": "0.1", "python": "3.11.9"}


def cell_rows(metrics: dict | None = None, *, curves: bool = False, error: str = "", **cell) -> list[dict]:
    """The store's rows for one cell: ``metrics`` maps name -> value or (value, topk) or [(value, topk), ...]."""
    base = {"dataset": "fashion_mnist", "dataset_label": "fashion_mnist", "hashing": "dpsh", "hashing_label": "dpsh",
            "backbone": "smallcnn", "bits": 16, "defense": "none", "defense_label": "none", "attack": "none",
            "attack_label": "none", "epsilon": 0.0, "surrogate": "self", "scenario": "a2c", "train_data": "clean",
            "seed": 0, "n_query": 1000, "n_database": 59000, "n_train": 5000, "target_rule": "random_other_label",
            "tie_rule": "stable_index", "search_backend": "faiss_cpu", "zero_relevant": "skip",
            "epsilon_space": "pixel01", "ap_denominator": "retrieved_relevant", "attack_params": "{}",
            "hashing_params": "{}", "defense_params": "{}", "dataset_params": "{}", "batch_size": 128, "flags": "",
            "sources": "", **ENV, "created_at": "2025-01-02T03:04:05", "cell_seconds": 12.5}
    base.update(cell)
    base.setdefault("cell_key", "ck-" + "-".join(str(base[k]) for k in store.IDENTITY).replace("/", "_"))
    base.setdefault("victim_key", "vk-" + "-".join(str(base[k]) for k in ("dataset", "hashing", "backbone", "bits")))
    measure = {"topk": 0, "recall": np.nan, "status": "ok", "error": ""}
    if error:
        return [{**base, **measure, "metric": "", "value": np.nan, "status": "error", "error": error}]
    rows = []
    for metric, values in (metrics or {}).items():
        for value in values if isinstance(values, list) else [values]:
            value, topk = value if isinstance(value, tuple) else (value, 0)
            rows.append({**base, **measure, "metric": metric, "value": value, "topk": topk})
    if curves:
        eps = cell.get("epsilon", 0.0)
        scale = 1.0 - (eps if eps == eps else 0.05) * 10
        rows += [{**base, **measure, "metric": "precision_at", "topk": n, "value": scale * (0.9 - 0.1 * i)}
                 for i, n in enumerate((10, 100, 1000, 5000))]
        rows += [{**base, **measure, "metric": "pr_precision", "recall": r, "value": scale * (1 - 0.5 * r)}
                 for r in (0.0, 0.25, 0.5, 0.75, 1.0)]
    return rows


def write_store(tmp_path: Path, rows: list[dict], files: int = 2) -> Path:
    results = tmp_path / "results"
    results.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows)
    for i, part in enumerate(np.array_split(np.arange(len(frame)), files)):
        frame.iloc[part].to_parquet(results / f"part-{i}.parquet", index=False)
    return results


def write_cells(tmp_path: Path, rows: list[dict]) -> Path:
    """One parquet file per cell key, as the harness writes them."""
    results = tmp_path / "results"
    results.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows)
    for key, part in frame.groupby("cell_key"):
        part.to_parquet(results / f"{key}.parquet", index=False)
    return results
