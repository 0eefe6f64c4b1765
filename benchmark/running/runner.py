"""Runs grid cells on this machine, one after another; ``benchmark.ray_executor`` fans them out on Ray.

Each cell is planned (``benchmark.plan``), skipped when the result store already holds it, else computed by
``benchmark.cell.run_cell`` and written at once as its own parquet file, so a killed run loses at most the
cell in flight. Two runs sharing a store never compute the same cell at the same time (a claim per cell; a
cell claimed by another run is taken up at the end, by which time it is usually done).

    runner = Runner(registry, results_dir="results", cache_dir=".cache")
    runner.run(cells)
"""
from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from pathlib import Path

import torch

from benchmark.attack.targets import TARGET_RULES
from benchmark.cell import run_cell
from benchmark.planning.grid import Cell
from benchmark.planning.plan import CellPlan, Planner
from benchmark.plugins import REPO_ROOT, Registry
from benchmark.rows import error_rows, finish_rows
from benchmark.running.environment import environment
from benchmark.running.progress import Progress
from benchmark.scoring.evaluate import EvaluationConventions
from benchmark.session import Session
from benchmark.storage.cache import check_writable, remove_dead_temporaries
from benchmark.storage.claims import ClaimTimeout, check_lock_support, claim, try_claim
from benchmark.storage.folders import check_store_folder
from benchmark.storage.results import cell_done, write_cell
from benchmark.victim.compute import ComputeSettings

log = logging.getLogger("hashbench")


class ResultsNotWritable(OSError):
    """The result store could not take a finished cell; the rows were saved elsewhere (named in the message)."""


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return auto_device()
    try:
        picked = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; accepted: auto, cpu, cuda, cuda:N") from None
    if picked.type == "cuda" and not torch.cuda.is_available():
        from benchmark.running.gpu import gpu_problem, torch_build

        why = gpu_problem() or f"nvidia-smi lists no GPU; {torch_build()}"
        raise ValueError(f"device {device!r} was asked for but torch sees no CUDA device here ({why}); use "
                         f"--device cpu")
    return picked


def auto_device() -> torch.device:
    """The GPU when torch can use one, else the CPU; never the CPU when nvidia-smi lists a GPU torch cannot use
    (the ValueError names the driver and torch's CUDA build). Logs what it chose."""
    from benchmark.running.gpu import describe_device, gpu_problem

    problem = gpu_problem()
    if problem:
        raise ValueError(f"--device auto: {problem}. Or run on the CPU anyway with --device cpu")
    picked = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    log.info("--device auto chose %s", describe_device(picked))
    return picked


def save_rows(results_dir: Path, key: str, rows: list[dict]) -> None:
    """Write a cell's rows; if the store cannot take them, save them elsewhere and say where."""
    try:
        write_cell(results_dir, key, rows)
    except OSError as exc:
        fallback = Path(tempfile.gettempdir()) / "hashbench-unsaved"
        try:
            write_cell(fallback, key, rows)
            where = f"its rows were saved to {fallback / (key + '.parquet')}; copy them into {results_dir}/ once it "
            where += "has room"
        except OSError:
            where = "they could not be saved elsewhere either"
        raise ResultsNotWritable(f"could not write to the result store {results_dir} ({exc.strerror or exc}); "
                                 f"{where}") from None


# What --force computes afresh: the cell's own stages from the attack on (a learned attack's prepared state, the
# attack outcome or a protection cell's release; scoring always runs for a computed cell); --force-victims: all.
FORCE_STAGES = frozenset({"prepared", "attacks"})
FORCE_VICTIMS_STAGES = FORCE_STAGES | {"victims", "protections", "codes", "targets"}


def recompute_stages(force: bool, force_victims: bool) -> frozenset:
    return FORCE_VICTIMS_STAGES if force_victims else FORCE_STAGES if force else frozenset()


