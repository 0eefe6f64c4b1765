"""Render the static leaderboard site from the result store and the papers' reference numbers.

    python -m leaderboard.render [--results results] [--out leaderboard/site] [--strict]

or ``from leaderboard.render import render; render("results")``. Pages: index.html (every cell, sortable,
with the runs' environment and the downloads results.csv / results.parquet), timing.html, curves.html and
papers.html. CSS and JS are inlined, so each page works from file:// with no network. Every string from the
data or a plugin goes through jinja2's autoescape (SVG text through ``html.escape``).

A result file that cannot be read is skipped and named in a banner on every page (and on stderr by the
command line); ``strict=True`` / ``--strict`` raises ``ResultStoreError`` naming the file instead.
"""
from __future__ import annotations

import argparse
import datetime
import sys
import warnings
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd

from leaderboard import papers, plots, store
from leaderboard.store import fmt_epsilon, fmt_metric, fmt_seconds, fmt_topk, isnum

HERE = Path(__file__).resolve().parent
REFERENCE_DIR = HERE / "reference"
PAGES = [("index.html", "Overview"), ("timing.html", "Timing"), ("curves.html", "Curves"),
         ("papers.html", "Papers")]
METRIC_HEADERS = {"map": "mAP", "tmap": "t-MAP", "map_tie_aware": "mAP (tie-aware)",
                  "perceptibility": "perceptibility", "linf": "L∞", "seconds_per_image": "s / image"}
IDENTITY_HEADERS = {"dataset_label": "dataset", "hashing_label": "hashing", "backbone": "backbone",
                    "bits": "bits", "defense_label": "defense", "attack_label": "attack", "epsilon": "ε",
                    "surrogate": "surrogate", "scenario": "scenario", "seed": "seed"}


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.globals.update(css=(HERE / "static" / "style.css").read_text(),
                       js=(HERE / "static" / "table.js").read_text(), pages=PAGES)
    return env


def _cell(text, sort=None, title="", sub="", num=False) -> dict:
    return {"text": text, "sort": "" if sort is None else sort, "title": title, "sub": sub, "num": num}


def overview_rows(cells: pd.DataFrame) -> tuple[list[dict], list[dict]]:
    """Header and row dicts of the overview table (text shown, raw value to sort by, tooltip)."""
    headers = [{"name": h, "num": k in ("bits", "epsilon", "seed")} for k, h in IDENTITY_HEADERS.items()]
    headers += [{"name": h, "num": True} for h in METRIC_HEADERS.values()]
    headers += [{"name": "status", "num": False}, {"name": "error / reason", "num": False}]
    rows = []
    for c in cells.to_dict("records"):
        out = []
        for key in IDENTITY_HEADERS:
            if key == "epsilon":
                out.append(_cell(fmt_epsilon(c["epsilon"]), f"{c['epsilon']:.8g}", f"{c['epsilon']:.6g}", num=True))
            else:
                out.append(_cell(str(c[key]), num=key in ("bits", "seed")))
        for m in METRIC_HEADERS:
            v = c[m]
            sub = fmt_topk(c[f"{m}_topk"]) if m in ("map", "tmap", "map_tie_aware") and isnum(v) else ""
            out.append(_cell(fmt_metric(m, v), f"{v:.8g}" if isnum(v) else "", f"{v:.6g}" if isnum(v) else "",
                             sub, num=True))
        out.append(_cell(c["status"]))
        out.append(_cell(c["error"], title=c["error"]))
        rows.append({"cells": out, "status": c["status"]})
    return headers, rows


