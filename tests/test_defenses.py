"""The adversarial-training defenses (CgAT, ATRDH): the direction of CgAT's adversarial term, one short epoch
on methods with memory banks and on one with its own ``fit`` (ADSH), with the banks holding clean outputs only.

    python -m pytest tests/test_defenses.py -q
"""
from __future__ import annotations

import pytest
import torch

from benchmark import HashingMethod, Registry, TrainContext, binarize, center_codes, training_outputs
from benchmark.victim.model import build_victim

REGISTRY = Registry.discover()
DEFENSES = ["cgat", "atrdh"]


def context(num_classes=10, seed=0):
    return TrainContext(torch.device("cpu"), torch.Generator().manual_seed(seed), num_classes)


@pytest.fixture(scope="module")
def tiny(fashion_splits):
    """96 training images and a DPSH victim trained on them for 2 epochs (16 bits)."""
    train = fashion_splits.train.subset(range(96))
    torch.manual_seed(0)
    model = build_victim("smallcnn", 16, 1, 28, fashion_splits.mean, fashion_splits.std)
    REGISTRY.get("hashing", "dpsh").configure({"epochs": 2, "batch_size": 32}).fit(model, train, context())
    return train, model.state_dict()


def victim(fashion_splits, state):
    model = build_victim("smallcnn", 16, 1, 28, fashion_splits.mean, fashion_splits.std)
    model.load_state_dict(state)
    return model


def test_defenses_are_listed_and_start_from_the_victim():
    for name in DEFENSES:
        defense = REGISTRY.get("defenses", name)
        assert defense.starts_from_victim and defense.paper


class NoLoss(HashingMethod):
    """A method without a loss of its own: training then follows the defense's adversarial term alone."""

    name = "no_loss"
    paper = "test stand-in"

    def loss(self, outputs, labels, index):
        return 0 * outputs.sum()


def center_agreement(defense, model, train, centers):
    """mean f(x') c over the training set, x' the defense's PGD images away from the centers (eval mode)."""
    model.eval()
    x, _, _ = next(train.batches(len(train)))
    x_adv = defense.adversarial_images(model, x, centers, torch.Generator().manual_seed(5))
    with torch.no_grad():
        return (torch.tanh(model.logits(x_adv)) * centers).mean().item()


def test_cgat_adversarial_term_pulls_adversarial_codes_to_the_centers(fashion_splits, tiny):
    """Eq. 12-13: minimising -mean f(x') c moves the adversarial outputs towards the center codes."""
    train, state = tiny
    model = victim(fashion_splits, state)
    # Adam, so that 6 steps visibly move the barely trained model's small outputs (SGD at 0.01 hardly does)
    defense = REGISTRY.get("defenses", "cgat").configure({"epochs": 2, "batch_size": 32, "attack_mode": "eval",
                                                          "optimizer": "adam", "lr": 1e-3})
    bank = binarize(training_outputs(model, train, torch.device("cpu")))
    centers = center_codes(train.labels, train.labels, bank)                 # (96, 16), the first epoch's centers
    before = center_agreement(defense, model, train, centers)
    defense.fit(NoLoss(), model, train, context())
    after = center_agreement(defense, model, train, centers)
    assert after > before + 0.05, f"mean f(x') c went from {before:.3f} to {after:.3f}"


class Spy:
    """Wraps a method's observe and end_epoch to record what the defense fed them."""

    def __init__(self, method):
        self.observed, self.epochs_ended = [], 0
        observe, end_epoch = method.observe, method.end_epoch

        def spy_observe(outputs, labels, index):
            assert not outputs.requires_grad
            self.observed.append((outputs.clone(), index.clone()))
            observe(outputs, labels, index)

        def spy_end_epoch(*args):
            self.epochs_ended += 1
            end_epoch(*args)

        method.observe, method.end_epoch = spy_observe, spy_end_epoch


def bank_of(method):
    """The method's bank of training outputs, and the map from observed outputs to its rows."""
    if method.name == "adsh":
        return method.U_bar, torch.tanh
    if method.name == "dsdh":
        return method.state.U, torch.tanh
    return method.bank_outputs, torch.tanh


@pytest.mark.parametrize("defense_name", DEFENSES)
@pytest.mark.parametrize("method_name,overrides", [("dpsh", {"pairs": "memory"}), ("dsdh", {}), ("adsh", {})],
                         ids=["dpsh", "dsdh", "adsh"])
def test_one_defense_epoch_keeps_the_banks_clean(fashion_splits, tiny, defense_name, method_name, overrides):
    train, state = tiny
    model = victim(fashion_splits, state)
    method = REGISTRY.get("hashing", method_name).configure(overrides)
    spy = Spy(method)
    defense = REGISTRY.get("defenses", defense_name).configure({"epochs": 1, "batch_size": 32})
    ctx = context()
    defense.fit(method, model, train, ctx)
    assert not model.training and spy.epochs_ended == 1
    assert len(spy.observed) == 3  # one clean batch recorded per step, never an adversarial one
    assert all(torch.isfinite(torch.tensor(ctx.info[key])).all() for key in ctx.info if key.endswith("per_epoch"))
    bank, entry = bank_of(method)
    expected = bank.clone()
    for outputs, index in spy.observed:
        expected[index] = entry(outputs)
    assert torch.equal(bank, expected)
    assert sorted(torch.cat([index for _, index in spy.observed]).tolist()) == list(range(96))


@pytest.mark.parametrize("defense_name", DEFENSES)
def test_defenses_work_on_a_method_with_its_own_fit(fashion_splits, tiny, defense_name):
    """ADSH trains by its own loop; under a defense it starts from the victim's codes and its V step runs
    after each epoch on every training point."""
    train, state = tiny
    model = victim(fashion_splits, state)
    method = REGISTRY.get("hashing", "adsh").configure({})
    assert type(method).fit is not HashingMethod.fit
    start_codes = binarize(training_outputs(model, train, torch.device("cpu")))
    defense = REGISTRY.get("defenses", defense_name).configure({"epochs": 1, "batch_size": 32})
    defense.fit(method, model, train, context())
    assert method.V.shape == start_codes.shape and set(method.V.unique().tolist()) <= {-1.0, 1.0}
    # the V step ran on the epoch's outputs: V is what it computes from the warm start and this epoch's bank
    replay = REGISTRY.get("hashing", "adsh").configure({})
    replay.begin(train, 16, context())
    replay.V, replay.U_bar = start_codes.clone(), method.U_bar.clone()
    replay.update_codes(torch.arange(len(train)))
    assert torch.equal(method.V, replay.V)
    codes = binarize(training_outputs(model, train, torch.device("cpu")))
    assert (codes == start_codes).float().mean() > 0.5  # a short defense epoch does not wreck the victim
