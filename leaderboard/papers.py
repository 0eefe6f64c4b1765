"""The papers' own numbers (``reference/*.csv``) laid out per paper table, with measured values beside them.

Each paper's conventions live in one explicit table, ``CONVENTIONS`` below: its dataset protocols, mAP
cut-off, AP denominator, zero-relevant rule, target rule, ε per attack, attack schedules and victim
training, each with where the paper states it. A value the paper does not state is either left out (the
paper is silent; nothing is checked) or *assumed* from the code or paper it follows, said so, and then
checked like a stated one, so that the choice between cells is never arbitrary.

Matching a reference row to measured points (status ok, current code: stale runs are never read here):

* same hashing method, defense, code length and metric; the row's backbone, or, on a stand-in dataset,
  ``smallcnn_fc500`` for the paper's default backbone (PPL: its own ``smallcnn``) and ``smallcnn`` for the
  second architecture of a transfer table (``STAND_IN_OTHER_BACKBONE``; ``:scratch`` suffixes aside);
* the same dataset, or its CPU-sized stand-in (``STAND_IN``: the FashionMNIST canvases for the multi-label
  sets, FashionMNIST for the single-label ones), which is never like-for-like;
* attack: the plugin of the row's name (ProS-GAN's "DHTA + FGSM" and "+ I-FGSM" are the ``fgsm_dhta``
  and ``ifgsm_dhta`` plugins, HAG* is ``hag_star``); ``task`` c2c/c2a/a2c/a2a is the cell's ``scenario`` (an empty task a2c; clean queries match
  any scenario); ``iter=N`` requires the point at N iterations (N = 0: the clean cell); PPL's
  ``train_data`` clean/adversarial is the cell's ``train_data`` clean/protected, and its protection (a defense
  plugin here) is read as the row's attack, its own ε and schedule compared (``as_in_the_papers``);
* transfer tables (``source=S,target=T``): S = none is the clean cell, S = T the white-box cell, another
  S the cell crafted on ``surrogate`` = the paper's model S as ``hashing/backbone/bits`` (``MODELS``; on a
  stand-in dataset its backbone becomes the stand-in network). HAG's combined perturbations (r1+r2, ...)
  have no single surrogate and are not matched. Outside transfer tables the surrogate is ``self``, except
  for PPL's protection (its generator is trained on a surrogate of its own).

Candidates are grouped into configurations that differ only in the seed, from the current code, with the
same conventions, parameters and cut-off (``GROUP_BY``); seeds of one configuration are averaged, nothing
else is. Each configuration is compared with the paper's conventions; the shown one is the best (real
dataset before stand-in, then fewest differences, the paper's own scenario, more seeds, the newest), and it
is marked ≡ (like-for-like) only when nothing differs. Its title lists what differs, what was assumed and
what the paper does not state. Timing rows are never ≡: hardware, batch size and data loading differ from
the paper's; they show the device and batch size.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from leaderboard.store import CONVENTIONS as CONVENTION_COLUMNS
from leaderboard.store import CUTOFF_METRICS, fmt_epsilon, fmt_topk, isnum, json_dict, parse_flags, scalar_rows

PAPERS = {"ppl": "PPL — Proactive Privacy-preserving Learning (AAAI 2021)",
          "prosgan": "ProS-GAN (CVPR 2021)",
          "hag": "HAG — Adversarial Examples for Hamming Space Search (IEEE TCYB)",
          "cgat": "CgAT (WWW 2023)"}
UNIT_SCALE = {"x1e-2": 100.0, "x1e-3": 1000.0}
SCENARIOS = {"c2c", "c2a", "a2c", "a2a"}
FIELDS = ["dataset", "hashing", "backbone", "bits", "train_data", "defense", "attack", "task", "metric", "unit"]
COLUMNS = ["paper", "table", *FIELDS[:-2], "metric", "value", "unit", "note"]
TRAIN_DATA = {"clean": "clean", "adversarial": "protected", "": "clean"}
ANY_SURROGATE_ATTACKS = {"ppl"}
PROTECTIONS_IN_ATTACK_COLUMN = {"ppl"}  # defense plugins that a paper's table lists as the attack (as_in_the_papers)
UNMATCHED_METRICS = {"iterations", "map_gain_vs_atrdh"}  # the paper's settings or derived numbers, not measurements
TIMING_METRICS = {"seconds_per_image", "prepare_seconds", "score_seconds"}
# the t-MAP of a target code itself: no perturbation, so no ε or schedule to compare
CODE_METRICS = {"anchor_code_tmap", "prototype_code_tmap", "anchor_code_map", "prototype_code_map"}
TARGET_METRIC = re.compile(r"^(t|anchor_code_t|prototype_code_t)")
# CPU-sized stand-ins for the papers' datasets: never like-for-like, always said so
STAND_IN = {"flickr25k": "fashion_mnist_canvas", "nuswide": "fashion_mnist_canvas", "mscoco": "fashion_mnist_canvas",
            "unknown": "fashion_mnist_canvas", "cifar10": "fashion_mnist", "imagenet13": "fashion_mnist"}
STAND_IN_BACKBONE = "smallcnn_fc500"  # the paper's default backbone, on a stand-in dataset (the default grid's net)
STAND_IN_PAPER_BACKBONE = {"ppl": "smallcnn"}  # PPL's own FashionMNIST network stands for its ResNet-50
# a second backbone of a paper's transfer tables, on a stand-in dataset: PPL's two-convolution network stands
# for the other architecture, so that cross-backbone transfer has a measured (never like-for-like) value
STAND_IN_OTHER_BACKBONE = {"prosgan": {"alexnet": "smallcnn"}, "hag": {"vgg19": "smallcnn"}}
# the label count of each dataset plugin (``num_classes``; tests check these against the plugins)
PLUGIN_LABELS = {"fashion_mnist": 10, "fashion_mnist_mosaic": 10, "fashion_mnist_canvas": 20, "cifar10": 10,
                 "imagenet13": 13, "imagenet100": 100, "flickr25k": 38, "nuswide": 21, "mscoco": 80}
# what a configuration is: points that differ in nothing here are seeds of one configuration
GROUP_BY = ["dataset", "dataset_label", "hashing_label", "backbone", "bits", "defense_label", "train_data",
            "attack_label", "eps_key", "surrogate", "scenario", "iterations", "topk", *CONVENTION_COLUMNS,
            "dataset_params", "hashing_params", "defense_params", "attack_params", "harness_version"]


# ---------------------------------------------------------------- the conventions table

@dataclass(frozen=True)
class Said:
    """A convention value and where the paper says it; ``assumed``: the paper is silent, ``where`` says why."""
    value: object
    where: str
    assumed: bool = False

    def at(self, dataset: str):
        """The value for ``dataset`` when it depends on the dataset (a dict), else the value."""
        return self.value.get(dataset) if isinstance(self.value, dict) else self.value


def assumed(value, why: str) -> Said:
    return Said(value, why, assumed=True)


@dataclass(frozen=True)
class Protocol:
    """A paper's query/database/training split; None = not stated."""
    n_query: int | None
    n_train: int | None
    n_database: int | None
    labels: int | None
    where: str


