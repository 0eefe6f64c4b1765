"""The harness's stages for the papers' methods, end to end on tiny grids: protection scenarios, unbounded and
learned attacks (their state reused, retrained after an edit), defended victims (reused from the cache)."""
from __future__ import annotations

import shutil
import typing

import pandas as pd
import pytest
import torch
from conftest import ROOT, victim_of, write_grid

from benchmark import Defense, Range, Registry
from benchmark.cell import dataset_splits
from benchmark.encoding.codes import released_codes
from benchmark.planning.grid import expand, load_preset
from benchmark.running.runner import Runner
from benchmark.storage.cache import StageCache
from benchmark.victim.train import trained_protection

TINY = """
[[block]]
dataset = "fashion_mnist"
hashing = "dpsh"
backbone = "smallcnn"
bits = 16
{extra}
[block.params.datasets.fashion_mnist]
query_subset = {queries}
n_train = 600
[block.params.hashing.dpsh]
epochs = 2
"""


def tiny_cells(tmp_path, registry, extra: str, queries: int = 40, name: str = "grid"):
    grid = write_grid(tmp_path / f"{name}.toml", TINY.format(extra=extra, queries=queries))
    return expand(load_preset(str(grid)), registry)


def metric(table: pd.DataFrame, name: str, **where) -> pd.Series:
    rows = table[table["metric"] == name]
    for key, value in where.items():
        rows = rows[rows[key] == value]
    return rows.set_index("scenario")["value"] if "scenario" in rows else rows["value"]


class Shift(Defense):
    """A protection that releases every image brightened by a constant: easy to check what was encoded."""

    name, paper, kind = "shift", "test", "defenses"
    source_hash = Registry.discover().get("defenses", "none").source_hash
    protects: typing.ClassVar[bool] = True

    amount: typing.Annotated[float, Range(0, 1)] = 0.5

    def prepare_protection(self, train, ctx):
        self.trained = True

    def protect(self, x):
        return (x + self.amount).clamp(0, 1)

    def state_dict(self):
        return {"amount": self.amount}

    def load_state_dict(self, state):
        self.amount = state["amount"]


def test_each_scenario_encodes_the_queries_and_database_it_names(tmp_path):
    registry = Registry.discover()
    registry.plugins["defenses"]["shift"] = Shift
    cells = tiny_cells(tmp_path, registry, 'defense = "shift"\nattack = "none"\n'
                                           'scenario = ["c2c", "c2a", "a2c", "a2a"]')
    runner = Runner(registry, tmp_path / "results", tmp_path / "cache", device="cpu")
    assert runner.run(cells)["ran"] == 4
    table = pd.read_parquet(tmp_path / "results")
    linf = metric(table, "linf")
    assert linf["c2c"] == 0 and linf["c2a"] == 0  # clean queries
    assert linf["a2c"] == pytest.approx(0.5) and linf["a2a"] == pytest.approx(0.5)  # brightened queries
    changed = metric(table, "changed_codes")
    assert changed["c2c"] == 0 and changed["a2c"] > 0 and changed["c2a"] > 0 and changed["a2a"] > 0
    # the codes behind each cell: encode the images the scenario names with the victim, and compare
    plan = runner.plan(next(c for c in cells if c.scenario == "a2a"))
    victim, codes = victim_of(runner, plan)
    splits = dataset_splits(plan, runner.session)
    brightened_db = victim.model.codes(Shift().protect(splits.database.load(torch.arange(50))))
    brightened_q = victim.model.codes(Shift().protect(splits.query.load(torch.arange(len(splits.query)))))
    protected = released_codes(plan.release, victim, trained_protection(plan.protection, splits, runner.session),
                               splits, runner.session)
    assert torch.equal(protected["database"][:50], brightened_db)
    assert torch.equal(protected["query"], brightened_q)
    cached = runner.session.cache.load("cells", plan.key)["adversarial_codes"]
    assert torch.equal(cached, brightened_q)
    clean = metric(table, "map", topk=0)
    assert clean["c2c"] != clean["c2a"] and clean["c2c"] != clean["a2c"]


class FlaggedShift(Shift):
    """A protection whose training finds itself degenerate."""

    name = "flagged_shift"

    def prepare_protection(self, train, ctx):
        ctx.flag("surrogate_at_chance", "its surrogate could not retrieve")


def test_a_flag_raised_in_a_protections_training_marks_every_cell_that_uses_it(tmp_path):
    registry = Registry.discover()
    registry.plugins["defenses"]["flagged_shift"] = FlaggedShift
    cells = tiny_cells(tmp_path, registry, 'defense = "flagged_shift"\nattack = "none"\n'
                                           'scenario = ["c2c", "c2a", "a2a"]\ntrain_data = ["clean", "protected"]')
    runner = Runner(registry, tmp_path / "results", tmp_path / "cache", device="cpu")
    assert runner.run(cells)["ran"] == 6
    table = pd.read_parquet(tmp_path / "results")
    carries = table["flags"].str.contains("surrogate_at_chance: its surrogate could not retrieve")
    by_cell = carries.groupby([table["scenario"], table["train_data"]])
    # clean queries on a clean database, by a model trained on clean data: the protection plays no part
    assert not by_cell.any()[("c2c", "clean")]
    assert by_cell.all().drop(("c2c", "clean")).all()


