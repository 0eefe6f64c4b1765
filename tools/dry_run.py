"""A dry run of grids/paper-full.toml at the real shapes: every stage and every plugin on tiny synthetic data.

    .venv/bin/python tools/dry_run.py --threads 1                  # the covering cells, on the CPU
    .venv/bin/python tools/dry_run.py --cover plugins              # every plugin and backbone once (fewer cells)
    .venv/bin/python tools/dry_run.py --backbone vgg11 --attack dhta --cells 1   # one VGG11 cell (gpu_check.sh)

The datasets are tools/synthetic_datasets.py's (each plugin's own file format, 224x224 RGB JPEG files for the list
datasets; 4 queries, 12 database images, 8 training images), the backbones the real ones without their ImageNet
weights (``:scratch``), and every schedule shrunk with the grid's ``--set`` machinery (``SHRUNK``: one epoch of
one batch, two attack iterations, one generator step), so the run takes minutes, not GPU-days. The numbers mean
nothing; what it shows is that each block's cells plan, train, attack, score and store on the shapes a GPU run
will see.

Which cells: the paper-full grid has hundreds; the run takes the fewest that together cover every block, dataset,
hashing method, backbone, defense, attack, scenario, training data, target rule and transfer, preferring cells
whose victim is already trained (``covering_cells``), plus one cell for each plugin the four papers' tables do not
use (``extra_cells``), so every plugin found runs at least once.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

SHRUNK = {  # parameter name -> the dry run's value, for every plugin that has the parameter
    "epochs": 1, "inner_epochs": 1, "decay_epochs": 0, "steps_per_epoch": 1, "num_samples": 8, "batch_size": 8,
    "iterations": 2, "prototype_epochs": 1, "prototype_steps": 1, "prototype_batch": 4, "query_subset": 4,
}
STAND_INS = {"fashion_mnist_mosaic", "fashion_mnist_canvas"}  # the CPU grids' FashionMNIST stand-ins, not paper-scale sets
DATASET_SIZES = {"fashion_mnist": {"n_train": 8}, "cifar10": {"n_query": 10, "n_train": 10},  # per-class draws
                 "folder": {"path": "folder", "query_share": 0.25, "train_share": 0.67}}  # synthetic_datasets' tree
PER_PLUGIN = {"attacks.prosgan": {"batch_size": 2}}  # its 224x224 generator: one step of two images
CHEAPEST = "alexnet:scratch"  # the plugins cover's stand-in victim backbone (1.4 GFLOP an image)
SMALL_NETWORKS = ("smallcnn", "smallcnn_fc500")
COVERS = ("blocks", "plugins")  # what the cells must cover: every block too, or only every plugin and axis value


def shrunk_settings(registry) -> list[str]:
    """``--set`` strings that shrink every plugin's schedule (and turn snapshots on every iteration)."""
    settings = []
    for kind in ("datasets", "hashing", "attacks", "defenses"):
        for name in registry.names(kind):
            defaults = registry.plugins[kind][name].defaults()
            values = {key: value for key, value in SHRUNK.items() if key in defaults}
            if defaults.get("snapshot_every"):
                values["snapshot_every"] = 1
            if kind == "datasets":
                values.update(DATASET_SIZES.get(name, {}))
            values.update(PER_PLUGIN.get(f"{kind}.{name}", {}))
            settings += [f"{kind}.{name}.{key}={value}" for key, value in values.items()]
    return settings


def scratch(backbone: str) -> str:
    """The torchvision backbones without their ImageNet weights; the small networks as they are."""
    from benchmark.victim.model import SMALL_NETWORK_HIDDEN, parse_backbone

    name, _ = parse_backbone(backbone)
    return name if name in SMALL_NETWORK_HIDDEN else f"{name}:scratch"


def without_weights(cell):
    """The cell with every backbone it names (its own, its surrogate's, a protection's surrogate) from scratch."""
    surrogate = cell.surrogate
    if surrogate != "self":
        hashing, backbone, bits = surrogate.split("/")
        surrogate = f"{hashing}/{scratch(backbone)}/{bits}"
    params = cell.params
    for values in params.get("defenses", {}).values():
        if "surrogate_backbone" in values:
            values["surrogate_backbone"] = scratch(values["surrogate_backbone"])
    return dataclasses.replace(cell, backbone=scratch(cell.backbone), surrogate=surrogate,
                               params_json=json.dumps(params, sort_keys=True))


def on_backbone(cell, backbone: str):
    """The cell with its victim (and a protection's surrogate) on ``backbone``; a transfer cell's source kept."""
    params = cell.params
    for values in params.get("defenses", {}).values():
        if "surrogate_backbone" in values:
            values["surrogate_backbone"] = backbone
    if cell.backbone in SMALL_NETWORKS:
        return cell
    return dataclasses.replace(cell, backbone=backbone, params_json=json.dumps(params, sort_keys=True))


def features(cell, block: int | None) -> set:
    """What a cell exercises, for the cover (its block, unless None)."""
    transfer = "self" if cell.surrogate == "self" else "transfer"
    return {("block", block or 0), ("dataset", cell.dataset), ("hashing", cell.hashing), ("backbone", cell.backbone),
            ("defense", cell.defense), ("attack", cell.attack), ("scenario", cell.scenario),
            ("train_data", cell.train_data), ("target_rule", cell.target_rule), ("surrogate", transfer)}


def victims_of(cell) -> set:
    """The trained models a cell needs (its victim, its surrogate), as the cover's cost counts them."""
    own = (cell.dataset, cell.hashing, cell.backbone, cell.bits, cell.defense, cell.train_data)
    if cell.surrogate == "self":
        return {own}
    hashing, backbone, bits = cell.surrogate.split("/")
    return {own, (cell.dataset, hashing, backbone, int(bits), "none", "clean")}


