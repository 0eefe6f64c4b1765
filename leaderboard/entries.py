"""JSON downloads: each table's twin of its CSV, and one entry per victim (in the spirit of RobustBench's model
entries) with an index.

    tables/<name>.json      the records of tables/<name>.csv, one object per row, numbers as numbers
    victims/<id>.json       one victim (dataset, code length, conventions, method, backbone, defense, training
                            data): its protocol, clean mAP, every attack's result per ε (mAP / t-MAP, iterations,
                            seconds per query, flags, the commands that recompute its cells), the worst case per ε
                            (worst of the means; the per-query worst case and the area where the robustness page
                            computes them), the curve ε -> worst case, and the commit, device and dates of its runs
    victims.json            the index: id, file, victim, clean mAP, area

Every file is written with sorted keys and NaN as null (``jsonable``), so the same store gives the same bytes.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from leaderboard.ranking import TABLE, TABLE_CONVENTIONS, VICTIM
from leaderboard.store import CONVENTIONS, fmt_epsilon, isnum, json_dict, parse_flags

VICTIMS_DIR, VICTIMS_INDEX = "victims", "victims.json"
PROTOCOL_COLUMNS = ["dataset", "dataset_label", "split_fingerprint", "split_variant", "n_query", "n_database",
                    "n_train", "dataset_params"]


def jsonable(value):
    """``value`` as plain JSON data: numpy scalars as Python numbers, NaN and infinities as None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    if value is pd.NaT:
        return None
    return str(value)


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(jsonable(data), sort_keys=True, indent=1, ensure_ascii=False, allow_nan=False) + "\n",
                    encoding="utf-8")


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def typed_records(records: list[dict]) -> list[dict]:
    """``records`` with each column of numbers written as text (a paper's "0.8253", a measured "0.7208")
    as numbers, its empty texts as null; a column with any other value stays as it is."""
    out = [dict(r) for r in records]
    for column in dict.fromkeys(k for r in records for k in r):
        values = [r.get(column) for r in records if r.get(column) is not None]
        texts = [v for v in values if v != ""]
        if not texts or not all(isinstance(v, str) for v in values) or not all(map(_is_number, texts)):
            continue
        whole = all(t.strip().lstrip("-").isdigit() for t in texts)
        for r in out:
            if isinstance(r.get(column), str):
                r[column] = None if r[column] == "" else (int(r[column]) if whole else float(r[column]))
    return out


def json_twin(csv_name: str) -> str:
    """``victims-1-x.csv`` -> ``victims-1-x.json``."""
    return csv_name[:-4] + ".json" if csv_name.endswith(".csv") else csv_name + ".json"


def victim_id(dataset_label: str, bits, conventions: dict, victim: dict) -> str:
    """A file-safe id, readable and unique: the victim's names, then a digest of everything that identifies it."""
    from leaderboard.render import _slug  # the site's one file-name rule

    identity = [dataset_label, int(bits), [conventions.get(k, "") or "" for k in TABLE_CONVENTIONS],
                [victim[k] for k in VICTIM]]
    digest = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:10]
    return _slug(victim["hashing_label"], victim["backbone"], bits, victim["defense_label"],
                 victim["train_data"])[:80] + "-" + digest


def _mean(values) -> float:
    values = [float(v) for v in values if isnum(v)]
    return float(np.mean(values)) if values else math.nan


def _whole(value) -> int | None:
    return int(value) if isnum(value) else None


def _runs(group: pd.DataFrame) -> list[dict]:
    out = []
    for (commit, device, harness), g in group.groupby(["git_commit", "device", "harness_version"], sort=True):
        dates = sorted(d for d in g["created_at"] if d)
        out.append({"git_commit": commit, "device": device, "harness_version": harness, "runs": int(g["run"].nunique()),
                    "first": dates[0] if dates else None, "last": dates[-1] if dates else None})
    return out


