"""The papers page matches measured cells honestly: one configuration's seeds only, the paper's conventions
(epsilon, cut-off, target rule, schedule, protocol) decide like-for-like, stale cells never count."""
from __future__ import annotations

import hashlib
import json
import math
import re

import pytest
from result_rows import cell_rows, write_cells

from leaderboard import papers, store
from leaderboard.render import render

# CgAT Table 1, FLICKR-25K, DPSH/AlexNet 32 bits under DHTA: MAP@5000 = 0.3278 (paper)
CGAT_DHTA = {"dataset": "flickr25k", "dataset_label": "flickr25k", "hashing": "dpsh", "hashing_label": "dpsh",
             "backbone": "alexnet", "bits": 32, "attack": "dhta", "attack_label": "dhta", "epsilon": 8 / 255,
             "targeted": True, "n_query": 1000, "n_train": 5000, "n_database": 24000,
             "target_rule": "disjoint", "zero_relevant": "count_as_zero", "ap_denominator": "relevant_in_top_k",
             "attack_params": json.dumps({"iterations": 2000, "step_rule": "sign"}),
             "hashing_params": json.dumps({"optimizer": "sgd"}), "dataset_params": json.dumps({"topk": 5000})}


def reference_row(**keys) -> dict:
    ref = papers.load_reference(papers.Path(papers.__file__).parent / "reference")
    hits = ref
    for k, v in keys.items():
        hits = hits[hits[k] == v]
    assert len(hits) == 1, (keys, len(hits))
    return hits.iloc[0].to_dict()


def matched(tmp_path, rows, **keys) -> dict | None:
    df, _ = store.read_results(write_cells(tmp_path, rows))
    df, _ = store.drop_stale(df, tmp_path)
    return papers.match(reference_row(**keys), papers.measured_index(df))


def sources_for(tmp_path, current: bool) -> str:
    code = tmp_path / "methods" / "attacks" / "dhta.py"
    code.parent.mkdir(parents=True, exist_ok=True)
    code.write_text("# the attack as it is now\n")
    digest = hashlib.sha256(code.read_bytes()).hexdigest()[:16] if current else "0123456789abcdef"
    return json.dumps({"methods/attacks/dhta.py": digest})


CGAT_ROW = {"paper": "cgat", "table": "1", "dataset": "flickr25k", "bits": "32", "defense": "none", "attack": "dhta",
            "metric": "map"}


def test_two_conventions_and_a_stale_cell_are_neither_averaged_nor_like_for_like(tmp_path):
    current, outdated = sources_for(tmp_path, True), sources_for(tmp_path, False)
    rows = cell_rows({"map": (0.50, 5000)}, **{**CGAT_DHTA, "target_rule": "different"}, seed=0, sources=current)
    rows += cell_rows({"map": (0.40, 5000)}, **{**CGAT_DHTA, "zero_relevant": "exclude"}, seed=1, sources=current)
    rows += cell_rows({"map": (0.90, 5000)}, **CGAT_DHTA, seed=2, sources=outdated)  # right conventions, old code
    results = write_cells(tmp_path, rows)
    m = matched(tmp_path, rows, **CGAT_ROW)
    assert m["text"] in ("0.5000", "0.4000") and m["seeds"] == 1  # one configuration, never the mean 0.4500
    assert not m["lfl"]
    assert "1 other matching configuration(s) not shown, not averaged" in m["title"]
    assert "target rule: different (paper: disjoint" in m["title"] or "zero-relevant rule: exclude" in m["title"]

    site = render(results, tmp_path / "site", code_root=tmp_path).parent
    html = (site / "papers.html").read_text()
    cell = re.search(r"<td class=\"v\"><span[^>]*>0\.3278</span><span.*?</td>", html).group(0)
    assert ">0.5000" in cell or ">0.4000" in cell
    for never in (">0.4500", ">0.9000", "0.6000", 'class="lfl"'):  # no mean, no stale value, no ≡
        assert never not in cell, never
    assert "1 stale cell(s) not shown" in html
    assert "0.9000" not in (site / "index.html").read_text()  # the stale cell is on no page
    assert (results / f"{rows[-1]['cell_key']}.parquet").exists()  # but kept in the store


