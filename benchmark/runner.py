"""Runs grid cells: dataset split -> victim -> database codes -> attack -> metrics rows.

Stages are shared across cells and cached by content (see cache.py); every finished cell is written
at once as its own parquet file (store.py), so a killed run loses at most the cell in flight.

    runner = Runner(registry, results_dir="results", cache_dir=".cache")
    runner.run(cells)
"""
from __future__ import annotations

import datetime
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmark import HARNESS_VERSION
from benchmark.attack import AttackContext, project
from benchmark.cache import StageCache, content_key
from benchmark.data import Splits
from benchmark.environment import environment
from benchmark.evaluation import EvaluationConventions, evaluate_queries
from benchmark.grid import Cell
from benchmark.hashing import TrainContext
from benchmark.model import HashModel, build_victim
from benchmark.plugins import Registry, file_hash
from benchmark.progress import Progress
from benchmark.store import cell_done, write_cell
from benchmark.targets import TARGET_RULES, draw_target_labels

log = logging.getLogger("hashbench")

# The shared code each cached stage runs besides the plugin files; editing a module re-runs the stages that
# use it (and only those). Deliberate changes elsewhere in the harness bump HARNESS_VERSION.
PACKAGE_DIR = Path(__file__).resolve().parent
TRAINING_CODE = ("data", "lists", "model", "hashing", "defense")
ATTACK_CODE = ("attack",)
TARGET_CODE = ("targets",)
EVALUATION_CODE = ("evaluation", "metrics", "search")


class VictimTrainingFailed(RuntimeError):
    """A victim whose training already failed in this run (the first failure's message follows)."""


@dataclass(frozen=True)
class VictimSpec:
    dataset: str
    hashing: str
    backbone: str
    bits: int
    defense: str
    seed: int

    @classmethod
    def of(cls, cell: Cell) -> "VictimSpec":
        return cls(cell.dataset, cell.hashing, cell.backbone, cell.bits, cell.defense, cell.seed)

    @classmethod
    def surrogate_of(cls, cell: Cell) -> "VictimSpec":
        if cell.surrogate == "self":
            return cls.of(cell)
        parts = cell.surrogate.split("/")
        if len(parts) != 3 or not parts[2].isdigit():
            raise ValueError(f"surrogate {cell.surrogate!r} is malformed; write 'self' or HASHING/BACKBONE/BITS, "
                             f"e.g. hashnet/vgg11/32")
        return cls(cell.dataset, parts[0], parts[1], int(parts[2]), "none", cell.seed)

    def label(self) -> str:
        return f"{self.hashing}/{self.backbone}/{self.bits}" + ("" if self.defense == "none" else f"+{self.defense}")


@dataclass
class Victim:
    spec: VictimSpec
    key: str
    model: HashModel
    database_codes: torch.Tensor  # (N, K) in {-1, +1}
    query_codes: torch.Tensor     # (Q, K) clean queries
    train_info: dict = field(default_factory=dict)


