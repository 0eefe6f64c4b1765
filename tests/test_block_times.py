"""tools/block_times.py: a block's stored cells and the victims it trained, each victim counted once."""
from __future__ import annotations

import sys

import pandas as pd
from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
from block_times import block_times  # noqa: E402


def test_each_victim_counts_in_the_first_block_that_uses_it_and_failed_cells_count_nowhere():
    rows = pd.DataFrame([  # two rows per cell, as a store has one per metric
        *[{"cell_key": k, "victim_key": v, "status": s, "cell_seconds": c, "train_seconds": t}
          for k, v, s, c, t in [("a", "v1", "ok", 60, 600), ("b", "v1", "ok", 120, 600), ("c", "v2", "ok", 30, 300),
                                ("d", "v3", "error", 999, 999)] for _ in range(2)]])
    table = block_times([("first", ["a", "b", "x"]), ("second", ["b", "c", "d"])], rows)
    assert list(table["cells"]) == ["2/3", "2/3"]  # x is not stored, d failed
    assert list(table["cell_minutes"]) == [3.0, 2.5]
    assert list(table["victims_trained"]) == [1, 1] and list(table["victim_minutes"]) == [10.0, 5.0]