def test_seeds_of_one_configuration_are_averaged_and_like_for_like(tmp_path):
    rows = cell_rows({"map": [(0.30, 5000), (0.20, 0), (0.35, 1000)]}, **CGAT_DHTA, seed=0)
    rows += cell_rows({"map": [(0.32, 5000), (0.22, 0), (0.37, 1000)]}, **CGAT_DHTA, seed=1)
    m = matched(tmp_path, rows, **CGAT_ROW)
    assert m["text"] == "0.3100" and m["seeds"] == 2  # the @5000 rows of both seeds, nothing else
    assert m["lfl"] and m["title"].startswith("like-for-like")
    assert "assumed where the paper is silent" in m["title"] and "ε 8/255" in m["title"]
    assert "mean of 2 seeds (0, 1)" in m["title"]
    # the paper's cut-off missing from a cell is a difference, not a reason to pick another row silently
    only_all = cell_rows({"map": (0.20, 0)}, **CGAT_DHTA, seed=0)
    m = matched(tmp_path / "b", only_all, **CGAT_ROW)
    assert m["text"] == "0.2000" and not m["lfl"] and "cut-off: @all (paper: @5000)" in m["title"]


def test_the_papers_epsilon_schedule_and_victim_training_decide(tmp_path):
    at16 = cell_rows({"map": (0.10, 5000)}, **{**CGAT_DHTA, "epsilon": 16 / 255}, seed=0)
    at8 = cell_rows({"map": (0.33, 5000)}, **CGAT_DHTA, seed=0)
    m = matched(tmp_path, at16 + at8, **CGAT_ROW)
    assert m["text"] == "0.3300" and m["lfl"]  # the paper's ε, not an arbitrary one of the two
    assert "1 other matching configuration(s)" in m["title"]
    short = cell_rows({"map": (0.50, 5000)}, **{**CGAT_DHTA, "attack_params": json.dumps({"iterations": 150})})
    m = matched(tmp_path / "a", short, **CGAT_ROW)
    assert not m["lfl"] and "attack iterations: 150 (paper: 2000" in m["title"]
    m = matched(tmp_path / "b", at16, **CGAT_ROW)
    assert not m["lfl"] and "ε: 16/255 (paper: 8/255" in m["title"]
    adam = cell_rows({"map": (0.33, 5000)}, **{**CGAT_DHTA, "hashing_params": json.dumps({"optimizer": "adam"})})
    m = matched(tmp_path / "c", adam, **CGAT_ROW)
    assert not m["lfl"] and "victim optimizer: adam (paper: sgd" in m["title"]


def test_hag_datasets_are_matched_by_protocol_not_by_name(tmp_path):
    hag = {"dataset": "flickr25k", "dataset_label": "flickr25k", "hashing": "dph", "hashing_label": "dph",
           "backbone": "vgg16", "bits": 32, "attack": "hag", "attack_label": "hag", "epsilon": 0.039,
           "n_query": 200, "n_train": 5000, "ap_denominator": "relevant_in_database",
           "attack_params": json.dumps({"iterations": 2000, "lr": 500.0, "momentum": 0.9, "continuation": True,
                                        "threshold": 0.5}),
           "hashing_params": json.dumps({"optimizer": "sgd", "momentum": 0.9, "batch_size": 24, "lr": 0.001})}
    snapshots = cell_rows({"map": [(0.15, 1000), (0.11, 0)]}, **hag, iterations=500, cell_key="run1")
    snapshots += cell_rows({"map": [(0.12, 1000), (0.10, 0)]}, **hag, iterations=2000, cell_key="run1")
    m = matched(tmp_path, snapshots, paper="hag", table="I", dataset="flickr25k", bits="32", task="iter=500")
    assert m["text"] == "0.1500"  # the 500-iteration snapshot of the run, at HAG's cut-off @1000
    assert not m["lfl"] and "dataset labels: 38 (paper: 24" in m["title"]  # our FLICKR-25K has 38 labels
    m = matched(tmp_path, snapshots, paper="hag", table="I", dataset="flickr25k", bits="32", task="iter=2000")
    assert m["text"] == "0.1200"


