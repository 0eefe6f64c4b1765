"""Grid presets, filters and cells.

A preset is a TOML file in ``grids/``: a list of blocks, each the cartesian product of its axes, with
plugin parameter overrides per block. Everything is checked here, before any computation: unknown
plugins, axes, parameters and malformed filters give a ValueError naming the input and what would be
accepted.

    [[block]]
    dataset = "fashion_mnist"
    hashing = ["dpsh"]
    bits = [16, 32]
    attack = ["none", "pgd", "dhta"]    # "*" = every attack plugin found
    epsilon = ["8/255", "16/255"]
    [block.params.attacks.dhta]
    iterations = 300
"""
from __future__ import annotations

import itertools
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from benchmark.model import parse_backbone
from benchmark.plugins import REPO_ROOT, Registry, parse_fraction

GRID_FOLDER = REPO_ROOT / "grids"
AXES = ("dataset", "hashing", "backbone", "bits", "defense", "attack", "epsilon", "surrogate", "scenario", "seed")
AXIS_DEFAULTS = {"backbone": "smallcnn", "defense": "none", "surrogate": "self", "scenario": "a2c", "seed": 0,
                 "epsilon": "8/255"}
PLUGIN_AXES = {"dataset": "datasets", "hashing": "hashing", "defense": "defenses", "attack": "attacks"}
SCENARIOS = ("a2c", "c2c", "c2a", "a2a")


@dataclass(frozen=True)
class Cell:
    dataset: str
    hashing: str
    backbone: str
    bits: int
    defense: str
    attack: str
    epsilon: float
    surrogate: str
    scenario: str
    seed: int
    params_json: str = field(default="{}", compare=True)  # {kind: {plugin: {param: value}}} for this block

    @property
    def params(self) -> dict:
        return json.loads(self.params_json)

    def overrides(self, kind: str, name: str) -> dict:
        return self.params.get(kind, {}).get(name, {})

    def describe(self) -> str:
        eps = f" eps={self.epsilon * 255:.3g}/255" if self.epsilon else ""
        sur = "" if self.surrogate == "self" else f" from {self.surrogate}"
        defense = "" if self.defense == "none" else f" +{self.defense}"
        return f"{self.dataset} {self.hashing}/{self.backbone}/{self.bits}{defense} {self.attack}{eps}{sur}"


def grid_names() -> list[str]:
    return sorted(p.stem for p in GRID_FOLDER.glob("*.toml"))


def load_preset(name_or_path: str) -> dict:
    path = Path(name_or_path)
    if not path.suffix:
        path = GRID_FOLDER / f"{name_or_path}.toml"
    if not path.exists():
        raise ValueError(f"unknown grid {name_or_path!r}; presets: {', '.join(grid_names())} (or a path to a .toml file)")
    try:
        preset = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"grid file {path} is not valid TOML: {exc}") from None
    if not preset.get("block"):
        raise ValueError(f"grid file {path} has no [[block]] table")
    return preset


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def parse_axis_value(axis: str, value) -> object:
    try:
        if axis in ("bits", "seed"):
            return int(value)
        if axis == "epsilon":
            return parse_fraction(value) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{axis} value {value!r} is not a {'number' if axis == 'epsilon' else 'whole number'}"
                         + (" (e.g. 8/255 or 0.03)" if axis == "epsilon" else "")) from None
    return str(value)


def parse_filters(filters: list[str]) -> dict[str, set]:
    """``["attack=pgd,dhta", "bits=32"]`` -> {"attack": {"pgd", "dhta"}, "bits": {32}}."""
    parsed: dict[str, set] = {}
    for text in filters:
        if "=" not in text:
            raise ValueError(f"--only {text!r} is malformed; write AXIS=VALUE[,VALUE...], e.g. --only attack=pgd,dhta "
                             f"(axes: {', '.join(AXES)})")
        axis, values = text.split("=", 1)
        axis = axis.strip()
        if axis not in AXES:
            raise ValueError(f"--only {text!r}: unknown axis {axis!r}; axes: {', '.join(AXES)}")
        items = [v.strip() for v in values.split(",") if v.strip()]
        if not items:
            raise ValueError(f"--only {text!r} gives no value; write e.g. --only {axis}=VALUE")
        parsed.setdefault(axis, set()).update(parse_axis_value(axis, v) for v in items)
    return parsed


