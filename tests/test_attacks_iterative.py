"""The papers' iterative attacks (HAG, HAG*, SDHA, CgAT's attack, FGSM/I-FGSM DHTA) and their shared pieces:
CgAT's center codes, target-label rules, iteration snapshots."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from benchmark import (
    AttackContext,
    Perturbed,
    center_codes,
    codes_with_label,
    hag_loss,
    hag_mask,
    pgd_toward_codes,
    snapshot_milestones,
)
from benchmark.attack.targets import TARGET_RULES, draw_target_labels
from benchmark.parts.centers import jaccard_similarity
from benchmark.planning.grid import expand, load_preset

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


# ---------------------------------------------------------------------------------------------------------
# The new attacks on the small trained victim: inside the ball by themselves, and the codes move

# HAG keeps the paper's small step (500 / 255^2 on [0, 1] pixels): 40 iterations flipped no bit of this victim on
# one CPU (an Intel Xeon; a few on an AMD EPYC), 200 flip a handful
SHORT = {
    "hag": {"iterations": 200, "snapshot_every": 0},
    "hag_star": {"iterations": 200, "snapshot_every": 0},
    "sdha": {"iterations": 40},
    "cgat": {"iterations": 20},
    "ifgsm_dhta": {"iterations": 20},
    "fgsm_dhta": {},
}


def prepared(registry, name, victim, splits, epsilon, overrides=None, seed=0):
    model, database, codes = victim
    attack = registry.get("attacks", name).configure({**SHORT.get(name, {}), **(overrides or {})})
    attack.epsilon = epsilon
    attack.prepare(AttackContext(model=model, database_codes=codes, database_labels=database.labels,
                                 train=splits.train.subset(range(500)), num_classes=10, bits=32,
                                 device=torch.device("cpu"), generator=torch.Generator().manual_seed(seed)))
    return attack


def queries(splits, n=24):
    index = torch.arange(n)
    targets = draw_target_labels(splits.query.labels[index], splits.database.labels, torch.Generator().manual_seed(1))
    return splits.query.load(index), splits.query.labels[index], targets


def final_images(result):
    return result.final() if isinstance(result, Perturbed) else result


@pytest.mark.parametrize("name, overrides", [
    ("hag", {}), ("hag_star", {}), ("sdha", {}), ("sdha", {"targeted": True}), ("cgat", {}),
    ("cgat", {"weighting": "code"}), ("fgsm_dhta", {}), ("ifgsm_dhta", {}),
    ("dhta", {"iterations": 20, "step_rule": "l2"}), ("dhta", {"iterations": 20, "step_rule": "raw"}),
])
def test_new_attacks_stay_in_the_ball_by_themselves_and_move_codes(registry, small_victim, fashion_splits, name,
                                                                   overrides):
    model, database, codes = small_victim
    x, labels, targets = queries(fashion_splits)
    epsilon = 16 / 255
    result = prepared(registry, name, small_victim, fashion_splits, epsilon, overrides).perturb(
        x.clone(), labels, targets)
    x_adv = final_images(result)
    assert x_adv.shape == x.shape
    assert float((x_adv - x).abs().max()) <= epsilon + 1e-6, "outside the ball before any projection"
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    flipped = float((model.codes(x_adv) != model.codes(x)).float().mean())
    assert flipped > 0, f"{name} flipped no bit"
    if registry.get("attacks", name).targeted:
        anchors = result.codes["anchor_code"]
        assert anchors.shape == (len(x), codes.shape[1]) and set(anchors.unique().tolist()) <= {-1.0, 1.0}
        before = (model.codes(x) != anchors).float().sum(1).mean()
        after = (model.codes(x_adv) != anchors).float().sum(1).mean()
        assert after < before, (name, float(before), float(after))


# ---------------------------------------------------------------------------------------------------------
# The HAG mask (Eq. 7) and loss (Eq. 6), and SDHA's surrogate distance, on 4-bit examples by hand

def test_hag_mask_and_loss_on_a_4_bit_example():
    clean = torch.tensor([[0.9, -0.8, 0.5, -0.2]])       # sign: + - + -
    relaxed = torch.tensor([[0.6, 0.7, -0.4, -0.9]])     # |relaxed - sign| = 0.4, 1.7, 1.4, 0.1
    assert torch.equal(hag_mask(relaxed, clean, 0.5), torch.tensor([[1.0, 0, 1, 1]]))  # < 1.5
    assert torch.equal(hag_mask(relaxed, clean, 0.3), torch.tensor([[1.0, 0, 0, 1]]))  # < 1.3
    inner = (0.9 * 0.6 + 0.5 * -0.4 + -0.2 * -0.9) / 3   # bit 2 masked out, m = 3
    assert float(hag_loss(relaxed, clean, 0.5)) == pytest.approx((inner + 1) ** 2)
    flipped = torch.tensor([[-0.9, 0.9, -0.9, 0.9]])     # every bit flipped by a margin: empty mask
    assert float(hag_loss(flipped, clean, 0.5)) == pytest.approx(1.0)


def sigmoid(v):
    return 1 / (1 + math.exp(-v))


def test_sdha_surrogate_distance_on_a_4_bit_example(registry):
    sdha = registry.get("attacks", "sdha")
    q = [0.5, -0.5, 0.9, -0.1]                           # sign: + - + -
    r = [1.0, 1.0, -1.0, -1.0]                           # Hamming distance to sign(q): 2
    untargeted = (0.5 * sum(abs(a - b) * sigmoid(5 * a * b) for a, b in zip(q, r))
                  + sum(1 - sigmoid(5 * a * b) for a, b in zip(q, r))) * 2 ** -0.5
    targeted = 0.5 * sum(abs(a - b) * sigmoid(-10 * a * b) for a, b in zip(q, r)) * 2 ** 0.3
    one = torch.ones(1, 1, dtype=torch.bool)
    got = sdha.weighted_distance(torch.tensor([q]), torch.tensor([r]), one, 5.0, 0.5)
    assert float(got) == pytest.approx(untargeted, rel=1e-5)
    got = sdha.weighted_distance(torch.tensor([q]), torch.tensor([r]), one, 10.0, -0.3, targeted=True)
    assert float(got) == pytest.approx(targeted, rel=1e-5)
    # the mean runs over the relevant codes only: an irrelevant second code changes nothing
    codes = torch.tensor([r, [1.0, -1, 1, -1]])
    got = sdha.weighted_distance(torch.tensor([q]), codes, torch.tensor([[True, False]]), 5.0, 0.5)
    assert float(got) == pytest.approx(untargeted, rel=1e-5)


# ---------------------------------------------------------------------------------------------------------
# Iteration snapshots: the last milestone of one run is the plain run of that length

def test_snapshot_milestones():
    assert snapshot_milestones(2000, 500) == (500, 1000, 1500, 2000)
    assert snapshot_milestones(450, 200) == (200, 400, 450)
    assert snapshot_milestones(100, 0) == ()


@pytest.mark.parametrize("name, overrides", [
    ("hag", {"iterations": 12}), ("sdha", {"iterations": 12}), ("cgat", {"iterations": 12}),
    ("pgd", {"iterations": 12}), ("dhta", {"iterations": 12}), ("ifgsm_dhta", {"iterations": 12}),
])
def test_a_snapshot_run_ends_where_a_plain_run_does(registry, small_victim, fashion_splits, name, overrides):
    x, labels, targets = queries(fashion_splits, 8)
    plain = prepared(registry, name, small_victim, fashion_splits, 8 / 255, {**overrides, "snapshot_every": 0})
    snapped = prepared(registry, name, small_victim, fashion_splits, 8 / 255, {**overrides, "snapshot_every": 5})
    plain_images = final_images(plain.perturb(x.clone(), labels, targets))
    snapshots = snapped.perturb(x.clone(), labels, targets).snapshots()
    assert sorted(snapshots) == [5, 10, 12]
    assert torch.equal(snapshots[12], plain_images)
    assert not torch.equal(snapshots[5], snapshots[12])


def test_pgd_milestones_leave_the_plain_result_unchanged(small_victim, fashion_splits):
    model, _, _ = small_victim
    x = fashion_splits.query.load(torch.arange(6))
    target = -model.codes(x)
    plain = pgd_toward_codes(model, x, target, 8 / 255, 9, 1 / 255, continuation=True)
    snapped = pgd_toward_codes(model, x, target, 8 / 255, 9, 1 / 255, continuation=True, milestones=(3, 9))
    assert sorted(snapped) == [3, 9] and torch.equal(snapped[9], plain)
    shorter = pgd_toward_codes(model, x, target, 8 / 255, 3, 1 / 255, alpha=0.1)
    fixed = pgd_toward_codes(model, x, target, 8 / 255, 9, 1 / 255, alpha=0.1, milestones=(3,))
    assert torch.equal(fixed[3], shorter)  # without continuation an early milestone is a shorter run too
    with pytest.raises(ValueError, match="milestones"):
        pgd_toward_codes(model, x, target, 8 / 255, 9, 1 / 255, milestones=(10,))


# ---------------------------------------------------------------------------------------------------------
# Step rules and anchors

def test_l2_and_raw_steps_mean_what_the_docstring_says(small_victim, fashion_splits):
    model, _, _ = small_victim
    x = 0.25 + 0.5 * fashion_splits.query.load(torch.arange(4))  # in [0.25, 0.75]: no [0, 1] clip cuts a step
    target = -model.codes(x)
    step = pgd_toward_codes(model, x, target, 1.0, 1, 0.001, step_rule="l2", alpha=0.1) - x
    assert torch.allclose(step.flatten(1).pow(2).mean(1).sqrt(), torch.full((4,), 0.001), rtol=1e-4)  # rms
    # raw: each image's step is the gradient of its own loss, whatever batch it is in
    alone = pgd_toward_codes(model, x[:1], target[:1], 1.0, 2, 1.0, step_rule="raw", alpha=0.1)
    batched = pgd_toward_codes(model, x, target, 1.0, 2, 1.0, step_rule="raw", alpha=0.1)
    assert torch.allclose(alone, batched[:1], atol=1e-6)


def test_anchor_items_are_drawn_without_replacement_where_enough_exist():
    labels = torch.tensor([[1.0, 0]] * 5 + [[0.0, 1]] * 2)
    codes = torch.arange(7.0)[:, None]                   # each item's "code" is its index
    picked = codes_with_label(codes, labels, torch.tensor([1.0, 0]), 5, torch.Generator().manual_seed(0))
    assert sorted(picked.flatten().tolist()) == [0, 1, 2, 3, 4]
    rare = codes_with_label(codes, labels, torch.tensor([0.0, 1]), 5, torch.Generator().manual_seed(0))
    assert set(rare.flatten().tolist()) <= {5, 6} and len(rare) == 5  # too few: with replacement


# ---------------------------------------------------------------------------------------------------------
# Target-label rules on a multi-label fixture

DATABASE_LABELS = torch.tensor(
    [[1.0, 0, 0, 0]] * 12 + [[0, 1, 0, 0]] * 11 + [[1, 1, 0, 0]] * 10 + [[0, 0, 1, 0]] * 3 + [[0, 0, 1, 1]] * 2
    + [[0, 0, 0, 1]] * 15 + [[0, 0, 0, 0]] * 4)
QUERY_LABELS = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1], [0, 0, 0, 1],
                             [1, 0, 0, 1]] * 30)


@pytest.mark.parametrize("rule", TARGET_RULES)
def test_every_target_rule_is_seeded_and_draws_database_label_vectors(rule):
    first = draw_target_labels(QUERY_LABELS, DATABASE_LABELS, torch.Generator().manual_seed(5), rule)
    again = draw_target_labels(QUERY_LABELS, DATABASE_LABELS, torch.Generator().manual_seed(5), rule)
    other = draw_target_labels(QUERY_LABELS, DATABASE_LABELS, torch.Generator().manual_seed(6), rule)
    assert torch.equal(first, again) and not torch.equal(first, other)
    vectors = {tuple(v) for v in DATABASE_LABELS.tolist()}
    assert all(tuple(t) in vectors for t in first.tolist())
    assert (first.sum(1) > 0).all()                      # never the all-zero vector


def test_target_rules_keep_their_promises():
    generator = torch.Generator().manual_seed(0)
    disjoint = draw_target_labels(QUERY_LABELS, DATABASE_LABELS, generator, "disjoint")
    assert ((disjoint * QUERY_LABELS).sum(1) == 0).all()
    different = draw_target_labels(QUERY_LABELS, DATABASE_LABELS, generator, "different")
    assert not (different == QUERY_LABELS).all(1).any()
    assert ((different * QUERY_LABELS).sum(1) > 0).any()  # overlapping targets are allowed here
    frequent = draw_target_labels(QUERY_LABELS, DATABASE_LABELS, generator, "frequent", n_anchors=9)
    counts = {tuple(v): int((DATABASE_LABELS == torch.tensor(v)).all(1).sum()) for v in frequent.tolist()}
    assert min(counts.values()) > 9 and not (frequent == QUERY_LABELS).all(1).any()
    assert len(counts) == 4                              # the four vectors carried by more than 9 items
    anything = draw_target_labels(QUERY_LABELS, DATABASE_LABELS, generator, "any")
    assert (anything == QUERY_LABELS).all(1).any()       # the query's own label vector may come back
    with pytest.raises(ValueError, match="accepted: disjoint, different, any, frequent"):
        draw_target_labels(QUERY_LABELS, DATABASE_LABELS, generator, "nearby")


def test_the_attacks_grid_runs_every_attack_against_dpsh_32_at_both_budgets(registry):
    cells = expand(load_preset("attacks"), registry)
    assert set(registry.names("attacks")) - {"tha", "prosgan"} <= {c.attack for c in cells}
    assert {(c.hashing, c.bits) for c in cells} == {("dpsh", 32)}
    assert {round(c.epsilon * 255) for c in cells if c.attack == "hag"} == {8, 16}


def test_a_slow_attack_reports_its_iterations_inside_a_batch(registry, small_victim, fashion_splits):
    """The shared loops (PGD toward codes, image descent) report every iteration to the harness's progress line,
    so a batch of a 2000-iteration attack is not minutes of silence."""
    from benchmark.attack.stage import perturb_queries

    model, database, codes = small_victim
    queries = fashion_splits.query.subset(range(12))
    messages = {}
    for name in ("pgd", "hag"):
        attack = registry.get("attacks", name).configure({"iterations": 3})
        attack.prepare(AttackContext(model=model, database_codes=codes, database_labels=database.labels,
                                     train=fashion_splits.train, num_classes=10, bits=32,
                                     device=torch.device("cpu"), generator=torch.Generator().manual_seed(0)))
        messages[name] = []
        perturb_queries(attack, queries, torch.zeros(12, 10), 8 / 255, model, 5, torch.device("cpu"),
                        messages[name].append)
        steps = [m for m in messages[name] if ": iteration " in m]
        assert steps[:3] == [f"attacking queries 1-5 of 12: iteration {i}/3" for i in (1, 2, 3)], messages[name]
        assert steps[-1] == "attacking queries 11-12 of 12: iteration 3/3"
