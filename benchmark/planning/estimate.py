"""A model of the GPU time a grid needs, for planning a run: arithmetic on stated assumptions, not a measurement.

    estimator = Estimator(registry)
    work = estimator.cell(cell, sizes)           # the cell's stages not already counted for an earlier cell
    hours = work.gpu_hours()

The model counts, for each stage a cell needs, how many images pass through which backbone and how (a forward
pass; a forward and a backward pass to the input, as an attack iteration; a forward and a full backward pass, as
a training step), multiplies by the backbone's forward FLOPs per image, and divides by one assumed throughput:

    seconds = images x passes x FORWARD_GFLOP[backbone] x 1e9 / (H100_TFLOPS x 1e12)

- ``FORWARD_GFLOP``: torchvision's own count for each ImageNet backbone at 224x224 (the weights' ``meta["_ops"]``,
  multiply-accumulates in G, times 2 FLOP per MAC; tests/test_estimate.py checks them against torchvision), and
  for the small networks the count of their two convolutions and linear layers at the dataset's image size.
  CIFAR-10's 32x32 images are resized to 224 inside the model, so they cost what 224x224 images cost.
- ``PASSES``: a backward pass costs about as much again as the forward pass per quantity it differentiates, so
  forward 1, forward + backward to the input 2 (attacks), forward + backward to the weights and input 3 (training).
- ``H100_TFLOPS`` = 200: one H100-class GPU running TF32 convolutions at about 40% of its 495 TFLOP/s dense TF32
  peak (an assumption, taken from the project's GPU-readiness review; nobody has measured it with hashbench).
  bf16 would about double it; plain fp32 about a third of it.

What the model leaves out, so a real run takes longer: JPEG decoding of the file datasets (the same review
measured 239-272 images per second with one or two threads on a 2-core CPU; the image cache decodes each set once,
and its warm reads are bounded by the uint8-to-float conversion, about 1,100 images per second per thread), the
generators and PrototypeNets of ProS-GAN, THA, ATRDH and PPL (small next to the backbones), scoring, and launch
overhead, which dominates the small networks (``smallcnn``: their estimates are a floor, not a forecast).
Stages shared by several cells (a victim, its codes, a learned attack's preparation) are counted once, for the
first cell that needs them.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from benchmark.planning.grid import Cell
from benchmark.plugins import Registry
from benchmark.victim.model import parse_backbone

H100_TFLOPS = 200.0
FORWARD, INPUT_GRADIENT, TRAINING = 1, 2, 3  # forward-pass equivalents per image (see PASSES in the docstring)
FORWARD_GFLOP = {  # per 224x224 image: torchvision weights meta "_ops" (GMACs) x 2
    "alexnet": 2 * 0.714, "vgg11": 2 * 7.609, "vgg16": 2 * 15.47, "vgg19": 2 * 19.632,
    "resnet18": 2 * 1.814, "resnet50": 2 * 4.089,
}
ONE_STEP_ATTACKS = {"fgsm": 1, "fgsm_dhta": 1}  # gradient steps of the attacks without an ``iterations`` parameter
IMAGE_SIDE = {"fashion_mnist": 28, "fashion_mnist_mosaic": 56, "fashion_mnist_canvas": 64, "cifar10": 32}  # others: 224 (resized, cropped)
CIFAR10_DATABASE = {"rest": lambda q, t: 60_000 - q - t, "rest+train": lambda q, t: 60_000 - q, "train": lambda q, t: t}
CIFAR10_PROTOCOLS = {"cifar10": (1_000, 5_000, "rest"), "cifar10-1": (1_000, 5_000, "rest+train"),
                     "cifar10-2": (10_000, 50_000, "train")}  # as datasets/cifar10.py PROTOCOLS


@dataclass(frozen=True)
class Sizes:
    """A split's sizes and image side: from the loaded data when it is there, else from the dataset's card."""

    n_query: int
    n_database: int
    n_train: int
    side: int
    source: str  # "data" or "card"


def card_sizes(name: str, params: dict) -> Sizes:
    """The split sizes a dataset plugin's card promises for these parameters (the query subset applied)."""
    builders = {
        "fashion_mnist": lambda p: (10_000, 60_000, p["n_train"]),
        "fashion_mnist_mosaic": lambda p: (p["n_query"], p["n_database"], p["n_train"]),
        "fashion_mnist_canvas": lambda p: (p["n_query"], p["n_database"], p["n_train"]),
        "cifar10": cifar10_sizes,
        "flickr25k": lambda p: (p["n_query"], 25_000 - p["n_query"], p["n_train"]),
        "nuswide": lambda p: (21 * p["query_quota"], 195_834 - 21 * p["query_quota"], 21 * p["train_quota"]),
        "mscoco": lambda p: (p["n_query"], 122_218 - p["n_query"], p["n_train"]),
        "imagenet100": lambda p: (p["n_query"], 128_503, p["n_train"]),  # HashNet's database list (about 128,000)
        "imagenet13": lambda p: (13 * p["query_per_class"], 13 * p["database_per_class"], p["n_train"]),
    }
    if name not in builders:
        raise ValueError(f"dataset {name!r} has no card sizes in benchmark/planning/estimate.py (known: "
                         f"{', '.join(builders)}); plan it with its data present")
    n_query, n_database, n_train = builders[name](params)
    if params.get("query_subset"):
        n_query = min(n_query, params["query_subset"])
    return Sizes(n_query, n_database, n_train, IMAGE_SIDE.get(name, 224), "card")


