"""The codes stage: a trained victim's codes of one split (sign of its outputs, 0 -> +1), cached by key.

    codes = clean_codes(plan.codes, victim, splits, session)          # .cache/codes/<key>.pt, with diagnostics
    released = released_codes(plan.release, victim, protection, splits, session)   # protected database, queries

The victim's diagnostics (``benchmark.scoring.flags.victim_diagnostics``: code diversity, a clean-mAP probe,
an input-gradient probe) are computed with its clean codes and cached with them.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from benchmark.data.dataset import Splits
from benchmark.data.images import ImageSet
from benchmark.planning.plan import CodesPlan, ReleasePlan
from benchmark.scoring.flags import victim_diagnostics
from benchmark.session import Session
from benchmark.victim.compute import ENCODING_BATCH, in_batches
from benchmark.victim.guard import torch_settings_kept
from benchmark.victim.model import HashModel
from benchmark.victim.train import ProtectedImages, Protection, Trained


@dataclass
class Codes:
    database: torch.Tensor        # (N, K) in {-1, +1}, on the session's device
    query: torch.Tensor           # (Q, K)
    diagnostics: dict = field(default_factory=dict)


def clean_codes(plan: CodesPlan, victim: Trained, splits: Splits, s: Session) -> Codes:
    """The victim's database and query codes of the split, and its diagnostics."""
    def encode_split() -> dict:
        s.stage(f"encoding database and queries with {plan.victim.label()}")
        codes = {"database": encode(victim.model, splits.database, s.device),
                 "query": encode(victim.model, splits.query, s.device)}
        codes["diagnostics"] = victim_diagnostics(victim.model, codes["database"], codes["query"], splits, s.device)
        return codes

    stored = s.memo.get("codes", plan.key, lambda: s.cached("codes", plan.key, encode_split))
    return Codes(stored["database"].to(s.device), stored["query"].to(s.device), stored.get("diagnostics", {}))


def released_codes(plan: ReleasePlan, victim: Trained, protection: Protection, splits: Splits, s: Session) -> dict:
    """Codes of the protected database (the protection's released share) and of the protected queries."""
    def encode_release() -> dict:
        defense = with_release_parameters(protection.defense, plan, s)
        with torch_settings_kept(defense, "database_mask"):
            mask = defense.database_mask(len(splits.database), torch.Generator().manual_seed(plan.seed))
        if mask.shape != (len(splits.database),) or mask.dtype != torch.bool:
            raise ValueError(f"protection {defense.name!r}.database_mask returned {tuple(mask.shape)} "
                             f"{mask.dtype}; expected a bool tensor of shape ({len(splits.database)},)")
        s.stage(f"encoding the protected database and queries with {victim.plan.label()}")
        return {"database": encode(victim.model, ProtectedImages(splits.database, defense, mask, s.device), s.device),
                "query": encode(victim.model, ProtectedImages(splits.query, defense, device=s.device), s.device),
                "database_share": float(mask.float().mean())}

    return s.cached("codes", plan.key, encode_release)


def with_release_parameters(defense, plan: ReleasePlan, s: Session):
    """The trained protection with this cell's release parameters (``release_parameters``, e.g. PPL's
    ``database_share``). One protection is trained for every value of them, and the one a run holds in memory
    was configured by whichever cell needed it first: its own values would release every later cell's share."""
    names = type(defense).release_parameters
    if not names:
        return defense
    configured = plan.protection.defense.configure(s.registry)
    released = copy.copy(defense)  # shares the learned state; only the release parameters differ
    for name in names:
        setattr(released, name, getattr(configured, name))
    return released


@torch.no_grad()
def encode(model: HashModel, images: ImageSet, device: torch.device, batch_size: int = ENCODING_BATCH) -> torch.Tensor:
    """Codes of every image, in batches halved on CUDA out-of-memory (a batch's codes do not depend on its size)."""
    codes = []
    in_batches(images, batch_size, lambda x, _, __: codes.append(model.codes(x.to(device)).cpu()), device)
    return torch.cat(codes)