def test_stand_in_datasets_and_transfer_sources(tmp_path):
    mosaic = {"dataset": "fashion_mnist_canvas", "dataset_label": "fashion_mnist_canvas",
              "backbone": "smallcnn_fc500", "attack": "prosgan", "attack_label": "prosgan", "epsilon": math.nan,
              "targeted": True}  # on a stand-in, smallcnn_fc500 stands for VGG-11 and smallcnn for AlexNet
    rows = cell_rows({"tmap": 0.61}, **mosaic, bits=12, surrogate="dpsh/smallcnn/32")  # H-AlexNet* -> H-VGG11
    rows += cell_rows({"tmap": 0.62}, **mosaic, bits=12, surrogate="dpsh/smallcnn/12")  # H-AlexNet -> H-VGG11
    rows += cell_rows({"tmap": 0.77}, **mosaic, bits=32)  # white box: H-VGG11* -> H-VGG11*
    prosgan3 = {"paper": "prosgan", "table": "3", "attack": "prosgan", "metric": "tmap"}
    m = matched(tmp_path, rows, **prosgan3, task="source=H-AlexNet*,target=H-VGG11")
    assert m["text"] == "0.6100" and m["stand_in"] and not m["lfl"] and "stands in for nuswide" in m["title"]
    assert matched(tmp_path, rows, **prosgan3, task="source=H-AlexNet,target=H-VGG11")["text"] == "0.6200"
    m = matched(tmp_path, rows, **prosgan3, task="source=H-VGG11*,target=H-VGG11*")
    assert m["text"] == "0.7700" and m["eps"] == "unbounded"
    assert "ε:" not in m["title"]  # ProS-GAN is unbounded in the paper too
    assert matched(tmp_path, rows, **prosgan3, task="source=H-ResNet18*,target=H-VGG11") is None
    hag_combined = reference_row(paper="hag", table="IV", task="source=r1+r2,target=DPH-VGG16")
    assert papers.wanted(hag_combined) is None  # no single surrogate crafted r1 + r2


def test_timing_rows_are_never_like_for_like_and_show_device_and_batch(tmp_path):
    nus = {"dataset": "nuswide", "dataset_label": "nuswide", "backbone": "vgg11", "bits": 32, "attack": "dhta",
           "attack_label": "dhta", "epsilon": 8 / 255, "targeted": True, "target_rule": "any",
           "n_query": 2100, "n_train": 10500, "zero_relevant": "count_as_zero", "batch_size": 16,
           "attack_params": json.dumps({"iterations": 2000, "step_rule": "l2"})}
    rows = cell_rows({"seconds_per_image": 4.2, "tmap": (0.75, 0)}, **nus)
    m = matched(tmp_path, rows, paper="prosgan", table="2", dataset="nuswide", attack="dhta",
                metric="seconds_per_image")
    assert m["text"] == "4.2" and not m["lfl"]
    assert "NVIDIA H100 80GB HBM3" in m["context"] and "batch 16" in m["context"]
    m = matched(tmp_path, rows, paper="prosgan", table="2", dataset="nuswide", attack="dhta", metric="tmap")
    assert m["lfl"], m["title"]  # the same cell's t-MAP is like-for-like: every convention matches


def test_fgsm_and_ifgsm_rows_match_their_own_plugins_not_dhta(tmp_path):
    nus = {"dataset": "nuswide", "dataset_label": "nuswide", "backbone": "vgg11", "bits": 32, "epsilon": 8 / 255,
           "targeted": True}
    rows = cell_rows({"tmap": (0.66, 0)}, **nus, attack="fgsm_dhta", attack_label="fgsm_dhta",
                     attack_params=json.dumps({"n_anchors": 9, "alpha": 0.1}))
    rows += cell_rows({"tmap": (0.70, 0)}, **nus, attack="ifgsm_dhta", attack_label="ifgsm_dhta",
                      attack_params=json.dumps({"iterations": 100, "step_size": 1 / 255}))
    rows += cell_rows({"tmap": (0.75, 0)}, **nus, attack="dhta", attack_label="dhta",
                      attack_params=json.dumps({"iterations": 2000}))
    for attack, text in (("fgsm_dhta", "0.6600"), ("ifgsm_dhta", "0.7000"), ("dhta", "0.7500")):
        m = matched(tmp_path, rows, paper="prosgan", table="2", dataset="nuswide", attack=attack, metric="tmap")
        assert m["text"] == text, attack


def test_plugin_label_counts_agree_with_the_dataset_plugins(registry):
    for name, labels in papers.PLUGIN_LABELS.items():
        assert registry.plugins["datasets"][name].num_classes == labels, name


@pytest.mark.parametrize("paper", sorted(papers.CONVENTIONS))
def test_every_paper_has_a_conventions_entry_shown_on_the_page(paper, tmp_path_factory):
    rows = papers.conventions_table()
    assert papers.PAPERS[paper] in {r["paper"] for r in rows}
    conv = papers.CONVENTIONS[paper]
    assert conv.datasets and conv.default_backbone, paper
    assert all(isinstance(s, papers.Said) and s.where for s in conv.epsilon.values())


