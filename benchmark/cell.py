"""One grid cell, start to finish: ``run_cell(plan, session) -> rows``, the unit of work of both executors.

Its stages, each a function that takes what it needs and returns what the next one needs:
splits -> victim -> codes -> targets -> attack (or a protection's release) -> scores -> flags -> rows.
Every cached stage keys on its plan (``benchmark.planning.plan``) and goes through
``benchmark.storage.cache.cached``; the scored cell's outputs (per-query AP, adversarial codes, the gallery
record) are saved beside, and its rows are returned for the store.
"""
from __future__ import annotations

import dataclasses
import time

import torch

from benchmark.attack.stage import Attacked, attacked_queries, released_queries, target_labels
from benchmark.data.dataset import Splits
from benchmark.encoding.codes import Codes, clean_codes, released_codes
from benchmark.external.victim import loaded_victim
from benchmark.planning.plan import CellPlan
from benchmark.rows import cell_rows
from benchmark.scoring import flags, search
from benchmark.scoring.evaluate import EXTRA_CUTOFFS, evaluate_queries
from benchmark.scoring.gallery import GALLERY_TOP, gallery_record
from benchmark.session import Session
from benchmark.victim.train import Protection, Trained, trained_protection, trained_victim


def run_cell(plan: CellPlan, s: Session) -> list[dict]:
    """Compute one cell; every row carries the cell's identity, conventions, flags and environment."""
    check_compute(plan, s)
    splits = dataset_splits(plan, s)
    victim = loaded_victim(plan.victim, splits, s) if plan.victim.loaded else trained_victim(plan.victim, splits, s)
    codes = clean_codes(plan.codes, victim, splits, s)
    targets = target_labels(plan.targets, splits, s)
    protection = needed_protection(plan, splits, s)
    if plan.protection is None:
        attacker, attacker_codes = attacker_of(plan, victim, codes, splits, s)
        attacked = attacked_queries(plan.attack, victim, attacker, attacker_codes.database, splits, targets, s)
        database = codes.database
    else:
        released = released_codes(plan.release, victim, protection, splits, s) if plan.release else None
        attacked = released_queries(plan, codes.query, released, protection, splits, s)
        database = released["database"] if plan.cell.scenario[2] == "a" else codes.database
        attacker_codes = Codes(database, codes.query)
    s.stage("searching the database and scoring")
    metrics, per_query = score_attack(plan, attacked, database, attacker_codes.database, splits, targets, s)
    changed = changed_share(attacked, codes, database)
    metrics.append({"metric": "changed_codes", "value": changed, "iterations": attacked.outcome.final_iterations})
    if plan.protection is not None and plan.release is not None and plan.cell.scenario[2] == "a":
        metrics.append({"metric": "released_share", "value": released["database_share"]})  # as drawn, not as asked
    cell_flags = sanity_flags(plan, victim, codes, protection, attacked, changed, targets, splits, s)
    s.cache.save("cells", plan.key, {"adversarial_codes": attacked.outcome.codes[attacked.outcome.final_iterations],
                                     "target_labels": targets, "average_precision": per_query,
                                     "prepare_info": attacked.prepare_info})
    if attacked.outcome.gallery:
        s.cache.save("gallery", plan.key, gallery(plan, victim, codes, attacked, database, targets, splits, s))
    s.cache.save("curves", plan.key, training_records(plan, victim, protection, attacked))
    return cell_rows(plan, metrics, s.registry, attacked.outcome.batch_size or s.attack_batch,
                     victim.info.get("train_seconds", float("nan")), cell_flags)


def check_compute(plan: CellPlan, s: Session) -> None:
    """The plan's keys name the device class and precision settings it computes with: refuse another device's."""
    here = dataclasses.replace(s.compute, precision=plan.compute.precision)
    if plan.compute != here:
        raise RuntimeError(f"{plan.cell.describe()} was planned for {plan.compute.as_dict()} but runs on "
                           f"{here.as_dict()}; plan it on a machine with the device it runs on (--device), so its "
                           f"cache keys say how its numbers were computed")


