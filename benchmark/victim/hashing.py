"""The hashing-method plugin base and the standard training loop.

A method's batch work is split in two, so that a loss can never write into the training state:

* ``observe(outputs, labels, index)`` records a batch of clean training outputs in the method's state
  (memory banks of training outputs, iteration counters, continuation schedules, per-batch random draws);
* ``loss(outputs, labels, index)`` computes the loss on a batch and only *reads* that state.

``outputs`` are the victim's pre-activation outputs y (B, K) and ``index`` the batch's positions in the
training set (for memory banks). A training step calls ``observe`` once on the detached clean outputs,
then ``loss``; ``training_loss`` does both, and the base ``fit`` runs the usual loop with it. Methods
with their own optimisation (DSDH's discrete B/W updates, ADSH's asymmetric database codes) use the
``begin``/``end_epoch`` hooks or override ``fit``, stepping the same way. Defenses reuse
``training_loss`` on the clean batch inside their own loops and may evaluate ``loss`` on adversarial
outputs any number of times: the method's state stays what clean training makes it (the contract test
in tests/test_hashing.py checks this for every method).
"""
from __future__ import annotations

import logging
import typing
from dataclasses import dataclass, field
from typing import Callable

import torch

from benchmark.data.dataset import shares_label
from benchmark.data.images import ImageSet
from benchmark.plugins import Plugin
from benchmark.victim.model import HashModel

log = logging.getLogger("hashbench")


class TrainingDiverged(RuntimeError):
    pass


@dataclass
class TrainContext:
    """What a training procedure gets besides the model and the data."""

    device: torch.device
    generator: torch.Generator            # seeded: shuffling and any sampling
    num_classes: int
    progress: Callable[[str], None] = lambda message: None
    info: dict = field(default_factory=dict)  # anything the procedure wants recorded
    # A long training may checkpoint now and then (``save_checkpoint(state)``) and, when an earlier run of the same
    # key was stopped, start from its latest checkpoint (``resumed``; None for a fresh start). The harness keeps
    # them in the stage cache under the training's key and drops them once the training is stored.
    resumed: dict | None = None
    save_checkpoint: Callable[[dict], None] = lambda state: None

    def flag(self, name: str, reason: str) -> None:
        """Mark what this training produced as degenerate (``benchmark.flags``): every row of every cell that
        uses it carries ``name: reason``."""
        self.info.setdefault("flags", {})[name] = reason


def pairwise_similarity(labels_a: torch.Tensor, labels_b: torch.Tensor) -> torch.Tensor:
    """s_ij = 1 if items i and j share at least one label, else 0; (A, B) float."""
    return shares_label(labels_a, labels_b).float()