def _attack_results(points: pd.DataFrame, commands: dict) -> list[dict]:
    """One result per (attack configuration, ε, surrogate, scenario, iterations): means over seeds."""
    out = []
    keys = ["attack", "attack_label", "targeted", "eps_key", "surrogate", "scenario", "iterations", "attack_params"]
    for key, g in points[points["attack"] != "none"].groupby(keys, sort=True, dropna=False):
        facts = dict(zip(keys, key))
        ok = g[g["status"] == "ok"]
        eps = math.nan if facts["eps_key"] == "unbounded" else float(g["epsilon"].iloc[0])  # the key is rounded
        runs = sorted(set(g["run"]))
        out.append({
            "attack": facts["attack"], "attack_label": facts["attack_label"], "targeted": bool(facts["targeted"]),
            "attack_params": json_dict(facts["attack_params"]), "epsilon": eps, "epsilon_text": fmt_epsilon(eps),
            "surrogate": facts["surrogate"], "scenario": facts["scenario"], "iterations": int(facts["iterations"]),
            "final_snapshot": bool((g["iterations"] == g["run_iterations"]).all()),
            "map": _mean(ok["map"]), "tmap": _mean(ok["tmap"]), "map_topk": _whole(ok["map_topk"].max()),
            "seconds_per_query": _mean(ok["seconds_per_image"]), "prepare_seconds": _mean(ok.get("prepare_seconds", [])),
            "perceptibility": _mean(ok["perceptibility"]), "linf": _mean(ok["linf"]),
            "seeds": sorted(int(s) for s in set(ok["seed"])),
            "flags": [{"name": n, "reason": r} for n, r in dict.fromkeys(
                (n, r) for f in g["flags"] for n, r in parse_flags(f))],
            "errors": sorted(set(e for e in g.loc[g["status"] != "ok", "error"] if e)),
            "cell_keys": sorted(set(k for k in g["cell_key"] if k)),
            "commands": [commands[r]["command"] for r in runs if r in commands],
            "command_caveats": sorted({c for r in runs if r in commands for c in commands[r]["caveats"]})})
    return sorted(out, key=lambda a: (a["epsilon"] if isnum(a["epsilon"]) else math.inf, a["attack_label"],
                                      a["surrogate"], a["scenario"], a["iterations"]))


def _worst_of_means(attacks: list[dict]) -> list[dict]:
    """Per ε: the lowest mAP over the untargeted and the highest t-MAP over the targeted white-box a2c attacks
    (each run's last snapshot)."""
    by_eps: dict = {}
    for a in attacks:
        if a["surrogate"] == "self" and a["scenario"] == "a2c" and a["final_snapshot"]:
            by_eps.setdefault(a["epsilon_text"], {"epsilon": a["epsilon"], "untargeted": [], "targeted": []})[
                "targeted" if a["targeted"] else "untargeted"].append(a)
    out = []
    for text, e in by_eps.items():
        low = [a for a in e["untargeted"] if isnum(a["map"])]
        high = [a for a in e["targeted"] if isnum(a["tmap"])]
        worst = min(low, key=lambda a: a["map"]) if low else None
        strongest = max(high, key=lambda a: a["tmap"]) if high else None
        out.append({"epsilon": e["epsilon"], "epsilon_text": text,
                    "worst_map": worst["map"] if worst else None, "worst_map_attack": worst["attack_label"] if worst
                    else None, "over_untargeted": [a["attack_label"] for a in low],
                    "worst_tmap": strongest["tmap"] if strongest else None,
                    "worst_tmap_attack": strongest["attack_label"] if strongest else None,
                    "over_targeted": [a["attack_label"] for a in high]})
    return sorted(out, key=lambda p: p["epsilon"] if isnum(p["epsilon"]) else math.inf)


def _robustness_of(robust: list[dict]) -> dict:
    """{(table facts..., victim...): robustness-page data of that victim} from ``robustness_tables``."""
    out = {}
    for t in robust:
        for r in t["victims"]:
            key = tuple(t["facts"][k] for k in TABLE) + tuple(r["victim"][k] for k in VICTIM)
            out[key] = {"suite": list(t["suite"]), "eps_range": t["eps_range"], "rank": r["rank"],
                        "area": r["area"], "area_kind": r["area_kind"], "area_per_query": r["area_per_query"],
                        "area_worst_of_means": r["area_worst_mean"], "missing_per_query_records": r["missing_records"],
                        "points": [{"epsilon": p["eps"], "epsilon_text": p["eps_text"],
                                    "per_query_worst": p["per_query"], "worst_of_means": p["worst_mean"],
                                    "worst_attack": p["worst_attack"]} for p in r["points"]]}
    return out