def test_an_unbounded_attack_has_no_epsilon_and_its_learned_state_is_reused_until_edited(tmp_path):
    registry = Registry.discover()
    prosgan = ('attack = "prosgan"\n[block.params.attacks.prosgan]\nprototype_epochs = 1\nprototype_steps = 3\n'
               'epochs = 1\ndecay_epochs = 0\nsteps_per_epoch = 3\ngenerator_width = 4\ndiscriminator_width = 4\n')
    runner = Runner(registry, tmp_path / "results", tmp_path / "cache", device="cpu")
    first = tiny_cells(tmp_path, registry, prosgan, queries=40, name="a")
    assert [c.epsilon for c in first] == [None]
    runner.run(first)
    table = pd.read_parquet(tmp_path / "results")
    assert table["epsilon"].isna().all() and (table["epsilon_space"] == "unbounded").all()
    assert metric(table, "linf").item() > 16 / 255  # achieved L-inf recorded, nothing projected it
    assert {"prototype_code_tmap", "prototype_code_map"} <= set(table["metric"])
    prepared = list((tmp_path / "cache" / "prepared").glob("*.pt"))
    assert len(prepared) == 1
    # a second query subset and a bounded run of the same generator: no retraining
    bounded_grid = prosgan.replace('attack = "prosgan"', 'attack = "prosgan"\nepsilon = "16/255"') + "bounded = true\n"
    second = tiny_cells(tmp_path, registry, bounded_grid, queries=20, name="b")
    assert [c.epsilon for c in second] == [pytest.approx(16 / 255)]
    trainings = []
    cls = registry.get("attacks", "prosgan")
    original = cls.prepare
    cls.prepare = lambda self, ctx: trainings.append(1) or original(self, ctx)
    try:
        runner.run(second)
    finally:
        cls.prepare = original
    assert trainings == [] and list((tmp_path / "cache" / "prepared").glob("*.pt")) == prepared
    # what ProS-GAN's training recorded (AttackContext.info) is kept, also for the cell that reused it
    cache = StageCache(tmp_path / "cache")
    for cell in (first[0], second[0]):
        records = cache.load("curves", runner.plan(cell).key)["records"]
        info = next(value for who, value in records.items() if who.startswith("attack prosgan prepared on"))
        assert len(info["generator_losses_per_epoch"]) == 1 and len(info["prototype_loss_per_epoch"]) == 1
        assert set(info["generator_losses_per_epoch"][0]) == {"reconstruction", "hamming", "adversarial"}
    bounded = pd.read_parquet(tmp_path / "results")
    assert metric(bounded[bounded["n_query"] == 20], "linf").item() <= 16 / 255 + 1e-6
    # editing prosgan.py retrains it: its prepare key follows the file's hash
    for folder in ("methods/hashing", "methods/attacks", "methods/defenses", "datasets"):
        shutil.copytree(ROOT / folder, tmp_path / "root" / folder)
    with open(tmp_path / "root/methods/attacks/prosgan.py", "a") as source:
        source.write("\n# an edit\n")
    edited = Registry.discover(tmp_path / "root")
    before = Runner(registry, tmp_path / "r2", tmp_path / "cache", device="cpu").plan(first[0])
    after = Runner(edited, tmp_path / "r2", tmp_path / "cache", device="cpu").plan(first[0])
    assert before.victim.key == after.victim.key and before.attack_key != after.attack_key


def test_a_defended_victim_starts_from_the_cached_victim_and_is_reused(tmp_path):
    registry = Registry.discover()
    extra = ('defense = ["none", "cgat"]\nattack = "none"\n[block.params.defenses.cgat]\nepochs = 1\n'
             'batch_size = 128\n')
    cells = tiny_cells(tmp_path, registry, extra)
    first = Runner(registry, tmp_path / "results", tmp_path / "cache", device="cpu")
    first.run(cells)
    plans = {c.defense: first.plan(c) for c in cells}
    assert plans["cgat"].victim.start.key == plans["none"].victim.key
    assert len(list((tmp_path / "cache" / "victims").glob("*.pt"))) == 2  # the undefended one, trained once
    trained = victim_of(first, plans["cgat"])[0].info
    assert "start_train_seconds" in trained and trained["train_seconds"] > 0
    (tmp_path / "results2").mkdir()
    again = Runner(registry, tmp_path / "results2", tmp_path / "cache", device="cpu")
    calls = []
    import benchmark.victim.train as train_module

    original = train_module.train_victim
    train_module.train_victim = lambda *args: calls.append(1) or original(*args)
    try:
        assert again.run(cells)["ran"] == 2
    finally:
        train_module.train_victim = original
    assert calls == []  # both victims come from the cache
    table = pd.read_parquet(tmp_path / "results2")
    assert set(table["defense"]) == {"none", "cgat"} and not table["train_seconds"].isna().any()


def test_a_transfer_cell_across_code_lengths_scores_the_aimed_code_in_the_surrogates_space(tmp_path):
    """DHTA crafted on an 8-bit surrogate against a 16-bit victim (ProS-GAN Table 3, HAG Tables IV-VI): the
    anchor code has the surrogate's 8 bits, so it is scored against the surrogate's database codes (it used to
    be searched in the victim's 16-bit database: a 'code lengths differ' error row)."""
    registry = Registry.discover()
    transfer = ('attack = "dhta"\nepsilon = "16/255"\nsurrogate = "dpsh/smallcnn/8"\n'
                '[block.params.attacks.dhta]\niterations = 5\n')
    cells = tiny_cells(tmp_path, registry, transfer, queries=20)
    assert [(c.bits, c.surrogate) for c in cells] == [(16, "dpsh/smallcnn/8")]
    Runner(registry, tmp_path / "results", tmp_path / "cache", device="cpu").run(cells)
    table = pd.read_parquet(tmp_path / "results")
    assert set(table["status"]) == {"ok"}, table["error"].unique()
    anchor = metric(table, "anchor_code_tmap")
    assert len(anchor) > 0 and anchor.between(0, 1).all()
