"""Render the static leaderboard site from the result store and the papers' reference numbers.

    python -m leaderboard.render [--results results] [--out leaderboard/site] [--cache .cache] [--strict]
                                 [--no-stale-check]

or ``from leaderboard.render import render; render("results")``. Pages: index.html (every cell, sortable and
filterable, flags beside the values, the flagged cells listed, the runs' environment and the downloads
results.csv / results.parquet and the per-table CSVs of ``tables/``), rankings.html (victims by worst-case mAP /
t-MAP, attacks by damage at equal budget with a damage-time scatter), robustness.html (curves over one common
attack suite, the per-query worst case from the cache's per-query APs, defenses as gains), timing.html,
curves.html, gallery.html (from the cached gallery records) and papers.html. Every page names the device,
threads, commit and dates of the runs it shows. CSS and
JS are inlined and images are local PNG files, so each page works from file:// with no network. Every string
from the data or a plugin goes through jinja2's autoescape (SVG text through ``html.escape``).

Stale runs (their code changed since they ran; ``store.stale_cells``) are left out and counted in a banner;
``code_root=None`` / ``--no-stale-check`` shows a published run as it was published. A result file that
cannot be read is skipped and named in a banner on every page (and on stderr by the command line);
``strict=True`` / ``--strict`` raises ``ResultStoreError`` naming the file instead.
"""
from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
import warnings
from pathlib import Path

import jinja2
import markupsafe
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from leaderboard import commands as cell_commands
from leaderboard import entries, papers, plots, ranking, robustness, store
from leaderboard.store import fmt_epsilon, fmt_metric, fmt_seconds, fmt_topk, isnum, parse_flags

HERE = Path(__file__).resolve().parent
REFERENCE_DIR = HERE / "reference"
PAGES = [("index.html", "Overview"), ("rankings.html", "Rankings"), ("robustness.html", "Robustness"),
         ("timing.html", "Timing"),
         ("curves.html", "Curves"), ("gallery.html", "Gallery"), ("papers.html", "Papers")]
METRIC_HEADERS = {"map": "mAP", "tmap": "t-MAP", "map_tie_aware": "mAP (tie-aware)",
                  "perceptibility": "perceptibility", "linf": "L∞", "seconds_per_image": "s / image"}
IDENTITY_HEADERS = {"dataset_label": "dataset", "hashing_label": "hashing", "backbone": "backbone",
                    "bits": "bits", "defense_label": "defense", "train_data": "trained on", "attack_label": "attack",
                    "epsilon": "ε", "iterations": "iterations", "surrogate": "surrogate", "scenario": "scenario",
                    "seed": "seed"}
NUMERIC_IDENTITY = {"bits", "epsilon", "iterations", "seed"}


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["json_twin"] = entries.json_twin
    env.filters["breakable"] = breakable
    env.globals.update(css=(HERE / "static" / "style.css").read_text(),
                       js=(HERE / "static" / "table.js").read_text(), pages=PAGES)
    return env


def breakable(text) -> markupsafe.Markup:
    """``text`` escaped, with line-break chances inside a plugin label (``dhta[iterations=300,step=1]``: before
    the bracket and after each comma), so that long labels wrap in a table cell instead of widening it."""
    escaped = str(markupsafe.escape(str(text)))
    escaped = re.sub(r"(?<=[A-Za-z0-9_])\[", "<wbr>[", escaped)
    return markupsafe.Markup(re.sub(r",(?=[A-Za-z_])", ",<wbr>", escaped))


def _cell(text, sort=None, title="", sub="", num=False) -> dict:
    return {"text": text, "sort": "" if sort is None else sort, "title": title, "sub": sub, "num": num, "flag": ""}


def _flag_text(flags: str) -> tuple[str, str]:
    """(the flag names, shown; every "name: reason", for the title)."""
    parsed = parse_flags(flags)
    return ", ".join(n for n, _ in parsed), "; ".join(f"{n}: {r}" if r else n for n, r in parsed)


