"""The papers' iterative attacks (HAG, HAG*, SDHA, CgAT's attack, FGSM/I-FGSM DHTA) and their shared pieces:
CgAT's center codes, target-label rules, iteration snapshots."""
from __future__ import annotations

import itertools

import pytest
import torch

from benchmark import center_codes
from benchmark.centers import jaccard_similarity

# ---------------------------------------------------------------------------------------------------------
# CHCM center codes (CgAT Eq. 3-5) against a brute-force search over all 2^6 codes

TRAIN_LABELS = torch.tensor([[1.0, 0, 0], [1, 1, 0], [1, 1, 1], [0, 1, 0], [0, 0, 1], [0, 1, 1], [0, 0, 0]])
TRAIN_CODES = torch.tensor([
    [1.0, 1, 1, -1, -1, 1],
    [1, -1, 1, 1, -1, -1],
    [-1, -1, 1, 1, 1, -1],
    [-1, 1, -1, 1, 1, 1],
    [1, 1, -1, -1, 1, -1],
    [-1, -1, -1, 1, -1, 1],
    [1, -1, -1, -1, 1, 1],
])


def chcm_objective(code, labels, weighting):
    """Eq. 3: sum_P w_i D_H(c, b_i) - sum_N w_j D_H(c, b_j), Eq. 5 weights, written out item by item."""
    distance = [float((code != b).sum()) for b in TRAIN_CODES]
    positives = [i for i, l in enumerate(TRAIN_LABELS) if float(l @ labels) > 0]
    negatives = [i for i in range(len(TRAIN_LABELS)) if i not in positives]
    total = 0.0
    for i in positives:
        union = float(((TRAIN_LABELS[i] + labels) > 0).sum())
        similarity = float(TRAIN_LABELS[i] @ labels) / union if weighting == "paper" else 1.0
        total += similarity / len(positives) * distance[i]
    for j in negatives:
        total -= 1.0 / len(negatives) * distance[j]
    return total


def brute_force_minimisers(labels, weighting):
    scores = {code: chcm_objective(torch.tensor(code), labels, weighting)
              for code in itertools.product((-1.0, 1.0), repeat=6)}
    best = min(scores.values())
    return best, [torch.tensor(c) for c, s in scores.items() if abs(s - best) < 1e-9], scores


@pytest.mark.parametrize("weighting", ["paper", "code"])
@pytest.mark.parametrize("query", [[1.0, 0, 0], [1.0, 1, 0], [0.0, 1, 1]])
def test_center_code_minimises_the_chcm_objective(query, weighting):
    labels = torch.tensor([query])
    best, minimisers, scores = brute_force_minimisers(labels[0], weighting)
    center = center_codes(labels, TRAIN_LABELS, TRAIN_CODES, weighting=weighting)[0]
    assert scores[tuple(center.tolist())] == pytest.approx(best)
    if len(minimisers) == 1:
        assert torch.equal(center, minimisers[0])


def test_paper_and_code_weightings_differ_where_jaccard_matters():
    labels = torch.tensor([[1.0, 1, 0]])  # positives with Jaccard 1/2, 1, 2/3, 1/2, 1/3
    paper = center_codes(labels, TRAIN_LABELS, TRAIN_CODES, weighting="paper")
    code = center_codes(labels, TRAIN_LABELS, TRAIN_CODES, weighting="code")
    _, paper_best, _ = brute_force_minimisers(labels[0], "paper")
    assert len(paper_best) == 1 and torch.equal(paper[0], paper_best[0])
    assert not torch.equal(paper, code)


def test_zero_label_center_code_is_farthest_from_all_training_codes():
    labels = torch.zeros(1, 3)
    center = center_codes(labels, TRAIN_LABELS, TRAIN_CODES)
    _, minimisers, _ = brute_force_minimisers(labels[0], "paper")  # P empty: only the negative term
    assert any(torch.equal(center[0], m) for m in minimisers)
    assert torch.equal(center[0], torch.where(-TRAIN_CODES.sum(0) >= 0, 1.0, -1.0))
    assert torch.equal(center_codes(labels, TRAIN_LABELS, TRAIN_CODES, zero_label="zero"), torch.zeros(1, 6))


def test_jaccard_similarity_and_bad_center_inputs():
    assert torch.allclose(jaccard_similarity(torch.tensor([[1.0, 1, 0]]), TRAIN_LABELS[:3]),
                          torch.tensor([[1 / 2, 1, 2 / 3]]))
    with pytest.raises(ValueError, match="weighting"):
        center_codes(torch.ones(1, 3), TRAIN_LABELS, TRAIN_CODES, weighting="jaccard")
    with pytest.raises(ValueError, match="train_codes"):
        center_codes(torch.ones(1, 3), TRAIN_LABELS, TRAIN_CODES[:3])
