"""Rankings: victims by their worst case at each ε, and ProS-GAN's speed beside DHTA's.

Everything starts from ``configurations``: the points of the store (current code only) averaged over the
seeds of otherwise identical cells, never across conventions, parameters or cut-offs. Only white-box
(surrogate ``self``) attacks on clean-vs-clean retrieval (scenario a2c) rank victims; a victim is hashing
method x backbone x defense x training data, ranked per dataset, code length and evaluation conventions (an
unbounded attack is an ε column of its own, not a table). A value that was not measured is missing (shown as
such), never zero.

* Victims: for each ε, the worst mAP over the untargeted attacks run at that ε and the worst (highest) t-MAP
  over the targeted ones, with the clean mAP beside them. The default order is the worst mAP at the first ε
  column (ties: clean mAP); "k of n" says over how many of the attacks seen at that ε the worst was taken.
  The curves over one common attack suite, and attacks ranked by damage at equal budget, are
  ``leaderboard.robustness``'s.
* ProS-GAN beside DHTA at 2000 iterations: per victim, query set and device that has both.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from leaderboard.store import CONVENTIONS, fmt_epsilon, fmt_metric, fmt_seconds, isnum, parse_flags

CONFIG = ["dataset", "dataset_label", "hashing", "hashing_label", "backbone", "bits", "defense", "defense_label",
          "train_data", "attack", "attack_label", "eps_key", "surrogate", "scenario", "iterations", "targeted",
          *CONVENTIONS, "dataset_params", "hashing_params", "defense_params", "attack_params", "harness_version",
          "map_topk", "tmap_topk"]
VICTIM = ["hashing_label", "backbone", "defense_label", "train_data"]
# epsilon_space ("unbounded" for ProS-GAN-like attacks) is the attack's, shown as its ε column: it splits no table
TABLE_CONVENTIONS = [c for c in CONVENTIONS if c != "epsilon_space"]
TABLE = ["dataset_label", "bits", *TABLE_CONVENTIONS]
AVERAGED = ["map", "tmap", "seconds_per_image", "prepare_seconds", "epsilon"]


def configurations(cells: pd.DataFrame) -> pd.DataFrame:
    """Ok points averaged over the seeds of identical configurations (``seeds``: how many; flags joined)."""
    ok = cells[cells["status"] == "ok"]
    if not len(ok):
        return ok.assign(seeds=pd.Series(dtype=int))
    ok = ok.assign(run_max=ok.groupby("run")["iterations"].transform("max"))
    grouped = ok.groupby(CONFIG, dropna=False, sort=False)
    out = grouped[AVERAGED].mean()
    out["seeds"] = grouped["seed"].nunique()
    out["flags"] = grouped["flags"].agg(lambda f: "; ".join(dict.fromkeys(x for x in f if x)))
    out["n_query"] = grouped["n_query"].max()
    out["device"] = grouped["device"].agg(lambda d: " / ".join(sorted(set(d))))
    out["batch_size"] = grouped["batch_size"].max()
    out["run_iterations"] = grouped["run_max"].max()  # a snapshot's run went on to more iterations
    out["final"] = out["run_iterations"] == out.index.get_level_values("iterations")
    return out.reset_index()


def _eps_order(key: str) -> float:
    return np.inf if key == "unbounded" else float(key)


def victim_tables(configs: pd.DataFrame) -> list[dict]:
    """Per dataset, code length and conventions: victims ranked by worst-case mAP (see the module docstring)."""
    white = configs[(configs["surrogate"] == "self") & (configs["scenario"] == "a2c")] if len(configs) else configs
    tables = []
    if not len(white):
        return tables
    white = white[white["final"]]  # a run's last snapshot stands for the run
    for key, t in white.groupby(TABLE, sort=True, dropna=False):
        clean = t[t["attack"] == "none"]
        attacked = t[t["attack"] != "none"]
        if not len(attacked):
            continue
        eps_keys = sorted(set(attacked["eps_key"]), key=_eps_order)
        columns = []
        for e in eps_keys:
            at = attacked[attacked["eps_key"] == e]
            for targeted, metric in ((False, "map"), (True, "tmap")):
                names = sorted(set(at.loc[at["targeted"] == targeted, "attack_label"]))
                if names:
                    columns.append({"eps_key": e, "targeted": targeted, "metric": metric, "attacks": names,
                                    "title": ("worst (lowest) mAP over the untargeted attacks" if not targeted else
                                              "worst (highest) t-MAP over the targeted attacks")
                                             + f" at ε {fmt_epsilon(np.nan if e == 'unbounded' else float(e))}",
                                    "header": ("worst mAP" if not targeted else "worst t-MAP")
                                              + f" ε {fmt_epsilon(np.nan if e == 'unbounded' else float(e))}"})
        rows = []
        for victim, v in t.groupby(VICTIM, sort=True, dropna=False):
            vc = clean[(clean[VICTIM] == pd.Series(victim, index=VICTIM)).all(axis=1)]
            clean_map = float(vc["map"].mean()) if len(vc) and vc["map"].notna().any() else np.nan
            cells_out = []
            for col in columns:
                pick = v[(v["attack"] != "none") & (v["eps_key"] == col["eps_key"]) & (v["targeted"] == col["targeted"])
                         & v[col["metric"]].notna()]
                worse = max if col["targeted"] else min  # of two configurations under one label, the worse
                seen: dict = {}
                for c in pick.to_dict("records"):
                    held = seen.get(c["attack_label"])
                    if held is None or worse(c[col["metric"]], held[col["metric"]]) == c[col["metric"]]:
                        seen[c["attack_label"]] = c
                missing = [a for a in col["attacks"] if a not in seen]
                if not seen:
                    cells_out.append({"value": np.nan, "text": "missing", "sort": "", "attack": "",
                                      "title": "not measured: no " + ("targeted" if col["targeted"] else "untargeted")
                                               + " attack at this ε on this victim", "missing": True,
                                      "partial": False, "of": "", "flags": ""})
                    continue
                values = {a: c[col["metric"]] for a, c in seen.items()}
                worst = (max if col["targeted"] else min)(values, key=values.get)
                title = f"{col['metric']} under {worst}; over {len(seen)} of {len(col['attacks'])} attack(s)"
                if missing:
                    title += f"; not run on this victim: {', '.join(missing)} (the worst may be optimistic)"
                flags = seen[worst]["flags"]
                cells_out.append({"value": values[worst], "text": fmt_metric(col["metric"], values[worst]),
                                  "sort": f"{values[worst]:.8g}", "attack": worst, "title": title,
                                  "of": f"{len(seen)}/{len(col['attacks'])}", "missing": False,
                                  "partial": bool(missing), "flags": flags})
            flags = "; ".join(dict.fromkeys(f for f in v["flags"] if f))
            rows.append({"victim": dict(zip(VICTIM, victim)), "clean": clean_map,
                         "clean_text": fmt_metric("map", clean_map), "cells": cells_out, "flags": flags,
                         "flag_names": [n for n, _ in parse_flags(flags)], "seeds": int(v["seeds"].max())})
        first = next((i for i, c in enumerate(columns) if not c["targeted"]), 0)
        sign = 1 if columns and columns[first]["targeted"] else -1  # a lower t-MAP is the more robust victim

        def order(r):
            value = r["cells"][first]["value"] if columns else np.nan
            return (0 if isnum(value) else 1, sign * (value if isnum(value) else 0),
                    -(r["clean"] if isnum(r["clean"]) else -1))

        rows.sort(key=order)
        for i, r in enumerate(rows, 1):
            r["rank"] = i if columns and isnum(r["cells"][first]["value"]) else None
        facts = dict(zip(TABLE, key))
        tables.append({"dataset": facts["dataset_label"], "bits": facts["bits"], "columns": columns, "rows": rows,
                       "conventions": {k: facts[k] for k in TABLE_CONVENTIONS if facts[k]},
                       "ranked_by": (columns[first]["header"] + (" (lower is more robust)" if sign > 0 else
                                                                 " (higher is more robust)")) if columns else ""})
    return tables


SLOW, FAST, SLOW_ITERATIONS = "dhta", "prosgan", 2000


def speed_comparison(configs: pd.DataFrame) -> list[dict]:
    """ProS-GAN beside DHTA at 2000 iterations, per victim and device: seconds per query, the factor between
    them, and ProS-GAN's preparation amortised over the cell's queries."""
    if not len(configs):
        return []
    white = configs[(configs["surrogate"] == "self") & (configs["scenario"] == "a2c")]
    slow = white[(white["attack"] == SLOW) & (white["iterations"] == SLOW_ITERATIONS)]
    fast = white[(white["attack"] == FAST) & white["final"]]
    keys = ["device", "dataset_label", "hashing_label", "backbone", "bits", "defense_label", "train_data"]
    rows = []
    both = pd.concat([slow, fast])
    for key, g in both.groupby(keys, sort=True, dropna=False):
        s, f = g[g["attack"] == SLOW], g[g["attack"] == FAST]
        row = dict(zip(keys, key))
        s_sec = float(s["seconds_per_image"].mean()) if len(s) else np.nan
        f_sec = float(f["seconds_per_image"].mean()) if len(f) else np.nan
        prepare = float(f["prepare_seconds"].mean()) if len(f) and f["prepare_seconds"].notna().any() else np.nan
        n_query = int(f["n_query"].max()) if len(f) else 0
        amortised = f_sec + prepare / n_query if isnum(f_sec) and isnum(prepare) and n_query else np.nan
        row.update(
            slow_label=", ".join(sorted(set(s["attack_label"]))) or f"{SLOW} at {SLOW_ITERATIONS} iterations: missing",
            fast_label=", ".join(sorted(set(f["attack_label"]))) or f"{FAST}: missing",
            slow_short=", ".join(sorted(set(s["attack"]))) or "missing",
            fast_short=", ".join(sorted(set(f["attack"]))) or "missing",
            slow=s_sec, fast=f_sec, prepare=prepare, n_query=n_query, amortised=amortised,
            slow_batch=", ".join(str(b) for b in sorted(set(s["batch_size"]))) or "—",
            fast_batch=", ".join(str(b) for b in sorted(set(f["batch_size"]))) or "—",
            slow_eps=", ".join(fmt_epsilon(e) for e in sorted(set(s["epsilon"]))) or "—",
            factor=s_sec / f_sec if isnum(s_sec) and isnum(f_sec) and f_sec > 0 else np.nan,
            factor_amortised=s_sec / amortised if isnum(s_sec) and isnum(amortised) and amortised > 0 else np.nan)
        for k in ("slow", "fast", "prepare", "amortised"):
            row[f"{k}_text"] = fmt_seconds(row[k]) if isnum(row[k]) else "missing"
        for k in ("factor", "factor_amortised"):
            row[f"{k}_text"] = f"×{row[k]:,.0f}" if isnum(row[k]) and row[k] >= 100 else (
                f"×{row[k]:.3g}" if isnum(row[k]) else "missing")
        rows.append(row)
    return rows
