"""hashbench: adversarial robustness of deep-hashing image retrieval.

    python bench.py                                   # run the default grid on FashionMNIST, then the leaderboard
    python bench.py --grid full --only attack=pgd,dhta --only bits=32
    python bench.py plan --grid paper                 # the cells a grid expands to, their keys, which are stored
    python bench.py list                              # every plugin found, with its paper and defaults
    python bench.py stale                             # stored cells computed by code that has changed since
    python bench.py prune --dry-run                   # the files prune would delete: the stale cells'
    python bench.py leaderboard                       # render leaderboard/site from results/ only
    python bench.py splits identify DIR               # which published lists a data folder's splits are
    python bench.py evaluate --model model.pt         # a model trained elsewhere against the standard attacks
    python bench.py export-victim --method dpsh --backbone smallcnn_fc500 --bits 32 --grid default --out DIR

`run` is the default command; `hashbench` (the console script of `pip install -e .`) is the same as
`python bench.py`. `COMMAND --help` lists a command's own options.
"""
# The harness is imported inside the functions that use it, all of a function's imports at its top: each
# command loads only what it uses (the runner, Ray, the renderer), and a module's path is named in one place per
# function. (Building the parser imports benchmark.targets, hence torch, for --target-rule's choices.)
from __future__ import annotations

import argparse
import datetime
import logging
import os
import signal
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the checkout: grids/, methods/, results/ live beside benchmark/

log = logging.getLogger("hashbench")


def prog() -> str:
    """The name this was started by (bench.py or hashbench), as argparse shows it."""
    return os.path.basename(sys.argv[0])


def positive_seconds(text: str) -> float:
    """argparse type for a time limit in seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds (leave the option out to wait as "
                                         f"long as it takes); got {text}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type for a count where 0 leaves the choice to the default."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a positive number (0 = the default); got {value}")
    return value


# Parent parsers: options shared by several commands, copied into each command that lists them as a parent.
def common_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("-v", "--verbose", action="store_true",
                        help="log at debug level (e.g. a failed cell's traceback, besides its one-line error)")
    return parent


def grid_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("grid selection")
    group.add_argument("--grid", default="default", help="grid preset in grids/ or a .toml path (default: default); 'only': no preset, the one block "
                            "the --only values make (the other axes at their defaults), e.g. one cell")
    group.add_argument("--only", action="append", default=[], metavar="AXIS=V1,V2",
                       help="keep only cells whose AXIS is one of the values; repeatable")
    group.add_argument("--set", action="append", default=[], dest="settings", metavar="KIND.PLUGIN.PARAM=VALUE",
                       help="override a plugin parameter for every cell, e.g. attacks.dhta.iterations=500")
    return parent


def cell_key_options() -> argparse.ArgumentParser:
    """What a cell's numbers, and so its key, depend on besides the grid: run and plan take the same."""
    from benchmark.attack.targets import TARGET_RULES

    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("data and conventions (part of every cell's key)")
    group.add_argument("--data-root", default=None, help="folder holding the datasets (else $HASHBENCH_DATA)")
    group.add_argument("--backend", default="torch", choices=["torch", "faiss"], help="Hamming search backend")
    group.add_argument("--zero-relevant", default="count_as_zero", choices=["count_as_zero", "exclude"],
                       help="AP of a query with no relevant item in the top k")
    group.add_argument("--target-rule", default=None, choices=TARGET_RULES,
                       help="draw every cell's target labels by this rule, whatever its grid says (the grid's "
                            "target_rule axis, default disjoint; the rules are in benchmark/targets.py)")
    return parent


def results_option() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("store")
    group.add_argument("--results", default=str(ROOT / "results"), help="result store folder")
    return parent


def cache_option() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("store")
    group.add_argument("--cache", default=str(ROOT / ".cache"), help="stage cache folder")
    return parent


def site_option() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("leaderboard")
    group.add_argument("--site", default=str(ROOT / "leaderboard" / "site"), help="leaderboard output folder")
    return parent


