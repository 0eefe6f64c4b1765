"""The rendered leaderboard in a real browser: headless Chromium (Debian's chromium; tools/get_chromium.sh)
opens every page, finds no console errors, sorts and filters the overview table with real mouse clicks and
typing, and saves a screenshot of each page (the folder is printed; $HASHBENCH_SCREENSHOTS chooses it).

Without Chromium the tests are skipped, except under CI (CI=true), where they fail: ``make test`` installs it.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from chromium import Chromium, find_chromium
from result_rows import demo_rows, write_cells

from benchmark.scoring.gallery import gallery_queries, gallery_record, save_record
from leaderboard.render import PAGES, render

BINARY = find_chromium()
if BINARY is None:
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed; make test installs it with tools/get_chromium.sh",
                    pytrace=False)
    pytestmark = pytest.mark.skip(reason="chromium not installed: run tools/get_chromium.sh (make test does)")


def gallery_from(splits, tmp: Path, cell_key: str, targeted: bool) -> None:
    """A gallery record from real FashionMNIST images (stand-in ranking: same class, then the target class)."""
    query = gallery_queries(len(splits.query), seed=0)
    clean = splits.query.load(query)
    noise = torch.sign(torch.randn(clean.shape, generator=torch.Generator().manual_seed(0)))
    adversarial = (clean + 8 / 255 * noise).clamp(0, 1)
    classes = splits.database.labels.argmax(1)
    query_classes = splits.query.labels[query].argmax(1)
    targets = (query_classes + 3) % 10
    clean_top = torch.stack([torch.nonzero(classes == c)[:6, 0] for c in query_classes])
    adversarial_top = torch.stack([torch.cat([torch.nonzero(classes == t)[:4, 0], torch.nonzero(classes == c)[:2, 0]])
                                   for t, c in zip(targets, query_classes)])
    target_labels = torch.nn.functional.one_hot(targets, 10).float() if targeted else None
    record = gallery_record(clean, adversarial, splits.query.labels[query], clean_top, adversarial_top,
                            splits.database, splits.database.labels, query_index=query, target_labels=target_labels,
                            epsilon=8 / 255)
    save_record(tmp / "cache" / "gallery" / f"{cell_key}.pt", record)


@pytest.fixture(scope="module")
def site(tmp_path_factory, fashion_splits) -> Path:
    tmp = tmp_path_factory.mktemp("browser")
    rows = demo_rows()
    results = write_cells(tmp, rows)
    for attack, targeted in (("dhta", True), ("pgd", False)):
        key = next(r["cell_key"] for r in rows if r["attack_label"] == attack and r["bits"] == 32
                   and r["hashing"] == "dpsh" and r["epsilon"] == 8 / 255 and r["surrogate"] == "self")
        gallery_from(fashion_splits, tmp, key, targeted)
    return render(results, tmp / "site", cache_dir=tmp / "cache").parent


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with Chromium(BINARY, tmp_path_factory.mktemp("chromium") / "profile") as chromium:
        yield chromium


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("HASHBENCH_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_console_errors_are_detected(browser, tmp_path):
    """The check below can fail: a page with an error, a console.error and a missing image reports all three."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><img src="missing.png"><script>console.error("boom");'
                   'null.property;</script></body></html>')
    errors = browser.errors(browser.open(bad.as_uri()))
    assert any("boom" in e for e in errors), errors
    assert any(e.startswith("uncaught: TypeError") for e in errors), errors
    assert any("missing.png" in e or "ERR_FILE_NOT_FOUND" in e for e in errors), errors


@pytest.mark.parametrize("name", [p for p, _ in PAGES])
def test_every_page_opens_without_console_errors(name, site, browser, screenshots, capsys):
    session = browser.open((site / name).as_uri())
    assert browser.evaluate(session, "document.querySelector('h1').textContent").startswith("hashbench leaderboard")
    assert browser.evaluate(session, "document.querySelectorAll('script[src], link[rel=stylesheet]').length") == 0
    broken = browser.evaluate(session, "[...document.images].filter(i => !i.complete || !i.naturalWidth)"
                                       ".map(i => i.src)")
    assert broken == []
    path = browser.screenshot(session, screenshots / name.replace(".html", ".png"))
    with capsys.disabled():
        print(f"\n  screenshot: {path}")
    assert path.stat().st_size > 10_000
    assert browser.errors(session) == []