def overview_rows(cells: pd.DataFrame, commands: dict | None = None) -> tuple[list[dict], list[dict]]:
    """Header and row dicts of the overview table (text shown, raw value to sort by, tooltip); ``commands``
    ({run: {"command", "caveats"}}, ``leaderboard.commands``) gives each row the command that recomputes it."""
    headers = [{"name": h, "num": k in NUMERIC_IDENTITY} for k, h in IDENTITY_HEADERS.items()]
    headers += [{"name": h, "num": True} for h in METRIC_HEADERS.values()]
    headers += [{"name": "flags", "num": False}, {"name": "status", "num": False},
                {"name": "error / reason", "num": False}, {"name": "reproduce", "num": False}]
    rows = []
    for c in cells.to_dict("records"):
        names, reasons = _flag_text(c["flags"])
        out = []
        for key in IDENTITY_HEADERS:
            if key == "epsilon":
                eps = c["epsilon"]
                out.append(_cell(fmt_epsilon(eps), f"{eps:.8g}" if isnum(eps) else "",
                                 f"{eps:.6g}" if isnum(eps) else "unbounded attack: no ε", num=True))
            else:
                out.append(_cell(str(c[key]), num=key in NUMERIC_IDENTITY))
        for m in METRIC_HEADERS:
            v = c[m]
            sub = fmt_topk(c[f"{m}_topk"]) if m in ("map", "tmap", "map_tie_aware") and isnum(v) else ""
            cell = _cell(fmt_metric(m, v), f"{v:.8g}" if isnum(v) else "", f"{v:.6g}" if isnum(v) else "", sub,
                         num=True)
            if names and m in ("map", "tmap") and isnum(v):
                cell.update(flag=reasons)
            out.append(cell)
        out.append(_cell(names, title=reasons))
        out.append(_cell(c["status"]))
        out.append(_cell(c["error"], title=c["error"]))
        rows.append({"cells": out, "status": c["status"], "flagged": bool(names),
                     **command_of((commands or {}).get(c["run"]))})
    return headers, rows


def command_of(found: dict | None) -> dict:
    """{"command": the shell command, "command_title": it with its caveats} ("" when there is none)."""
    if not found:
        return {"command": "", "command_title": ""}
    caveats = "".join(f"\n(note: {c})" for c in found["caveats"])
    return {"command": found["command"], "command_title": found["command"] + caveats}


def flagged_cells(cells: pd.DataFrame) -> list[dict]:
    """The flagged points, each with its identity and its flags' reasons."""
    out = []
    for c in cells[cells["flags"] != ""].to_dict("records"):
        label = " · ".join([c["dataset_label"], c["hashing_label"], c["backbone"], f"{c['bits']} bits",
                            f"defense {c['defense_label']}", c["attack_label"], f"ε {fmt_epsilon(c['epsilon'])}",
                            f"seed {c['seed']}"] + ([f"{c['iterations']} it"] if c["iterations"] else []))
        out.append({"label": label, "flags": [{"name": n, "reason": r} for n, r in parse_flags(c["flags"])]})
    return out


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
            prepare = float(g["prepare_seconds"].median()) if g["prepare_seconds"].notna().any() else np.nan
            n_query = int(g["n_query"].median())
            rows.append({"key": dict(zip(keys, key)), "iterations": ", ".join(map(str, its)), "cells": len(g),
                         "median": float(sec.median()), "lo": float(sec.min()), "hi": float(sec.max()),
                         "prepare": prepare, "n_query": n_query,
                         "amortised": float(sec.median()) + prepare / n_query if isnum(prepare) and n_query
                         else float(sec.median())})
        fastest, slowest = min(r["median"] for r in rows), max(r["median"] for r in rows)
        span = np.log10(slowest / fastest) if slowest > fastest else 1.0
        for r in rows:
            r["bar"] = 4 + 96 * np.log10(r["median"] / fastest) / span
            r["ratio"] = r["median"] / fastest
            r.update(median_text=fmt_seconds(r["median"]), prepare_text=fmt_seconds(r["prepare"]),
                     ratio_text=f"×{r['ratio']:.0f}" if r["ratio"] >= 100 else f"×{r['ratio']:.3g}",
                     amortised_text=fmt_seconds(r["amortised"]),
                     range_text=f"{fmt_seconds(r['lo'])} – {fmt_seconds(r['hi'])}" if r["cells"] > 1 else "")
        groups.append({"device": device or "(unknown device)", "rows": sorted(rows, key=lambda r: r["median"])})
    return groups


