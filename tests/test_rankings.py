"""Rankings, flags, unbounded attacks, iteration plots, the ProS-GAN/DHTA timing, and stale runs."""
from __future__ import annotations

import hashlib
import json
import math
import re
import subprocess
import sys

import pytest
from result_rows import cell_rows, write_cells

from leaderboard import ranking, robustness, store
from leaderboard.render import render

REPO = store.REPO_ROOT
XSS = "<img src=x onerror=alert(1)>"


def victim(hashing: str, clean: float, attacks: dict, **extra) -> list[dict]:
    """A victim's clean cell and its attacked cells: attacks maps (attack, eps) -> (metric value, targeted)."""
    v = {"hashing": hashing, "hashing_label": hashing, **extra}
    rows = cell_rows({"map": clean, "tmap": 0.1}, **v)
    for (attack, eps), (value, targeted) in attacks.items():
        metric = "tmap" if targeted else "map"
        rows += cell_rows({metric: value, "map": 0.5 if targeted else value, "seconds_per_image": 0.01,
                           "prepare_seconds": 0.0}, attack=attack, attack_label=attack, epsilon=eps,
                          targeted=targeted, **v)
    return rows


E8, E16 = 8 / 255, 16 / 255


@pytest.fixture(scope="module")
def ranked_site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rank")
    rows = victim("dpsh", 0.80, {("pgd", E8): (0.30, False), ("fgsm", E8): (0.45, False), ("dhta", E8): (0.70, True),
                                 ("pgd", E16): (0.10, False)})
    rows += victim("csq", 0.75, {("pgd", E8): (0.50, False), ("dhta", E8): (0.40, True), ("pgd", E16): (0.20, False)},
                   flags="victim_collapsed: 3 distinct database codes")
    rows += victim("dsh", 0.70, {("fgsm", E8): (0.60, False)})  # never attacked by pgd: its worst is partial
    rows += victim("hashnet", 0.72, {("dhta", E8): (0.30, True)})  # no untargeted attack at all: missing
    # HAG snapshots of one run: 500 and 2000 iterations share the cell key
    hag = {"attack": "hag", "attack_label": XSS, "epsilon": E8, "attack_params": json.dumps({"iterations": 2000}),
           "cell_key": "hagrun"}
    rows += cell_rows({"map": 0.35, "seconds_per_image": 2.0}, **hag, iterations=500)
    rows += cell_rows({"map": 0.25, "seconds_per_image": 2.0}, **hag, iterations=2000)
    # ProS-GAN (unbounded) beside DHTA at 2000 iterations, on the dpsh victim
    rows += cell_rows({"tmap": 0.8, "seconds_per_image": 0.004, "prepare_seconds": 400.0}, attack="prosgan",
                      attack_label="prosgan", epsilon=math.nan, epsilon_space="unbounded", targeted=True,
                      batch_size=64)  # the harness records an unbounded attack's epsilon space as "unbounded"
    rows += cell_rows({"tmap": 0.75, "seconds_per_image": 4.0, "prepare_seconds": 0.0}, attack="dhta",
                      attack_label="dhta", epsilon=E8, targeted=True, iterations=2000, batch_size=32)
    results = write_cells(tmp, rows)
    return render(results, tmp / "site").parent


def test_victims_are_ranked_by_worst_case_map(ranked_site):
    html = (ranked_site / "rankings.html").read_text()
    table = html[html.index("Victims · fashion_mnist · 16 bits"):html.index("Attacks ·")]
    order = re.findall(r"<tr><td class=\"num\"[^>]*>(\d+|—)</td><td>(\w+)", table)
    assert order == [("1", "dsh"), ("2", "csq"), ("3", "dpsh"), ("—", "hashnet")]  # 0.60 > 0.50 > 0.25 (hag)
    dpsh = next(r for r in table.split("<tr>") if "<td>dpsh" in r)
    assert "0.2500" in dpsh and "0.8000" in dpsh  # worst mAP (HAG's last snapshot) and clean mAP
    assert "0.7500" in dpsh and "0.7000" not in dpsh  # worst t-MAP: the worse of the two dhta configurations
    dsh = next(r for r in table.split("<tr>") if "<td>dsh" in r)
    assert "1/3" in dsh and "not run on this victim" in dsh  # its worst is over one of the three attacks
    hashnet = next(r for r in table.split("<tr>") if "<td>hashnet" in r)
    assert "missing" in hashnet and "0.0000" not in hashnet  # missing is never zero
    csq = next(r for r in table.split("<tr>") if "<td>csq" in r)
    assert 'class="flag"' in csq and "victim_collapsed: 3 distinct database codes" in csq