class Runner:
    def __init__(self, registry: Registry, results_dir: str | Path = "results", cache_dir: str | Path = ".cache",
                 device: str = "auto", data_root: str | None = None, attack_batch: int = 0,
                 backend: str = "torch", target_rule: str | None = None,
                 conventions: EvaluationConventions | None = None, force: bool = False, force_victims: bool = False,
                 claim_timeout: float | None = None, precision: str = "fp32"):
        if target_rule is not None and target_rule not in TARGET_RULES:
            raise ValueError(f"unknown target rule {target_rule!r}; accepted: {', '.join(TARGET_RULES)}")
        if attack_batch < 0:
            raise ValueError(f"--attack-batch must be a positive number of queries (0 = the default); "
                             f"got {attack_batch}")
        if claim_timeout is not None and not claim_timeout > 0:
            raise ValueError(f"--claim-timeout must be a positive number of seconds (leave it out to wait as long "
                             f"as it takes); got {claim_timeout}")
        self.registry = registry
        self.results_dir = Path(results_dir)
        self.cache_dir = Path(cache_dir)
        self.device = pick_device(device)
        self.target_rule = target_rule
        self.conventions = conventions or EvaluationConventions(backend=backend)
        self.force = force or force_victims
        self.recompute = recompute_stages(force, force_victims)
        self.environment = environment(self.device)
        self.attack_batch = attack_batch  # as asked (0: the device's default), for workers on other devices
        self.compute_settings = ComputeSettings.for_device(self.device, precision)  # in the keys, on the rows
        self.planner = Planner(registry, data_root, self.conventions, self.compute_settings)
        self.progress: Progress | None = None
        self.counts = new_counts()  # of the run in progress (so far, if it is interrupted)
        self.session = Session.start(registry, self.cache_dir, self.device, data_root, attack_batch,
                                     progress=lambda message: self.progress and self.progress.stage(message),
                                     claim_timeout=claim_timeout,
                                     report_wait=lambda message: self.progress and self.progress.note(message),
                                     recompute=self.recompute)

    def plan(self, cell: Cell) -> CellPlan:
        if self.target_rule is not None:
            cell = dataclasses.replace(cell, target_rule=self.target_rule)
        return self.planner.plan(cell)

    def cell_key(self, cell: Cell) -> str:
        return self.plan(cell).key

    def prepare_folders(self) -> None:
        """Before any work: both folders of their own and writable, the cache's file system taking locks (claims
        need them), and temporary files of killed writes removed."""
        check_store_folder(self.results_dir, "results", REPO_ROOT)
        check_store_folder(self.cache_dir, "cache", REPO_ROOT)
        check_writable(self.results_dir, "results")
        check_writable(self.cache_dir, "cache")
        check_lock_support(self.cache_dir)
        for folder in (self.results_dir, self.cache_dir):
            for path in remove_dead_temporaries(folder):
                log.info("removed %s, left by a write that was killed", path)

    def pending(self, cells: list[Cell], progress: Progress, counts: dict[str, int]) -> list[CellPlan]:
        """The plans of the cells still to compute; the others are counted as cached (or failed to plan)."""
        todo = []
        for cell in cells:
            try:
                plan = self.plan(cell)
            except Exception as exc:  # e.g. the dataset is missing: every cell of it fails the same way
                progress.cell_failed(cell, exc)
                counts["error"] += 1
                continue
            if not self.force and cell_done(self.results_dir, plan.key):
                progress.cell_cached(cell)
                counts["cached"] += 1
            else:
                todo.append(plan)
        return todo

    def run(self, cells: list[Cell]) -> dict[str, int]:
        """Run every cell not already in the store; return counts of computed/cached/failed cells.

        ``self.counts`` holds the counts so far while it runs (and after an interruption)."""
        self.prepare_folders()
        progress = Progress(len(cells))
        self.progress = progress
        counts = self.counts = new_counts()
        deferred: list[CellPlan] = []
        for plan in self.pending(cells, progress, counts):
            with try_claim(self.cache_dir, "cells", plan.key, what=f"computing {plan.cell.describe()}") as mine:
                if mine:
                    self.compute_unless_done(plan, progress, counts)
                else:
                    deferred.append(plan)
        for plan in deferred:  # claimed by another run when we came to it: wait for it, then take what it left
            self.wait_then_compute(plan, progress, counts)
        progress.summary(counts, self.results_dir)
        return counts

    def wait_then_compute(self, plan: CellPlan, progress: Progress, counts: dict[str, int]) -> None:
        """A cell another run holds: wait (at most the claim timeout), then compute it unless that run stored it."""
        try:
            with claim(self.cache_dir, "cells", plan.key, what=f"computing {plan.cell.describe()}",
                       wait=lambda holder: progress.note(f"{plan.cell.describe()}: waiting for {holder}"),
                       timeout=self.session.claim_timeout):
                self.compute_unless_done(plan, progress, counts)
        except ClaimTimeout as exc:
            outcome = store_failure(plan, self.session, self.results_dir, self.environment, exc)
            counts["error"] += 1
            progress.cell_finished(plan.cell, "error", outcome.error)

    def compute_unless_done(self, plan: CellPlan, progress: Progress, counts: dict[str, int]) -> None:
        """With the cell's claim held: another run may have stored it since we planned; else compute it."""
        if not self.force and cell_done(self.results_dir, plan.key):
            progress.cell_cached(plan.cell)
            counts["cached"] += 1
        else:
            self.compute(plan, progress, counts)

    def compute(self, plan: CellPlan, progress: Progress, counts: dict[str, int]) -> None:
        progress.cell_started(plan.cell)
        outcome = compute_cell(plan, self.session, self.results_dir, self.environment)
        counts["ran" if outcome.status == "ok" else "error"] += 1
        progress.cell_finished(plan.cell, outcome.status, outcome.error, outcome.flags)


def new_counts() -> dict[str, int]:
    return {"ran": 0, "cached": 0, "error": 0}


@dataclasses.dataclass
class CellOutcome:
    status: str        # "ok" or "error"
    error: str = ""
    flags: str = ""
    seconds: float = 0.0


def compute_cell(plan: CellPlan, s: Session, results_dir: Path, env: dict) -> CellOutcome:
    """Compute one claimed cell and store its rows: an error row if it failed, but never over a good result.

    The local loop and the Ray tasks both call this.
    """
    started = time.perf_counter()
    try:
        rows, status = run_cell(plan, s), "ok"
    except KeyboardInterrupt:
        raise
    except (Exception, SystemExit) as exc:  # a plugin's sys.exit() ends its cell, not the run
        log.debug("cell %s failed", plan.cell.describe(), exc_info=True)
        rows, status = error_rows(plan, s.registry, s.attack_batch, exc), "error"
    return store_rows(plan, rows, status, time.perf_counter() - started, results_dir, env)


def store_failure(plan: CellPlan, s: Session, results_dir: Path, env: dict, exc: BaseException) -> CellOutcome:
    """A cell that could not be computed (e.g. its claim was held too long): its error row, never over a good one."""
    return store_rows(plan, error_rows(plan, s.registry, s.attack_batch, exc), "error", 0.0, results_dir, env)


def store_rows(plan: CellPlan, rows: list[dict], status: str, seconds: float, results_dir: Path,
               env: dict) -> CellOutcome:
    rows = finish_rows(rows, env, seconds)
    outcome = CellOutcome(status, rows[0].get("error", ""), rows[0].get("flags", ""), seconds)
    if status != "ok" and cell_done(results_dir, plan.key):
        outcome.error += " (the earlier good result is kept)"
        return outcome
    save_rows(results_dir, plan.key, rows)
    return outcome
