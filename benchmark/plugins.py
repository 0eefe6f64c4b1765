"""Plugin base class and discovery by file path.

A plugin is one ``.py`` file in ``methods/hashing/``, ``methods/attacks/``, ``methods/defenses/`` or
``datasets/`` that defines one subclass of the matching base class. Its defaults are typed class
attributes, declared once; the harness sets overrides on the instance and rejects unknown keys and
wrong types. Files are imported by path (never as ``import datasets``), and a file that fails to import
is reported with its path and error and skipped.

    python bench.py list      # shows every plugin found, and every file that failed
"""
from __future__ import annotations

import hashlib
import importlib.util
import inspect
import logging
import math
import sys
import traceback
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("hashbench")

REPO_ROOT = Path(__file__).resolve().parent.parent

# kind -> folder relative to the plugin root
PLUGIN_FOLDERS = {
    "hashing": "methods/hashing",
    "attacks": "methods/attacks",
    "defenses": "methods/defenses",
    "datasets": "datasets",
}

_META = {"name", "paper", "url", "kind", "source_file", "source_hash", "axis_parameters"}


@dataclass(frozen=True)
class Range:
    """Accepted interval of a numeric parameter: ``iterations: Annotated[int, Range(1)] = 2000``.

    Without an annotation a numeric parameter must be >= 0 (no count, size, rate or weight of the papers
    is negative); ``Range(None)`` lifts that.
    """

    low: float | None = 0
    high: float | None = None
    low_open: bool = False  # True: the low end itself is excluded (a learning rate > 0)

    def check(self, value: float, where: str) -> None:
        below = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        above = self.high is not None and value > self.high
        if below or above or not math.isfinite(value):
            raise ValueError(f"{where} must be {self.describe()}; got {value!r}")

    def describe(self) -> str:
        low = "" if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        high = "" if self.high is None else f"<= {self.high:g}"
        return " and ".join(p for p in (low, high) if p) or "a number"


@dataclass(frozen=True)
class OneOf:
    """The accepted values of a string parameter: ``step_rule: Annotated[str, OneOf("sign", "l2")] = "sign"``."""

    values: tuple[str, ...]

    def __init__(self, *values: str):
        object.__setattr__(self, "values", tuple(values))

    def check(self, value: str, where: str) -> None:
        if value not in self.values:
            raise ValueError(f"{where} must be one of {', '.join(map(repr, self.values))}; got {value!r}")


NON_NEGATIVE = Range(0)


BASES: dict[str, type["Plugin"]] = {}  # kind -> its base class, filled as the bases are defined


def base_classes() -> dict[str, type["Plugin"]]:
    missing = [kind for kind in PLUGIN_FOLDERS if kind not in BASES]
    if missing:  # the bases register when ``benchmark`` is imported; this module alone has none
        raise RuntimeError(f"no plugin base for {', '.join(missing)}: import benchmark first")
    return dict(BASES)


