"""What the stages of one run share: an immutable configuration, the stage cache, and a bounded memo.

    session = Session.start(registry, cache_dir, device, data_root, attack_batch, progress=print)
    rows = run_cell(plan, session)

The memo keeps what is expensive to rebuild between the cells of one process (dataset splits, trained
victims with their codes, protections), least recently used first out; everything else comes from the
stage cache (``benchmark.storage.cache``) by key.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from benchmark.plugins import Registry
from benchmark.storage.cache import StageCache, cached
from benchmark.victim.compute import ComputeSettings

CPU_ATTACK_BATCH = 250  # queries per attack batch on the CPU unless --attack-batch says otherwise
MEMO_SIZES = {"splits": 4, "victims": 3, "codes": 6, "protections": 4}  # per kind, in this process


class Memo:
    """A least-recently-used memo per kind of object (``MEMO_SIZES``)."""

    def __init__(self, sizes: dict[str, int] | None = None):
        self.sizes = dict(sizes or MEMO_SIZES)
        self.entries: dict[str, OrderedDict] = {kind: OrderedDict() for kind in self.sizes}

    def get(self, kind: str, key, compute: Callable[[], object]):
        entries = self.entries[kind]
        if key in entries:
            entries.move_to_end(key)
            return entries[key]
        value = compute()
        entries[key] = value
        while len(entries) > self.sizes[kind]:
            entries.popitem(last=False)
        return value

    def forget(self, kind: str, key) -> None:
        """Drop one entry (a victim a plugin broke), so the next cell loads it afresh."""
        self.entries[kind].pop(key, None)


@dataclass(frozen=True)
class Session:
    registry: Registry
    cache: StageCache
    device: torch.device
    data_root: str | None
    attack_batch: int                          # queries per attack batch; 0: sized by a probe of the device (CUDA)
    progress: Callable[[str], None] = lambda message: None
    memo: Memo = field(default_factory=Memo)
    failed_victims: dict = field(default_factory=dict)  # victim key -> why its training failed in this run
    claim_timeout: float | None = None         # seconds to wait for work another process holds (None: forever)
    recompute: frozenset = frozenset()  # stages computed afresh once in this run, whatever is cached (--force)
    recomputed: set = field(default_factory=set)  # (stage, key) computed afresh in this run
    compute: ComputeSettings = field(default_factory=ComputeSettings)  # the device's class and settings (fp32)

    @classmethod
    def start(cls, registry: Registry, cache_dir: str | Path, device: torch.device, data_root: str | None = None,
              attack_batch: int = 0, progress: Callable[[str], None] | None = None,
              claim_timeout: float | None = None, report_wait: Callable[[str], None] | None = None,
              recompute: frozenset = frozenset()) -> "Session":
        """``report_wait`` is told whom a stage waits for (default: ``progress``). ``attack_batch`` 0: on CUDA,
        sized by a probe of the model and the free memory (``benchmark.victim.compute``), 250 on the CPU.
        The device's compute settings (``benchmark.victim.compute``) are applied to the process here; the
        precision of an attack's forwards is its plan's."""
        progress = progress or (lambda message: None)
        compute = ComputeSettings.for_device(device)
        compute.apply()
        return cls(registry, StageCache(cache_dir, claim_timeout, report_wait or progress), device, data_root,
                   attack_batch or (0 if device.type == "cuda" else CPU_ATTACK_BATCH), progress,
                   claim_timeout=claim_timeout, recompute=frozenset(recompute), compute=compute)

    def cached(self, stage: str, key: str, compute: Callable[[], object], **options):
        """``storage.cache.cached`` in this run's cache; a stage in ``recompute`` is computed afresh the first time
        this run needs it (once it succeeded, later cells of the run load what it saved)."""
        recompute = stage in self.recompute and (stage, key) not in self.recomputed
        value = cached(self.cache, stage, key, compute, recompute=recompute, **options)
        if recompute:
            self.recomputed.add((stage, key))
        return value

    def stage(self, message: str) -> None:
        self.progress(message)
