"""Fans a grid out on a Ray cluster: ``python bench.py --executor ray [--address HOST:PORT]``.

The driver plans every cell (``benchmark.plan``), skips those the result store already holds, and makes a task
graph of the rest (``task_graph``): per dataset, a CPU task that decodes its image files into the image cache (the queries and training images,
and the database when a victim is to encode it) and draws the cells' target labels;
each data protection and each victim the cells need that the stage cache lacks (a victim task trains it and
encodes its codes; a defended victim waits for the undefended one it starts from, a victim trained on protected
data for the protection); then one task per attacker (the victim, or the cells' surrogate) running its cells,
after every victim and protection they use. A task is submitted only once the tasks it needs have finished, so
no task holds a GPU while it waits for another's claim; among the ready tasks the one with the longest chain of
estimated work ahead (``benchmark.planning.estimate``: its own GFLOP plus the costliest chain of tasks that wait
for it) goes first, whenever the cluster has room for it. A cells task runs ``benchmark.runner.compute_cell`` -
the very function the local loop runs - on each of its cells, reading and writing the cache and results folders
that every machine must see at the same path (content keys, atomic writes, claims: two tasks or two runs never
compute the same stage at once). Every task first probes that the cache folder takes locks. The driver shows one
progress view for the whole grid, fed by a small actor the tasks report to. Ctrl-C cancels the tasks (finished
cells are already stored); a task whose worker dies is retried, and redoes only the cell or stage in flight. A
victim whose training failed makes its cells error rows without being trained again.

Without ``--address`` a local Ray instance is started for the run and shut down on every exit the driver
sees (the end, Ctrl-C, SIGTERM, SIGHUP, an exception); a driver killed with -9 cannot, and ``ray stop``
ends what it left. With ``--address``, the driver joins an existing cluster (``ray start --head`` on one machine, ``ray start --address HEAD:6379`` on the others,
each in this project's environment and checkout). One GPU per task where the cluster has GPUs (the image caches
take ``--threads`` CPUs), else ``--threads`` CPU threads (default 1) per task.
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
from dataclasses import dataclass, field
from pathlib import Path

from benchmark.planning.estimate import Estimator, Sizes, Work, data_sizes
from benchmark.planning.plan import CellPlan, CodesPlan, ProtectionPlan, VictimPlan
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


@dataclass
class Task:
    """One Ray task of a run: what it computes, the tasks it waits for, and its cost under the GPU-hours model.

    ``kind``: "images" (decode a dataset's file sets into the image cache and draw its target labels, on CPUs), "protection" (train a data
    protection), "victim" (train a victim and encode its codes), "cells" (the cells of one attacker)."""

    id: str
    kind: str
    label: str
    plan: CellPlan                       # a cell that needs it (its dataset, for the splits)
    needs: list = field(default_factory=list)  # ids of the tasks that must finish first
    victim: VictimPlan | None = None
    codes: CodesPlan | None = None
    protection: ProtectionPlan | None = None
    plans: list = field(default_factory=list)  # a cells task's cells
    roles: tuple = ("query", "train")    # an images task's sets ("database" too when a victim task encodes it)
    targets: list = field(default_factory=list)  # an images task's target draws (TargetsPlan), shared by cells
    gflop: float = 0.0                   # its own work (benchmark.planning.estimate)
    priority: float = 0.0                # gflop plus the costliest chain of tasks that wait for it


def task_graph(plans: list[CellPlan], registry, stored=lambda stage, key: False) -> dict[str, Task]:
    """The run's tasks: per dataset its image cache; each protection and victim the cells need (a defended
    victim after the undefended one it starts from, a victim trained on protected data after the protection);
    then per attacker (the victim, or the cell's surrogate) one task of its cells, after every victim and
    protection they use, so that no task waits on another's claim. ``stored(stage, key)``: the stage cache holds
    it already (it gets no task). Priorities: a task's estimated GFLOP plus the costliest chain after it."""
    tasks: dict[str, Task] = {}
    estimator = Estimator(registry)

    def need(task_id, *needs):
        task = tasks[task_id]
        task.needs += [n for n in needs if n and n not in task.needs]

    def images_task(plan: CellPlan) -> str:
        dataset = plan.victim.dataset
        task_id = f"images {dataset.name} {plan.data_identity['split']}"
        if task_id not in tasks:
            tasks[task_id] = Task(task_id, "images", f"image cache of {dataset.name}", plan)
        return task_id

    def protection_task(plan: CellPlan, protection: ProtectionPlan, sizes: Sizes) -> str | None:
        if stored("protections", protection.key):
            return None
        task_id = f"protection {protection.key}"
        if task_id not in tasks:
            work = Work()
            estimator.protection(work, plan.cell, sizes, protection.defense.name, ("protection", protection.key), 0.0)
            tasks[task_id] = Task(task_id, "protection", f"protection {protection.defense.name} of "
                                  f"{protection.dataset.name}", plan, protection=protection,
                                  gflop=work.gflop["prepare"])
            need(task_id, images_task(plan))
        return task_id

    def victim_task(plan: CellPlan, victim: VictimPlan, codes: CodesPlan | None, sizes: Sizes) -> str | None:
        task_id = f"victim {victim.key}"
        if task_id in tasks:
            if codes is not None and tasks[task_id].codes is None:
                tasks[task_id].codes = codes
            return task_id
        if stored("victims", victim.key) and (codes is None or stored("codes", codes.key)):
            return None
        start = victim.start and victim_task(plan, victim.start, None, sizes)
        protection = victim.protection and protection_task(plan, victim.protection, sizes)
        tasks[task_id] = Task(task_id, "victim", f"victim {victim.label()}", plan, victim=victim, codes=codes,
                              gflop=victim_gflop(estimator, plan, victim, sizes))
        need(task_id, images_task(plan), start, protection)
        return task_id

    for plan in plans:
        sizes = data_sizes(plan.data_identity)
        needs = [victim_task(plan, plan.victim, plan.codes, sizes)]
        if plan.surrogate is not None:
            needs.append(victim_task(plan, plan.surrogate, plan.surrogate_codes, sizes))
        if plan.protection is not None and (plan.release is not None or plan.cell.train_data == "protected"):
            needs.append(protection_task(plan, plan.protection, sizes))
        task_id = f"cells {plan.attacker.key}"
        if task_id not in tasks:
            tasks[task_id] = Task(task_id, "cells", f"cells attacked on {plan.attacker.label()}", plan)
        tasks[task_id].plans.append(plan)
        tasks[task_id].gflop += cell_gflop(estimator, plan, sizes)
        images = tasks[images_task(plan)]
        if not stored("targets", plan.targets.key) and plan.targets not in images.targets:
            images.targets.append(plan.targets)
        need(task_id, images.id, *needs)
    for task in tasks.values():
        task.plans.sort(key=lambda plan: plan.victim.key)  # a victim's cells one after another (the memo keeps 3)
        if task.kind == "victim" and task.codes is not None:  # the database is decoded only if something encodes it
            for needed in task.needs:
                if tasks[needed].kind == "images":
                    tasks[needed].roles = ("query", "database", "train")
    set_priorities(tasks)
    return tasks


def victim_args(victim: VictimPlan) -> tuple:
    return victim.hashing.name, victim.backbone, victim.bits, victim.defense.name, victim.train_data


def victim_gflop(estimator: Estimator, plan: CellPlan, victim: VictimPlan, sizes: Sizes) -> float:
    """The victim's own training and codes (the victim it starts from counted in that one's task)."""
    if victim.start is not None:
        estimator.victim(Work(), plan.cell, sizes, *victim_args(victim.start))
    work = Work()
    estimator.victim(work, plan.cell, sizes, *victim_args(victim))
    return work.gflop["victims"] + work.gflop["codes"]


def cell_gflop(estimator: Estimator, plan: CellPlan, sizes: Sizes) -> float:
    """The cell's attack (and a learned attack's preparation, for the first cell of its attacker)."""
    victim = estimator.victim(Work(), plan.cell, sizes, *victim_args(plan.victim))
    attacker = victim if plan.surrogate is None else estimator.victim(Work(), plan.cell, sizes,
                                                                      *victim_args(plan.surrogate))
    work = Work()
    estimator.attack(work, plan.cell, sizes, victim, attacker)
    return sum(work.gflop.values())


def set_priorities(tasks: dict[str, Task]) -> None:
    """priority = gflop + the largest priority among the tasks that wait for it (the longest chain to the end)."""
    waiting_for: dict[str, list[str]] = defaultdict(list)
    for task in tasks.values():
        for needed in task.needs:
            waiting_for[needed].append(task.id)
    done: dict[str, float] = {}

    def priority(task_id: str) -> float:
        if task_id not in done:
            done[task_id] = tasks[task_id].gflop + max((priority(t) for t in waiting_for[task_id]), default=0.0)
        return done[task_id]

    for task in tasks.values():
        task.priority = priority(task.id)


def next_tasks(waiting: dict[str, Task], finished: set[str]) -> list[Task]:
    """The tasks whose needs have all finished, highest priority first (ties: the order they were made in)."""
    order = {task_id: i for i, task_id in enumerate(waiting)}
    ready = [task for task in waiting.values() if all(n in finished for n in task.needs)]
    return sorted(ready, key=lambda task: (-task.priority, order[task.id]))


def task_session(settings: TaskSettings, board, label: str):
    """A task's Session (its stage and wait reports go to the board under ``label``), after probing locks."""
    import torch

    from benchmark.plugins import Registry
    from benchmark.running.runner import pick_device
    from benchmark.session import Session
    from benchmark.storage.claims import check_lock_support

    check_lock_support(settings.cache_dir)  # this machine's mount of the cache, before any work
    torch.set_num_threads(max(1, settings.threads))
    device = pick_device(settings.device)
    registry = Registry.discover(Path(settings.root))
    last_stage, current = [0.0], [label]

    def stage(message: str) -> None:
        if time.monotonic() - last_stage[0] > 2:  # at most one stage report every 2 s per task
            last_stage[0] = time.monotonic()
            board.report.remote("stage", current[0], message)

    session = Session.start(registry, settings.cache_dir, device, settings.data_root, settings.attack_batch, stage,
                            claim_timeout=settings.claim_timeout,
                            report_wait=lambda message: board.report.remote("waiting", current[0], message),
                            recompute=frozenset(settings.recompute))
    return session, current


def run_stage(task: Task, settings: TaskSettings, board, failed: dict[str, str]) -> dict[str, str]:
    """A stage task (image cache, protection, victim and its codes); returns {victim key: why its training
    failed} (empty when it did not), so that the cells of a failed victim become error rows without retraining."""
    from benchmark.attack.stage import target_labels
    from benchmark.cell import dataset_splits, preprocess_images
    from benchmark.encoding.codes import clean_codes
    from benchmark.victim.train import trained_protection, trained_victim

    board.report.remote("task", task.id, "started", f"{os.uname().nodename}:{os.getpid()}")
    error = ""
    try:
        session, _ = task_session(settings, board, task.id)
        session.failed_victims.update(failed)
        if task.kind == "images":
            preprocess_images(task.plan, session, task.roles)
            splits = dataset_splits(task.plan, session)
            for targets in task.targets:  # drawn here once, so that no two cells tasks wait on each other for them
                target_labels(targets, splits, session)
        else:
            splits = dataset_splits(task.plan, session)
            if task.kind == "protection":
                trained_protection(task.protection, splits, session)
            else:
                victim = trained_victim(task.victim, splits, session)
                if task.codes is not None:
                    clean_codes(task.codes, victim, splits, session)
    except Exception as exc:  # noqa: BLE001 - any failure is the cells' to report (a victim's as their error rows)
        error = f"{type(exc).__name__}: {exc}"
    board.report.remote("task", task.id, "finished", error)
    return {task.victim.key: error} if error and task.victim is not None else {}


def run_group(plans: list[CellPlan], settings: TaskSettings, board, failed: dict[str, str] | None = None) -> list[str]:
    """One task: the cells of one attacker, each computed unless stored already; returns their keys."""
    from benchmark.running.environment import environment
    from benchmark.running.runner import compute_cell, store_failure
    from benchmark.storage.claims import ClaimTimeout, claim

    session, current = task_session(settings, board, plans[0].key)
    session.failed_victims.update(failed or {})
    env = environment(session.device)
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
    """Run the plans' task graph: a task is submitted once the tasks it needs have finished, the highest priority
    first, while the cluster has room for it (so that the order is the graph's, not Ray's queue's); counts are
    added to as the tasks report. ``runner.task_log`` gets (event, id, label, detail) as a stage task starts
    ("started", where) and ends ("finished", its error or ""), a cell starts ("cell started", where), and anything
    waits for a claim ("waiting", whom)."""
    if not todo:
        return
    gpus = ray.cluster_resources().get("GPU", 0)
    settings = TaskSettings(str(REPO_ROOT), str(runner.results_dir.resolve()),
                            str(runner.cache_dir.resolve()), "auto" if gpus else "cpu", runner.session.data_root,
                            runner.attack_batch,
                            max(1, threads), runner.force, runner.session.claim_timeout, tuple(sorted(runner.recompute)))
    cache = runner.session.cache
    tasks = task_graph(todo, runner.registry,
                       lambda stage, key: stage not in runner.recompute and cache.path(stage, key).exists())
    board = ray.remote(ProgressBoard).options(num_cpus=0).remote()
    cpu = {"CPU": max(1, threads)}
    needs = {task_id: cpu if task.kind == "images" or not gpus else {"GPU": 1} for task_id, task in tasks.items()}
    remote = {"stage": ray.remote(run_stage), "cells": ray.remote(run_group)}
    by_key = {plan.key: plan for plan in todo}
    labels = {task_id: task.label for task_id, task in tasks.items()}
    runner.task_log = []
    waiting, done, failed, finished = dict(tasks), set(), {}, set()  # finished: the cells counted
    running: dict = {}  # ObjectRef -> Task
    try:
        while waiting or running:
            totals = ray.cluster_resources()  # read again each round: nodes may join or leave
            for task in next_tasks(waiting, done):
                if running and not fits(needs[task.id], [needs[t.id] for t in running.values()], totals):
                    continue
                resources = {"num_gpus": 1} if "GPU" in needs[task.id] else {"num_cpus": needs[task.id]["CPU"]}
                options = dict(max_retries=RETRIES, retry_exceptions=False, **resources)
                if task.kind == "cells":
                    ref = remote["cells"].options(**options).remote(task.plans, settings, board, dict(failed))
                else:
                    ref = remote["stage"].options(**options).remote(task, settings, board, dict(failed))
                running[ref] = waiting.pop(task.id)
            ready, _ = ray.wait(list(running), timeout=1.0)
            _show(ray.get(board.drain.remote()), by_key, progress, counts, finished, labels, runner.task_log)
            for ref in ready:
                task = running.pop(ref)
                done.add(task.id)
                try:
                    outcome = ray.get(ref)
                except Exception as exc:  # the task failed for good (its retries spent)
                    if task.kind != "cells":
                        failed.update({task.victim.key: f"{type(exc).__name__}: {exc}"} if task.victim else {})
                        continue
                    for plan in task.plans:
                        if plan.key not in finished:
                            progress.cell_failed(plan.cell, exc)
                            counts["error"] += 1
                            finished.add(plan.key)
                    continue
                if task.kind != "cells":
                    failed.update(outcome)
        _show(ray.get(board.drain.remote()), by_key, progress, counts, finished, labels, runner.task_log)
    except KeyboardInterrupt:
        for ref in running:
            ray.cancel(ref, force=True)
        raise


def fits(need: dict, in_flight: list[dict], totals: dict) -> bool:
    """Whether the cluster (``totals``, as ``ray.cluster_resources()``) has room for ``need`` beside ``in_flight``."""
    return all(sum(used.get(name, 0) for used in in_flight) + amount <= totals.get(name, 0)
               for name, amount in need.items())


def _show(events: list[tuple], by_key: dict, progress: Progress, counts: dict, finished: set,
          labels: dict | None = None, task_log: list | None = None) -> None:
    labels = labels or {}
    for kind, key, *rest in events:
        if kind == "task":  # a stage task started ("where") or finished ("" or its error)
            event, detail = rest
            if task_log is not None:
                task_log.append((event, key, labels.get(key, key), detail))
            if event == "started":
                progress.note(f"{labels.get(key, key)} (on {detail})")
            elif detail:
                progress.note(f"{labels.get(key, key)} failed: {detail}")
            continue
        plan = by_key.get(key)
        if kind == "waiting" and task_log is not None:
            task_log.append(("waiting", key, labels.get(key) or plan and plan.cell.describe(), rest[0]))
        if key in labels and kind in ("stage", "waiting"):
            (progress.stage if kind == "stage" else progress.note)(f"{labels[key]}: {rest[0]}")
            continue
        if plan is None:
            continue
        if kind == "started":
            if task_log is not None:
                task_log.append(("cell started", key, plan.cell.describe(), rest[0]))
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
