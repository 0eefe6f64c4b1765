"""One grid cell, start to finish: ``run_cell(plan, workspace) -> rows``.

This is the unit of work that the local loop and the Ray executor both run. Its stages:

1. the split and the victim (and the surrogate, when another model crafts the attack);
2. the queries' adversarial images: the attack is prepared once per surrogate (learned state cached), then
   perturbs the queries (``benchmark.attacking``); a data protection instead releases protected queries
   and/or database by the cell's scenario (c2c, c2a, a2c, a2a);
3. scoring: mAP and t-MAP at the dataset's cut-off and the papers' (whole database, 1000, 5000), tie-aware
   variants, precision@N and PR curves; snapshot runs are scored at each milestone, the codes an attack
   aimed at (an anchor or prototype code) as queries of their own;
4. sanity flags (``benchmark.flags``) and the rows, one per metric.
"""
from __future__ import annotations

import json
import math
import time

import torch

from benchmark import flags, search
from benchmark.attack import AttackContext
from benchmark.attacking import AttackOutcome, Kept, PerturbationStatistics, attack_queries, prepare, synchronize
from benchmark.cache import content_key
from benchmark.evaluation import evaluate_queries
from benchmark.gallery import GALLERY_TOP, gallery_queries, gallery_record
from benchmark.plan import ATTACK_CODE, EXTRA_CUTOFFS, TARGET_CODE, CellPlan, code_hash
from benchmark.targets import draw_target_labels
from benchmark.victims import Victim, Workspace, model_checksum


def run_cell(plan: CellPlan, ws: Workspace) -> list[dict]:
    """Compute one cell; every row carries the cell's identity, conventions, flags and environment."""
    cell = plan.cell
    splits = ws.splits(plan.victim.dataset, plan.data_identity["split"])
    victim = ws.victim(plan.victim)
    targets = target_labels(plan, ws)
    attack = None if plan.protection is not None else plan.attack.configure(ws.registry)
    stored = ws.cache.load("attacks", plan.attack_key)
    if stored is None:  # the attack stage is cached apart, so a change to scoring alone re-scores, never re-attacks
        if plan.protection is not None:
            outcome, prepare_seconds = release(plan, ws, victim), 0.0
        else:
            outcome, prepare_seconds = attack_cell(plan, ws, victim, targets)
        stored = {"outcome": outcome, "prepare_seconds": prepare_seconds}
        ws.cache.save("attacks", plan.attack_key, stored)
    outcome, prepare_seconds = stored["outcome"], stored["prepare_seconds"]
    database_codes, changed = released_database(plan, ws, victim, outcome)
    ws.stage("searching the database and scoring")
    scoring_started = time.perf_counter()
    cutoffs = (splits.topk, *EXTRA_CUTOFFS)
    database_labels = splits.database.labels.to(ws.device)
    metrics, per_query = [], {}
    for iteration, codes in sorted(outcome.codes.items()):
        final = iteration == outcome.final_iterations
        scored = evaluate_queries(codes.to(ws.device), database_codes.to(ws.device), splits.query.labels, targets,
                                  database_labels, cutoffs, plan.conventions, curves=final)
        metrics += [{**row, "iterations": iteration} for row in scored.rows]
        per_query = scored.per_query if final else per_query
    # the codes an attack aimed at live in its model's Hamming space: a surrogate's, in a transfer cell
    if outcome.target_codes:
        attacker_database = ws.victim(plan.surrogate).database_codes if plan.surrogate else database_codes
    for name, codes in outcome.target_codes.items():
        scored = evaluate_queries(codes.to(ws.device), attacker_database.to(ws.device), splits.query.labels, targets,
                                  database_labels, cutoffs, plan.conventions, curves=False)
        metrics += [{**row, "metric": f"{name}_{row['metric']}", "iterations": outcome.final_iterations}
                    for row in scored.rows]
    score_seconds = time.perf_counter() - scoring_started
    metrics += perturbation_rows(outcome.perturbation, outcome.final_iterations)
    for iteration, perturbation in outcome.snapshot_perturbation.items():  # HAG Table II: per snapshot
        metrics += perturbation_rows(perturbation, iteration)
    metrics += [{"metric": name, "value": value, "iterations": outcome.final_iterations} for name, value in (
        ("seconds_per_image", outcome.seconds / len(splits.query)), ("prepare_seconds", prepare_seconds),
        ("score_seconds", score_seconds), ("changed_codes", changed))]
    perturbation = outcome.perturbation
    uses_protection = plan.protection is not None and (cell.scenario != "c2c" or cell.train_data == "protected")
    trained = flags.training_flags(victim.train_info) + (
        flags.training_flags(ws.protection_info(plan.protection)) if uses_protection else [])
    cell_flags = flags.victim_flags(victim.diagnostics) + trained + flags.cell_flags(
        perturbs=attack.perturbs if attack else cell.scenario != "c2c", changed_share=changed,
        violations=perturbation["violations"],
        unreachable_targets=flags.unreachable_targets(targets, splits.database.labels), n_queries=len(targets))
    ws.cache.save("cells", plan.key, {"adversarial_codes": outcome.codes[outcome.final_iterations],
                                      "target_labels": targets, "average_precision": per_query})
    if outcome.gallery:
        ws.cache.save("gallery", plan.key, gallery(plan, ws, victim, outcome, database_codes, targets,
                                                   attack.targeted if attack else False))
    base = base_row(plan, ws, victim, attack, "; ".join(cell_flags))
    return [{**base, "topk": 0, "recall": math.nan, **m} for m in metrics]