def cost(cell, trained: set) -> float:
    """A new victim costs its backbone's forward FLOPs at 224 (training and encoding); an attack one unit."""
    from benchmark.planning.estimate import forward_gflop

    new = [victim for victim in victims_of(cell) if victim not in trained]
    return 1.0 + sum(forward_gflop(victim[2], 224) * 4 for victim in new)


def covering_cells(blocks: list[tuple[str, list]], cover: str = "blocks") -> list:
    """Greedy cover: repeatedly the cell with the most new features per cost, until every feature is covered
    (``cover`` "blocks": every block has a cell too; "plugins": every plugin and axis value once)."""
    candidates = [(cell, features(cell, number if cover == "blocks" else None))
                  for number, (_, cells) in enumerate(blocks, 1) for cell in cells]
    if cover == "plugins":  # each cell also on the cheapest ImageNet backbone, so the plugins need few big victims
        candidates += [(variant, features(variant, None)) for variant in
                       dict.fromkeys(on_backbone(cell, CHEAPEST) for cell, _ in candidates if cell.surrogate == "self")]
    wanted = set().union(*(f for _, f in candidates)) if candidates else set()
    chosen, trained = [], set()
    while wanted:
        cell, new = max(((c, f & wanted) for c, f in candidates), key=lambda item: len(item[1]) / cost(item[0], trained))
        if not new:
            break
        chosen.append(cell)
        trained |= victims_of(cell)
        wanted -= new
    return chosen


def extra_cells(chosen: list, registry, settings: dict, backbone: str = "vgg11:scratch") -> list:
    """One cell for each dataset, hashing method and attack plugin the chosen cells leave out (a DPSH victim on
    FLICKR-25K's synthetic copy at 32 bits, on ``backbone``, with that dataset, method or attack), with the shrunk
    settings."""
    from benchmark.planning.grid import expand

    used = {axis: {getattr(c, axis) for c in chosen} for axis in ("dataset", "hashing", "attack")}
    base = {"dataset": "flickr25k", "hashing": "dpsh", "backbone": backbone, "bits": 32, "attack": "none",
            "epsilon": "8/255"}
    blocks = []
    for axis, kind in (("dataset", "datasets"), ("hashing", "hashing"), ("attack", "attacks")):
        for name in registry.names(kind):
            if name not in used[axis] and name not in STAND_INS:
                blocks.append({**base, axis: name})
    return expand({"block": blocks}, registry, None, settings) if blocks else []


def dry_run_cells(registry, backbone: str | None = None, limit: int = 0, cover: str = "blocks",
                  attack: str | None = None) -> list:
    """The cells the dry run computes: the cover of paper-full (shrunk, without weights) and the extra cells."""
    from benchmark.planning.blocks import grid_blocks
    from benchmark.planning.grid import parse_settings

    settings = parse_settings(shrunk_settings(registry))
    blocks = [(title, [without_weights(c) for c in cells])
              for title, cells in grid_blocks("paper-full", registry, None, settings)]
    if backbone or attack:
        blocks = [(title, [c for c in cells if (not backbone or c.backbone == scratch(backbone))
                           and (not attack or c.attack == attack)]) for title, cells in blocks]
    chosen = covering_cells(blocks, cover)
    if not (backbone or attack):
        chosen += extra_cells(chosen, registry, settings, CHEAPEST if cover == "plugins" else "vgg11:scratch")
    return chosen[:limit] if limit else chosen


def run(data_root: Path, work: Path, device: str, backbone: str | None = None, limit: int = 0,
        cover: str = "blocks", attack: str | None = None) -> dict:
    """Write the synthetic data, compute the dry run's cells; returns the runner's counts and the cells."""
    from benchmark import Registry
    from benchmark.running.runner import Runner
    from synthetic_datasets import write_all

    write_all(data_root)
    registry = Registry.discover()
    cells = dry_run_cells(registry, backbone, limit, cover, attack)
    if not cells:
        raise ValueError(f"paper-full has no cell with backbone {backbone!r} and attack {attack!r}")
    runner = Runner(registry, work / "results", work / "cache", device, str(data_root))
    counts = runner.run(cells)
    return {"counts": counts, "cells": cells, "device": runner.environment["device"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu or cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--backbone", default=None, help="only cells of this backbone (e.g. vgg11), no extra cells")
    parser.add_argument("--attack", default=None, help="only cells of this attack (e.g. dhta), no extra cells")
    parser.add_argument("--cells", type=int, default=0, help="at most this many cells (default: all of the cover)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the data, results and cache "
                                                                 "(default: a temporary one, removed after)")
    parser.add_argument("--cover", default="blocks", choices=COVERS,
                        help="blocks: a cell of every block of paper-full too (default); plugins: every plugin, "
                             "backbone and axis value at least once (fewer cells)")
    parser.add_argument("--list", action="store_true", help="print the cells and exit")
    args = parser.parse_args(argv)
    import logging

    import torch

    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the harness's progress and device choice
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader reports CPU-feature probing at INFO

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.list:
        from benchmark import Registry

        for cell in dry_run_cells(Registry.discover(), args.backbone, args.cells, args.cover, args.attack):
            print(cell.describe())
        return 0
    with tempfile.TemporaryDirectory(prefix="hashbench-dry-run-") as temporary:
        work = args.work or Path(temporary)
        started = time.perf_counter()
        outcome = run(work / "data", work, args.device, args.backbone, args.cells, args.cover, args.attack)
        seconds = time.perf_counter() - started
    counts = outcome["counts"]
    print(f"dry run: {len(outcome['cells'])} cells on {outcome['device']} in {seconds:.0f} s: {counts['ran']} ran, "
          f"{counts['cached']} cached, {counts['error']} failed")
    return 1 if counts["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