def cifar10_sizes(params: dict) -> tuple[int, int, int]:
    default_query, default_train, database = CIFAR10_PROTOCOLS[params["protocol_name"]]
    n_query, n_train = params["n_query"] or default_query, params["n_train"] or default_train
    return n_query, CIFAR10_DATABASE[database](n_query, n_train), n_train


def data_sizes(identity: dict) -> Sizes:
    """Sizes from a planned cell's data identity (the loaded splits)."""
    shape = identity["training"]["shape"]
    return Sizes(identity["n_query"], identity["n_database"], identity["n_train"], shape[-1], "data")


def forward_gflop(backbone: str, side: int) -> float:
    """FLOPs (G) of one image's forward pass through ``backbone`` (with or without ':scratch')."""
    name, _ = parse_backbone(backbone)
    if name in FORWARD_GFLOP:
        return FORWARD_GFLOP[name]
    return small_network_gflop(side, hidden=500 if name == "smallcnn_fc500" else 0)


def small_network_gflop(side: int, hidden: int, bits: int = 64) -> float:
    """PPL's two convolutions (20 and 50 channels, 5x5, 2x2 pooling), the optional fc layer and a hash head."""
    first = side - 4
    second = first // 2 - 4
    pooled = second // 2
    macs = first * first * 20 * 25 + second * second * 50 * 20 * 25
    features = 50 * pooled * pooled
    macs += features * hidden + (hidden or features) * bits
    return 2 * macs / 1e9


@dataclass
class Work:
    """Forward-pass-equivalent GFLOP per stage, and the GPU time they amount to under the model."""

    gflop: dict = field(default_factory=lambda: {"victims": 0.0, "codes": 0.0, "prepare": 0.0, "attacks": 0.0})

    def add(self, stage: str, images: float, passes: int, gflop_per_image: float) -> None:
        self.gflop[stage] += images * passes * gflop_per_image

    def merge(self, other: "Work") -> None:
        for stage, value in other.gflop.items():
            self.gflop[stage] += value

    def gpu_hours(self, stage: str | None = None) -> float:
        total = self.gflop[stage] if stage else sum(self.gflop.values())
        return total * 1e9 / (H100_TFLOPS * 1e12) / 3600


