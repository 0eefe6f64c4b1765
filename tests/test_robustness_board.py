"""The robustness page (curves over one common suite, the per-query worst case from the cache, the area
ranking, defenses as gains), the run environment on every page, per-table downloads, the timing comparison's
unpaired victims, and staleness judged per store folder."""
from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from result_rows import cell_rows, write_cells

from benchmark.storage.per_query import PER_QUERY_FILE, export_per_query, read_per_query
from leaderboard import robustness
from leaderboard.render import PAGES, render

E = [8 / 255, 16 / 255, 32 / 255]
QUERIES = 4


def save_per_query(cache, key: str, ap) -> None:
    """A ``cells`` record as benchmark/cell.py saves it (only the per-query AP is read)."""
    path = cache / "cells" / f"{key}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"stage": "cells", "key": key,
                "value": {"average_precision": {"ap": torch.tensor(ap, dtype=torch.float64)}}}, path)


def victim(rows: list, cache, hashing: str, defense: str, clean: float, per_attack: dict) -> None:
    """A victim's clean cell and, per (attack, ε index), its per-query APs (mAP = their mean)."""
    v = {"hashing": hashing, "hashing_label": hashing, "defense": defense, "defense_label": defense,
         "n_query": QUERIES, "git_commit": "feedc0ffee1234", "device": "cpu (x86_64, 1 threads)",
         "created_at": "2026-12-03T10:00:00"}
    rows += cell_rows({"map": clean}, **v, cell_key=f"{hashing}-{defense}-clean")
    save_per_query(cache, f"{hashing}-{defense}-clean", [clean] * QUERIES)
    for (attack, i), ap in per_attack.items():
        key = f"{hashing}-{defense}-{attack}-{i}"
        rows += cell_rows({"map": float(np.mean(ap)), "seconds_per_image": 0.1 if attack == "pgd" else 1.0,
                           "prepare_seconds": 0.0}, attack=attack, attack_label=attack, epsilon=E[i],
                          cell_key=key, **v)
        save_per_query(cache, key, ap)


@pytest.fixture(scope="module")
def robust(tmp_path_factory):
    """dpsh: PGD and HAG hurt different queries (its per-query worst case far below its worst of the means);
    csq: both hurt the same queries (per-query worst = worst of the means); dpsh + CgAT in between. Ranked by
    the per-query area: csq, dpsh + CgAT, dpsh; by the worst of the means dpsh + CgAT would lead, by clean
    mAP dpsh."""
    tmp = tmp_path_factory.mktemp("robust")
    cache = tmp / "cache"
    rows: list = []
    victim(rows, cache, "dpsh", "none", 0.9, {
        ("pgd", 0): [0.2, 0.2, 0.9, 0.9], ("hag", 0): [0.9, 0.9, 0.2, 0.2],
        ("pgd", 1): [0.1, 0.1, 0.8, 0.8], ("hag", 1): [0.8, 0.8, 0.1, 0.1],
        ("pgd", 2): [0.0, 0.0, 0.6, 0.6], ("hag", 2): [0.6, 0.6, 0.0, 0.0]})
    victim(rows, cache, "csq", "none", 0.7, {
        ("pgd", 0): [0.5, 0.5, 0.6, 0.6], ("hag", 0): [0.6, 0.6, 0.6, 0.6],
        ("pgd", 1): [0.4, 0.4, 0.5, 0.5], ("hag", 1): [0.5, 0.5, 0.5, 0.5],
        ("pgd", 2): [0.3, 0.3, 0.4, 0.4], ("hag", 2): [0.4, 0.4, 0.4, 0.4]})
    victim(rows, cache, "dpsh", "cgat", 0.85, {
        ("pgd", 0): [0.4, 0.4, 0.9, 0.9], ("hag", 0): [0.9, 0.9, 0.4, 0.4],
        ("pgd", 1): [0.3, 0.3, 0.8, 0.8], ("hag", 1): [0.8, 0.8, 0.3, 0.3],
        ("pgd", 2): [0.2, 0.2, 0.6, 0.6], ("hag", 2): [0.6, 0.6, 0.2, 0.2]})
    results = write_cells(tmp, rows)
    with_cache = render(results, tmp / "site", cache_dir=cache).parent
    without = render(results, tmp / "site-nocache", cache_dir=tmp / "empty-cache").parent
    return with_cache, without


def table_rows(html: str, css_class: str) -> list[str]:
    table = html[html.index(f'class="sortable {css_class}'):]
    return table[:table.index("</table>")].split("<tr>")[2:]