def add_execution_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("execution")
    group.add_argument("--device", default="auto", help="auto (GPU when there is one), cpu or cuda[:N]")
    group.add_argument("--attack-batch", type=non_negative_int, default=0, metavar="N",
                       help="queries per attack batch (default: 250 on the CPU; on a GPU sized from a probe of the "
                            "model's activation memory and the free memory, halved on out-of-memory)")
    group.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                       help="the attack's forwards and backwards through the model: fp32, or bf16 autocast (the "
                            "codes stay fp32); recorded on every row and in the attack keys")
    group.add_argument("--threads", type=non_negative_int, default=0, metavar="N",
                       help="CPU threads for torch (default: torch's choice, one per core); lower it when "
                            "other jobs share the cores, as oversubscribed threads slow everything several-fold")
    group.add_argument("--force", action="store_true",
                       help="recompute cells already in the result store, from the attack on: a learned attack's "
                            "preparation, the attack (or a protection's release) and the scoring, whatever is cached")
    group.add_argument("--force-victims", action="store_true",
                       help="as --force, and also retrain the victims (and protections), re-encode their codes and "
                            "redraw the targets")
    group.add_argument("--claim-timeout", type=positive_seconds, default=None, metavar="SECONDS",
                       help="give up waiting for a stage or cell another process is computing after this long "
                            "(its cell becomes an error row naming the holder; default: wait as long as it takes)")
    group.add_argument("--executor", default="local", choices=["local", "ray"],
                       help="local: one cell after another in this process (default); ray: the cells as Ray tasks, "
                            "grouped by victim (cache and results folders must be shared by every machine)")
    group.add_argument("--address", default=None, metavar="HOST:PORT",
                       help="with --executor ray: an existing cluster's head (default: start a local one)")
    group.add_argument("--no-leaderboard", action="store_true", help="do not render the leaderboard after a run")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", required=True)
    common, grid, keys = common_options(), grid_options(), cell_key_options()
    results, cache, site = results_option(), cache_option(), site_option()

    run = commands.add_parser("run", parents=[common, grid, keys, results, cache, site],
                              help="compute the grid's cells not yet stored, then render the leaderboard (default)",
                              description="Compute the grid's cells not yet in the result store (every stage "
                                          "cached), then render the leaderboard.")
    add_execution_options(run)
    run.add_argument("--adversarial-queries", default=None, metavar="FILE",
                     help="score your own attack's output (.pt or .npy, the card's query order) against the one cell "
                          "the grid and --only select, in place of its attack (as attack 'external')")
    commands.add_parser("list", parents=[common], help="every plugin: kind, name, paper, defaults, dataset cards",
                        description="List every plugin found: kind, name, paper, defaults, dataset cards.")
    plan = commands.add_parser("plan", parents=[common, grid, keys, results],
                               help="the cells a grid expands to: their keys, which are stored, a GPU-hours model",
                               description="List the cells a grid expands to, block by block, each with its key "
                                           "and whether --results holds it, and a model of each block's GPU-hours; "
                                           "trains and computes nothing.")
    plan.add_argument("--no-data", action="store_true",
                      help="touch no dataset: list the cells and the estimate from the dataset cards' sizes (keys "
                           "unknown); without it, a dataset that is not here is planned so too")
    plan.add_argument("--device", default="auto",
                      help="the device the keys are planned for, as `run --device` (its class is in the keys)")
    plan.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                      help="the attack forwards' precision, as `run --precision` (in the attack keys)")
    commands.add_parser("leaderboard", parents=[common, results, site, cache],
                        help="render the leaderboard from the result store only",
                        description="Render the leaderboard from the result store only (--cache: the gallery's "
                                    "images).")
    commands.add_parser("stale", parents=[common, results],
                        help="the stored cells computed by code that has changed since",
                        description="List the cells of --results computed by code that has changed since.")
    prune = commands.add_parser("prune", parents=[common, results], help="delete the stale cells' result files",
                                description="Delete the result files that hold only stale cells (see `stale`).")
    prune.add_argument("--dry-run", action="store_true", help="list the files that would be deleted; delete none")
    add_splits_command(commands, common)
    add_evaluate(commands, common, results, cache, site)
    add_export_victim(commands, common, results, cache)
    return parser