def test_attacks_are_ranked_by_damage_at_equal_budget_with_a_pareto_front(ranked_site):
    """At 8/255 untargeted, over the one victim all three attacks ran on (dpsh): HAG drops mAP by 0.55 in 2 s,
    PGD by 0.5 in 0.01 s, FGSM by 0.35 in 0.01 s. Damage ranks HAG first (damage per second would put PGD
    first, 50 against 0.275); the Pareto front is PGD (fastest at its damage) and HAG (most damage); FGSM is
    dominated by PGD."""
    html = (ranked_site / "rankings.html").read_text()
    start = html.index("Attacks · fashion_mnist · 16 bits · ε 8/255 · mAP drop")
    table = html[start:html.index("</table>", start)]
    rows = table.split("<tr>")[2:]
    names = [re.search(r'<td class="key" title="([^"]*)"', r).group(1) for r in rows]
    assert names == ["&lt;img src=x onerror=alert(1)&gt;", "pgd", "fgsm"], names
    assert [re.findall(r">(0\.\d{4})<", r)[0] for r in rows] == ["0.5500", "0.5000", "0.3500"]
    assert ["on the front" in r for r in rows] == [True, True, False]
    assert "Over 1 common victim(s): dpsh smallcnn" in table
    svg = table[table.index("<svg"):table.index("</svg>")]
    assert svg.count('<g class="front">') == 2 and svg.count('<g class="dominated">') == 1
    assert "polyline" in svg and XSS not in svg  # the front's step line; labels escaped
    assert "damage per second" in table  # kept as a column, not as the order


def test_pareto_front_marks_only_undominated_attacks():
    rows = [{"damage": d, "amortised": t} for d, t in ((0.5, 1.0), (0.5, 2.0), (0.2, 0.1), (0.6, 5.0), (0.1, 0.5))]
    robustness.mark_pareto(rows)
    assert [r["pareto"] for r in rows] == [True, False, True, True, False]


def test_configurations_average_seeds_only():
    rows = cell_rows({"map": 0.2}, attack="pgd", attack_label="pgd", epsilon=E8, seed=0)
    rows += cell_rows({"map": 0.4}, attack="pgd", attack_label="pgd", epsilon=E8, seed=1)
    rows += cell_rows({"map": 0.9}, attack="pgd", attack_label="pgd", epsilon=E8, seed=2, target_rule="different")
    configs = ranking.configurations(store.cells(store.normalise(__import__("pandas").DataFrame(rows))))
    assert sorted(zip(configs["map"].round(4), configs["seeds"])) == [(0.3, 2), (0.9, 1)]


def test_unbounded_epsilon_and_flags_on_the_overview(ranked_site):
    html = (ranked_site / "index.html").read_text()
    prosgan = next(r for r in html.split("<tr") if ">prosgan<" in r)
    assert ">unbounded<" in prosgan and "0/255" not in prosgan
    csq = next(r for r in html.split("<tr") if ">csq<" in r and ">pgd<" in r)
    assert 'class="flag" title="victim_collapsed: 3 distinct database codes"' in csq
    flagged = html[html.index('id="flagged"'):]
    assert flagged.count("<li>") == 4 and "victim_collapsed" in flagged  # csq's clean, pgd x2, dhta cells
    snapshots = [r for r in html.split("<tr") if "&lt;img" in r]
    assert len(snapshots) == 2  # one overview row per iteration count


def test_curves_plot_map_against_iterations(ranked_site):
    html = (ranked_site / "curves.html").read_text()
    assert "mAP against iterations" in html
    assert XSS not in html and "&lt;img" in html.replace("&amp;lt;", "&lt;")


