"""End to end on a tiny grid: rows in the store, cache hits, resume after kill -9, clear failures."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import ROOT, TINY_GRID, victim_of, write_grid

from benchmark.planning.grid import expand, load_preset
from benchmark.running.runner import Runner

REQUIRED_COLUMNS = {"dataset", "hashing", "backbone", "bits", "defense", "attack", "epsilon", "surrogate", "scenario",
                    "seed", "metric", "topk", "value", "status", "device", "torch", "faiss", "git_commit"}


def bench(*args, cwd=ROOT, **kwargs):
    return subprocess.run([sys.executable, str(ROOT / "bench.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, **kwargs)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny grid run once through the command line; reused by the tests below."""
    work = tmp_path_factory.mktemp("run")
    grid = write_grid(work / "tiny.toml", TINY_GRID)
    args = ["--grid", str(grid), "--results", str(work / "results"), "--cache", str(work / "cache"),
            "--site", str(work / "site")]
    first = bench(*args)
    return work, args, first


def test_a_run_writes_one_tidy_table_and_the_leaderboard(tiny_run):
    work, _, first = tiny_run
    assert first.returncode == 0, first.stderr
    table = pd.read_parquet(work / "results")
    assert REQUIRED_COLUMNS <= set(table.columns)
    assert set(table["attack"]) == {"none", "noise", "pgd", "dhta"}
    assert (table["status"] == "ok").all()
    for metric in ("map", "tmap", "map_tie_aware", "perceptibility", "linf", "seconds_per_image"):
        assert metric in set(table["metric"]), metric
    linf = table[table.metric == "linf"].set_index("attack")["value"]
    assert linf["none"] == 0 and 0 < linf["pgd"] <= 16 / 255 + 1e-6
    assert (work / "site" / "index.html").exists() and "leaderboard:" in first.stdout


def test_a_run_copies_each_cells_per_query_ap_into_the_store(tiny_run):
    work, _, _ = tiny_run
    per_query = pd.read_parquet(work / "results" / "_per_query.parquet")
    table = pd.read_parquet(work / "results")
    assert set(per_query["cell_key"]) == set(table["cell_key"])
    for key, group in per_query.groupby("cell_key"):
        assert list(group["query"]) == list(range(len(group)))
        maps = table[(table["cell_key"] == key) & (table["metric"] == "map")]["value"]
        assert (maps - group["ap"].mean()).abs().min() < 1e-9, key  # the mean of its APs is the cell's mAP


def test_a_second_run_takes_every_cell_from_the_cache(tiny_run):
    work, args, _ = tiny_run
    before = {p.name: p.stat().st_mtime_ns for p in (work / "results").glob("*.parquet")}
    second = bench(*args, "--no-leaderboard")
    assert second.returncode == 0, second.stderr
    assert "0 cells computed, 4 from the cache" in second.stderr
    assert before == {p.name: p.stat().st_mtime_ns for p in (work / "results").glob("*.parquet")}


def test_editing_one_attack_parameter_reruns_only_its_cells(tiny_run, registry):
    work, args, _ = tiny_run
    rerun = bench(*args, "--no-leaderboard", "--set", "attacks.dhta.iterations=4")
    assert "1 cells computed, 3 from the cache" in rerun.stderr, rerun.stderr


def interruptible_run_args(tmp_path: Path) -> list[str]:
    """bench.py arguments for the tiny grid, for the tests that stop a run once its first cells are stored: its
    last cell (DHTA) gets 800 iterations so that the stop lands in flight. At the grid's 3 the three cells after
    the first took under 0.2 s together on a fast CPU, and the run had finished before the stop."""
    grid = write_grid(tmp_path / "tiny.toml", TINY_GRID)
    return ["--grid", str(grid), "--results", str(tmp_path / "results"), "--cache", str(tmp_path / "cache"),
            "--no-leaderboard", "--set", "attacks.dhta.iterations=800"]