def _line_label(c: dict, several_seeds: bool) -> str:
    label = c["attack_label"] if c["attack"] == "none" else f"{c['attack_label']} ε={fmt_epsilon(c['epsilon'])}"
    if c.get("snapshot"):
        label += f" @{c['iterations']} it"
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
    x = np.where(rows["metric"].isin(["precision_at", "tprecision_at"]), rows["topk"].astype(float), rows["recall"])
    points: dict = {}
    for cell, metric, xv, yv in zip(rows["cell"], rows["metric"], x, rows["value"]):
        points.setdefault((cell, metric), []).append((float(xv), float(yv)))
    return points


def _clean_level(recs: list[dict], metric: str, series: list[dict]) -> list[dict]:
    clean = [c[metric] for c in recs if c["attack"] == "none" and isnum(c[metric])]
    if series and clean:
        series.append({"label": f"clean queries ({np.mean(clean):.4f})", "hline": float(np.mean(clean))})
    return series


def _epsilon_series(recs: list[dict], metric: str) -> list[dict]:
    """One line per (attack, surrogate, scenario) run at 2+ epsilons (mean over seeds), plus the clean level."""
    by: dict = {}
    for c in recs:
        if c["attack"] != "none" and isnum(c[metric]) and isnum(c["epsilon"]) and not c.get("snapshot"):
            key = (c["attack_label"], c["surrogate"], c["scenario"])
            by.setdefault(key, {}).setdefault(c["epsilon"], []).append(c[metric])
    series = [{"label": a + (f" {sc}" if sc != "a2c" else "") + (f" from {su}" if su != "self" else ""),
               "points": [(e * 255, float(np.mean(v))) for e, v in eps.items()]}
              for (a, su, sc), eps in sorted(by.items()) if len(eps) >= 2]
    return _clean_level(recs, metric, series)


def _without_iterations(attack_params: str) -> str:
    params = store.json_dict(attack_params)
    return json.dumps({k: v for k, v in params.items() if k not in store.ITERATION_KEYS}, sort_keys=True)


def _iteration_series(recs: list[dict], metric: str) -> list[dict]:
    """One line per (attack, other parameters, ε, surrogate, scenario) measured at 2+ iteration counts: the
    snapshots of one run, or runs of different lengths (mean over seeds); plus the clean level."""
    by: dict = {}
    for c in recs:
        if c["attack"] != "none" and isnum(c[metric]) and c["iterations"] > 0:
            key = (c["attack"], _without_iterations(c["attack_params"]), c["eps_key"], c["surrogate"], c["scenario"])
            by.setdefault(key, {"label": c, "points": {}})["points"].setdefault(c["iterations"], []).append(c[metric])
    series = []
    for key, entry in sorted(by.items()):
        if len(entry["points"]) < 2:
            continue
        c = entry["label"]
        name = re.sub(r"\[\]$", "", re.sub(r",?\b(?:%s)=[^,\]]*" % "|".join(store.ITERATION_KEYS), "",
                                           c["attack_label"]).replace("[,", "["))
        label = name + f" ε={fmt_epsilon(c['epsilon'])}"
        label += (f" {c['scenario']}" if c["scenario"] != "a2c" else "") + (
            f" from {c['surrogate']}" if c["surrogate"] != "self" else "")
        series.append({"label": label, "points": [(float(i), float(np.mean(v))) for i, v in entry["points"].items()]})
    return _clean_level(recs, metric, series)


CURVES = (("precision_at", "N (top retrieved)", "precision@N", "precision@N against N"),
          ("pr_precision", "recall", "precision", "precision against recall"),
          ("tprecision_at", "N (top retrieved)", "precision@N (target labels)", "targeted precision@N against N"),
          ("tpr_precision", "recall", "precision (target labels)", "targeted precision against recall"))


