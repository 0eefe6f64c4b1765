"""The Python API: evaluate a model trained elsewhere, load a trained victim, export one.

    import hashbench
    rows = hashbench.evaluate(model, dataset="fashion_mnist", attacks="standard")   # a tidy DataFrame
    victim = hashbench.load_victim(method="dpsh", backbone="smallcnn_fc500", bits=32, grid="default")
    card = hashbench.export_victim("exported/", method="dpsh", backbone="smallcnn_fc500", bits=32, grid="default")

``evaluate`` runs the model as a victim whose training is loading it (``benchmark.external``): the same cells,
stage cache, rows, flags and leaderboard as a trained victim, keyed by the model file's digest (a factory's
source and its checkpoint's; an in-memory module's state dict and class source). ``model`` is a TorchScript
file, ``"module:factory"`` (or ``"path/file.py:factory"``) with ``checkpoint=`` a state dict, or an
``nn.Module``. It maps images in [0, 1], (N, C, H, W), to K real outputs; codes are their signs, K is read
from one forward. The CLI's ``hashbench evaluate`` and ``hashbench export-victim`` call these functions.
"""
from __future__ import annotations

import json
import logging
import tomllib
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from benchmark.plugins import REPO_ROOT, Registry

log = logging.getLogger("hashbench")

SUITE_FOLDER = REPO_ROOT / "grids" / "suites"
DEFAULT_RESULTS, DEFAULT_CACHE = REPO_ROOT / "results", REPO_ROOT / ".cache"


def suite_names() -> list[str]:
    return sorted(p.stem for p in SUITE_FOLDER.glob("*.toml"))


def attack_suite(attacks: str | Sequence[str], registry: Registry) -> list[str]:
    """The attacks of a named suite (``grids/suites/NAME.toml``) or of a comma list, each a known plugin."""
    if isinstance(attacks, str) and (SUITE_FOLDER / f"{attacks}.toml").is_file():
        names = tomllib.loads((SUITE_FOLDER / f"{attacks}.toml").read_text())["attacks"]
    else:
        names = [a.strip() for a in attacks.split(",")] if isinstance(attacks, str) else list(attacks)
        names = [a for a in names if a]
    if not names:
        raise ValueError(f"attacks {attacks!r} names no attack; give a suite ({', '.join(suite_names())}) or a "
                         f"comma list of attack plugins")
    for name in names:
        try:
            registry.get("attacks", name)
        except ValueError as exc:
            raise ValueError(f"{exc}; or a suite: {', '.join(suite_names())}") from None
    return list(dict.fromkeys(names))


def external_registry() -> Registry:
    from benchmark.external.plugins import add_external_plugins

    return add_external_plugins(Registry.discover())


def model_parameters(model, checkpoint: str | Path | None) -> dict[str, str]:
    """The external victim's parameters: where the model is and its digests (``benchmark.external.plugins``)."""
    from benchmark.external.files import ExternalInputError, file_digest, module_digest
    from benchmark.external.model import hold_in_memory
    from benchmark.external.plugins import model_digests

    if isinstance(model, nn.Module):
        if checkpoint:
            raise ExternalInputError("checkpoint= goes with a MODULE:FACTORY model, not with an nn.Module (whose "
                                     "weights are its own)")
        name = hold_in_memory(model, module_digest(model))
        return {"model": name, "checkpoint": "", **model_digests(name)}
    if not isinstance(model, (str, Path)):
        raise ExternalInputError(f"model {model!r} ({type(model).__name__}) is neither a file, MODULE:FACTORY nor "
                                 f"an nn.Module")
    model = str(model)
    if checkpoint:
        module, _, factory = model.rpartition(":")
        if module.endswith(".py"):
            model = f"{Path(module).resolve()}:{factory}"
        checkpoint = str(Path(checkpoint).resolve())
        file_digest(checkpoint, "checkpoint")
    else:
        if not Path(model).is_file() and ":" in model:
            raise ExternalInputError(f"model {model!r} looks like MODULE:FACTORY; give its state dict with "
                                     f"--checkpoint FILE (checkpoint=), or give a TorchScript file")
        model = str(Path(model).resolve()) if Path(model).exists() else model
    return {"model": model, "checkpoint": str(checkpoint or ""), **model_digests(model, str(checkpoint or ""))}


def release_in_memory(model: str) -> None:
    from benchmark.external.model import IN_MEMORY

    IN_MEMORY.pop(model, None)


def probe(params: dict, splits) -> tuple[int, str]:
    """(K, the model's name): one forward of the loaded model on two query images, every output checked."""
    from benchmark.external.model import load_network, model_name, probe_bits

    name = model_name(params["model"])
    net = load_network(params["model"], params["checkpoint"])
    return probe_bits(net, splits.query.load(torch.arange(min(2, len(splits.query)))), name), name


