"""Batches sized to the device: results that do not depend on the batch, out-of-memory halving that loses nothing,
the device class and precision in the keys and on the rows, and channels_last leaving codes unchanged."""
from __future__ import annotations

import dataclasses
import re

import pandas as pd
import pytest
import torch
from conftest import TINY_GRID, write_grid

from benchmark import AttackContext
from benchmark.attack.stage import perturb_queries
from benchmark.attack.targets import draw_target_labels
from benchmark.encoding.codes import encode
from benchmark.planning.grid import expand, load_preset
from benchmark.planning.plan import Planner
from benchmark.rows import base_row
from benchmark.running.runner import Runner
from benchmark.victim import compute
from benchmark.victim.compute import ComputeSettings, batch_for_memory
from benchmark.victim.model import HashModel, SmallCNN, _torchvision_features

CPU = torch.device("cpu")
ATTACKS = {"pgd": {"iterations": 4}, "hag": {"iterations": 4}, "noise": {}, "dhta": {"iterations": 4}}
TIMINGS = {"seconds_per_image", "prepare_seconds", "score_seconds"}


@pytest.fixture(scope="module")
def setting(registry, small_victim, fashion_splits):
    """The small victim, 20 queries with their target labels."""
    model, database, codes = small_victim
    queries = fashion_splits.query.subset(range(20))
    targets = draw_target_labels(queries.labels, database.labels, torch.Generator().manual_seed(1))
    return model, database, codes, queries, targets


def attacked(registry, setting, name, batch_size, perturb_wrapper=None):
    model, database, codes, queries, targets = setting
    attack = registry.get("attacks", name).configure(ATTACKS[name])
    attack.epsilon = 8 / 255
    attack.prepare(AttackContext(model=model, database_codes=codes, database_labels=database.labels,
                                 train=database, num_classes=10, bits=32, device=CPU,
                                 generator=torch.Generator().manual_seed(0)))
    attack.ctx.generator.manual_seed(5)
    if perturb_wrapper is not None:
        attack.perturb = perturb_wrapper(attack.perturb)
    return perturb_queries(attack, queries, targets, 8 / 255, model, batch_size, CPU)


def assert_same_outcome(one, other):
    assert one.codes.keys() == other.codes.keys()
    assert all(torch.equal(one.codes[it], other.codes[it]) for it in one.codes)
    assert one.target_codes.keys() == other.target_codes.keys()
    assert all(torch.equal(one.target_codes[name], other.target_codes[name]) for name in one.target_codes)
    # the images agree to float32 rounding: a convolution's gradient sums in an order that follows the batch size
    assert one.perturbation == pytest.approx(other.perturbation, rel=1e-6, abs=1e-9, nan_ok=True)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_the_batch_changes_no_code_of_an_attack(registry, setting, name):
    """pgd (random start) and noise draw random numbers, dhta draws anchors, hag draws nothing."""
    outcomes = {batch: attacked(registry, setting, name, batch) for batch in (1, 7, 250)}
    for batch in (7, 250):
        assert_same_outcome(outcomes[1], outcomes[batch])
    assert [outcomes[b].batch_size for b in (1, 7, 250)] == [1, 7, 20]  # the batch that ran: at most the queries


def out_of_memory_above(limit: int, calls: list):
    """A perturb that runs (so draws its random numbers) and then fails like CUDA when the batch exceeds ``limit``."""
    def wrapper(perturb):
        def failing(x, labels, targets):
            calls.append(len(x))
            output = perturb(x, labels, targets)
            if len(x) > limit:
                raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (test: batch {len(x)} > {limit})")
            return output
        return failing
    return wrapper


@pytest.mark.parametrize("name", ["pgd", "noise", "dhta"])
def test_out_of_memory_halves_the_batch_and_gives_the_unbroken_runs_results(registry, setting, name):
    unbroken = attacked(registry, setting, name, 20)
    calls = []
    backed_off = attacked(registry, setting, name, 20, out_of_memory_above(6, calls))
    assert_same_outcome(unbroken, backed_off)
    assert calls == [20, 10, 5, 5, 5, 5] and backed_off.batch_size == 5


def test_batches_done_before_an_out_of_memory_error_are_kept(registry, setting):
    calls = []

    def second_batch_fails(perturb):
        def failing(x, labels, targets):
            calls.append(len(x))
            if len(calls) == 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (test: the second batch)")
            return perturb(x, labels, targets)
        return failing

    unbroken = attacked(registry, setting, "pgd", 8)
    backed_off = attacked(registry, setting, "pgd", 8, second_batch_fails)
    assert calls == [8, 8, 4, 4, 4]  # 0-7 kept; 8-15 failed, redone as 8-11, 12-15; then 16-19
    assert_same_outcome(unbroken, backed_off)


