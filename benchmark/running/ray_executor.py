"""Fans a grid out on a Ray cluster: ``python bench.py --executor ray [--address HOST:PORT]``.

The driver plans every cell (``benchmark.plan``), skips those the result store already holds, and groups the
rest by the victim whose weights they need: each group is one Ray task, so a victim is trained once and its
cells run where its weights are loaded. A task runs ``benchmark.runner.compute_cell`` - the very function
the local loop runs - on each of its cells, reading and writing the cache and results folders that every
machine must see at the same path (content keys, atomic writes, claims: two tasks or two runs never compute
the same stage at once). The driver shows one progress view for the whole grid, fed by a small actor the
tasks report to. Ctrl-C cancels the tasks (finished cells are already stored); a task whose worker dies is
retried, and redoes only the cell that was in flight.

Without ``--address`` a local Ray instance is started for the run and shut down on every exit the driver
sees (the end, Ctrl-C, SIGTERM, SIGHUP, an exception); a driver killed with -9 cannot, and ``ray stop``
ends what it left. With ``--address``, the driver joins an existing cluster (``ray start --head`` on one machine, ``ray start --address HEAD:6379`` on the others,
each in this project's environment and checkout). One GPU per task where the cluster has GPUs, else
``--threads`` CPU threads (default 1) per task.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from benchmark.planning.plan import CellPlan
from benchmark.plugins import REPO_ROOT
from benchmark.running.progress import Progress
from benchmark.storage.results import cell_done

log = logging.getLogger("hashbench")
RETRIES = 3  # a task whose worker dies (killed, out of memory, node lost) is run again up to this many times
# Ray rewrites 127.0.0.1 to the machine's network address (so that other machines could join); an instance
# started for one run uses another loopback address instead, so that none of its traffic leaves the machine.
LOCAL_NODE_IP = "127.0.0.2"


@dataclass(frozen=True)
class TaskSettings:
    """What a task needs besides its plans (plain data, shipped with it)."""

    root: str
    results_dir: str
    cache_dir: str
    device: str
    data_root: str | None
    attack_batch: int
    threads: int
    force: bool
    claim_timeout: float | None = None
    recompute: tuple[str, ...] = ()  # the stages --force / --force-victims compute afresh


class ProgressBoard:
    """The tasks' reports, collected for the driver (a Ray actor)."""

    def __init__(self):
        self.events: list[tuple] = []

    def report(self, *event) -> None:
        self.events.append(event)

    def drain(self) -> list[tuple]:
        events, self.events = self.events, []
        return events


def run_group(plans: list[CellPlan], settings: TaskSettings, board) -> list[str]:
    """One task: the cells of one victim, each computed unless stored already; returns their keys."""
    import torch

    from benchmark.plugins import Registry
    from benchmark.running.environment import environment
    from benchmark.running.runner import compute_cell, pick_device, store_failure
    from benchmark.session import Session
    from benchmark.storage.claims import ClaimTimeout, claim

    torch.set_num_threads(max(1, settings.threads))
    device = pick_device(settings.device)
    registry = Registry.discover(Path(settings.root))
    last_stage = [0.0]

    def stage(message: str) -> None:
        if time.monotonic() - last_stage[0] > 2:  # at most one stage report every 2 s per task
            last_stage[0] = time.monotonic()
            board.report.remote("stage", current[0], message)

    current = [""]
    session = Session.start(registry, settings.cache_dir, device, settings.data_root, settings.attack_batch, stage,
                            claim_timeout=settings.claim_timeout,
                            report_wait=lambda message: board.report.remote("waiting", current[0], message),
                            recompute=frozenset(settings.recompute))
    env = environment(device)
    results = Path(settings.results_dir)
    for plan in plans:
        current[0] = plan.key
        try:
            with claim(settings.cache_dir, "cells", plan.key, what=f"computing {plan.cell.describe()}",
                       wait=lambda holder: board.report.remote("waiting", plan.key, f"waiting for {holder}"),
                       timeout=settings.claim_timeout):
                if not settings.force and cell_done(results, plan.key):
                    board.report.remote("cached", plan.key)
                    continue
                board.report.remote("started", plan.key, f"{os.uname().nodename}:{os.getpid()}")
                outcome = compute_cell(plan, session, results, env)
        except ClaimTimeout as exc:
            outcome = store_failure(plan, session, results, env, exc)
        board.report.remote("finished", plan.key, outcome.status, outcome.error, outcome.flags)
    return [plan.key for plan in plans]


def group_by_victim(plans: list[CellPlan]) -> list[list[CellPlan]]:
    groups: dict[tuple, list[CellPlan]] = defaultdict(list)
    for plan in plans:
        groups[plan.victim.key, plan.attacker.key].append(plan)
    return list(groups.values())


