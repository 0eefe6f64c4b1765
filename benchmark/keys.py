"""Content keys, and the code each cached stage runs, read from the imports.

A stage's key hashes what it computes from (plugin names, parameters and files, data fingerprints, seeds,
the keys of the stages before it) and the code it runs: every file of its own subpackage, and every harness
module that those files or the stage's plugins import, followed transitively. Imports are read from the
source (``ast``), so a lazy import inside a function counts, and nothing is listed by hand: code moved
between files moves between keys with it. A module that an import names but that does not exist is an
error, never left out.

    stage_code("victim", plugin_files=[dpsh_file, none_file])   # {"benchmark/victim/train.py": hash, ...}

The modules outside every stage (``OUTSIDE_STAGES``) plan, run and store cells: they compute no number, so
they are neither hashed nor followed (a test checks that every other harness module belongs to a stage).
"""
from __future__ import annotations

import ast
import functools
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from benchmark.plugins import file_hash

HARNESS_VERSION = "5"  # 5: device class and precision settings in the device stages' keys; 4: stage packages,
# keys read from imports, prepare seeded by identity; 3: attack draws
# seeded by the cell identity; 2: victim init seeded by the cell seed
PACKAGE_DIR = Path(__file__).resolve().parent

# The subpackages (or top-level modules) whose files a cached stage runs, besides what they import.
STAGE_CODE = {
    "protection": ("victim",),
    "victim": ("victim",),
    "codes": ("encoding",),
    "targets": ("attack/targets.py",),
    "prepare": ("attack",),
    "attack": ("attack",),
    "cell": ("scoring", "cell.py", "rows.py"),
    "loaded": ("external",),   # a model trained elsewhere, loaded in place of a trained victim
}
OUTSIDE_STAGES = {
    "__init__.py": "re-exports the plugin API; a plugin's key follows the module each name it imports comes from",
    "keys.py": "computes the keys themselves (HARNESS_VERSION is in every key)",
    "api.py": "the Python API (hashbench.evaluate, load_victim, export_victim): builds cells for the runner",
    "cli.py": "the command line: parses what to run and hands it to the planner and the executors",
    "session.py": "the run's configuration and memo: where stages find things, not what they compute",
    "planning": "turns grids into plans: what a plan names is in its keys",
    "running": "executors, progress and the environment recorded on rows: they order and report the work",
    "storage": "the stage cache, claims and the result store: they keep what the stages computed",
}


class MissingModule(ImportError):
    """An import names a harness module that does not exist."""


