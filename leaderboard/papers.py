"""The papers' own numbers (``reference/*.csv``) laid out per paper table, with measured values beside them.

A reference row matches a measured cell (status ok) with the same dataset, hashing, backbone, bits,
defense, attack and metric (plugin names, so non-default parameters still match), and:

* ``task`` c2c/c2a/a2c/a2a is the cell's ``scenario``, an empty task a2c; but with ``attack=none`` (clean
  queries, and for PPL the clean C->C cell) every scenario is clean-vs-clean, so any scenario matches and
  the task's own (c2c for PPL, a2c otherwise) is preferred;
* ``task`` ``iter=N``: N = 0 is the clean cell; otherwise the attack's ``iterations`` parameter is N;
* ``task`` ``source=S,target=T`` (transfer tables): S = none is the clean cell, S = T (the diagonal)
  a white-box cell; other sources are not matched (the paper's model names do not map onto surrogates);
* the surrogate is ``self`` (white-box), except for attacks in ``ANY_SURROGATE_ATTACKS`` (PPL's
  protection generator is trained on its own surrogate);
* PPL's ``train_data=adversarial`` (a model trained on protected data) is the measured defense
  ``TRAIN_DATA_DEFENSE["adversarial"]``.

Of several matching cells the like-for-like group wins, then the paper's cut-off, then white-box,
then the group with more seeds; seeds are averaged. *Like-for-like* (marked ≡) means the same dataset
with its default parameters (protocol), default hashing/defense/attack parameters, the paper's
mAP cut-off where the paper states one (``PAPER_TOPK``) and the paper's ε where it states one.
"""
from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from leaderboard.store import CURVE_METRICS, fmt_epsilon, fmt_topk

PAPERS = {"ppl": "PPL — Proactive Privacy-preserving Learning (AAAI 2021)",
          "prosgan": "ProS-GAN (CVPR 2021)",
          "hag": "HAG — Adversarial Examples for Hamming Space Search (IEEE TCYB)",
          "cgat": "CgAT (WWW 2023)"}
PAPER_TOPK = {"hag": 1000, "cgat": 5000, "prosgan": 0}
PAPER_EPSILON = {("prosgan", "p2p"): 8 / 255, ("prosgan", "dhta"): 8 / 255}
TRAIN_DATA_DEFENSE = {"adversarial": "ppl"}
ANY_SURROGATE_ATTACKS = {"ppl"}
UNIT_SCALE = {"x1e-2": 100.0, "x1e-3": 1000.0}
SCENARIOS = {"c2c", "c2a", "a2c", "a2a"}
CUTOFF_METRICS = {"map", "tmap", "map_tie_aware", "tmap_tie_aware"}
FIELDS = ["dataset", "hashing", "backbone", "bits", "train_data", "defense", "attack", "task", "metric", "unit"]
COLUMNS = ["paper", "table", *FIELDS[:-2], "metric", "value", "unit", "note"]


def load_reference(reference_dir: str | Path) -> pd.DataFrame:
    """Every reference CSV as strings (printed digits kept), papers in the README's order."""
    paths = sorted(Path(reference_dir).glob("*.csv"),
                   key=lambda p: (list(PAPERS).index(p.stem) if p.stem in PAPERS else len(PAPERS), p.name))
    frames = [pd.read_csv(p, dtype=str, keep_default_na=False) for p in paths]
    ref = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    missing = [c for c in COLUMNS if c not in ref.columns]
    if missing:
        raise ValueError(f"reference CSVs in {reference_dir} lack column(s) {', '.join(missing)}")
    return ref


def measured_index(df: pd.DataFrame, cells: pd.DataFrame) -> dict:
    """Scalar ok rows keyed by (dataset, hashing, backbone, bits, metric)."""
    index: dict = defaultdict(list)
    if not len(df):
        return index
    rows = df[(df["status"] == "ok") & (df["metric"] != "") & ~df["metric"].isin(CURVE_METRICS)]
    rows = rows.merge(cells[["cell", "iterations"]], on="cell", how="left")
    for rec in rows.to_dict("records"):
        index[(rec["dataset"], rec["hashing"], rec["backbone"], str(rec["bits"]), rec["metric"])].append(rec)
    return index


def _wanted(r: dict):
    """(scenarios, require white-box, iterations) for a reference row, or None when it cannot match."""
    task, attack = r["task"], r["attack"]
    scen = {task if task in SCENARIOS else "a2c"}
    self_only, iters = attack not in ANY_SURROGATE_ATTACKS, None
    if attack == "none":
        scen = set(SCENARIOS)
    elif task.startswith("iter="):
        n = int(task[5:])
        iters = n if n > 0 else None
    elif task.startswith("source="):
        src, _, tgt = task[7:].partition(",target=")
        if src != "none" and re.sub(r"\(r\d+\)$", "", src) != tgt:
            return None
    return scen, self_only, iters


def like_for_like(rec: dict, paper: str) -> bool:
    same = all(rec[f"{k}_label"] == rec[k] for k in ("dataset", "hashing", "defense", "attack"))
    topk = PAPER_TOPK.get(paper)
    if rec["metric"] in CUTOFF_METRICS and topk is not None and rec["topk"] != topk:
        return False
    eps = PAPER_EPSILON.get((paper, rec["attack"]))
    return same and (eps is None or abs(rec["epsilon"] - eps) < 1e-6)