def gallery(plan: CellPlan, ws: Workspace, victim: Victim, outcome: AttackOutcome, database_codes: torch.Tensor,
            targets: torch.Tensor, targeted: bool) -> dict:
    """The leaderboard gallery's record: a few seeded queries, clean and attacked, and what each retrieves."""
    splits = ws.splits(plan.victim.dataset)
    index = outcome.gallery["index"]
    adversarial = outcome.codes[outcome.final_iterations][index]
    database = database_codes.to(ws.device)
    clean_top, _ = search.rank(victim.query_codes[index.to(victim.query_codes.device)].to(ws.device), database,
                               GALLERY_TOP, backend=plan.conventions.backend)
    adversarial_top, _ = search.rank(adversarial.to(ws.device), database, GALLERY_TOP,
                                     backend=plan.conventions.backend)
    return gallery_record(outcome.gallery["clean"], outcome.gallery["adversarial"], splits.query.labels[index],
                          clean_top.cpu(), adversarial_top.cpu(), splits.database, splits.database.labels,
                          query_index=index, target_labels=targets[index] if targeted else None,
                          epsilon=math.nan if plan.cell.epsilon is None else plan.cell.epsilon)


def attack_seed(cell) -> int:
    """The seed of an attack's random draws (random starts, anchor picks), from the cell's identity and seed.

    Not from the cell key: editing code or parameters must not change the draws, so a rerun after an edit,
    or two schedules of one attack, differ by the change alone.
    """
    identity = content_key(seed=cell.seed, cell=[cell.dataset, cell.hashing, cell.backbone, cell.bits, cell.defense,
                                                 cell.attack, cell.epsilon, cell.surrogate, cell.scenario])
    return int(identity[:12], 16)


def target_labels(plan: CellPlan, ws: Workspace) -> torch.Tensor:
    """One target label per query, drawn once per (split, seed, rule) and shared by every cell of the split."""
    cell = plan.cell
    splits = ws.splits(plan.victim.dataset)
    key = content_key(stage="targets", code=code_hash(TARGET_CODE), split=plan.data_identity["split"],
                      seed=cell.seed, rule=cell.target_rule)
    targets = ws.cache.load("targets", key)
    if targets is None:
        generator = torch.Generator().manual_seed(10_007 + cell.seed)
        targets = draw_target_labels(splits.query.labels, splits.database.labels, generator, cell.target_rule)
        ws.cache.save("targets", key, targets)
    return targets


def attack_cell(plan: CellPlan, ws: Workspace, victim: Victim, targets: torch.Tensor):
    """Prepare the attack on the surrogate, perturb every query; the models must come out unchanged.

    Returns the outcome and the seconds ``prepare`` took (when it ran; cached learned state is reused).
    """
    cell = plan.cell
    splits = ws.splits(plan.victim.dataset)
    surrogate = ws.victim(plan.surrogate) if plan.surrogate else victim
    attack = plan.attack.configure(ws.registry)
    if cell.epsilon is not None:
        attack.epsilon = cell.epsilon
    ctx = AttackContext(model=surrogate.model, database_codes=surrogate.database_codes.clone(),
                        database_labels=splits.database.labels.to(ws.device).clone(), train=splits.train,
                        num_classes=splits.num_classes, bits=plan.attacker.bits, device=ws.device,
                        generator=torch.Generator().manual_seed(attack_seed(cell)),
                        progress=lambda message: ws.stage(f"preparing {attack.label()}: {message}"))
    checksums = [model_checksum(m.model) for m in (victim, surrogate)]
    ws.stage(f"preparing {attack.label()}")
    prepare_key = content_key(stage="prepare", code=code_hash(ATTACK_CODE), victim=plan.attacker.key,
                              attack=[attack.name, attack.prepare_parameters(), plan.attack.source_hash],
                              seed=cell.seed)
    ctx.generator.manual_seed(int(prepare_key[:12], 16))  # what prepare learns depends on its key alone
    prepare_seconds = prepare(attack, ctx, ws.cache, prepare_key)
    ctx.generator.manual_seed(attack_seed(cell))
    outcome = attack_queries(attack, splits.query, targets, cell.epsilon, victim.model, ws.attack_batch, ws.device,
                             ws.stage, keep=gallery_queries(len(splits.query), cell.seed))
    if [model_checksum(m.model) for m in (victim, surrogate)] != checksums:
        raise RuntimeError(f"attack {attack.name} changed the weights of the model it attacked; an attack must not "
                           f"modify the victim or surrogate (work on a copy)")
    return outcome, prepare_seconds


