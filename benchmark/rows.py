"""The result-row schema: one row per (cell, metric), every row carrying the cell's identity, conventions,
flags and environment (``leaderboard.store`` reads them back).

    rows = cell_rows(plan, metrics, registry, attack_batch, train_seconds, flags)   # a computed cell
    rows = error_rows(plan, registry, attack_batch, exc)                           # a failed one
    rows = finish_rows(rows, environment, seconds)                                 # stamped when stored
"""
from __future__ import annotations

import datetime
import json
import math
import numbers

import torch

from benchmark.planning.plan import CellPlan
from benchmark.plugins import Registry


def cell_rows(plan: CellPlan, metrics: list[dict], registry: Registry, attack_batch: int, train_seconds: float,
              flags: list[str]) -> list[dict]:
    base = base_row(plan, registry, attack_batch, train_seconds, "; ".join(flags))
    return [typed_row({**base, "topk": 0, "recall": math.nan, **metric}) for metric in metrics]


# The measurement's columns, one type each whatever a plugin returned, so the store reads as one table.
COLUMN_TYPES = {"iterations": (numbers.Integral, int, "a whole number"), "topk": (numbers.Integral, int, "a whole number"),
                "value": (numbers.Real, float, "a number"), "recall": (numbers.Real, float, "a number")}


def typed_row(row: dict) -> dict:
    """``row`` with its measurement columns as ``int`` and ``float``; a TypeError names a value that is neither."""
    for column, (kind, coerce, expected) in COLUMN_TYPES.items():
        value = row[column]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise TypeError(f"metric {row.get('metric')!r} has {column} {value!r} ({type(value).__name__}); "
                            f"expected {expected}")
        row[column] = coerce(value)
    return row


def error_rows(plan: CellPlan, registry: Registry, attack_batch: int, exc: BaseException) -> list[dict]:
    message = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        batch = attack_batch or "sized by the probe"
        message += (f" (attack batch {batch}; an attack or encoding halves its batch on out-of-memory down to one "
                    f"query, so this ran out with one query or in training: lower the method's batch_size)")
    row = base_row(plan, registry, attack_batch, math.nan)
    row.update(status="error", error=message, metric="", value=float("nan"), topk=0, recall=float("nan"),
               iterations=0)
    return [row]


def finish_rows(rows: list[dict], env: dict, seconds: float) -> list[dict]:
    """Stamp a cell's rows with the environment, its wall time and the time it finished."""
    finished_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return [{**row, **env, "cell_seconds": seconds, "created_at": finished_at} for row in rows]


def base_row(plan: CellPlan, registry: Registry, attack_batch: int, train_seconds: float, flags: str = "") -> dict:
    cell = plan.cell
    method = plan.victim.hashing.configure(registry)
    defense = registry.get("defenses", cell.defense).configure(cell.overrides("defenses", cell.defense))
    attack = plan.attack.attack.configure(registry)
    if plan.attack.epsilon is not None:
        attack.epsilon = plan.attack.epsilon  # the cell's, as the attack ran (attack_params, label)
    return {
        "dataset": cell.dataset, "dataset_label": plan.data_identity.get("label", cell.dataset),
        "hashing": cell.hashing, "hashing_label": method.label(), "backbone": cell.backbone, "bits": cell.bits,
        "defense": cell.defense, "defense_label": defense.label(), "train_data": cell.train_data,
        "attack": cell.attack, "attack_label": attack.label(), "targeted": bool(attack.targeted),
        "epsilon": math.nan if cell.epsilon is None else cell.epsilon, "surrogate": cell.surrogate,
        "scenario": cell.scenario, "seed": cell.seed, "status": "ok", "error": "", "flags": flags,
        "iterations": attack.iteration_count(),
        "n_query": plan.data_identity.get("n_query", 0), "n_database": plan.data_identity.get("n_database", 0),
        "n_train": plan.data_identity.get("n_train", 0),
        "data_folder": plan.data_identity.get("folder", ""),
        # which lists the split is (benchmark/data/fingerprints.py split_identity); variant "" when unregistered
        "split_fingerprint": str(plan.data_identity.get("split_fingerprint", "")),
        "split_variant": str(plan.data_identity.get("split_variant", "")),
        "target_rule": cell.target_rule, **plan.conventions.as_dict(),
        "epsilon_space": "linf_pixels_0_1" if cell.epsilon is not None else "unbounded",
        "attack_params": json.dumps(attack.params(), sort_keys=True),
        "hashing_params": json.dumps(method.params(), sort_keys=True),
        "defense_params": json.dumps(defense.params(), sort_keys=True),
        "dataset_params": json.dumps(plan.data_identity.get("params", {}), sort_keys=True),
        "batch_size": attack_batch, "precision": plan.compute.precision, "device_class": plan.compute.device_class,
        "cell_key": plan.key, "victim_key": plan.victim.key,
        "train_seconds": float(train_seconds),
        "sources": json.dumps(plan.sources, sort_keys=True),
    }