UNBOUNDED = "unbounded"


@dataclass(frozen=True)
class Conventions:
    paper: str
    datasets: dict[str, Protocol]
    topk: Said | None                          # mAP / t-MAP cut-off, 0 = whole database
    ap_denominator: Said | None                # relevant_in_top_k | relevant_in_database
    zero_relevant: Said | None                 # count_as_zero | exclude
    target_rule: Said | None                   # disjoint | different | any (targeted attacks only)
    epsilon: dict[str, Said]                   # per attack (a float, or UNBOUNDED)
    schedule: dict[str, dict[str, Said]]       # per attack: attack_params that must hold
    victim: dict[str, Said]                    # hashing_params that must hold (any method)
    pretrained: Said | None                    # backbone initialised from ImageNet weights
    default_backbone: dict[str, str]           # per dataset: the paper's default (stood in for by STAND_IN_BACKBONE)
    models: dict[str, tuple[str, str, int]]    # transfer tables: the paper's model names -> (hashing, backbone, bits)
    aliases: dict[str, tuple[str, dict]] = field(default_factory=dict)  # row attack -> (plugin, params that define it)
    defense: dict[str, dict[str, Said]] = field(default_factory=dict)   # per defense: defense_params that must hold
    surrogate_bits: dict[str, Said] = field(default_factory=dict)       # per attack: code length of its own surrogate
    unknown: dict[str, Said] = field(default_factory=dict)              # dataset 'unknown': its assumed identity
    silent: tuple[str, ...] = ()                # what the paper does not state (shown in every title)


