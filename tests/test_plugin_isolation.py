"""Nothing silently wrong, nothing lost (issue 22): a plugin cannot leak state into the models or torch's settings
that later cells use, ``--force`` recomputes what it says, a plugin's outputs cannot change the store's schema,
and a result file is taken only for the cell it holds. Each test fails on the harness before the change it names."""
from __future__ import annotations

import logging
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from test_faults import grid_cells, run, with_plugins

from benchmark import Attack, Perturbed, Registry
from benchmark.planning.plan import Planner
from benchmark.rows import typed_row
from benchmark.running.runner import Runner
from benchmark.storage.cache import StageCache
from benchmark.storage.results import cell_done, cell_file
from benchmark.victim.guard import PluginLeak, check_model_kept, model_fingerprint, torch_settings_kept
from benchmark.victim.model import build_victim
from leaderboard.store import read_results

NOISE_HASH = Registry.discover().get("attacks", "noise").source_hash


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """A cache holding the tiny DPSH victim of ``test_faults.grid_cells``, trained once for the tests below."""
    cache = tmp_path_factory.mktemp("cache")
    registry = Registry.discover()
    Runner(registry, cache.parent / "warm-results", cache, device="cpu").run(grid_cells(cache.parent, registry))
    return cache


def attack_class(name: str, **methods) -> type[Attack]:
    """An attack plugin class named ``name`` with the given methods (perturb returns the clean images by default)."""
    namespace = {"name": name, "paper": "test", "kind": "attacks", "source_hash": NOISE_HASH,
                 "perturb": lambda self, x, labels, target_labels: x, **methods}
    return type(name.title().replace("_", ""), (Attack,), namespace)


def clean_map(table: pd.DataFrame, attack: str = "none") -> float:
    rows = table[(table.attack == attack) & (table.metric == "map") & (table.topk == 0)]
    return rows["value"].item()


# ---------------------------------------------------------------- the model's fingerprint and torch's settings

def small_model():
    torch.manual_seed(0)
    model = build_victim("smallcnn", 16, 1, 28)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


@pytest.mark.parametrize("leak, part", [
    (lambda m: m.hash_layer.register_forward_hook(lambda module, inputs, output: -output), "hooks"),
    (lambda m: m.features.conv[0].register_forward_pre_hook(lambda module, inputs: inputs), "hooks"),
    (lambda m: m.register_full_backward_hook(lambda module, grad_in, grad_out: None), "hooks"),
    (lambda m: setattr(m, "codes", lambda x: torch.ones(len(x), 16)), "instance attributes"),
    (lambda m: setattr(m.hash_layer, "in_features", 7), "instance attributes"),
    (lambda m: setattr(m, "hash_layer", torch.nn.Linear(800, 16)), "module tree"),
    (lambda m: m.features.conv.append(torch.nn.Identity()), "module tree"),
    (lambda m: m.hash_layer.weight.requires_grad_(True), "parameters"),
    (lambda m: m.features.train(), "train/eval mode"),
    (lambda m: m.hash_layer.bias.data.add_(1), "weights"),
])
def test_every_way_a_call_can_change_a_shared_model_is_caught_naming_the_plugin(leak, part):
    model = small_model()
    before = model_fingerprint(model)
    leak(model)
    attack = attack_class("leaky")()
    with pytest.raises(PluginLeak, match=rf"attacks leaky \(.*test_plugin_isolation.py\) changed .*the {part}.* "
                                         rf"of the victim in perturb\(\)"):
        check_model_kept(before, model_fingerprint(model), attack, "perturb()", "the victim")


def test_using_a_model_leaves_its_fingerprint_as_it_was():
    model = small_model()
    before = model_fingerprint(model)
    x = torch.rand(4, 1, 28, 28, requires_grad=True)
    model(x).sum().backward()  # an attack's gradient step: the input's gradient, none of the model's
    model.codes(x.detach())
    assert model_fingerprint(model) == before


