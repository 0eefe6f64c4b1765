"""The hashing methods: each loss against hand arithmetic on a tiny batch, CSQ's hash centres, the
discrete steps of DSDH and ADSH, the observe/loss contract (a loss never writes the method's state), and
each method trained briefly on a FashionMNIST subset.

    python -m pytest tests/test_hashing.py -q

Hand-checked batches give the relaxed outputs u directly: ``outputs = atanh(u)`` so that tanh(outputs) = u.
A clean training step is ``training_loss`` (``observe`` the batch, then ``loss``).
"""
from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

from benchmark import Registry, TensorImages, TrainContext, one_hot
from benchmark.victim.model import build_victim


def configure(registry, name, **overrides):
    return registry.get("hashing", name).configure(overrides)


def context(num_classes, seed=0):
    return TrainContext(torch.device("cpu"), torch.Generator().manual_seed(seed), num_classes)


def relaxed(u):
    """Pre-activation outputs whose tanh is ``u``."""
    return torch.atanh(torch.tensor(u, dtype=torch.float32))


def tiny_set(classes, num_classes):
    """A training set of len(classes) blank 2x2 images with the given single labels."""
    return TensorImages(torch.zeros(len(classes), 1, 2, 2), one_hot(classes, num_classes))


def begun(registry, name, classes, num_classes, bits, **overrides):
    method = configure(registry, name, **overrides)
    method.begin(tiny_set(classes, num_classes), bits, context(num_classes))
    return method


LOG2 = math.log(2)
# u0 = u1 = (0.5, 0.5) share class 0; u2 = (-0.5, 0.5) is class 1. u0.u1 = 0.5, u0.u2 = u1.u2 = 0, |u|^2 = 0.5.
U3 = [[0.5, 0.5], [0.5, 0.5], [-0.5, 0.5]]
CLASSES3 = [0, 0, 1]
# similar pairs: (0,0) (0,1) (1,0) (1,1) (2,2) = 5, all with u_i.u_j = 0.5; dissimilar: 4, all with u_i.u_j = 0


# ----------------------------------------------------------------------------------------------------------------
# losses by hand


def test_dph_loss_by_hand(registry):
    method = begun(registry, "dph", [0, 1], 2, bits=2)
    labels = one_hot([0, 1], 2)
    loss = method.training_loss(relaxed([[0.5, -0.5], [0.5, 0.5]]), labels, torch.tensor([0, 1]))
    # u0.u0 / K = 0.5/2 = 0.25 -> (0.25 - 1)^2 = 0.5625 (twice, with u1.u1); u0.u1 = 0 -> (0 + 1)^2 = 1 (twice)
    assert loss.item() == pytest.approx((2 * 0.5625 + 2 * 1) / 4)


def test_hashnet_loss_by_hand_and_continuation(registry):
    method = begun(registry, "hashnet", CLASSES3, 2, bits=2, scale_step=1)
    labels = one_hot(CLASSES3, 2)
    loss = method.training_loss(relaxed(U3), labels, torch.arange(3))  # beta = 1 at iteration 0
    # a = 0.1: similar pairs d = 0.05, dissimilar d = 0; S = 9, S1 = 5, S0 = 4, weights 9/5 and 9/4, so
    # L = (9/5 * 5 * l(0.05, s=1) + 9/4 * 4 * l(0, s=0)) / 9 = l(0.05, 1) + l(0, 0)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(0.05)) - 0.05 + LOG2, rel=1e-6)
    method.training_loss(relaxed(U3), labels, torch.arange(3))  # iteration 1: beta = (1 + 0.005 * 1)^0.5
    assert method.beta == pytest.approx(1.005 ** 0.5)


def test_dsh_loss_by_hand(registry):
    method = begun(registry, "dsh", CLASSES3, 2, bits=2)
    outputs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # raw outputs, no tanh
    loss = method.training_loss(outputs, one_hot(CLASSES3, 2), torch.arange(3))
    # squared distances: d01 = 2, d02 = d12 = 1; margin m = 2K = 4
    # similar (0,1),(1,0): 2/2 = 1 each; dissimilar (0,2),(2,0),(1,2),(2,1): max(4 - 1, 0)/2 = 1.5 each
    contrastive = (2 * 1 + 4 * 1.5) / 9
    # | |u| - 1 |: (0, 1), (1, 0), (0, 0) -> mean 2/6, weight 0.1
    assert loss.item() == pytest.approx(contrastive + 0.1 * 2 / 6)