def parse_settings(settings: list[str]) -> dict:
    """``["attacks.dhta.iterations=500"]`` -> {"attacks": {"dhta": {"iterations": "500"}}} (coerced later)."""
    params: dict = {}
    for text in settings:
        key, sep, value = text.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 3:
            raise ValueError(f"--set {text!r} is malformed; write KIND.PLUGIN.PARAM=VALUE, "
                             f"e.g. --set attacks.dhta.iterations=500 (kinds: hashing, attacks, defenses, datasets)")
        kind, plugin, param = parts
        params.setdefault(kind, {}).setdefault(plugin, {})[param] = value.strip()
    return params


def merge_params(base: dict, extra: dict) -> dict:
    merged = json.loads(json.dumps(base))
    for kind, plugins in extra.items():
        for plugin, values in plugins.items():
            merged.setdefault(kind, {}).setdefault(plugin, {}).update(values)
    return merged


def check_params(params: dict, registry: Registry) -> None:
    for kind, plugins in params.items():
        if kind not in ("hashing", "attacks", "defenses", "datasets"):
            raise ValueError(f"parameter override for unknown kind {kind!r}; kinds: hashing, attacks, defenses, datasets")
        for name, values in plugins.items():
            registry.get(kind, name).configure(values)  # raises on unknown names and bad types


def expand(preset: dict, registry: Registry, filters: dict[str, set] | None = None,
           settings: dict | None = None) -> list[Cell]:
    """Every cell of the preset that passes the filters, validated against the plugins found."""
    cells: list[Cell] = []
    for number, block in enumerate(preset["block"], 1):
        unknown = set(block) - set(AXES) - {"params"}
        if unknown:
            raise ValueError(f"grid block {number} has unknown keys {sorted(unknown)}; axes: {', '.join(AXES)}")
        params = merge_params(block.get("params", {}), settings or {})
        check_params(params, registry)
        axes = {axis: [parse_axis_value(axis, v) for v in as_list(block.get(axis, AXIS_DEFAULTS.get(axis)))]
                for axis in AXES if block.get(axis, AXIS_DEFAULTS.get(axis)) is not None}
        missing = [a for a in AXES if a not in axes]
        if missing:
            raise ValueError(f"grid block {number} does not give {', '.join(missing)}")
        for axis, kind in PLUGIN_AXES.items():
            if "*" in axes[axis]:  # every plugin of that kind that was found
                axes[axis] = registry.names(kind)
            for name in axes[axis]:
                registry.get(kind, name)
        for backbone in axes["backbone"]:
            parse_backbone(backbone)
        for scenario in axes["scenario"]:
            if scenario not in SCENARIOS:
                raise ValueError(f"unknown scenario {scenario!r}; accepted: {', '.join(SCENARIOS)}")
        for values in itertools.product(*(axes[a] for a in AXES)):
            cell = dict(zip(AXES, values))
            if not registry.get("attacks", cell["attack"]).perturbs:
                cell["epsilon"] = 0.0
            cells.append(Cell(**cell, params_json=json.dumps(params, sort_keys=True)))
    cells = list(dict.fromkeys(cells))  # an identity attack collapses its epsilon axis
    if filters:
        for axis, kind in PLUGIN_AXES.items():
            for name in filters.get(axis, ()):
                registry.get(kind, name)
        kept = [c for c in cells if all(getattr(c, axis) in values for axis, values in filters.items())]
        if not kept:
            present = {axis: sorted({str(getattr(c, axis)) for c in cells}) for axis in filters}
            raise ValueError("the filters match no cell of this grid; it has "
                             + "; ".join(f"{axis}: {', '.join(v)}" for axis, v in present.items()))
        cells = kept
    return cells
