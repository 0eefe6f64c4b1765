"""Read the parquet result store and shape it for the pages.

The store is a folder of parquet files, one row per (cell, metric). Files are read one by one so that
a file pandas cannot read (or one without the columns every row must have) is named. By default such
a file is skipped and its name and error are returned as a warning, which every page shows in a
banner; ``strict=True`` raises ``ResultStoreError`` instead. Names starting with '.' or '_' (a write
still in flight, a quarantined ``.corrupt-*`` file, ``.gitkeep``) are not part of the store, as in
``benchmark.storage.results``, nor is the leaderboard's own ``results.parquet`` download (marked in its
parquet metadata, ``DOWNLOAD_MARKER``). A store is one folder: its sub-folders are stores of their own
(``results/published/paper-cpu-v2``), read, judged stale and pruned only when named as the store.

Words used here and on the pages:

* a *run* is one computation of a cell (its ``cell_key``); a re-run of the same key replaces it;
* a *point* (the ``cell`` column) is one scored result of a run: an attack that snapshots its queries at
  several iteration counts yields one point per count (the rows' ``iterations``);
* a run is *stale* when a code file it lists in ``sources`` ({relative path: sha256 hex prefix}) has
  changed or is gone: its numbers no longer describe the current code. Stale runs stay in the store
  (``python -m leaderboard.store stale`` lists them, ``--remove`` deletes their files) but are not shown;
* ``epsilon`` is NaN for an unbounded attack (ProS-GAN): shown as "unbounded", never as 0.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

REPO_ROOT = Path(__file__).resolve().parent.parent
# What identifies a point on the pages (the store's own ``cell_key`` groups the rows of a run).
IDENTITY = ["dataset_label", "hashing_label", "backbone", "bits", "defense_label", "train_data", "attack_label",
            "epsilon", "surrogate", "scenario", "seed"]
MAIN_METRICS = ["map", "tmap", "map_tie_aware", "perceptibility", "linf", "seconds_per_image"]
CURVE_METRICS = {"precision_at", "pr_precision", "tprecision_at", "tpr_precision"}
CUTOFF_METRICS = {"map", "tmap", "map_tie_aware", "tmap_tie_aware", "anchor_code_tmap", "prototype_code_tmap",
                  "anchor_code_map", "prototype_code_map"}
ENVIRONMENT = ["device", "torch", "faiss", "git_commit", "harness_version", "python"]
PROTOCOL = ["dataset_label", "n_query", "n_database", "n_train", "target_rule", "tie_rule", "search_backend",
            "zero_relevant", "epsilon_space", "ap_denominator"]
# the conventions that change numbers: cells that differ in any of them are never averaged together
CONVENTIONS = ["target_rule", "zero_relevant", "tie_rule", "search_backend", "ap_denominator", "relevance",
               "epsilon_space"]
REQUIRED = ["dataset", "hashing", "attack", "metric", "value", "status"]
INT_COLUMNS = ["bits", "seed", "topk", "n_query", "n_database", "n_train", "batch_size"]
FLOAT_COLUMNS = ["recall", "value", "cell_seconds", "train_seconds"]
STRING_COLUMNS = ["dataset", "dataset_label", "hashing", "hashing_label", "backbone", "defense", "defense_label",
                  "attack", "attack_label", "surrogate", "scenario", "train_data", "metric", "status", "error",
                  "flags", "sources", "target_rule", "tie_rule", "search_backend", "zero_relevant", "epsilon_space",
                  "ap_denominator", "relevance", "attack_params", "hashing_params", "defense_params",
                  "dataset_params", "device", "torch", "faiss", "git_commit", "harness_version", "python",
                  "created_at", "cell_key", "victim_key", "split_fingerprint", "split_variant"]
# attack_params keys that hold the number of optimisation steps per query (rows without an ``iterations`` column)
ITERATION_KEYS = ("iterations", "iteration", "iters", "n_iter", "num_iter", "steps", "num_steps")
# rows written before the ``targeted`` column existed: the targeted attacks of the four papers
KNOWN_TARGETED = frozenset({"p2p", "dhta", "prosgan", "tha", "fgsm_dhta", "ifgsm_dhta"})
FLAG_NAME = re.compile(r"^[A-Za-z_][\w.-]*$")
# parquet metadata key of the leaderboard's results.parquet download: a table of rows, never a result file
DOWNLOAD_MARKER = b"hashbench.leaderboard_download"
KEPT_BECAUSE_TRACKED = "tracked by git (a committed run; `git rm` it to delete it)"


class ResultStoreError(RuntimeError):
    """A result file could not be used; the message names the file."""


def read_results(results_dir: str | Path, strict: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """All rows of the store as one normalised frame, and the warnings (one per file skipped)."""
    from benchmark.storage.results import cell_files

    files = cell_files(results_dir)
    frames, warnings = [], []
    for path in files:
        try:
            if is_download(path):
                continue
            frame = pd.read_parquet(path)
            missing = [c for c in REQUIRED if c not in frame.columns]
            if missing:
                raise ValueError(f"missing column(s) {', '.join(missing)}")
            check_named_by_its_cell(path, frame)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is reported, with its name
            message = f"{path}: {type(exc).__name__}: {exc}".strip()
            if strict:
                raise ResultStoreError(f"cannot read result file {message}") from exc
            warnings.append(f"skipped result file {message}")
            continue
        if len(frame):
            frames.append(frame.assign(source_file=str(path)))
    return normalise(pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()), warnings


def is_download(path: Path) -> bool:
    """True for a results.parquet the leaderboard wrote (its rows again, so never read back as results)."""
    return DOWNLOAD_MARKER in (pq.read_schema(path).metadata or {})


CELL_FILE_NAME = re.compile(r"^[0-9a-f]{20}$")  # the harness names a cell's file by its key


def check_named_by_its_cell(path: Path, frame: pd.DataFrame) -> None:
    """A file named by a cell key must hold that cell's rows: one copied under another cell's name is not shown
    as that cell (it would show one cell twice and hide the other)."""
    if not CELL_FILE_NAME.match(path.stem) or "cell_key" not in frame.columns or not len(frame):
        return
    found = sorted(set(frame["cell_key"].astype(str)))
    if found != [path.stem]:
        raise ValueError(f"its rows are of cell {', '.join(found) or '(none)'}, not of cell {path.stem} its name "
                         f"says (copied or renamed?)")


def normalise(df: pd.DataFrame) -> pd.DataFrame:
    """Fill the columns an older or partial file lacks, and give each column one plain type."""
    df = df.copy()
    for col in STRING_COLUMNS + ["source_file"]:
        df[col] = df[col].astype(object).where(df[col].notna(), "").astype(str) if col in df else ""
    for col in INT_COLUMNS:
        df[col] = pd.to_numeric(df[col], errors="coerce").fillna(0).astype("int64") if col in df else 0
    for col in FLOAT_COLUMNS:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64") if col in df else np.nan
    # NaN epsilon is an unbounded attack; a file with no epsilon column at all predates the axis (clean = 0)
    df["epsilon"] = pd.to_numeric(df["epsilon"], errors="coerce").astype("float64") if "epsilon" in df else 0.0
    for label, plain in (("dataset_label", "dataset"), ("hashing_label", "hashing"),
                         ("defense_label", "defense"), ("attack_label", "attack")):
        df[label] = df[label].where(df[label] != "", df[plain])
    df["surrogate"] = df["surrogate"].where(df["surrogate"] != "", "self")
    df["scenario"] = df["scenario"].where(df["scenario"] != "", "a2c")
    df["train_data"] = df["train_data"].where(df["train_data"] != "", "clean")
    parsed = df["attack_params"].map(iterations).astype("float64")
    given = pd.to_numeric(df["iterations"], errors="coerce") if "iterations" in df else parsed
    df["iterations"] = given.fillna(parsed).fillna(0).astype("int64")
    known = df["attack"].isin(KNOWN_TARGETED)  # rows written before the column existed
    if "targeted" in df:
        given = df["targeted"].map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v))
                                   else str(v).lower() in ("true", "1", "yes"))
        df["targeted"] = given.where(given.notna(), known).astype(bool)
    else:
        df["targeted"] = known
    df["eps_key"] = df["epsilon"].map(epsilon_key)
    if not len(df):
        return df.assign(run=pd.Series(dtype=str), cell=pd.Series(dtype=str))
    # one computation per run: the store's key, else the identity; a re-run replaces older rows
    ident = df[IDENTITY[0]].astype(str)
    for col in IDENTITY[1:]:
        ident = ident + "|" + (df["eps_key"] if col == "epsilon" else df[col].astype(str))
    df["run"] = df["cell_key"].where(df["cell_key"] != "", ident)
    df["cell"] = df["run"] + "@" + df["iterations"].astype(str)
    latest = df.groupby("run")["created_at"].transform("max")
    return df[df["created_at"] == latest].reset_index(drop=True)


def iterations(attack_params: str) -> int | None:
    """The iteration count in an attack's JSON parameters, if it has one."""
    params = json_dict(attack_params)
    for key in ITERATION_KEYS:
        if isinstance(params.get(key), (int, float)) and not isinstance(params.get(key), bool):
            return int(params[key])
    return None