def test_out_of_memory_at_one_query_is_raised(registry, setting):
    with pytest.raises(torch.cuda.OutOfMemoryError):
        attacked(registry, setting, "noise", 4, out_of_memory_above(0, []))


def test_encoding_halves_its_batch_on_out_of_memory(setting, monkeypatch):
    model, database, _, _, _ = setting
    images = database.subset(range(50))
    unbroken = encode(model, images, CPU, batch_size=50)
    real, sizes = HashModel.codes, []

    def codes(self, x):
        sizes.append(len(x))
        if len(x) > 12:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")
        return real(self, x)

    monkeypatch.setattr(HashModel, "codes", codes)
    assert torch.equal(encode(model, images, CPU, batch_size=50), unbroken)
    assert sizes[:3] == [50, 25, 12] and sum(sizes[2:]) == 50


def test_the_batch_changes_no_row_of_a_run(tmp_path, registry):
    """End to end (attack, scoring, rows, per-query AP): batches of 1, 7 and 250 give the same numbers."""
    grid = write_grid(tmp_path / "tiny.toml", TINY_GRID.replace("query_subset = 60", "query_subset = 15").replace(
        '["none", "noise", "pgd", "dhta"]', '["pgd", "dhta"]'))  # a random start, random anchors
    cells = expand(load_preset(str(grid)), registry)
    values, per_query = {}, {}
    for batch in (1, 7, 250):
        runner = Runner(registry, tmp_path / f"results{batch}", tmp_path / "cache", device="cpu", attack_batch=batch,
                        force=True)  # one cache: the victim is shared, the attacks are computed afresh
        assert runner.run(cells)["error"] == 0
        rows = pd.read_parquet(tmp_path / f"results{batch}")
        assert set(rows["batch_size"]) == {min(batch, 15)}
        rows = rows[~rows["metric"].isin(TIMINGS)].set_index(["cell_key", "metric", "iterations", "topk"])
        values[batch] = rows["value"].sort_index()
        per_query[batch] = {plan.key: runner.session.cache.load("cells", plan.key)["average_precision"]
                            for plan in map(runner.plan, cells)}
    for batch in (7, 250):
        pd.testing.assert_series_equal(values[1], values[batch], check_exact=False, rtol=1e-6, atol=1e-9)
        for key, aps in per_query[1].items():
            assert aps.keys() == per_query[batch][key].keys()
            assert all(torch.equal(torch.as_tensor(aps[m]), torch.as_tensor(per_query[batch][key][m])) for m in aps)


