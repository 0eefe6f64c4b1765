"""Shared fixtures: the plugin registry, a small FashionMNIST split and a quickly trained victim."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmark import Registry, TrainContext  # noqa: E402
from benchmark.victim.model import build_victim


@pytest.fixture(scope="session")
def registry() -> Registry:
    return Registry.discover()


@pytest.fixture(scope="session")
def fashion_splits(registry):
    return registry.get("datasets", "fashion_mnist").configure({"query_subset": 200}).splits()


@pytest.fixture(scope="session")
def small_victim(registry, fashion_splits):
    """DPSH, 32 bits, trained for a few epochs on 3,000 images; its codes for a 6,000-image database.

    The network is ``smallcnn_fc500``, the one the attack tests' margins were set on: PPL's own ``smallcnn``
    reaches mAP 0.38 on this budget, where one FGSM step at 16/255 no longer lowers it (0.386).
    """
    torch.manual_seed(0)
    splits = fashion_splits
    model = build_victim("smallcnn_fc500", 32, 1, 28, splits.mean, splits.std)
    method = registry.get("hashing", "dpsh").configure({"epochs": 4})
    ctx = TrainContext(torch.device("cpu"), torch.Generator().manual_seed(0), splits.num_classes)
    method.fit(model, splits.train.subset(range(3000)), ctx)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    database = splits.database.subset(range(0, 60000, 10))
    codes = torch.cat([model.codes(x) for x, _, _ in database.batches(2000)])
    return model, database, codes


def write_grid(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


TINY_GRID = """
[[block]]
dataset = "fashion_mnist"
hashing = "dpsh"
backbone = "smallcnn"
bits = 16
attack = ["none", "noise", "pgd", "dhta"]
epsilon = ["16/255"]
[block.params.datasets.fashion_mnist]
query_subset = 60
n_train = 1000
[block.params.hashing.dpsh]
epochs = 2
[block.params.attacks.pgd]
iterations = 3
[block.params.attacks.dhta]
iterations = 3
"""


def victim_of(runner, plan):
    """The runner's trained victim of ``plan`` (``Trained``) and its clean codes of the cell's split (``Codes``)."""
    from benchmark.cell import dataset_splits
    from benchmark.encoding.codes import clean_codes
    from benchmark.victim.train import trained_victim

    splits = dataset_splits(plan, runner.session)
    victim = trained_victim(plan.victim, splits, runner.session)
    return victim, clean_codes(plan.codes, victim, splits, runner.session)