def match(r: dict, index: dict) -> dict | None:
    """The measured value for reference row ``r`` (see the module docstring), or None."""
    wanted = _wanted(r)
    if wanted is None or not r["bits"]:
        return None
    scen, self_only, iters = wanted
    defense = TRAIN_DATA_DEFENSE.get(r["train_data"], r["defense"])
    found = [m for m in index.get((r["dataset"], r["hashing"], r["backbone"], r["bits"], r["metric"]), [])
             if m["defense"] == defense and m["attack"] == r["attack"] and m["scenario"] in scen
             and (not self_only or m["surrogate"] == "self") and (iters is None or m["iterations"] == iters)]
    if not found:
        return None
    groups = defaultdict(list)
    for m in found:
        groups[tuple(m[k] for k in ("dataset_label", "hashing_label", "defense_label", "attack_label",
                                    "epsilon", "surrogate", "scenario", "topk"))].append(m)
    paper_topk = PAPER_TOPK.get(r["paper"])

    own = r["task"] if r["task"] in SCENARIOS else "a2c"

    def rank(g):
        m = g[0]
        return (like_for_like(m, r["paper"]), m["scenario"] == own, m["topk"] == paper_topk,
                m["surrogate"] == "self", len(g))

    best = max(groups.values(), key=rank)
    m = best[0]
    value = float(np.mean([x["value"] for x in best])) * UNIT_SCALE.get(r["unit"], 1.0)
    if r["unit"] == "seconds":
        text = f"{value:.3g}"
    elif r["unit"] == "count":
        text = f"{value:.0f}"
    else:
        text = f"{value:.{max(2, len(r['value'].partition('.')[2]))}f}"
    detail = [f"measured {m['metric']}{fmt_topk(m['topk']) if m['metric'] in CUTOFF_METRICS else ''}",
              f"dataset {m['dataset_label']}", f"hashing {m['hashing_label']}", f"defense {m['defense_label']}",
              f"attack {m['attack_label']}", f"ε {fmt_epsilon(m['epsilon'])}", f"scenario {m['scenario']}",
              f"surrogate {m['surrogate']}", f"{len(best)} seed(s) averaged" if len(best) > 1 else f"seed {m['seed']}"]
    if len(groups) > 1:
        detail.append(f"{len(groups) - 1} other matching configuration(s) not shown")
    return {"text": text, "title": "; ".join(detail), "lfl": like_for_like(m, r["paper"]),
            "eps": fmt_epsilon(m["epsilon"]) if m["attack"] != "none" else ""}


def _pivot_field(t: pd.DataFrame) -> str:
    if "target" in t:
        return "target"
    if t["bits"].nunique() > 1:
        return "bits"
    return next((f for f in ("metric", "dataset", "attack", "hashing") if t[f].nunique() > 1), "bits")


def _column_label(field: str, value: str) -> str:
    if field == "bits":
        return f"{value} bits" if value else "bits ?"
    return value


def paper_tables(ref: pd.DataFrame, index: dict) -> list[dict]:
    """One dict per (paper, table): caption facts, column headers, rows of (paper value, measured)."""
    tables = []
    for (paper, number), t in ref.groupby(["paper", "table"], sort=False):
        t = t.copy()
        fields = list(FIELDS)
        if t["task"].str.contains("target=").all():
            parts = t["task"].str[7:].str.partition(",target=")
            t["source"], t["target"] = parts[0], parts[2]
            fields = [f for f in fields if f != "task"] + ["source", "target"]
        pivot = _pivot_field(t)
        col_fields = [pivot] + [f for f in fields if f != pivot and t[f].nunique() > 1
                                and (t.groupby(pivot)[f].nunique() == 1).all()]
        row_fields = [f for f in fields if f not in col_fields]
        shown = [f for f in row_fields if t[f].nunique() > 1]
        caption = [(f, t[f].iloc[0]) for f in fields if t[f].nunique() == 1 and t[f].iloc[0]]
        col_keys = list(dict.fromkeys(tuple(r) for r in t[col_fields].itertuples(index=False)))
        if pivot == "bits":
            col_keys.sort(key=lambda k: int(k[0]) if k[0].isdigit() else 0)
        clause_sets = [set(n.split("; ")) for n in t["note"]]
        common = [c for c in t["note"].iloc[0].split("; ") if c and all(c in s for s in clause_sets)]
        rows: dict = {}
        measured = lfl = 0
        for rec in t.to_dict("records"):
            rkey = tuple(rec[f] for f in row_fields)
            row = rows.setdefault(rkey, {"labels": [rec[f] for f in shown], "cells": [None] * len(col_keys)})
            m = match(rec, index)
            measured += m is not None
            lfl += bool(m and m["lfl"])
            note = "; ".join(c for c in rec["note"].split("; ") if c not in common)
            unit = "" if rec["unit"] == "fraction" or "unit" in col_fields else rec["unit"]
            row["cells"][col_keys.index(tuple(rec[f] for f in col_fields))] = {
                "value": rec["value"], "unit": unit, "note": note, "measured": m}
        tables.append({
            "id": f"{paper}-{number}", "paper": paper, "paper_name": PAPERS.get(paper, paper), "table": number,
            "caption": caption, "row_fields": shown, "rows": list(rows.values()), "n": len(t),
            "columns": [" · ".join(_column_label(f, v) for f, v in zip(col_fields, k) if v) for k in col_keys],
            "common_note": "; ".join(common), "measured": measured, "lfl": lfl})
    return tables
