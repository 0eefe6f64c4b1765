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
    attack_batch: int                          # queries per attack batch
    progress: Callable[[str], None] = lambda message: None
    memo: Memo = field(default_factory=Memo)
    failed_victims: dict = field(default_factory=dict)  # victim key -> why its training failed in this run
    claim_timeout: float | None = None         # seconds to wait for work another process holds (None: forever)
    recompute: frozenset = frozenset()  # stages computed afresh once in this run, whatever is cached (--force)
    recomputed: set = field(default_factory=set)  # (stage, key) computed afresh in this run

    @classmethod
    def start(cls, registry: Registry, cache_dir: str | Path, device: torch.device, data_root: str | None = None,
              attack_batch: int = 0, progress: Callable[[str], None] | None = None,
              claim_timeout: float | None = None, report_wait: Callable[[str], None] | None = None,
              recompute: frozenset = frozenset()) -> "Session":
        """``report_wait`` is told whom a stage waits for (default: ``progress``)."""
        progress = progress or (lambda message: None)
        return cls(registry, StageCache(cache_dir, claim_timeout, report_wait or progress), device, data_root,
                   attack_batch or (1000 if device.type == "cuda" else 250), progress, claim_timeout=claim_timeout,
                   recompute=frozenset(recompute))

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