class Estimator:
    """Counts each cell's stages once across a grid (the first cell that needs a victim pays for it)."""

    def __init__(self, registry: Registry):
        self.registry = registry
        self.counted: set = set()

    def params(self, kind: str, name: str, cell: Cell) -> dict:
        return self.registry.get(kind, name).configure(cell.overrides(kind, name)).params()

    def first_time(self, *identity) -> bool:
        key = json.dumps(identity, sort_keys=True, default=str)
        if key in self.counted:
            return False
        self.counted.add(key)
        return True

    def cell(self, cell: Cell, sizes: Sizes) -> Work:
        work = Work()
        victim = self.victim(work, cell, sizes, cell.hashing, cell.backbone, cell.bits, cell.defense, cell.train_data)
        attacker = victim
        if cell.surrogate != "self":
            hashing, backbone, bits = cell.surrogate.split("/")
            attacker = self.victim(work, cell, sizes, hashing, backbone, int(bits), "none", "clean")
        self.attack(work, cell, sizes, victim, attacker)
        return work

    def victim(self, work: Work, cell: Cell, sizes: Sizes, hashing: str, backbone: str, bits: int, defense: str,
               train_data: str) -> tuple:
        """Trains (once) the victim and encodes its database and queries; returns its identity."""
        defense_class = self.registry.get("defenses", defense)
        protection = defense_class.protects
        training_defense = "none" if protection else defense
        method = self.params("hashing", hashing, cell)
        identity = (cell.dataset, hashing, method, backbone, bits, training_defense, train_data,
                    self.params("defenses", training_defense, cell), cell.seed)
        per_image = forward_gflop(backbone, sizes.side)
        if self.first_time("victim", identity):
            work.add("victims", training_images(method, sizes.n_train), TRAINING, per_image)
            if self.registry.get("defenses", training_defense).starts_from_victim:
                self.victim(work, cell, sizes, hashing, backbone, bits, "none", "clean")
                defense_params = self.params("defenses", training_defense, cell)
                steps = defense_params.get("iterations", 0) * INPUT_GRADIENT + 2 * TRAINING
                work.add("victims", defense_params.get("epochs", 1) * sizes.n_train, steps, per_image)
            work.add("codes", sizes.n_query + sizes.n_database, FORWARD, per_image)
        if protection:
            self.protection(work, cell, sizes, defense, identity, per_image)
        return identity

    def protection(self, work: Work, cell: Cell, sizes: Sizes, defense: str, victim: tuple,
                   per_image: float) -> None:
        """The protection's surrogate game (once per dataset and parameters) and the victim's released codes."""
        params = self.params("defenses", defense, cell)
        if self.first_time("protection", cell.dataset, defense, params, cell.seed):
            surrogate = forward_gflop(params.get("surrogate_backbone", "smallcnn"), sizes.side)
            images = params.get("iterations", 1) * params.get("batch_size", 1)
            work.add("prepare", images, TRAINING + INPUT_GRADIENT, surrogate)
        if cell.scenario != "c2c" and self.first_time("release", victim, defense, params):
            work.add("codes", sizes.n_query + sizes.n_database, FORWARD, per_image)

    def attack(self, work: Work, cell: Cell, sizes: Sizes, victim: tuple, attacker: tuple) -> None:
        plugin = self.registry.get("attacks", cell.attack).configure(cell.overrides("attacks", cell.attack))
        if not plugin.perturbs:
            return
        params = plugin.params()
        attacker_image = forward_gflop(attacker[3], sizes.side)
        steps = params.get("iterations", ONE_STEP_ATTACKS.get(cell.attack, 0))
        work.add("attacks", sizes.n_query, steps * INPUT_GRADIENT, attacker_image)
        work.add("attacks", sizes.n_query, FORWARD, forward_gflop(victim[3], sizes.side))  # the adversarial codes
        if self.first_time("prepare", attacker, cell.attack, plugin.prepare_parameters()):
            work.add("prepare", preparation_images(cell.attack, params, sizes.n_train), INPUT_GRADIENT,
                     attacker_image)


def training_images(method: dict, n_train: int) -> float:
    """Images a hashing method's training passes through the network: epochs over the training set, or ADSH's
    outer iterations of ``inner_epochs`` over ``num_samples`` sampled points."""
    if "num_samples" in method:
        return method["epochs"] * method.get("inner_epochs", 1) * min(method["num_samples"], n_train)
    return method.get("epochs", 1) * n_train


def preparation_images(attack: str, params: dict, n_train: int) -> float:
    """Images a learned attack's preparation passes through the attacked network with gradients: ProS-GAN's
    generator epochs over the training set; SDHA encodes the training set (counted as a gradient pass too)."""
    if "decay_epochs" in params:
        steps = params.get("steps_per_epoch") or math.ceil(n_train / params["batch_size"])
        return (params["epochs"] + params["decay_epochs"]) * steps * params["batch_size"]
    if attack == "sdha":
        return n_train
    return 0.0
