"""Read the parquet result store and shape it for the pages.

The store is a folder of parquet files, one row per (cell, metric). Files are read one by one so that
a file pandas cannot read (or one without the columns every row must have) is named. By default such
a file is skipped and its name and error are returned as a warning, which every page shows in a
banner; ``strict=True`` raises ``ResultStoreError`` instead. Names starting with '.' or '_' (a write
still in flight, a quarantined ``.corrupt-*`` file, ``.gitkeep``) are not part of the store, as in
``benchmark.store``. Sub-folders are read too (published runs).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

# What identifies a cell on the pages (the store's own ``cell_key`` groups the rows).
IDENTITY = ["dataset_label", "hashing_label", "backbone", "bits", "defense_label", "attack_label",
            "epsilon", "surrogate", "scenario", "seed"]
MAIN_METRICS = ["map", "tmap", "map_tie_aware", "perceptibility", "linf", "seconds_per_image"]
CURVE_METRICS = {"precision_at", "pr_precision"}
ENVIRONMENT = ["device", "torch", "faiss", "git_commit", "harness_version", "python"]
PROTOCOL = ["dataset_label", "n_query", "n_database", "n_train", "target_rule", "tie_rule", "search_backend",
            "zero_relevant", "epsilon_space", "ap_denominator"]
REQUIRED = ["dataset", "hashing", "attack", "metric", "value", "status"]
INT_COLUMNS = ["bits", "seed", "topk", "n_query", "n_database", "n_train", "batch_size"]
FLOAT_COLUMNS = ["epsilon", "recall", "value", "cell_seconds"]
STRING_COLUMNS = ["dataset", "dataset_label", "hashing", "hashing_label", "backbone", "defense", "defense_label",
                  "attack", "attack_label", "surrogate", "scenario", "metric", "status", "error", "target_rule",
                  "tie_rule", "search_backend", "zero_relevant", "epsilon_space", "ap_denominator",
                  "attack_params", "hashing_params", "defense_params", "dataset_params", "device", "torch",
                  "faiss", "git_commit", "harness_version", "python", "created_at", "cell_key", "victim_key"]
# attack_params keys that hold the number of optimisation steps per query
ITERATION_KEYS = ("iterations", "iteration", "iters", "n_iter", "num_iter", "steps", "num_steps")


class ResultStoreError(RuntimeError):
    """A result file could not be used; the message names the file."""


def read_results(results_dir: str | Path, strict: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """All rows of the store as one normalised frame, and the warnings (one per file skipped)."""
    root = Path(results_dir)
    files = sorted(p for p in root.rglob("*.parquet")
                   if p.is_file() and not any(part.startswith((".", "_")) for part in p.relative_to(root).parts))
    frames, warnings = [], []
    for path in files:
        try:
            frame = pd.read_parquet(path)
            missing = [c for c in REQUIRED if c not in frame.columns]
            if missing:
                raise ValueError(f"missing column(s) {', '.join(missing)}")
        except Exception as exc:  # noqa: BLE001 - any unreadable file is reported, with its name
            message = f"{path}: {type(exc).__name__}: {exc}".strip()
            if strict:
                raise ResultStoreError(f"cannot read result file {message}") from exc
            warnings.append(f"skipped result file {message}")
            continue
        if len(frame):
            frames.append(frame)
    return normalise(pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()), warnings


def normalise(df: pd.DataFrame) -> pd.DataFrame:
    """Fill the columns an older or partial file lacks, and give each column one plain type."""
    df = df.copy()
    for col in STRING_COLUMNS:
        df[col] = df[col].astype(object).where(df[col].notna(), "").astype(str) if col in df else ""
    for col in INT_COLUMNS:
        df[col] = pd.to_numeric(df[col], errors="coerce").fillna(0).astype("int64") if col in df else 0
    for col in FLOAT_COLUMNS:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64") if col in df else np.nan
    for label, plain in (("dataset_label", "dataset"), ("hashing_label", "hashing"),
                         ("defense_label", "defense"), ("attack_label", "attack")):
        df[label] = df[label].where(df[label] != "", df[plain])
    df["surrogate"] = df["surrogate"].where(df["surrogate"] != "", "self")
    df["epsilon"] = df["epsilon"].fillna(0.0)
    # one computation per cell: the store's key, else the identity; a re-run replaces older rows
    ident = df[IDENTITY[0]].astype(str)
    for col in IDENTITY[1:]:
        ident = ident + "|" + df[col].astype(str)
    df["cell"] = df["cell_key"].where(df["cell_key"] != "", ident)
    if len(df):
        latest = df.groupby("cell")["created_at"].transform("max")
        df = df[df["created_at"] == latest].reset_index(drop=True)
    return df


def iterations(attack_params: str) -> int | None:
    """The iteration count in an attack's JSON parameters, if it has one."""
    try:
        params = json.loads(attack_params) if attack_params else {}
    except (TypeError, ValueError):
        return None
    if isinstance(params, dict):
        for key in ITERATION_KEYS:
            if isinstance(params.get(key), (int, float)) and not isinstance(params.get(key), bool):
                return int(params[key])
    return None


