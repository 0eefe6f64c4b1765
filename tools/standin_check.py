"""Why an attack moves a multi-label stand-in's mAP as much as it does: per dataset of a grid (after the grid ran),
the clean victim's code margins, the labels' statistics, how far mAP falls when k random bits of every query's code
flip (and at the antipodal code, every bit flipped: the metric's floor), and per attack cell the bits it flipped
per query, its L2 budget and its mAP.

    python bench.py --grid grids/standin-check.toml --threads 1 --results R --cache C
    python tools/standin_check.py --grid grids/standin-check.toml --results R --cache C

It reads the cells' cached stages (victim, codes, the scored cell's adversarial codes and per-query APs); a cell
not computed yet is reported as such.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from label_statistics import label_statistics

from benchmark.cell import dataset_splits
from benchmark.encoding.codes import clean_codes
from benchmark.planning.grid import expand, load_preset, parse_filters
from benchmark.plugins import Registry
from benchmark.running.runner import Runner
from benchmark.scoring.evaluate import evaluate_queries
from benchmark.storage.results import cell_files
from benchmark.victim.train import trained_victim

CUTOFFS = (None, 1000, 5000)
FLIPS = (0, 1, 2, 4, 8, 12, 16, 24, 32)


def map_values(codes, database, splits, conventions) -> dict:
    rows = evaluate_queries(codes.float(), database.float(), splits.query.labels, splits.query.labels,
                            splits.database.labels, CUTOFFS, conventions).rows
    return {row["topk"]: row["value"] for row in rows if row["metric"] == "map"}


def flipped(codes: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Each code with k of its bits, chosen at random per query, negated."""
    order = torch.rand(codes.shape, generator=generator).argsort(dim=1)[:, :k]
    sign = torch.ones_like(codes)
    sign.scatter_(1, order, -1.0)
    return codes * sign


def linear_flip_distance(model, x: torch.Tensor) -> torch.Tensor:
    """(Q, K) the L-inf perturbation that would flip each bit if the network were linear around x: the
    bit's pre-activation |y_i| over the L1 norm of its input gradient (one backward pass per bit)."""
    x = x.clone().requires_grad_(True)
    logits = model.logits(x)
    distance = torch.empty_like(logits)
    for bit in range(logits.shape[1]):
        gradient, = torch.autograd.grad(logits[:, bit].sum(), x, retain_graph=True)
        distance[:, bit] = logits[:, bit].abs() / gradient.abs().flatten(1).sum(1).clamp_min(1e-12)
    return distance.detach()


def fmt(values: dict) -> str:
    return "  ".join(f"{'all' if k in (0, None) else '@' + str(k)} {v:.4f}" for k, v in values.items())


