"""The store keeps what it holds: one folder per store, committed files never pruned, unsafe folders refused,
manifests that say a run started and how it ended, claims that name their holder and can time out, files
readable by the store's other users, and a Ray driver that stops the instance it started."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, TINY_GRID, write_grid
from result_rows import cell_rows, write_cells

from benchmark import cli
from benchmark.planning.grid import expand, load_preset
from benchmark.running.runner import Runner
from benchmark.storage.cache import StageCache, atomic_write_bytes, cached
from benchmark.storage.claims import ClaimTimeout, claim, claim_path
from benchmark.storage.folders import UnsafeStoreFolder
from benchmark.storage.results import write_cell
from leaderboard import store
from leaderboard.render import render

GONE = json.dumps({"methods/attacks/no_such_attack.py": "0" * 16})  # a source that is gone: a stale cell


def stale_cell(key: str, value: float) -> list[dict]:
    return cell_rows({"map": value}, cell_key=key, sources=GONE, attack="pgd", attack_label="pgd")


def current_cell(key: str, value: float) -> list[dict]:
    return cell_rows({"map": value}, cell_key=key, attack="pgd", attack_label="pgd")


def git(folder: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=folder, check=True,
                   capture_output=True, timeout=60)


# ---- 1. a store is one folder ----

@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_prune_deletes_only_the_folder_s_own_untracked_stale_files(tmp_path, capsys):
    git(tmp_path, "init", "-q")
    results = write_cells(tmp_path, stale_cell("committed", 0.1) + stale_cell("local", 0.2))
    git(tmp_path, "add", "results/committed.parquet")
    git(tmp_path, "commit", "-q", "-m", "a published cell")
    published = results / "published" / "run"
    published.mkdir(parents=True)
    write_cell(published, "old", stale_cell("old", 0.3))

    assert cli.main(["prune", "--dry-run", "--results", str(results)]) == 0
    dry = capsys.readouterr().out
    assert f"would remove {results / 'local.parquet'}" in dry and f"would keep {results / 'committed.parquet'}" in dry
    assert "published" not in dry and (results / "local.parquet").exists()

    assert cli.main(["prune", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert not (results / "local.parquet").exists()
    assert (results / "committed.parquet").exists() and f"kept {results / 'committed.parquet'}: tracked by git" in out
    assert (published / "old.parquet").exists() and "published" not in out  # a sub-folder is a store of its own
    assert cli.main(["stale", "--results", str(results)]) == 0
    assert "1 stale cell(s)" in capsys.readouterr().out  # the committed one, still listed


def test_prune_in_the_checkout_s_results_leaves_the_published_run_alone(capsys):
    assert cli.main(["prune", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "published" not in out, out
    assert cli.main(["stale"]) == 0
    assert "published" not in capsys.readouterr().out


def test_the_leaderboard_judges_staleness_per_store_folder(tmp_path):
    results = write_cells(tmp_path, current_cell("now", 0.4567))
    published = results / "published" / "run"
    published.mkdir(parents=True)
    write_cell(published, "then", stale_cell("then", 0.1234))

    index = render(results, tmp_path / "site", code_root=ROOT).read_text()
    assert "0.4567" in index and "stale cell(s) not shown" not in index and "0.1234" not in index
    published_index = render(published, tmp_path / "site-published", code_root=None).read_text()
    assert "0.1234" in published_index and "0.4567" not in published_index


def test_the_leaderboard_never_reads_its_own_download_back(tmp_path):
    results = write_cells(tmp_path, current_cell("a", 0.5) + current_cell("b", 0.6))
    before, _ = store.read_results(results)
    render(results, results, code_root=None)  # the site written into the store folder itself
    assert (results / "results.parquet").exists()
    after, warnings = store.read_results(results)
    assert len(after) == len(before) and not warnings
    assert not any(name.endswith("results.parquet") for name in after["source_file"])
    assert pd.read_parquet(results / "results.parquet")["value"].notna().all()  # still a plain download


UNSAFE = {"the file system's root": lambda: Path("/"), "the home folder": Path.home,
          "the checkout": lambda: ROOT, "a folder holding the checkout": lambda: ROOT.parent}


@pytest.mark.parametrize("where", list(UNSAFE))
@pytest.mark.parametrize("command,option", [("run", "--results"), ("run", "--cache"), ("prune", "--results"),
                                            ("stale", "--results"), ("leaderboard", "--cache"),
                                            ("plan", "--results")])
def test_unsafe_store_folders_are_refused_before_any_work(where, command, option, capsys):
    folder = UNSAFE[where]()
    with pytest.raises(SystemExit) as stopped:
        cli.parse_args([command, option, str(folder)])
    assert stopped.value.code == 2
    message = capsys.readouterr().err
    assert f"{option} {folder} " in message and "folder of its own" in message, message


def test_a_runner_refuses_the_checkout_as_its_store(tmp_path, registry):
    runner = Runner(registry, results_dir=ROOT, cache_dir=tmp_path / "cache", device="cpu")
    with pytest.raises(UnsafeStoreFolder, match="is the checkout itself"):
        runner.prepare_folders()
    runner = Runner(registry, results_dir=tmp_path / "results", cache_dir=Path.home(), device="cpu")
    with pytest.raises(UnsafeStoreFolder, match="is the home folder"):
        runner.prepare_folders()


# ---- 2. the manifest: a line when a run starts, one when it ends ----

def test_a_run_killed_with_sigkill_leaves_a_line_saying_it_started(tmp_path):
    grid = write_grid(tmp_path / "tiny.toml", TINY_GRID)
    manifest = tmp_path / "results" / "_runs.jsonl"
    process = subprocess.Popen([sys.executable, str(ROOT / "bench.py"), "--grid", str(grid), "--results",
                                str(tmp_path / "results"), "--cache", str(tmp_path / "cache"), "--no-leaderboard",
                                "--threads", "1"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (manifest.exists() and manifest.read_text().endswith("\n")):
        time.sleep(0.1)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(lines) == 1, lines
    started = lines[0]
    assert started["status"] == "running" and started["pid"] == process.pid
    assert started["host"] == socket.gethostname() and started["cells"] == 4 and started["run"]
    for field in ("command", "started", "device", "threads", "torch", "git_commit"):
        assert started[field] not in (None, ""), field


# ---- 3. claims name their holder; a wait can time out ----

def hold_claim(cache: Path, stage: str, key: str, what: str) -> subprocess.Popen:
    """Another process holding the claim on (stage, key) until it is killed; returns once it holds it."""
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from benchmark.storage.claims import claim
        with claim({str(cache)!r}, {stage!r}, {key!r}, what={what!r}):
            print("held", flush=True)
            time.sleep(600)
    """)
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_claim_held_elsewhere_names_its_holder_and_the_wait_can_time_out(tmp_path):
    holder = hold_claim(tmp_path, "victims", "k1", "training dpsh/smallcnn 16 bits")
    try:
        assert json.loads(claim_path(tmp_path, "victims", "k1").read_text())["pid"] == holder.pid
        told: list[str] = []
        started = time.monotonic()
        with pytest.raises(ClaimTimeout) as gave_up:
            with claim(tmp_path, "victims", "k1", wait=told.append, timeout=1.0, poll_seconds=0.1):
                pytest.fail("the claim was taken while another process held it")
        assert 1.0 <= time.monotonic() - started < 10
        named = f"pid {holder.pid} on host {socket.gethostname()} since "
        assert len(told) == 1 and told[0].startswith(named) and told[0].endswith("(training dpsh/smallcnn 16 bits)")
        assert named in str(gave_up.value) and "victims k1" in str(gave_up.value)
    finally:
        holder.kill()
        holder.wait()
    with claim(tmp_path, "victims", "k1", timeout=5.0, poll_seconds=0.1):  # the OS released the dead holder's lock
        assert json.loads(claim_path(tmp_path, "victims", "k1").read_text())["pid"] == os.getpid()
    assert claim_path(tmp_path, "victims", "k1").read_text() == ""  # released: no holder named