def add_splits_command(commands, common: argparse.ArgumentParser) -> None:
    splits = commands.add_parser("splits", parents=[common], help="a data folder's card, or which published lists "
                                                                  "its splits are (benchmark/data/split_registry.json)",
                                 description="card: a data folder's layout, counts, classes, labels per image, "
                                             "relevance base rate; identify: the registered variant each split is, "
                                             "or the nearest ones with their overlaps.")
    splits.add_argument("action", choices=["card", "identify"])
    splits.add_argument("folder", help="the data folder (any layout `folder` reads: see datasets/folder.py)")
    group = splits.add_argument_group("drawn splits (an image folder or a full list only)")
    group.add_argument("--split-seed", type=non_negative_int, default=0, metavar="N")
    group.add_argument("--query-share", type=float, default=0.1, metavar="F")
    group.add_argument("--train-share", type=float, default=1.0, metavar="F")


def add_evaluate(commands, common, results, cache, site) -> None:
    evaluate = commands.add_parser(
        "evaluate", parents=[common, results, cache, site],
        help="a model trained elsewhere (TorchScript, or factory + state dict) against an attack suite",
        description="Evaluate a model trained elsewhere as a victim: it maps images in [0, 1] (N, C, H, W) to K real "
                    "outputs, codes are their signs. Its cells are cached, stored and ranked as a trained victim's, "
                    "keyed by the model file's content hash.")
    group = evaluate.add_argument_group("model and evaluation")
    group.add_argument("--model", required=True,
                       help="a TorchScript file, or MODULE:FACTORY (or path/file.py:FACTORY) with --checkpoint")
    group.add_argument("--checkpoint", default=None, help="the state dict loaded into FACTORY()'s module")
    group.add_argument("--dataset", default="fashion_mnist", help="a dataset plugin (default fashion_mnist)")
    group.add_argument("--attacks", default="standard",
                       help="a suite in grids/suites/ (standard: none, pgd, cgat, dhta) or a comma list of attacks")
    group.add_argument("--epsilon", default="8/255", help="L-inf budget in [0, 1] pixels (default 8/255)")
    group.add_argument("--adversarial-queries", default=None, metavar="FILE",
                       help="your own attack's output: .pt or .npy images in [0, 1] in the card's query order, the "
                            "query set's shape, within --epsilon of the clean queries; scored as attack 'external'")
    group.add_argument("--queries", type=non_negative_int, default=0, metavar="N",
                       help="a seeded subset of N queries (the dataset's query_subset; default all)")
    group.add_argument("--seed", type=non_negative_int, default=0, help="the cells' seed (targets, random starts)")
    group.add_argument("--set", action="append", default=[], dest="settings", metavar="KIND.PLUGIN.PARAM=VALUE",
                       help="override a plugin parameter, e.g. attacks.dhta.iterations=100")
    group.add_argument("--data-root", default=None, help="folder holding the datasets (else $HASHBENCH_DATA)")
    execution = evaluate.add_argument_group("execution")
    execution.add_argument("--device", default="auto", help="auto (GPU when there is one), cpu or cuda[:N]")
    execution.add_argument("--attack-batch", type=non_negative_int, default=0, metavar="N",
                           help="queries per attack batch (default 250 CPU, 1000 GPU)")
    execution.add_argument("--threads", type=non_negative_int, default=0, metavar="N", help="CPU threads for torch")
    execution.add_argument("--force", action="store_true", help="recompute the cells from the attack on")
    execution.add_argument("--claim-timeout", type=positive_seconds, default=None, metavar="SECONDS",
                           help="give up waiting for work another process holds after this long")
    execution.add_argument("--no-leaderboard", action="store_true", help="do not render the leaderboard")


def add_export_victim(commands, common, results, cache) -> None:
    export = commands.add_parser(
        "export-victim", parents=[common, results, cache],
        help="write a cached trained victim as TorchScript plus a JSON card",
        description="Write a trained victim from the stage cache as a TorchScript file (images in [0, 1] -> K real "
                    "outputs) and a JSON card (method, backbone, bits, dataset, split, clean mAP, commit, keys). "
                    "Trains nothing: a victim that is not cached is an error listing those that are.")
    group = export.add_argument_group("victim")
    group.add_argument("--method", required=True, help="hashing method, e.g. dpsh")
    group.add_argument("--backbone", required=True, help="e.g. smallcnn_fc500")
    group.add_argument("--bits", type=int, required=True)
    group.add_argument("--dataset", default="fashion_mnist")
    group.add_argument("--defense", default="none")
    group.add_argument("--train-data", default="clean", choices=["clean", "protected"])
    group.add_argument("--seed", type=non_negative_int, default=0)
    group.add_argument("--grid", default=None, help="the grid preset whose cell trained it (its parameters are part "
                                                    "of the victim's key), e.g. default")
    group.add_argument("--set", action="append", default=[], dest="settings", metavar="KIND.PLUGIN.PARAM=VALUE")
    group.add_argument("--data-root", default=None)
    group.add_argument("--out", required=True, help="folder to write NAME.pt and NAME.json into")