E8 = 8 / 255
CONVENTIONS: dict[str, Conventions] = {
    "hag": Conventions(
        paper="hag",
        datasets={
            "mscoco": Protocol(200, 10_000, None, 80, "Sec. IV-A: 122,218 images, 10,000 train, 200 test queries"),
            "flickr25k": Protocol(200, 5_000, None, 24, "Sec. IV-A: 25,000 images with 24 labels, 5,000 train, "
                                                        "200 test queries"),
            "nuswide": Protocol(200, 5_000, None, 10, "Sec. IV-A: the 10 most popular concepts, 5,000 train, "
                                                      "200 test queries"),
        },
        topk=Said(1000, "Sec. IV-B: V = 1000"),
        ap_denominator=Said("relevant_in_database", "Sec. IV-B Eq. 13: N = relevant examples in the database"),
        zero_relevant=None,
        target_rule=None,
        epsilon={"hag": Said(0.039, "Sec. IV-C: 0.039 for images in [0, 1]"),
                 "hag_star": Said(0.039, "Sec. IV-C")},
        schedule={"hag": {"iterations": Said(2000, "Sec. IV-C"),
                          "learning_rate": Said(500 / 255 ** 2, "Sec. IV-C: SGD, learning rate 500 on [0, 255] "
                                                                 "pixels, 500/255² on [0, 1]"),
                          "momentum": Said(0.9, "Sec. IV-C"), "threshold": Said(0.5, "Sec. IV-F: t = 0.5")},
                  "hag_star": {"iterations": Said(2000, "Sec. IV-C"),
                               "learning_rate": Said(500 / 255 ** 2, "Sec. IV-C, as HAG"),
                               "momentum": Said(0.9, "Sec. IV-C")}},
        victim={"optimizer": Said("sgd", "Sec. IV-C: mini-batch SGD with momentum"),
                "momentum": Said(0.9, "Sec. IV-C"), "batch_size": Said(24, "Sec. IV-C"),
                "lr": Said(0.001, "Sec. IV-C: fixed at 0.001")},
        pretrained=Said(True, "Sec. IV-C: first 15 layers fine-tuned from ImageNet"),
        default_backbone={"mscoco": "vgg16", "flickr25k": "vgg16", "nuswide": "vgg16"},
        models={"DPH-VGG16": ("dph", "vgg16", 32), "DPH-VGG16*": ("dph", "vgg16", 64),
                "DPH-VGG19": ("dph", "vgg19", 32), "DPH-VGG19*": ("dph", "vgg19", 64),
                "HashNet-ResNet50": ("hashnet", "resnet50", 32), "HashNet-ResNet50*": ("hashnet", "resnet50", 64)},
        silent=("victim training epochs", "zero-relevant rule"),
    ),
    "prosgan": Conventions(
        paper="prosgan",
        datasets={
            "flickr25k": Protocol(1_700, 5_000, 23_300, 38, "Sec. 4.1: 25,000 images, 38 classes, 1,700 queries, "
                                                            "5,000 train from the database"),
            "nuswide": Protocol(2_100, 10_500, None, 21, "Sec. 4.1: 195,834 images of the 21 most frequent concepts, "
                                                         "2,100 queries, 10,500 train"),
            "mscoco": Protocol(5_000, 10_000, 117_218, 80, "Sec. 4.1: 122,218 images, 5,000 queries, 10,000 train"),
        },
        topk=Said(0, "Sec. 4.2: t-MAP on all retrieved images"),
        ap_denominator=None,  # over the whole database the two denominators agree
        zero_relevant=assumed("count_as_zero", "paper silent; its code's CalcMap counts such a query as 0 (spec 6.2)"),
        target_rule=Said("any", "Sec. 4.2: a randomly selected label, no exclusion stated (code: any database "
                                "label vector); the harness draws 'disjoint' or 'different' only"),
        epsilon={"p2p": Said(E8, "Sec. 4.2"), "dhta": Said(E8, "Sec. 4.2"), "noise": Said(E8, "Sec. 4.3 with 4.2"),
                 "fgsm_dhta": Said(E8, "Table 2 caption"), "ifgsm_dhta": Said(E8, "Table 2 caption"),
                 "prosgan": Said(UNBOUNDED, "Sec. 3: no ε, the reconstruction loss bounds the change")},
        schedule={
            "dhta": {"iterations": Said(2000, "Table 2; Sec. 1"),
                     "step_rule": assumed("l2", "settings 'same as [2]': DHTA's code steps by the L2-normalised "
                                                "gradient (spec 3.3)")},
            "p2p": {"iterations": Said(2000, "Sec. 4.2: settings same as [2]"),
                    "step_rule": assumed("l2", "settings 'same as [2]' (spec 3.3)")},
            "ifgsm_dhta": {"iterations": Said(100, "Table 2: I-FGSM, 100 iterations"),
                           "step_size": Said(1 / 255, "Table 2 caption: step 1/255")},
            "prosgan": {"reconstruction_weight": Said({"flickr25k": 100.0, "nuswide": 50.0, "mscoco": 50.0},
                                                      "Sec. 4.2: α = 100 FLICKR-25K, 50 NUS-WIDE and MS-COCO"),
                        "epochs": Said(50, "Sec. 4.2: 100 epochs (its code: 50 at the full rate, then 50 decaying)"),
                        "decay_epochs": Said(50, "Sec. 4.2 with its code"), "batch_size": Said(24, "Sec. 4.2"),
                        "lr": Said(1e-4, "Sec. 4.2: Adam 1e-4")},
        },
        victim={},
        pretrained=None,
        default_backbone={"flickr25k": "vgg11", "nuswide": "vgg11", "mscoco": "vgg11"},
        models={"H-AlexNet": ("dpsh", "alexnet", 12), "H-AlexNet*": ("dpsh", "alexnet", 32),
                "H-VGG11": ("dpsh", "vgg11", 12), "H-VGG11*": ("dpsh", "vgg11", 32),
                "H-ResNet18": ("dpsh", "resnet18", 12), "H-ResNet18*": ("dpsh", "resnet18", 32)},
        silent=("victim training recipe (only: DPSH objective, VGG-11)", "zero-relevant rule",
                "how ProS-GAN's running time was measured (TITAN RTX; wall clock)"),
    ),
    "cgat": Conventions(
        paper="cgat",
        datasets={
            "flickr25k": Protocol(1_000, 5_000, 24_000, 38, "Sec. 4.1: 1,000 queries (its code reads ProS-GAN's "
                                                            "1,700-query lists), 5,000 train"),
            "nuswide": Protocol(2_100, 10_500, None, 21, "Sec. 4.1"),
            "mscoco": Protocol(5_000, 10_000, None, 80, "Sec. 4.1"),
        },
        topk=Said(5000, "Sec. 4.1 Protocols: top 5000"),
        ap_denominator=assumed("relevant_in_top_k", "paper silent; its code's CalcTopMap (spec 6.2)"),
        zero_relevant=assumed("count_as_zero", "paper silent; its code (spec 6.2)"),
        target_rule=Said("disjoint", "Sec. 4.1 Baselines: target labels share no category with the true labels"),
        epsilon={a: assumed(E8, "the budget is lost in the text; CgAT's code and the attacks' papers use 8/255")
                 for a in ("p2p", "dhta", "tha", "hag", "sdha", "cgat")} | {
                 "prosgan": Said(UNBOUNDED, "ProS-GAN has no ε")},
        schedule={"dhta": {"iterations": assumed(2000, "'consistent with the original literature' (DHTA: 2000)")},
                  "p2p": {"iterations": assumed(2000, "'consistent with the original literature'")},
                  "hag": {"iterations": assumed(2000, "'consistent with the original literature' (HAG: 2000)")}},
        victim={"optimizer": Said("sgd", "Sec. 4.1 Implementation Details (its rate, momentum and batch size are "
                                         "lost in the text)")},
        pretrained=None,
        default_backbone={"flickr25k": "alexnet", "nuswide": "vgg11", "mscoco": "vgg11"},
        models={},
        defense={"cgat": {"epochs": Said(30, "Sec. 4.1: 30 epochs of adversarial training")}},
        unknown={"dataset": assumed("nuswide", "Table 5 names no dataset; its rows are closest to NUS-WIDE "
                                               "(reference README)"),
                 "bits": assumed(32, "Table 5 names no code length; the CgAT code's default"),
                 "backbone": assumed("vgg11", "the default for NUS-WIDE (Sec. 4.1)")},
        silent=("ε (lost in the text)", "victim learning rate, momentum, batch size (lost in the text)",
                "settings of its own attack (Table 4 'Ours')"),
    ),
    "ppl": Conventions(
        paper="ppl",
        datasets={
            "fashion_mnist": Protocol(10_000, 10_000, 60_000, 10, "Sec. Experiments: 10,000 test, 60,000 database, "
                                                                  "10,000 train from it"),
            "cifar10": Protocol(1_000, 10_000, 59_000, 10, "Sec. Experiments"),
            "imagenet13": Protocol(1_300, 10_000, 16_900, 13, "Sec. Experiments"),
        },
        topk=assumed(0, "PPL states no cut-off; the whole database (the datasets' own choice here)"),
        ap_denominator=None,
        zero_relevant=None,  # single-label data: every query has relevant items
        target_rule=None,
        epsilon={"ppl": Said({"fashion_mnist": 0.3, "cifar10": 0.1, "imagenet13": 0.032},
                             "Implementation Details: l∞ 0.1, 0.032, 0.3 for CIFAR-10, ImageNet, FashionMNIST")},
        schedule={"ppl": {"iterations": Said({"fashion_mnist": 1000, "cifar10": 500, "imagenet13": 500},
                                             "Implementation Details: iterations 500, 500, 1000"),
                          "batch_size": Said({"fashion_mnist": 512, "cifar10": 32, "imagenet13": 32},
                                             "Implementation Details: batch sizes 32, 32, 512"),
                          "lr_generator": Said(1e-4, "Implementation Details: generator 1e-4"),
                          "lr_surrogate": Said(1e-3, "Implementation Details: retrieval model 1e-3"),
                          "optimizer": Said("sgd", "Algorithm 1: SGD (no momentum or decay given)"),
                          "loss_reduction": Said("sum", "Eq. 4, 9, 10 sum over the batch's pairs and items")}},
        victim={},
        pretrained=None,
        default_backbone={"fashion_mnist": "smallcnn", "cifar10": "resnet50", "imagenet13": "resnet50"},
        models={},
        surrogate_bits={"ppl": Said(8, "Sec. Results: the generator learned with 8-bit codes")},
        silent=("training of the tested ADSH/DSDH models", "mAP cut-off"),
    ),
}


