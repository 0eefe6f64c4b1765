"""Robustness curves over one common attack suite, defenses as gains, and attacks by damage at equal budget.

Built from ``ranking.configurations`` (seeds averaged, current code), white-box (surrogate ``self``) attacks on
clean-vs-clean retrieval (scenario a2c), each run's last snapshot, per table (dataset, code length,
conventions) as the rankings are.

* **Suite.** The untargeted attacks run on every victim of the table (by label, so their parameters agree):
  one common suite, listed on the page; an attack missing on one victim is out of the suite for all. The
  curve's ε points are those at which every victim has every suite attack.
* **Curves.** Per victim, at each ε: the worst-case mAP over the suite (the lowest of the attacks' mAPs, "worst
  of the means") and the **per-query worst case**: for each query its lowest AP over the suite's attacks, then
  the mean over the queries (never above the worst of the means). The per-query APs are the harness's
  ``cells/<cell_key>.pt`` cache records (``average_precision["ap"]``, at the dataset's own cut-off), which every
  run also copies into its store as ``_per_query.parquet`` (``benchmark.storage.per_query``), so a published
  store carries them; where neither holds them the per-query curve is missing and said so.
* **Ranking.** Victims by the area under the per-query worst-case curve over ε (trapezoid rule over the
  measured ε points, divided by the ε range: the curve's mean height, in mAP), higher is more robust; the
  worst-of-means area where a victim lacks per-query records. The ε range is a choice of measurement range.
* **Defenses.** A defended victim beside its undefended twin (same method, backbone, code length, training
  data): the gain in per-query worst-case mAP at each ε (worst of the means where per-query is missing), and
  the clean-mAP cost (undefended clean mAP minus defended).
* **Attacks.** Per table and ε: the attacks ranked by damage (mean mAP drop from the clean queries, or t-MAP
  gain for targeted attacks) over the victims every attack at that ε was run on, with seconds per query
  (preparation amortised over the cell's queries) as the second axis: a damage-time scatter with its Pareto
  front (no other attack is both at least as damaging and at least as fast).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.storage.per_query import cached_per_query, read_per_query
from leaderboard import plots
from leaderboard.ranking import TABLE, TABLE_CONVENTIONS, VICTIM
from leaderboard.store import fmt_epsilon, fmt_metric, fmt_seconds, isnum

APLookup = Callable[[str], "np.ndarray | None"]  # a cell key -> its per-query AP (None: not recorded)


def per_query_lookup(results_dir: str | Path, cache_dir: str | Path | None) -> APLookup:
    """Per-query APs from the store's ``_per_query.parquet`` (copied there at the end of every run), else from
    the stage cache's ``cells/<cell_key>.pt`` records."""
    stored = read_per_query(results_dir)

    def ap_of(cell_key: str) -> np.ndarray | None:
        return stored[cell_key] if cell_key in stored else cached_per_query(cache_dir, cell_key)

    return ap_of


def trapezoid_mean(xs: list[float], ys: list[float]) -> float:
    """The area under (xs, ys) by the trapezoid rule divided by the x range (one point: its y)."""
    if not xs or any(not isnum(y) for y in ys):
        return np.nan
    if len(xs) == 1:
        return float(ys[0])
    return float(np.trapezoid(ys, xs) / (xs[-1] - xs[0]))


def _white_final(configs: pd.DataFrame) -> pd.DataFrame:
    if not len(configs):
        return configs
    white = configs[(configs["surrogate"] == "self") & (configs["scenario"] == "a2c") & configs["final"]]
    return white


def environment_of(cells: pd.DataFrame) -> list[str]:
    """"device · threads · commit · date" of the runs in ``cells`` (one line per distinct environment)."""
    if not len(cells):
        return []
    out = []
    for (device, commit), g in cells.groupby(["device", "git_commit"], sort=True, dropna=False):
        dates = sorted(d[:10] for d in g["created_at"] if d)
        span = dates[0] if dates and dates[0] == dates[-1] else (f"{dates[0]} – {dates[-1]}" if dates else "date?")
        out.append(f"{device or 'device?'} · commit {commit[:10] or '?'} · {span} · {g['run'].nunique()} run(s)")
    return out


def robustness_tables(configs: pd.DataFrame, cells: pd.DataFrame, ap_of: APLookup) -> list[dict]:
    """One entry per table (dataset, code length, conventions): suite, curves, ranked victims, defenses."""
    white = _white_final(configs)
    if not len(white):
        return []
    ok = cells[(cells["status"] == "ok")]
    ok = ok[ok["iterations"] == ok.groupby("run")["iterations"].transform("max")]
    tables = []
    for key, t in white.groupby(TABLE, sort=True, dropna=False):
        table = _one_table(dict(zip(TABLE, key)), t, ok, ap_of)
        if table:
            tables.append(table)
    return tables