def test_a_killed_run_resumes_and_loses_at_most_the_cell_in_flight(tmp_path):
    args = interruptible_run_args(tmp_path)
    process = subprocess.Popen([sys.executable, str(ROOT / "bench.py"), *args], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(list((tmp_path / "results").glob("*.parquet"))) < 2:
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    survived = {p.name for p in (tmp_path / "results").glob("*.parquet")}
    assert 2 <= len(survived) < 4
    pd.read_parquet(tmp_path / "results")  # the store is readable after the kill
    resumed = bench(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{4 - len(survived)} cells computed, {len(survived)} from the cache" in resumed.stderr


def test_every_run_appends_its_manifest_and_a_terminated_run_says_so(tmp_path):
    args = interruptible_run_args(tmp_path)
    process = subprocess.Popen([sys.executable, str(ROOT / "bench.py"), *args], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list((tmp_path / "results").glob("*.parquet")):
        time.sleep(0.2)
    process.terminate()  # SIGTERM, as a scheduler stops a job
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "run the same command again to resume" in stderr, stderr
    finished = bench(*args)
    assert finished.returncode == 0, finished.stderr
    runs = [json.loads(line) for line in (tmp_path / "results" / "_runs.jsonl").read_text().splitlines()]
    assert [run["status"] for run in runs] == ["running", "interrupted", "running", "ok"]
    assert runs[0]["run"] == runs[1]["run"] != runs[2]["run"] == runs[3]["run"]
    stopped = runs[1]  # what it computed before the stop, as the store holds it
    assert stopped["ran"] >= 1 and stopped["ran"] + stopped["cached"] + stopped["error"] < 4, stopped
    last = runs[-1]
    assert last["cells"] == 4 and last["ran"] + last["cached"] == 4 and last["cached"] >= 1
    for field in ("command", "started", "finished", "seconds", "device", "threads", "torch", "faiss", "git_commit"):
        assert last[field] not in (None, ""), field


def test_a_corrupt_cache_entry_is_reported_and_recomputed(tmp_path, registry):
    grid = write_grid(tmp_path / "tiny.toml", TINY_GRID.replace('["none", "noise", "pgd", "dhta"]', '"none"'))
    runner = Runner(registry, tmp_path / "results", tmp_path / "cache", device="cpu")
    cells = expand(load_preset(str(grid)), registry)
    runner.run(cells)
    victim_file = next((tmp_path / "cache" / "victims").glob("*.pt"))
    victim_file.write_bytes(b"not a checkpoint")
    next((tmp_path / "results").glob("*.parquet")).write_bytes(b"garbage")
    fresh = Runner(registry, tmp_path / "results", tmp_path / "cache", device="cpu")
    assert fresh.run(cells) == {"ran": 1, "cached": 0, "error": 0}
    assert list((tmp_path / "cache" / "victims").glob(".corrupt-*"))
    assert (pd.read_parquet(tmp_path / "results")["status"] == "ok").all()


def test_a_victim_is_the_same_whatever_ran_before_it(tmp_path, registry):
    """The initial weights come from the cell's seed, not from the global RNG's history."""
    grid = write_grid(tmp_path / "tiny.toml", TINY_GRID.replace("epochs = 2", "epochs = 1"))
    cell = expand(load_preset(str(grid)), registry)[0]
    states = []
    for run, draws in enumerate((0, 1000)):
        torch.rand(draws)  # a different global RNG history before each build
        runner = Runner(registry, tmp_path / f"results{run}", tmp_path / f"cache{run}", device="cpu")
        states.append(victim_of(runner, runner.plan(cell))[0].model.state_dict())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][name], states[1][name]) for name in states[0])


def test_attack_draws_follow_the_cell_and_its_seed_not_its_parameters(tmp_path, registry):
    from benchmark.planning.grid import parse_settings
    from benchmark.planning.plan import attack_seed

    grid = load_preset(str(write_grid(tmp_path / "tiny.toml", TINY_GRID)))
    short = {c.attack: c for c in expand(grid, registry)}
    longer = {c.attack: c for c in expand(grid, registry, settings=parse_settings(["attacks.pgd.iterations=7"]))}
    assert short["pgd"] != longer["pgd"]
    assert attack_seed(short["pgd"]) == attack_seed(longer["pgd"])  # a schedule change keeps the random start
    assert attack_seed(short["pgd"]) != attack_seed(short["dhta"])
    reseeded = expand(load_preset(str(write_grid(tmp_path / "seed1.toml", TINY_GRID.replace(
        'bits = 16', 'bits = 16\nseed = 1')))), registry)
    assert attack_seed(short["pgd"]) != attack_seed(next(c for c in reseeded if c.attack == "pgd"))


