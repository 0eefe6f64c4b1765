"""The JSON downloads: every table's typed JSON twin, one entry per victim (protocol, clean mAP, each attack per
ε, the worst case, the per-query curve, the runs) with its index, deterministic bytes and NaN as null."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from test_robustness_board import robust  # noqa: F401 - the fixture: three victims with per-query records

from leaderboard.entries import jsonable, typed_records
from leaderboard.render import render


def load(path):
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    return json.loads(text)


def test_every_table_has_a_typed_json_twin(robust):  # noqa: F811
    site = robust[0]
    for csv in (site / "tables").glob("*.csv"):
        records = load(csv.with_suffix(".json"))
        frame = pd.read_csv(csv)
        assert len(records) == len(frame) and list(records[0]) == sorted(frame.columns), csv.name
    robust_rows = load(next((site / "tables").glob("robustness-*.json")))
    assert [r["hashing_label"] for r in robust_rows] == ["csq", "dpsh", "dpsh"]
    assert robust_rows[0]["per_query_worst 8/255"] == pytest.approx(0.55) and isinstance(robust_rows[0]["rank"], int)
    paper = load(site / "tables" / "paper-cgat-1.json")
    assert all(isinstance(r["paper_value"], float) for r in paper)  # "0.8253" in the CSV, a number here


def test_one_entry_per_victim_with_the_per_query_curve(robust):  # noqa: F811
    site = robust[0]
    index = load(site / "victims.json")
    assert [(e["victim"]["hashing_label"], e["victim"]["defense_label"]) for e in index] == [
        ("csq", "none"), ("dpsh", "cgat"), ("dpsh", "none")]  # ids begin with the names
    assert {p.name for p in (site / "victims").glob("*.json")} == {e["file"].split("/")[1] for e in index}
    entry = load(site / next(e["file"] for e in index if e["victim"]["hashing_label"] == "dpsh"
                             and e["victim"]["defense_label"] == "none"))
    assert entry["clean"]["map"] == pytest.approx(0.9)
    assert entry["protocol"]["conventions"]["zero_relevant"] == "skip" and entry["protocol"]["seeds"] == [0]
    assert {"tie_rule", "target_rule", "search_backend"} <= set(entry["protocol"]["conventions"])
    assert len(entry["attacks"]) == 6 and {a["attack"] for a in entry["attacks"]} == {"pgd", "hag"}
    pgd = next(a for a in entry["attacks"] if a["attack"] == "pgd" and a["epsilon_text"] == "8/255")
    assert pgd["map"] == pytest.approx(0.55) and pgd["seconds_per_query"] == pytest.approx(0.1)
    assert pgd["epsilon"] == 8 / 255 and pgd["cell_keys"] == ["dpsh-none-pgd-0"]
    assert pgd["commands"][0].startswith("python bench.py --grid only ") and "--only epsilon=8/255" in pgd["commands"][0]
    # PGD and HAG hurt different queries: the per-query worst case (0.2) is below the worst of the means (0.55)
    assert [p["worst_map"] for p in entry["worst_case"]] == pytest.approx([0.55, 0.45, 0.3])
    assert [p["per_query_worst"] for p in entry["robustness"]["points"]] == pytest.approx([0.2, 0.1, 0.0])
    assert [(round(c["epsilon"] * 255), c["worst_case"]) for c in entry["curve"]] == [
        (8, pytest.approx(0.2)), (16, pytest.approx(0.1)), (32, pytest.approx(0.0))]
    assert entry["robustness"]["rank"] == 3 and entry["runs"][0]["git_commit"] == "feedc0ffee1234"


def test_without_per_query_records_the_curve_is_the_worst_of_the_means(robust):  # noqa: F811
    site = robust[1]
    entry = load(site / next(e["file"] for e in load(site / "victims.json") if e["victim"]["hashing_label"] == "dpsh"
                             and e["victim"]["defense_label"] == "none"))
    assert all(c["kind"] == "worst of the means" for c in entry["curve"])
    assert [c["worst_case"] for c in entry["curve"]] == pytest.approx([0.55, 0.45, 0.3])


def test_entries_are_linked_and_the_bytes_repeat(robust, tmp_path):  # noqa: F811
    site = robust[0]
    for page in ("rankings.html", "robustness.html"):
        html = (site / page).read_text()
        links = set(re.findall(r'href="(victims/[^"]+\.json)"', html))
        assert len(links) == 3 and 'href="victims.json"' in html, page
        assert all((site / link).is_file() for link in links)
    assert 'href="victims.json"' in (site / "index.html").read_text()
    results = next(p for p in site.parent.iterdir() if p.name == "results")
    again = render(results, tmp_path / "again", cache_dir=site.parent / "cache").parent
    for path in [*(site / "victims").glob("*.json"), site / "victims.json", *(site / "tables").glob("*.json")]:
        assert (again / path.relative_to(site)).read_bytes() == path.read_bytes(), path.name


def test_jsonable_and_typed_records():
    assert jsonable({"a": np.float64("nan"), "b": [np.int64(3), math.inf], "c": np.bool_(True)}) == \
        {"a": None, "b": [3, None], "c": True}
    typed = typed_records([{"v": "0.5", "n": "16", "t": "16 bits", "e": ""}, {"v": "", "n": "32", "t": "x", "e": ""}])
    assert typed == [{"v": 0.5, "n": 16, "t": "16 bits", "e": ""}, {"v": None, "n": 32, "t": "x", "e": ""}]
