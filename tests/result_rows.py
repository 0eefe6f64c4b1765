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


def demo_rows() -> list[dict]:
    """A result store that fills every page: two victims at two code lengths, every kind of attack (bounded,
    unbounded, snapshots, transfer), a flagged cell, an error cell, a plugin label with markup, a stand-in."""
    import json
    import math

    rows = []
    e8, e16 = 8 / 255, 16 / 255
    for bits in (16, 32):
        for hashing, clean, strength, flags in (("dpsh", 0.82, 1.0, ""),
                                               ("csq", 0.74, 0.8, "victim_collapsed: 5 distinct database codes")):
            v = {"hashing": hashing, "hashing_label": hashing, "bits": bits, "flags": flags,
                 "dataset_params": json.dumps({"topk": 0}), "n_query": 400, "n_database": 60000, "n_train": 10000}
            rows += cell_rows({"map": [(clean, 0), (clean + 0.05, 1000)], "tmap": (0.10, 0)}, curves=True, **v)
            for attack, targeted, drop in (("noise", False, 0.01), ("fgsm", False, 0.3), ("pgd", False, 0.55),
                                           ("p2p", True, 0.5), ("dhta", True, 0.6)):
                for eps in (e8, e16):
                    hit = min(0.95, drop * strength * (1.6 if eps == e16 else 1.0))
                    metrics = {"map": (clean * (1 - hit), 0), "tmap": (0.1 + (0.8 * hit if targeted else 0.0), 0),
                               "perceptibility": eps / 2, "linf": eps, "seconds_per_image": 0.02 if attack != "dhta"
                               else 0.9, "prepare_seconds": 0.0}
                    rows += cell_rows(metrics, curves=True, attack=attack, attack_label=attack, epsilon=eps,
                                      targeted=targeted, **v)
            rows += cell_rows({"tmap": (0.86, 0), "map": (0.2, 0), "seconds_per_image": 0.003,
                               "prepare_seconds": 350.0, "perceptibility": 0.04}, curves=True, attack="prosgan",
                              attack_label="prosgan", epsilon=math.nan, targeted=True, batch_size=64, **v)
            rows += cell_rows({"tmap": (0.8, 0), "map": (0.15, 0), "seconds_per_image": 3.9}, attack="dhta",
                              attack_label="dhta[iterations=2000]", epsilon=e8, targeted=True, iterations=2000,
                              attack_params=json.dumps({"iterations": 2000}), batch_size=32, **v)
            for it, value in ((500, 0.30), (1000, 0.22), (1500, 0.19), (2000, 0.18)):
                rows += cell_rows({"map": (clean * value, 0)}, attack="hag", attack_label="hag", epsilon=10 / 255,
                                  iterations=it, attack_params=json.dumps({"iterations": 2000}),
                                  cell_key=f"hag-{hashing}-{bits}", **v)
            rows += cell_rows({"map": (clean * 0.7, 0)}, attack="pgd", attack_label="pgd", epsilon=e8,
                              surrogate=f"{'csq' if hashing == 'dpsh' else 'dpsh'}/smallcnn/{bits}", **v)
    rows += cell_rows(error="CUDA out of memory while attacking (tried to allocate 2.00 GiB)", attack="sdha",
                      attack_label="sdha", epsilon=e8)
    rows += cell_rows({"map": (0.5, 0)}, attack="evil", attack_label="<script>alert(1)</script>", epsilon=e8,
                      flags="attack_changed_nothing: no query code changed")
    rows += cell_rows({"map": 0.8512}, hashing="adsh", hashing_label="adsh", bits=8, scenario="c2c",
                      n_query=10000, n_database=60000, n_train=10000)
    mosaic = {"dataset": "fashion_mnist_canvas", "dataset_label": "fashion_mnist_canvas", "bits": 32}
    rows += cell_rows({"tmap": (0.55, 0), "map": (0.71, 0)}, **mosaic)
    rows += cell_rows({"tmap": (0.77, 0)}, attack="prosgan", attack_label="prosgan", epsilon=math.nan, targeted=True,
                      **mosaic)
    return rows