def timing_groups(cells: pd.DataFrame) -> list[dict]:
    """Per device: attack x dataset x backbone x batch size, median seconds per image and preparation."""
    ok = cells[(cells["status"] == "ok") & (cells["attack"] != "none") & (cells["seconds_per_image"] > 0)]
    groups = []
    for device, d in ok.groupby("device", sort=True):
        rows = []
        keys = ["attack_label", "dataset_label", "backbone", "batch_size"]
        for key, g in d.groupby(keys, sort=True):
            its = sorted({int(i) for i in g["iterations"] if isnum(i)})
            sec = g["seconds_per_image"]
            rows.append({"key": dict(zip(keys, key)), "iterations": ", ".join(map(str, its)), "cells": len(g),
                         "median": float(sec.median()), "lo": float(sec.min()), "hi": float(sec.max()),
                         "prepare": float(g["prepare_seconds"].median()) if g["prepare_seconds"].notna().any()
                         else np.nan})
        fastest, slowest = min(r["median"] for r in rows), max(r["median"] for r in rows)
        span = np.log10(slowest / fastest) if slowest > fastest else 1.0
        for r in rows:
            r["bar"] = 4 + 96 * np.log10(r["median"] / fastest) / span
            r["ratio"] = r["median"] / fastest
            r.update(median_text=fmt_seconds(r["median"]), prepare_text=fmt_seconds(r["prepare"]),
                     ratio_text=f"×{r['ratio']:.0f}" if r["ratio"] >= 100 else f"×{r['ratio']:.3g}",
                     range_text=f"{fmt_seconds(r['lo'])} – {fmt_seconds(r['hi'])}" if r["cells"] > 1 else "")
        groups.append({"device": device or "(unknown device)", "rows": sorted(rows, key=lambda r: r["median"])})
    return groups


def _line_label(c: dict, several_seeds: bool) -> str:
    label = c["attack_label"] if c["attack"] == "none" else f"{c['attack_label']} ε={fmt_epsilon(c['epsilon'])}"
    if c["scenario"] != "a2c":
        label += f" {c['scenario']}"
    if c["surrogate"] != "self":
        label += f" from {c['surrogate']}"
    return label + (f" seed {c['seed']}" if several_seeds else "")


def _chart(title, series, xlabel, ylabel, **kw) -> dict:
    for i, s in enumerate(series):
        s.update(plots.style(i))
    return {"title": title, "svg": plots.line_chart(series, xlabel, ylabel, **kw),
            "legend": [{"label": s["label"], "color": s["color"], "dashed": bool(s["dash"]) or "hline" in s}
                       for s in series]}


def _curve_points(df: pd.DataFrame) -> dict:
    """{(cell, metric): [(x, y), ...]} of the precision@N (x = N) and precision-recall (x = recall) rows."""
    rows = df[df["metric"].isin(store.CURVE_METRICS) & (df["status"] == "ok") & df["value"].notna()]
    x = np.where(rows["metric"] == "precision_at", rows["topk"].astype(float), rows["recall"])
    points: dict = {}
    for cell, metric, xv, yv in zip(rows["cell"], rows["metric"], x, rows["value"]):
        points.setdefault((cell, metric), []).append((float(xv), float(yv)))
    return points


def _epsilon_series(recs: list[dict], metric: str) -> list[dict]:
    """One line per (attack, surrogate, scenario) run at 2+ epsilons (mean over seeds), plus the clean level."""
    by: dict = {}
    for c in recs:
        if c["attack"] != "none" and isnum(c[metric]):
            key = (c["attack_label"], c["surrogate"], c["scenario"])
            by.setdefault(key, {}).setdefault(c["epsilon"], []).append(c[metric])
    series = [{"label": a + (f" {sc}" if sc != "a2c" else "") + (f" from {su}" if su != "self" else ""),
               "points": [(e * 255, float(np.mean(v))) for e, v in eps.items()]}
              for (a, su, sc), eps in sorted(by.items()) if len(eps) >= 2]
    clean = [c[metric] for c in recs if c["attack"] == "none" and isnum(c[metric])]
    if series and clean:
        series.append({"label": f"clean queries ({np.mean(clean):.4f})", "hline": float(np.mean(clean))})
    return series