class Plugin:
    """Base of every plugin: identity as literal class attributes, defaults as typed attributes."""

    kind: typing.ClassVar[str] = ""
    name: typing.ClassVar[str] = ""
    paper: typing.ClassVar[str] = ""
    url: typing.ClassVar[str] = ""
    source_file: typing.ClassVar[str] = ""
    source_hash: typing.ClassVar[str] = ""
    axis_parameters: typing.ClassVar[tuple[str, ...]] = ()  # set by the harness from a grid axis, not a label

    def __init_subclass__(cls, base: bool = False, **kwargs):
        super().__init_subclass__(**kwargs)
        if base:  # a kind's base (``class Attack(Plugin, base=True)``), not a plugin
            BASES[cls.kind] = cls

    @classmethod
    def parameter_types(cls) -> dict[str, type]:
        """Each parameter's type, ``Annotated`` constraints stripped (``parameter_checks`` has them)."""
        return {key: strip_annotation(hint) for key, hint in cls._parameter_hints().items()}

    @classmethod
    def _parameter_hints(cls) -> dict[str, object]:
        hints = typing.get_type_hints(cls, include_extras=True)
        return {
            key: hint for key, hint in hints.items()
            if not key.startswith("_") and key not in _META
            and typing.get_origin(hint) is not typing.ClassVar
        }

    @classmethod
    def parameter_checks(cls) -> dict[str, list]:
        """Each parameter's constraints: its ``Range``/``OneOf`` annotations, else >= 0 for numbers."""
        checks = {}
        for key, hint in cls._parameter_hints().items():
            declared = [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, (Range, OneOf))]
            base = strip_annotation(hint)
            numeric = base in (int, float) or (typing.get_origin(base) in (typing.Union, types.UnionType)
                                               and set(typing.get_args(base)) & {int, float})
            if not any(isinstance(m, Range) for m in declared) and numeric:
                declared.append(NON_NEGATIVE)
            checks[key] = declared
        return checks

    @classmethod
    def defaults(cls) -> dict[str, object]:
        return {key: getattr(cls, key) for key in cls.parameter_types()}

    @classmethod
    def configure(cls, overrides: dict | None = None):
        """An instance with ``overrides`` applied after checking names and types."""
        instance = cls()
        types = cls.parameter_types()
        checks = cls.parameter_checks()
        for key, value in (overrides or {}).items():
            if key not in types:
                raise ValueError(
                    f"{cls.kind} plugin {cls.name!r} has no parameter {key!r}; "
                    f"it accepts: {', '.join(sorted(types)) or '(none)'}")
            value = coerce(value, types[key], f"{cls.name}.{key}")
            if value is not None:
                for check in checks[key]:
                    check.check(value, f"{cls.name}.{key}")
            setattr(instance, key, value)
        return instance

    def params(self) -> dict[str, object]:
        return {key: getattr(self, key) for key in self.parameter_types()}

    def label(self) -> str:
        """``name[k=v,...]`` with the non-default parameters in sorted key order (grid axes left out)."""
        changed = {k: v for k, v in self.params().items()
                   if v != getattr(type(self), k) and k not in self.axis_parameters}
        if not changed:
            return self.name
        return f"{self.name}[{','.join(f'{k}={format_value(v)}' for k, v in sorted(changed.items()))}]"


def strip_annotation(hint: object) -> object:
    """``Annotated[int, Range(1)]`` -> ``int``."""
    return typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Annotated else hint


def format_value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def coerce(value: object, hint: object, where: str) -> object:
    """Accept ``value`` for an attribute typed ``hint``: exact type, int for float, or a str parse."""
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    for kind in allowed:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
                return value.lower() in ("true", "1")
        elif kind is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lstrip("-").isdigit():
                return int(value)
        elif kind is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, str):
                try:
                    return parse_fraction(value)
                except ValueError:
                    pass
        elif kind is str:
            if isinstance(value, str):
                return value
        elif isinstance(kind, type) and isinstance(value, kind):
            return value
    names = ", ".join(getattr(k, "__name__", str(k)) for k in allowed)
    raise ValueError(f"{where} must be {names}; got {value!r} ({type(value).__name__})")


def parse_fraction(text: str) -> float:
    """'8/255' -> 0.0313..., '0.3' -> 0.3."""
    text = text.strip()
    if "/" in text:
        num, den = text.split("/", 1)
        if float(den) == 0:
            raise ValueError(f"{text!r} divides by zero")
        return float(num) / float(den)
    return float(text)


@dataclass
class PluginFailure:
    kind: str
    path: Path
    error: str

    def __str__(self) -> str:
        return f"{self.kind} plugin file {self.path} was skipped: {self.error}"