def dataset_splits(plan: CellPlan, s: Session) -> Splits:
    """The cell's splits (once per process), checked against the fingerprint the grid was planned on."""
    dataset, fingerprint = plan.victim.dataset, plan.data_identity["split"]

    def load() -> Splits:
        splits = dataset.configure(s.registry).splits(s.data_root)
        if splits.fingerprint() != fingerprint:
            raise RuntimeError(f"dataset {dataset.name!r} here differs from the one the grid was planned on "
                               f"(fingerprint {splits.fingerprint()} vs {fingerprint}); the data folders of "
                               f"every machine must hold the same files")
        for files in file_sets(splits):
            files.use_cache(s.cache.root, s.cache.claim_timeout, s.cache.report_wait, s.stage)
        return splits

    return s.memo.get("splits", (dataset.name, dataset.params_json, fingerprint), load)


def file_sets(splits: Splits, roles: tuple[str, ...] = ("query", "database", "train")) -> list:
    """The split's sets read from image files (``FileImages``), each once (a query subset's base included)."""
    found = [getattr(splits, role).file_images() for role in roles]
    return list({id(files): files for files in found if files is not None}.values())


def preprocess_images(plan: CellPlan, s: Session, roles: tuple[str, ...] = ("query", "database", "train")) -> int:
    """Decode the cell's file sets of ``roles`` into the image cache now (the Ray executor's first tasks do this,
    on CPUs, so no GPU task waits for it); returns how many sets it made or found. In-memory sets need nothing."""
    sets = file_sets(dataset_splits(plan, s), roles)
    for files in sets:
        files.preprocess()
    return len(sets)


def needed_protection(plan: CellPlan, splits: Splits, s: Session) -> Protection | None:
    """The cell's protection, when its scenario releases protected images or its victim trained on them."""
    if plan.protection is None or (plan.release is None and plan.cell.train_data != "protected"):
        return None
    return trained_protection(plan.protection, splits, s)


def attacker_of(plan: CellPlan, victim: Trained, codes: Codes, splits: Splits, s: Session) -> tuple[Trained, Codes]:
    """The model the attack is crafted on, with its codes: the victim itself, or the cell's surrogate."""
    if plan.surrogate is None:
        return victim, codes
    surrogate = trained_victim(plan.surrogate, splits, s)
    return surrogate, clean_codes(plan.surrogate_codes, surrogate, splits, s)


def score_attack(plan: CellPlan, attacked: Attacked, database: torch.Tensor, attacker_database: torch.Tensor,
                 splits: Splits, targets: torch.Tensor, s: Session) -> tuple[list[dict], dict]:
    """Metric rows of every snapshot's codes and of the codes the attack aimed at (scored in the attacker's
    Hamming space: a surrogate's, in a transfer cell), then perturbation and timing rows."""
    outcome, started = attacked.outcome, time.perf_counter()
    cutoffs = (splits.topk, *EXTRA_CUTOFFS)
    database_labels = splits.database.labels.to(s.device)

    def scored(codes, against, curves):
        return evaluate_queries(codes.to(s.device), against.to(s.device), splits.query.labels, targets,
                                database_labels, cutoffs, plan.conventions, curves=curves)

    metrics, per_query = [], {}
    for iteration, codes in sorted(outcome.codes.items()):
        final = iteration == outcome.final_iterations
        evaluation = scored(codes, database, curves=final)
        metrics += [{**row, "iterations": iteration} for row in evaluation.rows]
        per_query = evaluation.per_query if final else per_query
    for name, codes in outcome.target_codes.items():
        metrics += [{**row, "metric": f"{name}_{row['metric']}", "iterations": outcome.final_iterations}
                    for row in scored(codes, attacker_database, curves=False).rows]
    score_seconds = time.perf_counter() - started
    metrics += perturbation_rows(outcome.perturbation, outcome.final_iterations)
    for iteration, perturbation in outcome.snapshot_perturbation.items():  # HAG Table II: per snapshot
        metrics += perturbation_rows(perturbation, iteration)
    metrics += [{"metric": name, "value": value, "iterations": outcome.final_iterations} for name, value in (
        ("seconds_per_image", outcome.seconds / len(splits.query)), ("prepare_seconds", attacked.prepare_seconds),
        ("score_seconds", score_seconds))]
    return metrics, per_query


