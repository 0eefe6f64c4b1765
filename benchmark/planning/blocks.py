"""A grid preset block by block: each block's cells (a cell two blocks share is listed under the first) and the
title its comment gives it, for ``plan``'s per-block listing and estimate.

    for title, cells in grid_blocks("paper-full", registry, filters, settings):
        ...
"""
from __future__ import annotations

import re
from pathlib import Path

from benchmark.planning.grid import GRID_FOLDER, ONLY_GRID, Cell, expand, grid_preset

BLOCK_LINE = re.compile(r"^\s*\[\[block\]\]\s*$")


def preset_path(name_or_path: str) -> Path:
    """The file ``load_preset`` reads for this name or path."""
    path = Path(name_or_path)
    return path if path.suffix else GRID_FOLDER / f"{name_or_path}.toml"


def block_titles(text: str) -> list[str]:
    """For each ``[[block]]`` of a grid file, the first line of the nearest comment paragraph above it
    (dashes and '#' stripped); blocks before any comment get ''."""
    titles, paragraph, title = [], [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            paragraph.append(stripped.lstrip("#").strip().lstrip("-").strip())
            continue
        if paragraph:
            title = paragraph[0]
            paragraph = []
        if BLOCK_LINE.match(line):
            titles.append(title)
    return titles


def grid_blocks(grid: str, registry, filters: dict | None = None,
                settings: dict | None = None) -> list[tuple[str, list[Cell]]]:
    """(title, cells) per block of the preset, the cells as ``expand`` gives them with the filters and settings
    (a ValueError names what is wrong, as ``expand``'s do)."""
    preset, left = grid_preset(grid, filters)
    kept = set(expand(preset, registry, left, settings))
    path = preset_path(grid)
    titles = block_titles(path.read_text()) if path.is_file() and grid != ONLY_GRID else ["the --only values"]
    seen: set[Cell] = set()
    blocks = []
    for number, block in enumerate(preset["block"]):
        cells = [c for c in expand({"block": [block]}, registry, None, settings) if c in kept and c not in seen]
        seen.update(cells)
        title = titles[number] if number < len(titles) else ""
        blocks.append((title, cells))
    return blocks