def json_dict(text: str) -> dict:
    try:
        value = json.loads(text) if text else {}
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def epsilon_key(eps: float) -> str:
    """A grouping key for epsilon that keeps unbounded (NaN) apart from every number."""
    return "unbounded" if not isnum(eps) else f"{eps:.8g}"


def default_topk(dataset_params: str) -> int | None:
    """The dataset's own mAP cut-off (its ``topk`` parameter; 0 = whole database), if recorded."""
    value = json_dict(dataset_params).get("topk")
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def parse_flags(text: str) -> list[tuple[str, str]]:
    """``"a: why; b: why"`` -> [("a", "why"), ("b", "why")]; a piece without a name continues the last reason."""
    out: list[list[str]] = []
    for piece in (text or "").split("; "):
        name, sep, reason = piece.partition(": ")
        if sep and FLAG_NAME.match(name.strip()):
            out.append([name.strip(), reason.strip()])
        elif piece.strip() and FLAG_NAME.match(piece.strip()) and not out:
            out.append([piece.strip(), ""])
        elif piece.strip() and out:
            out[-1][1] += "; " + piece.strip()
        elif piece.strip():
            out.append([piece.strip(), ""])
    return [(n, r) for n, r in out]


def scalar_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The ok rows of scalar metrics (every cut-off kept)."""
    if not len(df):
        return df
    return df[(df["status"] == "ok") & (df["metric"] != "") & ~df["metric"].isin(CURVE_METRICS)]


def metric_choice(df: pd.DataFrame) -> pd.DataFrame:
    """Scalar metric rows, one per (cell, metric): the dataset's own cut-off where a row has it, else the
    smallest k, 'all' (0) last."""
    rows = scalar_rows(df)
    own = rows["dataset_params"].map(default_topk)
    is_own = (rows["topk"] == own) & own.notna()
    order = np.where(is_own, -1, np.where(rows["topk"] > 0, rows["topk"], np.iinfo(np.int64).max))
    rows = rows.assign(_order=order)
    return rows.sort_values(["cell", "metric", "_order"], kind="stable").drop_duplicates(["cell", "metric"])


def cells(df: pd.DataFrame) -> pd.DataFrame:
    """One row per point: identity, status, error, flags, environment, and the main metrics (value and topk)."""
    keep = ["cell", "run", "dataset", "hashing", "defense", "attack", *IDENTITY, "eps_key", "iterations", "targeted",
            "status", "error", "flags", "victim_key", "cell_key", "attack_params", "hashing_params", "defense_params",
            "dataset_params", *CONVENTIONS, "n_query", "n_database", "n_train", "batch_size", "cell_seconds",
            "train_seconds", "created_at", "sources", "source_file", *ENVIRONMENT]
    keep = list(dict.fromkeys(keep))
    extra = ["prepare_seconds", "anchor_code_tmap", "prototype_code_tmap"]
    if not len(df):
        return pd.DataFrame(columns=keep + MAIN_METRICS + extra + [f"{m}_topk" for m in MAIN_METRICS + extra])
    # an error row wins over ok rows of the same cell (partial results are still shown)
    order = df.assign(_bad=(df["status"] != "ok").astype(int)).sort_values(["cell", "_bad"], ascending=[True, False])
    out = order.drop_duplicates("cell")[keep].set_index("cell")
    chosen = metric_choice(df).set_index(["cell", "metric"])
    for metric in MAIN_METRICS + extra:
        part = chosen.xs(metric, level="metric") if metric in chosen.index.get_level_values(1) else None
        out[metric] = part["value"] if part is not None else np.nan
        out[f"{metric}_topk"] = part["topk"] if part is not None else 0
    out = out.reset_index()
    out["default_topk"] = out["dataset_params"].map(default_topk)
    return out.sort_values(IDENTITY + ["iterations"], kind="stable", key=_sortable).reset_index(drop=True)


def _sortable(col: pd.Series) -> pd.Series:
    return col.fillna(np.inf) if col.dtype.kind == "f" else col


def distinct(frame: pd.DataFrame, columns: list[str]) -> list[dict]:
    """Distinct combinations of ``columns`` with the number of cells and first/last created_at."""
    if not len(frame):
        return []
    grouped = frame.groupby(columns, dropna=False)
    table = grouped.agg(cells=("cell", "nunique"), first=("created_at", "min"), last=("created_at", "max"))
    return table.reset_index().to_dict("records")


# ---- stale runs: their code files changed since they ran ----

def source_hash(path: Path) -> str:
    """The full sha256 hex digest of a file's bytes (``sources`` stores a prefix of it, as the harness does)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def stale_reasons(sources: str, root: str | Path, memo: dict | None = None) -> list[str]:
    """Why the code a run lists in ``sources`` is no longer the current code (empty: current or unrecorded)."""
    if not sources:
        return []
    try:
        listed = json.loads(sources)
    except ValueError:
        return [f"sources is not JSON: {sources[:60]!r}"]
    if not isinstance(listed, dict):
        return ["sources is not a {path: hash} object"]
    memo = {} if memo is None else memo
    reasons = []
    for rel, recorded in sorted(listed.items()):
        path = Path(root) / rel
        if path not in memo:
            memo[path] = source_hash(path) if path.is_file() else None
        current = memo[path]
        if current is None:
            reasons.append(f"{rel} is gone")
        elif not recorded or not current.startswith(str(recorded).lower()):
            reasons.append(f"{rel} changed")
    return reasons


