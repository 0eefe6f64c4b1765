"""Degenerate perturbations are flagged: one that does not depend on the image (``perturbation_universal``),
and a learned generator at its bound everywhere (``generator_saturated``), never a sign-gradient attack."""
from __future__ import annotations

import json
import typing

import pandas as pd
import pytest
import torch
from conftest import write_grid

from benchmark import Attack, AttackContext, Defense, Range, Registry, project
from benchmark.attack.stage import PerturbationStatistics, perturb_queries
from benchmark.planning.grid import expand, load_preset
from benchmark.running.runner import Runner
from benchmark.scoring.flags import SATURATED_SHARE, UNIVERSAL_SHARE, cell_flags
from benchmark.victim.train import ProtectedImages

EPSILON = 0.3  # PPL's FashionMNIST budget


def statistics_of(x: torch.Tensor, x_adv: torch.Tensor, epsilon: float | None = EPSILON) -> dict:
    """PerturbationStatistics fed in batches of 50, as the harness feeds it."""
    statistics = PerturbationStatistics(epsilon)
    for clean, changed in zip(x.split(50), x_adv.split(50)):
        statistics.add(clean, changed, 0)
    return statistics.result()


def flag_names(perturbation: dict, learned_generator: bool) -> set[str]:
    flags = cell_flags(perturbs=True, changed_share=0.5, violations=0.0, unreachable_targets=0, n_queries=1,
                       universal_share=perturbation["universal_share"],
                       saturated_share=perturbation["saturated_share"], learned_generator=learned_generator)
    return {flag.split(":")[0] for flag in flags}


@pytest.fixture(scope="module")
def clean(fashion_splits) -> torch.Tensor:
    return fashion_splits.query.load(torch.arange(200))


def test_universal_share_is_one_for_the_same_perturbation_on_every_image():
    x = torch.full((20, 1, 4, 4), 0.5)
    pattern = 0.1 * torch.sign(torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0)))
    assert statistics_of(x, x + pattern, 0.1)["universal_share"] == pytest.approx(1.0)
    assert statistics_of(x, x + pattern * torch.tensor([1.0, -1.0]).repeat(10).view(20, 1, 1, 1),
                         0.1)["universal_share"] == pytest.approx(0.0, abs=1e-12)  # +-pattern: mean zero


def test_a_constant_brightness_shift_is_flagged_universal(clean):
    """clamp(x + 0.3, 0, 1): PPL's published protection under the letter of its optimiser."""
    perturbation = statistics_of(clean, (clean + EPSILON).clamp(0, 1))
    assert perturbation["universal_share"] > UNIVERSAL_SHARE
    assert "perturbation_universal" in flag_names(perturbation, learned_generator=False)


def test_random_sign_noise_is_not_universal(clean):
    sign = torch.randint(0, 2, clean.shape, generator=torch.Generator().manual_seed(0)).float() * 2 - 1
    perturbation = statistics_of(clean, (clean + EPSILON * sign).clamp(0, 1))
    assert perturbation["universal_share"] < 0.5
    assert perturbation["saturated_share"] == pytest.approx(1.0)  # every pixel at +-epsilon or clipped
    assert flag_names(perturbation, learned_generator=False) == set()


def test_nothing_perturbed_is_neither_universal_nor_flagged(clean):
    perturbation = statistics_of(clean, clean.clone())
    assert perturbation["universal_share"] != perturbation["universal_share"]  # NaN: no energy to share
    assert flag_names(perturbation, learned_generator=True) == set()  # the black background alone: ~half


def attacked(registry, name: str, small_victim, fashion_splits, epsilon: float, overrides: dict | None = None):
    """The attack's outcome through the harness's own loop (projection and statistics) on 64 queries."""
    model, database, codes = small_victim
    attack = registry.get("attacks", name).configure(overrides or {})
    attack.epsilon = epsilon
    attack.prepare(AttackContext(model=model, database_codes=codes, database_labels=database.labels,
                                 train=fashion_splits.train.subset(range(500)), num_classes=10, bits=32,
                                 device=torch.device("cpu"), generator=torch.Generator().manual_seed(0)))
    queries = fashion_splits.query.subset(range(64))
    targets = torch.zeros(64, fashion_splits.num_classes)
    targets[:, 0] = 1
    outcome = perturb_queries(attack, queries, targets, epsilon, model, 32, torch.device("cpu"))
    return attack, outcome.perturbation


