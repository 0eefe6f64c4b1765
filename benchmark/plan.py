"""Planning: every grid cell resolved once into plain data that says what its stages compute.

A ``CellPlan`` names its plugins with their full parameters and source hashes, and carries the content
keys of its stages: the victim (and the surrogate, the undefended victim a defense starts from, the data
protection), and the cell itself. It is picklable, so ``run_cell(plan, workspace)`` runs it in this
process or on a Ray worker alike (see ``benchmark.cell``).

    planner = Planner(registry, data_root=None)
    plans = [planner.plan(cell) for cell in cells]

Keys hash what a stage depends on: plugin names, parameters and source files, the dataset's content
fingerprint, the seed, the harness version and the shared ``benchmark`` modules the stage runs. Every
file a cell's numbers depend on is also listed, with its hash, in ``sources`` (stored on every row), so
the leaderboard can tell a cell computed by code that has changed since.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from benchmark import HARNESS_VERSION
from benchmark.cache import content_key
from benchmark.evaluation import EvaluationConventions
from benchmark.grid import Cell
from benchmark.plugins import REPO_ROOT, Plugin, Registry, file_hash

PACKAGE_DIR = Path(__file__).resolve().parent
# The shared code each cached stage runs besides the plugin files; editing a module re-runs the stages that
# use it (and only those). Deliberate changes elsewhere in the harness bump HARNESS_VERSION.
TRAINING_CODE = ("data", "lists", "model", "hashing", "defense", "victims", "layers", "prototype", "centers")
ATTACK_CODE = ("attack", "attacking", "centers", "prototype")
TARGET_CODE = ("targets",)
EVALUATION_CODE = ("evaluation", "scoring", "metrics", "search", "flags", "cell")
EXTRA_CUTOFFS = (None, 1000, 5000)  # besides the dataset's own: the papers' cut-offs (whole database, 1000, 5000)


class StalePlan(RuntimeError):
    """A plugin file changed between planning and running."""


@dataclass(frozen=True)
class PluginChoice:
    """A configured plugin as plain data: kind, name, every parameter, and the file's hash at planning time."""

    kind: str
    name: str
    params_json: str
    source_file: str   # relative to the repository root
    source_hash: str

    @classmethod
    def of(cls, plugin: Plugin) -> "PluginChoice":
        return cls(plugin.kind, plugin.name, json.dumps(plugin.params(), sort_keys=True),
                   relative(plugin.source_file), plugin.source_hash)

    @property
    def params(self) -> dict:
        return json.loads(self.params_json)

    def identity(self) -> list:
        return [self.name, self.params, self.source_hash]

    def configure(self, registry: Registry):
        plugin = registry.get(self.kind, self.name)
        if plugin.source_hash != self.source_hash:
            raise StalePlan(f"{self.kind} plugin {self.name!r} ({self.source_file}) changed after the grid was "
                            f"planned; run the command again")
        return plugin.configure(self.params)


@dataclass(frozen=True)
class ProtectionPlan:
    """A data protection (PPL's generator) trained on one dataset's training set."""

    key: str
    dataset: PluginChoice
    defense: PluginChoice
    seed: int


@dataclass(frozen=True)
class VictimPlan:
    """A trained hashing model: what trains it, on which data, from which start."""

    key: str
    dataset: PluginChoice
    hashing: PluginChoice
    defense: PluginChoice              # the training procedure (protections train with "none")
    backbone: str
    bits: int
    seed: int
    train_data: str = "clean"
    protection: ProtectionPlan | None = None   # set when train_data is "protected"
    start: "VictimPlan | None" = None          # the undefended victim a ``starts_from_victim`` defense begins from
    split: str = field(default="", compare=False)  # the cell's split (its queries and database are encoded);
    # not in the key: a victim depends on its training set alone, so query subsets share it

    def label(self) -> str:
        defense = "" if self.defense.name == "none" else f"+{self.defense.name}"
        trained = "" if self.train_data == "clean" else f" (trained on {self.train_data} data)"
        return f"{self.hashing.name}/{self.backbone}/{self.bits}{defense}{trained}"


@dataclass(frozen=True)
class CellPlan:
    cell: Cell
    key: str                           # the scored cell: the attack stage's key, evaluation code, conventions
    attack_key: str                    # the attack stage: adversarial codes, perturbation, timing (cached)
    victim: VictimPlan
    surrogate: VictimPlan | None       # None: the victim itself (white box)
    attack: PluginChoice
    protection: ProtectionPlan | None  # the cell's protection, when its defense is one
    conventions: EvaluationConventions
    data_identity: dict
    sources: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def attacker(self) -> VictimPlan:
        return self.surrogate or self.victim