def test_target_code_rows_take_the_papers_cut_off(tmp_path):
    nus = {"dataset": "nuswide", "dataset_label": "nuswide", "backbone": "vgg11", "bits": 32, "attack": "dhta",
           "attack_label": "dhta", "epsilon": 8 / 255, "targeted": True}
    rows = cell_rows({"anchor_code_tmap": [(0.70, 1000), (0.78, 0), (0.74, 5000)]}, **nus)
    m = matched(tmp_path, rows, paper="prosgan", table="1", dataset="nuswide", bits="32", metric="anchor_code_tmap")
    assert m["text"] == "0.7800"  # ProS-GAN: over the whole database
    assert "ε:" not in m["title"] and "attack iterations" not in m["title"]  # no perturbation in a target code


MOSAIC = {"dataset": "fashion_mnist_canvas", "backbone": "smallcnn_fc500", "n_query": 200,
          "dataset_label": "fashion_mnist_canvas[query_subset=200]"}


def test_a_shortened_runs_snapshot_is_the_one_nearest_the_papers_iteration_count(tmp_path):
    """HAG Table IV names the finished 2000-iteration attack: of a 500-iteration run's five snapshots (each one
    difference from the paper's schedule), the 500-iteration one stands for it, not the first written."""
    hag = {**MOSAIC, "hashing": "dph", "hashing_label": "dph", "bits": 32, "attack": "hag", "attack_label": "hag",
           "epsilon": 0.039, "cell_key": "hagrun", "attack_params": json.dumps({"iterations": 500})}
    rows = []
    for iterations, value in ((100, 0.86), (200, 0.855), (300, 0.853), (400, 0.851), (500, 0.85)):
        rows += cell_rows({"map": (value, 1000)}, **hag, iterations=iterations)
    m = matched(tmp_path, rows, paper="hag", table="IV", dataset="mscoco", bits="32",
                task="source=DPH-VGG16(r1),target=DPH-VGG16")
    assert m["text"] == "0.8500", m["title"]
    assert "iterations 500" in m["title"] and "hag iterations 500 (paper 2000)" in m["shortened"]


def test_a_paper_table_row_takes_its_values_from_one_query_set(tmp_path):
    """ProS-GAN Table 1's DHTA row: the 200-query block has 12 and 32 bits; the 50-query timing block only
    32 bits, at the paper's 2000 iterations (one difference fewer). The row shows the 200-query block in both
    columns, never the 50-query value beside the 200-query one."""
    dhta = {"dataset": "fashion_mnist_canvas", "backbone": "smallcnn_fc500", "attack": "dhta",
            "attack_label": "dhta", "epsilon": 8 / 255, "targeted": True, "target_rule": "any"}
    block200 = {"dataset_label": "fashion_mnist_canvas[query_subset=200]", "n_query": 200,
                "attack_params": json.dumps({"iterations": 300})}
    block50 = {"dataset_label": "fashion_mnist_canvas[query_subset=50]", "n_query": 50,
               "attack_params": json.dumps({"iterations": 2000})}
    rows = cell_rows({"tmap": 0.61}, **dhta, **block200, bits=12)
    rows += cell_rows({"tmap": 0.62}, **dhta, **block200, bits=32)
    rows += cell_rows({"tmap": 0.76}, **dhta, **block50, bits=32, created_at="2025-01-02T03:04:06")
    df, _ = store.read_results(write_cells(tmp_path, rows))
    ref = papers.load_reference(papers.Path(papers.__file__).parent / "reference")
    table = papers.paper_tables(ref[(ref["paper"] == "prosgan") & (ref["table"] == "1")],
                                papers.measured_index(df))[0]
    # the DHTA t-MAP cells of the FLICKR-25K stand-in at 12 and 32 bits
    shown = [c["measured"]["text"] for r in table["rows"] for c in r["cells"]
             if c and c["measured"] and r["labels"][table["row_fields"].index("attack")] == "dhta"
             and r["labels"][table["row_fields"].index("metric")] == "tmap"]
    assert shown and set(shown) == {"0.6100", "0.6200"}, shown
    assert "0.7600" not in shown
    assert table["query_sets"] and all("200 queries" in q for q in table["query_sets"]), table["query_sets"]
    assert any("stands in" in x or "for flickr25k" in x for x in table["stand_ins"]), table["stand_ins"]
    assert "dhta iterations 300 (paper 2000)" in table["shortened"]
    # the 50-query block is still a matching configuration of that cell on its own
    row = reference_row(paper="prosgan", table="1", dataset="flickr25k", bits="32", attack="dhta", metric="tmap")
    assert papers.match(row, papers.measured_index(df))["text"] == "0.7600"
