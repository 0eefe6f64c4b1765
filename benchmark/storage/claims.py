"""Claims on work in progress, so that two runs (two terminals, or workers sharing one cache) never compute
the same stage at the same time.

A claim is an exclusive ``fcntl`` lock on ``<cache>/claims/<stage>-<key>.lock``. The operating system
releases it when its process ends, however it ends (kill -9 included), so a dead run never blocks a live
one. While held, the lock file names its holder as one JSON object (pid, host, since, what); a process
waiting for the claim says who it waits for, and with ``timeout`` gives up with ``ClaimTimeout`` naming the
holder. The file is emptied on release and reused.

File systems that refuse ``flock`` (NFS without lock support, Lustre without ``-o flock``, some FUSE mounts) fail
with ``LocksUnsupported`` naming the folder and the error; ``check_lock_support`` probes for that before any
work. (NFS mounted ``nolock`` grants locks that only its own machine sees: no probe on one machine can tell.)

    with claim(cache_root, "victims", key, what="training dpsh/smallcnn 32 bits",
               wait=lambda holder: progress.note(f"waiting for {holder}"), timeout=600):
        ...   # re-check the cache: the other run may have finished this stage meanwhile
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Callable, Iterator


class ClaimTimeout(TimeoutError):
    """Another process held a claim longer than the wait allowed; the message names the holder."""


class LocksUnsupported(OSError):
    """The cache folder's file system refuses ``flock``: claims cannot work there (the message says what to do)."""


PROBE_NAME = "lock-probe"


def locked(handle: int, path: Path) -> bool:
    """Take the exclusive lock on ``handle`` if it is free: True, or False when another holder has it.
    Any other error of ``flock`` is ``LocksUnsupported``."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        raise LocksUnsupported(
            exc.errno, f"the cache folder {path.parent.parent} does not support file locks: flock on {path} failed "
                       f"with {name} ({exc.strerror or exc}). hashbench's claims lock files there so that two runs "
                       f"never compute the same stage. Use a cache folder on a local disk (--cache DIR), or mount "
                       f"the shared file system with locks (NFS with its lock service, not 'nolock'; Lustre with "
                       f"'-o flock'; a FUSE file system that supports flock)") from None
    return True


def check_lock_support(cache_root: str | Path) -> None:
    """Before any work: take and release a lock on ``<cache>/claims/lock-probe``; ``LocksUnsupported`` if refused."""
    path = Path(cache_root) / "claims" / f"{PROBE_NAME}.lock"
    handle = open_lock(path)
    try:
        if locked(handle, path):  # busy means another run probes at this moment: locks work
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        os.close(handle)


def claim_path(cache_root: str | Path, stage: str, key: str) -> Path:
    return Path(cache_root) / "claims" / f"{stage}-{key}.lock"


def open_lock(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)


def write_holder(handle: int, what: str) -> None:
    """Put this process's name on a claim it has just taken."""
    since = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since, "what": what})
    os.ftruncate(handle, 0)
    os.pwrite(handle, record.encode(), 0)


def release(handle: int) -> None:
    os.ftruncate(handle, 0)  # a later waiter must not read a holder that has gone
    fcntl.flock(handle, fcntl.LOCK_UN)


def holder_of(cache_root: str | Path, stage: str, key: str) -> str:
    """Who holds the claim, as a phrase: "pid 1234 on host h since 10:02:03 (training ...)"."""
    try:
        record = json.loads(claim_path(cache_root, stage, key).read_text() or "null")
        since = datetime.datetime.fromisoformat(record["since"]).astimezone().strftime("%H:%M:%S")
        return f"pid {record['pid']} on host {record['host']} since {since} ({record['what']})"
    except (OSError, ValueError, TypeError, KeyError):  # not written yet, or a lock file of an older version
        return f"another process (it has not named itself yet; {stage} {key})"


@contextlib.contextmanager
def claim(cache_root: str | Path, stage: str, key: str, what: str = "", wait: Callable[[str], None] | None = None,
          timeout: float | None = None, poll_seconds: float = 1.0) -> Iterator[None]:
    """Hold the claim on (stage, key) for the ``with`` block, waiting while another process holds it.

    ``what`` describes the work for anyone who waits for it (default: the stage and key). ``wait`` is called
    with the holder's description when the claim is found held (again if the holder changes). ``timeout``:
    the seconds to wait before raising ``ClaimTimeout`` (None: wait as long as it takes).
    """
    path = claim_path(cache_root, stage, key)
    handle = open_lock(path)
    try:
        told, deadline = "", None if timeout is None else time.monotonic() + timeout
        while not locked(handle, path):
            holder = holder_of(cache_root, stage, key)
            if wait and holder != told:
                wait(holder)
                told = holder
            if deadline is not None and time.monotonic() >= deadline:
                raise ClaimTimeout(f"gave up after {timeout:g} s (--claim-timeout) waiting for the claim on "
                                   f"{stage} {key}, held by {holder}") from None
            time.sleep(poll_seconds)
        write_holder(handle, what or f"{stage} {key}")
        try:
            yield
        finally:
            release(handle)
    finally:
        os.close(handle)


@contextlib.contextmanager
def try_claim(cache_root: str | Path, stage: str, key: str, what: str = "") -> Iterator[bool]:
    """Hold the claim if it is free; yields False (and holds nothing) when another process has it."""
    path = claim_path(cache_root, stage, key)
    handle = open_lock(path)
    try:
        if not locked(handle, path):
            yield False
            return
        write_holder(handle, what or f"{stage} {key}")
        try:
            yield True
        finally:
            release(handle)
    finally:
        os.close(handle)