# ---------------------------------------------------------------- reading the reference

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


def base_backbone(name: str) -> str:
    return name.split(":")[0]


def as_in_the_papers(rec: dict) -> dict:
    """A measured row as the papers' tables file it. A data protection (PPL) is on hashbench's defense axis,
    but its paper lists it in the attack column, beside defense "none": a cell that releases protected
    queries or database items, or whose model was trained on protected data, reads as attack PROTECTION; a
    clean-trained C->C cell as a clean cell. ``protection`` keeps the plugin's name, so its own settings are
    compared."""
    if rec["defense"] not in PROTECTIONS_IN_ATTACK_COLUMN or rec["attack"] != "none":
        return rec
    involved = rec["scenario"] != "c2c" or rec["train_data"] == "protected"
    return {**rec, "protection": rec["defense"], "defense": "none",
            "attack": rec["defense"] if involved else "none"}


def measured_index(df: pd.DataFrame, cells: pd.DataFrame | None = None) -> dict:
    """Scalar ok rows of current runs keyed by (dataset, hashing, bits, metric); each row a dict."""
    index: dict = defaultdict(list)
    rows = scalar_rows(df)
    if not len(rows):
        return index
    rows = rows.assign(run_iterations=rows.groupby("run")["iterations"].transform("max"))
    for rec in rows.to_dict("records"):
        rec = as_in_the_papers(rec)
        rec["backbone_base"] = base_backbone(rec["backbone"])
        index[(rec["dataset"], rec["hashing"], str(rec["bits"]), rec["metric"])].append(rec)
    return index


# ---------------------------------------------------------------- matching one reference row

@dataclass
class Wanted:
    """What a reference row asks of a measured point."""
    datasets: dict[str, bool]          # dataset -> is a stand-in
    backbone: str
    bits: str
    attack: str                        # plugin name
    alias_params: dict                 # attack_params that define an alias (ProS-GAN's DHTA + FGSM)
    excluded_aliases: list[dict]       # alias definitions a plain row must not match
    scenarios: set[str]
    own_scenario: str
    surrogate: tuple | None            # (hashing, backbone, bits) of a transfer source; None: self (or any)
    any_surrogate: bool
    iterations: int | None
    train_data: str
    assumptions: list[str]


def _source_model(conv: Conventions, source: str) -> tuple | None | str:
    """The (hashing, backbone, bits) of a transfer table's source model; 'none' for clean, None if unmappable."""
    if source == "none":
        return "none"
    return conv.models.get(re.sub(r"\(r\d+\)$", "", source))


def wanted(r: dict) -> Wanted | None:
    """What a reference row needs from a cell, or None when no cell can answer it (derived rows, ensembles)."""
    conv = CONVENTIONS.get(r["paper"])
    if conv is None or r["metric"] in UNMATCHED_METRICS:
        return None
    assumptions = []
    dataset, bits, backbone = r["dataset"], r["bits"], r["backbone"]
    if dataset == "unknown" and conv.unknown:
        for key, said in conv.unknown.items():
            assumptions.append(f"{key} {said.value} ({said.where})")
        dataset_for_backbone = conv.unknown["dataset"].value
        bits = bits or str(conv.unknown["bits"].value)
        backbone = backbone or conv.unknown["backbone"].value
    else:
        dataset_for_backbone = dataset
    if not bits:
        return None
    datasets = {dataset: False} if dataset != "unknown" else {}
    if dataset in STAND_IN:
        datasets[STAND_IN[dataset]] = True
    attack, alias_params = conv.aliases.get(r["attack"], (r["attack"], {}))
    excluded = [params for name, (plugin, params) in conv.aliases.items() if plugin == attack and name != r["attack"]]
    task = r["task"]
    own = task if task in SCENARIOS else "a2c"
    scenarios = set(SCENARIOS) if attack == "none" else {own}
    surrogate, iters = None, None
    if task.startswith("iter="):
        n = int(task[5:])
        if n == 0:
            attack, alias_params, excluded, scenarios = "none", {}, [], set(SCENARIOS)
        else:
            iters = n
    elif task.startswith("source="):
        source, _, target = task[7:].partition(",target=")
        model = _source_model(conv, source)
        if model is None:
            return None
        if model == "none":
            attack, alias_params, excluded, scenarios = "none", {}, [], set(SCENARIOS)
        elif re.sub(r"\(r\d+\)$", "", source) != target:
            surrogate = model
    return Wanted(datasets=datasets, backbone=backbone, bits=bits, attack=attack, alias_params=alias_params,
                  excluded_aliases=excluded, scenarios=scenarios, own_scenario=own, surrogate=surrogate,
                  any_surrogate=attack in ANY_SURROGATE_ATTACKS, iterations=iters,
                  train_data=TRAIN_DATA.get(r["train_data"], r["train_data"]), assumptions=assumptions)