def metric_choice(df: pd.DataFrame) -> pd.DataFrame:
    """Scalar metric rows, one per (cell, metric): of several cut-offs the smallest k wins, 'all' (0) last."""
    rows = df[(df["status"] == "ok") & (df["metric"] != "") & ~df["metric"].isin(CURVE_METRICS)]
    rows = rows.assign(_order=rows["topk"].where(rows["topk"] > 0, np.iinfo(np.int64).max))
    return rows.sort_values(["cell", "metric", "_order"], kind="stable").drop_duplicates(["cell", "metric"])


def cells(df: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: identity, status, error, environment, and the main metrics (value and topk)."""
    keep = ["cell", "dataset", "hashing", "defense", "attack", *IDENTITY, "status", "error", "victim_key",
            "attack_params", "batch_size", "cell_seconds", "created_at", *ENVIRONMENT]
    keep = list(dict.fromkeys(keep))
    if not len(df):
        return pd.DataFrame(columns=keep + MAIN_METRICS + [f"{m}_topk" for m in MAIN_METRICS])
    # an error row wins over ok rows of the same cell (partial results are still shown)
    order = df.assign(_bad=(df["status"] != "ok").astype(int)).sort_values(["cell", "_bad"], ascending=[True, False])
    out = order.drop_duplicates("cell")[keep].set_index("cell")
    chosen = metric_choice(df).set_index(["cell", "metric"])
    for metric in MAIN_METRICS + ["prepare_seconds"]:
        part = chosen.xs(metric, level="metric") if metric in chosen.index.get_level_values(1) else None
        out[metric] = part["value"] if part is not None else np.nan
        out[f"{metric}_topk"] = part["topk"] if part is not None else 0
    out = out.reset_index()
    out["iterations"] = out["attack_params"].map(iterations)
    return out.sort_values(IDENTITY, kind="stable").reset_index(drop=True)


def distinct(frame: pd.DataFrame, columns: list[str]) -> list[dict]:
    """Distinct combinations of ``columns`` with the number of cells and first/last created_at."""
    if not len(frame):
        return []
    grouped = frame.groupby(columns, dropna=False)
    table = grouped.agg(cells=("cell", "nunique"), first=("created_at", "min"), last=("created_at", "max"))
    return table.reset_index().to_dict("records")


# ---- formatting (shown text; sorting uses the raw numbers) ----

def isnum(value) -> bool:
    return value is not None and not isinstance(value, str) and not (isinstance(value, float) and math.isnan(value))


def fmt_epsilon(eps: float) -> str:
    if not isnum(eps) or eps == 0:
        return "0"
    n = eps * 255
    return f"{round(n)}/255" if abs(n - round(n)) < 1e-6 else f"{eps:.4g}"


def fmt_seconds(sec: float) -> str:
    if not isnum(sec):
        return "—"
    return f"{sec:.0f} s" if sec >= 100 else f"{sec:.3g} s"


def fmt_metric(metric: str, value: float) -> str:
    if not isnum(value):
        return "—"
    if metric == "linf":
        return f"{value * 255:.1f}/255"
    if metric.endswith("seconds") or metric == "seconds_per_image":
        return fmt_seconds(value)
    return f"{value:.4f}"


def fmt_topk(topk: int) -> str:
    return "" if not isnum(topk) else ("@all" if int(topk) == 0 else f"@{int(topk)}")
