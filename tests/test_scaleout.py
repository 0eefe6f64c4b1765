"""Scale-out: the grid on a real Ray cluster (a head and a second node on this machine's loopback), and two
runs sharing one store. Same numbers as the local loop; a killed worker costs only the cell in flight; no
victim is trained twice and no cell computed twice."""
from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, write_grid

GRID = """
[[block]]
dataset = "fashion_mnist"
hashing = ["dpsh", "dsh"]
backbone = "smallcnn"
bits = 16
attack = ["none", "pgd", "dhta"]
epsilon = "16/255"
[block.params.datasets.fashion_mnist]
query_subset = 60
n_train = 600
[block.params.hashing.dpsh]
epochs = 2
[block.params.hashing.dsh]
epochs = 2
[block.params.attacks.pgd]
iterations = 5
[block.params.attacks.dhta]
iterations = 200
"""
# DHTA's 200 iterations make its cells last seconds, long enough to be caught in flight on an idle machine
# (the images and the victims are made by tasks of their own, so a cell is only its attack and its scoring)
# the test cluster's own token: Ray's cluster utilities do not create one (ray.init does, in ~/.ray), so on a
# fresh machine a token-mode head would find none and fail to start
RAY_ENV = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0"}


def bench_args(work: Path, grid: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "bench.py"), "--grid", str(grid), "--results", str(work / "results"),
            "--cache", str(work / "cache"), "--threads", "1", "--no-leaderboard", *extra]


TIMINGS = ("seconds_per_image", "prepare_seconds", "score_seconds")


def values(results: Path) -> pd.Series:
    """Every measured number of the store but the timings, by cell key, metric and position."""
    table = pd.read_parquet(results)
    assert (table["status"] == "ok").all(), set(table["error"])
    table = table[~table["metric"].isin(TIMINGS)]
    return table.set_index(["cell_key", "metric", "topk", "recall", "iterations"])["value"].sort_index()


def claim_holders(cache: Path) -> dict[Path, int]:
    """The cell claims held right now (``fcntl`` locks in /proc/locks), by lock file, with the holder's PID."""
    inodes = {p.stat().st_ino: p for p in (cache / "claims").glob("cells-*.lock")} if (cache / "claims").exists() else {}
    held = {}
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK":
            inode = int(fields[5].split(":")[-1])
            if inode in inodes:
                held[inodes[inode]] = int(fields[4])
    return held


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory):
    work = tmp_path_factory.mktemp("local")
    grid = write_grid(work / "grid.toml", GRID)
    run = subprocess.run(bench_args(work, grid), capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return values(work / "results")


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux's /proc/locks to find the worker to kill")
def test_a_ray_cluster_gives_the_local_numbers_and_survives_a_killed_worker(tmp_path, local_reference, monkeypatch):
    for key, value in RAY_ENV.items():  # read when ray is imported: before the import
        monkeypatch.setenv(key, value)
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                            "node_ip_address": "127.0.0.2"})
    try:
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.3")
        grid = write_grid(tmp_path / "grid.toml", GRID)
        run = subprocess.Popen(bench_args(tmp_path, grid, "--executor", "ray", "--address", cluster.address),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
        killed, seen = None, {}
        deadline = time.time() + 600
        while killed is None and run.poll() is None and time.time() < deadline:
            for lock, pid in claim_holders(tmp_path / "cache").items():
                if seen.get(lock, (None, 0))[0] != pid:
                    seen[lock] = (pid, time.time())
                elif time.time() - seen[lock][1] > 2:  # well inside the cell, its start long reported
                    killed = pid
                    os.kill(killed, signal.SIGKILL)  # the Ray worker computing that cell
                    break
            time.sleep(0.1)
        stdout, stderr = run.communicate(timeout=900)
    finally:
        cluster.shutdown()
    assert killed is not None and killed != run.pid, "no cell was seen in flight"
    assert run.returncode == 0, stderr[-3000:]
    measured = values(tmp_path / "results")
    pd.testing.assert_series_equal(measured, local_reference)  # bit for bit: same plans and seeds, one thread each
    started = re.findall(r"\] (.+?) \(on (\S+):(\d+)\)", stderr)
    assert len({pid for _, _, pid in started}) >= 2  # the cells ran in more than one worker process
    interrupted = [cell for cell, _, pid in started if int(pid) == killed]
    assert interrupted, "the killed worker was computing a cell"
    again = [pid for cell, _, pid in started if cell == interrupted[-1] and int(pid) != killed]
    assert again, "the interrupted cell was computed again by another worker"
    assert "6 cells computed, 0 from the cache, 0 failed" in stderr


def test_two_runs_at_once_train_each_victim_once_and_compute_each_cell_once(tmp_path):
    grid = write_grid(tmp_path / "grid.toml", GRID.replace('["dpsh", "dsh"]', '"dpsh"'))
    runs = [subprocess.Popen(bench_args(tmp_path, grid), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [run.communicate(timeout=900) for run in runs]
    assert all(run.returncode == 0 for run in runs), [err[-2000:] for _, err in outputs]
    stderr = "".join(err for _, err in outputs)
    assert len(re.findall(r"^training dpsh/smallcnn/16 \(", stderr, re.MULTILINE)) == 1  # the log line of a training
    computed = [int(n) for n in re.findall(r"(\d+) cells computed", stderr)]
    cached = [int(n) for n in re.findall(r"(\d+) from the cache", stderr)]
    assert sum(computed) == 3 and sum(cached) == 3
    for path in (tmp_path / "results").glob("[!_]*.parquet"):  # the cells (not _per_query.parquet)
        assert (pd.read_parquet(path)["status"] == "ok").all()
    assert not list((tmp_path / "results").glob(".tmp-*"))