def run_on_ray(runner, cells, address: str | None = None, threads: int = 0) -> dict[str, int]:
    """Run ``cells`` as Ray tasks; the same counts as ``Runner.run`` (``runner.counts`` so far, if interrupted)."""
    import ray

    from benchmark.running.runner import new_counts

    runner.prepare_folders()
    progress = Progress(len(cells))
    runner.progress = progress
    counts = runner.counts = new_counts()
    todo = runner.pending(cells, progress, counts)
    started_here = not ray.is_initialized()
    try:
        if started_here:
            connect(ray, address)
        with stopping_on_termination():  # after ray.init, which sets SIGTERM to sys.exit
            _run(ray, runner, todo, progress, threads, counts)
    finally:
        if started_here:
            ray.shutdown()  # stops the instance it started (a joined cluster stays up)
    progress.summary(counts, runner.results_dir)
    return counts


def connect(ray, address: str | None) -> None:
    """Join the cluster at ``address``, or start a local instance for this run."""
    root = str(REPO_ROOT)
    env = {"PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    options = dict(runtime_env={"env_vars": env}, include_dashboard=False, log_to_driver=False,
                   configure_logging=False)
    if address:
        host = address.rsplit(":", 1)[0]
        local = {"_node_ip_address": host} if host.startswith("127.") else {}  # a cluster on this machine
        ray.init(address=address, **local, **options)
    else:
        local = {"_node_ip_address": LOCAL_NODE_IP} if sys.platform.startswith("linux") else {}
        ray.init(num_cpus=os.cpu_count(), object_store_memory=10 ** 9, **local, **options)


def interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def stopping_on_termination():
    """SIGTERM and SIGHUP end the driver as Ctrl-C does (so its ``finally`` shuts Ray down, and the run is
    recorded as interrupted) rather than kill it outright or, as ``ray.init``'s own SIGTERM handler does, exit;
    the handlers that were there before are put back after. Only the main thread can set them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.signal(number, interrupt) for number in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _run(ray, runner, todo: list[CellPlan], progress: Progress, threads: int, counts: dict[str, int]) -> None:
    """Run the plans as tasks, adding to ``counts`` as they report."""
    if not todo:
        return
    gpus = ray.cluster_resources().get("GPU", 0)
    resources = {"num_gpus": 1} if gpus else {"num_cpus": max(1, threads)}
    settings = TaskSettings(str(REPO_ROOT), str(runner.results_dir.resolve()),
                            str(runner.cache_dir.resolve()), "auto" if gpus else "cpu", runner.session.data_root,
                            runner.attack_batch,
                            max(1, threads), runner.force, runner.session.claim_timeout, tuple(sorted(runner.recompute)))
    board = ray.remote(ProgressBoard).options(num_cpus=0).remote()
    task = ray.remote(run_group).options(max_retries=RETRIES, retry_exceptions=False, **resources)
    by_key = {plan.key: plan for plan in todo}
    pending = {task.remote(group, settings, board): group for group in group_by_victim(todo)}
    finished: set[str] = set()
    try:
        while pending:
            ready, _ = ray.wait(list(pending), timeout=1.0)
            _show(ray.get(board.drain.remote()), by_key, progress, counts, finished)
            for ref in ready:
                group = pending.pop(ref)
                try:
                    ray.get(ref)
                except Exception as exc:  # the task failed for good (its retries spent): its open cells failed
                    for plan in group:
                        if plan.key not in finished:
                            progress.cell_failed(plan.cell, exc)
                            counts["error"] += 1
                            finished.add(plan.key)
        _show(ray.get(board.drain.remote()), by_key, progress, counts, finished)
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise


def _show(events: list[tuple], by_key: dict, progress: Progress, counts: dict, finished: set) -> None:
    for kind, key, *rest in events:
        plan = by_key.get(key)
        if plan is None:
            continue
        if kind == "started":
            progress.cell_started(plan.cell, where=rest[0])
        elif kind == "stage":
            progress.current = plan.cell.describe()
            progress.stage(rest[0])
        elif kind == "waiting":
            progress.note(f"{plan.cell.describe()}: {rest[0]}")
        elif kind == "cached" and key not in finished:
            progress.cell_cached(plan.cell)
            counts["cached"] += 1
            finished.add(key)
        elif kind == "finished":
            status, error, flags = rest
            if key in finished:  # reported twice: a retried task found it half done; count it once
                continue
            progress.cell_finished(plan.cell, status, error, flags)
            counts["ran" if status == "ok" else "error"] += 1
            finished.add(key)
