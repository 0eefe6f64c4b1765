"""What a plugin call may not leave behind, checked around every call the harness makes into a plugin.

    with torch_settings_kept(attack, "perturb"):            # grad mode, default dtype, threads, ... put back
        output = attack.perturb(x, labels, targets)
    before = model_fingerprint(model)
    ...                                                     # plugin calls
    check_model_kept(before, model_fingerprint(model), attack, "prepare()", "the victim")

torch's process-wide settings are restored after the call (a warning names what the plugin changed): a plugin
that turns gradients off would otherwise break the next cell and be blamed on the next plugin. A model is
shared with later cells (the session memoises victims), so a plugin that adds a hook, replaces a submodule
or sets an attribute on it, or changes its weights, fails the cell with a ``PluginLeak`` naming the plugin.
Random number generators are left alone: the draws of one call carry on into the next by design.
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.modules import module as module_globals

log = logging.getLogger("hashbench")

# the attributes nn.Module.__init__ itself sets: parameters, buffers, submodules, hook tables, ``training``
TORCH_BOOKKEEPING = frozenset(vars(nn.Module()))
GLOBAL_HOOK_TABLES = tuple(name for name, value in vars(module_globals).items()
                           if name.startswith("_global_") and "hooks" in name and isinstance(value, dict))


class PluginLeak(RuntimeError):
    """A plugin call changed a model the harness shares with other cells."""


def plugin_identity(plugin) -> str:
    """``attacks pgd (methods/attacks/pgd.py)``: kind, name and file of a configured plugin."""
    kind, name = getattr(plugin, "kind", "plugin"), getattr(plugin, "name", type(plugin).__name__)
    source = getattr(plugin, "source_file", "") or source_file_of(type(plugin))
    return f"{kind} {name} ({source})"


def source_file_of(cls: type) -> str:
    try:
        return inspect.getsourcefile(cls) or "file unknown"
    except TypeError:
        return "file unknown"


# ---------------------------------------------------------------- torch's process-wide settings

def _deterministic() -> tuple[bool, bool]:
    return torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()


def _set_deterministic(value: tuple[bool, bool]) -> None:
    torch.use_deterministic_algorithms(value[0], warn_only=value[1])


def _attribute(owner, name: str) -> tuple[Callable, Callable]:
    return (lambda: getattr(owner, name)), (lambda value: setattr(owner, name, value))


def _global_hooks() -> dict[str, dict]:
    return {name: dict(getattr(module_globals, name)) for name in GLOBAL_HOOK_TABLES}


def _set_global_hooks(tables: dict[str, dict]) -> None:
    for name, hooks in tables.items():
        table = getattr(module_globals, name)
        table.clear()
        table.update(hooks)


# name: (read, write); each read is cheap, and a write happens only for a setting the call changed
TORCH_SETTINGS: dict[str, tuple[Callable, Callable]] = {
    "grad mode": (torch.is_grad_enabled, torch.set_grad_enabled),
    "default dtype": (torch.get_default_dtype, torch.set_default_dtype),
    "default device": (torch.get_default_device, torch.set_default_device),
    "deterministic algorithms": (_deterministic, _set_deterministic),
    "num_threads": (torch.get_num_threads, torch.set_num_threads),
    "anomaly detection": (torch.is_anomaly_enabled, torch.set_anomaly_enabled),
    "float32 matmul precision": (torch.get_float32_matmul_precision, torch.set_float32_matmul_precision),
    "cudnn.enabled": _attribute(torch.backends.cudnn, "enabled"),
    "cudnn.benchmark": _attribute(torch.backends.cudnn, "benchmark"),
    "cudnn.deterministic": _attribute(torch.backends.cudnn, "deterministic"),
    "cudnn.allow_tf32": _attribute(torch.backends.cudnn, "allow_tf32"),
    "cuda.matmul.allow_tf32": _attribute(torch.backends.cuda.matmul, "allow_tf32"),
    "global module hooks": (_global_hooks, _set_global_hooks),
}


def torch_settings() -> dict[str, object]:
    return {name: read() for name, (read, _) in TORCH_SETTINGS.items()}


def restore_torch_settings(saved: dict[str, object]) -> list[str]:
    """Put back every setting that differs from ``saved``; the names of those that did."""
    changed = [name for name, value in torch_settings().items() if value != saved[name]]
    for name in changed:
        TORCH_SETTINGS[name][1](saved[name])
    return changed


@contextlib.contextmanager
def torch_settings_kept(plugin, call: str):
    """Run a plugin call with torch's process-wide settings restored afterwards (also when it raises)."""
    saved = torch_settings()
    try:
        yield
    finally:
        changed = restore_torch_settings(saved)
        if changed:
            log.warning("%s changed torch's %s in %s(); restored", plugin_identity(plugin), ", ".join(changed), call)


# ---------------------------------------------------------------- a model's fingerprint

def model_fingerprint(model: nn.Module, weights: bool = True) -> dict[str, str]:
    """One digest per part a plugin could change: weights, parameter flags, train/eval modes, hooks, the module
    tree and instance attributes (``vars`` of every submodule, less torch's own bookkeeping). Without
    ``weights`` (the one part whose cost grows with the model) that part is left empty."""
    modules = list(model.named_modules(remove_duplicate=False))
    return {
        "weights": weights_checksum(model) if weights else "",
        "parameters": digest([(name, id(p), p.requires_grad, hook_ids(getattr(p, "_backward_hooks", None)),
                               hook_ids(getattr(p, "_post_accumulate_grad_hooks", None)))
                              for name, p in model.named_parameters(remove_duplicate=False)]),
        "modes": digest([(name, m.training) for name, m in modules]),
        "hooks": digest([(name, table, hook_ids(value)) for name, m in modules
                         for table, value in sorted(vars(m).items()) if "hook" in table and isinstance(value, dict)]),
        "modules": digest([(name, type(m).__module__, type(m).__qualname__, id(m)) for name, m in modules]),
        "attributes": digest([(name, key, id(value)) for name, m in modules for key, value in sorted(vars(m).items())
                              if key not in TORCH_BOOKKEEPING]),
    }


def weights_checksum(model: nn.Module) -> str:
    """Hash of every parameter and buffer, to tell whether a plugin changed the model in place."""
    hashed = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        hashed.update(name.encode())
        hashed.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return hashed.hexdigest()


def hook_ids(table) -> list:
    return [] if not table else [(handle, id(hook)) for handle, hook in table.items()]


def digest(items: list) -> str:
    return hashlib.sha256(repr(items).encode()).hexdigest()


PART_WORDS = {"weights": "the weights", "parameters": "the parameters (replaced, requires_grad or their hooks)",
              "modes": "the train/eval mode", "hooks": "the hooks", "modules": "the module tree",
              "attributes": "the instance attributes"}


def check_model_kept(before: dict[str, str], after: dict[str, str], plugin, call: str, what: str,
                     allowed: tuple[str, ...] = ()) -> None:
    """Raise ``PluginLeak`` naming the plugin and what changed when a fingerprint part outside ``allowed`` moved."""
    changed = [part for part in before if part not in allowed and before[part] != after[part]]
    if changed:
        raise PluginLeak(f"{plugin_identity(plugin)} changed {', '.join(PART_WORDS[p] for p in changed)} of {what} "
                         f"in {call}; a plugin must leave the models it is given as it found them (work on a "
                         f"copy: copy.deepcopy(model)), as other cells share them")
