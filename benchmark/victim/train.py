"""The victim stage: a trained hashing model (and a data protection's learned generator), trained once per key.

    victim = trained_victim(plan.victim, splits, session)        # .cache/victims/<key>.pt
    protection = trained_protection(plan.protection, splits, session)   # .cache/protections/<key>.pt

A victim's initial weights are drawn from its seed alone; its defense's ``fit`` trains it with the global RNG
and the batch-order generator seeded from the same seed. A defense that ``starts_from_victim`` (CgAT,
ATRDH) begins from the undefended victim's weights; a victim trained on protected data sees the protection's
release of its training images. Weights left non-finite fail the training; a victim whose training failed is
not retrained for every cell of it in the same run.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from benchmark.data.dataset import Splits
from benchmark.data.images import ImageSet
from benchmark.planning.plan import ProtectionPlan, VictimPlan
from benchmark.session import Session
from benchmark.victim.guard import check_model_kept, model_fingerprint, plugin_identity, torch_settings_kept
from benchmark.victim.hashing import TrainContext, TrainingDiverged, non_finite_weights
from benchmark.victim.model import HashModel, build_victim

log = logging.getLogger("hashbench")


class VictimTrainingFailed(RuntimeError):
    """A victim whose training already failed in this run (the first failure's message follows)."""


@dataclass
class Trained:
    plan: VictimPlan
    model: HashModel              # eval mode, frozen
    info: dict = field(default_factory=dict)  # what its training recorded (seconds, losses, flags)


@dataclass
class Protection:
    plan: ProtectionPlan
    defense: object               # the configured defense with its learned state loaded
    info: dict = field(default_factory=dict)


def trained_victim(plan: VictimPlan, splits: Splits, s: Session) -> Trained:
    """The trained victim (memoised in this process, cached by key, trained under a claim)."""
    return s.memo.get("victims", plan.key, lambda: load_or_train_victim(plan, splits, s))


def load_or_train_victim(plan: VictimPlan, splits: Splits, s: Session) -> Trained:
    if plan.key in s.failed_victims:  # not retrained for every cell of it; a new run tries again
        raise VictimTrainingFailed(f"training {plan.label()} failed earlier in this run: {s.failed_victims[plan.key]}")
    model = s.compute.laid_out(fresh_model(plan, splits, s.device))  # channels_last on CUDA

    def train() -> dict:
        try:
            return train_victim(plan, splits, model, s)
        except (KeyboardInterrupt, VictimTrainingFailed):
            raise
        except Exception as exc:
            s.failed_victims[plan.key] = f"{type(exc).__name__}: {exc}"
            raise

    stored = s.cached("victims", plan.key, train,
                    waiting=lambda: s.stage(f"waiting for another run training {plan.label()}"))
    model.load_state_dict(stored["state"])
    freeze(model)
    return Trained(plan, model, stored.get("info", {}))


def fresh_model(plan: VictimPlan, splits: Splits, device: torch.device) -> HashModel:
    channels, size, _ = splits.image_shape()
    with torch.random.fork_rng(devices=[]):  # the initial weights depend on the seed only, not on what ran before
        torch.manual_seed(plan.seed)
        model = build_victim(plan.backbone, plan.bits, channels, size, splits.mean, splits.std)
    return model.to(device)


def train_victim(plan: VictimPlan, splits: Splits, model: HashModel, s: Session) -> dict:
    method = plan.hashing.configure(s.registry)
    defense = plan.defense.configure(s.registry)
    train = splits.train
    if plan.protection is not None:
        train = ProtectedImages(train, trained_protection(plan.protection, splits, s).defense, device=s.device)
    start = trained_victim(plan.start, splits, s) if plan.start is not None else None
    if start is not None:  # adversarial fine-tuning starts from the undefended victim's weights
        model.load_state_dict(start.model.state_dict())
    torch.manual_seed(plan.seed)
    ctx = train_context(plan.seed, plan.label(), splits, s)
    log.info("training %s (%s, defense %s)", plan.label(), method.label(), defense.label())
    model.train()
    started = time.perf_counter()
    before = model_fingerprint(model)
    with torch_settings_kept(defense, "fit"):
        defense.fit(method, model, train, ctx)
    check_model_kept(before, model_fingerprint(model), defense, "fit()",
                     f"the victim it trained with {plugin_identity(method)}", allowed=("weights", "modes"))
    ctx.info["train_seconds"] = time.perf_counter() - started
    if start is not None:
        ctx.info["start_train_seconds"] = start.info.get("train_seconds", float("nan"))
    check_finite_weights(model, f"training {plan.label()} ({method.name}, defense {defense.name})")
    model.eval()
    return {"state": model.state_dict(), "info": ctx.info}


def trained_protection(plan: ProtectionPlan, splits: Splits, s: Session) -> Protection:
    """The configured protection with its learned state (trained once per key, then cached)."""
    return s.memo.get("protections", plan.key, lambda: load_or_train_protection(plan, splits, s))


def load_or_train_protection(plan: ProtectionPlan, splits: Splits, s: Session) -> Protection:
    defense = plan.defense.configure(s.registry)
    stored = s.cached("protections", plan.key, lambda: train_protection(defense, splits, plan, s),
                    waiting=lambda: s.stage(f"waiting for another run training protection {defense.label()}"))
    drop_checkpoint("protections", plan.key, s)
    with torch_settings_kept(defense, "load_state_dict"):
        defense.load_state_dict(stored["state"])
    return Protection(plan, defense, stored.get("info", {}))


def train_protection(defense, splits: Splits, plan: ProtectionPlan, s: Session) -> dict:
    torch.manual_seed(plan.seed)
    ctx = train_context(plan.seed, f"protection {defense.label()}", splits, s)
    earlier = resumable(ctx, "protections", plan.key, s)
    s.stage(f"training protection {defense.label()}"
            + (f" from its checkpoint ({earlier:.0f} s of training done)" if ctx.resumed is not None else ""))
    started = time.perf_counter()
    with torch_settings_kept(defense, "prepare_protection"):
        defense.prepare_protection(splits.train, ctx)
    ctx.info["train_seconds"] = earlier + time.perf_counter() - started
    state = defense.state_dict()
    if state is None:
        raise TypeError(f"protection {defense.name!r} returned no state_dict(); a protection must return what "
                        f"prepare_protection learned")
    return {"state": state, "info": ctx.info}


def resumable(ctx: TrainContext, stage: str, key: str, s: Session) -> float:
    """Give ``ctx`` the checkpoints of the training stored as ``stage``/``key``: ``ctx.resumed`` is the latest
    one an earlier, stopped run saved (none under ``--force-victims``), ``ctx.save_checkpoint`` keeps a new one
    in the stage cache (``checkpoints/``) with the seconds trained so far. The training's stored result
    replaces them (``cached`` saves it, and ``drop_checkpoint`` removes the file). Returns the seconds the
    earlier runs trained."""
    checkpoint_key = f"{stage}-{key}"
    stored = None if stage in s.recompute else s.cache.load("checkpoints", checkpoint_key)
    earlier, runs = (float(stored["seconds"]), int(stored["runs"])) if stored else (0.0, 0)
    started = time.perf_counter()
    ctx.resumed = stored["state"] if stored else None

    def save(state: dict) -> None:
        s.cache.save("checkpoints", checkpoint_key,
                     {"state": state, "seconds": earlier + time.perf_counter() - started, "runs": runs + 1})
    ctx.save_checkpoint = save
    ctx.info["training_runs"] = runs + 1  # processes that trained it: more than one when it was resumed
    return earlier


def drop_checkpoint(stage: str, key: str, s: Session) -> None:
    s.cache.path("checkpoints", f"{stage}-{key}").unlink(missing_ok=True)


def train_context(seed: int, what: str, splits: Splits, s: Session) -> TrainContext:
    return TrainContext(device=s.device, generator=torch.Generator().manual_seed(seed),
                        num_classes=splits.num_classes, progress=lambda message: s.stage(f"training {what}: {message}"))


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
        with torch_settings_kept(self.protection, "protect"):
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


def check_finite_weights(model: torch.nn.Module, what: str) -> None:
    bad = non_finite_weights(model)
    if bad:
        raise TrainingDiverged(f"{what} left non-finite weights in {', '.join(bad[:3])}"
                               f"{' and more' if len(bad) > 3 else ''}")


def freeze(model: torch.nn.Module) -> None:
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
