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
import tempfile
from pathlib import Path

import torch

log = logging.getLogger("hashbench")


def content_key(**parts) -> str:
    """A stable 20-hex-digit key for a JSON-serialisable description."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}.")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


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