def test_the_probe_rule_fits_the_free_memory():
    mib, gib = 2 ** 20, 2 ** 30
    assert batch_for_memory(40 * gib, 46 * mib, 5000) == int(40 * gib * compute.MEMORY_SHARE // (46 * mib))
    assert batch_for_memory(80 * gib, 46 * mib, 300) == 300           # never beyond the queries
    assert batch_for_memory(1 * mib, 46 * mib, 300) == 1              # at least one query
    assert compute.probe_attack_batch(None, torch.zeros(2, 1, 28, 28), CPU, 77, ComputeSettings()) == 77


# ---------------------------------------------------------------- keys and rows

@pytest.fixture
def cell(tmp_path, registry):
    grid = write_grid(tmp_path / "tiny.toml", TINY_GRID.replace('["none", "noise", "pgd", "dhta"]', '"pgd"'))
    return expand(load_preset(str(grid)), registry)[0]


def device_keys(registry, cell, settings: ComputeSettings) -> dict[str, str]:
    plan = Planner(registry, compute=settings).plan(cell)
    return {"victim": plan.victim.key, "codes": plan.codes.key, "prepare": plan.attack.prepare_key,
            "attack": plan.attack.key, "cell": plan.key, "targets": plan.targets.key}


def test_the_device_class_is_in_every_device_stages_key(registry, cell):
    cpu = device_keys(registry, cell, ComputeSettings())
    assert device_keys(registry, cell, ComputeSettings()) == cpu
    gpu = device_keys(registry, cell, ComputeSettings("cuda:sm_90", tf32_cudnn=True, channels_last=True,
                                                      cudnn_benchmark=True))
    moved = {stage for stage in cpu if cpu[stage] != gpu[stage]}
    assert moved == {"victim", "codes", "prepare", "attack", "cell"}  # the targets are drawn on the CPU
    other_gpu = device_keys(registry, cell, ComputeSettings("cuda:sm_80", tf32_cudnn=True, channels_last=True,
                                                            cudnn_benchmark=True))
    assert other_gpu["victim"] != gpu["victim"]
    no_tf32 = device_keys(registry, cell, ComputeSettings("cuda:sm_90", channels_last=True, cudnn_benchmark=True))
    assert no_tf32["victim"] != gpu["victim"]


def test_bf16_is_recorded_on_rows_and_moves_the_attack_key_only(registry, cell):
    fp32 = Planner(registry, compute=ComputeSettings()).plan(cell)
    bf16 = Planner(registry, compute=ComputeSettings(precision="bf16")).plan(cell)
    assert (bf16.victim.key, bf16.codes.key, bf16.attack.prepare_key) == (fp32.victim.key, fp32.codes.key,
                                                                         fp32.attack.prepare_key)
    assert bf16.attack.key != fp32.attack.key and bf16.key != fp32.key
    assert base_row(bf16, registry, 250, 0.0)["precision"] == "bf16"
    assert base_row(fp32, registry, 250, 0.0)["precision"] == "fp32"
    assert base_row(fp32, registry, 250, 0.0)["device_class"] == "cpu"
    with pytest.raises(ValueError, match="unknown precision 'fp16'; accepted: fp32, bf16"):
        ComputeSettings(precision="fp16")


def test_a_plan_for_another_device_is_refused(tmp_path, registry, cell):
    from benchmark.cell import run_cell

    runner = Runner(registry, tmp_path / "results", tmp_path / "cache", device="cpu")
    plan = dataclasses.replace(runner.plan(cell), compute=ComputeSettings("cuda:sm_90", tf32_cudnn=True))
    with pytest.raises(RuntimeError, match="planned for .*cuda:sm_90.* but runs on .*'cpu'"):
        run_cell(plan, runner.session)


def test_bf16_attacks_run_and_keep_fp32_codes(registry, setting):
    model, database, codes, queries, targets = setting
    attack = registry.get("attacks", "pgd").configure({"iterations": 2})
    attack.prepare(AttackContext(model=model, database_codes=codes, database_labels=database.labels, train=database,
                                 num_classes=10, bits=32, device=CPU, generator=torch.Generator().manual_seed(0)))
    seen = []
    real = model.logits

    def logits(x):
        seen.append(torch.is_autocast_enabled("cpu"))
        return real(x)

    model.logits = logits
    try:
        outcome = perturb_queries(attack, queries, targets, 8 / 255, model, 20, CPU,
                                  compute=ComputeSettings(precision="bf16"))
    finally:
        del model.logits
    assert True in seen and False in seen  # the attack's forwards in bf16, the codes outside it
    assert outcome.codes[2].dtype == torch.float32 and bool((outcome.codes[2].abs() == 1).all())


# ---------------------------------------------------------------- channels_last

@pytest.mark.parametrize("backbone", ["smallcnn", "vgg11"])
def test_channels_last_leaves_codes_unchanged(backbone):
    torch.manual_seed(0)
    if backbone == "smallcnn":
        model, x = HashModel(SmallCNN(1, 28), 800, 32, (0.5,), (0.5,), 1), torch.rand(6, 1, 28, 28)
    else:  # VGG11 at 32x32 (its adaptive pooling takes any size), without the resize to 224
        model = HashModel(_torchvision_features("vgg11", False), 4096, 32, (0.5,) * 3, (0.5,) * 3, 3)
        x = torch.rand(4, 3, 32, 32)
    model.eval()
    plain = model.codes(x), model.logits(x)
    laid_out = ComputeSettings(channels_last=True).laid_out(model)
    assert laid_out.features.__class__ is model.features.__class__
    conv = next(m for m in laid_out.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(laid_out.codes(x), plain[0])
    assert torch.allclose(laid_out.logits(x), plain[1], atol=1e-5)


def test_plan_prints_the_keys_of_the_precision_asked_for(tmp_path, capsys):
    from benchmark import cli

    keys = {}
    for precision in ("fp32", "bf16"):
        assert cli.main(["plan", "--grid", "default", "--device", "cpu", "--precision", precision,
                         "--results", str(tmp_path)]) == 0
        keys[precision] = [line.split()[0] for line in capsys.readouterr().out.splitlines()
                           if re.match(r"[0-9a-f]{20}  ", line)]
    assert len(keys["fp32"]) == 22 and not set(keys["fp32"]) & set(keys["bf16"])
