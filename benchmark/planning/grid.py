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

Axes besides the plugins: ``bits`` (1..4096), ``epsilon`` (an L-inf budget in [0, 1] pixels; attacks that
are not epsilon-bounded get none), ``surrogate`` ("self" or HASHING/BACKBONE/BITS, each part checked; one that
names the cell's own undefended, clean-trained victim is "self"), ``scenario`` (a2c:
attacked queries against a clean database; with a data protection also c2c, c2a and a2a), ``train_data``
(clean, or protected by the cell's protection), ``target_rule`` (how targeted attacks' labels are drawn)
and ``seed`` (>= 0).

``--grid only`` (``ONLY_GRID``) is no preset: its one block is the ``--only`` values themselves, the axes they do
not name at their defaults, with ``--set``'s parameters and nothing else, so a command can name one cell whatever
preset computed it (the leaderboard's reproduce commands: ``leaderboard/commands.py``).
"""
from __future__ import annotations

import itertools
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from benchmark.attack.targets import TARGET_RULES
from benchmark.plugins import REPO_ROOT, Registry, parse_fraction
from benchmark.victim.model import parse_backbone

GRID_FOLDER = REPO_ROOT / "grids"
AXES = ("dataset", "hashing", "backbone", "bits", "defense", "train_data", "attack", "epsilon", "surrogate",
        "scenario", "target_rule", "seed")
AXIS_DEFAULTS = {"backbone": "smallcnn", "defense": "none", "train_data": "clean", "surrogate": "self",
                 "scenario": "a2c", "target_rule": "disjoint", "seed": 0, "epsilon": "8/255"}
PLUGIN_AXES = {"dataset": "datasets", "hashing": "hashing", "defense": "defenses", "attack": "attacks"}
SCENARIOS = ("a2c", "c2c", "c2a", "a2a")
TRAIN_DATA = ("clean", "protected")
MAX_BITS = 4096


@dataclass(frozen=True)
class Cell:
    dataset: str
    hashing: str
    backbone: str
    bits: int
    defense: str
    attack: str
    epsilon: float | None  # None: the attack is not epsilon-bounded
    surrogate: str
    scenario: str
    seed: int
    params_json: str = field(default="{}", compare=True)  # {kind: {plugin: {param: value}}} for this block
    train_data: str = "clean"
    target_rule: str = "disjoint"

    @property
    def params(self) -> dict:
        return json.loads(self.params_json)

    def overrides(self, kind: str, name: str) -> dict:
        return self.params.get(kind, {}).get(name, {})

    def describe(self) -> str:
        eps = " unbounded" if self.epsilon is None else (f" eps={self.epsilon * 255:.3g}/255" if self.epsilon else "")
        sur = "" if self.surrogate == "self" else f" from {self.surrogate}"
        defense = "" if self.defense == "none" else f" +{self.defense}"
        trained = "" if self.train_data == "clean" else f" trained on {self.train_data} data"
        scenario = "" if self.scenario == "a2c" else f" {self.scenario}"
        return (f"{self.dataset} {self.hashing}/{self.backbone}/{self.bits}{defense}{trained} "
                f"{self.attack}{eps}{sur}{scenario}")


ONLY_GRID = "only"  # --grid only: the block is the --only values (``grid_preset``)
ONLY_NEEDS = ("dataset", "hashing", "bits", "attack")  # the axes without a default


def grid_names() -> list[str]:
    return sorted(p.stem for p in GRID_FOLDER.glob("*.toml"))


def grid_preset(grid: str, filters: dict[str, set] | None) -> tuple[dict, dict[str, set] | None]:
    """(the preset ``--grid`` names, the filters still to apply to its cells). ``--grid only`` builds one block
    from the filters' values, which leaves nothing to filter (a clean cell's ε collapses to 0 as in any grid)."""
    if grid != ONLY_GRID:
        return load_preset(grid), filters
    missing = [axis for axis in ONLY_NEEDS if axis not in (filters or {})]
    if missing:
        raise ValueError(f"--grid {ONLY_GRID} builds its one block from --only, which must name "
                         f"{', '.join(missing)} (axes without a default), e.g. --grid {ONLY_GRID} "
                         f"--only dataset=fashion_mnist --only hashing=dpsh --only attack=pgd --only bits=32")
    return {"block": [{axis: sorted(values, key=str) for axis, values in filters.items()}]}, None


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
    """One axis value from a grid file or ``--only``, range-checked; ValueError names what is accepted."""
    if axis in ("bits", "seed"):
        number = _whole_number(value)
        low, high = (1, MAX_BITS) if axis == "bits" else (0, 2 ** 63 - 1)
        if number is None or not low <= number <= high:
            raise ValueError(f"{axis} value {value!r} is not a whole number in {low}..{high if axis == 'bits' else ''}"
                             .rstrip(".") + (" (e.g. 16, 32, 64)" if axis == "bits" else ""))
        return number
    if axis == "epsilon":
        try:
            number = parse_fraction(value) if isinstance(value, str) else float(value)
        except (TypeError, ValueError, ZeroDivisionError):
            number = None
        if isinstance(value, bool) or number is None or not 0 <= number <= 1:
            raise ValueError(f"epsilon value {value!r} is not a number in [0, 1] (an L-inf budget in [0, 1] "
                             f"pixels, e.g. 8/255 or 0.03)")
        return number
    if axis == "surrogate":
        return parse_surrogate(value)
    accepted = {"scenario": SCENARIOS, "train_data": TRAIN_DATA, "target_rule": TARGET_RULES}.get(axis)
    if accepted is not None and value not in accepted:
        raise ValueError(f"unknown {axis} {value!r}; accepted: {', '.join(accepted)}")
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{axis} value {value!r} must be a non-empty name")
    if axis == "backbone":
        parse_backbone(value)
    return value


def parse_surrogate(value) -> str:
    """"self", or HASHING/BACKBONE/BITS with a known backbone and whole positive bits, written canonically
    ("dpsh/smallcnn/032" -> "dpsh/smallcnn/32"); the hashing method is checked against the plugins in ``expand``."""
    parts = value.split("/") if isinstance(value, str) else []
    if value == "self":
        return value
    if len(parts) != 3 or not parts[0]:
        raise ValueError(f"surrogate {value!r} is malformed; write 'self' (white box) or HASHING/BACKBONE/BITS, "
                         f"e.g. dpsh/smallcnn_fc500/32")
    method, backbone, bits = parts
    try:
        parse_backbone(backbone)
    except ValueError as exc:
        raise ValueError(f"surrogate {value!r}: {exc}") from None
    number = _whole_number(bits)
    if number is None or not 1 <= number <= MAX_BITS:
        raise ValueError(f"surrogate {value!r}: its bits {bits!r} are not a whole number in 1..{MAX_BITS} "
                         f"(e.g. 16, 32, 64)")
    return f"{method}/{backbone}/{number}"


def surrogate_method(surrogate: str) -> str | None:
    return None if surrogate == "self" else surrogate.split("/")[0]


def _whole_number(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


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
            plugin = registry.get(kind, name)
            for key in values:
                if key in plugin.axis_parameters:
                    raise ValueError(f"{kind}.{name}.{key} is the grid's {key} axis, not a parameter: set it with "
                                     f"{key} = [...] in the grid block or --only {key}=VALUE")
            plugin.configure(values)  # raises on unknown names, bad types and values out of range


def check_surrogate_methods(surrogates, registry: Registry) -> None:
    """Each surrogate's hashing method is a plugin that was found (``parse_surrogate`` checked the rest)."""
    for surrogate in surrogates:
        method = surrogate_method(surrogate)
        if method is None:
            continue
        try:
            registry.get("hashing", method)
        except ValueError as exc:
            raise ValueError(f"surrogate {surrogate!r}: {exc}") from None