def dsdh_with_codes(registry, name):
    method = begun(registry, name, CLASSES3, 2, bits=2)
    method.state.B = torch.tensor([[1.0, 1.0], [1.0, 1.0], [-1.0, 1.0]])
    method.state.W = torch.eye(2)
    method.state.have_codes = True
    return method


def dsdh_by_hand():
    # theta = u.u/2: similar pairs 0.25, dissimilar 0 -> likelihood mean over 9 pairs
    likelihood = (5 * (math.log(1 + math.exp(0.25)) - 0.25) + 4 * LOG2) / 9
    # b - u = (0.5, 0.5), (0.5, 0.5), (-0.5, 0.5): sum of squares 6 * 0.25 = 1.5, over B N = 3 * 3, times eta = 55
    quantisation = 55 * 1.5 / 9
    # W = I so W^T b = b; y - b = (0, -1), (0, -1), (1, 0): mean of squares 3/6; ||W||^2 mean = 2/4
    return likelihood + quantisation + 3 / 6 + 2 / 4


def test_dsdh_loss_by_hand(registry):
    method = dsdh_with_codes(registry, "dsdh")
    loss = method.training_loss(relaxed(U3), one_hot(CLASSES3, 2), torch.arange(3))
    assert loss.item() == pytest.approx(dsdh_by_hand(), rel=1e-6)
    assert torch.allclose(method.state.U, torch.tensor(U3))  # the bank the discrete step reads


def test_dsdh_c_adds_the_sliced_wasserstein_term(registry):
    method = dsdh_with_codes(registry, "dsdh_c")
    u = [[-0.5, 0.5], [0.5, -0.5], [0.5, 0.5]]  # every column sorted: (-0.5, 0.5, 0.5)
    state = method.sampler.get_state()
    loss = method.training_loss(relaxed(u), one_hot(CLASSES3, 2), torch.arange(3))
    draw = torch.randint(0, 2, (3, 2), generator=torch.Generator().set_state(state)) * 2 - 1  # the targets it drew
    # a column of targets with n entries -1 sorts to n times -1 then 3 - n times +1; against (-0.5, 0.5, 0.5):
    cost = {0: 1.5 ** 2 + 0.5 ** 2 + 0.5 ** 2, 1: 0.5 ** 2 + 0.5 ** 2 + 0.5 ** 2,
            2: 0.5 ** 2 + 1.5 ** 2 + 0.5 ** 2, 3: 0.5 ** 2 + 1.5 ** 2 + 1.5 ** 2}
    swd = sum(cost[int((draw[:, k] < 0).sum())] for k in range(2)) / 6
    # DSDH's part: theta = u.u/2: diagonal 0.25 (3 similar pairs), (0,1) and (1,0) -0.25 (similar),
    # (0,2),(2,0),(1,2),(2,1) 0 (dissimilar)
    likelihood = (3 * (math.log(1 + math.exp(0.25)) - 0.25) + 2 * (math.log(1 + math.exp(-0.25)) + 0.25)
                  + 4 * LOG2) / 9
    # b - u with b = (1, 1), (1, 1), (-1, 1): (1.5, 0.5), (0.5, 1.5), (-1.5, 0.5): sum of squares 3 * 2.5
    dsdh = likelihood + 55 * 7.5 / 9 + 3 / 6 + 2 / 4
    assert loss.item() == pytest.approx(dsdh + 0.1 * swd, rel=1e-6)


def test_dsdh_discrete_step_by_hand(registry):
    method = begun(registry, "dsdh", [0, 1], 2, bits=2)
    method.state.U = torch.tensor([[0.9, 0.9], [-0.9, 0.9]])  # as if filled by one epoch of ``observe``
    method.end_epoch(None, None, 0, context(2))
    # eta/mu * U dominates P = W Y + 55 U, so B = sign(U); then W = (B^T B + nu/mu I)^-1 B^T Y = (3 I)^-1 B^T
    assert torch.equal(method.state.B, torch.tensor([[1.0, 1.0], [-1.0, 1.0]]))
    assert torch.allclose(method.state.W, torch.tensor([[1.0, -1.0], [1.0, 1.0]]) / 3)