def _params_hold(params: dict, required: dict) -> bool:
    return all(k in params and _same(params[k], v) for k, v in required.items())


def _same(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))
    return str(a).lower() == str(b).lower()


def _surrogate_spec(surrogate: str) -> tuple[str, str, int] | None:
    parts = surrogate.split("/")
    if len(parts) != 3 or not parts[2].isdigit():
        return None
    return parts[0], base_backbone(parts[1]), int(parts[2])


def stand_in_backbone(conv: Conventions, paper_dataset: str, backbone: str) -> str | None:
    """The small network that stands in for the paper's ``backbone`` on a stand-in dataset (None: none does)."""
    if conv.default_backbone.get(paper_dataset, backbone) == backbone:
        return STAND_IN_PAPER_BACKBONE.get(conv.paper, STAND_IN_BACKBONE)
    return STAND_IN_OTHER_BACKBONE.get(conv.paper, {}).get(backbone)


def _backbone_ok(w: Wanted, conv: Conventions, m: dict, stand_in: bool, paper_dataset: str) -> bool:
    if m["backbone_base"] == w.backbone:
        return True
    return stand_in and m["backbone_base"] == stand_in_backbone(conv, paper_dataset, w.backbone)


def candidates(r: dict, w: Wanted, index: dict) -> list[dict]:
    """The measured rows that answer reference row ``r`` (any convention; compared afterwards)."""
    conv = CONVENTIONS[r["paper"]]
    paper_dataset = r["dataset"] if r["dataset"] != "unknown" else (
        conv.unknown["dataset"].value if conv.unknown else "")
    found = []
    for dataset, stand_in in w.datasets.items():
        for m in index.get((dataset, r["hashing"], w.bits, r["metric"]), []):
            params = json_dict(m["attack_params"])
            if not (m["defense"] == r["defense"] and m["attack"] == w.attack and m["scenario"] in w.scenarios
                    and m["train_data"] == w.train_data and _backbone_ok(w, conv, m, stand_in, paper_dataset)):
                continue
            if w.alias_params and not _params_hold(params, w.alias_params):
                continue
            if any(_params_hold(params, ex) for ex in w.excluded_aliases):
                continue
            if w.iterations is not None and m["iterations"] != w.iterations:
                continue
            if w.surrogate is not None:
                spec = _surrogate_spec(m["surrogate"])
                hashing, backbone, bits = w.surrogate
                if stand_in:
                    backbone = stand_in_backbone(conv, paper_dataset, backbone) or backbone
                if spec != (hashing, backbone, bits):
                    continue
            elif not w.any_surrogate and w.attack != "none" and m["surrogate"] != "self":
                continue
            found.append({**m, "_stand_in": stand_in})
    return found


def configurations(found: list[dict]) -> list[list[dict]]:
    """Candidates grouped into configurations (one per GROUP_BY key), one point per seed (the newest)."""
    groups: dict = defaultdict(dict)
    for m in found:
        key = tuple(m[k] for k in GROUP_BY)
        seen = groups[key].get(m["seed"])
        if seen is None or m["created_at"] > seen["created_at"]:
            groups[key][m["seed"]] = m
    return [list(g.values()) for g in groups.values()]