def test_per_query_worst_case_ranks_victims_by_its_area(robust):
    html = (robust[0] / "robustness.html").read_text()
    assert "Common attack suite: <strong>hag + pgd</strong>" in html
    assert "a choice of measurement range" in html and "8/255 – 32/255" in html
    rows = table_rows(html, "ranking robustness")
    order = [(re.findall(r"<td>([^<]*)</td>", r)[0], re.findall(r"<td>([^<]*)</td>", r)[2]) for r in rows]
    # per-query worst: csq 0.55, 0.45, 0.35 (area 0.433); dpsh+cgat 0.4, 0.3, 0.2 (0.283); dpsh 0.2, 0.1, 0.0
    # (0.083). The worst of the means gives dpsh+cgat 0.65, 0.55, 0.4 (0.517), ahead of csq.
    assert order == [("csq", "none"), ("dpsh", "cgat"), ("dpsh", "none")], order
    dpsh = rows[2]
    assert ">0.0833<" in dpsh  # area: trapezoid over 8..32/255 divided by the range, (0.15 * 8 + 0.05 * 16) / 24
    assert re.search(r">0\.5500 · (hag|pgd)</small>", dpsh)  # worst of the means at 8/255
    assert '"pq">0.2000<' in dpsh and '"pq">0.0000<' in dpsh  # per-query worst at 8/255 and 32/255
    assert "no per-query record" not in html


def test_trapezoid_area_is_normalised_by_the_epsilon_range():
    assert robustness.trapezoid_mean([8, 16, 32], [0.2, 0.1, 0.0]) == pytest.approx((0.15 * 8 + 0.05 * 16) / 24)
    assert robustness.trapezoid_mean([8], [0.3]) == 0.3
    assert np.isnan(robustness.trapezoid_mean([8, 16], [0.3, np.nan]))


def test_without_per_query_records_the_page_says_so_and_ranks_by_the_worst_of_the_means(robust):
    html = (robust[1] / "robustness.html").read_text()
    assert "no per-query record" in html and "pass <code>--cache DIR</code>" in html
    rows = table_rows(html, "ranking robustness")
    first = re.findall(r"<td>([^<]*)</td>", rows[0])
    assert (first[0], first[2]) == ("dpsh", "cgat")  # worst of the means: 0.65, 0.55, 0.4 leads
    assert "(worst of means)" in rows[0]


def test_defenses_are_gains_over_the_undefended_victim_with_the_clean_cost(robust):
    html = (robust[0] / "robustness.html").read_text()
    rows = table_rows(html, "defenses")
    assert len(rows) == 1 and ">cgat<" in rows[0]
    assert re.findall(r">([+-]\d\.\d{4})<", rows[0]) == ["+0.0500", "+0.2000", "+0.2000", "+0.2000"]


def test_a_victim_without_the_suites_first_attack_is_left_out_not_ranked_over_another_suite(tmp_path):
    rows: list = []
    victim(rows, tmp_path / "cache", "dpsh", "none", 0.9, {("pgd", 0): [0.2] * 4, ("hag", 0): [0.3] * 4})
    victim(rows, tmp_path / "cache", "csq", "none", 0.8, {("pgd", 0): [0.4] * 4})
    victim(rows, tmp_path / "cache", "dsh", "none", 0.8, {("hag", 0): [0.1] * 4})
    html = (render(write_cells(tmp_path, rows), tmp_path / "site", cache_dir=tmp_path / "cache").parent
            / "robustness.html").read_text()
    assert "Common attack suite: <strong>hag</strong>" in html or "Common attack suite: <strong>pgd</strong>" in html
    suite = re.search(r"Common attack suite: <strong>(\w+)</strong>", html).group(1)
    left = "csq" if suite == "hag" else "dsh"
    assert f"Not compared (the suite's first attack was not run on them): {left} smallcnn" in html


def test_every_page_names_device_commit_and_date_of_its_runs(robust):
    for name, _ in PAGES:
        html = (robust[0] / name).read_text()
        assert "Runs shown: " in html and "cpu (x86_64, 1 threads) · commit feedc0ffee · 2026-12-03" in html, name