def curve_sections(df: pd.DataFrame, cells: pd.DataFrame) -> list[dict]:
    """Per victim: precision@N, precision-recall, and mAP / t-MAP against epsilon (one line per attack)."""
    victims: dict = {}
    for c in cells[cells["status"] == "ok"].to_dict("records"):
        key = (c["dataset_label"], c["hashing_label"], c["backbone"], c["bits"], c["defense_label"])
        victims.setdefault(key, []).append(c)
    points = _curve_points(df) if len(df) else {}
    sections = []
    for victim, recs in sorted(victims.items()):
        several = len({c["seed"] for c in recs}) > 1
        charts = []
        for metric, xlabel, ylabel in (("precision_at", "N (top retrieved)", "precision@N"),
                                       ("pr_precision", "recall", "precision")):
            series = sorted(({"label": _line_label(c, several), "points": points[(c["cell"], metric)]}
                             for c in recs if (c["cell"], metric) in points), key=lambda s: s["label"])
            if series:
                charts.append(_chart(ylabel + (" against N" if metric == "precision_at" else " against recall"),
                                     series, xlabel, ylabel, xlog=None if metric == "precision_at" else False))
        for metric in ("map", "tmap"):
            series = _epsilon_series(recs, metric)
            if series:
                charts.append(_chart(f"{METRIC_HEADERS[metric]} against ε", series, "ε (×1/255)",
                                     METRIC_HEADERS[metric], xlog=False, xmin=0.0))
        if charts:
            sections.append({"title": f"{victim[0]} · {victim[1]} · {victim[2]} · {victim[3]} bits · "
                                      f"defense {victim[4]}", "charts": charts})
    return sections


def _write_downloads(df: pd.DataFrame, out: Path) -> bool:
    for name in ("results.csv", "results.parquet"):
        (out / name).unlink(missing_ok=True)
    if not len(df):
        return False
    table = df.drop(columns=["cell"])
    table.to_csv(out / "results.csv", index=False)
    table.to_parquet(out / "results.parquet", index=False)
    return True


def render(results_dir: str | Path = "results", out_dir: str | Path = "leaderboard/site",
           reference_dir: str | Path = REFERENCE_DIR, strict: bool = False) -> Path:
    """Write the site into ``out_dir`` and return the path of its index.html."""
    df, problems = store.read_results(results_dir, strict=strict)
    for problem in problems:
        warnings.warn(problem, stacklevel=2)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cells = store.cells(df)
    env = _environment()
    common = {"warnings": problems, "n_cells": len(cells), "results_dir": str(results_dir),
              "generated": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
              "counts": cells["status"].value_counts().to_dict() if len(cells) else {}}
    headers, rows = overview_rows(cells)
    ref = papers.load_reference(reference_dir)
    tables = papers.paper_tables(ref, papers.measured_index(df, cells))
    pages = {
        "index.html": {"headers": headers, "rows": rows, "downloads": _write_downloads(df, out),
                       "environment": store.distinct(cells, store.ENVIRONMENT),
                       "env_columns": store.ENVIRONMENT, "protocol_columns": store.PROTOCOL,
                       "protocols": store.distinct(df.drop_duplicates("cell"), store.PROTOCOL) if len(df) else []},
        "timing.html": {"groups": timing_groups(cells)},
        "curves.html": {"sections": curve_sections(df, cells)},
        "papers.html": {"tables": tables, "papers_doc": papers.__doc__},
    }
    for name, context in pages.items():
        html = env.get_template(name + ".j2").render(page=name, **common, **context)
        (out / name).write_text(html, encoding="utf-8")
    return out / "index.html"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m leaderboard.render", description=__doc__.split("\n")[0])
    parser.add_argument("--results", default="results", help="the parquet result store (folder)")
    parser.add_argument("--out", default="leaderboard/site", help="where the site is written")
    parser.add_argument("--reference", default=str(REFERENCE_DIR), help="the papers' reference CSVs")
    parser.add_argument("--strict", action="store_true", help="fail on an unreadable result file")
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            index = render(args.results, args.out, args.reference, strict=args.strict)
    except store.ResultStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    print(index)
    return 0


if __name__ == "__main__":
    sys.exit(main())