def stale_cells(df: pd.DataFrame, root: str | Path = REPO_ROOT) -> pd.DataFrame:
    """One row per stale run: ``run``, ``cell_key``, ``source_file``, a short description and ``reasons``."""
    columns = ["run", "cell_key", "source_file", "description", "reasons"]
    if not len(df):
        return pd.DataFrame(columns=columns)
    runs = df.drop_duplicates("run")
    memo: dict = {}
    out = []
    for rec in runs.to_dict("records"):
        reasons = stale_reasons(rec["sources"], root, memo)
        if reasons:
            description = (f"{rec['dataset_label']} {rec['hashing_label']} {rec['backbone']} {rec['bits']} bits "
                           f"{rec['defense_label']} {rec['attack_label']} eps={fmt_epsilon(rec['epsilon'])} "
                           f"seed {rec['seed']}")
            out.append({"run": rec["run"], "cell_key": rec["cell_key"], "source_file": rec["source_file"],
                        "description": description, "reasons": "; ".join(reasons)})
    return pd.DataFrame(out, columns=columns)


def drop_stale(df: pd.DataFrame, root: str | Path | None = REPO_ROOT) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the rows of current runs, the stale runs); ``root=None`` checks nothing (a published run as published)."""
    if root is None or not len(df):
        return df, stale_cells(df.iloc[:0], REPO_ROOT)
    stale = stale_cells(df, root)
    return df[~df["run"].isin(set(stale["run"]))].reset_index(drop=True), stale


def stale_files(results_dir: str | Path, root: str | Path = REPO_ROOT) -> list[Path]:
    """The result files that hold only stale runs (those ``remove_stale`` deletes)."""
    df, _ = read_results(results_dir)
    stale = stale_cells(df, root)
    if not len(stale):
        return []
    current_files = set(df.loc[~df["run"].isin(set(stale["run"])), "source_file"])
    return [Path(name) for name in sorted(set(stale["source_file"]) - current_files)]


def tracked_files(paths: list[Path]) -> set[Path]:
    """Those of ``paths`` (files of one folder) that git tracks. In a git checkout where git cannot say (not
    installed, an error), every one of them counts as tracked: better kept than a committed file deleted."""
    if not paths:
        return set()
    folder = paths[0].parent
    try:
        listed = subprocess.run(["git", "-C", str(folder), "ls-files", "-z", "--", *(p.name for p in paths)],
                                capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        listed = None
    if listed is not None and listed.returncode == 0:
        return {folder / name for name in listed.stdout.split("\0") if name}
    inside_checkout = any((parent / ".git").exists() for parent in [folder.resolve(), *folder.resolve().parents])
    return set(paths) if inside_checkout else set()


def remove_stale(results_dir: str | Path, root: str | Path = REPO_ROOT) -> tuple[list[Path], list[Path]]:
    """Delete the result files that hold only stale runs, except those git tracks; returns (removed, kept)."""
    files = stale_files(results_dir, root)
    tracked = tracked_files(files)
    removed = [path for path in files if path not in tracked]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed, [path for path in files if path in tracked]


def main(argv: list[str] | None = None) -> int:
    """``python -m leaderboard.store stale [--results DIR] [--root DIR] [--remove]``"""
    parser = argparse.ArgumentParser(prog="python -m leaderboard.store",
                                     description="List (or remove) the stale runs of a result store.")
    parser.add_argument("command", choices=["stale"])
    parser.add_argument("--results", default=str(REPO_ROOT / "results"), help="the parquet result store (folder)")
    parser.add_argument("--root", default=str(REPO_ROOT), help="the code tree the runs' sources are checked against")
    parser.add_argument("--remove", action="store_true", help="delete the files of stale runs")
    args = parser.parse_args(argv)
    df, problems = read_results(args.results)
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    stale = stale_cells(df, args.root)
    for rec in stale.to_dict("records"):
        print(f"{rec['cell_key'] or rec['run']}  {rec['description']}  ({rec['reasons']})")
    print(f"{len(stale)} stale run(s) of {df['run'].nunique() if len(df) else 0} in {args.results}")
    if args.remove:
        removed, kept = remove_stale(args.results, args.root)
        for path in kept:
            print(f"kept {path}: {KEPT_BECAUSE_TRACKED}")
        print(f"removed {len(removed)} file(s)" + (f", kept {len(kept)} that git tracks" if kept else ""))
    return 0


# ---- formatting (shown text; sorting uses the raw numbers) ----

def isnum(value) -> bool:
    if value is None or isinstance(value, (str, bool)):
        return False
    try:
        return not math.isnan(float(value))
    except (TypeError, ValueError):
        return False


def fmt_epsilon(eps: float) -> str:
    if not isnum(eps):
        return "unbounded"
    if eps == 0:
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


if __name__ == "__main__":
    sys.exit(main())
