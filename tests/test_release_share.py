"""A protection's release parameters (PPL's database_share) act per cell, even when one run computes several
values of them from the one protection it trained: the share released is the cell's, and recorded."""
from __future__ import annotations

import json
import typing

import pandas as pd
import torch
from conftest import write_grid

from benchmark import Defense, Range, Registry
from benchmark.planning.grid import expand, load_preset
from benchmark.running.runner import Runner


class SharedShift(Defense):
    """Inverts the released images (a protection that moves codes), on a share of the database."""

    name, paper, kind = "shared_shift", "test", "defenses"
    source_hash = Registry.discover().get("defenses", "none").source_hash
    protects: typing.ClassVar[bool] = True
    release_parameters: typing.ClassVar[tuple[str, ...]] = ("database_share",)

    database_share: typing.Annotated[float, Range(0, 1)] = 1.0

    def prepare_protection(self, train, ctx):
        self.trained = True

    def protect(self, x):
        return 1 - x

    def database_mask(self, n, generator):
        mask = torch.zeros(n, dtype=torch.bool)
        mask[torch.randperm(n, generator=generator)[:round(self.database_share * n)]] = True
        return mask

    def state_dict(self):
        return {"trained": True}

    def load_state_dict(self, state):
        self.trained = state["trained"]


BLOCK = """
[[block]]
dataset = "fashion_mnist"
hashing = "dpsh"
backbone = "smallcnn"
bits = 16
defense = "shared_shift"
attack = "none"
scenario = "c2a"
[block.params.datasets.fashion_mnist]
query_subset = 40
n_train = 300
[block.params.hashing.dpsh]
epochs = 1
[block.params.defenses.shared_shift]
database_share = {share}
"""


def test_each_cell_releases_its_own_share_of_the_database_in_one_run(tmp_path):
    registry = Registry.discover()
    registry.plugins["defenses"]["shared_shift"] = SharedShift
    grid = write_grid(tmp_path / "grid.toml", BLOCK.format(share=0.1) + BLOCK.format(share=0.9))
    cells = expand(load_preset(str(grid)), registry)
    runner = Runner(registry, tmp_path / "results", tmp_path / "cache", device="cpu")
    assert runner.run(cells)["ran"] == 2  # one protection and one victim serve both cells
    table = pd.read_parquet(tmp_path / "results")
    released = table[table["metric"] == "released_share"]
    asked = released["defense_params"].map(lambda p: json.loads(p)["database_share"])
    assert sorted(released["value"].round(6)) == [0.1, 0.9] and (released["value"].round(6) == asked).all()
    maps = table[(table["metric"] == "map") & (table["topk"] == 0)].set_index("defense_params")["value"]
    assert maps.nunique() == 2  # the first cell's share did not stand for the second's