def test_pgd_is_not_universal(registry, small_victim, fashion_splits):
    attack, perturbation = attacked(registry, "pgd", small_victim, fashion_splits, 16 / 255,
                                    {"iterations": 10, "step_size": 2 / 255})
    assert perturbation["universal_share"] < 0.5, perturbation
    assert "perturbation_universal" not in flag_names(perturbation, attack.learned_generator)


def test_fgsm_sits_at_its_bound_but_is_not_a_generator(registry, small_victim, fashion_splits):
    attack, perturbation = attacked(registry, "fgsm", small_victim, fashion_splits, 16 / 255)
    assert perturbation["saturated_share"] > SATURATED_SHARE  # one sign step: at +-epsilon by design
    assert not attack.learned_generator
    assert "generator_saturated" not in flag_names(perturbation, attack.learned_generator)
    assert "generator_saturated" in flag_names(perturbation, learned_generator=True)  # the test could fail


def test_the_generators_are_marked_as_such(registry):
    assert registry.get("attacks", "prosgan").learned_generator
    assert registry.get("defenses", "ppl").learned_generator
    assert not any(registry.get("attacks", name).learned_generator for name in ("fgsm", "pgd", "noise", "dhta"))


def ppl_generator(registry, fashion_splits, output_bias: float | None):
    """A built PPL protection; with ``output_bias`` its last layer's tanh is driven to that side's bound."""
    ppl = registry.get("defenses", "ppl").configure({"width": 4})
    torch.manual_seed(0)
    ppl.build((1, 28, 28), fashion_splits.mean, fashion_splits.std)
    if output_bias is not None:
        last = [layer for layer in ppl.generator.decoder if isinstance(layer, torch.nn.Conv2d)][-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.fill_(output_bias)
    return ppl


@pytest.mark.parametrize("output_bias", [20.0, -20.0])
def test_a_generator_at_its_bound_everywhere_is_flagged_saturated(registry, fashion_splits, clean, output_bias):
    """G = +-epsilon on every pixel (tanh saturated): at +epsilon, or clipped at 0 or 1, everywhere."""
    ppl = ppl_generator(registry, fashion_splits, output_bias)
    released = ProtectedImages(fashion_splits.query, ppl).load(torch.arange(len(clean)))
    perturbation = statistics_of(clean, released, ppl.epsilon)
    assert perturbation["saturated_share"] > SATURATED_SHARE
    assert "generator_saturated" in flag_names(perturbation, ppl.learned_generator)


def test_an_untrained_generator_is_not_saturated(registry, fashion_splits, clean):
    ppl = ppl_generator(registry, fashion_splits, None)
    released = ProtectedImages(fashion_splits.query, ppl).load(torch.arange(len(clean)))
    perturbation = statistics_of(clean, released, ppl.epsilon)
    assert perturbation["saturated_share"] < SATURATED_SHARE
    assert "generator_saturated" not in flag_names(perturbation, ppl.learned_generator)


class ConstantShift(Defense):
    """A "generator" at +epsilon everywhere: the published PPL protection, clamp(x + 0.3, 0, 1)."""

    name, paper, kind = "constant_shift", "test", "defenses"
    source_hash = Registry.discover().get("defenses", "none").source_hash
    protects: typing.ClassVar[bool] = True
    learned_generator: typing.ClassVar[bool] = True

    epsilon: typing.Annotated[float, Range(0, 1)] = EPSILON

    def prepare_protection(self, train, ctx):
        self.trained = True

    def protect(self, x):
        return (x + self.epsilon).clamp(0, 1)

    def state_dict(self):
        return {"epsilon": self.epsilon}

    def load_state_dict(self, state):
        self.epsilon = state["epsilon"]


TINY_PROTECTION = """
[[block]]
dataset = "fashion_mnist"
hashing = "dpsh"
backbone = "smallcnn"
bits = 16
defense = "constant_shift"
attack = "none"
scenario = ["c2c", "a2c"]
train_data = ["clean", "protected"]
[block.params.datasets.fashion_mnist]
query_subset = 60
n_train = 400
[block.params.hashing.dpsh]
epochs = 1
"""


def test_a_constant_shift_protection_is_flagged_on_every_cell_that_uses_it(tmp_path):
    """Through the runner: the released queries' shares are metric rows, and both flags mark every cell whose
    queries or victim's training data the protection touched (c2c on protected training: clean queries, the
    shares measured on the queries the protection would release; c2a takes the same path); c2c on clean
    training carries none."""
    registry = Registry.discover()
    registry.plugins["defenses"]["constant_shift"] = ConstantShift
    cells = expand(load_preset(str(write_grid(tmp_path / "grid.toml", TINY_PROTECTION))), registry)
    runner = Runner(registry, tmp_path / "results", tmp_path / "cache", device="cpu")
    assert runner.run(cells)["ran"] == 4
    table = pd.read_parquet(tmp_path / "results")
    by_cell = table.groupby(["scenario", "train_data"])
    universal = by_cell["flags"].agg(lambda f: f.str.contains("perturbation_universal").all())
    saturated = by_cell["flags"].agg(lambda f: f.str.contains("generator_saturated").all())
    assert not universal[("c2c", "clean")] and not saturated[("c2c", "clean")]
    assert universal.drop(("c2c", "clean")).all() and saturated.drop(("c2c", "clean")).all()
    shares = table[table["metric"] == "universal_share"].set_index(["scenario", "train_data"])["value"]
    assert shares[("a2c", "clean")] > UNIVERSAL_SHARE and shares[("c2c", "protected")] > UNIVERSAL_SHARE
    linf = table[table["metric"] == "linf"].set_index(["scenario", "train_data"])["value"]
    assert linf[("c2c", "protected")] == 0 and linf[("a2c", "clean")] == pytest.approx(EPSILON)  # as released


class QuarterStep(Attack):
    """Random signs at a quarter of the budget: an attack whose schedule stops short of epsilon."""
    name = "quarter_step"
    paper = "test double"

    def perturb(self, x, labels, target_labels):
        signs = torch.randint(0, 2, x.shape, generator=self.ctx.generator).to(x.device) * 2 - 1
        return project(x + self.epsilon / 4 * signs, x, self.epsilon)


BUDGET_GRID = """
[[block]]
dataset = "fashion_mnist"
hashing = "dpsh"
backbone = "smallcnn"
bits = 16
attack = ["quarter_step", "noise"]
epsilon = 0.0627451
[block.params.datasets.fashion_mnist]
query_subset = 40
n_train = 300
[block.params.hashing.dpsh]
epochs = 1
"""


def test_an_attack_that_stops_short_of_its_budget_is_flagged_and_rows_carry_the_cells_epsilon(tmp_path):
    registry = Registry.discover()
    registry.plugins["attacks"]["quarter_step"] = QuarterStep
    cells = expand(load_preset(str(write_grid(tmp_path / "grid.toml", BUDGET_GRID))), registry)
    runner = Runner(registry, tmp_path / "results", tmp_path / "cache", device="cpu")
    assert runner.run(cells)["ran"] == 2
    table = pd.read_parquet(tmp_path / "results")
    flagged = table.groupby("attack")["flags"].agg(lambda f: f.str.contains("budget_unreached").all())
    assert flagged["quarter_step"] and not table[table["attack"] == "noise"]["flags"].str.contains(
        "budget_unreached").any()  # uniform noise's L-inf per image sits near epsilon
    assert table["attack_params"].map(lambda text: json.loads(text)["epsilon"]).eq(0.0627451).all()
    assert "epsilon" not in table["attack_label"].str.cat()


def test_budget_unreached_is_for_attacks_with_a_budget_only():
    names = lambda **kw: {f.split(":")[0] for f in cell_flags(perturbs=True, changed_share=0.5, violations=0.0,  # noqa: E731
                                                             unreachable_targets=0, n_queries=1, **kw)}
    assert "budget_unreached" in names(epsilon=0.1, linf_mean=0.02)
    assert "budget_unreached" not in names(epsilon=0.1, linf_mean=0.099)
    assert "budget_unreached" not in names(epsilon=None, linf_mean=0.02)  # unbounded, or a protection's release
