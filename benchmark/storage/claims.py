"""Claims on work in progress, so that two runs (two terminals, or workers sharing one cache) never compute
the same stage at the same time.

A claim is an exclusive ``fcntl`` lock on ``<cache>/claims/<stage>-<key>.lock``. The operating system
releases it when its process ends, however it ends (kill -9 included), so a dead run never blocks a live
one. The lock file itself stays (empty); it is harmless and reused.

    with claim(cache_root, "victims", key, wait=lambda: progress.stage("waiting for ...")):
        ...   # re-check the cache: the other run may have finished this stage meanwhile
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Callable, Iterator


def claim_path(cache_root: str | Path, stage: str, key: str) -> Path:
    return Path(cache_root) / "claims" / f"{stage}-{key}.lock"


@contextlib.contextmanager
def claim(cache_root: str | Path, stage: str, key: str, wait: Callable[[], None] | None = None,
          poll_seconds: float = 1.0) -> Iterator[None]:
    """Hold the claim on (stage, key) for the ``with`` block, waiting while another process holds it.

    ``wait`` is called once if the claim is held elsewhere (to say so on the progress view).
    """
    path = claim_path(cache_root, stage, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        told = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if wait and not told:
                    wait()
                    told = True
                time.sleep(poll_seconds)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        os.close(handle)


@contextlib.contextmanager
def try_claim(cache_root: str | Path, stage: str, key: str) -> Iterator[bool]:
    """Hold the claim if it is free; yields False (and holds nothing) when another process has it."""
    path = claim_path(cache_root, stage, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        os.close(handle)