def test_timing_puts_prosgan_beside_dhta_at_2000_iterations(ranked_site):
    html = (ranked_site / "timing.html").read_text()
    section = html[html.index("ProS-GAN beside DHTA"):html.index("Every timed attack")]
    row = next(r for r in section.split("<tr>") if ">prosgan<" in r)
    assert ">4 s<" in row and ">0.004 s<" in row and "×1,000" in row  # factor per query
    # 400 s of preparation over the 1,000 queries: 0.404 s per query, a factor of 9.9
    assert ">400 s<" in row and ">1000<" in row and "0.404 s" in row and "×9.9" in row
    assert ">32<" in row and ">64<" in row and "<h3>NVIDIA H100 80GB HBM3</h3>" in section  # batch sizes, device


def test_stale_runs_are_listed_hidden_and_removable(tmp_path):
    code = tmp_path / "methods" / "attacks" / "pgd.py"
    code.parent.mkdir(parents=True)
    code.write_text("v1\n")
    v1 = json.dumps({"methods/attacks/pgd.py": hashlib.sha256(b"v1\n").hexdigest()[:16]})
    gone = json.dumps({"methods/attacks/gone.py": "0" * 16})
    rows = cell_rows({"map": 0.31}, attack="pgd", attack_label="pgd", epsilon=E8, sources=v1, seed=0)
    rows += cell_rows({"map": 0.32}, attack="pgd", attack_label="pgd", epsilon=E8, sources=gone, seed=1)
    rows += cell_rows({"map": 0.33}, attack="pgd", attack_label="pgd", epsilon=E8, seed=2)  # no sources recorded
    results = write_cells(tmp_path, rows)
    df, _ = store.read_results(results)
    assert list(store.stale_cells(df, tmp_path)["reasons"]) == ["methods/attacks/gone.py is gone"]
    code.write_text("v2\n")
    stale = store.stale_cells(df, tmp_path)
    assert sorted(stale["reasons"]) == ["methods/attacks/gone.py is gone", "methods/attacks/pgd.py changed"]
    index = (render(results, tmp_path / "site", code_root=tmp_path).parent / "index.html").read_text()
    assert "0.3300" in index and "0.3100" not in index and "2 stale cell(s) not shown" in index
    index = (render(results, tmp_path / "site2", code_root=None).parent / "index.html").read_text()
    assert "0.3100" in index  # a published run is shown as published
    done = subprocess.run([sys.executable, "-m", "leaderboard.store", "stale", "--results", str(results),
                           "--root", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "2 stale run(s) of 3" in done.stdout and "pgd.py changed" in done.stdout
    assert len(list(results.glob("*.parquet"))) == 3  # listing removes nothing
    removed, kept = store.remove_stale(results, tmp_path)
    assert len(removed) == 2 and kept == []  # tmp_path is no git checkout: nothing is tracked
    assert sorted(p.name for p in results.glob("*.parquet")) == [f"{rows[-1]['cell_key']}.parquet"]


def test_flag_parsing():
    assert store.parse_flags("victim_collapsed: 3 distinct database codes; attack_changed_nothing: no query code "
                             "changed") == [("victim_collapsed", "3 distinct database codes"),
                                            ("attack_changed_nothing", "no query code changed")]
    assert store.parse_flags("") == [] and store.parse_flags("odd") == [("odd", "")]
    assert store.fmt_epsilon(math.nan) == "unbounded" and store.fmt_epsilon(0.0) == "0"


def test_overview_uses_the_datasets_own_cut_off():
    import pandas as pd

    rows = cell_rows({"map": [(0.5, 0), (0.7, 1000), (0.6, 5000)]}, dataset_params=json.dumps({"topk": 5000}))
    rows += cell_rows({"map": [(0.5, 0), (0.7, 1000)]}, seed=1, dataset_params=json.dumps({"topk": 0}))
    rows += cell_rows({"map": [(0.5, 0), (0.7, 1000)]}, seed=2)  # no dataset topk recorded: the smallest k
    cells = store.cells(store.normalise(pd.DataFrame(rows)))
    assert list(zip(cells["map"], cells["map_topk"])) == [(0.6, 5000), (0.5, 0), (0.7, 1000)]
    mixed = pd.DataFrame(cell_rows({"tmap": 0.4}, attack="dhta", cell_key="old") +
                         cell_rows({"tmap": 0.4}, attack="dhta", targeted=False, cell_key="new"))
    mixed.loc[mixed["cell_key"] == "old", "targeted"] = None  # a file written before the column existed
    assert store.normalise(mixed).set_index("cell_key")["targeted"].to_dict() == {"old": True, "new": False}