def test_torch_settings_a_plugin_changes_are_put_back(caplog):
    before = (torch.is_grad_enabled(), torch.get_default_dtype(), torch.are_deterministic_algorithms_enabled(),
              torch.get_num_threads(), torch.is_anomaly_enabled(), torch.get_float32_matmul_precision())
    handle = None
    with caplog.at_level(logging.WARNING, logger="hashbench"), torch_settings_kept(attack_class("meddler")(), "prepare"):
        torch.set_grad_enabled(False)
        torch.set_default_dtype(torch.float64)
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(torch.get_num_threads() + 1)
        torch.set_anomaly_enabled(True)
        torch.set_float32_matmul_precision("medium" if before[-1] != "medium" else "high")
        handle = torch.nn.modules.module.register_module_forward_hook(lambda module, inputs, output: output)
    assert (torch.is_grad_enabled(), torch.get_default_dtype(), torch.are_deterministic_algorithms_enabled(),
            torch.get_num_threads(), torch.is_anomaly_enabled(), torch.get_float32_matmul_precision()) == before
    assert handle.id not in torch.nn.modules.module._global_forward_hooks
    assert "attacks meddler" in caplog.text and "grad mode" in caplog.text and "prepare()" in caplog.text


# ---------------------------------------------------------------- plugins cannot leak into later cells

def test_an_attack_hooking_the_victim_fails_its_cell_and_later_cells_are_right(tmp_path, shared_cache):
    def prepare(self, ctx):
        self.ctx = ctx
        ctx.model.hash_layer.register_forward_hook(lambda module, inputs, output: -output)  # every code flipped

    registry = with_plugins(attack_class("hooker", prepare=prepare))
    alone = run(tmp_path / "alone", registry, grid_cells(tmp_path, registry), shared_cache)
    cells = grid_cells(tmp_path, registry, ('"hooker"', '"none"'))
    assert [cell.attack for cell in cells] == ["hooker", "none"]  # the victim is memoised from one to the next
    after = run(tmp_path / "after", registry, cells, shared_cache)
    hooked = after[after.attack == "hooker"]
    assert (hooked["status"] == "error").all()
    assert hooked["error"].str.contains(r"attacks hooker \(.*\) changed the hooks of the victim in prepare\(\)").all()
    assert clean_map(after) == clean_map(alone)


def test_an_attack_setting_an_attribute_on_the_model_fails_its_cell(tmp_path, shared_cache):
    def perturb(self, x, labels, target_labels):
        self.ctx.model.codes = lambda images: torch.ones(len(images), 16)  # every query gets one code
        return x

    registry = with_plugins(attack_class("shadower", perturb=perturb))
    table = run(tmp_path, registry, grid_cells(tmp_path, registry, ('"shadower"', '"none"')), shared_cache)
    shadowed = table[table.attack == "shadower"]
    assert (shadowed["status"] == "error").all()
    assert shadowed["error"].str.contains("changed the instance attributes of the victim in perturb()",
                                          regex=False).all()
    assert (table[table.attack == "none"]["status"] == "ok").all()


def test_an_attack_turning_gradients_off_does_not_break_the_next_cell(tmp_path, shared_cache):
    def prepare(self, ctx):
        self.ctx = ctx
        torch.set_grad_enabled(False)

    registry = with_plugins(attack_class("numb", prepare=prepare))
    cells = grid_cells(tmp_path, registry, ('"numb"', '"pgd"'))
    assert [cell.attack for cell in cells] == ["numb", "pgd"]
    table = run(tmp_path, registry, cells, shared_cache)
    assert torch.is_grad_enabled()
    assert (table["status"] == "ok").all(), set(table["error"])
    assert table[table.attack == "pgd"]["error"].eq("").all()


