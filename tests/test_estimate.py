"""grids/paper-full.toml, `plan`'s per-block listing and its GPU-hours model (benchmark/planning/estimate.py)."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from benchmark.cli import main
from benchmark.data.dataset import Dataset
from benchmark.planning.blocks import block_titles, grid_blocks
from benchmark.planning.estimate import (FORWARD_GFLOP, H100_TFLOPS, INPUT_GRADIENT, Estimator, Sizes, card_sizes,
                                         forward_gflop)
from benchmark.planning.grid import Cell, expand, load_preset
from leaderboard.papers import CONVENTIONS

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def paper_full_cells(registry):
    return expand(load_preset("paper-full"), registry)


def test_every_block_of_paper_full_expands_and_is_titled_by_its_comment(registry):
    blocks = grid_blocks("paper-full", registry)
    assert len(blocks) == len(load_preset("paper-full")["block"])
    for title, cells in blocks:
        assert cells, f"block {title!r} expands to no cell of its own"
        assert re.match(r"(PPL|ProS-GAN|HAG|CgAT) Tables? ", title), title


def test_block_titles_take_the_nearest_comment_paragraph():
    text = "# intro\n\nx = 1\n# ---- Table 1: first\n# more\n[[block]]\na = 1\n\n[[block]]\n# Table 2\n\n[[block]]\n"
    assert block_titles(text) == ["Table 1: first", "Table 1: first", "Table 2"]


def reference_rows() -> pd.DataFrame:
    frames = [pd.read_csv(p, dtype=str, keep_default_na=False) for p in sorted((ROOT / "leaderboard/reference").glob("*.csv"))]
    ref = pd.concat(frames, ignore_index=True)
    return ref[(ref.metric != "iterations") & ~ref.task.str.contains(r"\+")]  # combined sources: not expressible


def wanted_cell(row) -> dict:
    """What a reference row needs of a paper-full cell (its dataset, victim, defense, attack, surrogate)."""
    conventions = CONVENTIONS[row.paper]
    dataset, backbone, bits = row.dataset, row.backbone, row.bits
    if dataset == "unknown":
        dataset, bits, backbone = (conventions.unknown[k].value for k in ("dataset", "bits", "backbone"))
    want = {"dataset": dataset, "hashing": row.hashing, "backbone": backbone, "bits": int(bits),
            "defense": row.defense, "attack": row.attack}
    if row.paper == "ppl":
        want.update(defense="ppl", attack="none", scenario=row.task,
                    train_data="protected" if row.train_data == "adversarial" else "clean")
    source = dict(part.split("=") for part in row.task.split(",")).get("source") if "source=" in row.task else None
    if source and source != "none":
        hashing, source_backbone, source_bits = conventions.models[re.sub(r"\(r\d\)$", "", source)]
        own = (row.hashing, backbone, int(bits))
        want["surrogate"] = "self" if own == (hashing, source_backbone, source_bits) else \
            f"{hashing}/{source_backbone}/{source_bits}"
    return want


def test_every_reference_row_has_its_cell_in_paper_full(paper_full_cells):
    cells = {tuple(sorted({k: getattr(c, k) for k in ("dataset", "hashing", "backbone", "bits", "defense", "attack",
                                                      "scenario", "train_data", "surrogate")}.items()))
             for c in paper_full_cells}
    missing = []
    for row in reference_rows().itertuples():
        want = wanted_cell(row)
        if not any(all(dict(cell)[k] == v for k, v in want.items()) for cell in cells):
            missing.append(f"{row.paper} {row.table}: {want}")
    assert not missing, f"{len(missing)} reference rows have no cell, e.g. {missing[:3]}"


def test_paper_full_runs_the_papers_schedules(paper_full_cells, registry):
    for cell in paper_full_cells:
        attack = registry.get("attacks", cell.attack).configure(cell.overrides("attacks", cell.attack)).params()
        if cell.attack in ("dhta", "p2p", "hag", "hag_star"):
            assert attack["iterations"] == 2000, cell.describe()
        if cell.attack == "prosgan":
            assert (attack["epochs"], attack["decay_epochs"], attack["prototype_epochs"]) == (50, 50, 100)
        assert ":scratch" not in cell.backbone and not cell.dataset.startswith("fashion_mnist_mosaic")
    hag = [c for c in paper_full_cells if c.attack == "hag" and c.epsilon == pytest.approx(0.039)]
    assert hag and all(registry.get("attacks", "hag").configure(c.overrides("attacks", "hag")).params()
                       ["snapshot_every"] == 500 for c in hag)


def test_plan_without_data_lists_every_block_and_its_gpu_hours(monkeypatch, capsys):
    def no_loading(self, *args, **kwargs):
        raise AssertionError(f"--no-data loaded dataset {self.name}")

    monkeypatch.setattr(Dataset, "splits", no_loading)
    assert main(["plan", "--grid", "paper-full", "--no-data"]) == 0
    out = capsys.readouterr().out
    headers = re.findall(r"^-- block (\d+): (.+)$", out, re.M)
    assert len(headers) == len(load_preset("paper-full")["block"])
    hours = [float(h) for h in re.findall(r"^   \d+ cells; model: ([\d.]+) GPU-hours", out, re.M)]
    assert len(hours) == len(headers) and sum(hours) > 1
    total = re.search(r"^(\d+) cells, 0 stored .*, (\d+) with unknown keys \(no data\)$", out, re.M)
    assert total and total.group(1) == total.group(2)
    assert f"/ {H100_TFLOPS:.0f} TFLOP/s" in out and "not a measurement" in out


def test_plan_falls_back_to_the_card_for_a_missing_dataset(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HASHBENCH_DATA", raising=False)
    monkeypatch.setattr("benchmark.data.lists.DATA_CACHE", tmp_path / "nothing")
    grid = tmp_path / "one.toml"
    grid.write_text('[[block]]\ndataset = "flickr25k"\nhashing = "dpsh"\nbackbone = "vgg11"\nbits = 32\n'
                    'attack = ["none", "dhta"]\n')
    (tmp_path / "empty").mkdir()
    assert main(["plan", "--grid", str(grid), "--data-root", str(tmp_path / "empty")]) == 0
    captured = capsys.readouterr()
    assert len(re.findall(r"^\(no data\) +unknown +flickr25k", captured.out, re.M)) == 2
    assert "dataset flickr25k is not here" in captured.err and "planned from its card" in captured.err


def test_card_sizes_are_the_numbers_the_cards_print(registry):
    for name in registry.names("datasets"):
        plugin = registry.get("datasets", name)
        if name == "folder":  # its sizes are the folder's own: planned only with its data present
            with pytest.raises(ValueError, match="no card sizes"):
                card_sizes(name, plugin.configure({}).params())
            continue
        sizes = card_sizes(name, plugin.configure({}).params())
        numbers = [sizes.n_query, sizes.n_train] + ([] if name == "imagenet100" else [sizes.n_database])
        for number in numbers:  # ImageNet-100's card says "about 128,000" (HashNet's list: 128,503)
            assert f"{number:,}" in plugin.protocol, f"{name}: {number:,} is not on its card"
    assert card_sizes("nuswide", registry.get("datasets", "nuswide").configure({"query_subset": 200}).params()) \
        .n_query == 200
    with pytest.raises(ValueError, match="no card sizes"):
        card_sizes("my_dataset", {})


def test_card_sizes_match_the_loaded_fashion_mnist(registry, fashion_splits):
    plugin = registry.get("datasets", "fashion_mnist").configure({"query_subset": 200})
    sizes = card_sizes("fashion_mnist", plugin.params())
    assert (sizes.n_query, sizes.n_database, sizes.n_train) == tuple(fashion_splits.sizes().values())


def test_forward_flops_are_torchvisions():
    import torchvision

    for name, gflop in FORWARD_GFLOP.items():
        assert gflop == pytest.approx(2 * torchvision.models.get_model_weights(name).DEFAULT.meta["_ops"])
    assert forward_gflop("vgg11:scratch", 32) == FORWARD_GFLOP["vgg11"]  # CIFAR-10 is resized to 224
    assert forward_gflop("smallcnn", 28) < forward_gflop("smallcnn_fc500", 28) < 0.01


def cell(attack: str, **changes) -> Cell:
    fields = dict(dataset="nuswide", hashing="dpsh", backbone="vgg11", bits=32, defense="none", attack=attack,
                  epsilon=8 / 255, surrogate="self", scenario="a2c", seed=0)
    return Cell(**{**fields, **changes})


def test_the_estimate_counts_a_shared_victim_once_and_scales_with_iterations(registry):
    sizes = Sizes(n_query=2_100, n_database=193_734, n_train=10_500, side=224, source="card")
    estimator = Estimator(registry)
    first = estimator.cell(cell("dhta"), sizes)
    second = estimator.cell(cell("p2p"), sizes)
    assert first.gflop["victims"] > 0 and second.gflop["victims"] == 0 and second.gflop["codes"] == 0
    per_query = 2000 * INPUT_GRADIENT + 1  # 2000 iterations of forward + backward, then the adversarial codes
    assert first.gflop["attacks"] == pytest.approx(2_100 * per_query * FORWARD_GFLOP["vgg11"])
    short = estimator.cell(cell("dhta", params_json='{"attacks": {"dhta": {"iterations": 200}}}'), sizes)
    assert short.gflop["attacks"] == pytest.approx(2_100 * (200 * INPUT_GRADIENT + 1) * FORWARD_GFLOP["vgg11"])
    defended = estimator.cell(cell("dhta", defense="cgat"), sizes)
    assert defended.gflop["victims"] > first.gflop["victims"]  # 30 epochs of 7-step PGD on the trained victim
    assert first.gpu_hours() == pytest.approx(sum(first.gflop.values()) * 1e9 / (H100_TFLOPS * 1e12) / 3600)