def _victim_cells(ok: pd.DataFrame, facts: dict, victim: tuple) -> pd.DataFrame:
    mask = (ok["dataset_label"] == facts["dataset_label"]) & (ok["bits"] == facts["bits"])
    mask &= (ok["surrogate"] == "self") & (ok["scenario"] == "a2c")
    for k in TABLE_CONVENTIONS:
        mask &= ok[k] == facts[k]
    for k, v in zip(VICTIM, victim):
        mask &= ok[k] == v
    return ok[mask]


def _one_table(facts: dict, t: pd.DataFrame, ok: pd.DataFrame, ap_of: APLookup) -> dict | None:
    untargeted = t[(t["attack"] != "none") & ~t["targeted"] & (t["eps_key"] != "unbounded")]
    clean = t[t["attack"] == "none"]
    victims = sorted({tuple(v) for v in untargeted[VICTIM].itertuples(index=False)})
    if not victims:
        return None
    by_victim = {v: untargeted[(untargeted[VICTIM] == pd.Series(v, index=VICTIM)).all(axis=1)] for v in victims}
    suite, compared, eps_keys = common_suite({v: set(zip(g["attack_label"], g["eps_key"]))
                                              for v, g in by_victim.items()})
    left_out = [_victim_name(dict(zip(VICTIM, v))) for v in victims if v not in compared]
    victims = [v for v in victims if v in compared]
    if not suite:
        return {"facts": facts, "suite": [], "eps": [], "victims": [], "defenses": [], "chart": "",
                "legend": [], "conventions": {k: facts[k] for k in TABLE_CONVENTIONS if facts[k]},
                "left_out": [], "note": "no untargeted attack was run on every victim: no common suite"}
    eps_values = [float(e) for e in eps_keys]
    rows = [_victim_curve(v, by_victim[v], clean, _victim_cells(ok, facts, v), suite, eps_keys, ap_of)
            for v in victims]
    rows.sort(key=lambda r: (0 if isnum(r["area"]) else 1, -(r["area"] if isnum(r["area"]) else 0),
                             -(r["clean"] if isnum(r["clean"]) else 0)))
    for i, r in enumerate(rows, 1):
        r["rank"] = i if isnum(r["area"]) else None
        r["area_text"] = fmt_metric("map", r["area"])
    all_per_query = all(r["area_kind"] == "per-query" for r in rows)
    series = curve_series(rows)
    return {"facts": facts, "suite": suite, "eps": [fmt_epsilon(e) for e in eps_values], "victims": rows,
            "eps_range": f"{fmt_epsilon(eps_values[0])} – {fmt_epsilon(eps_values[-1])}" if eps_values else "",
            "ranked_by": "per-query worst-case area" if all_per_query else
                         "area (per-query worst case where recorded, else worst of the means: see each row)",
            "defenses": defense_gains(rows), "conventions": {k: facts[k] for k in TABLE_CONVENTIONS if facts[k]},
            "chart": plots.line_chart(series, "ε (×1/255)", "mAP", xlog=False, xmin=0.0) if eps_values else "",
            "legend": [{"label": s["label"], "color": s["color"], "dashed": bool(s["dash"])} for s in series],
            "note": "", "left_out": left_out}


def _victim_curve(v: tuple, g: pd.DataFrame, clean: pd.DataFrame, vcells: pd.DataFrame, suite: list[str],
                  eps_keys: list[str], ap_of: APLookup) -> dict:
    """One victim's row: clean mAP, and per ε the worst of the means and the per-query worst case."""
    vc = clean[(clean[VICTIM] == pd.Series(v, index=VICTIM)).all(axis=1)]
    clean_map = float(vc["map"].mean()) if len(vc) and vc["map"].notna().any() else np.nan
    points, missing_records = [], []
    for e in eps_keys:
        at = g[(g["eps_key"] == e) & g["attack_label"].isin(suite)]
        per_attack = at.groupby("attack_label")["map"].min()  # of two configurations under one label, the worse
        aps = []
        for a in suite:
            keys = vcells.loc[(vcells["attack_label"] == a) & (vcells["eps_key"] == e), "cell_key"]
            found = [x for x in (ap_of(k) for k in sorted(set(keys))) if x is not None]
            if not found:
                missing_records.append(f"{a} ε {fmt_epsilon(float(e))}")
                continue
            aps.append(np.mean(found, axis=0) if len({len(x) for x in found}) == 1 else None)  # seeds: mean per query
        per_query = np.nan
        if len(aps) == len(suite) and all(x is not None for x in aps) and len({len(x) for x in aps}) == 1:
            per_query = float(np.nanmean(np.fmin.reduce(np.stack(aps))))
        points.append({"eps": float(e), "eps_text": fmt_epsilon(float(e)), "worst_mean": float(per_attack.min()),
                       "worst_attack": per_attack.idxmin(), "per_query": per_query})
    eps_values = [float(e) for e in eps_keys]
    pq_area = trapezoid_mean(eps_values, [p["per_query"] for p in points])
    mean_area = trapezoid_mean(eps_values, [p["worst_mean"] for p in points])
    return {"victim": dict(zip(VICTIM, v)), "clean": clean_map, "clean_text": fmt_metric("map", clean_map),
            "points": points, "area_per_query": pq_area, "area_worst_mean": mean_area,
            "area": pq_area if isnum(pq_area) else mean_area,
            "area_kind": "per-query" if isnum(pq_area) else "worst of the means", "missing_records": missing_records,
            "flags": "; ".join(dict.fromkeys(f for f in g["flags"] if f))}