def test_a_hashing_method_leaving_a_hook_on_its_victim_fails_the_training_naming_it(tmp_path):
    registry = Registry.discover()

    class Hooking(registry.get("hashing", "dpsh")):
        name = "hooking"

        def fit(self, model, train, ctx):
            super().fit(model, train, ctx)
            model.hash_layer.register_forward_hook(lambda module, inputs, output: output * 0)

    registry.plugins["hashing"]["hooking"] = Hooking
    table = run(tmp_path, registry, grid_cells(tmp_path, registry, hashing="hooking"))
    assert (table["status"] == "error").all()
    assert table["error"].str.contains(r"defenses none \(.*none.py\) changed the hooks of the victim it trained "
                                       r"with hashing hooking").all()


# ---------------------------------------------------------------- --force recomputes what it says

def tamper(cache_dir, stage: str, key: str, change) -> None:
    cache = StageCache(cache_dir)
    value = cache.load(stage, key)
    change(value)
    cache.save(stage, key, value)


def test_force_recomputes_a_tampered_attack_outcome(tmp_path, shared_cache):
    registry = Registry.discover()
    cells = grid_cells(tmp_path, registry, ('"pgd"',))
    plan = Planner(registry).plan(cells[0])
    true = clean_map(run(tmp_path, registry, cells, shared_cache), "pgd")

    def flipped(stored):
        codes = stored["outcome"]["codes"]
        for iteration in codes:
            codes[iteration] = -codes[iteration]

    tamper(tmp_path / "cache", "attacks", plan.attack.key, flipped)
    cell_file(tmp_path / "results", plan.key).unlink()
    served = clean_map(run(tmp_path, registry, cells), "pgd")
    assert served != true  # without --force the cached (tampered) outcome is scored
    assert clean_map(run(tmp_path, registry, cells, force=True), "pgd") == true


def test_force_victims_also_re_encodes_tampered_codes(tmp_path, shared_cache):
    registry = Registry.discover()
    cells = grid_cells(tmp_path, registry)
    plan = Planner(registry).plan(cells[0])
    true = clean_map(run(tmp_path, registry, cells, shared_cache))
    tamper(tmp_path / "cache", "codes", plan.codes.key, lambda codes: codes["database"].mul_(-1))
    assert clean_map(run(tmp_path, registry, cells, force=True)) != true  # --force keeps the victim's codes
    assert clean_map(run(tmp_path, registry, cells, force_victims=True)) == true


def test_force_recomputes_each_shared_stage_once_per_run(tmp_path, shared_cache, monkeypatch):
    import benchmark.session as session_module

    registry = Registry.discover()
    shutil.copytree(shared_cache, tmp_path / "cache")
    cells = grid_cells(tmp_path, registry, ('"none"', '"pgd"'))
    computed = []
    original = session_module.cached

    def counting(cache, stage, key, compute, *args, recompute=False, **kwargs):
        if recompute:
            computed.append((stage, key))
        return original(cache, stage, key, compute, *args, recompute=recompute, **kwargs)

    monkeypatch.setattr(session_module, "cached", counting)
    Runner(registry, tmp_path / "results", tmp_path / "cache", device="cpu", force_victims=True).run(cells)
    assert len(computed) == len(set(computed))  # the victim, its codes and the targets once, shared by both cells
    assert {stage for stage, _ in computed} >= {"victims", "codes", "targets", "attacks"}


# ---------------------------------------------------------------- plugin outputs are checked at the boundary

def perturb_returning(images_of):
    return lambda self, x, labels, target_labels: images_of(x)


MISBEHAVING = {
    "string_snapshots": (perturb_returning(lambda x: Perturbed({"early": x, "late": x})),
                         r"gave 'early' \(str\) as a snapshot key; an iteration count must be a whole number >= 0"),
    "bool_snapshots": (perturb_returning(lambda x: Perturbed({True: x})), r"gave True \(bool\) as a snapshot key"),
    "negative_snapshots": (perturb_returning(lambda x: Perturbed({-1: x})), r"gave -1 \(int\) as a snapshot key"),
    "empty_snapshots": (perturb_returning(lambda x: Perturbed({})),
                        "returned an empty snapshot dict; expected the final images, or {iterations: images}"),
    "bad_code_name": (perturb_returning(lambda x: Perturbed(x, {3: torch.ones(len(x), 16)})),
                      "named aimed codes 3; a name must be an identifier-like string"),
}


