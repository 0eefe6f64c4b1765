"""The leaderboard's reproduce command: parsed by the real command line, it plans the row's own cell (same
cell_key), from grids whose blocks override parameters, sweep several axes and use every option the key has."""
from __future__ import annotations

import dataclasses
import shlex

import pytest
import torch
from conftest import write_grid

from benchmark.cli import expand_grid, parse_args
from benchmark.planning.blocks import grid_blocks
from benchmark.planning.grid import expand, grid_preset, load_preset, parse_filters
from benchmark.planning.plan import Planner
from benchmark.rows import base_row
from benchmark.scoring.evaluate import EvaluationConventions
from benchmark.victim.compute import ComputeSettings
from leaderboard.commands import cell_command, epsilon_text, setting_text

GRID = """
[[block]]
dataset = "fashion_mnist"
hashing = "dpsh"
backbone = "smallcnn"
bits = [16, 32]
defense = ["none", "cgat"]
attack = ["none", "pgd", "prosgan", "dhta"]
epsilon = ["8/255", "0.05"]
surrogate = ["self", "dpsh/smallcnn/32", "hashnet/smallcnn/16"]
target_rule = "different"
seed = [0, 3]
[block.params.datasets.fashion_mnist]
query_subset = 60
n_train = 1000
[block.params.hashing.dpsh]
epochs = 2
lr = 0.0005
[block.params.defenses.cgat]
epochs = 1
[block.params.attacks.pgd]
iterations = 3
[block.params.attacks.dhta]
iterations = 7
[block.params.attacks.prosgan]
epochs = 1

[[block]]
dataset = "fashion_mnist"
hashing = "hashnet"
backbone = "smallcnn_fc500"
bits = 16
defense = "ppl"
train_data = ["clean", "protected"]
attack = "none"
scenario = ["c2c", "c2a", "a2a"]
[block.params.datasets.fashion_mnist]
query_subset = 60
n_train = 1000
[block.params.defenses.ppl]
database_share = 0.5
"""


PLANNERS: dict = {}  # one per (data root, conventions): each loads the dataset once


def planned_key(command: str, registry) -> list[str]:
    """The keys of the cells ``command`` plans, as ``bench.py plan`` / ``run`` would (--target-rule included)."""
    argv = shlex.split(command)
    assert argv[:2] == ["python", "bench.py"]
    args = parse_args(argv[2:])
    cells = expand_grid(args, registry)
    if args.target_rule is not None:
        cells = [dataclasses.replace(c, target_rule=args.target_rule) for c in cells]
    conventions = EvaluationConventions(args.backend, args.zero_relevant)
    compute = ComputeSettings.for_device(torch.device("cpu"), args.precision)
    planner = PLANNERS.setdefault((args.data_root, conventions, compute),
                                  Planner(registry, args.data_root, conventions, compute))
    return [planner.plan(c).key for c in cells]


@pytest.mark.parametrize("conventions", [EvaluationConventions(), EvaluationConventions("faiss", "exclude")])
def test_a_rows_command_plans_the_same_cell(tmp_path, registry, conventions):
    cells = expand(load_preset(str(write_grid(tmp_path / "g.toml", GRID))), registry)
    planner = Planner(registry, None, conventions)
    # every kind of cell: clean, bounded at two ε, unbounded, defended, transfer (own and other method),
    # a data protection's scenarios and training data, another seed, a non-default target rule
    picked = [c for c in cells if c.bits == 16 and c.seed == 3 and c.surrogate == "self"]
    picked += [c for c in cells if c.bits == 32 and c.seed == 0 and c.attack in ("none", "prosgan")]
    picked += [c for c in cells if c.surrogate != "self"][:6] + [c for c in cells if c.defense == "ppl"]
    assert {c.attack for c in picked} >= {"none", "pgd", "prosgan", "dhta"} and len({c.epsilon for c in picked}) >= 3
    for cell in dict.fromkeys(picked):
        plan = planner.plan(cell)
        row = base_row(plan, registry, 250, 0.0)
        command, caveats = cell_command(row, registry)
        assert planned_key(command, registry) == [plan.key], (cell, command)
        other_method = cell.surrogate.startswith("hashnet/") and cell.hashing != "hashnet"
        assert bool(caveats) == other_method, caveats  # only what the rows cannot say is a caveat


def test_the_command_differs_with_the_cell(tmp_path, registry):
    """A parameter a block sets and the row records is in the command: without it the key differs."""
    cell = next(c for c in expand(load_preset(str(write_grid(tmp_path / "g.toml", GRID))), registry)
                if c.attack == "dhta" and c.surrogate == "self" and c.defense == "none")
    plan = Planner(registry).plan(cell)
    command, _ = cell_command(base_row(plan, registry, 250, 0.0), registry)
    assert "--set attacks.dhta.iterations=7" in command and "--set hashing.dpsh.lr=0.0005" in command
    assert "--only target_rule=different" in command and "--grid only" in command
    shortened = command.replace(" --set attacks.dhta.iterations=7", "")
    assert planned_key(shortened, registry) != [plan.key]


def test_only_grid_needs_the_axes_without_a_default(registry):
    with pytest.raises(ValueError, match="must name hashing, bits, attack"):
        grid_preset("only", parse_filters(["dataset=fashion_mnist"]))
    preset, left = grid_preset("only", parse_filters(["dataset=fashion_mnist", "hashing=dpsh", "attack=none,pgd",
                                                      "bits=16", "epsilon=8/255"]))
    assert left is None and preset["block"][0]["attack"] == ["none", "pgd"]
    # plan's per-block listing: one block, the clean cell's ε collapsed to 0 and kept (not filtered out by ε)
    [(title, cells)] = grid_blocks("only", registry, parse_filters(["dataset=fashion_mnist", "hashing=dpsh",
                                                                    "attack=none,pgd", "bits=16", "epsilon=8/255"]))
    assert title == "the --only values" and sorted((c.attack, c.epsilon) for c in cells) == [
        ("none", 0.0), ("pgd", 8 / 255)]


def test_setting_and_epsilon_texts_round_trip():
    assert setting_text(True) == "true" and setting_text(0.1 + 0.2) == repr(0.1 + 0.2) and setting_text([1]) is None
    assert epsilon_text(8 / 255) == "8/255" and epsilon_text(0.05) == "0.05"


def test_a_bf16_rows_command_asks_for_bf16(tmp_path, registry):
    cells = [c for c in expand(load_preset(str(write_grid(tmp_path / "g.toml", GRID))), registry)
             if c.attack == "pgd" and c.bits == 16 and c.seed == 0 and c.surrogate == "self" and c.defense == "none"]
    planner = Planner(registry, None, EvaluationConventions(), ComputeSettings.for_device(torch.device("cpu"), "bf16"))
    plan = planner.plan(cells[0])
    command, _ = cell_command(base_row(plan, registry, 250, 0.0), registry)
    assert "--precision bf16" in command and planned_key(command, registry) == [plan.key]