def curve_sections(df: pd.DataFrame, cells: pd.DataFrame) -> list[dict]:
    """Per victim: precision@N, precision-recall (and their targeted forms for targeted attacks), and mAP /
    t-MAP against ε and against iterations (one line per attack)."""
    victims: dict = {}
    ok = cells[cells["status"] == "ok"]
    ok = ok.assign(snapshot=ok["iterations"] < ok.groupby("run")["iterations"].transform("max"))
    for c in ok.to_dict("records"):
        key = (c["dataset_label"], c["hashing_label"], c["backbone"], c["bits"], c["defense_label"], c["train_data"])
        victims.setdefault(key, []).append(c)
    points = _curve_points(df) if len(df) else {}
    sections = []
    for victim, recs in sorted(victims.items()):
        several = len({c["seed"] for c in recs}) > 1
        charts = []
        for metric, xlabel, ylabel, title in CURVES:
            targeted_only = metric.startswith("t")
            series = sorted(({"label": _line_label(c, several), "points": points[(c["cell"], metric)]}
                             for c in recs if (c["cell"], metric) in points
                             and (not targeted_only or c["targeted"] or c["attack"] == "none")),
                            key=lambda s: s["label"])
            if series and (not targeted_only or any(c["targeted"] for c in recs)):
                charts.append(_chart(title, series, xlabel, ylabel, xlog=None if "precision_at" in metric else False))
        for series_of, against, xlabel in ((_epsilon_series, "ε", "ε (×1/255)"),
                                           (_iteration_series, "iterations", "iterations")):
            for metric in ("map", "tmap"):
                series = series_of([c for c in recs if metric == "map" or c["targeted"] or c["attack"] == "none"],
                                   metric)
                if series:
                    charts.append(_chart(f"{METRIC_HEADERS[metric]} against {against}", series, xlabel,
                                         METRIC_HEADERS[metric], xlog=False, xmin=0.0))
        if charts:
            trained = "" if victim[5] == "clean" else f" · trained on {victim[5]} data"
            sections.append({"title": f"{victim[0]} · {victim[1]} · {victim[2]} · {victim[3]} bits · "
                                      f"defense {victim[4]}{trained}", "charts": charts})
    return sections + defense_sweep_sections(ok)


def defense_sweep_sections(cells: pd.DataFrame) -> list[dict]:
    """mAP against a defense's parameter where clean-query cells vary it (PPL's generator ε, Fig. 6; its share
    of protected database items, Fig. 5): one line per (scenario, training data), per victim."""
    groups: dict = {}
    for c in cells[(cells["attack"] == "none") & (cells["defense"] != "none")].to_dict("records"):
        if isnum(c["map"]):
            key = (c["dataset_label"], c["hashing_label"], c["backbone"], c["bits"], c["defense"])
            groups.setdefault(key, []).append(c)
    sections = []
    for key, recs in sorted(groups.items()):
        params = [store.json_dict(c["defense_params"]) for c in recs]
        varying = sorted(k for k in set().union(*params)
                         if len({json.dumps(p.get(k)) for p in params}) > 1
                         and all(isinstance(p.get(k), (int, float)) and not isinstance(p.get(k), bool) for p in params))
        charts = []
        for name in varying:
            lines: dict = {}
            for c, p in zip(recs, params):
                same_otherwise = json.dumps({k: v for k, v in p.items() if k != name}, sort_keys=True)
                lines.setdefault((c["scenario"], c["train_data"], same_otherwise), {}).setdefault(
                    float(p[name]), []).append(c["map"])
            series = [{"label": scenario + ("" if trained == "clean" else f", trained on {trained} data"),
                       "points": [(x, float(np.mean(v))) for x, v in points.items()]}
                      for (scenario, trained, _), points in sorted(lines.items()) if len(points) >= 2]
            if series:
                charts.append(_chart(f"mAP against the {key[4]} defense's {name}", series, name, "mAP",
                                     xlog=False))
        if charts:
            sections.append({"title": f"{key[0]} · {key[1]} · {key[2]} · {key[3]} bits · {key[4]} sweeps",
                             "charts": charts})
    return sections


SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")


