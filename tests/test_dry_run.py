"""The dry run of grids/paper-full.toml at the real shapes (tools/dry_run.py) on the synthetic datasets
(tools/synthetic_datasets.py): each plugin's file format, 224x224 RGB JPEG files, the real backbones without
weights. On a 2-core CPU the whole block cover takes long, so CI runs the plugins cover: every plugin, backbone
and axis value at least once (most victims on AlexNet; VGG-11/16/19, ResNet-18/50 once each)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import dry_run  # noqa: E402
from synthetic_datasets import LIST_DATASETS, SIZES, write_all  # noqa: E402

from benchmark.planning.grid import expand, load_preset  # noqa: E402


def test_the_synthetic_datasets_load_through_their_plugins_at_the_real_shapes(tmp_path, registry):
    write_all(tmp_path)
    for name in LIST_DATASETS:
        splits = registry.get("datasets", name).configure({}).splits(tmp_path)
        assert splits.image_shape() == (3, 224, 224), name
        assert splits.sizes() == {"n_query": SIZES["query"], "n_database": SIZES["database"],
                                  "n_train": SIZES["train"]}, name
        assert (splits.query.labels.float() @ splits.database.labels.float().T > 0).any(dim=1).all(), name
    cifar = registry.get("datasets", "cifar10").configure(dry_run.DATASET_SIZES["cifar10"]).splits(tmp_path)
    assert cifar.image_shape() == (3, 32, 32) and cifar.sizes() == {"n_query": 10, "n_database": 20, "n_train": 10}
    fashion = registry.get("datasets", "fashion_mnist").configure({"n_train": 8, "download": False}).splits(tmp_path)
    assert fashion.image_shape() == (1, 28, 28) and fashion.sizes()["n_database"] == SIZES["database"]


def test_the_shrunk_settings_shorten_every_schedule(registry):
    from benchmark.planning.grid import parse_settings

    settings = parse_settings(dry_run.shrunk_settings(registry))
    assert settings["attacks"]["dhta"]["iterations"] == "2" and settings["attacks"]["hag"]["snapshot_every"] == "1"
    assert settings["hashing"]["adsh"]["num_samples"] == "8" and settings["defenses"]["cgat"]["epochs"] == "1"
    assert settings["datasets"]["nuswide"]["query_subset"] == "4"


@pytest.fixture(scope="module")
def dry_run_outcome(tmp_path_factory):
    work = tmp_path_factory.mktemp("dry-run")
    started = time.perf_counter()
    outcome = dry_run.run(work / "data", work, "cpu", cover="plugins")
    outcome["seconds"] = time.perf_counter() - started
    outcome["rows"] = pd.read_parquet(work / "results")
    print(f"\ndry run (plugins cover): {len(outcome['cells'])} cells in {outcome['seconds']:.0f} s")
    return outcome


def test_the_dry_run_runs_every_plugin_and_backbone_of_paper_full(dry_run_outcome, registry):
    cells, counts = dry_run_outcome["cells"], dry_run_outcome["counts"]
    assert counts["error"] == 0 and counts["ran"] == len(cells)
    for axis, kind in (("dataset", "datasets"), ("hashing", "hashing"), ("attack", "attacks"),
                       ("defense", "defenses")):
        missing = set(registry.names(kind)) - {getattr(c, axis) for c in cells} - dry_run.STAND_INS
        assert not missing, f"the dry run runs no cell of {kind} {sorted(missing)}"
    paper_full = expand(load_preset("paper-full"), registry)
    backbones = {dry_run.scratch(c.backbone) for c in paper_full}
    assert backbones <= {c.backbone for c in cells}
    for axis in ("scenario", "train_data", "target_rule"):
        assert {getattr(c, axis) for c in paper_full} <= {getattr(c, axis) for c in cells}, axis
    assert any(c.surrogate != "self" for c in cells)


def test_the_dry_run_stores_every_cell_at_its_tiny_real_shaped_split(dry_run_outcome):
    rows = dry_run_outcome["rows"]
    assert set(rows["status"]) == {"ok"}
    assert rows["cell_key"].nunique() == len(dry_run_outcome["cells"])
    assert set(rows["n_query"]) == {SIZES["query"]}
    listed = rows[rows["dataset"].isin(list(LIST_DATASETS))]
    assert set(listed["n_database"]) == {SIZES["database"]} and set(listed["n_train"]) == {SIZES["train"]}
    hag = rows[(rows["attack"] == "hag") & (rows["metric"] == "map")]
    assert len(set(hag["iterations"].dropna())) == 2  # the snapshot at iteration 1 and the final iteration 2
