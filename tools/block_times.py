"""How long each block of a grid took, read off a result store: the compute seconds its stored cells record.

    python tools/block_times.py --grid paper --results results/published/paper-cpu-v2

Per block: cells stored of planned, the seconds of its cells (``cell_seconds``: attack, scoring, and the stages
the cell itself computed), and of the victims it trained (``train_seconds``, each victim counted once, in the
first block that uses it). These are compute seconds, not wall clock: a run with several workers overlaps
them, and a data protection's own training is not on the rows (its log line gives it).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark import Registry  # noqa: E402
from benchmark.planning.blocks import grid_blocks  # noqa: E402
from benchmark.planning.plan import Planner  # noqa: E402
from benchmark.running.runner import pick_device  # noqa: E402
from benchmark.scoring.evaluate import EvaluationConventions  # noqa: E402
from benchmark.victim.compute import ComputeSettings  # noqa: E402


def block_keys(grid: str, device: str) -> list[tuple[str, list[str]]]:
    registry = Registry.discover()
    planner = Planner(registry, None, EvaluationConventions(), ComputeSettings.for_device(pick_device(device)))
    return [(title, [planner.plan(cell).key for cell in cells]) for title, cells in grid_blocks(grid, registry)]


def block_times(blocks: list[tuple[str, list[str]]], rows: pd.DataFrame) -> pd.DataFrame:
    per_cell = rows.drop_duplicates("cell_key").set_index("cell_key")
    seen_victims: set[str] = set()
    out = []
    for number, (title, keys) in enumerate(blocks, 1):
        stored = per_cell.loc[per_cell.index.intersection(keys)]
        ok = stored[stored["status"] == "ok"]
        fresh = ok[~ok["victim_key"].isin(seen_victims)].drop_duplicates("victim_key")
        seen_victims.update(ok["victim_key"])
        out.append({"block": number, "title": (title or "")[:70], "cells": f"{len(ok)}/{len(keys)}",
                    "cell_minutes": round(ok["cell_seconds"].sum() / 60, 1),
                    "victims_trained": len(fresh), "victim_minutes": round(fresh["train_seconds"].sum() / 60, 1)})
    return pd.DataFrame(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grid", required=True)
    parser.add_argument("--results", required=True)
    parser.add_argument("--device", default="auto", help="the device class the cells were planned for")
    args = parser.parse_args(argv)
    rows = pd.read_parquet(args.results)
    table = block_times(block_keys(args.grid, args.device), rows)
    print(" | ".join(table.columns))
    for row in table.itertuples(index=False):
        print(" | ".join(str(v) for v in row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
