"""Every attack stays in its epsilon ball; untargeted attacks lower mAP; targeted ones raise t-MAP."""
from __future__ import annotations

import pytest
import torch

from benchmark import AttackContext, Perturbed, continuation_alpha, label_vote_code, project
from benchmark.attack.targets import draw_target_labels

QUICK = {"pgd": {"iterations": 20, "step_size": 2 / 255}, "dhta": {"iterations": 50, "step_size": 0.02},
         "p2p": {"iterations": 50, "step_size": 0.02}, "hag": {"iterations": 20}, "hag_star": {"iterations": 20},
         "sdha": {"iterations": 20}, "cgat": {"iterations": 20}, "ifgsm_dhta": {"iterations": 20},
         "tha": {"iterations": 5, "prototype_epochs": 1, "prototype_steps": 2},
         "prosgan": {"prototype_epochs": 1, "prototype_steps": 2, "epochs": 1, "decay_epochs": 0, "steps_per_epoch": 2,
                     "generator_width": 4, "discriminator_width": 4}}
PPL_FASHION_EPSILON = 0.3  # PPL's budget for FashionMNIST: its small grey images resist 8/255-sized changes


def prepared(registry, name, victim, splits, epsilon, overrides=None):
    model, database, codes = victim
    attack = registry.get("attacks", name).configure({**QUICK.get(name, {}), **(overrides or {})})
    attack.epsilon = epsilon
    attack.prepare(AttackContext(model=model, database_codes=codes, database_labels=database.labels,
                                 train=splits.train.subset(range(500)), num_classes=10, bits=32,
                                 device=torch.device("cpu"), generator=torch.Generator().manual_seed(0)))
    return attack


def adversarial(attack, x, labels, targets):
    """The final images of ``perturb``, which may come wrapped in a ``Perturbed`` (snapshots, anchor codes)."""
    result = attack.perturb(x, labels, targets)
    return result.final() if isinstance(result, Perturbed) else result


def queries(splits, n=40):
    index = torch.arange(n)
    targets = draw_target_labels(splits.query.labels[index], splits.database.labels, torch.Generator().manual_seed(1))
    return splits.query.load(index), splits.query.labels[index], targets


def mean_ap(query_codes, query_labels, codes, labels):
    """Plain mAP over the whole (small) database, ties by index; independent of benchmark.metrics."""
    distance = (codes.shape[1] - query_codes @ codes.t()) / 2
    order = (distance * len(codes) + torch.arange(len(codes))).argsort(1)
    relevant = torch.gather((query_labels @ labels.t() > 0).float(), 1, order)
    precision = relevant.cumsum(1) / torch.arange(1, len(codes) + 1)
    return float(((precision * relevant).sum(1) / relevant.sum(1).clamp_min(1)).mean())


@pytest.mark.parametrize("epsilon", [4 / 255, 16 / 255])
def test_every_attack_stays_in_the_epsilon_ball_and_pixel_range(registry, small_victim, fashion_splits, epsilon):
    x, labels, targets = queries(fashion_splits, 16)
    for name in registry.names("attacks"):
        attack = prepared(registry, name, small_victim, fashion_splits, epsilon)
        x_adv = adversarial(attack, x, labels, targets)
        assert x_adv.shape == x.shape, name
        if attack.is_bounded():
            assert float((x_adv - x).abs().max()) <= epsilon + 1e-6, name
        assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1, name
        if attack.perturbs:
            assert float((x_adv - x).abs().max()) > 0, f"{name} did not perturb at all"


def test_untargeted_attacks_lower_map(registry, small_victim, fashion_splits):
    model, database, codes = small_victim
    x, labels, targets = queries(fashion_splits)
    clean = mean_ap(model.codes(x), labels, codes, database.labels)
    for name, at_least in (("fgsm", 0.01), ("pgd", 0.03)):  # one step vs ten
        attack = prepared(registry, name, small_victim, fashion_splits, 16 / 255)
        attacked = mean_ap(model.codes(adversarial(attack, x, labels, targets)), labels, codes, database.labels)
        assert attacked < clean - at_least, (name, clean, attacked)


def test_targeted_attacks_raise_tmap_above_noise(registry, small_victim, fashion_splits):
    model, database, codes = small_victim
    x, labels, targets = queries(fashion_splits)
    noise = prepared(registry, "noise", small_victim, fashion_splits, PPL_FASHION_EPSILON)
    noise_tmap = mean_ap(model.codes(adversarial(noise, x, labels, targets)), targets, codes, database.labels)
    for name in ("p2p", "dhta"):
        attack = prepared(registry, name, small_victim, fashion_splits, PPL_FASHION_EPSILON)
        tmap = mean_ap(model.codes(adversarial(attack, x, labels, targets)), targets, codes, database.labels)
        assert tmap > noise_tmap + 0.1, (name, noise_tmap, tmap)


def test_noise_barely_moves_map(registry, small_victim, fashion_splits):
    model, database, codes = small_victim
    x, labels, targets = queries(fashion_splits)
    noise = prepared(registry, "noise", small_victim, fashion_splits, 8 / 255)
    clean = mean_ap(model.codes(x), labels, codes, database.labels)
    noisy = mean_ap(model.codes(adversarial(noise, x, labels, targets)), labels, codes, database.labels)
    assert abs(clean - noisy) < 0.05


def test_project_and_helpers():
    x = torch.tensor([[0.0, 0.5, 1.0]])
    assert torch.equal(project(torch.tensor([[-1.0, 0.9, 0.0]]), x, 0.1), torch.tensor([[0.0, 0.6, 0.9]]))
    assert [continuation_alpha(i, 2000) for i in (0, 999, 1000, 1200, 1400, 1600, 1800, 1999)] == \
        [0.1, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.0]
    codes = torch.tensor([[1.0, -1, 1], [1, 1, -1], [-1, -1, 1]])
    assert torch.equal(label_vote_code(codes), torch.tensor([1.0, -1, 1]))


def test_target_labels_share_no_class_with_the_query_and_are_seeded():
    labels = torch.tensor([[1.0, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    first = draw_target_labels(labels, labels, torch.Generator().manual_seed(3))
    again = draw_target_labels(labels, labels, torch.Generator().manual_seed(3))
    assert torch.equal(first, again)
    assert ((first * labels).sum(1) == 0).all() and (first.sum(1) > 0).all()
    with pytest.raises(ValueError, match="no allowed target"):
        draw_target_labels(torch.tensor([[1.0, 1, 1]]), labels, torch.Generator())