def make_optimizer(name: str, params, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; accepted: sgd, adam, rmsprop")


def check_finite(loss: torch.Tensor, method: str, epoch: int, step: int, kind: str = "hashing") -> None:
    """Raise TrainingDiverged for a NaN/inf loss of plugin ``method`` (of ``kind``: hashing, defenses)."""
    if not torch.isfinite(loss):
        raise TrainingDiverged(
            f"{method} loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
            f"lower its lr (e.g. --set {kind}.{method}.lr=...) or check its inputs")


def non_finite_weights(model: torch.nn.Module) -> list[str]:
    """The names of the model's floating-point parameters and buffers holding a NaN or an infinity."""
    return [name for name, tensor in model.state_dict().items()
            if tensor.is_floating_point() and not torch.isfinite(tensor).all()]


def check_epoch_weights(model: torch.nn.Module, method: str, epoch: int) -> None:
    """Raise TrainingDiverged when epoch ``epoch`` (0-based) ended with non-finite weights, naming that epoch (a
    NaN written by an ``end_epoch`` hook or by an epoch's last step would otherwise surface as the next epoch's
    loss)."""
    bad = non_finite_weights(model)
    if bad:
        raise TrainingDiverged(
            f"{method} left non-finite weights in {', '.join(bad[:3])}{' and more' if len(bad) > 3 else ''} at the "
            f"end of epoch {epoch + 1} (its last step or end_epoch); lower its lr or check its end_epoch")


class HashingMethod(Plugin, base=True):
    """Base of the hashing methods. Subclasses set the paper's defaults and implement ``loss`` (pure) and,
    when they keep state across batches, ``observe``."""

    kind: typing.ClassVar[str] = "hashing"

    epochs: int = 40
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 1e-5
    momentum: float = 0.9

    def begin(self, train: ImageSet, bits: int, ctx: TrainContext) -> None:
        """Called once before training: allocate memory banks and the like."""

    def warm_start(self, model: HashModel, train: ImageSet, ctx: TrainContext) -> None:
        """After ``begin``, set the state as the method's own training of ``model`` would have left it.

        For defenses that go on training an already trained victim (CgAT's ``preinstall`` of the loss's
        memory bank): banks filled with the model's training outputs, codes and classifiers derived from
        them, schedules advanced to where ``fit`` ended. The default keeps ``begin``'s state (no state).
        """

    def observe(self, outputs: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> None:
        """Record a batch of clean training outputs (detached, (B, K)) in the method's state.

        Called once per training batch, before ``loss``: memory banks, counters and schedules move here.
        The default records nothing (a method whose loss needs only the batch).
        """

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The method's loss on a batch of outputs (B, K). Reads the state ``observe`` keeps; never writes it."""
        raise NotImplementedError

    def training_loss(self, outputs: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The loss of a clean training step: ``observe`` the detached outputs, then ``loss`` on them."""
        self.observe(outputs.detach(), labels, index)
        return self.loss(outputs, labels, index)

    def end_epoch(self, model: HashModel, train: ImageSet, epoch: int, ctx: TrainContext) -> None:
        """Called after each epoch (DSDH's discrete updates, HashNet's scale schedule, ...)."""

    def make_optimizer(self, model: HashModel) -> torch.optim.Optimizer:
        return make_optimizer(self.optimizer, model.parameters(), self.lr, self.weight_decay, self.momentum)

    def fit(self, model: HashModel, train: ImageSet, ctx: TrainContext) -> None:
        """The standard loop: shuffled batches, ``observe`` then ``loss`` on the outputs, one optimiser step each."""
        self.begin(train, model.bits, ctx)
        optimizer = self.make_optimizer(model)
        model.train()
        for epoch in range(self.epochs):
            total, steps = 0.0, 0
            for step, (x, y, index) in enumerate(train.batches(self.batch_size, shuffle=True, generator=ctx.generator)):
                x, y, index = x.to(ctx.device), y.to(ctx.device), index.to(ctx.device)
                loss = self.training_loss(model.logits(x), y, index)
                check_finite(loss, self.name, epoch, step)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total, steps = total + loss.item(), steps + 1
            ctx.info.setdefault("loss_per_epoch", []).append(total / max(steps, 1))
            self.end_epoch(model, train, epoch, ctx)
            check_epoch_weights(model, self.name, epoch)
            ctx.progress(f"epoch {epoch + 1}/{self.epochs} loss {total / max(steps, 1):.4f}")
        model.eval()


@torch.no_grad()
def training_outputs(model: HashModel, train: ImageSet, device: torch.device, batch_size: int = 512) -> torch.Tensor:
    """Pre-activation outputs y (N, K) of the whole training set, in its order, in eval mode (mode restored)."""
    was_training = model.training
    model.eval()
    outputs = torch.cat([model.logits(x.to(device)) for x, _, _ in train.batches(batch_size)])
    model.train(was_training)
    return outputs


def logistic_pair_loss(theta: torch.Tensor, similarity: torch.Tensor) -> torch.Tensor:
    """Elementwise -(s * theta - log(1 + e^theta)), computed stably; the DPSH/DSDH pair likelihood."""
    return torch.nn.functional.softplus(theta) - similarity * theta