def perturbation_rows(perturbation: dict, iteration: int) -> list[dict]:
    names = {"perceptibility": "perceptibility", "linf": "linf", "linf_mean": "linf_mean", "l2": "l2",
             "violations": "budget_violations"}
    return [{"metric": metric, "value": perturbation[key], "iterations": iteration} for key, metric in names.items()]


def released_database(plan: CellPlan, ws: Workspace, victim: Victim, outcome: AttackOutcome) -> tuple[torch.Tensor, float]:
    """The database codes the cell searches (protected by a protection's c2a/a2a scenario), and the share of
    codes (queries or database items, whichever the cell perturbs) that differ from the clean ones."""
    final = outcome.codes[outcome.final_iterations]
    changed = [float((final != victim.query_codes.cpu()).any(1).float().mean())]
    if plan.protection is None or plan.cell.scenario[2] != "a":
        return victim.database_codes, changed[0]
    database = ws.protected_codes(victim, plan.protection, plan.cell.seed)["database"]
    changed.append(float((database != victim.database_codes.cpu()).any(1).float().mean()))
    return database, max(changed)


@torch.no_grad()
def release(plan: CellPlan, ws: Workspace, victim: Victim) -> AttackOutcome:
    """A protection cell's queries as its scenario releases them (clean, or protected: c2c/c2a vs a2c/a2a)."""
    cell = plan.cell
    splits = ws.splits(plan.victim.dataset)
    protected_queries = cell.scenario[0] == "a"
    codes = ws.protected_codes(victim, plan.protection, cell.seed) if protected_queries else {}
    query_codes = codes["query"] if protected_queries else victim.query_codes.cpu()
    statistics, seconds, kept = PerturbationStatistics(), 0.0, Kept(gallery_queries(len(splits.query), cell.seed))
    released = ws.protected(splits.query, plan.protection) if protected_queries else splits.query
    for x, _, index in splits.query.batches(ws.attack_batch):
        synchronize(ws.device)
        started = time.perf_counter()
        x_released = released.load(index)
        synchronize(ws.device)
        seconds += time.perf_counter() - started
        statistics.add(x, x_released, 0)
        kept.add(index, x, x_released)
    return AttackOutcome({0: query_codes}, {}, statistics.result(), seconds, kept.result())


def base_row(plan: CellPlan, ws: Workspace, victim: Victim | None, attack, cell_flags: str = "") -> dict:
    cell = plan.cell
    method = plan.victim.hashing.configure(ws.registry)
    defense = ws.registry.get("defenses", cell.defense).configure(cell.overrides("defenses", cell.defense))
    attack = attack or plan.attack.configure(ws.registry)
    return {
        "dataset": cell.dataset, "dataset_label": plan.data_identity.get("label", cell.dataset),
        "hashing": cell.hashing, "hashing_label": method.label(), "backbone": cell.backbone, "bits": cell.bits,
        "defense": cell.defense, "defense_label": defense.label(), "train_data": cell.train_data,
        "attack": cell.attack, "attack_label": attack.label(), "targeted": bool(attack.targeted),
        "epsilon": math.nan if cell.epsilon is None else cell.epsilon, "surrogate": cell.surrogate,
        "scenario": cell.scenario, "seed": cell.seed, "status": "ok", "error": "", "flags": cell_flags,
        "iterations": attack.iteration_count(),
        "n_query": plan.data_identity.get("n_query", 0), "n_database": plan.data_identity.get("n_database", 0),
        "n_train": plan.data_identity.get("n_train", 0),
        "target_rule": cell.target_rule, **plan.conventions.as_dict(),
        "epsilon_space": "linf_pixels_0_1" if cell.epsilon is not None else "unbounded",
        "attack_params": json.dumps(attack.params(), sort_keys=True),
        "hashing_params": json.dumps(method.params(), sort_keys=True),
        "defense_params": json.dumps(defense.params(), sort_keys=True),
        "dataset_params": json.dumps(plan.data_identity.get("params", {}), sort_keys=True),
        "batch_size": ws.attack_batch, "cell_key": plan.key, "victim_key": plan.victim.key,
        "train_seconds": float(victim.train_info.get("train_seconds", math.nan)) if victim else math.nan,
        "sources": json.dumps(plan.sources, sort_keys=True),
    }
