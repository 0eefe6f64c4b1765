"""Which folders may be a result store or a stage cache.

A store folder holds only hashbench's files: ``prune`` deletes in it and a run writes into it. The root of
the file system, the home folder, the checkout and any folder containing the checkout hold other things, so
they are refused before any work.
"""
from __future__ import annotations

from pathlib import Path

SUGGESTED = {"results": "results", "cache": ".cache"}  # each option's default, inside the checkout


class UnsafeStoreFolder(ValueError):
    """A --results or --cache folder that holds more than a store; the message says why and what to give."""


def unsafe_reason(folder: Path, checkout: Path) -> str | None:
    """Why ``folder`` cannot be a store folder, or None if it can."""
    folder, checkout = folder.expanduser().resolve(), checkout.resolve()
    if folder == Path(folder.anchor):
        return "is the root of the file system"
    if folder == Path.home().resolve():
        return "is the home folder"
    if folder == checkout:
        return "is the checkout itself"
    if checkout.is_relative_to(folder):
        return f"contains the checkout {checkout}"
    return None


def check_store_folder(folder: str | Path, what: str, checkout: str | Path) -> None:
    """Raise ``UnsafeStoreFolder`` if ``folder`` (the ``--results`` or ``--cache`` folder) is not one of its own."""
    reason = unsafe_reason(Path(folder), Path(checkout))
    if reason:
        suggestion = Path(checkout) / SUGGESTED.get(what, what)
        raise UnsafeStoreFolder(f"--{what} {folder} {reason}; a {what} folder holds only hashbench's files (a "
                                f"run writes there and prune deletes there): give a folder of its own, e.g. "
                                f"{suggestion} (the default) or a new folder")