def test_a_victim_that_diverges_is_trained_once_and_every_cell_of_it_says_why(tmp_path, monkeypatch):
    from benchmark import Registry

    registry = Registry.discover()

    class Diverging(registry.get("hashing", "dpsh")):
        name = "diverging"

        def loss(self, outputs, labels, index):
            return outputs.sum() * float("nan")

    registry.plugins["hashing"]["diverging"] = Diverging
    grid = write_grid(tmp_path / "tiny.toml", TINY_GRID.replace('hashing = "dpsh"', 'hashing = "diverging"'))
    runner = Runner(registry, tmp_path / "results", tmp_path / "cache", device="cpu")
    trainings = []
    import benchmark.victim.train as train_module

    train = train_module.train_victim
    monkeypatch.setattr(train_module, "train_victim", lambda *args: trainings.append(1) or train(*args))
    assert runner.run(expand(load_preset(str(grid)), registry)) == {"ran": 0, "cached": 0, "error": 4}
    assert len(trainings) == 1
    table = pd.read_parquet(tmp_path / "results")
    assert (table["status"] == "error").all() and len(table) == 4
    assert table["error"].str.contains("diverging loss became nan at epoch 1, step 1").all()
    assert not list((tmp_path / "cache" / "victims").glob("*.pt"))  # a failure is never cached


def test_a_missing_dataset_says_where_it_looked(tmp_path):
    grid = write_grid(tmp_path / "tiny.toml", TINY_GRID.replace("query_subset = 60",
                                                                  f"query_subset = 60\ndownload = false\nsystem_folder = '{tmp_path}/none'"))
    (tmp_path / "nowhere").mkdir()  # exists but lacks the files (a root that does not exist: test_data_faults)
    env = {**os.environ, "HASHBENCH_DATA": str(tmp_path / "nowhere")}
    result = bench("--grid", str(grid), "--results", str(tmp_path / "r"), "--cache", str(tmp_path / "c"),
                   "--no-leaderboard", env=env)
    assert result.returncode != 0
    assert "FashionMNIST IDX files" in result.stderr and str(tmp_path / "nowhere") in result.stderr
    assert "apt-get install dataset-fashion-mnist" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--only", "attack=pdg"], "unknown attacks plugin 'pdg'"),
    (["--only", "bits"], "malformed"),
    (["--grid", "nope"], "unknown grid 'nope'"),
    (["--threads", "-1"], "--threads: must be a positive number"),
])
def test_bad_command_lines_fail_fast_with_a_clear_message(args, message):
    result = bench(*args, "--no-leaderboard")
    assert result.returncode == 2 and message in result.stderr


def test_list_shows_plugins_backbones_and_dataset_cards():
    result = bench("list")
    assert result.returncode == 0
    for text in ("dpsh", "dhta", "fashion_mnist", "protocol:", "vgg16", "resnet50", "smallcnn"):
        assert text in result.stdout, text


def test_a_query_subset_reuses_the_victim_but_not_its_codes(tmp_path, registry):
    """A victim depends on its training set only: a smaller query subset is searched with the same model."""
    cells = {}
    for subset in (60, 30):
        grid = write_grid(tmp_path / f"q{subset}.toml", TINY_GRID.replace("query_subset = 60", f"query_subset = {subset}"))
        cells[subset] = next(c for c in expand(load_preset(str(grid)), registry) if c.attack == "none")
    runner = Runner(registry, tmp_path / "results", tmp_path / "cache", device="cpu")
    plans = {subset: runner.plan(cell) for subset, cell in cells.items()}
    assert plans[60].victim.key == plans[30].victim.key
    assert plans[60].codes.split != plans[30].codes.split and plans[60].key != plans[30].key
    codes = {subset: victim_of(runner, plan)[1].query for subset, plan in plans.items()}
    assert len(codes[60]) == 60 and len(codes[30]) == 30
    assert len(list((tmp_path / "cache" / "victims").glob("*.pt"))) == 1  # trained once
