"""What a new user can rely on: degenerate results are flagged, bad input is refused with a clear message,
and nothing already computed is lost. Each test fails on a harness that breaks the promise it names."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch
from conftest import ROOT, write_grid

from benchmark import Attack, Registry
from benchmark.planning.grid import expand, load_preset, parse_filters, parse_settings
from benchmark.running.runner import Runner
from benchmark.storage.cache import remove_dead_temporaries, temporary_prefix

GRID = """
[[block]]
dataset = "fashion_mnist"
hashing = "{hashing}"
backbone = "smallcnn"
bits = 16
attack = {attacks}
epsilon = ["16/255"]
[block.params.datasets.fashion_mnist]
query_subset = 40
n_train = 600
[block.params.hashing.{hashing}]
epochs = 2
[block.params.attacks.pgd]
iterations = 3
"""


def grid_cells(tmp_path, registry, attacks=('"none"',), hashing="dpsh", settings=()):
    text = GRID.format(hashing=hashing, attacks="[" + ", ".join(attacks) + "]")
    grid = write_grid(tmp_path / f"grid-{hashing}-{len(attacks)}.toml", text)
    return expand(load_preset(str(grid)), registry, settings=parse_settings(list(settings)))


def with_plugins(*classes) -> Registry:
    registry = Registry.discover()
    for cls in classes:
        registry.plugins[cls.kind][cls.name] = cls
    return registry


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """A cache holding the tiny DPSH victim, trained once for the tests below."""
    cache = tmp_path_factory.mktemp("cache")
    registry = Registry.discover()
    Runner(registry, cache.parent / "warm-results", cache, device="cpu").run(grid_cells(cache.parent, registry))
    return cache


def run(tmp_path, registry, cells, shared_cache=None, **kwargs) -> pd.DataFrame:
    cache = tmp_path / "cache"
    if shared_cache is not None and not cache.exists():
        shutil.copytree(shared_cache, cache)
    Runner(registry, tmp_path / "results", cache, device="cpu", **kwargs).run(cells)
    return pd.read_parquet(tmp_path / "results")


# ---------------------------------------------------------------- sanity flags

def test_a_victim_trained_to_one_code_gives_flagged_cells(tmp_path):
    registry = Registry.discover()

    class Collapsing(registry.get("hashing", "dpsh")):
        name = "collapsing"

        def loss(self, outputs, labels, index):  # every output pushed to +1: one code for every image
            return (torch.tanh(outputs) - 1).pow(2).mean()

    registry.plugins["hashing"]["collapsing"] = Collapsing
    table = run(tmp_path, registry, grid_cells(tmp_path, registry, ('"none"', '"pgd"'), hashing="collapsing"))
    assert (table["status"] == "ok").all()
    for flags in table.drop_duplicates("cell_key")["flags"]:
        assert "victim_collapsed" in flags and "chance_map" in flags
    from leaderboard.render import render

    index = render(tmp_path / "results", tmp_path / "site").read_text()
    assert "victim_collapsed" in index  # the overview shows the flag and its reason


def test_a_working_victim_and_attack_carry_no_degeneracy_flags(tmp_path, shared_cache):
    registry = Registry.discover()
    table = run(tmp_path, registry, grid_cells(tmp_path, registry, ('"none"', '"pgd"')), shared_cache)
    for name in ("victim_collapsed", "chance_map", "zero_gradients", "attack_changed_nothing", "budget_violations"):
        assert not table["flags"].str.contains(name).any(), set(table["flags"])  # (this tiny victim has dead bits)


def test_an_attack_that_changes_nothing_is_flagged(tmp_path, shared_cache):
    class Idle(Attack):
        name, paper, kind = "idle", "test", "attacks"
        source_hash = Registry.discover().get("attacks", "noise").source_hash

        def perturb(self, x, labels, target_labels):
            return x

    registry = with_plugins(Idle)
    table = run(tmp_path, registry, grid_cells(tmp_path, registry, ('"idle"',)), shared_cache)
    assert table["flags"].str.contains("attack_changed_nothing").all()


# ---------------------------------------------------------------- plugins cannot break the harness's promises

def test_an_attack_writing_into_its_input_cannot_escape_the_budget(tmp_path, shared_cache):
    class InPlace(Attack):
        name, paper, kind = "in_place", "test", "attacks"
        source_hash = Registry.discover().get("attacks", "noise").source_hash

        def perturb(self, x, labels, target_labels):
            x += 0.5  # the images it was given, changed in place, returned as the "adversarial" ones
            return x

    registry = with_plugins(InPlace)
    table = run(tmp_path, registry, grid_cells(tmp_path, registry, ('"in_place"',)), shared_cache)
    metric = table.set_index("metric")["value"]
    assert metric["linf"] <= 16 / 255 + 1e-6
    assert metric["budget_violations"] > 0.5
    assert table["flags"].str.contains("budget_violations").all()


def test_an_attack_writing_into_shared_database_codes_changes_no_other_cell(tmp_path, shared_cache):
    class Vandal(Attack):
        name, paper, kind = "vandal", "test", "attacks"
        source_hash = Registry.discover().get("attacks", "noise").source_hash

        def prepare(self, ctx):
            ctx.database_codes.mul_(-1)  # flip every database code the harness shared with it
            ctx.database_labels.zero_()
            self.ctx = ctx

        def perturb(self, x, labels, target_labels):
            return x

    registry = with_plugins(Vandal)
    alone = run(tmp_path / "alone", registry, grid_cells(tmp_path, registry), shared_cache)
    after = run(tmp_path / "after", registry, grid_cells(tmp_path, registry, ('"vandal"', '"none"')), shared_cache)
    clean = lambda t: t[(t.attack == "none") & (t.metric == "map") & (t.topk == 0)]["value"].item()  # noqa: E731
    assert clean(after) == clean(alone)


def test_an_attack_that_trains_the_victim_in_place_fails_its_cell(tmp_path, shared_cache):
    class Trainer(Attack):
        name, paper, kind = "trainer", "test", "attacks"
        source_hash = Registry.discover().get("attacks", "noise").source_hash

        def perturb(self, x, labels, target_labels):
            with torch.no_grad():
                next(self.ctx.model.parameters()).add_(1.0)
            return x

    registry = with_plugins(Trainer)
    table = run(tmp_path, registry, grid_cells(tmp_path, registry, ('"trainer"',)), shared_cache)
    assert (table["status"] == "error").all()
    assert table["error"].str.contains("changed the weights").all()


def test_a_method_leaving_nan_weights_gives_an_error_not_a_chance_level_cell(tmp_path):
    registry = Registry.discover()

    class Poisoned(registry.get("hashing", "dpsh")):
        name = "poisoned"

        def fit(self, model, train, ctx):
            with torch.no_grad():
                model.hash_layer.weight.fill_(float("nan"))

    registry.plugins["hashing"]["poisoned"] = Poisoned
    table = run(tmp_path, registry, grid_cells(tmp_path, registry, hashing="poisoned"))
    assert (table["status"] == "error").all()
    assert table["error"].str.contains("non-finite weights").all()


def test_a_plugin_calling_sys_exit_at_import_is_reported_and_skipped(tmp_path):
    for folder in ("methods/hashing", "methods/attacks", "methods/defenses", "datasets"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    (tmp_path / "methods/attacks/quitter.py").write_text("import sys\nsys.exit(3)\n")
    registry = Registry.discover(tmp_path)
    failures = {f.path.name: f.error for f in registry.failures}
    assert "sys.exit(3)" in failures["quitter.py"]
    assert "pgd" in registry.names("attacks")


# ---------------------------------------------------------------- bad input is refused before any work

@pytest.mark.parametrize("filters, message", [
    (["epsilon=-1"], r"epsilon value '-1' is not a number in \[0, 1\]"),
    (["epsilon=2"], r"epsilon value '2' is not a number in \[0, 1\]"),
    (["epsilon=8/0"], r"epsilon value '8/0' is not a number"),
    (["bits=16.5"], "bits value '16.5' is not a whole number"),
    (["bits=0"], "bits value '0' is not a whole number in 1..4096"),
    (["seed=1.5"], "seed value '1.5' is not a whole number"),
    (["scenario=x2y"], "unknown scenario 'x2y'; accepted: a2c, c2c, c2a, a2a"),
])
def test_axis_values_are_range_checked_where_they_are_parsed(filters, message):
    with pytest.raises(ValueError, match=message):
        parse_filters(filters)


@pytest.mark.parametrize("setting, message", [
    ("attacks.pgd.iterations=-5", r"pgd.iterations must be >= 1"),
    ("datasets.fashion_mnist.query_subset=-5", r"fashion_mnist.query_subset must be >= 0"),
    ("datasets.fashion_mnist.n_train=-1", r"fashion_mnist.n_train must be >= 1"),
    ("attacks.pgd.epsilon=0.1", r"attacks.pgd.epsilon is the grid's epsilon axis"),
    ("attacks.pgd.step_size=8/0", r"pgd.step_size must be float"),
])
def test_plugin_parameters_are_range_checked_where_they_are_parsed(setting, message, registry):
    with pytest.raises(ValueError, match=message):
        expand(load_preset("smoke"), registry, settings=parse_settings([setting]))


def test_fractional_bits_or_seeds_in_a_grid_file_are_refused(tmp_path, registry):
    for axis, value in (("bits", "16.5"), ("seed", "0.5")):
        grid = write_grid(tmp_path / "bad.toml", f'[[block]]\ndataset = "fashion_mnist"\nhashing = "dpsh"\n'
                                                 f'bits = 16\nattack = "none"\n{axis} = {value}\n'.replace(
                                                     "bits = 16\n", "" if axis == "bits" else "bits = 16\n"))
        with pytest.raises(ValueError, match=f"{axis} value {value} is not a whole number"):
            expand(load_preset(str(grid)), registry)


def test_an_impossible_scenario_is_refused_naming_the_accepted_ones(registry):
    with pytest.raises(ValueError, match="scenario 'c2a' needs a data protection.*accepted scenarios"):
        expand({"block": [{"dataset": "fashion_mnist", "hashing": "dpsh", "bits": 16, "attack": "pgd",
                           "scenario": "c2a"}]}, registry)
    with pytest.raises(ValueError, match="train_data 'protected' needs a data protection"):
        expand({"block": [{"dataset": "fashion_mnist", "hashing": "dpsh", "bits": 16, "attack": "none",
                           "train_data": "protected"}]}, registry)


# ---------------------------------------------------------------- nothing computed is lost

def test_force_never_replaces_a_good_result_by_an_error(tmp_path, shared_cache, monkeypatch):
    registry = Registry.discover()
    cells = grid_cells(tmp_path, registry)
    good = run(tmp_path, registry, cells, shared_cache)
    import benchmark.running.runner as runner_module

    def broken(plan, session):
        raise RuntimeError("recomputation failed")

    monkeypatch.setattr(runner_module, "run_cell", broken)
    counts = Runner(registry, tmp_path / "results", tmp_path / "cache", device="cpu", force=True).run(cells)
    assert counts["error"] == 1
    kept = pd.read_parquet(tmp_path / "results")
    assert (kept["status"] == "ok").all() and kept["value"].equals(good["value"])


def test_an_unwritable_results_folder_is_refused_before_any_work(tmp_path, registry):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    runner = Runner(registry, blocker / "results", tmp_path / "cache", device="cpu")
    with pytest.raises(OSError, match="results folder .* is not writable"):
        runner.run(grid_cells(tmp_path, registry))
    assert not (tmp_path / "cache" / "victims").exists()  # no work was done


def test_a_full_results_folder_keeps_the_finished_rows_elsewhere(tmp_path, shared_cache, monkeypatch):
    import benchmark.running.runner as runner_module
    from benchmark.running.runner import ResultsNotWritable

    registry = Registry.discover()

    def full(results_dir, key, rows):
        if str(results_dir).startswith(str(tmp_path)):
            raise OSError(28, "No space left on device")
        return original(results_dir, key, rows)

    original = runner_module.write_cell
    monkeypatch.setattr(runner_module, "write_cell", full)
    shutil.copytree(shared_cache, tmp_path / "cache")
    runner = Runner(registry, tmp_path / "results", tmp_path / "cache", device="cpu")
    cells = grid_cells(tmp_path, registry)
    with pytest.raises(ResultsNotWritable, match="No space left.*saved to (.*parquet)") as raised:
        runner.run(cells)
    saved = raised.value.args[0].split("saved to ")[1].split(";")[0]
    assert (pd.read_parquet(saved)["status"] == "ok").all()
    os.unlink(saved)


def test_temporary_files_of_killed_writes_are_removed_on_the_next_run(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = tmp_path / (temporary_prefix("x.parquet").replace(f"~{os.getpid()}~", f"~{dead.pid}~") + "abc")
    leftover.write_bytes(b"half a file")
    live = tmp_path / (temporary_prefix("y.parquet") + "def")  # a write of this (live) process
    live.write_bytes(b"in flight")
    assert remove_dead_temporaries(tmp_path) == [leftover]
    assert live.exists() and not leftover.exists()


def test_replacing_the_images_of_a_dataset_changes_its_fingerprint(tmp_path):
    from PIL import Image

    from benchmark import FileImages, TensorImages

    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(paths[-1])
    labels = torch.eye(3)
    before = FileImages(paths, labels).fingerprint()
    Image.new("RGB", (8, 8), (255, 255, 0)).save(paths[1])  # same path, other picture
    assert FileImages(paths, labels).fingerprint() != before
    images = torch.zeros(200, 1, 4, 4, dtype=torch.uint8)
    fingerprint = TensorImages(images, torch.zeros(200, 2)).fingerprint()
    images[101, 0, 2, 2] = 7  # one pixel of one image
    assert TensorImages(images, torch.zeros(200, 2)).fingerprint() != fingerprint


def test_leaderboard_with_a_mistyped_results_folder_leaves_the_site_alone(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("the published leaderboard")
    result = subprocess.run([sys.executable, str(ROOT / "bench.py"), "leaderboard", "--results",
                             str(tmp_path / "resluts"), "--site", str(site)], capture_output=True, text=True)
    assert result.returncode == 2 and "does not exist" in result.stderr
    assert (site / "index.html").read_text() == "the published leaderboard"


def test_bench_py_runs_in_the_project_environment_from_a_bare_python(tmp_path):
    bare = subprocess.run([sys.executable, "-S", str(ROOT / "bench.py"), "list"], capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "HASHBENCH_REEXEC"}, timeout=300)
    assert bare.returncode == 0, bare.stderr
    assert "dpsh" in bare.stdout
    shutil.copy(ROOT / "bench.py", tmp_path / "bench.py")  # a checkout without .venv
    lost = subprocess.run([sys.executable, "-S", str(tmp_path / "bench.py"), "list"], capture_output=True, text=True)
    assert lost.returncode != 0 and "make env" in lost.stderr and "Traceback" not in lost.stderr