def perturbation_rows(perturbation: dict, iteration: int) -> list[dict]:
    names = {"perceptibility": "perceptibility", "linf": "linf", "linf_mean": "linf_mean", "l2": "l2",
             "violations": "budget_violations", "universal_share": "universal_share",
             "saturated_share": "saturated_share"}
    return [{"metric": metric, "value": perturbation[key], "iterations": iteration} for key, metric in names.items()
            if key in perturbation]


def changed_share(attacked: Attacked, codes: Codes, database: torch.Tensor) -> float:
    """The share of codes (queries, or database items a protection released) that differ from the clean ones."""
    final = attacked.outcome.codes[attacked.outcome.final_iterations]
    changed = float((final != codes.query.cpu()).any(1).float().mean())
    if database is not codes.database:
        changed = max(changed, float((database.cpu() != codes.database.cpu()).any(1).float().mean()))
    return changed


def sanity_flags(plan: CellPlan, victim: Trained, codes: Codes, protection: Protection | None, attacked: Attacked,
                 changed: float, targets: torch.Tensor, splits: Splits, s: Session) -> list[str]:
    attack = plan.attack.attack.configure(s.registry)
    trained = flags.training_flags(victim.info) + (flags.training_flags(protection.info) if protection else [])
    perturbs = attack.perturbs if plan.protection is None else plan.cell.scenario != "c2c"
    generator = attack.learned_generator if plan.protection is None else protection is not None and bool(
        protection.defense.learned_generator)
    perturbation = attacked.outcome.perturbation
    return flags.victim_flags(codes.diagnostics) + trained + flags.cell_flags(
        perturbs=perturbs, changed_share=changed, violations=perturbation["violations"],
        unreachable_targets=flags.unreachable_targets(targets, splits.database.labels), n_queries=len(targets),
        universal_share=perturbation.get("universal_share", float("nan")),
        saturated_share=perturbation.get("saturated_share", float("nan")), learned_generator=generator,
        epsilon=plan.attack.epsilon if plan.protection is None else None,
        linf_mean=perturbation.get("linf_mean", float("nan")))


def training_records(plan: CellPlan, victim: Trained, protection: Protection | None, attacked: Attacked) -> dict:
    """What the cell's trained parts recorded while training (``TrainContext.info``, ``AttackContext.info``):
    the loss curves the curves page draws, by who trained them."""
    records = {f"victim {plan.victim.label()}": victim.info}
    if protection is not None:
        records[f"protection {protection.defense.label()}"] = protection.info
    if attacked.prepare_info:
        records[f"attack {plan.attack.attack.name} prepared on {plan.attacker.label()}"] = attacked.prepare_info
    return {"version": 1, "records": records}


def gallery(plan: CellPlan, victim: Trained, codes: Codes, attacked: Attacked, database: torch.Tensor,
            targets: torch.Tensor, splits: Splits, s: Session) -> dict:
    """The leaderboard gallery's record: a few seeded queries, clean and attacked, and what each retrieves."""
    outcome = attacked.outcome
    index = outcome.gallery["index"]
    adversarial = outcome.codes[outcome.final_iterations][index]
    database = database.to(s.device)
    clean_top, _ = search.rank(codes.query[index.to(codes.query.device)].to(s.device), database, GALLERY_TOP,
                               backend=plan.conventions.backend)
    adversarial_top, _ = search.rank(adversarial.to(s.device), database, GALLERY_TOP, backend=plan.conventions.backend)
    targeted = plan.protection is None and plan.attack.attack.configure(s.registry).targeted
    return gallery_record(outcome.gallery["clean"], outcome.gallery["adversarial"], splits.query.labels[index],
                          clean_top.cpu(), adversarial_top.cpu(), splits.database, splits.database.labels,
                          query_index=index, target_labels=targets[index] if targeted else None,
                          epsilon=float("nan") if plan.cell.epsilon is None else plan.cell.epsilon)
