"""Planning: every grid cell resolved once into plain data that says what its stages compute.

A ``CellPlan`` names its plugins with their full parameters and source hashes, and carries the content
keys and seeds of its stages: the victim (and the surrogate, the undefended victim a defense starts from,
the data protection), the codes, the targets, the attack's preparation and outcome, and the scored cell
itself. It is picklable, so ``run_cell(plan, session)`` runs it in this process or on a Ray worker alike
(see ``benchmark.cell``).

    planner = Planner(registry, data_root=None, compute=session.compute)
    plans = [planner.plan(cell) for cell in cells]

Keys hash what a stage depends on: plugin names, parameters and source files, the dataset's content
fingerprint, the seed, the harness version, the keys of the stages before it, the device class and precision
settings of the stages that compute on the device (``benchmark.victim.compute``), and the harness code the stage
runs (``benchmark.keys.stage_code``: its subpackage and everything it and its plugins import). Seeds come
from the cell's identity alone, never from a key, so an edit to code changes no random draw. Every file a
cell's numbers depend on is listed, with its hash, in ``sources`` (stored on every row), so the leaderboard
can tell a cell computed by code that has changed since.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from benchmark.data.dataset import given_data_roots
from benchmark.data.fingerprints import split_identity
from benchmark.keys import HARNESS_VERSION, code_hash, content_key, stage_code
from benchmark.planning.grid import Cell
from benchmark.plugins import REPO_ROOT, Plugin, Registry
from benchmark.scoring.evaluate import EvaluationConventions
from benchmark.victim.compute import ComputeSettings

# a dataset identity's entries recorded on rows but in no key: the same contents elsewhere, or a registry that names
# more variants, give the same numbers
UNKEYED = ("folder", "split_fingerprint", "split_variant")


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
    # parameters left out of keys: where a user's file is (the plugin's ``location_parameters``; a digest of its
    # content is another parameter), so the same file elsewhere gives the same keys
    unkeyed: tuple[str, ...] = ()

    @classmethod
    def of(cls, plugin: Plugin) -> "PluginChoice":
        return cls(plugin.kind, plugin.name, json.dumps(plugin.params(), sort_keys=True),
                   relative(plugin.source_file) if plugin.source_file else "", plugin.source_hash,
                   tuple(getattr(plugin, "location_parameters", ())))

    @property
    def params(self) -> dict:
        return json.loads(self.params_json)

    def identity(self) -> list:
        params = {k: v for k, v in self.params.items() if k not in self.unkeyed} if self.unkeyed else self.params
        return [self.name, params, self.source_hash]

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
    loaded: bool = False                       # a model trained elsewhere, loaded (``benchmark.external.victim``)

    def label(self) -> str:
        defense = "" if self.defense.name == "none" else f"+{self.defense.name}"
        trained = "" if self.train_data == "clean" else f" (trained on {self.train_data} data)"
        return f"{self.hashing.name}/{self.backbone}/{self.bits}{defense}{trained}"


@dataclass(frozen=True)
class CodesPlan:
    """A victim's codes of one split's database and queries (with its diagnostics)."""

    key: str
    victim: VictimPlan
    split: str                         # the split's fingerprint


@dataclass(frozen=True)
class ReleasePlan:
    """A victim's codes of the database and queries as a protection releases them (c2a, a2c, a2a)."""

    key: str
    protection: ProtectionPlan
    seed: int                          # draws the protected share of the database


@dataclass(frozen=True)
class TargetsPlan:
    key: str
    rule: str
    seed: int


@dataclass(frozen=True)
class AttackPlan:
    """The attack stage: ``prepare`` on the attacker (cached learned state), then ``perturb`` the queries."""

    key: str                           # the outcome: adversarial codes, perturbation, timing
    attack: PluginChoice
    epsilon: float | None
    prepare_key: str                   # what ``prepare`` learned
    prepare_seed: int                  # its random draws: the attacker's identity, the attack and its parameters
    seed: int                          # ``perturb``'s random draws (random starts, anchor picks): the cell's identity
    precision: str = "fp32"            # the attack's forwards: fp32, or bf16 autocast (``ComputeSettings.precision``)


