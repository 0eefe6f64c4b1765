"""The static leaderboard: rendering a synthetic result store, escaping, offline pages, the papers' numbers."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from result_rows import cell_rows, write_store

from leaderboard import store
from leaderboard.render import PAGES, render

REPO = Path(__file__).resolve().parents[1]
XSS = "<script>alert(1)</script>"
PPL_PROTOCOL = {"n_query": 10_000, "n_database": 60_000, "n_train": 10_000}  # PPL's FashionMNIST split


def synthetic_rows() -> list[dict]:
    dhta = {"attack": "dhta", "attack_params": json.dumps({"iterations": 300})}
    rows = cell_rows({"map": (0.71234, 1000), "tmap": (0.10201, 1000), "perceptibility": 0.0, "linf": 0.0},
                     curves=True)
    for eps, m in ((4 / 255, 0.4), (8 / 255, 0.12345), (16 / 255, 0.05)):
        rows += cell_rows({"map": (m, 1000), "tmap": (0.81234, 1000), "map_tie_aware": (m + 0.001, 1000),
                           "perceptibility": 0.01234, "linf": 8 / 255, "linf_mean": 7.5 / 255, "l2": 0.9,
                           "seconds_per_image": 1.2345, "prepare_seconds": 0.0},
                          curves=True, attack_label="dhta[iterations=300]", epsilon=eps, **dhta)
    rows += cell_rows({"map": (0.3333, 1000), "tmap": (0.6543, 1000), "seconds_per_image": 0.000712,
                       "prepare_seconds": 321.0}, curves=True, attack="prosgan", attack_label="prosgan",
                      epsilon=8 / 255, batch_size=64)
    rows += cell_rows(error="CUDA out of memory while attacking (tried to allocate 2.00 GiB)",
                      attack="hag", attack_label="hag", epsilon=8 / 255)
    rows += cell_rows({"map": (0.5, 1000)}, attack="evil", attack_label=XSS, epsilon=8 / 255)
    # PPL Table 1, FashionMNIST, ADSH 8 bits, clean-trained C->C (paper: 0.8496)
    rows += cell_rows({"map": 0.85123}, hashing="adsh", hashing_label="adsh", bits=8, scenario="c2c", **PPL_PROTOCOL)
    return rows


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("lb")
    index = render(write_store(tmp, synthetic_rows()), tmp / "site")
    assert index == tmp / "site" / "index.html"
    return index.parent


def page(site: Path, name: str) -> str:
    return (site / name).read_text(encoding="utf-8")


def test_index_lists_every_cell_with_formatted_values(site):
    html = page(site, "index.html")
    tbody = html.split('id="cells"')[1].replace("<wbr>", "")  # labels break at commas
    assert tbody.count("<tr class=") == 8  # 8 cells, one row each
    for label in ("dhta[iterations=300]", "prosgan", "hag", "fashion_mnist", "smallcnn"):
        assert f">{label}<" in tbody
    for text in ("0.7123", "0.1235", "0.8123", "0.1245", "0.0123", "8.0/255", "1.23 s", "0.000712 s", "8/255",
                 "4/255", "16/255", "@1000", "@all", "0.8512"):
        assert text in tbody, text
    assert 'data-sort="0.71234"' in tbody  # sorting uses the raw number


def test_error_cell_shows_its_reason(site):
    html = page(site, "index.html")
    row = next(r for r in html.split("<tr") if "CUDA out of memory" in r)
    assert 'class="error"' in row and ">hag<" in row
    assert "tried to allocate 2.00 GiB" in row


def test_plugin_strings_are_escaped_everywhere(site):
    for name in [p for p, _ in PAGES]:
        html = page(site, name)
        assert XSS not in html, name
        assert "<script>" not in html.replace("<script>\n", "", 1), name  # only our own inline script
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page(site, "index.html")


def test_pages_work_offline(site):
    for name in [p for p, _ in PAGES]:
        html = page(site, name)
        assert not re.search(r"<script[^>]+src=", html), name
        assert not re.search(r"<link[^>]+stylesheet", html), name
        assert "http://" not in html and "https://" not in html, name
        for href in re.findall(r'href="([^"#]+)"', html):  # every local link resolves inside the site
            assert (site / href).exists(), (name, href)


def test_downloads_hold_every_row(site, tmp_path):
    csv = pd.read_csv(site / "results.csv")
    parquet = pd.read_parquet(site / "results.parquet")
    n = len(synthetic_rows())
    assert len(csv) == len(parquet) == n
    assert set(parquet["attack_label"]) >= {"dhta[iterations=300]", XSS}
    assert 'href="results.csv"' in page(site, "index.html")


def test_environment_and_timing(site):
    assert "NVIDIA H100 80GB HBM3" in page(site, "index.html") and "abc1234" in page(site, "index.html")
    timing = page(site, "timing.html")
    assert "NVIDIA H100 80GB HBM3" in timing
    dhta = next(r for r in timing.split("<tr>") if "dhta[iterations=300]" in r)
    assert ">300<" in dhta and "1.23 s" in dhta and ">128<" in dhta
    prosgan = next(r for r in timing.split("<tr>") if ">prosgan<" in r)
    assert "321 s" in prosgan and ">64<" in prosgan and "0.000712 s" in prosgan


def test_curves_page_has_svg_plots_with_legends(site):
    html = page(site, "curves.html")
    assert html.count("<svg") == 4  # precision@N, PR, mAP vs eps, t-MAP vs eps for the dpsh victim
    assert "precision@N against N" in html and "precision against recall" in html and "mAP against ε" in html
    assert "dhta[iterations=300] ε=8/255" in html and "clean queries (0.7123)" in html
    assert html.count("<polyline") >= 9


def test_papers_page_puts_measured_beside_paper(site):
    html = page(site, "papers.html")
    assert "PPL — Proactive Privacy-preserving Learning" in html and "CgAT (WWW 2023) — Table 5" in html
    cell = re.search(r"<td class=\"v\"><span[^>]*>0\.8496.*?</td>", html).group(0)
    assert '<span class="meas"' in cell and ">0.8512" in cell and 'class="lfl"' in cell  # like-for-like
    other = re.search(r"<td class=\"v\"><span[^>]*>0\.9221.*?</td>", html).group(0)  # PPL CIFAR-10 ADSH C->C
    assert ">0.8512" in other and 'class="standin"' in other  # FashionMNIST stands in for it,
    assert 'class="lfl"' not in other and "stands in for cifar10" in other  # never like-for-like
    assert re.search(r'<span class="meas none" title="not measured[^"]*">—</span>', html)
    assert 'title="backbone assumed from Implementation Details (2 conv layers' in cell  # the note, as a tooltip
    assert "3 of 192 measured, 1 like-for-like" in html  # FashionMNIST, and standing in for CIFAR-10 and ImageNet


def test_papers_iterations_units_and_transfer_diagonal(tmp_path):
    hag = {"dataset": "flickr25k", "dataset_label": "flickr25k", "hashing": "dph", "hashing_label": "dph",
           "backbone": "vgg16", "bits": 32, "attack": "hag", "attack_label": "hag[iterations=500]",
           "epsilon": 8 / 255, "attack_params": json.dumps({"iterations": 500})}
    prosgan = {"dataset": "nuswide", "dataset_label": "nuswide", "backbone": "vgg11", "bits": 32,
               "attack": "prosgan", "attack_label": "prosgan", "epsilon": 8 / 255}
    rows = cell_rows({"map": (0.1234, 1000)}, **hag)  # HAG Table I flickr25k 32 bits iter=500: 0.1496
    rows += cell_rows({"perceptibility": 0.0191, "tmap": (0.7777, 0)}, **prosgan)  # ProS-GAN Table 2: 1.87 x1e-2
    html = page(render(write_store(tmp_path, rows, files=1), tmp_path / "site").parent, "papers.html")
    cell = re.search(r"<td class=\"v\"><span[^>]*>0\.1496.*?</td>", html).group(0)
    assert ">0.1234" in cell and "ε 8/255" in cell and "≡" not in cell  # iterations match, params not default
    assert ">1.91" in re.search(r"<td class=\"v\"><span[^>]*>1\.87.*?</td>", html).group(0)  # shown in the paper's unit
    # ProS-GAN Table 3 diagonal H-VGG11* -> H-VGG11* (NUS-WIDE, vgg11, 32 bits) is the white-box cell
    assert ">0.7777" in re.search(r"<td class=\"v\"><span[^>]*>0\.7825</span><span.*?</td>", html).group(0)
    assert html.count(">0.7777") == 3  # Table 1 (32 bits), Table 2, Table 3 diagonal; no off-diagonal source


PPL_AS_PUBLISHED = {"epsilon": 0.3, "iterations": 1000, "batch_size": 512, "lr_generator": 1e-4, "lr_surrogate": 1e-3,
                    "optimizer": "sgd", "loss_reduction": "sum", "surrogate_bits": 8}


def ppl_cell(metrics: dict, scenario: str, **params_and_cell) -> list[dict]:
    """A PPL protection cell as the harness stores it: defense ppl, attack none, the scenario it releases."""
    params = {**PPL_AS_PUBLISHED, **{k: v for k, v in params_and_cell.items() if k in PPL_AS_PUBLISHED}}
    cell = {k: v for k, v in params_and_cell.items() if k not in PPL_AS_PUBLISHED}
    protocol = {"n_query": 10_000, "n_train": 10_000, "n_database": 60_000}
    return cell_rows(metrics, **{"hashing": "adsh", "hashing_label": "adsh", "bits": 8, "defense": "ppl",
                                 "defense_label": "ppl", "defense_params": json.dumps(params), "scenario": scenario,
                                 "cell_key": f"ppl-{scenario}-{json.dumps(params_and_cell, sort_keys=True)}",
                                 **protocol, **cell})


def test_papers_match_needs_the_same_scenario(tmp_path):
    rows = ppl_cell({"map": 0.6}, "a2a")  # PPL FashionMNIST ADSH 8 bits, clean-trained A->A
    rows += ppl_cell({"map": 0.7}, "c2a", train_data="protected")  # A-trained C->A
    rows += cell_rows({"map": 0.8}, hashing="adsh", hashing_label="adsh", bits=8)  # clean queries, default a2c
    html = page(render(write_store(tmp_path, rows, files=1), tmp_path / "site").parent, "papers.html")
    for value in (">0.6000", ">0.7000", ">0.8000"):  # once on FashionMNIST, twice standing in (CIFAR-10, ImageNet)
        assert html.count(value) == 3, value
        cells = [c for c in re.findall(r"<td[^>]*>.*?</td>", html) if value in c]
        assert sum('class="standin"' in c for c in cells) == 2, value
    fm = html[html.index("fashion_mnist"):]
    clean_a2a = re.search(r"<tr><td>fashion_mnist</td><td>adsh</td><td>smallcnn</td><td>clean</td><td>ppl</td>"
                          r"<td>a2a</td><td class=\"v\"><span[^>]*>[\d.]+</span><span class=\"meas\"[^>]*>0\.6000", fm)
    adv_c2a = re.search(r"<tr><td>fashion_mnist</td><td>adsh</td><td>smallcnn</td><td>adversarial</td><td>ppl</td>"
                        r"<td>c2a</td><td class=\"v\"><span[^>]*>[\d.]+</span><span class=\"meas\"[^>]*>0\.7000", fm)
    clean_c2c = re.search(r"<span[^>]*>0\.8496</span><span class=\"meas\"[^>]*>0\.8000", fm)
    assert clean_a2a and adv_c2a and clean_c2c


def test_a_ppl_cell_is_like_for_like_only_with_the_papers_protection_settings(tmp_path):
    """PPL is a defense plugin (a protection), listed in its paper's attack column: its cells are matched to
    those rows and ≡ only when the protection ran with the paper's ε, schedule, optimizer and surrogate."""
    rows = ppl_cell({"map": 0.31}, "c2a")
    rows += ppl_cell({"map": 0.52}, "a2c", optimizer="adam", loss_reduction="mean")  # hashbench's defaults
    rows += ppl_cell({"map": 0.64}, "c2c", train_data="protected", epsilon=0.1)
    html = page(render(write_store(tmp_path, rows, files=1), tmp_path / "site").parent, "papers.html")
    fm = html[html.index("fashion_mnist"):]

    def shown(scenario: str, train: str) -> str:
        return re.search(rf"<tr><td>fashion_mnist</td><td>adsh</td><td>smallcnn</td><td>{train}</td><td>[a-z]+</td>"
                         rf"<td>{scenario}</td><td class=\"v\">.*?</td>", fm).group(0)

    assert ">0.3100" in shown("c2a", "clean") and "≡" in shown("c2a", "clean")
    a2c = shown("a2c", "clean")
    assert ">0.5200" in a2c and "≡" not in a2c and "protection optimizer: adam (paper: sgd" in a2c
    c2c = shown("c2c", "adversarial")  # the model trained on data protected at another ε
    assert ">0.6400" in c2c and "≡" not in c2c and "protection ε: 0.1" in c2c