def test_a_cached_stage_waits_at_most_its_cache_s_claim_timeout_and_computes_nothing(tmp_path):
    holder = hold_claim(tmp_path, "victims", "k2", "training victim k2")
    reported: list[str] = []
    cache = StageCache(tmp_path, claim_timeout=0.5, report_wait=reported.append)
    try:
        with pytest.raises(ClaimTimeout, match=f"pid {holder.pid}"):
            cached(cache, "victims", "k2", lambda: pytest.fail("computed a stage another process holds"))
    finally:
        holder.kill()
        holder.wait()
    assert reported and reported[0].startswith(f"waiting for pid {holder.pid} on host ")
    assert cached(cache, "victims", "k2", lambda: {"trained": True}) == {"trained": True}


@pytest.mark.parametrize("held", ["cells", "victims"])
def test_work_held_past_the_claim_timeout_makes_an_error_row_naming_the_holder(tmp_path, registry, capfd, held):
    cells = expand(load_preset(str(write_grid(tmp_path / "tiny.toml", TINY_GRID))), registry, {"attack": {"none"}})
    runner = Runner(registry, tmp_path / "results", tmp_path / "cache", device="cpu", claim_timeout=0.5)
    plan = runner.plan(cells[0])
    holder = hold_claim(tmp_path / "cache", held, plan.key if held == "cells" else plan.victim.key, "the holder's work")
    try:
        counts = runner.run(cells)
    finally:
        holder.kill()
        holder.wait()
    assert counts == {"ran": 0, "cached": 0, "error": 1}
    row = pd.read_parquet(tmp_path / "results" / f"{plan.key}.parquet").iloc[0]
    assert row["status"] == "error" and "ClaimTimeout" in row["error"] and f"pid {holder.pid}" in row["error"]
    assert f"waiting for pid {holder.pid} on host {socket.gethostname()}" in capfd.readouterr().err
    assert not list((tmp_path / "cache").glob("victims/*.pt"))  # nothing computed in its place


