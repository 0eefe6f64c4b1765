"""The learned targeted attacks: the PrototypeNet's losses by hand, THA and ProS-GAN on a small victim."""
from __future__ import annotations

import math

import pytest
import torch

from benchmark import (PrototypeNet, circle_prototype_loss, prosgan_prototype_loss, prototype_loss,
                       train_prototype_net)

# One target label (class 2 of 2) against three training items: codes b_j, labels y_j.
RELAXED = torch.tensor([[0.5, -0.5]])                       # h, K = 2
TARGET = torch.tensor([[0.0, 1.0]])
TRAIN_CODES = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])
TRAIN_LABELS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # only item 2 shares the target's class
QUANTIZATION = 1e-4 * (0.5 ** 2 + 0.5 ** 2)                 # 1e-4 ||sign(h) - h||^2 / n, n = 1


def test_prosgan_prototype_loss_by_hand():
    predicted = torch.tensor([[0.3, 0.6]])
    # theta_j = h.b_j / 2 = (0, 0.5, 0); s = (0, 1, 0)
    likelihood = -((0 - math.log(2)) + (0.5 - math.log(1 + math.exp(0.5))) + (0 - math.log(2))) / 3
    classification = (0.3 ** 2 + 0.4 ** 2) / 2
    loss = prosgan_prototype_loss(RELAXED, predicted, TARGET, TRAIN_CODES, TRAIN_LABELS)
    assert loss.item() == pytest.approx(likelihood + QUANTIZATION + classification, rel=1e-6)


def test_circle_prototype_loss_by_hand_and_its_options():
    # s_j = h.b_j / K = (0, 0.5, 0); the positive pair has a_p = 2 - 0.5, the negatives a_n = 0 + 2
    positive_term = -1.5 * 0.5
    negative_term = math.log(math.exp(0) + math.exp(0))
    loss = circle_prototype_loss(RELAXED, TARGET, TRAIN_CODES, TRAIN_LABELS)
    assert loss.item() == pytest.approx(negative_term + positive_term + QUANTIZATION, rel=1e-6)
    softplus = circle_prototype_loss(RELAXED, TARGET, TRAIN_CODES, TRAIN_LABELS, softplus=True)
    assert softplus.item() == pytest.approx(math.log1p(math.exp(negative_term + positive_term)) + QUANTIZATION,
                                            rel=1e-6)
    # THA's triu(diagonal=1) mask drops the pair (0, 0): one negative left, logsumexp of (0) = 0
    masked = circle_prototype_loss(RELAXED, TARGET, TRAIN_CODES, TRAIN_LABELS, upper_triangle_only=True)
    assert masked.item() == pytest.approx(positive_term + QUANTIZATION, rel=1e-6)


def test_circle_loss_weights_are_constants():
    """dL/dh = (mean of a_n b_n over the two tied negatives - a_p b_p) / K, plus the quantisation gradient."""
    relaxed = RELAXED.clone().requires_grad_(True)
    circle_prototype_loss(relaxed, TARGET, TRAIN_CODES, TRAIN_LABELS).backward()
    negatives = 2.0 * (TRAIN_CODES[0] + TRAIN_CODES[2]) / 2
    expected = (negatives - 1.5 * TRAIN_CODES[1]) / 2 - 2e-4 * (torch.sign(RELAXED[0]) - RELAXED[0])
    assert torch.allclose(relaxed.grad[0], expected, atol=1e-7)


def test_prototype_loss_rejects_an_unknown_objective():
    net = PrototypeNet(num_classes=2, bits=2, hidden=8, feature_dim=4)
    with pytest.raises(ValueError, match="'prosgan', 'circle'.*'pairwise'"):
        prototype_loss(net, TARGET, TRAIN_CODES, TRAIN_LABELS, objective="pairwise")


@pytest.mark.parametrize("objective", ["prosgan", "circle"])
def test_trained_prototypes_match_their_class_codes(objective):
    """Four classes, each with one code (every bit +1 in two classes, -1 in two): a few hundred steps give each
    class its own code back."""
    torch.manual_seed(0)
    class_codes = torch.tensor([[1.0, 1, 1, -1, -1, -1, 1, 1], [1, -1, -1, -1, 1, 1, 1, -1],
                                [-1, 1, -1, 1, -1, 1, -1, 1], [-1, -1, 1, 1, 1, -1, -1, -1]])
    labels = torch.eye(4)
    net = PrototypeNet(num_classes=4, bits=8, hidden=64, feature_dim=16)
    losses = train_prototype_net(net, labels, class_codes.repeat(5, 1), labels.repeat(5, 1), objective,
                                 epochs=3, steps_per_epoch=100, batch_size=16, lr=1e-3,
                                 generator=torch.Generator().manual_seed(0))
    assert losses[-1] < losses[0]
    assert torch.equal(net.codes(labels), class_codes)
