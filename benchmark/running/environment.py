"""What every result row records about where it was computed."""
from __future__ import annotations

import datetime
import platform
import subprocess

import torch

from benchmark import HARNESS_VERSION
from benchmark.plugins import REPO_ROOT


def git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit + ("-dirty" if dirty else "")) if commit else "unknown"


def faiss_version() -> str:
    try:
        import faiss
    except ImportError:
        return "not installed"
    return faiss.__version__


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def environment(device: torch.device) -> dict[str, str]:
    return {
        "device": device_name(device),
        "cuda": torch.version.cuda or "" if device.type == "cuda" else "",
        "torch": torch.__version__,
        "faiss": faiss_version(),
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "harness_version": HARNESS_VERSION,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