def test_dch_loss_by_hand(registry):
    method = begun(registry, "dch", CLASSES3, 2, bits=2)
    loss = method.training_loss(relaxed(U3), one_hot(CLASSES3, 2), torch.arange(3))
    # d = K/2 (1 - cos): similar pairs cos = 1 -> clamped 0.99 -> d = 0.01; dissimilar cos = 0 -> d = 1
    # weights 9/5 (similar) and 9/4 (dissimilar), so mean over 9 = one similar term + one dissimilar term
    similar = math.log(0.01 / 20) + math.log(1 + 20 / 0.01)
    dissimilar = math.log(1 + 20 / 1)
    # |u| = (0.5, 0.5) is parallel to 1: d = 0.01 -> log(1 + 0.01/20), weight 0.1
    assert loss.item() == pytest.approx(similar + dissimilar + 0.1 * math.log(1 + 0.01 / 20), rel=1e-5)


def test_csq_loss_by_hand(registry):
    method = begun(registry, "csq", [0, 1, 2], 3, bits=4)
    # centres: rows of H_4 = (1,1,1,1), (1,-1,1,-1), (1,1,-1,-1)
    u = [[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, -0.5, -0.5]]
    loss = method.training_loss(relaxed(u), one_hot([0, 1], 3), torch.tensor([0, 1]))
    # (u + 1)/2 = 0.75 or 0.25; item 0 against (1,1,1,1): 4 x -log 0.75;
    # item 1 against (1,0,1,0): -log 0.75, -log 0.25 (0.75 vs 0), -log 0.25 (0.25 vs 1), -log 0.75 (0.25 vs 0)
    bce = (6 * -math.log(0.75) + 2 * -math.log(0.25)) / 8
    assert loss.item() == pytest.approx(bce + 1e-4 * 0.25, rel=1e-6)  # (|u| - 1)^2 = 0.25 everywhere


def test_adsh_loss_by_hand(registry):
    method = begun(registry, "adsh", CLASSES3, 2, bits=2)
    method.V = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0]])
    loss = method.training_loss(relaxed([[0.5, 0.5], [-0.5, 0.5]]), one_hot([0, 1], 2), torch.tensor([0, 2]))
    # s against the database labels (0, 0, 1): rows (1, 1, 0) and (0, 0, 1); 3 similar, 3 dissimilar -> r = 1,
    # S = (1, 1, -1), (-1, -1, 1). u0 V^T - K S0 = (1, 0, 0) - (2, 2, -2) = (-1, -2, 2): squares sum to 9;
    # u2 V^T - K S1 = (0, -1, 1) - (-2, -2, 2) = (2, 1, -1): 6
    # ||V_i - u_i||^2 = 0.5 for both, gamma = 200; over N B = 3 * 2
    assert loss.item() == pytest.approx((9 + 6 + 200 * 1.0) / 6)
    assert torch.allclose(method.similarity(one_hot([0], 2)), torch.tensor([[1.0, 1.0, -2.0]]))  # r = 2/1


def test_adsh_code_step_by_hand(registry):
    method = begun(registry, "adsh", [0, 1], 2, bits=2)
    method.U_bar = torch.tensor([[0.5, 0.5], [-0.5, 0.5]])
    method.update_codes(torch.tensor([0, 1]))
    # S = 2I - 1 (r = 1); Q = -2K S^T U - 2 gamma U = -4 [[1, 0], [-1, 0]] - 400 U = [[-204, -200], [204, -200]]
    # bit 0 (V = 0): V_0 = -sign(Q_0) = (1, -1); bit 1: U_0.U_1 = 0, so V_1 = -sign(Q_1) = (1, 1)
    assert torch.equal(method.V, torch.tensor([[1.0, 1.0], [-1.0, 1.0]]))


# ----------------------------------------------------------------------------------------------------------------
# the observe/loss contract: ``observe`` records a clean batch; ``loss`` reads the method's state, never writes it


