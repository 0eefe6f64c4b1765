"""The external victim and the external attack: a user's model and a user's adversarial queries as plugins.

They are not in ``methods/`` (a grid's ``"*"`` and the contract tests over every method would pick them up
with no file to read): ``add_external_plugins(registry)`` adds them to a registry, as ``hashbench evaluate``
does. The harness knows neither by name: the planner asks a hashing plugin whether it ``loads_model`` (its
victim is loaded, never trained) and leaves every plugin's ``location_parameters`` out of keys, which hold the
content digests instead (``*_sha256``, also recorded on every row in ``hashing_params``/``attack_params``).
"""
from __future__ import annotations

import typing
from pathlib import Path

import torch

from benchmark.attack.base import Attack
from benchmark.external.files import ExternalInputError, factory_digest, file_digest
from benchmark.external.model import IN_MEMORY_PREFIX
from benchmark.external.queries import over_budget, read_query_file
from benchmark.plugins import Plugin, Registry, file_hash


def model_digests(model: str, checkpoint: str = "") -> dict[str, str]:
    """``model_sha256`` (the TorchScript file's; a factory's source and name; memory's digest) and
    ``checkpoint_sha256``."""
    if model.startswith(IN_MEMORY_PREFIX):
        return {"model_sha256": model[len(IN_MEMORY_PREFIX):], "checkpoint_sha256": ""}
    if checkpoint:
        return {"model_sha256": factory_digest(model), "checkpoint_sha256": file_digest(checkpoint, "checkpoint")}
    return {"model_sha256": file_digest(model, "model file"), "checkpoint_sha256": ""}


class ExternalVictim(Plugin):
    """A hashing model trained elsewhere: loaded from the user's file (``benchmark.external.model``)."""

    kind: typing.ClassVar[str] = "hashing"
    name = "external"
    paper = "a model trained elsewhere, evaluated as given (hashbench evaluate): loaded, never trained here"
    loads_model: typing.ClassVar[bool] = True
    location_parameters: typing.ClassVar[tuple[str, ...]] = ("model", "checkpoint")

    model: str = ""              # a TorchScript file, MODULE:FACTORY (with checkpoint), or memory:<digest>
    checkpoint: str = ""         # the factory's state dict
    model_sha256: str = ""
    checkpoint_sha256: str = ""

    def label(self) -> str:
        return f"external[sha256={self.model_sha256[:12]}{'+' + self.checkpoint_sha256[:12] if self.checkpoint else ''}]"

    def check_unchanged(self) -> None:
        """The files are those the cells were planned with (their digests are in the keys)."""
        if not self.model:
            raise ExternalInputError("the external victim names no model (set hashing.external.model)")
        now = model_digests(self.model, self.checkpoint)
        for name, digest in now.items():
            if getattr(self, name) != digest:
                raise ExternalInputError(f"external model {self.model!r}: {name} is {digest[:12] or '(none)'} now, "
                                         f"{getattr(self, name)[:12] or '(none)'} when its cells were planned; run "
                                         f"the command again")

    def fit(self, *args, **kwargs) -> None:
        raise TypeError("the external victim is loaded from the user's file, never trained (hashbench evaluate)")


class ExternalQueries(Attack):
    """The user's own adversarial queries, read from a file in the query order of the dataset card.

    Each batch of queries gets the file's images at its positions (the harness hands the queries over in
    order); images outside the epsilon ball around their clean queries fail the cell, naming the largest
    L-inf (``benchmark.external.queries``)."""

    name = "external"
    paper = "the user's own adversarial queries, read from a file (hashbench evaluate --adversarial-queries)"
    location_parameters: typing.ClassVar[tuple[str, ...]] = ("queries",)

    queries: str = ""            # a .pt or .npy file of (Q, C, H, W) images in [0, 1]
    queries_sha256: str = ""

    def label(self) -> str:
        return f"external[sha256={self.queries_sha256[:12]}]"

    def prepare(self, ctx) -> None:
        super().prepare(ctx)
        if not self.queries:
            raise ExternalInputError("the external attack names no file (set attacks.external.queries)")
        self.images = read_query_file(self.queries, self.queries_sha256)
        self.position = 0

    def perturb(self, x: torch.Tensor, labels: torch.Tensor, target_labels: torch.Tensor) -> torch.Tensor:
        start = self.position
        images = self.images[start:start + len(x)].to(x.device, x.dtype)
        if len(images) < len(x):
            raise ExternalInputError(f"adversarial-queries file {self.queries!r} holds {len(self.images)} images; "
                                     f"the query set has more (queries {start}..{start + len(x) - 1} asked for)")
        problem = over_budget(images, x, self.epsilon if self.is_bounded() else None, self.queries, start)
        if problem:
            raise ExternalInputError(problem)
        self.position += len(x)
        return images


EXTERNAL_PLUGINS = (ExternalVictim, ExternalQueries)


def add_external_plugins(registry: Registry) -> Registry:
    """``registry`` with the external victim and attack (named ``external``) added, as from this file."""
    source = Path(__file__).resolve()
    for plugin in EXTERNAL_PLUGINS:
        plugin.source_file, plugin.source_hash = str(source), file_hash(source)
        registry.plugins.setdefault(plugin.kind, {})[plugin.name] = plugin
    return registry
