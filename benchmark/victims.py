"""The data and victim stages: dataset splits, data protections, trained victims and their codes.

A ``Workspace`` is one process's view of the shared cache (``.cache/``) and data: it loads each split once,
keeps the last victims in memory, and computes a stage only when its cache entry is missing, under a claim
(``benchmark.claims``) so that two runs never train the same victim at the same time.

    .cache/victims/<key>.pt       trained weights and training info
    .cache/codes/<key>.pt         database and query codes of a split, and the victim's diagnostics (benchmark.flags)
    .cache/protections/<key>.pt   a protection's learned state (PPL's generator)
    .cache/codes/<key>.pt         codes of the protected database and queries (victim, protection, release)
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from benchmark import flags
from benchmark.cache import StageCache, content_key
from benchmark.claims import claim
from benchmark.data import ImageSet, Splits
from benchmark.hashing import TrainContext, TrainingDiverged
from benchmark.model import HashModel, build_victim
from benchmark.plan import ProtectionPlan, PluginChoice, VictimPlan
from benchmark.plugins import Registry

log = logging.getLogger("hashbench")


class VictimTrainingFailed(RuntimeError):
    """A victim whose training already failed in this run (the first failure's message follows)."""


@dataclass
class Victim:
    plan: VictimPlan
    model: HashModel
    database_codes: torch.Tensor  # (N, K) in {-1, +1}, clean database
    query_codes: torch.Tensor     # (Q, K), clean queries
    diagnostics: dict = field(default_factory=dict)
    train_info: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.plan.key


class ProtectedImages(ImageSet):
    """A set's images as a protection releases them (``defense.protect``), items outside ``mask`` left clean."""

    def __init__(self, base: ImageSet, protection, mask: torch.Tensor | None = None, device: torch.device | None = None):
        self.base, self.protection, self.device = base, protection, device or torch.device("cpu")
        self.mask = mask
        self.labels = base.labels

    def __len__(self) -> int:
        return len(self.base)

    @torch.no_grad()
    def load(self, index: torch.Tensor) -> torch.Tensor:
        clean = self.base.load(index)
        protected = self.protection.protect(clean.to(self.device)).to(clean.device)
        if protected.shape != clean.shape or not torch.isfinite(protected).all():
            raise ValueError(f"protection {self.protection.name!r} returned {tuple(protected.shape)} "
                             f"(finite: {bool(torch.isfinite(protected).all())}) for images {tuple(clean.shape)}")
        protected = protected.clamp(0, 1)
        if self.mask is not None:
            keep = ~self.mask[index].view(-1, *[1] * (clean.ndim - 1))
            protected = torch.where(keep, clean, protected)
        return protected

    def identity(self) -> str:
        return f"protected:{self.base.identity()}"


def model_checksum(model: torch.nn.Module) -> str:
    """Hash of every parameter and buffer, to tell whether a plugin changed the model in place."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def check_finite_weights(model: torch.nn.Module, what: str) -> None:
    bad = [name for name, tensor in model.state_dict().items()
           if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise TrainingDiverged(f"{what} left non-finite weights in {', '.join(bad[:3])}"
                               f"{' and more' if len(bad) > 3 else ''}")


class Workspace:
    """One process's stages: splits, protections and victims, computed once and cached by key."""

    def __init__(self, registry: Registry, cache_dir, device: torch.device, data_root: str | None = None,
                 attack_batch: int = 0, stage: Callable[[str], None] | None = None, keep_victims: int = 3):
        self.registry = registry
        self.cache = StageCache(cache_dir)
        self.device = device
        self.data_root = data_root
        self.attack_batch = attack_batch or (1000 if device.type == "cuda" else 250)
        self.stage = stage or (lambda message: None)
        self.keep_victims = keep_victims
        self._splits: dict[tuple, Splits] = {}
        self._victims: dict[str, Victim] = {}
        self._protections: dict[str, object] = {}
        self._protection_info: dict[str, dict] = {}
        self.failed_victims: dict[str, str] = {}  # victim key -> why its training failed in this run

    # ------------------------------------------------------------------ data
    def splits(self, dataset: PluginChoice, fingerprint: str | None = None) -> Splits:
        memo = (dataset.name, dataset.params_json)
        if memo not in self._splits:
            splits = dataset.configure(self.registry).splits(self.data_root)
            if fingerprint is not None and splits.fingerprint() != fingerprint:
                raise RuntimeError(f"dataset {dataset.name!r} here differs from the one the grid was planned on "
                                   f"(fingerprint {splits.fingerprint()} vs {fingerprint}); the data folders of "
                                   f"every machine must hold the same files")
            self._splits[memo] = splits
        return self._splits[memo]

    def train_context(self, seed: int, what: str) -> TrainContext:
        return TrainContext(device=self.device, generator=torch.Generator().manual_seed(seed),
                            num_classes=0, progress=lambda message: self.stage(f"training {what}: {message}"))

    # ------------------------------------------------------------------ protections
    def protection(self, plan: ProtectionPlan):
        """The configured protection with its learned state (trained once per key, then cached)."""
        if plan.key in self._protections:
            return self._protections[plan.key]
        defense = plan.defense.configure(self.registry)
        splits = self.splits(plan.dataset)
        stored = self.cache.load("protections", plan.key)
        if stored is None:
            with claim(self.cache.root, "protections", plan.key,
                       wait=lambda: self.stage(f"waiting for another run training protection {defense.label()}")):
                stored = self.cache.load("protections", plan.key)
                if stored is None:
                    stored = self._train_protection(defense, splits, plan)
                    self.cache.save("protections", plan.key, stored)
        defense.load_state_dict(stored["state"])
        self._protections[plan.key] = defense
        self._protection_info[plan.key] = stored.get("info", {})
        return defense

    def protection_info(self, plan: ProtectionPlan) -> dict:
        """What the protection's training recorded (its seconds, its flags, ...)."""
        self.protection(plan)
        return self._protection_info[plan.key]

    def _train_protection(self, defense, splits: Splits, plan: ProtectionPlan) -> dict:
        torch.manual_seed(plan.seed)
        ctx = self.train_context(plan.seed, f"protection {defense.label()}")
        ctx.num_classes = splits.num_classes
        self.stage(f"training protection {defense.label()}")
        started = time.perf_counter()
        defense.prepare_protection(splits.train, ctx)
        ctx.info["train_seconds"] = time.perf_counter() - started
        state = defense.state_dict()
        if state is None:
            raise TypeError(f"protection {defense.name!r} returned no state_dict(); a protection must return what "
                            f"prepare_protection learned")
        return {"state": state, "info": ctx.info}

    def protected(self, images: ImageSet, plan: ProtectionPlan, mask: torch.Tensor | None = None) -> ImageSet:
        return ProtectedImages(images, self.protection(plan), mask, self.device)

    # ------------------------------------------------------------------ victims
    def victim(self, plan: VictimPlan) -> Victim:
        """The trained victim with its clean codes of the plan's split and diagnostics (trained once per key)."""
        memo = (plan.key, plan.split)
        if memo in self._victims:
            return self._victims[memo]
        if plan.key in self.failed_victims:  # not retrained for every cell of it; a new run tries again
            raise VictimTrainingFailed(f"training {plan.label()} failed earlier in this run: "
                                       f"{self.failed_victims[plan.key]}")
        splits = self.splits(plan.dataset, plan.split or None)
        model = self.fresh_model(plan, splits)
        stored = self.cache.load("victims", plan.key)
        if stored is None:
            with claim(self.cache.root, "victims", plan.key,
                       wait=lambda: self.stage(f"waiting for another run training {plan.label()}")):
                stored = self.cache.load("victims", plan.key)
                if stored is None:
                    try:
                        stored = self._train(plan, splits, model)
                    except (KeyboardInterrupt, VictimTrainingFailed):
                        raise
                    except Exception as exc:
                        self.failed_victims[plan.key] = f"{type(exc).__name__}: {exc}"
                        raise
                    self.cache.save("victims", plan.key, stored)
        model.load_state_dict(stored["state"])
        freeze(model)
        codes = self.codes(plan, model, splits)
        victim = Victim(plan, model, codes["database"].to(self.device), codes["query"].to(self.device),
                        codes.get("diagnostics", {}), stored.get("info", {}))
        while len(self._victims) >= self.keep_victims:
            self._victims.pop(next(iter(self._victims)))
        self._victims[memo] = victim
        return victim

    def fresh_model(self, plan: VictimPlan, splits: Splits) -> HashModel:
        channels, size, _ = splits.image_shape()
        with torch.random.fork_rng(devices=[]):  # the initial weights depend on the seed only, not on what ran before
            torch.manual_seed(plan.seed)
            model = build_victim(plan.backbone, plan.bits, channels, size, splits.mean, splits.std)
        return model.to(self.device)

    def _train(self, plan: VictimPlan, splits: Splits, model: HashModel) -> dict:
        method = plan.hashing.configure(self.registry)
        defense = plan.defense.configure(self.registry)
        train = splits.train
        if plan.protection is not None:
            train = self.protected(train, plan.protection)
        if plan.start is not None:  # adversarial fine-tuning starts from the undefended victim's weights
            start = self.victim(plan.start)
            model.load_state_dict(start.model.state_dict())
        torch.manual_seed(plan.seed)
        ctx = self.train_context(plan.seed, plan.label())
        ctx.num_classes = splits.num_classes
        log.info("training %s (%s, defense %s)", plan.label(), method.label(), defense.label())
        model.train()
        started = time.perf_counter()
        defense.fit(method, model, train, ctx)
        ctx.info["train_seconds"] = time.perf_counter() - started
        if plan.start is not None:
            ctx.info["start_train_seconds"] = self.victim(plan.start).train_info.get("train_seconds", float("nan"))
        check_finite_weights(model, f"training {plan.label()} ({method.name}, defense {defense.name})")
        model.eval()
        return {"state": model.state_dict(), "info": ctx.info}

    def codes(self, plan: VictimPlan, model: HashModel, splits: Splits) -> dict:
        key = content_key(victim=plan.key, split=splits.fingerprint())
        codes = self.cache.load("codes", key)
        if codes is None:
            self.stage(f"encoding database and queries with {plan.label()}")
            codes = {"database": self.encode(model, splits.database), "query": self.encode(model, splits.query)}
            codes["diagnostics"] = flags.victim_diagnostics(model, codes["database"], codes["query"], splits,
                                                            self.device)
            self.cache.save("codes", key, codes)
        return codes

    def protected_codes(self, victim: Victim, protection: ProtectionPlan, seed: int) -> dict:
        """Codes of the protected database (the protection's released share) and of the protected queries."""
        key = content_key(victim=victim.key, split=victim.plan.split, protection=protection.key,
                          release=protection.defense.params, seed=seed)
        codes = self.cache.load("codes", key)
        if codes is None:
            splits = self.splits(protection.dataset)
            defense = self.protection(protection)
            mask = defense.database_mask(len(splits.database), torch.Generator().manual_seed(seed))
            if mask.shape != (len(splits.database),) or mask.dtype != torch.bool:
                raise ValueError(f"protection {defense.name!r}.database_mask returned {tuple(mask.shape)} "
                                 f"{mask.dtype}; expected a bool tensor of shape ({len(splits.database)},)")
            self.stage(f"encoding the protected database and queries with {victim.plan.label()}")
            codes = {"database": self.encode(victim.model, self.protected(splits.database, protection, mask)),
                     "query": self.encode(victim.model, self.protected(splits.query, protection)),
                     "database_share": float(mask.float().mean())}
            self.cache.save("codes", key, codes)
        return codes

    @torch.no_grad()
    def encode(self, model: HashModel, images: ImageSet, batch_size: int = 1000) -> torch.Tensor:
        return torch.cat([model.codes(x.to(self.device)).cpu() for x, _, _ in images.batches(batch_size)])


def freeze(model: torch.nn.Module) -> None:
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
