"""A user's model as a victim: loaded from a TorchScript file, a factory and its state dict, or memory.

    net = load_network("model.pt")                                   # TorchScript
    net = load_network("mymodels.py:make_model", "state.pt")         # factory() then load_state_dict
    model = ExternalModel(net, bits=probe_bits(net, images), name="model")

The network maps images in [0, 1], (N, C, H, W), to K real outputs y, (N, K); codes are sign(y) (0 -> +1), as
for a trained victim (``benchmark.victim.model.HashModel``), whose interface ``ExternalModel`` has: ``logits``,
``forward(x, alpha) = tanh(alpha * y)`` for the attacks, ``codes``, ``bits``. Every forward is checked: an
output that is not (N, K) or holds a NaN or an infinity fails with a message naming the model.
"""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import torch
from torch import nn

from benchmark.external.files import ExternalInputError, factory_source, split_factory
from benchmark.victim.model import binarize

IN_MEMORY_PREFIX = "memory:"
IN_MEMORY: dict[str, nn.Module] = {}   # "memory:<digest>" -> a frozen copy of a module handed to hashbench.evaluate


class ExternalModel(nn.Module):
    """A loaded network with the victim's interface; its outputs checked on every call."""

    def __init__(self, net: nn.Module, bits: int, name: str):
        super().__init__()
        self.net = net
        self.bits = bits
        self.backbone = name

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return checked_outputs(self.net(x), len(x), self.bits, self.backbone)

    def forward(self, x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
        return torch.tanh(alpha * self.logits(x))

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        return binarize(self.logits(x))


def checked_outputs(outputs, n: int, bits: int | None, name: str) -> torch.Tensor:
    """``outputs`` when it is a finite floating-point (n, K) tensor (K = ``bits`` when given)."""
    if not isinstance(outputs, torch.Tensor):
        raise ExternalInputError(f"model {name!r} returned {type(outputs).__name__}; it must return one tensor of "
                                 f"shape (N, K), K real outputs per image (codes are their signs)")
    if outputs.ndim != 2 or outputs.shape[0] != n or (bits is not None and outputs.shape[1] != bits):
        expected = f"({n}, {bits})" if bits is not None else f"({n}, K)"
        raise ExternalInputError(f"model {name!r} returned shape {tuple(outputs.shape)} for {n} images; expected "
                                 f"{expected}: one row of K real outputs per image")
    if not outputs.is_floating_point():
        raise ExternalInputError(f"model {name!r} returned {outputs.dtype} outputs; expected real numbers (float)")
    if not torch.isfinite(outputs).all():
        bad = int((~torch.isfinite(outputs)).any(1).sum())
        raise ExternalInputError(f"model {name!r} returned NaN or infinite outputs for {bad} of {n} images")
    return outputs


def probe_bits(net: nn.Module, images: torch.Tensor, name: str) -> int:
    """K, read from the outputs for two images (two, so that a model that drops the batch axis is caught)."""
    with torch.no_grad():
        outputs = checked_outputs(net(images[:2]), len(images[:2]), None, name)
    if outputs.shape[1] < 1:
        raise ExternalInputError(f"model {name!r} returned no outputs per image (shape {tuple(outputs.shape)})")
    return int(outputs.shape[1])


def model_name(model: str) -> str:
    """What the rows call the model (their ``backbone``): the file's stem, the factory's name, memory's class."""
    if model.startswith(IN_MEMORY_PREFIX):
        net = IN_MEMORY.get(model)
        return type(net).__name__ if net is not None else "in_memory"
    if ":" in model and not Path(model).is_file():
        return split_factory(model)[1]
    return Path(model).stem


def load_network(model: str, checkpoint: str = "", device: torch.device | str = "cpu") -> nn.Module:
    """The user's network in eval mode on ``device``; ExternalInputError naming the input when it cannot be had."""
    if model.startswith(IN_MEMORY_PREFIX):
        if model not in IN_MEMORY:
            raise ExternalInputError(f"in-memory model {model} is not held by this process (an in-memory model is "
                                     f"evaluated in the process that passed it to hashbench.evaluate)")
        net = IN_MEMORY[model]
    elif checkpoint:
        net = built_by_factory(model, checkpoint)
    else:
        net = torchscript(model)
    return net.to(device).eval()


def torchscript(path: str) -> nn.Module:
    if not Path(path).is_file():
        raise ExternalInputError(f"model file {path!r} does not exist")
    try:
        return torch.jit.load(path, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - whatever torch.jit.load raises, the user's file is at fault
        raise ExternalInputError(
            f"model file {path!r} is not a TorchScript file that torch.jit.load can read ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); save one with torch.jit.save(torch.jit.script(model), "
            f"path), or give a state dict as --model MODULE:FACTORY --checkpoint FILE") from None


def import_factory(spec: str):
    module_name, function = split_factory(spec)
    source = factory_source(spec)
    try:
        if module_name.endswith(".py"):
            loaded = importlib.util.spec_from_file_location(f"hashbench_external.{source.stem}", source)
            module = importlib.util.module_from_spec(loaded)
            loaded.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except BaseException as exc:  # noqa: BLE001 - SystemExit of a script's main included: the user's file
        raise ExternalInputError(f"model factory {spec!r}: importing {source} failed ({type(exc).__name__}: "
                                 f"{exc})") from None
    factory = getattr(module, function, None)
    if not callable(factory):
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise ExternalInputError(f"model factory {spec!r}: {source} has no function {function!r}; it has "
                                 f"{', '.join(found) or 'none'}")
    return factory


def built_by_factory(spec: str, checkpoint: str) -> nn.Module:
    factory = import_factory(spec)
    try:
        net = factory()
    except Exception as exc:  # noqa: BLE001 - the user's factory failed, whatever it raised
        raise ExternalInputError(f"model factory {spec!r} failed when called with no arguments "
                                 f"({type(exc).__name__}: {exc})") from None
    if not isinstance(net, nn.Module):
        raise ExternalInputError(f"model factory {spec!r} returned {type(net).__name__}; it must return a "
                                 f"torch.nn.Module")
    if not Path(checkpoint).is_file():
        raise ExternalInputError(f"checkpoint {checkpoint!r} does not exist")
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - an unreadable checkpoint, whatever torch.load raises
        raise ExternalInputError(f"checkpoint {checkpoint!r} cannot be read by torch.load(weights_only=True) "
                                 f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                                 f"save one with torch.save(model.state_dict(), path)") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ExternalInputError(f"checkpoint {checkpoint!r} holds {type(state).__name__}; expected a state dict "
                                 f"(torch.save(model.state_dict(), path))")
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise ExternalInputError(f"checkpoint {checkpoint!r} does not fit the network of {spec!r}: {exc}") from None
    return net


def hold_in_memory(net: nn.Module, digest: str) -> str:
    """Keep a frozen copy of ``net`` for this process's cells; its name (``memory:<digest>``)."""
    import copy

    name = IN_MEMORY_PREFIX + digest
    if name not in IN_MEMORY:
        held = copy.deepcopy(net).cpu().eval()
        for parameter in held.parameters():
            parameter.requires_grad_(False)
        IN_MEMORY[name] = held
    return name