def differences(r: dict, m: dict, conv: Conventions) -> tuple[list[str], list[str]]:
    """(what differs from the paper, which of the paper's values were assumed) for point ``m``."""
    differs, assumed_used = [], []
    paper_dataset = r["dataset"] if r["dataset"] != "unknown" else (
        conv.unknown["dataset"].value if conv.unknown else "")

    def check(name: str, said: Said | None, measured, shown=None, paper_shown=None):
        if said is None:
            return
        value = said.at(paper_dataset)
        if value is None:
            return
        if said.assumed:
            assumed_used.append(f"{name} {paper_shown or value} ({said.where})")
        if not _same(measured, value):
            differs.append(f"{name}: {shown if shown is not None else measured} (paper: {paper_shown or value})")

    protocol = conv.datasets.get(paper_dataset)
    if m["_stand_in"]:
        what = f", paper protocol: {protocol.where}" if protocol else ""
        differs.append(f"dataset: {m['dataset_label']} stands in for {r['dataset']}{what}")
    elif protocol is not None:
        for name, paper_value, value in (("queries", protocol.n_query, m["n_query"]),
                                         ("training images", protocol.n_train, m["n_train"]),
                                         ("database images", protocol.n_database, m["n_database"]),
                                         ("labels", protocol.labels, PLUGIN_LABELS.get(m["dataset"]))):
            if paper_value is not None and value != paper_value:
                differs.append(f"dataset {name}: {value} (paper: {paper_value}; {protocol.where})")
    if m["_stand_in"] and m["backbone_base"] != r["backbone"] and r["backbone"]:
        differs.append(f"backbone: {m['backbone']} stands in for {r['backbone']}")
    if conv.pretrained is not None and conv.pretrained.value and m["backbone"].endswith(":scratch"):
        differs.append(f"backbone: {m['backbone']} from scratch (paper: ImageNet-pretrained; {conv.pretrained.where})")
    metric = r["metric"]
    if metric in CUTOFF_METRICS:
        check("cut-off", conv.topk, m["topk"], fmt_topk(m["topk"]),
              fmt_topk(conv.topk.at(paper_dataset)) if conv.topk else None)
    if metric in CUTOFF_METRICS and not (conv.topk is not None and conv.topk.at(paper_dataset) == 0 == m["topk"]):
        check("AP denominator", conv.ap_denominator, m["ap_denominator"])
    if metric in CUTOFF_METRICS:
        check("zero-relevant rule", conv.zero_relevant, m["zero_relevant"])
    if TARGET_METRIC.match(metric) or (m["targeted"] and m["attack"] != "none"):
        check("target rule", conv.target_rule, m["target_rule"])
    attack_name = r["attack"]
    if m.get("protection") and m["attack"] != "none":
        _protection_differences(m, conv, paper_dataset, check)
    elif m["attack"] != "none" and metric not in CODE_METRICS:
        eps = conv.epsilon.get(attack_name)
        if eps is not None:
            paper_eps = eps.at(paper_dataset)
            measured = UNBOUNDED if not isnum(m["epsilon"]) else m["epsilon"]
            shown_paper = paper_eps if paper_eps == UNBOUNDED else fmt_epsilon(paper_eps)
            if eps.assumed:
                assumed_used.append(f"ε {shown_paper} ({eps.where})")
            same = (measured == paper_eps) if UNBOUNDED in (measured, paper_eps) else abs(measured - paper_eps) < 1.5e-3
            if not same:
                differs.append(f"ε: {fmt_epsilon(m['epsilon'])} (paper: {shown_paper}; {eps.where})")
        params = json_dict(m["attack_params"])
        defining = conv.aliases.get(attack_name, ("", {}))[1]
        schedule = dict(conv.schedule[attack_name] if attack_name in conv.schedule else
                        {k: v for k, v in conv.schedule.get(m["attack"], {}).items() if k not in defining})
        if r["task"].startswith("iter="):
            schedule.pop("iterations", None)  # the row's own iteration count is a match condition
        for key, said in schedule.items():
            value = m["iterations"] if key == "iterations" else params.get(key, "not recorded")
            check(f"attack {key}", said, value)
        bits = conv.surrogate_bits.get(attack_name)
        if bits is not None:
            spec = _surrogate_spec(m["surrogate"])
            check("surrogate code length", bits, spec[2] if spec else m["surrogate"])
    hashing_params = json_dict(m["hashing_params"])
    for key, said in conv.victim.items():
        check(f"victim {key}", said, hashing_params.get(key, "not recorded"))
    defense_params = json_dict(m["defense_params"])
    for key, said in conv.defense.get(m["defense"], {}).items():
        check(f"defense {key}", said, defense_params.get(key, "not recorded"))
    if metric in TIMING_METRICS:
        differs.append(f"timing: measured on {m['device'] or 'an unrecorded device'} at batch size {m['batch_size']}; "
                       "the paper's hardware, batch size and data loading differ (never like-for-like)")
    return differs, assumed_used


def _protection_differences(m: dict, conv: Conventions, paper_dataset: str, check) -> None:
    """A protection's own settings (ε, schedule, surrogate code length) against its paper's: they shape the
    released data, and so both the cells that search it and the models trained on it."""
    name, params = m["protection"], json_dict(m["defense_params"])
    eps = conv.epsilon.get(name)
    if eps is not None:
        check("protection ε", eps, params.get("epsilon", "not recorded"), fmt_epsilon(params.get("epsilon")),
              fmt_epsilon(eps.at(paper_dataset)))
    for key, said in conv.schedule.get(name, {}).items():
        check(f"protection {key}", said, params.get(key, "not recorded"))
    if name in conv.surrogate_bits:
        check("protection surrogate code length", conv.surrogate_bits[name], params.get("surrogate_bits", "not recorded"))


def query_set(m: dict) -> tuple[str, int]:
    """The query set a measured point was scored on: its dataset label (the subset is a dataset parameter)
    and its number of queries. The cells of one paper-table row come from one query set."""
    return m["dataset_label"], int(m["n_query"])


def paper_iterations(r: dict, m: dict, conv: Conventions) -> int | None:
    """The iteration count the paper's row names for point ``m``'s attack: the row's ``iter=N``, else the
    paper's schedule for the attack (None: the paper names none)."""
    if r["task"].startswith("iter="):
        return int(r["task"][5:])
    said = conv.schedule.get(r["attack"], conv.schedule.get(m["attack"], {})).get("iterations")
    value = said.at(r["dataset"]) if said is not None else None
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def iteration_fit(r: dict, m: dict, conv: Conventions) -> tuple[float, bool]:
    """How well point ``m``'s iteration count answers the row (higher is better): closest to the paper's
    count, then the run's final point. A shortened run's snapshots all differ from the paper's schedule by
    one difference each; without this the first snapshot would win (HAG Tables III-VI: 500, not 100)."""
    wanted_iterations = paper_iterations(r, m, conv)
    final = m["iterations"] == m.get("run_iterations", m["iterations"])
    if wanted_iterations is None or m["attack"] == "none":
        return 0.0, final
    return -abs(float(m["iterations"]) - wanted_iterations), final