def relative(path: str | Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def module_hashes(modules: tuple[str, ...]) -> dict[str, str]:
    """{benchmark/<module>.py: hash} of the shared modules (a module not present hashes as 'absent')."""
    out = {}
    for module in modules:
        path = PACKAGE_DIR / f"{module}.py"
        out[f"benchmark/{module}.py"] = file_hash(path)[:16] if path.exists() else "absent"
    return out


def code_hash(modules: tuple[str, ...]) -> str:
    """Hash of the shared ``benchmark`` modules a stage runs besides the plugin files."""
    return content_key(files=sorted(module_hashes(modules).items()))


class Planner:
    """Resolves cells into plans; loads each dataset once (its content fingerprint is part of every key)."""

    def __init__(self, registry: Registry, data_root: str | None = None,
                 conventions: EvaluationConventions | None = None):
        self.registry = registry
        self.data_root = data_root
        self.conventions = conventions or EvaluationConventions()
        self._datasets: dict[str, tuple[PluginChoice, dict]] = {}

    def choice(self, kind: str, name: str, cell: Cell) -> PluginChoice:
        return PluginChoice.of(self.registry.get(kind, name).configure(cell.overrides(kind, name)))

    def dataset(self, cell: Cell) -> tuple[PluginChoice, dict]:
        """The dataset's choice and identity (name, parameters, source, content fingerprint, sizes)."""
        choice = self.choice("datasets", cell.dataset, cell)
        if choice.params_json + choice.name not in self._datasets:
            plugin = choice.configure(self.registry)
            splits = plugin.splits(self.data_root)
            identity = {"name": choice.name, "params": choice.params, "source": choice.source_hash,
                        "split": splits.fingerprint(), "label": plugin.label(), **splits.sizes(),
                        "training": {"name": choice.name, "source": choice.source_hash,
                                     "train": splits.train.fingerprint(), "mean": splits.mean, "std": splits.std,
                                     "shape": list(splits.image_shape()), "classes": splits.num_classes}}
            self._datasets[choice.params_json + choice.name] = (choice, identity)
        return self._datasets[choice.params_json + choice.name]

    def protection(self, cell: Cell) -> ProtectionPlan | None:
        """The protection's plan; its key leaves out the parameters that only change the release."""
        defense = self.choice("defenses", cell.defense, cell)
        plugin = self.registry.get("defenses", cell.defense)
        if not plugin.protects:
            return None
        dataset, identity = self.dataset(cell)
        learned = {k: v for k, v in defense.params.items() if k not in plugin.release_parameters}
        key = content_key(stage="protection", harness=HARNESS_VERSION, code=code_hash(TRAINING_CODE),
                          dataset=identity["training"], defense=[defense.name, learned, defense.source_hash],
                          seed=cell.seed)
        return ProtectionPlan(key, dataset, defense, cell.seed)

    def victim(self, cell: Cell, hashing: str, backbone: str, bits: int, defense: str,
               train_data: str = "clean") -> VictimPlan:
        dataset, identity = self.dataset(cell)
        method = self.choice("hashing", hashing, cell)
        defense_class = self.registry.get("defenses", defense)
        protection = None
        if defense_class.protects:  # a protection's victims train by the method's own procedure
            protection = self.protection(cell) if train_data == "protected" else None
            defense = "none"
        training = self.choice("defenses", defense, cell)
        start = None
        if self.registry.get("defenses", defense).starts_from_victim:
            start = self.victim(cell, hashing, backbone, bits, "none")
        parts = dict(stage="victim", harness=HARNESS_VERSION, code=code_hash(TRAINING_CODE),
                     dataset=identity["training"], hashing=method.identity(), defense=training.identity(),
                     backbone=backbone, bits=bits,
                     seed=cell.seed)
        if protection is not None:
            parts.update(train_data=train_data, protection=protection.key)
        if start is not None:
            parts.update(start=start.key)
        return VictimPlan(content_key(**parts), dataset, method, training, backbone, bits, cell.seed,
                          train_data if protection is not None else "clean", protection, start, identity["split"])

    def surrogate(self, cell: Cell) -> VictimPlan | None:
        if cell.surrogate == "self":
            return None
        parts = cell.surrogate.split("/")
        if len(parts) != 3 or not parts[2].isdigit() or int(parts[2]) < 1:
            raise ValueError(f"surrogate {cell.surrogate!r} is malformed; write 'self' or HASHING/BACKBONE/BITS, "
                             f"e.g. hashnet/vgg11/32")
        self.registry.get("hashing", parts[0])
        return self.victim(cell, parts[0], parts[1], int(parts[2]), "none")

    def plan(self, cell: Cell) -> CellPlan:
        dataset, identity = self.dataset(cell)
        victim = self.victim(cell, cell.hashing, cell.backbone, cell.bits, cell.defense, cell.train_data)
        surrogate = self.surrogate(cell)
        attack = self.choice("attacks", cell.attack, cell)
        protection = self.protection(cell)
        attack_key = content_key(stage="attack", harness=HARNESS_VERSION, code=code_hash(ATTACK_CODE + TARGET_CODE),
                                 dataset={k: v for k, v in identity.items() if k != "training"}, victim=victim.key, surrogate=surrogate.key if surrogate else "self",
                                 attack=attack.identity(), epsilon=cell.epsilon, scenario=cell.scenario,
                                 protection=([protection.key, protection.defense.params]
                                             if protection and cell.scenario != "c2c" else None),
                                 target_rule=cell.target_rule)
        key = content_key(stage="cell", harness=HARNESS_VERSION, attack=attack_key, code=code_hash(EVALUATION_CODE),
                          conventions=self.conventions.as_dict())
        return CellPlan(cell, key, attack_key, victim, surrogate, attack, protection, self.conventions, identity,
                        self.sources(victim, surrogate, attack, protection))

    def sources(self, victim: VictimPlan, surrogate: VictimPlan | None, attack: PluginChoice,
                protection: ProtectionPlan | None) -> dict[str, str]:
        """Every file the cell's numbers depend on, with its hash (16 hex digits)."""
        files = {}
        for plan in filter(None, (victim, surrogate, victim.start, surrogate and surrogate.start)):
            for choice in (plan.dataset, plan.hashing, plan.defense):
                files[choice.source_file] = choice.source_hash[:16]
        for choice in filter(None, (attack, protection and protection.defense,
                                    victim.protection and victim.protection.defense)):
            files[choice.source_file] = choice.source_hash[:16]
        modules = module_hashes(TRAINING_CODE + ATTACK_CODE + TARGET_CODE + EVALUATION_CODE)
        files.update({path: digest for path, digest in modules.items() if digest != "absent"})
        return dict(sorted(files.items()))