def gallery_sections(cells: pd.DataFrame, cache_dir: str | Path | None, out: Path) -> tuple[list[dict], list[str]]:
    """Per victim, per attack cell with a cached gallery record: PNG strips written to ``out/gallery``.

    Returns the sections and the problems met (an unreadable record is named and skipped)."""
    folder = out / "gallery"
    if folder.exists():
        for old in folder.glob("*.png"):
            old.unlink()
    if cache_dir is None or not len(cells):
        return [], []
    records = Path(cache_dir) / "gallery"
    ok = cells[(cells["status"] == "ok") & (cells["cell_key"] != "")]
    ok = ok[ok["iterations"] == ok.groupby("run")["iterations"].transform("max")].drop_duplicates("run")
    found = [(c, records / f"{c['cell_key']}.pt") for c in ok.to_dict("records")
             if (records / f"{c['cell_key']}.pt").is_file()]
    if not found:
        return [], []
    from benchmark.scoring.gallery import load_record, write_pngs

    victims: dict = {}
    problems = []
    for c, path in found:
        try:
            record = load_record(path)
            queries = write_pngs(record, folder, SAFE_NAME.sub("_", c["cell_key"]))
        except (ValueError, KeyError, IndexError, OSError) as exc:
            problems.append(f"gallery record skipped: {exc}")
            continue
        key = (c["dataset_label"], c["hashing_label"], c["backbone"], c["bits"], c["defense_label"], c["train_data"])
        for q in queries:
            for name in ("query", "clean_top", "adversarial_top"):
                q[name] = f"gallery/{q[name]}"
        victims.setdefault(key, []).append({
            "attack": c["attack_label"], "epsilon": fmt_epsilon(c["epsilon"]), "targeted": bool(c["targeted"]),
            "surrogate": c["surrogate"], "scenario": c["scenario"], "seed": c["seed"], "queries": queries,
            "flags": _flag_text(c["flags"])[1]})
    sections = [{"title": f"{v[0]} · {v[1]} · {v[2]} · {v[3]} bits · defense {v[4]}"
                          + ("" if v[5] == "clean" else f" · trained on {v[5]} data"),
                 "attacks": sorted(entries, key=lambda e: (e["attack"] != "none", e["attack"], e["epsilon"]))}
                for v, entries in sorted(victims.items())]
    return sections, problems


def training_sections(cells: pd.DataFrame, cache_dir: str | Path | None) -> list[dict]:
    """The loss curves of what the cells trained (victims, protections, learned attacks' preparation), from
    the ``curves/<cell_key>.pt`` records the harness caches; each trained thing drawn once."""
    if cache_dir is None or not len(cells):
        return []
    import torch

    folder = Path(cache_dir) / "curves"
    drawn: dict[str, dict] = {}
    for key in cells.loc[(cells["status"] == "ok") & (cells["cell_key"] != ""), "cell_key"].drop_duplicates():
        path = folder / f"{key}.pt"
        if not path.is_file():
            continue
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - an unreadable record only loses its chart
            continue
        records = stored.get("value", {}).get("records", {}) if isinstance(stored, dict) else {}
        for who, info in records.items():
            curves = plots.loss_curves(info)
            if curves and who not in drawn:
                drawn[who] = curves
    sections = []
    for who, curves in sorted(drawn.items()):
        by_scale: dict = {}
        for name, points in curves.items():  # one chart per curve family (its name before ':')
            by_scale.setdefault(name.split(":")[0], []).append({"label": name, "points": points})
        charts = [_chart(f"{family}", series, "epoch or iteration", "loss", ylim=None, xlog=False)
                  for family, series in sorted(by_scale.items())]
        sections.append({"title": f"training losses · {who}", "charts": charts})
    return sections


def _write_downloads(df: pd.DataFrame, out: Path) -> bool:
    for name in ("results.csv", "results.parquet"):
        (out / name).unlink(missing_ok=True)
    if not len(df):
        return False
    table = df.drop(columns=["cell", "run", "eps_key", "source_file"], errors="ignore")
    table.to_csv(out / "results.csv", index=False)
    frame = pa.Table.from_pandas(table, preserve_index=False)
    marked = frame.replace_schema_metadata({**(frame.schema.metadata or {}), store.DOWNLOAD_MARKER: b"1"})
    pq.write_table(marked, out / "results.parquet")  # marked, so that reading a store never takes it for results
    return True


TABLES_DIR = "tables"  # the per-table CSV downloads, beside the pages


def _slug(*parts) -> str:
    return SAFE_NAME.sub("_", "-".join(str(p) for p in parts if str(p) != ""))[:120]


def _write_csv(out: Path, name: str, records: list[dict]) -> str:
    """Write ``records`` as ``tables/<name>`` and its JSON twin (one object per record, numbers as numbers,
    NaN as null); returns the name (the pages link ``tables/<name>`` and ``tables/<name|json_twin>``)."""
    pd.DataFrame(records).to_csv(out / TABLES_DIR / name, index=False)
    entries.write_json(out / TABLES_DIR / entries.json_twin(name), entries.typed_records(records))
    return name