def test_overview_table_sorts_and_filters(site, browser):
    session = browser.open((site / "index.html").as_uri())
    column = browser.evaluate(session, "[...document.querySelectorAll('#cells th')].findIndex(h => "
                                       "h.textContent === 'mAP')")
    assert column > 0
    values = (f"[...document.querySelectorAll('#cells tbody tr')].filter(r => !r.hidden)"
              f".map(r => r.cells[{column}].getAttribute('data-sort') || '')")
    before = browser.evaluate(session, values)
    browser.click(session, f"#cells th:nth-child({column + 1})")
    ascending = browser.evaluate(session, values)
    numbers = [float(v) for v in ascending if v]
    assert numbers == sorted(numbers) and numbers != [float(v) for v in before if v]
    assert ascending == [v for v in ascending if v] + [v for v in ascending if not v]  # blanks last
    assert browser.evaluate(session, f"document.querySelectorAll('#cells th')[{column}]"
                                     ".getAttribute('aria-sort')") == "ascending"
    browser.click(session, f"#cells th:nth-child({column + 1})")
    descending = [float(v) for v in browser.evaluate(session, values) if v]
    assert descending == sorted(numbers, reverse=True)

    total = browser.evaluate(session, "document.querySelectorAll('#cells tbody tr').length")
    browser.click(session, "input[data-filter=cells]")
    browser.type_text(session, "dhta 32")
    shown = browser.evaluate(session, "[...document.querySelectorAll('#cells tbody tr')].filter(r => !r.hidden)"
                                      ".map(r => r.textContent.toLowerCase())")
    assert 0 < len(shown) < total
    assert all("dhta" in row and "32" in row for row in shown)
    assert browser.evaluate(session, "document.querySelector('[data-count=cells]').textContent") == \
        f"{len(shown)} of {total} rows"
    browser.evaluate(session, "document.querySelector('input[data-filter=cells]').select()")
    browser.type_text(session, "no such cell anywhere")
    assert browser.evaluate(session, "[...document.querySelectorAll('#cells tbody tr')].filter(r => !r.hidden)"
                                     ".length") == 0
    assert browser.errors(session) == []


def test_robustness_and_attack_scatter_are_drawn(site, browser):
    session = browser.open((site / "robustness.html").as_uri())
    assert browser.evaluate(session, "document.querySelectorAll('table.robustness tbody tr').length") >= 2
    assert browser.evaluate(session, "document.querySelectorAll('svg.chart polyline').length") >= 2
    suite = browser.evaluate(session, "document.querySelector('p.suite strong').textContent")
    assert "pgd" in suite
    assert browser.evaluate(session, "document.querySelector('.runs').textContent").startswith("Runs shown: ")
    session = browser.open((site / "rankings.html").as_uri())
    assert browser.evaluate(session, "document.querySelectorAll('svg.scatter g.front').length") >= 1
    ranked = browser.evaluate(session, "[...document.querySelector('table.attacks-budget').rows].slice(1)"
                                       ".map(r => parseFloat(r.cells[2].textContent))")
    assert ranked == sorted(ranked, reverse=True)  # by damage, not damage per second
    assert browser.errors(session) == []


def test_timing_key_column_is_truncated_with_its_label_in_a_title(site, browser):
    session = browser.open((site / "timing.html").as_uri())
    keys = browser.evaluate(session, "[...document.querySelectorAll('td.key')].map(td => [td.title, "
                                     "getComputedStyle(td).textOverflow, td.textContent])")
    assert keys and all(title and overflow == "ellipsis" for title, overflow, _ in keys), keys
    fits = browser.evaluate(session, "[...document.querySelectorAll('.scroll')].slice(0, 1)"
                                     ".every(s => s.scrollWidth <= s.clientWidth + 1)")
    assert fits  # the ProS-GAN / DHTA table needs no sideways scrolling at 1400 px


def test_download_links_resolve_to_files(site, browser):
    from urllib.parse import unquote, urlparse

    hrefs = set()
    for name, _ in PAGES:
        session = browser.open((site / name).as_uri())
        hrefs |= set(browser.evaluate(session, "[...document.querySelectorAll('a[download]')].map(a => a.href)"))
    tables = [h for h in hrefs if "/tables/" in h]
    assert len(tables) >= 5 and any(h.endswith("results.csv") for h in hrefs)
    assert any("/tables/paper-" in h for h in tables) and any("/tables/robustness-" in h for h in tables)
    for href in hrefs:
        path = Path(unquote(urlparse(href).path))
        assert path.is_file() and path.stat().st_size > 0, href
