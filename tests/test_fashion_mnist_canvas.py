"""The FashionMNIST canvases (datasets/fashion_mnist_canvas.py): label statistics within the bounds its card states,
labels that match the items drawn, determinism, shapes and ranges, discovery and `bench.py list`."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark import DatasetNotFound, Registry

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from label_statistics import label_statistics

REGISTRY = Registry.discover()
SMALL = {"n_query": 400, "n_database": 2_000, "n_train": 300, "download": False}


def plugin(**overrides):
    return REGISTRY.get("datasets", "fashion_mnist_canvas").configure({**SMALL, **overrides})


def module():
    return REGISTRY.get("datasets", "fashion_mnist_canvas").load.__globals__


@pytest.fixture(scope="module")
def canvases():
    try:
        return plugin().splits()
    except DatasetNotFound:
        pytest.skip("FashionMNIST is not installed (make data)")


def test_label_statistics_within_the_cards_bounds(canvases):
    """The card's figures (2,000 x 8,000 at split_seed 0: labels 2.50, base rate 0.42, under 20% relevant 0.19,
    top concept 0.44), with room for this smaller sample; the mosaics, for contrast, sit at 0.50 and 0.00."""
    labels = canvases.database.labels
    per_image = labels.sum(1)
    assert per_image.min() >= 1 and per_image.max() <= 4
    found = label_statistics(canvases.query.labels.numpy(), labels.numpy())
    assert found["concepts"] == 20
    assert 2.40 <= found["labels_per_image"] <= 2.60
    assert 0.39 <= found["base_rate"] <= 0.47
    assert 0.10 <= found["few_relevant_20"] <= 0.25
    assert 0.40 <= found["top_concept"] <= 0.50 and found["median_concept"] <= 0.11


def test_flatter_concepts_lower_the_base_rate():
    """The Zipf exponent is what sets the base rate: uniform concepts (0) share less often than skewed ones."""
    draw = module()["draw_concepts"]
    labels = module()["canvas_labels"]
    rates = []
    for exponent in (0.0, 0.8, 1.5):
        q = labels(draw(500, 4, exponent, np.random.default_rng(1))).numpy()
        d = labels(draw(2_000, 4, exponent, np.random.default_rng(2))).numpy()
        rates.append(label_statistics(q, d)["base_rate"])
    assert rates[0] + 0.1 < rates[1] and rates[1] + 0.1 < rates[2]


def test_each_canvas_shows_its_labelled_items():
    """On a canvas the size of one item with one item each, the canvas is a source image of the label's class,
    turned a quarter turn exactly when the concept says so."""
    names = module()
    rng = np.random.default_rng(3)
    images = rng.integers(1, 256, size=(40, 28, 28), dtype=np.uint8)
    classes = np.arange(40) % 10
    built = names["build"](images, classes, 200, 1, 0.8, 28, np.random.default_rng(4))
    assert torch.equal(built.labels.sum(1), torch.ones(200))
    for canvas, label in zip(built.images[:, 0].numpy(), built.labels.argmax(1).numpy()):
        concept_class, turns = label % 10, label // 10
        candidates = np.rot90(images[classes == concept_class], turns, axes=(1, 2))
        assert any(np.array_equal(canvas, c) for c in candidates)


def test_items_composite_by_the_maximum_at_their_positions():
    names = module()
    item = np.zeros((1, 28, 28), dtype=np.uint8)
    item[0, 0, 0], item[0, 27, 27] = 200, 100
    concepts = np.array([[0, 0, -1]])
    sources = np.array([[0, 0, -1]])
    positions = np.array([[[0, 0], [27, 27], [5, 5]]])
    canvas = names["assemble"](item, concepts, sources, positions, 64)[0, 0]
    assert canvas[0, 0] == 200 and canvas[27, 27] == 200 and canvas[54, 54] == 100  # max(100, 200) at (27, 27)
    assert int((canvas > 0).sum()) == 3


def test_shapes_ranges_and_split(canvases):
    assert canvases.sizes() == {"n_query": 400, "n_database": 2_000, "n_train": 300}
    assert canvases.num_classes == 20 and canvases.topk is None
    batch = canvases.query.load(torch.arange(8))
    assert batch.shape == (8, 1, 64, 64) and batch.dtype == torch.float32
    assert 0.0 <= batch.min() and batch.max() <= 1.0 and batch.max() > 0.5
    assert set(canvases.database.labels.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(canvases.train.labels, canvases.database.labels[canvases.train.index])
    assert 0.05 < canvases.mean[0] < 0.2 and canvases.std[0] > canvases.mean[0]  # mostly black background


def test_same_seed_same_bytes_other_seed_other_fingerprint(canvases):
    again = plugin().splits()
    assert torch.equal(again.query.images, canvases.query.images)
    assert torch.equal(again.database.labels, canvases.database.labels)
    assert again.fingerprint() == canvases.fingerprint()
    other = plugin(split_seed=1).splits()
    assert other.fingerprint() != canvases.fingerprint()
    assert not torch.equal(other.database.images[:50], canvases.database.images[:50])


def test_bad_sizes_are_refused_by_name():
    with pytest.raises(ValueError, match="n_train .* exceeds n_database"):
        plugin(n_train=3_000).load()
    with pytest.raises(ValueError, match="max_items"):
        plugin(max_items=5)


def test_registered_and_listed():
    card = REGISTRY.get("datasets", "fashion_mnist_canvas").configure().card()
    assert card["classes"] == 20 and card["multi_label"] and "Zipf" in card["protocol"]
    listed = subprocess.run([sys.executable, str(ROOT / "bench.py"), "list"], check=False, capture_output=True,
                            text=True, cwd=ROOT, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert "fashion_mnist_canvas" in listed.stdout