def write_table_downloads(out: Path, paper_tables: list[dict], victims: list[dict], robust: list[dict],
                          attacks: list[dict]) -> None:
    """One CSV per paper table (measured beside the paper) and per ranking; each table dict gets its ``csv``
    (and robustness tables ``defenses_csv``). The folder is emptied first: no file of an earlier site stays."""
    folder = out / TABLES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for old in [*folder.glob("*.csv"), *folder.glob("*.json")]:
        old.unlink()
    for t in paper_tables:
        _write_csv(out, t["csv"], papers.table_records(t))
    for i, t in enumerate(victims, 1):
        t["csv"] = _write_csv(out, f"victims-{i}-{_slug(t['dataset'], t['bits'])}.csv", [
            {"rank": r["rank"], **r["victim"], "clean_map": r["clean"],
             **{c["header"]: x["value"] for c, x in zip(t["columns"], r["cells"])},
             **{c["header"] + " attack": x["attack"] for c, x in zip(t["columns"], r["cells"])}} for r in t["rows"]])
    for i, t in enumerate(robust, 1):
        t["csv"] = _write_csv(out, f"robustness-{i}-{_slug(t['facts']['dataset_label'], t['facts']['bits'])}.csv", [
            {"rank": r["rank"], **r["victim"], "clean_map": r["clean"], "area": r["area"], "area_kind": r["area_kind"],
             "suite": " + ".join(t["suite"]),
             **{f"worst_of_means {p['eps_text']}": p["worst_mean"] for p in r["points"]},
             **{f"per_query_worst {p['eps_text']}": p["per_query"] for p in r["points"]}} for r in t["victims"]])
        t["defenses_csv"] = _write_csv(
            out, f"defenses-{i}-{_slug(t['facts']['dataset_label'], t['facts']['bits'])}.csv",
            [{"defense": d["defense"], "victim": d["victim"], "clean_cost": d["cost"],
              **{f"gain {g['eps_text']}": g["gain"] for g in d["gains"]}} for d in t["defenses"]])
    for i, t in enumerate(attacks, 1):
        t["csv"] = _write_csv(out, f"attacks-{i}-{_slug(t['dataset'], t['bits'], t['epsilon'], t['kind'])}.csv", [
            {"rank": r["rank"], "attack": r["attack"], "damage": r["damage"], "kind": t["kind"],
             "epsilon": t["epsilon"], "victims": r["victims"], "seconds_per_query": r["per_image"],
             "seconds_per_query_incl_prepare": r["amortised"], "pareto_front": r["pareto"], "device": r["device"]}
            for r in t["rows"]])


def attach_paper_commands(tables: list[dict], commands: dict) -> None:
    """Each measured paper value gets the commands that recompute its cells (one per seed averaged)."""
    for t in tables:
        for row in t["rows"]:
            for c in row["cells"]:
                m = c and c["measured"]
                if m:
                    found = [command_of(commands.get(run)) for run in m.get("runs", ())]
                    m["command"] = "\n".join(f["command"] for f in found if f["command"])
                    m["command_title"] = "\n".join(f["command_title"] for f in found if f["command"])


def link_victim_entries(victims: list[dict], robust: list[dict], files: dict[str, str]) -> None:
    """``entry`` (its victims/<id>.json) on each row of the rankings' and the robustness page's victim tables."""
    for t in victims:
        for r in t["rows"]:
            r["entry"] = files.get(entries.victim_id(t["dataset"], t["bits"], t["conventions"], r["victim"]), "")
    for t in robust:
        for r in t["victims"]:
            r["entry"] = files.get(entries.victim_id(t["facts"]["dataset_label"], t["facts"]["bits"], t["facts"],
                                                     r["victim"]), "")


def speed_context(configs: pd.DataFrame) -> dict:
    """The ProS-GAN / DHTA-2000 rows that have both attacks, and a line for each victim that has only one."""
    rows = ranking.speed_comparison(configs)
    paired = [r for r in rows if isnum(r["slow"]) and isnum(r["fast"])]
    unpaired = [f"{r['hashing_label']} {r['backbone']} {r['bits']} bits"
                + (f" + {r['defense_label']}" if r["defense_label"] != "none" else "")
                + f" on {r['dataset_label']} ({r['device'] or 'device?'}): "
                + (f"no {ranking.SLOW} at {ranking.SLOW_ITERATIONS} iterations" if not isnum(r["slow"])
                   else f"no {ranking.FAST}") for r in rows if r not in paired]
    return {"speed": paired, "speed_unpaired": unpaired}