def test_table_downloads_are_written_and_linked(robust):
    site = robust[0]
    links = set()
    for name, _ in PAGES:
        links |= set(re.findall(r'href="(tables/[^"]+)"', (site / name).read_text()))
    files = {f"tables/{p.name}" for p in (site / "tables").glob("*.csv")}
    twins = {f"tables/{p.name}" for p in (site / "tables").glob("*.json")}
    assert twins == {f[:-4] + ".json" for f in files}  # every CSV has its JSON twin, linked beside it
    assert links == files | twins and any(f.startswith("tables/paper-") for f in files)
    for kind in ("robustness-", "defenses-", "attacks-", "victims-"):
        assert any(f.startswith(f"tables/{kind}") for f in files), kind
    robust_csv = pd.read_csv(site / next(f for f in files if f.startswith("tables/robustness-")))
    assert list(robust_csv["hashing_label"]) == ["csq", "dpsh", "dpsh"]
    assert robust_csv.loc[0, "per_query_worst 8/255"] == pytest.approx(0.55)
    paper = pd.read_csv(site / "tables" / "paper-cgat-1.csv")
    assert {"paper_value", "measured", "stand_in", "shortened", "differs"} <= set(paper.columns)


def test_timing_names_the_victims_without_both_attacks(tmp_path):
    rows = cell_rows({"tmap": 0.8, "seconds_per_image": 0.004, "prepare_seconds": 400.0}, attack="prosgan",
                     attack_label="prosgan[" + "x" * 90 + "]", epsilon=float("nan"), targeted=True)
    rows += cell_rows({"tmap": 0.7, "seconds_per_image": 0.003, "prepare_seconds": 300.0}, attack="prosgan",
                      attack_label="prosgan", epsilon=float("nan"), targeted=True, hashing="csq", hashing_label="csq")
    rows += cell_rows({"tmap": 0.75, "seconds_per_image": 4.0}, attack="dhta", attack_label="dhta", epsilon=8 / 255,
                      targeted=True, iterations=2000)
    html = (render(write_cells(tmp_path, rows), tmp_path / "site").parent / "timing.html").read_text()
    section = html[html.index("ProS-GAN beside DHTA"):html.index("Every timed attack")]
    assert section.count('<td class="key" title="prosgan[') == 1  # the long label in a title, not the cell
    assert ">prosgan</td>" in section and "dhta at 2000 iterations: missing" not in section
    assert "Not compared" in section and "csq smallcnn 16 bits on fashion_mnist" in section
    assert "no dhta at 2000 iterations" in section


def test_staleness_is_judged_per_store_folder(tmp_path):
    """A published run in a sub-folder is a store of its own: its stale cells are not counted in the parent's
    banner, only when that folder is rendered."""
    outdated = json.dumps({"methods/attacks/pgd.py": "0123456789abcdef"})
    results = write_cells(tmp_path, cell_rows({"map": 0.5}))
    published = write_cells(results / "published", cell_rows({"map": 0.4}, sources=outdated, attack="pgd",
                                                             attack_label="pgd", epsilon=8 / 255))
    top = (render(results, tmp_path / "site").parent / "index.html").read_text()
    assert "stale cell(s)" not in top and "1 cell(s) from" in top
    sub = (render(published, tmp_path / "site-pub").parent / "index.html").read_text()
    assert "1 stale cell(s) not shown" in sub


def test_per_query_aps_copied_into_the_store_rank_without_the_cache(tmp_path):
    cache = tmp_path / "cache"
    rows: list = []
    victim(rows, cache, "dpsh", "none", 0.9, {("pgd", 0): [0.2, 0.2, 0.9, 0.9], ("hag", 0): [0.9, 0.9, 0.2, 0.2]})
    results = write_cells(tmp_path, rows)
    save_per_query(cache, "not-a-stored-cell", [0.5] * QUERIES)
    assert export_per_query(results, cache) == 3  # clean, pgd, hag; the record of no stored cell is not copied
    assert set(read_per_query(results)) == {"dpsh-none-clean", "dpsh-none-pgd-0", "dpsh-none-hag-0"}
    assert export_per_query(results, cache) == 0  # nothing new: the file is left as it is
    assert len(pd.read_parquet(results)) == len(pd.DataFrame(rows))  # the file is not read as a cell
    html = (render(results, tmp_path / "site", cache_dir=tmp_path / "no-cache").parent / "robustness.html").read_text()
    assert '"pq">0.2000<' in html and "no per-query record" not in html  # per-query worst: min(0.2, 0.9) etc.
    (results / "dpsh-none-hag-0.parquet").unlink()  # a pruned cell leaves the file at the next export
    export_per_query(results, cache)
    assert set(read_per_query(results)) == {"dpsh-none-clean", "dpsh-none-pgd-0"}
    (results / PER_QUERY_FILE).write_bytes(b"garbage")
    assert read_per_query(results) == {}  # unreadable: the curves fall back to the cache, nothing fails
