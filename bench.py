"""hashbench: adversarial robustness of deep-hashing image retrieval.

    python bench.py                                   # the default grid on FashionMNIST, then the leaderboard
    python bench.py --grid full --only attack=pgd,dhta --only bits=32
    python bench.py list                              # every plugin found, with its paper and defaults
    python bench.py leaderboard                       # render leaderboard/site from results/ only
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import logging
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

log = logging.getLogger("hashbench")
NEEDED = ("torch", "torchvision", "pandas", "pyarrow", "jinja2")


def ensure_environment() -> None:
    """Run in the project's environment: re-run with .venv's python when this one lacks the packages."""
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if not missing:
        return
    venv = ROOT / ".venv"
    python = venv / "bin" / "python"
    if python.exists() and Path(sys.prefix).resolve() != venv.resolve() and not os.environ.get("HASHBENCH_REEXEC"):
        os.environ["HASHBENCH_REEXEC"] = "1"
        os.execv(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])
    hint = (f"{python} lacks them too: rebuild it with `make env`" if python.exists()
            else "build the environment with `make env` (once; see README), then run `.venv/bin/python bench.py ...`")
    sys.exit(f"bench.py: this Python ({sys.executable}) lacks {', '.join(missing)}; {hint}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", default="run", choices=["run", "list", "leaderboard", "plan", "prune"],
                        help="run the grid (default), list plugins (with --stale: the stored cells computed by "
                             "code that has changed since), render the leaderboard, show the plan, or prune "
                             "(delete the stale cells' result files)")
    parser.add_argument("--stale", action="store_true", help="with list: list the stale cells of --results")
    parser.add_argument("--grid", default="default", help="grid preset in grids/ or a .toml path (default: default)")
    parser.add_argument("--only", action="append", default=[], metavar="AXIS=V1,V2",
                        help="keep only cells whose AXIS is one of the values; repeatable")
    parser.add_argument("--set", action="append", default=[], dest="settings", metavar="KIND.PLUGIN.PARAM=VALUE",
                        help="override a plugin parameter for every cell, e.g. attacks.dhta.iterations=500")
    parser.add_argument("--data-root", default=None, help="folder holding the datasets (else $HASHBENCH_DATA)")
    parser.add_argument("--device", default="auto", help="auto (GPU when there is one), cpu or cuda[:N]")
    parser.add_argument("--results", default=str(ROOT / "results"), help="result store folder")
    parser.add_argument("--cache", default=str(ROOT / ".cache"), help="stage cache folder")
    parser.add_argument("--site", default=str(ROOT / "leaderboard" / "site"), help="leaderboard output folder")
    parser.add_argument("--backend", default="torch", choices=["torch", "faiss"], help="Hamming search backend")
    parser.add_argument("--zero-relevant", default="count_as_zero", choices=["count_as_zero", "exclude"],
                        help="AP of a query with no relevant item in the top k")
    parser.add_argument("--target-rule", default=None, metavar="RULE",
                        help="draw every cell's target labels by RULE, whatever its grid says (the grid's "
                             "target_rule axis, default disjoint; rules in benchmark/targets.py)")
    parser.add_argument("--attack-batch", type=int, default=0, help="queries per attack batch (default 250 CPU, 1000 GPU)")
    parser.add_argument("--threads", type=int, default=0, metavar="N",
                        help="CPU threads for torch (default: torch's choice, one per core); lower it when "
                             "other jobs share the cores, as oversubscribed threads slow everything several-fold")
    parser.add_argument("--force", action="store_true", help="recompute cells already in the result store")
    parser.add_argument("--executor", default="local", choices=["local", "ray"],
                        help="local: one cell after another in this process (default); ray: the cells as Ray tasks, "
                             "grouped by victim (cache and results folders must be shared by every machine)")
    parser.add_argument("--address", default=None, metavar="HOST:PORT",
                        help="with --executor ray: an existing cluster's head (default: start a local one)")
    parser.add_argument("--no-leaderboard", action="store_true", help="do not render the leaderboard after a run")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def list_plugins(registry) -> None:
    from benchmark.victim.model import BACKBONES

    titles = {"datasets": "Datasets", "hashing": "Hashing methods", "attacks": "Attacks", "defenses": "Defenses"}
    for kind in ("datasets", "hashing", "attacks", "defenses"):
        print(f"\n{titles[kind]} ({len(registry.plugins[kind])})")
        for name in registry.names(kind):
            plugin = registry.plugins[kind][name]
            tags = ", ".join(t for t in ("targeted" if getattr(plugin, "targeted", False) else "",) if t)
            print(f"  {name:<22} {plugin.paper}" + (f" [{tags}]" if tags else ""))
            defaults = ", ".join(f"{k}={v!r}" for k, v in plugin.defaults().items())
            if defaults:
                print(f"  {'':<22} defaults: {defaults}")
            if kind == "datasets":
                print(f"  {'':<22} protocol: {plugin.protocol}")
    print(f"\nBackbones ({len(BACKBONES)}; torchvision ones use ImageNet weights, append ':scratch' for random init)")
    for spec in BACKBONES.values():
        size = f"resized to {spec.input_size}" if spec.input_size else "native size"
        print(f"  {spec.name:<22} {spec.paper} ({size})")
    if registry.failures:
        print(f"\nPlugin files that failed to load ({len(registry.failures)}):")
        for failure in registry.failures:
            print(f"  {failure}")


def render_leaderboard(results: str, site: str, cache: str | None = None) -> Path:
    from leaderboard.render import render

    return render(results, site, cache_dir=cache)


def list_stale(results: str) -> int:
    from leaderboard.store import read_results, stale_cells

    stale = stale_cells(read_results(results)[0], ROOT)
    for row in stale.itertuples():
        print(f"{row.cell_key}  {row.description}: {row.reasons}")
    print(f"{len(stale)} stale cell(s) in {results}/" + (" (python bench.py prune deletes them)" if len(stale) else ""))
    return 0


def stop_on_terminate(signum, frame) -> None:
    """SIGTERM (a scheduler's or `kill`'s stop) ends a run as Ctrl-C does: finished cells kept, the run recorded."""
    raise KeyboardInterrupt


def record_run(args, runner, cells, counts: dict, started: datetime.datetime) -> None:
    """Append the run's manifest (what ran, where, how long) to ``<results>/_runs.jsonl`` (not a result file)."""
    import json

    import torch

    finished = datetime.datetime.now(datetime.timezone.utc)
    manifest = {"command": " ".join(["bench.py", *sys.argv[1:]]), "grid": args.grid, "cells": len(cells),
                **counts, "started": started.isoformat(timespec="seconds"),
                "finished": finished.isoformat(timespec="seconds"),
                "seconds": round((finished - started).total_seconds(), 1), "executor": args.executor,
                "threads": torch.get_num_threads(), **{k: runner.environment[k] for k in
                                                        ("device", "torch", "faiss", "python", "git_commit")}}
    with open(Path(args.results) / "_runs.jsonl", "a") as log_file:
        log_file.write(json.dumps(manifest) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader reports CPU-feature probing at INFO
    from benchmark import Registry

    if args.command == "leaderboard":
        if not Path(args.results).is_dir():
            print(f"bench.py: the results folder {args.results} does not exist; the leaderboard in {args.site} was "
                  f"left as it is (give --results FOLDER holding the parquet files)", file=sys.stderr)
            return 2
        print(f"leaderboard: {render_leaderboard(args.results, args.site, args.cache)}")
        return 0
    if args.command == "prune":
        from leaderboard.store import remove_stale

        removed = remove_stale(args.results, ROOT)
        print(f"removed {len(removed)} result file(s) of stale cells from {args.results}/")
        return 0
    if args.threads < 0:
        print(f"bench.py: --threads must be a positive number of threads (0 = torch's default); got {args.threads}",
              file=sys.stderr)
        return 2
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    if args.command == "list" and args.stale:
        return list_stale(args.results)
    registry = Registry.discover()
    if args.command == "list":
        list_plugins(registry)
        return 0

    from benchmark.planning.grid import expand, load_preset, parse_filters, parse_settings
    from benchmark.running.runner import ResultsNotWritable, Runner
    from benchmark.scoring.evaluate import EvaluationConventions

    try:
        cells = expand(load_preset(args.grid), registry, parse_filters(args.only), parse_settings(args.settings))
        runner = Runner(registry, args.results, args.cache, args.device, args.data_root, args.attack_batch,
                        target_rule=args.target_rule,
                        conventions=EvaluationConventions(args.backend, args.zero_relevant), force=args.force)
    except ValueError as exc:
        print(f"bench.py: {exc}", file=sys.stderr)
        return 2
    if args.command == "plan":
        for cell in cells:
            print(cell.describe())
        print(f"{len(cells)} cells")
        return 0
    print(f"grid {args.grid!r}: {len(cells)} cells on {runner.environment['device']}", file=sys.stderr)
    if args.address and args.executor != "ray":
        print("bench.py: --address needs --executor ray", file=sys.stderr)
        return 2
    started = datetime.datetime.now(datetime.timezone.utc)
    signal.signal(signal.SIGTERM, stop_on_terminate)
    try:
        if args.executor == "ray":
            from benchmark.running.ray_executor import run_on_ray

            counts = run_on_ray(runner, cells, args.address, args.threads)
        else:
            counts = runner.run(cells)
        record_run(args, runner, cells, counts, started)
    except KeyboardInterrupt:
        record_run(args, runner, cells, {"interrupted": True}, started)
        print("\ninterrupted: finished cells are saved; run the same command again to resume", file=sys.stderr)
        return 130
    except (ResultsNotWritable, OSError) as exc:
        print(f"bench.py: {exc}", file=sys.stderr)
        return 2
    if not args.no_leaderboard:
        print(f"leaderboard: {render_leaderboard(args.results, args.site, args.cache)}")
    return 1 if counts["error"] else 0


if __name__ == "__main__":
    ensure_environment()
    sys.exit(main())
