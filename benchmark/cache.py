"""A stage cache keyed by content: trained victims, database codes, attack preparations, cell outputs.

A key is the hash of everything a stage depends on (plugin file hashes, parameters, data split, seed,
harness version). Writes are atomic (temporary name, then rename), so a killed run never leaves a
half-written entry; an entry that cannot be read is reported, moved aside and recomputed.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import socket
import tempfile
import time
from pathlib import Path

import torch

log = logging.getLogger("hashbench")


def content_key(**parts) -> str:
    """A stable 20-hex-digit key for a JSON-serialisable description."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


TEMPORARY_PREFIX = ".tmp-"


def temporary_prefix(name: str) -> str:
    """``.tmp-<host>~<pid>~<name>.``: whose write it is, so a later run can tell a dead writer's leftovers."""
    return f"{TEMPORARY_PREFIX}{socket.gethostname()}~{os.getpid()}~{name}."


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=temporary_prefix(path.name))
    try:
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
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / f"{key}.pt"

    def load(self, stage: str, key: str):
        """The stored object, or None if absent or unreadable."""
        path = self.path(stage, key)
        if not path.exists():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            quarantine(path, f"{type(exc).__name__}: {exc}")
            return None

    def save(self, stage: str, key: str, obj) -> Path:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        path = self.path(stage, key)
        atomic_write_bytes(path, buffer.getvalue())
        return path
