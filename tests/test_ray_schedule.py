"""The Ray executor's task graph: image caches, protections and victims before the cells that need them, a
defended victim after the one it starts from, the longest chain of estimated work first; on a real (local,
one-CPU) Ray instance the tasks start in that order and no cells task waits on a victim's claim."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, write_grid

from benchmark.planning.grid import expand, load_preset
from benchmark.planning.plan import Planner
from benchmark.running.ray_executor import next_tasks, task_graph

sys.path.insert(0, str(ROOT / "tools"))
from synthetic_datasets import LIST_DATASETS, write_list_dataset

# dsh trains four times as long as dpsh; dpsh's cells attack (PGD), dsh's do not: by the estimate, dsh's victim
# is the longest chain, then dpsh's victim, then dpsh's cells, then dsh's
GRID = """
[[block]]
dataset = "nuswide"
hashing = "dpsh"
backbone = "smallcnn"
bits = 16
attack = "pgd"
epsilon = "8/255"
[block.params.hashing.dpsh]
epochs = 1
[block.params.attacks.pgd]
iterations = 3

[[block]]
dataset = "nuswide"
hashing = "dsh"
backbone = "smallcnn"
bits = 16
attack = "none"
[block.params.hashing.dsh]
epochs = 4
"""
DEFENDED = GRID.replace('attack = "pgd"', 'defense = ["none", "cgat"]\nattack = "pgd"')


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    classes, multi_label, list_format = LIST_DATASETS["nuswide"]
    write_list_dataset(root / "nuswide", classes, multi_label, list_format, seed=3)
    return root


def planned(registry, tmp_path, data_root, body):
    cells = expand(load_preset(str(write_grid(tmp_path / "grid.toml", body))), registry)
    planner = Planner(registry, str(data_root))
    return cells, [planner.plan(cell) for cell in cells]


def test_victims_come_before_their_cells_and_a_defended_victim_after_its_start(registry, tmp_path, data_root):
    _, plans = planned(registry, tmp_path, data_root, DEFENDED)
    tasks = task_graph(plans, registry)
    by_kind = {kind: [t for t in tasks.values() if t.kind == kind] for kind in ("images", "victim", "cells")}
    assert len(by_kind["images"]) == 1 and len(by_kind["victim"]) == 3 and len(by_kind["cells"]) == 3
    images = by_kind["images"][0].id
    for plan in plans:
        cells = tasks[f"cells {plan.attacker.key}"]
        assert plan in cells.plans and f"victim {plan.victim.key}" in cells.needs and images in cells.needs
        if plan.victim.start is not None:
            defended = tasks[f"victim {plan.victim.key}"]
            assert defended.needs == [images, f"victim {plan.victim.start.key}"]
            assert tasks[f"victim {plan.victim.start.key}"].codes is not None  # it has cells of its own
    for task in tasks.values():  # each priority is the task's work plus the costliest chain after it
        after = [t.priority for t in tasks.values() if task.id in t.needs]
        assert task.priority == pytest.approx(task.gflop + max(after, default=0.0))
        assert task.gflop >= 0
    assert all(t.gflop > 0 for t in by_kind["victim"])
    assert {t.key for t in by_kind["images"][0].targets} == {plan.targets.key for plan in plans}  # drawn there
    order = [t.id for t in next_tasks(tasks, set())]
    assert order == [images]  # nothing else is ready before the images
    ready = next_tasks({k: t for k, t in tasks.items() if k != images}, {images})
    assert {t.kind for t in ready} == {"victim"} and len(ready) == 2  # the undefended ones; not the cgat victim
    assert [t.priority for t in ready] == sorted((t.priority for t in ready), reverse=True)


def test_what_the_stage_cache_holds_gets_no_task(registry, tmp_path, data_root):
    _, plans = planned(registry, tmp_path, data_root, DEFENDED)
    start = next(plan.victim.start for plan in plans if plan.victim.start is not None)
    start_codes = next(plan.codes for plan in plans if plan.victim.key == start.key)
    stored = {("victims", start.key), ("codes", start_codes.key)}
    tasks = task_graph(plans, registry, lambda stage, key: (stage, key) in stored)
    assert f"victim {start.key}" not in tasks
    (images,) = [t for t in tasks.values() if t.kind == "images"]
    assert images.roles == ("query", "database", "train")  # the cgat victim is encoded
    every = {("victims", p.victim.key) for p in plans} | {("codes", p.codes.key) for p in plans} | stored
    (images,) = [t for t in task_graph(plans, registry, lambda stage, key: (stage, key) in every).values()
                 if t.kind == "images"]
    assert images.roles == ("query", "train")  # every victim encoded already: the database is not decoded
    defended = next(t for t in tasks.values() if t.kind == "victim" and t.victim.start is not None)
    assert all(not n.startswith("victim") for n in defended.needs)
    assert all(f"victim {start.key}" not in t.needs for t in tasks.values())


# The Ray run, in a process of its own: a Ray imported by another test of this session (test_scaleout's token-mode
# cluster) keeps the settings it read at its import
RAY_RUN = """
import json, sys
sys.path.insert(0, {root!r})
import ray
from benchmark import Registry
from benchmark.planning.grid import expand, load_preset
from benchmark.running import ray_executor
from benchmark.running.runner import Runner

registry = Registry.discover()
cells = expand(load_preset({grid!r}), registry)
runner = Runner(registry, {results!r}, {cache!r}, device="cpu", data_root={data!r})
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False,
         _node_ip_address=ray_executor.LOCAL_NODE_IP,
         runtime_env={{"env_vars": {{"PYTHONPATH": {root!r}, "OMP_NUM_THREADS": "1"}}}})
try:
    counts = ray_executor.run_on_ray(runner, cells, threads=1)
finally:
    ray.shutdown()
print(json.dumps({{"counts": counts, "log": runner.task_log}}))
"""


def test_on_ray_the_tasks_start_longest_chain_first_and_cells_wait_for_nobody(tmp_path, data_root):
    # find, not import: Ray reads its auth settings when first imported, and tests/test_scaleout.py sets them
    # for its own cluster before it imports Ray in this process
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed")
    grid = write_grid(tmp_path / "grid.toml", GRID)
    script = RAY_RUN.format(root=str(ROOT), grid=str(grid), results=str(tmp_path / "results"),
                            cache=str(tmp_path / "cache"), data=str(data_root))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | {"OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env,
                         check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    outcome = json.loads(run.stdout.strip().splitlines()[-1])
    assert outcome["counts"] == {"ran": 2, "cached": 0, "error": 0}
    log = outcome["log"]
    started = [label for event, _, label, _ in log if event == "started"]
    assert started == ["image cache of nuswide", "victim dsh/smallcnn/16", "victim dpsh/smallcnn/16"]
    cell_starts = [label for event, _, label, _ in log if event == "cell started"]
    assert ["dpsh" in cell_starts[0], "dsh" in cell_starts[1]] == [True, True], cell_starts
    assert [event for event, *_ in log if event != "waiting"] == [
        "started", "finished", "started", "finished", "started", "finished", "cell started", "cell started"]
    assert [detail for event, _, _, detail in log if event == "finished"] == ["", "", ""]  # no stage failed
    assert not [entry for entry in log if entry[0] == "waiting"]  # nobody waited on a claim
    assert len(list((tmp_path / "cache" / "images").glob("*.u8"))) == 3  # query, database and train, decoded once
    assert not any(path.stat().st_size for path in (tmp_path / "cache" / "claims").glob("*.lock"))  # all released
