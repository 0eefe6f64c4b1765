"""A user's own adversarial queries, read from a file and checked against the clean queries they stand for.

    images = read_query_file("adv.npy")                       # (Q, C, H, W) float32 in [0, 1]
    check_against_queries(images, clean, epsilon, "adv.npy")  # the query set's shape, inside the epsilon ball

A file over the budget is refused (``ExternalInputError`` with the measured L-inf), not projected: projecting
would score images the user did not make, and scoring them as they are would put an over-budget row beside the
in-budget ones of the same epsilon. The message names the epsilon the file does fit.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from benchmark.external.files import ExternalInputError, file_digest

SUFFIXES = (".pt", ".npy")
TOLERANCE = 1e-6   # as the harness's own budget check (benchmark.attack.stage.enforce_budget)


def read_query_file(path: str, expected_sha256: str = "") -> torch.Tensor:
    """The images of a ``.pt`` (a tensor, or a dict with an ``images`` tensor) or ``.npy`` file, float32."""
    what = "adversarial-queries file"
    digest = file_digest(path, what)
    if expected_sha256 and digest != expected_sha256:
        raise ExternalInputError(f"{what} {path!r} changed since its cells were planned (sha256 {digest[:12]}, "
                                 f"planned {expected_sha256[:12]}); run the command again")
    suffix = Path(path).suffix.lower()
    try:
        if suffix == ".pt":
            loaded = torch.load(path, map_location="cpu", weights_only=True)
            images = loaded.get("images") if isinstance(loaded, dict) else loaded
        elif suffix == ".npy":
            images = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            raise ExternalInputError(f"{what} {path!r} has suffix {suffix or '(none)'!r}; accepted: "
                                     f"{', '.join(SUFFIXES)} (torch.save(tensor) or numpy.save)")
    except ExternalInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - an unreadable file, whatever the reader raises
        raise ExternalInputError(f"{what} {path!r} cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(images, torch.Tensor):
        raise ExternalInputError(f"{what} {path!r} holds {type(images).__name__}; expected one tensor of images "
                                 f"(Q, C, H, W), or a dict with an 'images' tensor")
    if images.ndim != 4:
        raise ExternalInputError(f"{what} {path!r} holds shape {tuple(images.shape)}; expected (Q, C, H, W), the "
                                 f"queries in the order of the dataset card")
    if not images.is_floating_point():
        raise ExternalInputError(f"{what} {path!r} holds {images.dtype} values; expected floats in [0, 1]"
                                 + (" (divide 0..255 bytes by 255)" if images.dtype == torch.uint8 else ""))
    if not torch.isfinite(images).all():
        raise ExternalInputError(f"{what} {path!r} holds NaN or infinite pixels")
    low, high = float(images.min()), float(images.max())
    if low < -TOLERANCE or high > 1 + TOLERANCE:
        raise ExternalInputError(f"{what} {path!r} has pixels in [{low:.4g}, {high:.4g}]; images must lie in [0, 1] "
                                 f"(unnormalised pixels, as the victims see them)")
    return images.float()


def over_budget(images: torch.Tensor, clean: torch.Tensor, epsilon: float | None, path: str,
                first: int = 0) -> str:
    """Why ``images`` cannot stand for ``clean`` (queries ``first``..) at ``epsilon``, or "" when they can."""
    if images.shape != clean.shape:
        return (f"adversarial-queries file {path!r}: images {first}..{first + len(clean) - 1} have shape "
                f"{tuple(images.shape[1:])}, the clean queries {tuple(clean.shape[1:])}"
                if images.shape[1:] != clean.shape[1:] else
                f"adversarial-queries file {path!r} holds {len(images)} images for {len(clean)} queries")
    if epsilon is None:
        return ""
    linf = (images.float() - clean.float()).flatten(1).abs().amax(1)
    bad = torch.nonzero(linf > epsilon + TOLERANCE).flatten()
    if not len(bad):
        return ""
    worst = float(linf.max())
    return (f"adversarial-queries file {path!r}: {len(bad)} of {len(clean)} images lie outside the L-inf ball of "
            f"epsilon {epsilon:.6g} ({epsilon * 255:.3g}/255) around their clean queries (the first: query "
            f"{first + int(bad[0])}); the largest L-inf is {worst:.6g} ({worst * 255:.3g}/255). Give --epsilon "
            f"{worst:.6g} or more to score them at that budget, or check that the file follows the card's query "
            f"order")


def check_against_queries(images: torch.Tensor, clean: torch.Tensor, epsilon: float | None, path: str) -> float:
    """The largest L-inf distance of ``images`` from ``clean``; ExternalInputError when they do not fit."""
    problem = over_budget(images, clean, epsilon, path)
    if problem:
        raise ExternalInputError(problem)
    return float((images - clean).flatten(1).abs().amax(1).max()) if len(images) else 0.0