def is_itself(cell: dict) -> bool:
    """Whether the cell's surrogate names its own victim (a white-box cell spelled as a transfer one)."""
    own = f"{cell['hashing']}/{cell['backbone']}/{cell['bits']}"
    return cell["surrogate"] == own and cell["defense"] == "none" and cell["train_data"] == "clean"


def check_cell(cell: dict, registry: Registry, params: dict) -> None:
    """Refuse combinations that cannot be computed honestly, before any work."""
    protects = registry.get("defenses", cell["defense"]).protects
    if protects and cell["attack"] != "none":
        raise ValueError(f"defense {cell['defense']!r} is a data protection: its cells compare clean and protected "
                         f"queries and databases by scenario, so their attack must be 'none' (got {cell['attack']!r})")
    if not protects and cell["scenario"] != "a2c":
        raise ValueError(f"scenario {cell['scenario']!r} needs a data protection on the defense axis (e.g. ppl); "
                         f"attack {cell['attack']!r} perturbs the queries only, so its cells are scenario 'a2c' "
                         f"(accepted scenarios with a protection: {', '.join(SCENARIOS)})")
    if not protects and cell["train_data"] != "clean":
        raise ValueError(f"train_data {cell['train_data']!r} needs a data protection on the defense axis (e.g. ppl); "
                         f"defense {cell['defense']!r} trains on clean data")


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
        check_surrogate_methods(axes["surrogate"], registry)
        bounded = {name: registry.get("attacks", name).configure(params.get("attacks", {}).get(name)).is_bounded()
                   for name in axes["attack"]}
        for values in itertools.product(*(axes[a] for a in AXES)):
            cell = dict(zip(AXES, values))
            check_cell(cell, registry, params)
            if not registry.get("attacks", cell["attack"]).perturbs:
                cell["epsilon"], cell["surrogate"] = 0.0, "self"  # clean queries: no budget, nothing crafts them
            elif not bounded[cell["attack"]]:
                cell["epsilon"] = None
            if is_itself(cell):
                cell["surrogate"] = "self"
            cells.append(Cell(**cell, params_json=json.dumps(params, sort_keys=True)))
    cells = list(dict.fromkeys(cells))  # an identity or unbounded attack collapses its epsilon axis
    if filters:
        for axis, kind in PLUGIN_AXES.items():
            for name in filters.get(axis, ()):
                registry.get(kind, name)
        check_surrogate_methods(filters.get("surrogate", ()), registry)
        kept = [c for c in cells if all(getattr(c, axis) in values for axis, values in filters.items())]
        if not kept:
            present = {axis: sorted({str(getattr(c, axis)) for c in cells}) for axis in filters}
            raise ValueError("the filters match no cell of this grid; it has "
                             + "; ".join(f"{axis}: {', '.join(v)}" for axis, v in present.items()))
        cells = kept
    return cells