@dataclass(frozen=True)
class CellPlan:
    cell: Cell
    key: str                           # the scored cell: the attack stage's key, scoring code, conventions
    victim: VictimPlan
    codes: CodesPlan
    surrogate: VictimPlan | None       # None: the victim itself (white box)
    surrogate_codes: CodesPlan | None
    targets: TargetsPlan
    attack: AttackPlan
    protection: ProtectionPlan | None  # the cell's protection, when its defense is one
    release: ReleasePlan | None        # its released codes, when the scenario protects queries or database
    conventions: EvaluationConventions
    data_identity: dict
    sources: dict = field(default_factory=dict, compare=False, hash=False)
    compute: ComputeSettings = field(default_factory=ComputeSettings)  # the device class and precision of its keys

    @property
    def attacker(self) -> VictimPlan:
        return self.surrogate or self.victim

    @property
    def attack_key(self) -> str:
        return self.attack.key


def relative(path: str | Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def plugin_files(choices) -> list[Path]:
    """The plugins' source files (a plugin class made in a process, as tests do, has none to follow)."""
    return [REPO_ROOT / c.source_file for c in choices if c.source_file]


def identity_seed(**identity) -> int:
    """A seed from what a draw is for (never from a key: keys hash code, and an edit must not reseed)."""
    return int(content_key(**identity)[:12], 16)


def attack_seed(cell: Cell) -> int:
    """The seed of an attack's random draws (random starts, anchor picks), from the cell's identity and seed.

    Not from the cell key: editing code or parameters must not change the draws, so a rerun after an edit,
    or two schedules of one attack, differ by the change alone.
    """
    return identity_seed(seed=cell.seed, cell=[cell.dataset, cell.hashing, cell.backbone, cell.bits, cell.defense,
                                               cell.attack, cell.epsilon, cell.surrogate, cell.scenario])


class Planner:
    """Resolves cells into plans; loads each dataset once (its content fingerprint is part of every key)."""

    def __init__(self, registry: Registry, data_root: str | None = None,
                 conventions: EvaluationConventions | None = None, compute: ComputeSettings | None = None):
        given_data_roots(data_root)  # a --data-root or $HASHBENCH_DATA that does not exist fails here, before any work
        self.registry = registry
        self.data_root = data_root
        self.conventions = conventions or EvaluationConventions()
        self.compute = compute or ComputeSettings()
        self._datasets: dict[str, tuple[PluginChoice, dict]] = {}

    def choice(self, kind: str, name: str, cell: Cell) -> PluginChoice:
        return PluginChoice.of(self.registry.get(kind, name).configure(cell.overrides(kind, name)))

    def dataset(self, cell: Cell) -> tuple[PluginChoice, dict]:
        """The dataset's choice and identity (name, parameters, source, content fingerprint, sizes, and the folder
        read, which is recorded on rows but is in no key: the same contents elsewhere give the same numbers)."""
        choice = self.choice("datasets", cell.dataset, cell)
        if choice.params_json + choice.name not in self._datasets:
            plugin = choice.configure(self.registry)
            splits = plugin.splits(self.data_root)
            identity = {"name": choice.name, "params": choice.params, "source": choice.source_hash,
                        "split": splits.fingerprint(), "label": plugin.label(), **splits.sizes(),
                        "folder": splits.folder, **split_identity(splits),
                        "training": {"name": choice.name, "source": choice.source_hash,
                                     "train": splits.train.fingerprint(), "mean": splits.mean, "std": splits.std,
                                     "shape": list(splits.image_shape()), "classes": splits.num_classes}}
            self._datasets[choice.params_json + choice.name] = (choice, identity)
        return self._datasets[choice.params_json + choice.name]

    def code(self, stage: str, *choices: PluginChoice) -> str:
        return code_hash(stage_code(stage, plugin_files(choices)))

    def protection(self, cell: Cell) -> ProtectionPlan | None:
        """The protection's plan; its key leaves out the parameters that only change the release."""
        defense = self.choice("defenses", cell.defense, cell)
        plugin = self.registry.get("defenses", cell.defense)
        if not plugin.protects:
            return None
        dataset, identity = self.dataset(cell)
        learned = {k: v for k, v in defense.params.items() if k not in plugin.release_parameters}
        key = content_key(stage="protection", harness=HARNESS_VERSION, code=self.code("protection", dataset, defense),
                          dataset=identity["training"], defense=[defense.name, learned, defense.source_hash],
                          seed=cell.seed, compute=self.compute.device_settings())
        return ProtectionPlan(key, dataset, defense, cell.seed)

    def victim(self, cell: Cell, hashing: str, backbone: str, bits: int, defense: str,
               train_data: str = "clean") -> VictimPlan:
        if getattr(self.registry.get("hashing", hashing), "loads_model", False):
            return self.loaded_victim(cell, hashing, backbone, bits, defense, train_data)
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
        parts = dict(stage="victim", harness=HARNESS_VERSION, code=self.code("victim", dataset, method, training),
                     dataset=identity["training"], hashing=method.identity(), defense=training.identity(),
                     backbone=backbone, bits=bits, seed=cell.seed, compute=self.compute.device_settings())
        if protection is not None:
            parts.update(train_data=train_data, protection=protection.key)
        if start is not None:
            parts.update(start=start.key)
        return VictimPlan(content_key(**parts), dataset, method, training, backbone, bits, cell.seed,
                          train_data if protection is not None else "clean", protection, start)

    def loaded_victim(self, cell: Cell, hashing: str, backbone: str, bits: int, defense: str,
                      train_data: str) -> VictimPlan:
        """A model trained elsewhere: keyed by its files' digests (the method's keyed parameters), its bits and
        the code that loads it; ``backbone`` is only its name on the rows."""
        if defense != "none" or train_data != "clean":
            raise ValueError(f"hashing {hashing!r} is a model trained elsewhere and evaluated as given: its defense "
                             f"must be 'none' and its train_data 'clean' (got {defense!r}, {train_data!r})")
        dataset = self.dataset(cell)[0]
        method = self.choice("hashing", hashing, cell)
        key = content_key(stage="victim", harness=HARNESS_VERSION, code=self.code("loaded", method),
                          hashing=method.identity(), bits=bits)
        return VictimPlan(key, dataset, method, self.choice("defenses", "none", cell), backbone, bits, cell.seed,
                          loaded=True)

    def codes(self, victim: VictimPlan, split: str) -> CodesPlan:
        key = content_key(stage="codes", harness=HARNESS_VERSION, code=self.code("codes"), victim=victim.key,
                          split=split, compute=self.compute.device_settings())
        return CodesPlan(key, victim, split)

    def surrogate(self, cell: Cell) -> VictimPlan | None:
        if cell.surrogate == "self":
            return None
        parts = cell.surrogate.split("/")
        if len(parts) != 3 or not parts[2].isdigit() or int(parts[2]) < 1:
            raise ValueError(f"surrogate {cell.surrogate!r} is malformed; write 'self' or HASHING/BACKBONE/BITS, "
                             f"e.g. hashnet/vgg11/32")
        self.registry.get("hashing", parts[0])
        return self.victim(cell, parts[0], parts[1], int(parts[2]), "none")

    def release(self, cell: Cell, codes: CodesPlan, protection: ProtectionPlan | None) -> ReleasePlan | None:
        if protection is None or cell.scenario == "c2c":
            return None
        key = content_key(stage="release", harness=HARNESS_VERSION, code=self.code("codes", protection.defense),
                          victim=codes.victim.key, split=codes.split, protection=protection.key,
                          release=protection.defense.params, seed=cell.seed, compute=self.compute.device_settings())
        return ReleasePlan(key, protection, cell.seed)

    def targets(self, cell: Cell, split: str) -> TargetsPlan:
        key = content_key(stage="targets", harness=HARNESS_VERSION, code=self.code("targets"), split=split,
                          seed=cell.seed, rule=cell.target_rule)
        return TargetsPlan(key, cell.target_rule, 10_007 + cell.seed)

    def attack(self, cell: Cell, identity: dict, victim: VictimPlan, attacker: VictimPlan,
               surrogate: VictimPlan | None, protection: ProtectionPlan | None, targets: TargetsPlan) -> AttackPlan:
        attack = self.choice("attacks", cell.attack, cell)
        configured = attack.configure(self.registry)
        prepared = [attack.name, configured.prepare_parameters(), attack.source_hash]
        prepare_key = content_key(stage="prepare", harness=HARNESS_VERSION, code=self.code("prepare", attack),
                                  victim=attacker.key, attack=prepared, seed=cell.seed,
                                  compute=self.compute.device_settings())
        prepare_seed = identity_seed(seed=cell.seed, attack=[attack.name, configured.prepare_parameters()],
                                     attacker=[cell.dataset, attacker.hashing.name, attacker.backbone, attacker.bits,
                                               attacker.defense.name, attacker.train_data])
        key = content_key(stage="attack", harness=HARNESS_VERSION, code=self.code("attack", attack),
                          dataset={k: v for k, v in identity.items() if k not in ("training", *UNKEYED)},
                          victim=victim.key,
                          surrogate=surrogate.key if surrogate else "self", attack=attack.identity(),
                          epsilon=cell.epsilon, scenario=cell.scenario,
                          protection=([protection.key, protection.defense.params]
                                      if protection and cell.scenario != "c2c" else None),
                          targets=targets.key, compute=self.compute.as_dict())
        return AttackPlan(key, attack, cell.epsilon, prepare_key, prepare_seed, attack_seed(cell),
                          self.compute.precision)

    def plan(self, cell: Cell) -> CellPlan:
        dataset, identity = self.dataset(cell)
        victim = self.victim(cell, cell.hashing, cell.backbone, cell.bits, cell.defense, cell.train_data)
        surrogate = self.surrogate(cell)
        protection = self.protection(cell)
        codes = self.codes(victim, identity["split"])
        targets = self.targets(cell, identity["split"])
        attack = self.attack(cell, identity, victim, surrogate or victim, surrogate, protection, targets)
        cell_code = stage_code("cell", plugin_files([attack.attack]))
        key = content_key(stage="cell", harness=HARNESS_VERSION, attack=attack.key, code=code_hash(cell_code),
                          conventions=self.conventions.as_dict())
        return CellPlan(cell, key, victim, codes, surrogate, surrogate and self.codes(surrogate, identity["split"]),
                        targets, attack, protection, self.release(cell, codes, protection), self.conventions,
                        identity, self.sources(victim, surrogate, attack.attack, protection, cell_code), self.compute)

    def sources(self, victim: VictimPlan, surrogate: VictimPlan | None, attack: PluginChoice,
                protection: ProtectionPlan | None, cell_code: dict[str, str]) -> dict[str, str]:
        """Every file the cell's numbers depend on, with its hash (16 hex digits)."""
        files = {}
        for plan in filter(None, (victim, surrogate, victim.start, surrogate and surrogate.start)):
            for choice in (plan.dataset, plan.hashing, plan.defense):
                files[choice.source_file] = choice.source_hash[:16]
        chosen = filter(None, (attack, protection and protection.defense, victim.protection and victim.protection.defense))
        for choice in chosen:
            files[choice.source_file] = choice.source_hash[:16]
        plugins = [REPO_ROOT / f for f in files if f]
        for stage in ("victim", "codes", "attack"):
            files.update(stage_code(stage, plugins))
        files.update(cell_code)
        return dict(sorted(files.items()))