def curve_series(rows: list[dict]) -> list[dict]:
    """Chart lines, one colour per victim: solid per-query worst case, dashed worst of the means, both starting
    at ε 0 from the clean mAP (not part of the area)."""
    series = []
    for i, r in enumerate(rows):
        name = _victim_name(r["victim"])
        start = [(0.0, r["clean"])] if isnum(r["clean"]) else []
        colour = plots.style(i)["color"]
        if all(isnum(p["per_query"]) for p in r["points"]):
            series.append({"label": f"{name} · per-query worst", "color": colour, "dash": "",
                           "points": start + [(p["eps"] * 255, p["per_query"]) for p in r["points"]]})
        series.append({"label": f"{name} · worst of the means", "color": colour, "dash": "6 3",
                       "points": start + [(p["eps"] * 255, p["worst_mean"]) for p in r["points"]]})
    return series


def common_suite(points_of: dict) -> tuple[list[str], set, list[str]]:
    """(the suite, the victims compared over it, the ε keys of the curve) from each victim's (attack, ε key)
    pairs: the attack run on the most victims, those victims, the ε at which all of them have it, and every
    attack all of them have at all those ε. Victims without the first attack are left out (named on the
    page), so no victim is ranked over a different attack set than another, at any ε."""
    counts: dict = {}
    for points in points_of.values():
        for a in {a for a, _ in points}:
            counts[a] = counts.get(a, 0) + 1
    if not counts:
        return [], set(), []
    first = min(counts, key=lambda a: (-counts[a], a))
    compared = {v for v, points in points_of.items() if any(a == first for a, _ in points)}
    eps_keys = sorted(set.intersection(*({e for a, e in points_of[v] if a == first} for v in compared)), key=float)
    attacks = set.union(*({a for a, _ in points_of[v]} for v in compared))
    suite = sorted(a for a in attacks if all((a, e) in points_of[v] for v in compared for e in eps_keys))
    return suite, compared, eps_keys


def _victim_name(v: dict) -> str:
    name = f"{v['hashing_label']} {v['backbone']}"
    if v["defense_label"] != "none":
        name += f" + {v['defense_label']}"
    return name + ("" if v["train_data"] == "clean" else f" (trained on {v['train_data']})")


def defense_gains(rows: list[dict]) -> list[dict]:
    """Each defended victim beside its undefended twin: per-ε gain and the clean-mAP cost."""
    plain = {(r["victim"]["hashing_label"], r["victim"]["backbone"], r["victim"]["train_data"]): r
             for r in rows if r["victim"]["defense_label"] == "none"}
    out = []
    for r in rows:
        if r["victim"]["defense_label"] == "none":
            continue
        base = plain.get((r["victim"]["hashing_label"], r["victim"]["backbone"], r["victim"]["train_data"]))
        if base is None:
            continue
        gains = []
        for p, b in zip(r["points"], base["points"]):
            kind = "per_query" if isnum(p["per_query"]) and isnum(b["per_query"]) else "worst_mean"
            gain = p[kind] - b[kind]
            gains.append({"eps_text": p["eps_text"], "gain": gain, "text": f"{gain:+.4f}",
                          "title": f"{'per-query worst case' if kind == 'per_query' else 'worst of the means'}: "
                                   f"{p[kind]:.4f} defended vs {b[kind]:.4f} undefended"})
        cost = base["clean"] - r["clean"] if isnum(base["clean"]) and isnum(r["clean"]) else np.nan
        out.append({"defense": r["victim"]["defense_label"], "victim": _victim_name(base["victim"]), "gains": gains,
                    "cost": cost, "cost_text": f"{cost:+.4f}" if isnum(cost) else "missing",
                    "clean_text": r["clean_text"], "base_clean_text": base["clean_text"]})
    return out