def query_parameters(path: str | Path, splits, epsilon: float | None) -> dict[str, str]:
    """The external attack's parameters, after checking the file against the clean queries and the budget."""
    from benchmark.external.files import file_digest
    from benchmark.external.queries import check_against_queries, read_query_file

    path = str(Path(path).resolve()) if Path(path).exists() else str(path)
    images = read_query_file(path)
    clean = splits.query.load(torch.arange(len(splits.query)))
    check_against_queries(images, clean, epsilon, path)
    return {"queries": path, "queries_sha256": file_digest(path)}


def with_adversarial_queries(cell, path: str | Path, registry: Registry, data_root: str | None = None):
    """``cell`` (of a grid, with a victim trained here) with its attack replaced by the file's queries, attack
    ``external``, after checking the file against the cell's queries and epsilon; ``registry`` gains the plugin."""
    import dataclasses

    from benchmark.external.plugins import add_external_plugins

    add_external_plugins(registry)
    if not cell.epsilon:
        raise ValueError(f"--adversarial-queries needs a cell with an epsilon to check the file against; "
                         f"{cell.describe()} has none (select one with e.g. --only attack=pgd --only epsilon=8/255)")
    splits = registry.get("datasets", cell.dataset).configure(cell.overrides("datasets", cell.dataset)).splits(data_root)
    params = merged(cell.params, {"attacks": {"external": query_parameters(path, splits, cell.epsilon)}})
    return dataclasses.replace(cell, attack="external", params_json=json.dumps(params, sort_keys=True))


def merged(*parts: dict) -> dict:
    from benchmark.planning.grid import merge_params

    out: dict = {}
    for part in parts:
        out = merge_params(out, part)
    return out