def match(r: dict, index: dict, only_query_set: tuple[str, int] | None = None) -> dict | None:
    """The measured value for reference row ``r`` (see the module docstring), or None; ``only_query_set``
    keeps the points of that query set only (``query_set``)."""
    w = wanted(r)
    if w is None:
        return None
    found = candidates(r, w, index)
    if only_query_set is not None:
        found = [m for m in found if query_set(m) == only_query_set]
    if not found:
        return None
    conv = CONVENTIONS[r["paper"]]
    scored = []
    for group in configurations(found):
        m = group[0]
        differs, assumed_used = differences(r, m, conv)
        scored.append(((not m["_stand_in"], -len(differs), iteration_fit(r, m, conv), m["scenario"] == w.own_scenario,
                        len(group), max(x["created_at"] for x in group), min(x["run"] for x in group)), group,
                       differs, assumed_used))
    scored.sort(key=lambda s: s[0], reverse=True)
    _, best, differs, assumed_used = scored[0]
    m = best[0]
    value = float(np.mean([x["value"] for x in best])) * UNIT_SCALE.get(r["unit"], 1.0)
    if r["unit"] == "seconds":
        text = f"{value:.3g}"
    elif r["unit"] == "count":
        text = f"{value:.0f}"
    else:
        text = f"{value:.{max(2, len(r['value'].partition('.')[2]))}f}"
    seeds = sorted(x["seed"] for x in best)
    detail = [f"measured {m['metric']}{fmt_topk(m['topk']) if m['metric'] in CUTOFF_METRICS else ''}",
              f"dataset {m['dataset_label']}", f"hashing {m['hashing_label']}", f"backbone {m['backbone']}",
              f"defense {m['defense_label']}", f"attack {m['attack_label']}", f"ε {fmt_epsilon(m['epsilon'])}",
              f"iterations {m['iterations']}", f"scenario {m['scenario']}", f"surrogate {m['surrogate']}",
              f"target rule {m['target_rule']}", f"zero-relevant {m['zero_relevant']}",
              f"mean of {len(best)} seeds ({', '.join(map(str, seeds))})" if len(best) > 1 else f"seed {m['seed']}"]
    title = []
    timing = m["metric"] in TIMING_METRICS
    lfl = not differs and not timing
    title.append("like-for-like (≡)" if lfl else "differs from the paper: " + "; ".join(differs))
    if assumed_used or w.assumptions:
        title.append("assumed where the paper is silent: " + "; ".join(w.assumptions + assumed_used))
    if conv.silent:
        title.append("the paper does not state: " + "; ".join(conv.silent))
    flags = [f"{n}: {why}" if why else n for x in best for n, why in parse_flags(x["flags"])]
    if flags:
        title.append("flags: " + "; ".join(dict.fromkeys(flags)))
    title.append("; ".join(detail))
    if len(scored) > 1:
        title.append(f"{len(scored) - 1} other matching configuration(s) not shown, not averaged")
    return {"text": text, "title": " · ".join(title), "lfl": lfl, "flagged": bool(flags),
            "eps": _shown_epsilon(m),
            "context": f"{m['device'] or 'device?'} · batch {m['batch_size']}" if timing else "",
            "stand_in": bool(m["_stand_in"]), "differs": differs, "seeds": len(best),
            "runs": sorted({x["run"] for x in best}),
            "query_set": query_set(m), "dataset_label": m["dataset_label"], "paper_dataset": r["dataset"],
            "shortened": shortened(m, differs)}


SETTING_DIFFERENCE = re.compile(r"^(attack|defense|victim|protection) (\w+): (.*?) \(paper: (.*?)(?:;.*)?\)$")


def shortened(m: dict, differs: list[str]) -> list[str]:
    """The settings of point ``m`` that differ from the paper's, each beside the paper's value and named by
    its plugin: "dhta iterations 300 (paper 2000)"."""
    owner = {"attack": m["attack"], "defense": m["defense"], "victim": m["hashing"],
             "protection": m.get("protection", m["defense"])}
    out = []
    for text in differs:
        hit = SETTING_DIFFERENCE.match(text)
        if hit:
            kind, key, value, paper = hit.groups()
            out.append(f"{owner[kind]} {key} {value} (paper {paper})")
    return out


def _shown_epsilon(m: dict) -> str:
    """The budget beside a measured value: the attack's, or the protection's for a protection cell."""
    if m["attack"] == "none":
        return ""
    if m.get("protection"):
        return fmt_epsilon(json_dict(m["defense_params"]).get("epsilon"))
    return fmt_epsilon(m["epsilon"])


def why_unmatched(r: dict, index: dict) -> str:
    """A short reason for a row without a measured value."""
    if r["metric"] in UNMATCHED_METRICS:
        return "the paper's setting or a derived number, not a measurement"
    w = wanted(r)
    if w is None:
        if r["task"].startswith("source=") and "+" in r["task"]:
            return "combined perturbations of several source models: no single surrogate cell"
        return "no cell can answer this row"
    attacks = {m["attack"] for rows in index.values() for m in rows}
    if w.attack != "none" and w.attack not in attacks:
        return f"not measured: no {w.attack} cells in the results (the plugin may not have landed or run yet)"
    return "not measured yet: no current cell with this row's dataset, method, code length and setting"