def report_dataset(plan, runner: Runner) -> None:
    s = runner.session
    splits = dataset_splits(plan, s)
    victim = trained_victim(plan.victim, splits, s)
    codes = clean_codes(plan.codes, victim, splits, s)
    channels, size, _ = splits.image_shape()
    print(f"\n## {plan.cell.dataset}: "
          f"{plan.victim.label()}, {len(splits.query)} queries x {len(splits.database)} database, "
          f"input {channels}x{size}x{size} ({channels * size * size} values)")
    stats = label_statistics(splits.query.labels.numpy(), splits.database.labels.numpy())
    print("labels: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items()))
    with torch.no_grad():
        relaxed = torch.cat([victim.model(x) for x, _, _ in splits.query.batches(500)]).abs()
    print(f"code margins |tanh y| over the queries' bits: mean {relaxed.mean():.3f}, median {relaxed.median():.3f}; "
          f"share < 0.1: {(relaxed < 0.1).float().mean():.3f}, < 0.5: {(relaxed < 0.5).float().mean():.3f}, "
          f"> 0.99: {(relaxed > 0.99).float().mean():.3f}; bits < 0.5 per query: "
          f"{(relaxed < 0.5).sum(1).float().mean():.2f} of {relaxed.shape[1]}")
    distance = linear_flip_distance(victim.model, splits.query.load(torch.arange(len(splits.query))))
    print(f"first-order L-inf distance to flip a bit (|y| / ||dy/dx||_1, in /255): median "
          f"{distance.median() * 255:.1f}, share under 8/255 {(distance < 8 / 255).float().mean():.3f}, under 16/255 "
          f"{(distance < 16 / 255).float().mean():.3f}; bits under 8/255 per query "
          f"{(distance < 8 / 255).sum(1).float().mean():.2f}")
    generator = torch.Generator().manual_seed(0)
    conventions = plan.conventions
    print("mAP with k random bits of every query code flipped (the metric's response; k = bits: the antipode):")
    for k in FLIPS:
        if k <= codes.query.shape[1]:
            print(f"  k {k:2d}: {fmt(map_values(flipped(codes.query.cpu(), k, generator), codes.database.cpu(), splits, conventions))}")
    random_codes = torch.where(torch.rand(codes.query.shape, generator=generator) < 0.5, -1.0, 1.0)
    print(f"  random codes: {fmt(map_values(random_codes, codes.database.cpu(), splits, conventions))}")


def report_attack(plan, runner: Runner, clean_query: torch.Tensor, rows) -> None:
    stored = runner.session.cache.load("cells", plan.key)
    if stored is None:
        print(f"  {plan.cell.attack:5s} eps {plan.cell.epsilon * 255:4.0f}/255: not computed yet")
        return
    adversarial = stored["adversarial_codes"].float()
    distance = (adversarial != clean_query.float()).sum(1).float()
    mine = rows[rows.cell_key == plan.key] if rows is not None else None

    def value(metric, topk=None):
        if mine is None:
            return math.nan
        pick = mine[(mine.metric == metric) & ((mine.topk == topk) if topk is not None else True)]
        return float(pick.value.iloc[-1]) if len(pick) else math.nan

    print(f"  {plan.cell.attack:5s} eps {plan.cell.epsilon * 255:4.0f}/255: bits flipped per query mean "
          f"{distance.mean():5.2f} median {distance.median():4.0f} (0: {(distance == 0).float().mean():.2f}, "
          f">= 8: {(distance >= 8).float().mean():.2f}, >= 16: {(distance >= 16).float().mean():.2f}); "
          f"mAP all {value('map', 0):.4f} @1000 {value('map', 1000):.4f} @5000 {value('map', 5000):.4f}; "
          f"L2 {value('l2'):.3f}, changed {value('changed_codes'):.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", required=True)
    parser.add_argument("--results", required=True)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--only", action="append", default=[], help="as bench.py's --only AXIS=V1,V2")
    args = parser.parse_args(argv)
    registry = Registry.discover()
    runner = Runner(registry, args.results, args.cache, device="cpu")
    cells = expand(load_preset(args.grid), registry, parse_filters(args.only))
    files = cell_files(args.results)
    rows = pd.concat([pd.read_parquet(f) for f in files]) if files else None
    for dataset in dict.fromkeys(c.dataset for c in cells):
        plans = [runner.plan(c) for c in cells if c.dataset == dataset]
        clean = next(p for p in plans if p.cell.attack == "none")
        report_dataset(clean, runner)
        s = runner.session
        query = clean_codes(clean.codes, trained_victim(clean.victim, dataset_splits(clean, s), s),
                            dataset_splits(clean, s), s).query.cpu()
        print(f"clean mAP all {runner_value(rows, clean.key, 0):.4f} @1000 {runner_value(rows, clean.key, 1000):.4f} "
              f"@5000 {runner_value(rows, clean.key, 5000):.4f}; attacks (L2 of the L-inf ball's corner: eps * "
              f"sqrt(values); 8/255 on 224x224x3 is {8 / 255 * math.sqrt(224 * 224 * 3):.2f}):")
        for plan in plans:
            if plan.cell.attack != "none":
                report_attack(plan, runner, query, rows)


def runner_value(rows, key: str, topk: int) -> float:
    if rows is None:
        return math.nan
    pick = rows[(rows.cell_key == key) & (rows.metric == "map") & (rows.topk == topk)]
    return float(pick.value.iloc[-1]) if len(pick) else math.nan


if __name__ == "__main__":
    main()