REGISTRY = Registry.discover()
HASHING = REGISTRY.names("hashing")
# every method as configured by default, and each memory-bank variant ("pairs": "memory")
CONTRACT = [(name, {}) for name in HASHING] + [
    (name, {"pairs": "memory"}) for name in HASHING if "pairs" in REGISTRY.get("hashing", name).defaults()]


def state_of(value):
    """A deep copy of what a method keeps: tensors, numbers, generator states, containers, dataclasses."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, torch.Generator):
        return value.get_state()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return state_of(vars(value))
    if isinstance(value, dict):
        return {key: state_of(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [state_of(item) for item in value]
    return copy.deepcopy(value)


def assert_same_state(before, after, where):
    assert type(before) is type(after), f"{where}: {type(before).__name__} became {type(after).__name__}"
    if isinstance(before, torch.Tensor):
        assert before.shape == after.shape and torch.equal(before, after), f"{where} changed"
    elif isinstance(before, dict):
        assert before.keys() == after.keys(), f"{where}: attributes {set(before) ^ set(after)} appeared or vanished"
        for key in before:
            assert_same_state(before[key], after[key], f"{where}.{key}")
    elif isinstance(before, list):
        assert len(before) == len(after), f"{where} changed length"
        for i, (a, b) in enumerate(zip(before, after)):
            assert_same_state(a, b, f"{where}[{i}]")
    else:
        assert before == after, f"{where} changed from {before!r} to {after!r}"


def started(name, overrides, seed=0):
    """The method after ``begin`` on 6 items of 3 classes at 4 bits."""
    method = REGISTRY.get("hashing", name).configure(overrides)
    method.begin(tiny_set([0, 1, 2, 0, 1, 2], 3), 4, context(3, seed))
    return method


BATCH_LABELS, BATCH_INDEX = one_hot([0, 1, 2, 0], 3), torch.tensor([4, 1, 2, 3])


@pytest.mark.parametrize("name,overrides", CONTRACT, ids=[f"{n}-{o.get('pairs', 'default')}" for n, o in CONTRACT])
def test_loss_never_writes_the_method_state(name, overrides):
    draws = torch.Generator().manual_seed(1)
    method = started(name, overrides)
    method.observe(torch.randn(4, 4, generator=draws), BATCH_LABELS, BATCH_INDEX)
    before = state_of(vars(method))
    outputs = torch.randn(4, 4, generator=draws, requires_grad=True)
    method.loss(outputs, BATCH_LABELS, BATCH_INDEX).backward()
    method.loss(3 * torch.randn(4, 4, generator=draws), BATCH_LABELS, BATCH_INDEX)
    assert_same_state(before, state_of(vars(method)), name)


@pytest.mark.parametrize("name,overrides", [("dsdh", {"pairs": "memory"}), ("dsdh_c", {}), ("adsh", {}),
                                            ("hashnet", {"pairs": "memory", "scale_step": 1})],
                         ids=["dsdh", "dsdh_c", "adsh", "hashnet"])
def test_a_defense_step_leaves_the_state_as_a_clean_step(name, overrides):
    """observe clean + loss on clean and adversarial outputs = a clean training step, banks included."""
    draws = torch.Generator().manual_seed(2)
    clean_outputs, adversarial_outputs = torch.randn(4, 4, generator=draws), torch.randn(4, 4, generator=draws)
    clean, defended = started(name, overrides), started(name, overrides)
    for _ in range(2):  # two steps, so that the second reads what the first recorded
        clean.training_loss(clean_outputs.clone().requires_grad_(), BATCH_LABELS, BATCH_INDEX).backward()
        outputs = clean_outputs.clone().requires_grad_()
        adversarial = adversarial_outputs.clone().requires_grad_()
        loss = defended.training_loss(outputs, BATCH_LABELS, BATCH_INDEX)
        loss = loss + defended.loss(adversarial, BATCH_LABELS, BATCH_INDEX)
        loss.backward()
        assert adversarial.grad is not None and adversarial.grad.abs().sum() > 0  # the adversarial term counted
    if name == "adsh":
        clean.update_codes(BATCH_INDEX)
        defended.update_codes(BATCH_INDEX)
        bank = defended.U_bar
    else:
        bank = getattr(defended, "state", None)
        bank = bank.U if bank is not None else defended.bank_outputs
        clean.end_epoch(None, None, 0, context(3))
        defended.end_epoch(None, None, 0, context(3))
    scale = getattr(defended, "beta", 1.0)
    assert torch.allclose(bank[BATCH_INDEX], torch.tanh(scale * clean_outputs))  # the clean outputs, recorded
    assert_same_state(state_of(vars(clean)), state_of(vars(defended)), name)


class FixedOutputs(torch.nn.Module):
    """A stand-in victim whose outputs for the 6 tiny training images are fixed (item i gets row i)."""

    def __init__(self, outputs):
        super().__init__()
        self.outputs = outputs

    def logits(self, x):
        return self.outputs[x.flatten(1)[:, 0].long()]


def indexed_set():
    """The 6-item training set of ``started``, each image holding its own index in pixel 0."""
    return TensorImages(torch.arange(6.0).view(6, 1, 1, 1).expand(6, 1, 2, 2).clone(), one_hot([0, 1, 2, 0, 1, 2], 3))


def test_warm_start_sets_the_state_training_leaves():
    outputs = torch.randn(6, 4, generator=torch.Generator().manual_seed(3))
    model, train = FixedOutputs(outputs), indexed_set()
    dsdh = started("dsdh", {})
    dsdh.warm_start(model, train, context(3))
    assert torch.allclose(dsdh.state.U, torch.tanh(outputs)) and dsdh.state.have_codes
    expected = started("dsdh", {})
    expected.state.U = torch.tanh(outputs)
    expected.end_epoch(None, None, 0, context(3))
    assert torch.equal(dsdh.state.B, expected.state.B) and torch.equal(dsdh.state.W, expected.state.W)
    adsh = started("adsh", {})
    adsh.warm_start(model, train, context(3))
    assert torch.equal(adsh.V, torch.where(outputs >= 0, 1.0, -1.0))
    dpsh = started("dpsh", {"pairs": "memory"})
    dpsh.warm_start(model, train, context(3))
    assert torch.allclose(dpsh.bank_outputs, torch.tanh(outputs))
    # HashNet after fit(epochs=2, batch_size=4) on 6 items: 4 iterations; with scale_step 3 the last update was at 3
    hashnet = started("hashnet", {"epochs": 2, "batch_size": 4, "scale_step": 3})
    hashnet.warm_start(model, train, context(3))
    assert hashnet.iteration == 4 and hashnet.beta == pytest.approx((1 + 0.005 * 3) ** 0.5)


# ----------------------------------------------------------------------------------------------------------------
# CSQ's hash centres


@pytest.mark.parametrize("bits,classes", [(32, 10), (16, 20), (8, 10)])
def test_hadamard_centres_are_half_the_code_apart(registry, bits, classes):
    method = begun(registry, "csq", list(range(classes)), classes, bits)
    centres = method.centers
    assert centres.shape == (classes, bits) and set(centres.unique().tolist()) == {-1.0, 1.0}
    distance = (bits - centres @ centres.t()) / 2
    off = distance[~torch.eye(classes, dtype=torch.bool)]
    # rows of H_K are K/2 apart; a row and its negation are K apart
    opposite = (distance == bits).sum().item()
    assert set(off.unique().tolist()) <= {bits / 2, float(bits)}
    assert opposite == 2 * max(0, classes - bits)


def test_random_centres_fill_in_past_2k_balanced_and_spread(registry):
    method = begun(registry, "csq", list(range(20)), 20, bits=8)  # 2K = 16 Hadamard rows, 4 random ones
    hadamard = method.centers[:16]
    assert torch.equal(hadamard[:8], -hadamard[8:]) and torch.equal(hadamard[:8] @ hadamard[:8].t(), 8 * torch.eye(8))
    assert torch.equal(method.centers[16:].sum(dim=1), torch.zeros(4))  # balanced: four -1 and four +1

    method = begun(registry, "csq", list(range(10)), 10, bits=12)  # no Sylvester matrix of order 12: all random
    centres = method.centers
    assert torch.equal(centres.sum(dim=1), torch.zeros(10))
    distance = ((12 - centres @ centres.t()) / 2)[torch.triu_indices(10, 10, 1).unbind()]
    assert distance.min() > 12 / 4 and distance.mean() >= 12 / 2


def test_multi_label_centre_is_the_sign_of_the_sum_with_fixed_ties(registry):
    method = begun(registry, "csq", [0, 1, 2], 3, bits=4)
    method.tie_center = torch.tensor([-1.0, -1.0, 1.0, 1.0])
    labels = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    # c0 + c1 = (2, 0, 2, 0): ties at bits 1 and 3 take the tie centre's -1 and 1
    # c0 + c1 + c2 = (3, 1, 1, -1); a single label is its own centre
    expected = torch.tensor([[1.0, -1.0, 1.0, 1.0], [1.0, 1.0, 1.0, -1.0], [1.0, -1.0, 1.0, -1.0]])
    assert torch.equal(method.label_centers(labels), expected)


# ----------------------------------------------------------------------------------------------------------------
# training on FashionMNIST


def mean_average_precision(query_codes, query_labels, db_codes, db_labels):
    """mAP over the whole database, Hamming ranking, ties in database order."""
    hamming = 0.5 * (query_codes.shape[1] - query_codes @ db_codes.t())
    order = torch.sort(hamming, dim=1, stable=True).indices
    relevant = ((query_labels @ db_labels.t()) > 0).float().gather(1, order)
    precision = relevant.cumsum(1) / torch.arange(1, relevant.shape[1] + 1)
    return ((precision * relevant).sum(1) / relevant.sum(1).clamp(min=1)).mean().item()


def test_mean_average_precision_by_hand():
    query = torch.tensor([[1.0, 1.0]])
    database = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])  # distances 0, 2, 1 -> ranks 1, 3, 2
    labels = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # relevant at ranks 1 and 3: AP = (1/1 + 2/3) / 2
    assert mean_average_precision(query, torch.tensor([[1.0, 0.0]]), database, labels) == pytest.approx(5 / 6)


@pytest.fixture(scope="module")
def fashion_subsets(fashion_splits):
    """2,000 training images, a 2,000-image database and the fixture's 200 queries."""
    return fashion_splits.train.subset(range(2000)), fashion_splits.database.subset(range(2000)), fashion_splits.query