def render(results_dir: str | Path = "results", out_dir: str | Path = "leaderboard/site",
           reference_dir: str | Path = REFERENCE_DIR, strict: bool = False,
           code_root: str | Path | None = store.REPO_ROOT, cache_dir: str | Path | None = None) -> Path:
    """Write the site into ``out_dir`` and return the path of its index.html.

    ``code_root``: the code tree stale runs are judged against (None: show every run, e.g. a published run);
    ``cache_dir``: the stage cache holding ``gallery/<cell_key>.pt`` records (None: ``.cache`` beside the
    results folder when it exists)."""
    df, problems = store.read_results(results_dir, strict=strict)
    for problem in problems:
        warnings.warn(problem, stacklevel=2)
    df, stale = store.drop_stale(df, code_root)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cells = store.cells(df)
    if cache_dir is None:
        cache_dir = Path(results_dir).resolve().parent / ".cache"
    gallery, gallery_problems = gallery_sections(cells, cache_dir, out)
    env = _environment()
    notices = [f"{len(stale)} stale cell(s) not shown: their code changed since they ran "
               f"(python bench.py stale --results {results_dir} lists them)"] if len(stale) else []
    common = {"warnings": problems + gallery_problems, "notices": notices, "n_cells": len(cells),
              "run_environment": robustness.environment_of(cells),
              "results_dir": str(results_dir), "generated": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
              "counts": cells["status"].value_counts().to_dict() if len(cells) else {}}
    from benchmark import Registry

    commands = cell_commands.commands_by_run(cells, Registry.discover()) if len(cells) else {}
    headers, rows = overview_rows(cells, commands)
    ref = papers.load_reference(reference_dir)
    tables = papers.paper_tables(ref, papers.measured_index(df, cells))
    attach_paper_commands(tables, commands)
    configs = ranking.configurations(cells)
    victims = ranking.victim_tables(configs)
    robust = robustness.robustness_tables(configs, cells, robustness.per_query_lookup(results_dir, cache_dir))
    budget = robustness.attack_budget_tables(configs)
    write_table_downloads(out, tables, victims, robust, budget)
    link_victim_entries(victims, robust, entries.write_victim_entries(
        out, entries.victim_entries(cells, df, robust, commands)))
    pages = {
        "index.html": {"headers": headers, "rows": rows, "downloads": _write_downloads(df, out),
                       "table_downloads": sorted(x.name for x in (out / TABLES_DIR).glob("*.csv")),
                       "victims_index": entries.VICTIMS_INDEX,
                       "flagged": flagged_cells(cells),
                       "environment": store.distinct(cells, store.ENVIRONMENT),
                       "env_columns": store.ENVIRONMENT, "protocol_columns": store.PROTOCOL,
                       "protocols": store.distinct(df.drop_duplicates("cell"), store.PROTOCOL) if len(df) else []},
        "rankings.html": {"victims": victims, "attacks": budget, "ranking_doc": ranking.__doc__,
                          "budget_doc": robustness.__doc__},
        "robustness.html": {"tables": robust, "robustness_doc": robustness.__doc__,
                            "cache_dir": str(cache_dir) if cache_dir is not None else ""},
        "timing.html": {"groups": timing_groups(cells), **speed_context(configs)},
        "curves.html": {"sections": curve_sections(df, cells) + training_sections(cells, cache_dir)},
        "gallery.html": {"sections": gallery},
        "papers.html": {"tables": tables, "papers_doc": papers.__doc__, "conventions": papers.conventions_table()},
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
    parser.add_argument("--cache", default=None, help="the stage cache with gallery records (default: .cache "
                                                      "beside the results folder)")
    parser.add_argument("--no-stale-check", action="store_true",
                        help="show every run, even those whose code changed since (a published run)")
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            index = render(args.results, args.out, args.reference, strict=args.strict,
                           code_root=None if args.no_stale_check else store.REPO_ROOT, cache_dir=args.cache)
    except store.ResultStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    print(index)
    return 0


if __name__ == "__main__":
    sys.exit(main())
