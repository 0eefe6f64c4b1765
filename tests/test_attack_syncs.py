"""No host synchronisation inside an attack iteration: the ops that read a value on the host (``.item()``,
``bool(t)``, ``nonzero``, ``masked_select``, ``unique``, boolean-mask indexing, ...) are counted while an attack
runs 2 and 4 iterations; the count must not grow with the iterations (on a GPU each one stalls the queue)."""
from __future__ import annotations

import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmark import AttackContext, anchor_codes, codes_with_label, label_vote_code
from benchmark.attack.targets import draw_target_labels

aten = torch.ops.aten
HOST_READS = {aten._local_scalar_dense.default, aten.is_nonzero.default, aten.nonzero.default,
              aten.nonzero_static.default, aten.masked_select.default, aten._unique2.default, aten.unique_dim.default,
              aten.unique_consecutive.default, aten.bincount.default, aten.repeat_interleave.Tensor}


class HostReads(TorchDispatchMode):
    """Records each op that reads a tensor's values on the host, with the innermost hashbench line that called it.

    torch.optim's step counters (Adam's and SGD's ``step``, a CPU tensor whatever the device) are left out: they
    are read on the CPU without waiting for the GPU."""

    def __init__(self):
        super().__init__()
        self.reads: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        boolean_index = func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default) and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ()) if i is not None)
        if func in HOST_READS or boolean_index:
            stack = traceback.extract_stack()
            if not any("torch/optim" in frame.filename for frame in stack):
                ours = [f for f in stack if "/benchmark/" in f.filename or "/methods/" in f.filename]
                self.reads.append(f"{func} at {ours[-1].filename}:{ours[-1].lineno}" if ours else str(func))
        return func(*args, **kwargs)


ATTACKS = ["pgd", "hag", "cgat", "sdha", "dhta", "p2p"]


@pytest.fixture(scope="module")
def context(small_victim, fashion_splits):
    model, database, codes = small_victim
    x = fashion_splits.query.load(torch.arange(6))
    labels = fashion_splits.query.labels[:6]
    targets = draw_target_labels(labels, database.labels, torch.Generator().manual_seed(1))
    return model, database, codes, fashion_splits.train.subset(range(300)), x, labels, targets


def host_reads(registry, context, name: str, iterations: int, targeted: bool = False) -> list[str]:
    model, database, codes, train, x, labels, targets = context
    attack = registry.get("attacks", name).configure({"iterations": iterations,
                                                      **({"targeted": True} if targeted else {})})
    attack.epsilon = 8 / 255
    attack.prepare(AttackContext(model=model, database_codes=codes, database_labels=database.labels, train=train,
                                 num_classes=10, bits=32, device=torch.device("cpu"),
                                 generator=torch.Generator().manual_seed(0)))
    with HostReads() as reads:
        attack.perturb(x.clone(), labels.clone(), targets.clone())
    return reads.reads


@pytest.mark.parametrize("name", ATTACKS)
def test_no_host_read_inside_an_attack_iteration(registry, context, name):
    short, long = host_reads(registry, context, name, 2), host_reads(registry, context, name, 4)
    assert len(long) == len(short), f"{name}: {len(short)} host reads at 2 iterations, {len(long)} at 4: {long}"


def test_no_host_read_inside_a_targeted_sdha_iteration(registry, context):
    short, long = (host_reads(registry, context, "sdha", n, targeted=True) for n in (2, 4))
    assert len(long) == len(short), long


def test_the_census_sees_a_host_read_per_iteration(registry, context, monkeypatch):
    """The counter itself: a loss that calls ``.item()`` every iteration is counted every iteration."""
    from benchmark.parts import steps

    real = steps.report_iteration
    monkeypatch.setattr(steps, "report_iteration", lambda done, total: (torch.ones(1).item(), real(done, total)))
    short, long = host_reads(registry, context, "pgd", 2), host_reads(registry, context, "pgd", 4)
    assert len(long) == len(short) + 2


def test_batched_anchor_codes_are_the_per_query_ones():
    """The batched anchors draw what the per-query loop drew: the same generator calls, in query order."""
    generator = torch.Generator().manual_seed(3)
    labels = torch.eye(4)[torch.randint(4, (60,), generator=generator)]
    labels[::7, 0] = 1  # some multi-label items: a label vector matches only when equal, not when it overlaps
    codes = torch.where(torch.rand(60, 16, generator=generator) > 0.5, 1.0, -1.0)
    targets = labels[torch.randint(60, (12,), generator=generator)]
    for count in (1, 3, 9, 40):  # 40: more than some labels have, drawn with replacement
        loop = torch.Generator().manual_seed(count)
        one_by_one = torch.stack([label_vote_code(codes_with_label(codes, labels, t, count, loop)) for t in targets])
        gen = torch.Generator().manual_seed(count)
        assert torch.equal(anchor_codes(codes, labels, targets, count, gen), one_by_one), count
    with pytest.raises(ValueError, match=r"no database item has the target label vector \[0, 1, 1, 0\]"):
        anchor_codes(codes, labels, torch.tensor([[0.0, 1, 1, 0]]), 3, torch.Generator())