def attack_budget_tables(configs: pd.DataFrame) -> list[dict]:
    """Per table, ε and kind (untargeted / targeted): attacks ranked by damage over common victims, with
    seconds per query beside it and the damage-time scatter with its Pareto front."""
    white = _white_final(configs)
    if not len(white):
        return []
    clean = white[white["attack"] == "none"].set_index(TABLE + VICTIM)
    attacked = white[white["attack"] != "none"]
    tables = []
    for key, t in attacked.groupby(TABLE + ["eps_key", "targeted"], sort=True, dropna=False):
        facts = dict(zip(TABLE + ["eps_key", "targeted"], key))
        metric = "tmap" if facts["targeted"] else "map"
        per_attack: dict = {}
        for c in t.to_dict("records"):
            base_key = tuple(c[k] for k in TABLE + VICTIM)
            if base_key not in clean.index or not isnum(c[metric]):
                continue
            reference = float(clean.loc[[base_key], metric].mean())
            if not isnum(reference):
                continue
            damage = c[metric] - reference if facts["targeted"] else reference - c[metric]
            entry = per_attack.setdefault(c["attack_label"], {"damage": {}, "seconds": [], "prepare": [], "n": [],
                                                              "device": set(), "flags": []})
            entry["damage"][tuple(c[k] for k in VICTIM)] = damage
            entry["seconds"].append(c["seconds_per_image"])
            entry["prepare"].append(c["prepare_seconds"] if isnum(c["prepare_seconds"]) else 0.0)
            entry["n"].append(c["n_query"])
            entry["device"].add(c["device"])
            entry["flags"] += [c["flags"]] if c["flags"] else []
        if not per_attack:
            continue
        common = set.intersection(*(set(e["damage"]) for e in per_attack.values()))
        rows = []
        for name, e in per_attack.items():
            damage = float(np.mean([e["damage"][v] for v in common])) if common else np.nan
            per_image = float(np.nanmean(e["seconds"])) if any(isnum(s) for s in e["seconds"]) else np.nan
            n_query = max(e["n"]) or 1
            amortised = per_image + float(np.mean(e["prepare"])) / n_query if isnum(per_image) else np.nan
            rows.append({"attack": name, "damage": damage, "damage_text": fmt_metric("map", damage),
                         "victims": len(common), "attacked": len(e["damage"]), "per_image": per_image,
                         "per_image_text": fmt_seconds(per_image), "amortised": amortised,
                         "amortised_text": fmt_seconds(amortised), "device": " / ".join(sorted(e["device"])),
                         "rate_text": f"{damage / amortised:.4g}" if isnum(damage) and isnum(amortised)
                         and amortised > 0 else "missing", "flags": "; ".join(dict.fromkeys(e["flags"]))})
        mark_pareto(rows)
        rows.sort(key=lambda r: (0 if isnum(r["damage"]) else 1, -(r["damage"] if isnum(r["damage"]) else 0)))
        for i, r in enumerate(rows, 1):
            r["rank"] = i if isnum(r["damage"]) else None
        eps = np.nan if facts["eps_key"] == "unbounded" else float(facts["eps_key"])
        tables.append({"dataset": facts["dataset_label"], "bits": facts["bits"], "epsilon": fmt_epsilon(eps),
                       "kind": "t-MAP gain" if facts["targeted"] else "mAP drop", "rows": rows,
                       "victims": sorted(_victim_name(dict(zip(VICTIM, v))) for v in common),
                       "conventions": {k: facts[k] for k in TABLE_CONVENTIONS if facts[k]},
                       "chart": plots.scatter_chart(
                           [{"label": r["attack"], "x": r["amortised"], "y": r["damage"], "front": r["pareto"]}
                            for r in rows if isnum(r["damage"]) and isnum(r["amortised"]) and r["amortised"] > 0],
                           "seconds per query incl. preparation (log)",
                           ("t-MAP gain" if facts["targeted"] else "mAP drop") + " (higher: more damage)")})
    return tables


def mark_pareto(rows: list[dict]) -> None:
    """``pareto`` on each row: no other row is at least as damaging and at least as fast, and better in one."""
    valid = [r for r in rows if isnum(r["damage"]) and isnum(r["amortised"])]
    for r in rows:
        r["pareto"] = any(r is v for v in valid) and not any(
            o is not r and o["damage"] >= r["damage"] and o["amortised"] <= r["amortised"]
            and (o["damage"] > r["damage"] or o["amortised"] < r["amortised"]) for o in valid)