def evaluate(model, dataset: str = "fashion_mnist", attacks: str | Sequence[str] = "standard",
             epsilon: float | str = "8/255", *, checkpoint: str | Path | None = None,
             adversarial_queries: str | Path | None = None, queries: int = 0, settings: Sequence[str] = (),
             seed: int = 0, results: str | Path = DEFAULT_RESULTS, cache: str | Path = DEFAULT_CACHE,
             device: str = "auto", data_root: str | None = None, attack_batch: int = 0, force: bool = False,
             claim_timeout: float | None = None):
    """Evaluate ``model`` on ``dataset`` against ``attacks``; the cells' rows (pandas DataFrame, as stored).

    ``queries``: a seeded subset of that many queries (the dataset's ``query_subset``, recorded on the rows);
    ``settings``: ``--set`` strings (``attacks.dhta.iterations=100``); ``adversarial_queries``: a ``.pt`` or
    ``.npy`` file of the queries as the user's own attack left them, scored as the attack ``external``.
    Bad input raises ``ValueError`` (``ExternalInputError``) naming it, before any cell is computed."""
    import pandas as pd

    from benchmark.planning.grid import Cell, check_params, parse_axis_value, parse_settings
    from benchmark.running.runner import Runner
    from benchmark.storage.results import cell_file

    registry = external_registry()
    epsilon = parse_axis_value("epsilon", epsilon)
    names = attack_suite(attacks, registry)
    registry.get("datasets", dataset)
    dataset_params = {"datasets": {dataset: {"query_subset": int(queries)}}} if queries else {}
    user = parse_settings(list(settings))
    params = merged(user, dataset_params)
    check_params(params, registry)
    splits = registry.get("datasets", dataset).configure(params.get("datasets", {}).get(dataset)).splits(data_root)
    victim = model_parameters(model, checkpoint)
    try:
        bits, name = probe(victim, splits)
    except BaseException:
        release_in_memory(victim["model"])
        raise
    params = merged(params, {"hashing": {"external": victim}})
    if adversarial_queries is not None:
        params = merged(params, {"attacks": {"external": query_parameters(adversarial_queries, splits, epsilon)}})
        names.append("external")
    cells = []
    for attack in names:
        plugin = registry.get("attacks", attack)
        bounded = plugin.configure(params.get("attacks", {}).get(attack)).is_bounded()
        cells.append(Cell(dataset=dataset, hashing="external", backbone=name, bits=bits, defense="none",
                          attack=attack, epsilon=(epsilon if bounded else None) if plugin.perturbs else 0.0,
                          surrogate="self", scenario="a2c", seed=int(seed), params_json=json.dumps(params, sort_keys=True)))
    runner = Runner(registry, results, cache, device, data_root, attack_batch, force=force,
                    claim_timeout=claim_timeout)
    log.info("evaluating %s (%d bits) on %s against %s", name, bits, dataset, ", ".join(names))
    try:
        runner.run(cells)
    finally:  # a training script that evaluates every epoch keeps no copy of each epoch's model
        release_in_memory(victim["model"])
    frames = [pd.read_parquet(cell_file(results, runner.cell_key(cell))) for cell in cells
              if cell_file(results, runner.cell_key(cell)).exists()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def summary(rows) -> str:
    """The evaluation's headline, one line per cell: clean or attacked mAP, t-MAP, codes changed, flags."""
    if not len(rows):
        return "(no rows)"
    lines = [f"{'attack':<34} {'epsilon':>8} {'mAP':>7} {'t-MAP':>7} {'changed':>8}  flags / error"]
    for _, cell in rows.groupby("cell_key", sort=False):
        first = cell.iloc[0]
        final = cell[cell["iterations"] == cell["iterations"].max()] if first["status"] == "ok" else cell

        def value(metric: str, final=final) -> str:
            found = final.loc[final["metric"] == metric, "value"]
            return f"{found.iloc[0]:.4f}" if len(found) else "-"

        epsilon = "-" if first["epsilon"] != first["epsilon"] or not first["epsilon"] else f"{first['epsilon'] * 255:.3g}/255"
        note = first["error"] if first["status"] != "ok" else first["flags"]
        lines.append(f"{first['attack_label'][:34]:<34} {epsilon:>8} {value('map'):>7} {value('tmap'):>7} "
                     f"{value('changed_codes'):>8}  {note}")
    return "\n".join(lines)


# ------------------------------------------------------------------ trained victims in a stage cache

def victim_cell(registry: Registry, method: str, backbone: str, bits: int, dataset: str, defense: str, seed: int,
                train_data: str, grid: str | None, settings: Sequence[str]):
    """The cell (attack ``none``) whose victim is the one asked for: the grid's own cell when a grid is given
    (its parameters, e.g. a query subset or shortened training, are part of the victim's key)."""
    from benchmark.planning.grid import Cell, check_params, expand, load_preset, parse_settings

    params = parse_settings(list(settings))
    check_params(params, registry)
    if grid is None:
        return Cell(dataset=dataset, hashing=method, backbone=backbone, bits=int(bits), defense=defense,
                    attack="none", epsilon=0.0, surrogate="self", scenario="a2c", seed=int(seed),
                    params_json=json.dumps(params, sort_keys=True), train_data=train_data)
    filters = {"hashing": {method}, "backbone": {backbone}, "bits": {int(bits)}, "dataset": {dataset},
               "defense": {defense}, "seed": {int(seed)}, "train_data": {train_data}}
    cells = expand(load_preset(grid), registry, filters, params)
    import dataclasses

    return dataclasses.replace(cells[0], attack="none", epsilon=0.0, surrogate="self", scenario="a2c")


def describe_cached_victims(cache: Path, results: Path | None) -> list[str]:
    """One line per victim in the cache: its identity from the result store's rows when they name it."""
    described = {}
    if results is not None and Path(results).is_dir():
        from leaderboard.store import read_results

        frame, _ = read_results(results)
        if len(frame):
            for row in frame.drop_duplicates("victim_key").itertuples():
                described[row.victim_key] = (f"{row.dataset} {row.hashing_label} {row.backbone} {row.bits} bits "
                                             f"defense {row.defense_label} seed {row.seed}")
    lines = []
    for path in sorted((cache / "victims").glob("*.pt")):
        lines.append(f"{path.stem}: {described.get(path.stem, '(no row in the result store names it)')}")
    return lines


def load_victim(cache: str | Path = DEFAULT_CACHE, *, method: str, backbone: str, bits: int,
                dataset: str = "fashion_mnist", defense: str = "none", seed: int = 0, train_data: str = "clean",
                grid: str | None = None, settings: Sequence[str] = (), data_root: str | None = None,
                results: str | Path | None = DEFAULT_RESULTS, with_plan: bool = False):
    """The trained victim (a frozen ``HashModel`` in eval mode) of that method, backbone, bits, dataset,
    defense and seed, from the stage cache; never trains one. LookupError listing the cache's victims (named
    from ``results``'s rows) when it is not there. ``grid``: the preset whose cell trained it."""
    from benchmark.planning.plan import Planner
    from benchmark.storage.cache import StageCache
    from benchmark.victim.model import build_victim
    from benchmark.victim.train import freeze

    registry = Registry.discover()
    cell = victim_cell(registry, method, backbone, bits, dataset, defense, seed, train_data, grid, settings)
    planner = Planner(registry, data_root)
    plan = planner.victim(cell, cell.hashing, cell.backbone, cell.bits, cell.defense, cell.train_data)
    stored = StageCache(cache).load("victims", plan.key)
    if stored is None:
        there = describe_cached_victims(Path(cache), results)
        raise LookupError(f"no trained victim {plan.label()} on {dataset} (seed {seed}"
                          f"{', grid ' + grid if grid else ''}) in {cache}/victims (key {plan.key}: the current code "
                          f"and parameters); it holds {len(there)}" + (":\n  " + "\n  ".join(there) if there else "")
                          + "\n(train it with `hashbench run`; a victim trained by a grid needs grid= for its "
                            "parameters, and one trained by older code has another key)")
    shape, training = planner.dataset(cell)[1]["training"]["shape"], planner.dataset(cell)[1]["training"]
    model = build_victim(backbone, int(bits), shape[0], shape[1], tuple(training["mean"]), tuple(training["std"]))
    model.load_state_dict(stored["state"])
    freeze(model)
    return (model, cell, plan) if with_plan else model


class Logits(nn.Module):
    """A victim's real outputs y (N, K) for images in [0, 1]: what an exported file computes."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.logits(x)


def traced(model: nn.Module, session, plan) -> torch.jit.ScriptModule:
    """The victim's ``logits`` traced on two of its queries, checked against the model on three others (another
    batch size: a trace that kept the example's batch size fails here)."""
    from benchmark.cell import dataset_splits

    queries = dataset_splits(plan, session).query
    images = queries.load(torch.arange(min(5, len(queries))))
    with torch.no_grad():
        module = torch.jit.trace(Logits(model), images[:2], check_trace=False)
        if not torch.equal(module(images[2:]), model.logits(images[2:])):
            raise RuntimeError(f"the traced victim {plan.victim.label()} differs from the victim on other images; "
                               f"it cannot be exported as TorchScript")
    return module


def export_victim(out: str | Path, cache: str | Path = DEFAULT_CACHE, *, method: str, backbone: str, bits: int,
                  dataset: str = "fashion_mnist", defense: str = "none", seed: int = 0, train_data: str = "clean",
                  grid: str | None = None, settings: Sequence[str] = (), data_root: str | None = None,
                  results: str | Path = DEFAULT_RESULTS, device: str = "cpu") -> dict:
    """Write a cached victim as ``out/<name>.pt`` (TorchScript: images in [0, 1] -> K real outputs) and
    ``out/<name>.json`` (its card: method, backbone, bits, dataset, split, clean mAP, commit, keys); the card.

    The clean mAP is the victim's ``none`` cell on its own split, computed (or read) through the runner, so
    ``hashbench evaluate`` of the exported file on the same split gives the same number."""
    import pandas as pd

    from benchmark.external.files import file_digest
    from benchmark.running.environment import git_commit
    from benchmark.running.runner import Runner
    from benchmark.storage.results import cell_file

    model, cell, plan = load_victim(cache, method=method, backbone=backbone, bits=bits, dataset=dataset,
                                    defense=defense, seed=seed, train_data=train_data, grid=grid, settings=settings,
                                    data_root=data_root, results=results, with_plan=True)
    registry = Registry.discover()
    runner = Runner(registry, results, cache, device, data_root)
    runner.run([cell])
    cell_plan = runner.plan(cell)
    rows = pd.read_parquet(cell_file(results, cell_plan.key))
    clean = rows[(rows["metric"] == "map") & (rows["status"] == "ok")]
    if not len(clean):
        raise RuntimeError(f"the clean cell of {plan.label()} failed: {rows['error'].iloc[0]}")
    scripted = traced(model.cpu(), runner.session, cell_plan)
    name = f"{dataset}-{plan.label().replace('/', '-').replace('+', '-').replace(' ', '_')}-seed{seed}"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.jit.save(scripted, str(out / f"{name}.pt"))
    identity = cell_plan.data_identity
    card = {"file": f"{name}.pt", "sha256": file_digest(out / f"{name}.pt"), "format": "torchscript (torch.jit.trace): "
            "images in [0, 1] (N, C, H, W) -> K real outputs (N, K); codes are their signs",
            "method": method, "hashing_label": rows["hashing_label"].iloc[0],
            "hashing_params": json.loads(rows["hashing_params"].iloc[0]), "backbone": backbone, "bits": int(bits),
            "defense": defense, "train_data": train_data, "seed": int(seed), "dataset": dataset,
            "dataset_params": identity.get("params", {}), "split": identity["split"],
            "n_query": identity.get("n_query"), "n_database": identity.get("n_database"),
            "n_train": identity.get("n_train"), "image_shape": identity["training"]["shape"],
            "clean_map": float(clean["value"].iloc[0]), "clean_cell_key": cell_plan.key,
            "conventions": cell_plan.conventions.as_dict(), "victim_key": plan.key, "commit": git_commit(),
            "torch": torch.__version__, "grid": grid or "",
            "evaluate": f"hashbench evaluate --model {name}.pt --dataset {dataset} --attacks none" + "".join(
                f" --set datasets.{dataset}.{k}={v}" for k, v in identity.get("params", {}).items()
                if k in cell.overrides("datasets", dataset))}
    (out / f"{name}.json").write_text(json.dumps(card, indent=2) + "\n")
    return card