def victim_entries(cells: pd.DataFrame, df: pd.DataFrame, robust: list[dict], commands: dict) -> list[dict]:
    """One entry per victim of the store's points (see the module docstring)."""
    if not len(cells):
        return []
    split = df.drop_duplicates("run").set_index("run")[["split_fingerprint", "split_variant"]] if len(df) else None
    points = cells.assign(run_iterations=cells.groupby("run")["iterations"].transform("max"))
    if split is not None:
        points = points.join(split, on="run")
    robustness = _robustness_of(robust)
    entries = []
    for key, g in points.groupby(TABLE + VICTIM, sort=True, dropna=False):
        facts = dict(zip(TABLE + VICTIM, key))
        victim = {k: facts[k] for k in VICTIM}
        first = g.iloc[0]
        clean = g[(g["attack"] == "none") & (g["status"] == "ok")]
        attacks = _attack_results(g, commands)
        pages = robustness.get(key)
        worst = _worst_of_means(attacks)
        curve = ([{"epsilon": p["epsilon"], "worst_case": p["per_query_worst"] if isnum(p["per_query_worst"])
                   else p["worst_of_means"], "kind": "per-query worst case" if isnum(p["per_query_worst"])
                   else "worst of the means"} for p in pages["points"]] if pages else
                 [{"epsilon": p["epsilon"], "worst_case": p["worst_map"], "kind": "worst of the means"}
                  for p in worst if isnum(p["epsilon"]) and p["worst_map"] is not None])
        clean_runs = sorted(set(clean["run"]))
        protocol = {c: first[c] for c in PROTOCOL_COLUMNS if c in g and str(first[c]) != ""}
        protocol["dataset_params"] = json_dict(first["dataset_params"])
        if protocol.get("split_fingerprint"):  # variant null: a split no registered list is
            protocol["split_variant"] = protocol.get("split_variant") or None
        protocol.update(method=first["hashing"], hashing_params=json_dict(first["hashing_params"]),
                        backbone=first["backbone"], bits=int(first["bits"]), defense=first["defense"],
                        defense_params=json_dict(first["defense_params"]), training_data=first["train_data"],
                        seeds=sorted(int(s) for s in set(g["seed"])), map_cutoff=_whole(clean["map_topk"].max()),
                        conventions={c: first[c] for c in CONVENTIONS if c in g and c != "epsilon_space"},
                        epsilon_spaces=sorted(set(g["epsilon_space"])))
        entry_id = victim_id(facts["dataset_label"], facts["bits"], {k: facts[k] for k in TABLE_CONVENTIONS}, victim)
        entries.append({
            "id": entry_id, "victim": {**victim, "hashing": first["hashing"], "defense": first["defense"],
                                       "dataset_label": facts["dataset_label"], "bits": int(facts["bits"])},
            "protocol": protocol,
            "clean": {"map": _mean(clean["map"]), "tmap": _mean(clean["tmap"]), "seeds": sorted(
                int(s) for s in set(clean["seed"])), "commands": [commands[r]["command"] for r in clean_runs
                                                                  if r in commands]},
            "attacks": attacks, "worst_case": worst,
            "robustness": pages, "curve": curve, "runs": _runs(g)})
    return entries


def write_victim_entries(out: Path, entries: list[dict]) -> dict[str, str]:
    """``victims/<id>.json`` per entry and the index ``victims.json`` (the folder emptied first); returns
    {id: its file, relative to the site}."""
    folder = out / VICTIMS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.json"):
        old.unlink()
    files = {}
    for entry in entries:
        files[entry["id"]] = f"{VICTIMS_DIR}/{entry['id']}.json"
        write_json(out / files[entry["id"]], entry)
    index = [{"id": e["id"], "file": files[e["id"]], "victim": e["victim"], "clean_map": e["clean"]["map"],
              "area": e["robustness"]["area"] if e["robustness"] else None,
              "area_kind": e["robustness"]["area_kind"] if e["robustness"] else None,
              "attacks": len(e["attacks"]), "seeds": e["protocol"]["seeds"]} for e in entries]
    write_json(out / VICTIMS_INDEX, sorted(index, key=lambda x: x["id"]))
    return files