def test_claim_timeout_is_an_option_of_run_and_must_be_positive(capsys):
    assert cli.parse_args(["run", "--claim-timeout", "90"]).claim_timeout == 90.0
    assert cli.parse_args(["run"]).claim_timeout is None
    with pytest.raises(SystemExit):
        cli.parse_args(["run", "--claim-timeout", "0"])
    assert "positive number of seconds" in capsys.readouterr().err


# ---- 4. files the store's other users can read ----

@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_honour_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "entry.pt", b"data")
        written = write_cell(tmp_path / "results", "k", current_cell("k", 0.5))
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "entry.pt").stat().st_mode) == mode
    assert stat.S_IMODE(written.stat().st_mode) == mode


# ---- 5. a Ray driver stops the local instance it started ----

FAKE_RAY_DRIVER = """
import os, signal, sys, time, types
sys.path.insert(0, {root!r})
calls = []
ray = types.ModuleType("ray")
ray.is_initialized = lambda: "init" in calls and "shutdown" not in calls
def init(**options):  # as ray.init does: SIGTERM exits the driver (sys.exit), not as Ctrl-C does
    calls.append("init")
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
ray.init = init
def shutdown():
    calls.append("shutdown")
    open({record!r}, "w").write(" ".join(calls))
ray.shutdown = shutdown
sys.modules["ray"] = ray

from benchmark.running import ray_executor

class Runner:
    results_dir = "unused"
    def prepare_folders(self): pass
    def pending(self, cells, progress, counts): return ["a plan"]

def tasks_running(*args):
    os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler stops the job while its tasks run
    time.sleep(60)

ray_executor._run = tasks_running
try:
    ray_executor.run_on_ray(Runner(), [])
except KeyboardInterrupt:
    print("stopped")
"""


def test_a_ray_driver_sent_sigterm_shuts_down_the_instance_it_started(tmp_path):
    record = tmp_path / "calls"
    script = FAKE_RAY_DRIVER.format(root=str(ROOT), record=str(record))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "stopped", (done.returncode, done.stderr)
    assert record.read_text() == "init shutdown"
