"""Content digests of what a user hands in: a file, a factory's source, a module held in memory.

    file_digest("model.pt")                     # sha256 of the bytes
    factory_digest("mymodels.py:make_model")    # sha256 of the module's source file and the factory's name
    module_digest(net)                          # sha256 of its state dict and its classes' source

A digest is a parameter of the external victim or attack (``benchmark.external.plugins``), so it is part of
their keys and recorded on every row; the path is where the file was, which the rows record and no key holds.
"""
from __future__ import annotations

import hashlib
import importlib.util
import inspect
from pathlib import Path

import torch
from torch import nn


class ExternalInputError(ValueError):
    """A model, checkpoint or adversarial-queries file that cannot be used; the message names it and why."""


def file_digest(path: str | Path, what: str = "file") -> str:
    path = Path(path)
    if not path.is_file():
        raise ExternalInputError(f"{what} {str(path)!r} does not exist" + (
            " (it is a folder; give the file)" if path.is_dir() else ""))
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()  # as data/images.py's whole_file_digest reads


def split_factory(spec: str) -> tuple[str, str]:
    """``"pkg.models:make"`` or ``"path/models.py:make"`` -> (module, factory name)."""
    module, sep, name = spec.rpartition(":")
    if not sep or not module or not name.isidentifier():
        raise ExternalInputError(f"model factory {spec!r} is not MODULE:FUNCTION (e.g. mymodels:make_model or "
                                 f"path/to/mymodels.py:make_model); a TorchScript file needs no --checkpoint")
    return module, name


def factory_source(spec: str) -> Path:
    """The source file of a factory's module, found without running it."""
    module, _ = split_factory(spec)
    if module.endswith(".py"):
        path = Path(module)
        if not path.is_file():
            raise ExternalInputError(f"model factory {spec!r}: the file {module!r} does not exist")
        return path.resolve()
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:
        found, why = None, f" ({type(exc).__name__}: {exc})"
    else:
        why = ""
    if found is None or not found.origin or not Path(found.origin).is_file():
        raise ExternalInputError(f"model factory {spec!r}: module {module!r} cannot be imported from here{why}; "
                                 f"run from the folder that holds it, put it on PYTHONPATH, or give its file "
                                 f"(path/to/{module.split('.')[-1]}.py:FUNCTION)")
    return Path(found.origin)


def factory_digest(spec: str) -> str:
    hashed = hashlib.sha256(factory_source(spec).read_bytes())
    hashed.update(b":" + split_factory(spec)[1].encode())
    return hashed.hexdigest()


def module_digest(module: nn.Module) -> str:
    """An in-memory model's identity: its parameters and buffers (names, dtypes, shapes, bytes) and the source
    of every class in its module tree (a class whose source cannot be read, one typed at a prompt, counts by
    its qualified name)."""
    hashed = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        value = tensor.detach().cpu().contiguous()
        hashed.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        hashed.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    for cls in sorted({type(m) for m in module.modules()}, key=lambda c: (c.__module__, c.__qualname__)):
        try:
            source = inspect.getsource(cls)
        except (OSError, TypeError):
            source = f"{cls.__module__}.{cls.__qualname__}"
        hashed.update(source.encode())
    return hashed.hexdigest()
