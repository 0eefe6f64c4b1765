"""The stage cache keyed by content (trained victims, codes, attack preparations and outputs, cell outputs), and
``cached``, the one load-claim-recheck-compute-save sequence every cached stage goes through.

A key is the hash of everything a stage depends on (plugin file hashes, parameters, data split, seed,
harness version). Writes are atomic (temporary name, then rename), so a killed run never leaves a
half-written entry; an entry that cannot be read is reported, moved aside and recomputed.
"""
from __future__ import annotations

import io
import logging
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from benchmark.storage.claims import claim

log = logging.getLogger("hashbench")


TEMPORARY_PREFIX = ".tmp-"


def temporary_prefix(name: str) -> str:
    """``.tmp-<host>~<pid>~<name>.``: whose write it is, so a later run can tell a dead writer's leftovers."""
    return f"{TEMPORARY_PREFIX}{socket.gethostname()}~{os.getpid()}~{name}."


def current_umask() -> int:
    """The process's umask (Linux reports it in /proc; elsewhere set and restore it, as there is no getter)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` at once or not at all; its mode is what ``open`` would give (0o666 less the umask), as
    ``mkstemp`` makes 0o600 files that the other users of a shared store could not read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=temporary_prefix(path.name))
    try:
        os.fchmod(handle, 0o666 & ~current_umask())
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def remove_dead_temporaries(root: str | Path, older_than_seconds: float = 86_400) -> list[Path]:
    """Delete the temporary files of writes that were killed (kill -9 leaves them behind).

    A temporary file of this host whose writer process is gone is removed at once; one of another host (a
    shared folder) only once it is older than ``older_than_seconds``. Returns what was removed.
    """
    removed = []
    host = socket.gethostname()
    for path in Path(root).rglob(f"{TEMPORARY_PREFIX}*"):
        parts = path.name[len(TEMPORARY_PREFIX):].split("~", 2)
        try:
            same_host_dead = parts[0] == host and not process_alive(int(parts[1]))
            stale = time.time() - path.stat().st_mtime > older_than_seconds
        except (ValueError, IndexError, FileNotFoundError):
            continue
        if same_host_dead or stale:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_writable(folder: str | Path, what: str) -> None:
    """Raise OSError with a clear message unless ``folder`` exists (or can be made) and takes a file."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=folder, prefix=temporary_prefix("probe"))
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise OSError(f"the {what} folder {folder} is not writable ({exc.strerror or exc}); choose another with "
                      f"--{'results' if what == 'results' else 'cache'} or fix its permissions") from None


def quarantine(path: Path, reason: str) -> None:
    """Move an unreadable file aside (kept for inspection) so it is recomputed."""
    target = path.with_name(f".corrupt-{path.name}")
    log.warning("cache entry %s is unreadable (%s); moved to %s and recomputing", path, reason, target.name)
    os.replace(path, target)


class StageCache:
    """``<root>/<stage>/<key>.pt`` files; each holds its stage and key, checked when it is read back.

    ``claim_timeout``: how long ``cached`` waits for a stage another process is computing (None: as long as
    it takes); ``report_wait`` is told whom it waits for ("pid 1234 on host h since 10:02:03 (...)").
    """

    def __init__(self, root: str | Path, claim_timeout: float | None = None,
                 report_wait: Callable[[str], None] | None = None):
        self.root = Path(root)
        self.claim_timeout = claim_timeout
        self.report_wait = report_wait or (lambda message: log.info("%s", message))

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / f"{key}.pt"

    def load(self, stage: str, key: str):
        """The stored value, or None if absent, unreadable or stored under another stage or key."""
        path = self.path(stage, key)
        if not path.exists():
            return None
        try:
            stored = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            quarantine(path, f"{type(exc).__name__}: {exc}")
            return None
        if not isinstance(stored, dict) or (stored.get("stage"), stored.get("key")) != (stage, key):
            found = (stored.get("stage"), stored.get("key")) if isinstance(stored, dict) else type(stored).__name__
            quarantine(path, f"it holds {found}, not {stage} {key} (copied or renamed?)")
            return None
        return stored["value"]

    def save(self, stage: str, key: str, value) -> Path:
        buffer = io.BytesIO()
        torch.save({"stage": stage, "key": key, "value": value}, buffer)
        path = self.path(stage, key)
        atomic_write_bytes(path, buffer.getvalue())
        return path


# What a process holding a stage's claim is doing, as a waiting process is told it.
STAGE_ACTIVITY = {"victims": "training victim", "protections": "training protection", "codes": "encoding codes",
                  "targets": "drawing targets", "prepared": "preparing attack", "attacks": "attacking"}


def cached(cache: StageCache, stage: str, key: str, compute: Callable[[], object],
           waiting: Callable[[], None] | None = None, store: Callable[[object], bool] = lambda value: True,
           *, recompute: bool = False):
    """A stage's value: loaded from the cache, or computed under the stage's claim and saved.

    Load; if absent, claim (two runs never compute one stage at once; if another run holds the claim,
    ``waiting`` is called and the cache's ``report_wait`` told who holds it), load again (that run may have
    finished it), compute, save (unless ``store`` says the value is not worth keeping), release. The cache's
    ``claim_timeout`` (the run's ``--claim-timeout``) bounds the wait: ``ClaimTimeout`` names the holder.
    ``recompute`` (``--force``) skips both loads but still claims and saves; a compute that raises leaves the
    stored value as it was.
    """
    value = None if recompute else cache.load(stage, key)
    if value is not None:
        return value

    def held_elsewhere(holder: str) -> None:
        if waiting:
            waiting()
        cache.report_wait(f"waiting for {holder}")

    what = f"{STAGE_ACTIVITY.get(stage, stage)} {key}"
    with claim(cache.root, stage, key, what=what, wait=held_elsewhere, timeout=cache.claim_timeout):
        value = None if recompute else cache.load(stage, key)
        if value is None:
            value = compute()
            if store(value):
                cache.save(stage, key, value)
    return value