def content_key(**parts) -> str:
    """A stable 20-hex-digit key for a JSON-serialisable description."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def stage_code(stage: str, plugin_files: Iterable[str | Path] = ()) -> dict[str, str]:
    """{repository-relative path: 16-hex-digit hash} of every harness file ``stage`` runs with these plugins."""
    roots = [path for entry in STAGE_CODE[stage] for path in package_files(entry)]
    files = harness_closure([*roots, *map(Path, plugin_files)])
    return {relative(path): file_digest(path)[:16] for path in sorted(files)}


def code_hash(code: dict[str, str]) -> str:
    return content_key(files=sorted(code.items()))


def package_files(entry: str) -> list[Path]:
    """The files of a subpackage (``"attack"``) or a top-level module (``"cell.py"``); an error if absent."""
    path = PACKAGE_DIR / entry
    if path.is_dir():
        return sorted(path.rglob("*.py"))
    if path.is_file():
        return [path]
    raise MissingModule(f"stage code {entry!r} is not in {PACKAGE_DIR} (keys.STAGE_CODE names it)")


def harness_closure(starts: Iterable[Path]) -> set[Path]:
    """The harness files reachable from ``starts`` by imports (``starts`` themselves included if harness).

    Modules outside every stage (planning, running, storage) compute no number: they are neither hashed
    nor followed (a plan's types, the cache's claims).
    """
    seen: set[Path] = set()
    todo = [Path(p).resolve() for p in starts]
    while todo:
        path = todo.pop()
        if path in seen or (is_harness(path) and outside_stages(path)):
            continue
        seen.add(path)
        todo += [p for p in imported_harness_files(path) if p not in seen]
        if is_harness(path):  # importing benchmark.a.b runs benchmark/a/__init__.py first
            todo += [parent / "__init__.py" for parent in path.parents
                     if parent.is_relative_to(PACKAGE_DIR.resolve()) and (parent / "__init__.py").is_file()]
    return {path for path in seen if is_harness(path)}


def is_harness(path: Path) -> bool:
    return path.is_relative_to(PACKAGE_DIR.resolve())


def imported_harness_files(path: Path) -> tuple[Path, ...]:
    stat = path.stat()
    return _imports(str(path), stat.st_mtime_ns, stat.st_size, str(PACKAGE_DIR))


@functools.lru_cache(maxsize=4096)
def _imports(path: str, mtime_ns: int, size: int, package_dir: str) -> tuple[Path, ...]:
    """Every harness file that ``path`` imports (re-read when the file changes)."""
    tree = ast.parse(Path(path).read_text(), filename=path)
    found: list[Path] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [module_file(alias.name, path) for alias in node.names if is_harness_name(alias.name)]
        elif isinstance(node, ast.ImportFrom):
            module = absolute_module(node, path)
            if not is_harness_name(module):
                continue
            for alias in node.names:
                found.append(imported_name_file(module, alias.name, path))
    return tuple(found)


def is_harness_name(module: str | None) -> bool:
    return bool(module) and (module == PACKAGE_DIR.name or module.startswith(PACKAGE_DIR.name + "."))


def absolute_module(node: ast.ImportFrom, path: str) -> str | None:
    if not node.level:
        return node.module
    package = module_name(Path(path)).split(".")
    base = package[:len(package) - node.level]
    return ".".join(base + ([node.module] if node.module else []))


def module_name(path: Path) -> str:
    parts = list(path.resolve().relative_to(PACKAGE_DIR.resolve().parent).with_suffix("").parts)
    return ".".join(parts)


def module_file(module: str, importer: str) -> Path:
    """The file of ``benchmark.a.b`` (``a/b.py`` or ``a/b/__init__.py``); MissingModule naming the importer."""
    relative_parts = module.split(".")[1:]
    base = PACKAGE_DIR.joinpath(*relative_parts)
    for candidate in (base.with_suffix(".py") if relative_parts else None, base / "__init__.py"):
        if candidate is not None and candidate.is_file():
            return candidate.resolve()
    raise MissingModule(f"{importer} imports {module}, which is not a module of {PACKAGE_DIR}")


def imported_name_file(module: str, name: str, importer: str) -> Path:
    """Where ``from module import name`` takes ``name`` from: a submodule, the module a package re-exports it
    from (``from benchmark import PrototypeNet`` is ``benchmark/parts/prototype.py``), or the module itself."""
    try:
        return module_file(f"{module}.{name}", importer)
    except MissingModule:
        pass
    file = module_file(module, importer)
    if file.name == "__init__.py":
        source = reexports(str(file)).get(name)
        if source is not None:
            return module_file(source, str(file))
    return file


def reexports(init_file: str) -> dict[str, str]:
    stat = Path(init_file).stat()
    return _reexports(init_file, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _reexports(init_file: str, mtime_ns: int, size: int) -> dict[str, str]:
    """{name: module} of a package ``__init__``'s ``from module import name`` lines."""
    tree = ast.parse(Path(init_file).read_text(), filename=init_file)
    out = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and is_harness_name(absolute_module(node, init_file)):
            for alias in node.names:
                out[alias.asname or alias.name] = absolute_module(node, init_file)
    return out


def harness_modules() -> list[Path]:
    return sorted(PACKAGE_DIR.rglob("*.py"))


def outside_stages(path: Path) -> bool:
    rel = path.resolve().relative_to(PACKAGE_DIR.resolve())
    return str(rel) in OUTSIDE_STAGES or rel.parts[0] in OUTSIDE_STAGES


def relative(path: Path) -> str:
    return str(path.resolve().relative_to(PACKAGE_DIR.resolve().parent))


def file_digest(path: Path) -> str:
    stat = path.stat()
    return _digest(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4096)
def _digest(path: str, mtime_ns: int, size: int) -> str:
    return file_hash(Path(path))