@dataclass
class Registry:
    """Every plugin found under ``root``, by kind and name, and the files that failed."""

    root: Path = REPO_ROOT
    plugins: dict[str, dict[str, type[Plugin]]] = field(default_factory=dict)
    failures: list[PluginFailure] = field(default_factory=list)

    @classmethod
    def discover(cls, root: Path | None = None, bases: dict[str, type[Plugin]] | None = None) -> "Registry":
        registry = cls(root=Path(root) if root else REPO_ROOT)
        for kind, folder in PLUGIN_FOLDERS.items():
            base = (bases or base_classes())[kind]
            registry.plugins[kind] = {}
            for path in sorted((registry.root / folder).glob("*.py")):
                if path.name.startswith("_"):
                    continue
                try:
                    plugin = load_plugin_file(path, kind, base)
                except Exception as exc:  # a broken plugin must not stop the others
                    failure = PluginFailure(kind, path, describe_exception(exc, path))
                    registry.failures.append(failure)
                    log.warning("%s", failure)
                    continue
                registry.plugins[kind][plugin.name] = plugin
        return registry

    @classmethod
    def load_one(cls, kind: str, name: str, root: Path | None = None,
                 bases: dict[str, type[Plugin]] | None = None) -> type[Plugin]:
        """The plugin class in ``<root>/<folder of kind>/<name>.py``, importing only that file (not every plugin).

        Errors read as ``get``'s: an unknown name lists the plugins in the folder, and a file that fails to
        import raises ``ValueError`` naming the failure.
        """
        if kind not in PLUGIN_FOLDERS:
            raise ValueError(f"unknown plugin kind {kind!r}; known: {', '.join(PLUGIN_FOLDERS)}")
        folder = (Path(root) if root else REPO_ROOT) / PLUGIN_FOLDERS[kind]
        path = folder / f"{name}.py"
        if not name.isidentifier() or name.startswith("_") or not path.is_file():
            found = sorted(p.stem for p in folder.glob("*.py") if not p.name.startswith("_"))
            raise ValueError(f"unknown {kind} plugin {name!r}; found: {', '.join(found) or '(none)'} (in {folder})")
        try:
            return load_plugin_file(path, kind, (bases or base_classes())[kind])
        except Exception as exc:
            raise ValueError(f"{kind} plugin {name!r} failed to load: {describe_exception(exc, path)}") from exc

    def get(self, kind: str, name: str) -> type[Plugin]:
        found = self.plugins.get(kind, {})
        if name in found:
            return found[name]
        broken = [f for f in self.failures if f.kind == kind and f.path.stem == name]
        if broken:
            raise ValueError(f"{kind} plugin {name!r} failed to load: {broken[0].error}")
        raise ValueError(
            f"unknown {kind} plugin {name!r}; found: {', '.join(sorted(found)) or '(none)'} "
            f"(in {self.root / PLUGIN_FOLDERS[kind]})")

    def names(self, kind: str) -> list[str]:
        return sorted(self.plugins.get(kind, {}))


def describe_exception(exc: BaseException, plugin_file: Path) -> str:
    """The error, and where in ``plugin_file`` it came from: the deepest frame of the traceback in that file (a
    frame in the harness or a library below it says less about what to fix), or the line of a syntax error."""
    line = plugin_line(exc, Path(plugin_file))
    where = f"{plugin_file}, line {line}" if line else str(plugin_file)
    return f"{type(exc).__name__}: {exc} ({where})"


def plugin_line(exc: BaseException, plugin_file: Path) -> int | None:
    if isinstance(exc, SyntaxError) and exc.filename and same_file(exc.filename, plugin_file):
        return exc.lineno
    frames = traceback.extract_tb(exc.__traceback__)
    lines = [frame.lineno for frame in frames if same_file(frame.filename, plugin_file)]
    return lines[-1] if lines else None


def same_file(name: str, path: Path) -> bool:
    try:
        return Path(name).resolve() == path.resolve()
    except OSError:
        return False


def class_line(cls: type) -> int | str:
    try:
        return inspect.getsourcelines(cls)[1]
    except (OSError, TypeError):
        return "?"


def file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_plugin_file(path: Path, kind: str, base: type[Plugin]) -> type[Plugin]:
    module_name = f"hashbench_plugins.{kind}.{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except SystemExit as exc:  # a plugin must not end the whole command
        sys.modules.pop(module_name, None)
        line = plugin_line(exc, path)
        raise ImportError(f"the file called sys.exit({exc.code!r}) while being imported"
                          + (f" at line {line}" if line else "")) from None
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    found = [obj for obj in vars(module).values()
             if isinstance(obj, type) and issubclass(obj, base) and obj.__module__ == module_name]
    if len(found) != 1:
        raise TypeError(f"expected exactly one subclass of {base.__name__}, found {len(found)}")
    plugin = found[0]
    if plugin.name != path.stem:
        raise TypeError(f"class {plugin.__name__} (line {class_line(plugin)}) has name={plugin.name!r}; it must equal "
                        f"the file stem {path.stem!r}")
    if not plugin.paper:
        raise TypeError(f"class {plugin.__name__} (line {class_line(plugin)}) must set paper (the citation it "
                        f"implements)")
    plugin.kind = kind
    plugin.source_file = str(path)
    plugin.source_hash = file_hash(path)
    plugin.parameter_types()  # fail now, not mid-grid, on a bad annotation
    return plugin