# ---------------------------------------------------------------- laying out the tables

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
        measured = lfl = stand_in = 0
        records = t.to_dict("records")
        chosen_sets = row_query_sets(records, row_fields, index)
        stand_ins: dict = {}
        settings: dict = {}
        for rec in records:
            rkey = tuple(rec[f] for f in row_fields)
            row = rows.setdefault(rkey, {"labels": [rec[f] for f in shown], "cells": [None] * len(col_keys)})
            m = match(rec, index, chosen_sets.get(rkey))
            if m is not None and m["stand_in"]:
                stand_ins.setdefault(m["dataset_label"], set()).add(rec["dataset"])
            for text in (m["shortened"] if m else []):
                settings[text] = None
            measured += m is not None
            lfl += bool(m and m["lfl"])
            stand_in += bool(m and m["stand_in"])
            note = "; ".join(c for c in rec["note"].split("; ") if c not in common)
            unit = "" if rec["unit"] == "fraction" or "unit" in col_fields else rec["unit"]
            missing = ""
            if m is None:
                missing = why_unmatched(rec, index)
                if chosen_sets.get(rkey) and match(rec, index) is not None:
                    label, n = chosen_sets[rkey]
                    missing = (f"not measured on this row's query set ({label}, {n} queries): a row's values "
                               "come from one query set; another set has this cell")
            row["cells"][col_keys.index(tuple(rec[f] for f in col_fields))] = {
                "value": rec["value"], "unit": unit, "note": note, "measured": m, "missing": missing}
        tables.append({
            "id": f"{paper}-{number}", "csv": f"paper-{paper}-{number}.csv", "paper": paper, "paper_name": PAPERS.get(paper, paper), "table": number,
            "caption": caption, "row_fields": shown, "rows": list(rows.values()), "n": len(t),
            "columns": [" · ".join(_column_label(f, v) for f, v in zip(col_fields, k) if v) for k in col_keys],
            "common_note": "; ".join(common), "measured": measured, "lfl": lfl, "stand_in": stand_in,
            "stand_ins": [f"{label} for {', '.join(sorted(papers_))}" for label, papers_ in sorted(stand_ins.items())]
            or [f"{name} for {', '.join(sorted(set(t.loc[t['dataset'].map(STAND_IN) == name, 'dataset'])))} "
                "(none measured yet)" for name in sorted(set(t["dataset"].map(STAND_IN).dropna()))],
            "query_sets": sorted({f"{label} ({n} queries)" for label, n in chosen_sets.values()}),
            "shortened": list(settings)})
    return tables


def row_query_sets(records: list[dict], row_fields: list[str], index: dict) -> dict:
    """Per table row: the one query set its measured values come from, the set that answers most of the
    row's cells (ties: more queries, then the label), so that a row never mixes, e.g., a 50-query timing
    block with a 200-query block. Rows no cell answers are absent."""
    counts: dict = defaultdict(lambda: defaultdict(int))
    for rec in records:
        w = wanted(rec)
        if w is None:
            continue
        for qs in {query_set(m) for m in candidates(rec, w, index)}:
            counts[tuple(rec[f] for f in row_fields)][qs] += 1
    return {rkey: max(sets, key=lambda qs: (sets[qs], qs[1], qs[0])) for rkey, sets in counts.items()}


def _fmt_value(v) -> str:
    if isinstance(v, float) and 0 < v < 1 and abs(v * 255 - round(v * 255)) < 1e-6:
        return fmt_epsilon(v)
    return f"{v:g}" if isinstance(v, float) else str(v)


def _said(s: Said | None, fmt=_fmt_value) -> dict:
    if s is None:
        return {"text": "not stated", "where": "", "assumed": False, "silent": True}
    value = s.value
    text = ", ".join(f"{k} {fmt(v)}" for k, v in value.items()) if isinstance(value, dict) else fmt(value)
    return {"text": text, "where": s.where, "assumed": s.assumed, "silent": False}


def _eps_text(v) -> str:
    return v if v == UNBOUNDED else fmt_epsilon(v)


def conventions_table() -> list[dict]:
    """The conventions table as rows for the papers page: one per paper, each cell text + where."""
    out = []
    for paper, c in CONVENTIONS.items():
        datasets = [{"text": f"{name}: {p.n_query or '?'} queries, {p.n_train or '?'} train, "
                             f"{p.n_database or '?'} database, {p.labels or '?'} labels",
                     "where": p.where, "assumed": False, "silent": False} for name, p in c.datasets.items()]
        eps = [{**_said(s, _eps_text), "text": f"{a}: {_said(s, _eps_text)['text']}"} for a, s in c.epsilon.items()]
        schedule = [{**_said(s), "text": f"{a} {k} = {_said(s)['text']}"}
                    for a, params in c.schedule.items() for k, s in params.items()]
        schedule += [{"text": f"{alias} = {plugin} with {', '.join(f'{k}={v}' for k, v in params.items())}",
                      "where": "alias", "assumed": False, "silent": False}
                     for alias, (plugin, params) in c.aliases.items()]
        victim = [{**_said(s), "text": f"{k} = {_said(s)['text']}"} for k, s in c.victim.items()]
        victim += [{**_said(s), "text": f"{d} {k} = {_said(s)['text']}"}
                   for d, params in c.defense.items() for k, s in params.items()]
        if c.pretrained is not None:
            victim.append({**_said(c.pretrained), "text": "ImageNet-pretrained backbone"})
        victim += [{**_said(s), "text": f"{a}: surrogate of {s.value} bits"} for a, s in c.surrogate_bits.items()]
        out.append({"paper": PAPERS.get(paper, paper), "datasets": datasets,
                    "topk": [_said(c.topk, lambda v: fmt_topk(v) or "?")],
                    "ap": [_said(c.ap_denominator)], "zero": [_said(c.zero_relevant)],
                    "target": [_said(c.target_rule)], "epsilon": eps, "schedule": schedule,
                    "victim": victim or [_said(None)],
                    "backbones": [{"text": ", ".join(f"{d}: {b}" for d, b in c.default_backbone.items()),
                                   "where": "", "assumed": False, "silent": False}],
                    "silent": list(c.silent)})
    return out


def table_records(table: dict) -> list[dict]:
    """A paper table as download rows: one per paper value, with the measured value beside it."""
    out = []
    for row in table["rows"]:
        for column, c in zip(table["columns"], row["cells"]):
            if not c:
                continue
            m = c["measured"]
            out.append({**dict(zip(table["row_fields"], row["labels"])), "column": column,
                        "paper_value": c["value"], "unit": c["unit"], "measured": m["text"] if m else "",
                        "epsilon": m["eps"] if m else "", "like_for_like": bool(m and m["lfl"]),
                        "stand_in": m["dataset_label"] if m and m["stand_in"] else "",
                        "query_set": f"{m['query_set'][0]} ({m['query_set'][1]} queries)" if m else "",
                        "shortened": "; ".join(m["shortened"]) if m else "",
                        "differs": "; ".join(m["differs"]) if m else c["missing"]})
    return out