def test_misbehaving_attack_outputs_are_errors_and_the_store_stays_one_table(tmp_path, shared_cache):
    plugins = [attack_class(name, perturb=perturb) for name, (perturb, _) in MISBEHAVING.items()]
    plugins.append(attack_class("numpy_snapshots",
                               perturb=perturb_returning(lambda x: Perturbed({np.int64(0): x, np.int64(2): x}))))
    registry = with_plugins(*plugins)
    attacks = [f'"{plugin.name}"' for plugin in plugins] + ['"none"']
    table = run(tmp_path, registry, grid_cells(tmp_path, registry, attacks), shared_cache)  # pd.read_parquet
    assert table["iterations"].dtype == np.int64 and table["topk"].dtype == np.int64
    for name, (_, message) in MISBEHAVING.items():
        cell = table[table.attack == name]
        assert (cell["status"] == "error").all(), name
        assert cell["error"].str.contains(f"attack {name} ").all() and cell["error"].str.contains(message).all(), \
            cell["error"].iloc[0]
    snapshots = table[(table.attack == "numpy_snapshots") & (table.metric == "map") & (table.topk == 0)]
    assert sorted(snapshots["iterations"]) == [0, 2] and (snapshots["status"] == "ok").all()


def test_result_rows_have_one_type_per_measurement_column():
    row = typed_row({"metric": "map", "iterations": np.int32(5), "topk": np.int64(0), "value": np.float32(0.5),
                     "recall": float("nan")})
    assert [type(row[c]) for c in ("iterations", "topk", "value", "recall")] == [int, int, float, float]
    assert row["value"] == 0.5
    for column, value in (("iterations", "late"), ("iterations", 2.5), ("topk", True), ("value", "0.5")):
        with pytest.raises(TypeError, match=f"metric 'map' has {column} {value!r}"):
            typed_row({"metric": "map", "iterations": 0, "topk": 0, "value": 0.0, "recall": 0.0, column: value})


# ---------------------------------------------------------------- a result file holds the cell it is named by

def test_a_result_file_copied_under_another_cells_name_is_moved_aside_and_recomputed(tmp_path, shared_cache, caplog):
    registry = Registry.discover()
    cells = grid_cells(tmp_path, registry, ('"none"', '"pgd"'))
    clean_key, pgd_key = (Planner(registry).plan(cell).key for cell in cells)
    first = run(tmp_path, registry, cells, shared_cache)
    shutil.copy(cell_file(tmp_path / "results", clean_key), cell_file(tmp_path / "results", pgd_key))

    rows, warnings = read_results(tmp_path / "results")
    assert set(rows["cell_key"]) == {clean_key} and len(rows) == (first.cell_key == clean_key).sum()
    assert any(pgd_key in warning and clean_key in warning for warning in warnings), warnings

    with caplog.at_level(logging.WARNING, logger="hashbench"):
        assert not cell_done(tmp_path / "results", pgd_key)
    assert clean_key in caplog.text and pgd_key in caplog.text
    assert (tmp_path / "results" / f".corrupt-{pgd_key}.parquet").exists()
    shutil.copy(cell_file(tmp_path / "results", clean_key), cell_file(tmp_path / "results", pgd_key))
    counts = Runner(registry, tmp_path / "results", tmp_path / "cache", device="cpu").run(cells)
    assert counts == {"ran": 1, "cached": 1, "error": 0}
    again = pd.read_parquet(cell_file(tmp_path / "results", pgd_key))
    assert set(again["cell_key"]) == {pgd_key} and clean_map(again, "pgd") == clean_map(first, "pgd")