# name, overrides for a short run (2,000 images, 16 bits), and the clean mAP it must beat: about 0.1 below what
# it reached when this was written (chance is about 0.1; the loss tests above pin the arithmetic)
TRAINING = [
    ("dph", {"epochs": 15, "batch_size": 64}, 0.4),
    ("hashnet", {"epochs": 8, "batch_size": 64}, 0.4),
    ("dsh", {"epochs": 8, "batch_size": 64}, 0.5),
    ("dsdh", {"epochs": 12, "batch_size": 64}, 0.45),
    ("dsdh_c", {"epochs": 12, "batch_size": 64}, 0.45),
    ("dch", {"epochs": 8, "batch_size": 64}, 0.55),
    ("csq", {"epochs": 8, "batch_size": 64}, 0.6),
    ("adsh", {"epochs": 6, "num_samples": 1000}, 0.6),
]


@pytest.mark.parametrize("name,overrides,floor", TRAINING, ids=[t[0] for t in TRAINING])
def test_method_trains_on_fashion_mnist(registry, fashion_splits, fashion_subsets, name, overrides, floor):
    train, database, queries = fashion_subsets
    torch.manual_seed(0)
    model = build_victim("smallcnn", 16, 1, 28, fashion_splits.mean, fashion_splits.std)
    method = configure(registry, name, **overrides)
    ctx = context(fashion_splits.num_classes)
    method.fit(model, train, ctx)
    losses = ctx.info["loss_per_epoch"]
    assert len(losses) == method.epochs and losses[-1] < losses[0]
    assert not model.training
    codes = [torch.cat([model.codes(x) for x, _, _ in images.batches(1000)]) for images in (queries, database)]
    score = mean_average_precision(codes[0], queries.labels, codes[1], database.labels)
    assert score > floor, f"{name}: clean mAP {score:.3f}"