def test_non_default_dataset_is_measured_but_not_like_for_like(tmp_path):
    rows = cell_rows({"map": 0.84}, hashing="adsh", hashing_label="adsh", bits=8, scenario="c2c",
                     dataset_label="fashion_mnist[query_subset=500]")
    html = page(render(write_store(tmp_path, rows, files=1), tmp_path / "site").parent, "papers.html")
    cell = re.search(r"<td class=\"v\"><span[^>]*>0\.8496.*?</td>", html).group(0)
    assert ">0.8400" in cell and "≡" not in cell and "query_subset=500" in cell


@pytest.mark.parametrize("make", [lambda p: None, lambda p: (p / "results").mkdir(),
                                  lambda p: ((p / "results").mkdir(), (p / "results" / ".gitkeep").touch())])
def test_empty_or_missing_store_renders(tmp_path, make):
    make(tmp_path)
    site = render(tmp_path / "results", tmp_path / "site").parent
    assert "No results yet" in page(site, "index.html")
    assert "No results yet" in page(site, "curves.html")
    assert "0.8496" in page(site, "papers.html")  # the papers' numbers do not need results
    assert not (site / "results.csv").exists()


def test_corrupt_file_is_named_and_skipped_or_fatal(tmp_path):
    results = write_store(tmp_path, synthetic_rows(), files=1)
    (results / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.warns(UserWarning, match="broken.parquet"):
        site = render(results, tmp_path / "site").parent
    html = page(site, "index.html")
    assert "Warning:" in html and "broken.parquet" in html and "0.7123" in html
    assert "broken.parquet" in page(site, "papers.html")  # the banner is on every page
    with pytest.raises(store.ResultStoreError, match="broken.parquet"):
        render(results, tmp_path / "site2", strict=True)


def test_file_without_required_columns_is_reported(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    pd.DataFrame({"x": [1]}).to_parquet(results / "odd.parquet")
    with pytest.warns(UserWarning, match=r"odd.parquet.*missing column"):
        render(results, tmp_path / "site")


def test_rerun_of_a_cell_replaces_the_older_rows(tmp_path):
    old = cell_rows({"map": (0.2, 1000)}, created_at="2025-01-01T00:00:00")
    new = cell_rows({"map": (0.3, 1000)}, created_at="2025-02-01T00:00:00")
    df, _ = store.read_results(write_store(tmp_path, old + new))
    assert store.cells(df)["map"].tolist() == [0.3]


def test_formatting():
    assert store.fmt_epsilon(8 / 255) == "8/255" and store.fmt_epsilon(0.03) == "0.03"
    assert store.fmt_metric("map", 0.71234) == "0.7123" and store.fmt_metric("map", np.nan) == "—"
    assert store.fmt_metric("linf", 8 / 255) == "8.0/255"
    assert store.fmt_seconds(1234.5) == "1234 s" and store.fmt_seconds(0.0123456) == "0.0123 s"
    assert store.iterations('{"iterations": 2000, "lr": 0.1}') == 2000 and store.iterations("not json") is None


def test_command_line(tmp_path):
    results = write_store(tmp_path, synthetic_rows(), files=1)
    done = subprocess.run([sys.executable, "-m", "leaderboard.render", "--results", str(results), "--out",
                           str(tmp_path / "site")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("index.html") and (tmp_path / "site" / "papers.html").exists()
    (results / "bad.parquet").write_bytes(b"garbage")
    done = subprocess.run([sys.executable, "-m", "leaderboard.render", "--results", str(results), "--out",
                           str(tmp_path / "site"), "--strict"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "bad.parquet" in done.stderr


def test_curves_plot_map_against_a_swept_protection_parameter(tmp_path):
    """PPL's Fig. 6: mAP against the generator's epsilon, one line per scenario (Fig. 5: the database share)."""
    rows = []
    for eps, drop in ((0.1, 0.1), (0.2, 0.3), (0.3, 0.5)):
        params = json.dumps({"epsilon": eps, "database_share": 1.0})
        for scenario, value in (("c2c", 0.9), ("c2a", 0.9 - drop)):
            rows += cell_rows({"map": value}, hashing="dsdh", hashing_label="dsdh", defense="ppl",
                              defense_label=f"ppl[epsilon={eps}]", defense_params=params, scenario=scenario,
                              cell_key=f"ppl-{eps}-{scenario}")
    html = (render(write_store(tmp_path, rows), tmp_path / "site").parent / "curves.html").read_text()
    assert "mAP against the ppl defense&#39;s epsilon" in html or "mAP against the ppl defense's epsilon" in html
    assert "database_share" not in html.split("sweeps")[-1].split("</section>")[0]  # only the swept parameter
    assert re.search(r"c2a", html)


def test_curves_page_draws_the_training_losses_the_harness_recorded(tmp_path):
    """A learned attack's preparation and a protection's game record loss curves (``AttackContext.info``,
    ``TrainContext.info``); the harness caches them per cell and the curves page draws each trained thing once."""
    from benchmark.storage.cache import StageCache
    from leaderboard.plots import loss_curves

    prosgan = {"prototype_loss_per_epoch": [2.0, 1.5, 1.2],
               "generator_losses_per_epoch": [{"reconstruction": 0.3, "hamming": 0.9, "adversarial": 0.7},
                                              {"reconstruction": 0.2, "hamming": 0.5, "adversarial": 0.6}]}
    ppl = {"ppl_losses": [{"iteration": 10, "J_o": 1.0, "J_p": -0.5}, {"iteration": 20, "J_o": 0.8, "J_p": -0.9}],
           "train_seconds": 12.0, "flags": {}}
    assert set(loss_curves(prosgan)) == {"prototype_loss_per_epoch", "generator_losses_per_epoch: reconstruction",
                                         "generator_losses_per_epoch: hamming", "generator_losses_per_epoch: adversarial"}
    assert loss_curves(ppl)["ppl_losses: J_p"] == [(10.0, -0.5), (20.0, -0.9)]
    rows = cell_rows({"map": (0.3, 1000)}, attack="prosgan", attack_label="prosgan", cell_key="k1")
    rows += cell_rows({"map": (0.2, 1000)}, attack="prosgan", attack_label="prosgan", cell_key="k2", seed=1)
    cache = StageCache(tmp_path / "cache")
    for key in ("k1", "k2"):  # two cells reusing one prepared generator: drawn once
        cache.save("curves", key, {"version": 1, "records": {"attack prosgan prepared on dpsh/smallcnn/16": prosgan,
                                                             "protection ppl": ppl}})
    render(write_store(tmp_path, rows), tmp_path / "site", cache_dir=tmp_path / "cache")
    html = page(tmp_path / "site", "curves.html")
    assert html.count("training losses · attack prosgan prepared on dpsh/smallcnn/16") == 1
    assert "training losses · protection ppl" in html and "ppl_losses: J_p" in html
    assert "generator_losses_per_epoch: hamming" in html


def test_scatter_labels_of_nearby_points_do_not_overlap_and_stay_in_the_plot():
    from leaderboard.plots import boxes_overlap, label_box, place_labels

    plot = (50.0, 10.0, 450.0, 250.0)
    anchors = [(200.0, 100.0), (202.0, 101.0), (201.0, 99.0), (445.0, 120.0)]
    texts = ["pgd", "fgsm", "dhta[iterations=300]", "hag[iterations=500]"]
    places = place_labels(anchors, texts, plot)
    boxes = [label_box(*place, text) for place, text in zip(places, texts)]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not boxes_overlap(boxes[i], boxes[j]), (texts[i], texts[j], places)
    assert places[3][2] == "end" and boxes[3][2] <= plot[2]  # at the right edge the label goes to the left
    assert all(plot[0] <= box[0] and box[2] <= plot[2] for box in boxes)