class Runner:
    def __init__(self, registry: Registry, results_dir: str | Path = "results", cache_dir: str | Path = ".cache",
                 device: str = "auto", data_root: str | None = None, attack_batch: int = 0,
                 backend: str = "torch", target_rule: str = "disjoint", conventions: EvaluationConventions | None = None,
                 force: bool = False):
        self.registry = registry
        self.results_dir = Path(results_dir)
        self.cache = StageCache(cache_dir)
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   ("cpu" if device == "auto" else device))
        self.data_root = data_root
        self.attack_batch = attack_batch or (1000 if self.device.type == "cuda" else 250)
        if target_rule not in TARGET_RULES:
            raise ValueError(f"unknown target rule {target_rule!r}; accepted: {', '.join(TARGET_RULES)}")
        self.target_rule = target_rule
        self.conventions = conventions or EvaluationConventions(backend=backend)
        self.force = force
        self.environment = environment(self.device)
        self._splits: dict[str, tuple[Splits, dict]] = {}
        self._victims: dict[VictimSpec, Victim] = {}
        self._failed_victims: dict[str, str] = {}  # victim key -> why its training failed in this run

    # ---------------------------------------------------------------- stages
    def dataset(self, cell: Cell) -> tuple[Splits, dict]:
        name = cell.dataset
        overrides = cell.overrides("datasets", name)
        cache_name = json.dumps([name, overrides], sort_keys=True)
        if cache_name not in self._splits:
            plugin = self.registry.get("datasets", name).configure(overrides)
            splits = plugin.splits(self.data_root)
            identity = {"name": name, "params": plugin.params(), "source": plugin.source_hash,
                        "split": splits.fingerprint(), "label": plugin.label(), **splits.sizes()}
            self._splits[cache_name] = (splits, identity)
        return self._splits[cache_name]

    def victim_key(self, spec: VictimSpec, cell: Cell) -> str:
        _, data_identity = self.dataset(cell)
        method = self.registry.get("hashing", spec.hashing).configure(cell.overrides("hashing", spec.hashing))
        defense = self.registry.get("defenses", spec.defense).configure(cell.overrides("defenses", spec.defense))
        return content_key(stage="victim", harness=HARNESS_VERSION, code=code_hash(TRAINING_CODE),
                           dataset=data_identity,
                           hashing=[method.name, method.params(), method.source_hash],
                           defense=[defense.name, defense.params(), defense.source_hash],
                           backbone=spec.backbone, bits=spec.bits, seed=spec.seed)

    def victim(self, spec: VictimSpec, cell: Cell, progress: Progress) -> Victim:
        key = self.victim_key(spec, cell)
        cached = self._victims.get(spec)
        if cached is not None and cached.key == key:
            return cached
        splits, _ = self.dataset(cell)
        channels, size, _ = splits.image_shape()
        with torch.random.fork_rng(devices=[]):  # the initial weights depend on the seed only, not on what ran before
            torch.manual_seed(spec.seed)
            model = build_victim(spec.backbone, spec.bits, channels, size, splits.mean, splits.std)
        model = model.to(self.device)
        stored = self.cache.load("victims", key)
        if stored is None:
            if key in self._failed_victims:  # not retrained for every cell of it; a new run tries again
                raise VictimTrainingFailed(f"training {spec.label()} failed earlier in this run: "
                                           f"{self._failed_victims[key]}")
            try:
                stored = self.train(spec, cell, splits, model, progress)
            except (KeyboardInterrupt, VictimTrainingFailed):
                raise
            except Exception as exc:
                self._failed_victims[key] = f"{type(exc).__name__}: {exc}"
                raise
            self.cache.save("victims", key, stored)
        else:
            model.load_state_dict(stored["state"])
        model.eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        codes = self.cache.load("codes", key)
        if codes is None:
            progress.stage(f"encoding database and queries with {spec.label()}")
            codes = {"database": self.encode(model, splits.database), "query": self.encode(model, splits.query)}
            self.cache.save("codes", key, codes)
        victim = Victim(spec, key, model, codes["database"].to(self.device), codes["query"].to(self.device),
                        stored.get("info", {}))
        self._victims = {s: v for s, v in self._victims.items() if s == spec or s == VictimSpec.of(cell)}
        self._victims[spec] = victim
        return victim

    def train(self, spec: VictimSpec, cell: Cell, splits: Splits, model: HashModel, progress: Progress) -> dict:
        method = self.registry.get("hashing", spec.hashing).configure(cell.overrides("hashing", spec.hashing))
        defense = self.registry.get("defenses", spec.defense).configure(cell.overrides("defenses", spec.defense))
        torch.manual_seed(spec.seed)
        ctx = TrainContext(device=self.device, generator=torch.Generator().manual_seed(spec.seed),
                           num_classes=splits.num_classes,
                           progress=lambda message: progress.stage(f"training {spec.label()}: {message}"))
        started = time.perf_counter()
        progress.stage(f"training {spec.label()} ({method.label()}, defense {defense.label()})")
        defense.fit(method, model, splits.train, ctx)
        ctx.info["train_seconds"] = time.perf_counter() - started
        model.eval()
        return {"state": model.state_dict(), "info": ctx.info}

    @torch.no_grad()
    def encode(self, model: HashModel, images, batch_size: int = 1000) -> torch.Tensor:
        return torch.cat([model.codes(x.to(self.device)).cpu() for x, _, _ in images.batches(batch_size)])

    def target_labels(self, cell: Cell, splits: Splits) -> torch.Tensor:
        key = content_key(stage="targets", code=code_hash(TARGET_CODE), split=splits.fingerprint(), seed=cell.seed,
                          rule=self.target_rule)
        targets = self.cache.load("targets", key)
        if targets is None:
            generator = torch.Generator().manual_seed(10_007 + cell.seed)
            targets = draw_target_labels(splits.query.labels, splits.database.labels, generator, self.target_rule)
            self.cache.save("targets", key, targets)
        return targets

    # ---------------------------------------------------------------- cells
    def cell_key(self, cell: Cell) -> str:
        attack = self.registry.get("attacks", cell.attack).configure(cell.overrides("attacks", cell.attack))
        surrogate = VictimSpec.surrogate_of(cell)
        return content_key(stage="cell", harness=HARNESS_VERSION,
                           code=code_hash(ATTACK_CODE + TARGET_CODE + EVALUATION_CODE),
                           victim=self.victim_key(VictimSpec.of(cell), cell),
                           surrogate=self.victim_key(surrogate, cell) if cell.surrogate != "self" else "self",
                           attack=[attack.name, attack.params(), attack.source_hash], epsilon=cell.epsilon,
                           scenario=cell.scenario, target_rule=self.target_rule,
                           conventions=self.conventions.as_dict())

    def run(self, cells: list[Cell]) -> dict[str, int]:
        """Run every cell not already in the store; return counts of done/cached/error cells."""
        progress = Progress(len(cells))
        counts = {"ran": 0, "cached": 0, "error": 0}
        for cell in cells:
            try:
                key = self.cell_key(cell)
            except Exception as exc:  # e.g. the dataset is missing: every cell of it fails the same way
                progress.cell_failed(cell, exc)
                counts["error"] += 1
                continue
            if not self.force and cell_done(self.results_dir, key):
                progress.cell_cached(cell)
                counts["cached"] += 1
                continue
            progress.cell_started(cell)
            started = time.perf_counter()
            try:
                rows = self.run_cell(cell, key, progress)
                status = "ok"
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                log.debug("cell %s failed", cell.describe(), exc_info=True)
                rows = [self.error_row(cell, key, exc)]
                status = "error"
            finished_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            for row in rows:
                row.update(cell_seconds=time.perf_counter() - started, created_at=finished_at)
            write_cell(self.results_dir, key, rows)
            counts["ran" if status == "ok" else "error"] += 1
            progress.cell_finished(cell, status, rows[0].get("error", ""))
        progress.summary(counts, self.results_dir)
        return counts

    def run_cell(self, cell: Cell, key: str, progress: Progress) -> list[dict]:
        splits, data_identity = self.dataset(cell)
        victim = self.victim(VictimSpec.of(cell), cell, progress)
        surrogate_spec = VictimSpec.surrogate_of(cell)
        surrogate = victim if cell.surrogate == "self" else self.victim(surrogate_spec, cell, progress)
        attack = self.registry.get("attacks", cell.attack).configure(cell.overrides("attacks", cell.attack))
        attack.epsilon = cell.epsilon
        generator = torch.Generator().manual_seed(attack_seed(cell))
        targets = self.target_labels(cell, splits)
        ctx = AttackContext(model=surrogate.model, database_codes=surrogate.database_codes,
                            database_labels=splits.database.labels.to(self.device), train=splits.train,
                            num_classes=splits.num_classes, bits=surrogate_spec.bits, device=self.device,
                            generator=generator)
        progress.stage(f"preparing {attack.label()}")
        prepare_seconds = self.prepare_attack(attack, ctx, surrogate, cell)
        adversarial, perturbation, seconds = self.attack_queries(attack, splits, targets, cell, progress)
        progress.stage("searching the database and scoring")
        results = evaluate_queries(adversarial, victim.database_codes, splits.query.labels, targets,
                                   splits.database.labels, splits.topk, self.conventions)
        self.cache.save("cells", key, {"adversarial_codes": adversarial.cpu(), "target_labels": targets,
                                       "average_precision": results.per_query})
        metrics = results.rows + [
            {"metric": "perceptibility", "value": perturbation["perceptibility"]},
            {"metric": "linf", "value": perturbation["linf"]},
            {"metric": "linf_mean", "value": perturbation["linf_mean"]},
            {"metric": "l2", "value": perturbation["l2"]},
            {"metric": "budget_violations", "value": perturbation["violations"]},
            {"metric": "seconds_per_image", "value": seconds / len(splits.query)},
            {"metric": "prepare_seconds", "value": prepare_seconds},
        ]
        base = self.base_row(cell, key, data_identity, victim, attack)
        return [{**base, "topk": 0, "recall": float("nan"), **m} for m in metrics]

    def prepare_attack(self, attack, ctx: AttackContext, surrogate: Victim, cell: Cell) -> float:
        prepare_key = content_key(stage="prepare", code=code_hash(ATTACK_CODE), victim=surrogate.key,
                                  attack=[attack.name, attack.params(), attack.source_hash], seed=cell.seed)
        stored = self.cache.load("prepared", prepare_key)
        started = time.perf_counter()
        if stored is not None:
            attack.ctx = ctx
            attack.load_state_dict(stored["state"])
            return stored["seconds"]
        attack.prepare(ctx)
        synchronize(self.device)
        seconds = time.perf_counter() - started
        state = attack.state_dict()
        if state is not None:
            self.cache.save("prepared", prepare_key, {"state": state, "seconds": seconds})
        return seconds

    def attack_queries(self, attack, splits: Splits, targets: torch.Tensor, cell: Cell, progress: Progress):
        """Adversarial codes of every query under the victim, perturbation statistics, attack seconds."""
        victim = self._victims[VictimSpec.of(cell)]
        codes, seconds, violations = [], 0.0, 0
        squared, linf_values, l2_values, pixels = 0.0, [], [], 0
        done = 0
        for x, labels, index in splits.query.batches(self.attack_batch):
            x, labels = x.to(self.device), labels.to(self.device)
            synchronize(self.device)
            started = time.perf_counter()
            x_adv = attack.perturb(x, labels, targets[index].to(self.device))
            synchronize(self.device)
            seconds += time.perf_counter() - started
            if x_adv.shape != x.shape:
                raise ValueError(f"attack {attack.name} returned shape {tuple(x_adv.shape)} for queries of shape "
                                 f"{tuple(x.shape)}")
            if not torch.isfinite(x_adv).all():
                raise FloatingPointError(f"attack {attack.name} returned NaN or infinite pixels")
            x_adv = x_adv.detach()
            raw_linf = (x_adv - x).flatten(1).abs().amax(1)
            violations += int((raw_linf > cell.epsilon + 1e-6).sum())
            x_adv = project(x_adv, x, cell.epsilon)  # the harness enforces the budget, whatever the plugin did
            difference = (x_adv - x).flatten(1)
            linf_values.append(difference.abs().amax(1).cpu())
            l2_values.append(difference.norm(dim=1).cpu())
            squared += float(difference.double().pow(2).sum())
            pixels += difference.numel()
            codes.append(victim.model.codes(x_adv))
            done += len(x)
            progress.stage(f"attacking {done}/{len(splits.query)} queries")
        linf = torch.cat(linf_values)
        perturbation = {"perceptibility": (squared / max(pixels, 1)) ** 0.5, "linf": float(linf.max()),
                        "linf_mean": float(linf.mean()), "l2": float(torch.cat(l2_values).mean()),
                        "violations": violations / len(linf)}
        return torch.cat(codes), perturbation, seconds

    # ---------------------------------------------------------------- rows
    def base_row(self, cell: Cell, key: str, data_identity: dict, victim: Victim | None, attack) -> dict:
        method = self.registry.get("hashing", cell.hashing).configure(cell.overrides("hashing", cell.hashing))
        defense = self.registry.get("defenses", cell.defense).configure(cell.overrides("defenses", cell.defense))
        return {
            "dataset": cell.dataset, "dataset_label": data_identity.get("label", cell.dataset),
            "hashing": cell.hashing, "hashing_label": method.label(), "backbone": cell.backbone, "bits": cell.bits,
            "defense": cell.defense, "defense_label": defense.label(), "attack": cell.attack,
            "attack_label": attack.label() if attack else cell.attack, "epsilon": cell.epsilon,
            "surrogate": cell.surrogate, "scenario": cell.scenario, "seed": cell.seed,
            "status": "ok", "error": "",
            "n_query": data_identity.get("n_query", 0), "n_database": data_identity.get("n_database", 0),
            "n_train": data_identity.get("n_train", 0),
            "target_rule": self.target_rule, **self.conventions.as_dict(), "epsilon_space": "linf_pixels_0_1",
            "attack_params": json.dumps(attack.params() if attack else {}, sort_keys=True),
            "hashing_params": json.dumps(method.params(), sort_keys=True),
            "defense_params": json.dumps(defense.params(), sort_keys=True),
            "dataset_params": json.dumps(data_identity.get("params", {}), sort_keys=True),
            "batch_size": self.attack_batch, **self.environment,
            "cell_key": key, "victim_key": victim.key if victim else "",
            "train_seconds": float(victim.train_info.get("train_seconds", float("nan"))) if victim else float("nan"),
        }

    def error_row(self, cell: Cell, key: str, exc: BaseException) -> dict:
        message = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, torch.cuda.OutOfMemoryError):
            message += f" (attack batch {self.attack_batch}; rerun with a smaller --attack-batch)"
        try:
            _, identity = self.dataset(cell)
        except Exception:
            identity = {}
        try:
            attack = self.registry.get("attacks", cell.attack).configure(cell.overrides("attacks", cell.attack))
        except Exception:
            attack = None
        row = self.base_row(cell, key, identity, self._victims.get(VictimSpec.of(cell)), attack)
        row.update(status="error", error=message, metric="", value=float("nan"), topk=0, recall=float("nan"))
        return row


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def attack_seed(cell: Cell) -> int:
    """The seed of an attack's random draws (random starts, anchor picks), from the cell's identity and seed.

    Not from the cell key: editing code or parameters must not change the draws, so a rerun after an edit,
    or two schedules of one attack, differ by the change alone.
    """
    identity = content_key(seed=cell.seed, cell=[cell.dataset, cell.hashing, cell.backbone, cell.bits, cell.defense,
                                                 cell.attack, cell.epsilon, cell.surrogate, cell.scenario])
    return int(identity[:12], 16)


def code_hash(modules: tuple[str, ...]) -> str:
    """Hash of the shared ``benchmark`` modules a stage runs besides the plugin files."""
    return content_key(files=[file_hash(PACKAGE_DIR / f"{module}.py") for module in modules])