def with_default_command(argv: list[str]) -> list[str]:
    """``bench.py --grid x`` means ``bench.py run --grid x`` (argparse has no default subcommand).

    Only options get ``run`` put before them: a mistyped command word is reported as one.
    """
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        return ["run", *argv]
    return argv


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(with_default_command(argv))
    if args.command == "run" and args.adversarial_queries is not None and args.executor != "local":
        parser.error("run: --adversarial-queries runs on the local executor only")
    if args.command == "run" and args.address is not None and args.executor != "ray":
        parser.error(f"run: --address {args.address} needs --executor ray (the local executor runs every cell "
                     f"in this process)")
    refuse_unsafe_store_folders(parser, args)
    return args


def refuse_unsafe_store_folders(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Before any work: --results and --cache must be folders of their own (not /, the home folder, the checkout)."""
    from benchmark.storage.folders import UnsafeStoreFolder, check_store_folder

    for what in ("results", "cache"):
        if getattr(args, what, None) is not None:
            try:
                check_store_folder(getattr(args, what), what, ROOT)
            except UnsafeStoreFolder as exc:
                parser.error(f"{args.command}: {exc}")


def fail(message: object) -> int:
    print(f"{prog()}: {message}", file=sys.stderr)
    return 2


def expand_grid(args: argparse.Namespace, registry) -> list:
    """The grid's cells, with --only and --set applied; a ValueError names what is wrong."""
    from benchmark.planning.grid import expand, grid_preset, parse_filters, parse_settings

    preset, filters = grid_preset(args.grid, parse_filters(args.only))
    return expand(preset, registry, filters, parse_settings(args.settings))


def list_plugins(args: argparse.Namespace) -> int:
    from benchmark import Registry
    from benchmark.victim.model import BACKBONES

    registry = Registry.discover()
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
    return 0


def plan_grid(args: argparse.Namespace) -> int:
    """Per grid block: each cell's key (for ``--device``'s class and ``--precision``) and whether the store holds
    it, from the planner alone (no runner), and a model of the block's GPU-hours (benchmark/planning/estimate.py). A dataset that is not here,
    or every dataset with --no-data, is planned from its card: the sizes its card gives, the keys unknown."""
    import dataclasses

    from benchmark import Registry
    from benchmark.planning.blocks import grid_blocks
    from benchmark.planning.estimate import H100_TFLOPS, Estimator, Work
    from benchmark.planning.grid import parse_filters, parse_settings
    from benchmark.planning.plan import Planner
    from benchmark.running.runner import pick_device
    from benchmark.scoring.evaluate import EvaluationConventions
    from benchmark.victim.compute import ComputeSettings

    registry = Registry.discover()
    try:
        blocks = grid_blocks(args.grid, registry, parse_filters(args.only), parse_settings(args.settings))
        compute = ComputeSettings.for_device(pick_device(args.device), args.precision)
        planner = Planner(registry, args.data_root, EvaluationConventions(args.backend, args.zero_relevant), compute)
    except ValueError as exc:
        return fail(exc)
    estimator, missing, total, counts = Estimator(registry), {}, Work(), {"stored": 0, "compute": 0, "unknown": 0}
    for number, (title, cells) in enumerate(blocks, 1):
        if args.target_rule is not None:  # as the runner applies --target-rule
            cells = [dataclasses.replace(cell, target_rule=args.target_rule) for cell in cells]
        if not cells:  # --only left none of this block
            continue
        print(f"-- block {number}: {title or '(no comment)'}")
        work = Work()
        for cell in cells:
            try:
                line, sizes, status = plan_line(cell, planner, estimator, args, missing)
            except (ValueError, OSError) as exc:  # a malformed surrogate, an unreadable list file
                return fail(f"cannot plan {cell.describe()}: {exc}")
            counts[status] += 1
            work.merge(estimator.cell(cell, sizes))
            print(line)
        total.merge(work)
        print(f"   {len(cells)} cells; model: {work.gpu_hours():.1f} GPU-hours ({stage_hours(work)})")
    for name, reason in missing.items():
        print(f"dataset {name} is not here ({reason}); its cells were planned from its card: keys unknown",
              file=sys.stderr)
    print(f"{sum(counts.values())} cells, {counts['stored']} stored in {args.results}, {counts['compute']} to "
          f"compute" + (f", {counts['unknown']} with unknown keys (no data)" if counts["unknown"] else ""))
    print(f"model: {total.gpu_hours():.1f} GPU-hours ({stage_hours(total)}) = images x passes (1 forward, 2 "
          f"attack step, 3 training step) x the backbone's forward FLOPs / {H100_TFLOPS:.0f} TFLOP/s (one "
          f"H100-class GPU, TF32; an assumption); not a measurement: JPEG decoding, generators, scoring and "
          f"launch overhead are left out (benchmark/planning/estimate.py)")
    return 0


def plan_line(cell, planner, estimator, args: argparse.Namespace, missing: dict) -> tuple[str, object, str]:
    """A cell's listing line, its split sizes and status (stored, to compute, or unknown when it has no data)."""
    from benchmark.data.images import DatasetNotFound
    from benchmark.planning.estimate import card_sizes, data_sizes
    from benchmark.storage.results import cell_done

    if not args.no_data and cell.dataset not in missing:
        try:
            plan = planner.plan(cell)
        except DatasetNotFound as exc:
            missing[cell.dataset] = str(exc).split(" Looked in")[0].rstrip(".")
        else:
            done = cell_done(args.results, plan.key)
            return (f"{plan.key}  {'stored    ' if done else 'to compute'}  {cell.describe()}",
                    data_sizes(plan.data_identity), "stored" if done else "compute")
    params = estimator.params("datasets", cell.dataset, cell)
    return f"{'(no data)':<20}  unknown     {cell.describe()}", card_sizes(cell.dataset, params), "unknown"


def stage_hours(work) -> str:
    return ", ".join(f"{stage} {work.gpu_hours(stage):.1f}" for stage in work.gflop)


def keep_per_query(results: str, cache: str) -> None:
    """Copy the stored cells' per-query APs from the stage cache into the store (``_per_query.parquet``)."""
    from benchmark.storage.per_query import export_per_query

    try:
        added = export_per_query(results, cache)
    except OSError as exc:  # the cells are stored; only the copy is lost, and the next run makes it
        print(f"could not copy the per-query APs into {results}/: {exc}", file=sys.stderr)
        return
    if added:
        print(f"per-query APs of {added} cell(s) copied into {results}/_per_query.parquet", file=sys.stderr)


def render_leaderboard(results: str, site: str, cache: str | None = None) -> Path:
    from leaderboard.render import render

    return render(results, site, cache_dir=cache)


def leaderboard(args: argparse.Namespace) -> int:
    if not Path(args.results).is_dir():
        return fail(f"the results folder {args.results} does not exist; the leaderboard in {args.site} was left "
                    f"as it is (give --results FOLDER holding the parquet files)")
    print(f"leaderboard: {render_leaderboard(args.results, args.site, args.cache)}")
    return 0


def list_stale(args: argparse.Namespace) -> int:
    from leaderboard.store import read_results, stale_cells

    stale = stale_cells(read_results(args.results)[0], ROOT)
    for row in stale.itertuples():
        print(f"{row.cell_key}  {row.description}: {row.reasons}")
    print(f"{len(stale)} stale cell(s) in {args.results}/ (its own files; a sub-folder is a store of its own)"
          + (f" ({prog()} prune deletes them)" if len(stale) else ""))
    return 0


def prune(args: argparse.Namespace) -> int:
    from leaderboard.store import KEPT_BECAUSE_TRACKED, remove_stale, stale_files, tracked_files

    if args.dry_run:
        files = stale_files(args.results, ROOT)
        tracked = tracked_files(files)
        for path in files:
            print(f"would keep {path}: {KEPT_BECAUSE_TRACKED}" if path in tracked else f"would remove {path}")
        print(f"{len(files) - len(tracked)} result file(s) of stale cells in {args.results}/ would be removed, "
              f"{len(tracked)} kept (nothing removed: --dry-run)")
        return 0
    removed, kept = remove_stale(args.results, ROOT)
    for path in removed:
        print(f"removed {path}")
    for path in kept:
        print(f"kept {path}: {KEPT_BECAUSE_TRACKED}")
    print(f"removed {len(removed)} result file(s) of stale cells from {args.results}/"
          + (f"; kept {len(kept)} that git tracks" if kept else ""))
    return 0


def stop_on_terminate(signum, frame) -> None:
    """SIGTERM (a scheduler's or `kill`'s stop) ends a run as Ctrl-C does: finished cells kept, the run recorded."""
    raise KeyboardInterrupt


def append_manifest(results: str, record: dict) -> None:
    """One line of ``<results>/_runs.jsonl``, written in one ``write`` so that runs sharing the store never
    interleave their lines."""
    import json

    line = (json.dumps(record) + "\n").encode()
    handle = os.open(Path(results) / "_runs.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(handle, line)
    finally:
        os.close(handle)


def start_manifest(args, runner, cells, started: datetime.datetime) -> dict:
    """Record that the run started (status "running"), before any cell: a run killed with -9 leaves this line
    and no end line with its ``run`` id."""
    import uuid

    import torch

    manifest = {"run": uuid.uuid4().hex[:12], "status": "running", "pid": os.getpid(),
                "host": socket.gethostname(), "command": " ".join([prog(), *args.argv]), "grid": args.grid,
                "cells": len(cells), "started": started.isoformat(timespec="seconds"), "executor": args.executor,
                "threads": torch.get_num_threads(),
                **{k: runner.environment[k] for k in ("device", "torch", "faiss", "python", "git_commit")}}
    append_manifest(args.results, manifest)
    return manifest


def finish_manifest(args, manifest: dict, status: str, counts: dict, reason: str = "") -> None:
    """The run's end line: the start line's fields, then how it ended (ok, interrupted, error), the counts of
    cells computed, taken from the store and failed (so far, if it did not finish) and how long it took."""
    finished = datetime.datetime.now(datetime.timezone.utc)
    started = datetime.datetime.fromisoformat(manifest["started"])
    record = {**manifest, "status": status, **counts, "finished": finished.isoformat(timespec="seconds"),
              "seconds": round((finished - started).total_seconds(), 1), **({"reason": reason} if reason else {})}
    try:
        append_manifest(args.results, record)
    except OSError as exc:  # e.g. the disk filled up: say so, but do not hide how the run ended
        print(f"{prog()}: could not record the run's end in {args.results}/_runs.jsonl ({exc.strerror or exc})",
              file=sys.stderr)


def run_on_cluster(runner, cells: list, args: argparse.Namespace) -> dict[str, int]:
    from benchmark.running.ray_executor import run_on_ray

    return run_on_ray(runner, cells, args.address, args.threads)


def adversarial_queries_cell(cells: list, args: argparse.Namespace, registry):
    """The one selected cell, its attack replaced by the file of --adversarial-queries (checked before any work)."""
    from benchmark.api import with_adversarial_queries

    if len(cells) != 1:
        raise ValueError(f"--adversarial-queries scores one cell's victim at its epsilon; the grid and --only select "
                         f"{len(cells)} cells (narrow them with --only, e.g. --only bits=32 --only attack=pgd "
                         f"--only epsilon=8/255)")
    return with_adversarial_queries(cells[0], args.adversarial_queries, registry, args.data_root)


def run_grid(args: argparse.Namespace) -> int:
    import torch

    from benchmark import Registry
    from benchmark.running.runner import ResultsNotWritable, Runner
    from benchmark.scoring.evaluate import EvaluationConventions
    from benchmark.storage.cache import check_writable

    if args.threads:
        torch.set_num_threads(args.threads)
    registry = Registry.discover()
    try:
        cells = expand_grid(args, registry)
        if args.adversarial_queries is not None:
            cells = [adversarial_queries_cell(cells, args, registry)]
        runner = Runner(registry, args.results, args.cache, args.device, args.data_root, args.attack_batch,
                        target_rule=args.target_rule,
                        conventions=EvaluationConventions(args.backend, args.zero_relevant), force=args.force,
                        force_victims=args.force_victims, claim_timeout=args.claim_timeout,
                        precision=args.precision)
        check_writable(args.results, "results")  # the manifest's first line goes there before any cell
        manifest = start_manifest(args, runner, cells, datetime.datetime.now(datetime.timezone.utc))
    except (ValueError, OSError) as exc:
        return fail(exc)
    print(f"grid {args.grid!r}: {len(cells)} cells on {runner.environment['device']}", file=sys.stderr)
    signal.signal(signal.SIGTERM, stop_on_terminate)
    try:
        counts = run_on_cluster(runner, cells, args) if args.executor == "ray" else runner.run(cells)
    except KeyboardInterrupt:
        finish_manifest(args, manifest, "interrupted", runner.counts)
        keep_per_query(args.results, args.cache)
        print("\ninterrupted: finished cells are saved; run the same command again to resume", file=sys.stderr)
        return 130
    except (ResultsNotWritable, OSError, ValueError) as exc:
        finish_manifest(args, manifest, "error", runner.counts, reason=str(exc))
        return fail(exc)
    except BaseException as exc:
        finish_manifest(args, manifest, "error", runner.counts, reason=f"{type(exc).__name__}: {exc}")
        raise
    finish_manifest(args, manifest, "ok", counts)
    keep_per_query(args.results, args.cache)
    if not args.no_leaderboard:
        print(f"leaderboard: {render_leaderboard(args.results, args.site, args.cache)}")
    return 1 if counts["error"] else 0


def splits_command(args: argparse.Namespace) -> int:
    from benchmark.data.layouts import folder_card, format_card, identify_folder, identify_report, read_folder

    split = {"split_seed": args.split_seed, "query_share": args.query_share, "train_share": args.train_share}
    try:
        if args.action == "card":
            print(format_card(folder_card(read_folder(args.folder, **split))))
        else:
            print(identify_report(identify_folder(args.folder, **split)))
    except (ValueError, OSError) as exc:
        return fail(exc)
    return 0


def evaluate_model(args: argparse.Namespace) -> int:
    import torch

    from benchmark.api import evaluate, summary
    from benchmark.running.runner import ResultsNotWritable

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        rows = evaluate(args.model, args.dataset, args.attacks, args.epsilon, checkpoint=args.checkpoint,
                        adversarial_queries=args.adversarial_queries, queries=args.queries, settings=args.settings,
                        seed=args.seed, results=args.results, cache=args.cache, device=args.device,
                        data_root=args.data_root, attack_batch=args.attack_batch, force=args.force,
                        claim_timeout=args.claim_timeout)
    except KeyboardInterrupt:
        print("\ninterrupted: finished cells are saved; run the same command again to resume", file=sys.stderr)
        return 130
    except (ResultsNotWritable, OSError, ValueError) as exc:
        return fail(exc)
    print(summary(rows))
    keep_per_query(args.results, args.cache)
    if not args.no_leaderboard:
        print(f"leaderboard: {render_leaderboard(args.results, args.site, args.cache)}")
    return 1 if len(rows) and (rows["status"] != "ok").any() else 0


def export_victim(args: argparse.Namespace) -> int:
    from benchmark.api import export_victim as export

    try:
        card = export(args.out, args.cache, method=args.method, backbone=args.backbone, bits=args.bits,
                      dataset=args.dataset, defense=args.defense, seed=args.seed, train_data=args.train_data,
                      grid=args.grid, settings=args.settings, data_root=args.data_root, results=args.results)
    except (LookupError, OSError, ValueError, RuntimeError) as exc:
        return fail(exc)
    print(f"wrote {Path(args.out) / card['file']} and its card {Path(args.out) / card['file'][:-3]}.json "
          f"(clean mAP {card['clean_map']:.4f} on {card['dataset']}, split {card['split']})")
    return 0


COMMANDS = {"run": run_grid, "evaluate": evaluate_model, "export-victim": export_victim, "list": list_plugins,
            "plan": plan_grid, "leaderboard": leaderboard, "stale": list_stale, "prune": prune, "splits": splits_command}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    args.argv = argv  # for the run's manifest
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader reports CPU-feature probing at INFO
    return COMMANDS[args.command](args)
