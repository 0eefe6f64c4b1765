"""The loaded victim: the external model in place of a trained one (``victim_of`` in ``benchmark.cell``).

    victim = loaded_victim(plan.victim, splits, session)    # memoised in this process; nothing to cache

"Training" it is loading the user's file: the files must be those the cell was planned with (their digests
are in its key), the model must give (N, K) finite outputs with K the cell's bits, and it is frozen like a
trained victim. Its codes, attacks and cells are cached under keys that hold the digests.
"""
from __future__ import annotations

import time

import torch

from benchmark.data.dataset import Splits
from benchmark.external.files import ExternalInputError
from benchmark.external.model import ExternalModel, load_network, probe_bits
from benchmark.planning.plan import VictimPlan
from benchmark.session import Session
from benchmark.victim.train import Trained, freeze


def loaded_victim(plan: VictimPlan, splits: Splits, s: Session) -> Trained:
    return s.memo.get("victims", plan.key, lambda: load_victim_model(plan, splits, s))


def load_victim_model(plan: VictimPlan, splits: Splits, s: Session) -> Trained:
    method = plan.hashing.configure(s.registry)
    method.check_unchanged()
    started = time.perf_counter()
    s.stage(f"loading {plan.label()} from {method.model}")
    net = load_network(method.model, method.checkpoint, s.device)
    bits = probe_bits(net, splits.query.load(torch.arange(min(2, len(splits.query)))).to(s.device), plan.backbone)
    if bits != plan.bits:
        raise ExternalInputError(f"model {method.model!r} gives {bits} outputs per image; its cells were planned "
                                 f"for {plan.bits} bits")
    model = ExternalModel(net, bits, plan.backbone).to(s.device)
    freeze(model)
    return Trained(plan, model, {"load_seconds": time.perf_counter() - started})
