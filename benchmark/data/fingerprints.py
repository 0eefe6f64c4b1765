"""Split fingerprints: which published query, database or training list a split's images are, from their names.

A list's fingerprint is the SHA-256 of its sorted, normalised image names, each followed by a newline (UTF-8).
Normalising keeps a path's file name only, the part after its last "/" (or "\\"): the papers' repositories put the
same image under different roots (``images/0484_1544502940.jpg``, ``./data/nuswide_81/images/...``,
``/home/.../coco/val2014/COCO_val2014_...jpg`` beside ``val2014/COCO_val2014_...jpg``, and for ImageNet
``ILSVRC2012/val/n02219486/ILSVRC2012_val_00021157.JPEG`` beside ``val_image/ILSVRC2012_val_00000007.JPEG``), and
within every registered list the file names are unique (COCO, ILSVRC2012, NUS-WIDE, MIRFlickr and VOC name each
image once). A repeated name counts once per listing in the fingerprint.

A list's sketch is the sorted first 8 hex digits (32 bits) of the SHA-256 of each distinct normalised name; overlaps
between two lists are counted on sketches. Two different names share a prefix with probability 2**-32, so two
5,000-image lists show a false shared image with probability about 0.6%, two 120,000-image lists about 3 false
shared images. In the registry a sketch is stored as base64 of the zlib-compressed little-endian uint32
differences of the sorted prefixes (``encode_sketch``); a list of more than FULL_SKETCH distinct names keeps
only its BOTTOM_K smallest prefixes (a bottom-k sketch, ``sketch_sampled``), and its overlaps are estimated:
the shared prefixes below the largest one kept, scaled by the list's distinct names over BOTTOM_K. An overlap
that collisions between unrelated names would reach with probability CHANCE or more (one shared name between
two lists of 10,000 and 20,000 images, a 5% chance) is not reported.

The registry (``split_registry.json`` beside this file, built by ``tools/split_registry.py`` from the
repositories' git snapshots; facts only: fingerprints, sizes, label counts, sketches, the ImageNet classes the
paths name) has one entry per (repository, dataset, list), with where it came from (repository, path, commit), or
``status: absent`` with the reason when the snapshot lacks the file.

    identified = identify_list(paths)                # exact variants, or the nearest with their overlaps
    split_identity(splits)                           # {"split_fingerprint", "split_variant"} for result rows
"""
from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
import re
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

REGISTRY_FILE = Path(__file__).with_name("split_registry.json")
ROLES = ("query", "database", "train")
FULL_SKETCH = 25_000  # lists up to this many distinct names keep every prefix
BOTTOM_K = 8_192  # prefixes kept of a larger list
CHANCE = 0.01  # an overlap that prefix collisions alone reach with this probability or more is not reported
NEAREST = 4  # nearest registered lists named when none matches exactly (identical registered lists count once)
WNID = re.compile(r"^n\d{8}")  # an ImageNet class id, as a folder name or a file name's prefix


def normalised_name(path: str) -> str:
    return path.strip().replace("\\", "/").rsplit("/", 1)[-1]


def list_fingerprint(paths: Sequence[str]) -> str:
    """The SHA-256 (64 hex digits) of the sorted normalised names, one a line."""
    text = "".join(f"{name}\n" for name in sorted(normalised_name(path) for path in paths))
    return hashlib.sha256(text.encode()).hexdigest()


def name_sketch(paths: Sequence[str]) -> np.ndarray:
    """The sorted distinct 32-bit SHA-256 prefixes of the normalised names (uint32)."""
    prefixes = {int(hashlib.sha256(normalised_name(path).encode()).hexdigest()[:8], 16) for path in paths}
    return np.array(sorted(prefixes), dtype=np.uint32)


def stored_sketch(sketch: np.ndarray) -> tuple[np.ndarray, bool]:
    """The prefixes the registry keeps of a list's sketch, and whether they are a bottom-k sample."""
    return (sketch, False) if len(sketch) <= FULL_SKETCH else (sketch[:BOTTOM_K], True)


def encode_sketch(sketch: np.ndarray) -> str:
    steps = np.diff(sketch.astype(np.int64), prepend=0).astype("<u4")
    return base64.b64encode(zlib.compress(steps.tobytes(), 9)).decode()


def decode_sketch(text: str) -> np.ndarray:
    steps = np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype="<u4")
    return np.cumsum(steps, dtype=np.uint64).astype(np.uint32)


def imagenet_classes(paths: Sequence[str]) -> list[str]:
    """The distinct ImageNet wnids the paths name (a folder ``n01440764/`` or a file ``n01440764_10026.JPEG``)."""
    found = set()
    for path in paths:
        for part in path.strip().replace("\\", "/").split("/"):
            match = WNID.match(part)
            if match:
                found.add(match.group())
    return sorted(found)


@dataclass(frozen=True)
class Registry:
    """The registered lists (``entries``: dicts as in the JSON file) and their decoded sketches."""

    entries: tuple
    sketches: dict = field(default_factory=dict)  # entry id -> np.ndarray
    normalisation: str = ""

    def present(self) -> list[dict]:
        return [entry for entry in self.entries if entry["status"] == "ok"]

    def absent(self) -> list[dict]:
        return [entry for entry in self.entries if entry["status"] != "ok"]


def read_registry(data: dict) -> Registry:
    entries = tuple(data["lists"])
    sketches = {entry["id"]: decode_sketch(entry["sketch"]) for entry in entries if entry.get("sketch")}
    return Registry(entries, sketches, data.get("normalisation", ""))


@functools.lru_cache(maxsize=4)
def load_registry(path: str | Path = REGISTRY_FILE) -> Registry:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"split registry {path} cannot be read ({type(exc).__name__}: {exc}); rebuild it with "
                         f"tools/split_registry.py") from None
    return read_registry(data)


@dataclass(frozen=True)
class Overlap:
    entry: dict
    shared: int  # distinct names in both (counted on sketches; estimated when ``estimated``)
    share_of_list: float  # shared / the user's distinct names
    share_of_entry: float  # shared / the registered list's distinct names
    shared_classes: int | None = None  # ImageNet wnids in both, when both lists name them
    classes: int | None = None
    estimated: bool = False  # the registered list's sketch is a bottom-k sample
    same_as: tuple = ()  # ids of the registered lists identical to ``entry`` (one line for all of them)


@dataclass(frozen=True)
class Identification:
    fingerprint: str
    size: int
    exact: tuple  # registry entries with the same fingerprint
    nearest: tuple  # Overlap: lists of the same role first, then most shared (only when nothing matches exactly)
    contained_in: tuple  # entries holding every name of the list (a subset of a registered list)

    def matches(self) -> str:
        """The registered lists it is exactly ("a|b" when two registered lists are the same), else ""."""
        return "|".join(sorted(entry["id"] for entry in self.exact))


def identify_list(paths: Sequence[str], registry: Registry | None = None, nearest: int = NEAREST,
                  role: str = "") -> Identification:
    """The registered lists ``paths`` is exactly; else the ``nearest`` ones (those of ``role`` first) with their
    overlaps, and the lists holding all of it."""
    registry = registry or load_registry()
    fingerprint = list_fingerprint(paths)
    exact = tuple(e for e in registry.present() if e["sha256"] == fingerprint)
    overlaps, contained = [], []
    if not exact:
        sketch, classes = name_sketch(paths), set(imagenet_classes(paths))
        for entry in registry.present():
            theirs = registry.sketches.get(entry["id"])
            if theirs is None:
                continue
            sampled = bool(entry.get("sketch_sampled"))
            shared = shared_names(sketch, theirs, entry["distinct"] if sampled else None)
            shared_classes = (len(classes & set(entry["imagenet_classes"]))
                              if classes and entry.get("imagenet_classes") else None)
            if shared and collision_chance(shared, len(sketch) * entry["distinct"] / 2 ** 32) > CHANCE:
                shared = 0  # as many as 32-bit prefix collisions between unrelated names would give
            if shared or shared_classes:
                overlaps.append(Overlap(entry, shared, shared / max(len(sketch), 1), shared / entry["distinct"],
                                        shared_classes, len(classes) if shared_classes is not None else None,
                                        sampled))
            if not sampled and shared == len(sketch) and len(sketch):
                contained.append(entry)
        overlaps.sort(key=lambda o: (o.entry["role"] != role, -o.shared, -(o.shared_classes or 0), o.entry["id"]))
        overlaps = merged_identical(overlaps)
    return Identification(fingerprint, len(paths), exact, tuple(overlaps[:nearest]), tuple(contained))


def collision_chance(shared: int, expected: float) -> float:
    """P(at least ``shared`` false matches) when prefix collisions are Poisson with mean ``expected``."""
    term = below = math.exp(-expected)
    for k in range(1, min(shared, 60)):
        term *= expected / k
        below += term
    return max(0.0, 1.0 - below)


def merged_identical(overlaps: list[Overlap]) -> list[Overlap]:
    """One Overlap per distinct registered list (HashNet's pytorch and caffe lists, ProS-GAN's COCO lists)."""
    first: dict[str, int] = {}
    out: list[Overlap] = []
    for overlap in overlaps:
        digest = overlap.entry["sha256"]
        if digest in first:
            kept = out[first[digest]]
            out[first[digest]] = replace(kept, same_as=(*kept.same_as, overlap.entry["id"]))
        else:
            first[digest] = len(out)
            out.append(overlap)
    return out


def shared_names(sketch: np.ndarray, theirs: np.ndarray, distinct: int | None = None) -> int:
    """Distinct names in both lists; with ``distinct`` (``theirs`` a bottom-k sample of that many names)
    estimated from the prefixes below the sample's largest."""
    if distinct is None:
        return int(np.intersect1d(sketch, theirs, assume_unique=True).size)
    below = sketch[sketch <= theirs[-1]] if len(theirs) else sketch[:0]
    return round(np.intersect1d(below, theirs, assume_unique=True).size * distinct / len(theirs))


def split_variant(identified: dict[str, Identification]) -> str:
    """One text for a split's roles: "nuswide@prosgan" when each role is that variant's list of the same role;
    else each role's registered lists, "query=nuswide@prosgan/query; database=nuswide@prosgan/train" (a query
    subset: "query=subset of nuswide@prosgan/query"); "" when no role is registered."""
    own = [{e["variant"] for e in ident.exact if e["role"] == role} for role, ident in identified.items()]
    whole = set.intersection(*own) if len(own) == len(ROLES) else set()
    if whole:
        return "|".join(sorted(whole))
    parts = []
    for role, ident in identified.items():
        if ident.exact:
            parts.append(f"{role}={'|'.join(sorted(e['id'] for e in ident.exact))}")
        elif ident.contained_in:
            parts.append(f"{role}=subset of {'|'.join(sorted(e['id'] for e in ident.contained_in))}")
    return "; ".join(parts)


def combined_fingerprint(fingerprints: dict[str, str]) -> str:
    """16 hex digits of the SHA-256 of "role=fingerprint" lines in the order query, database, train (a role
    without a list: "role=")."""
    text = "".join(f"{role}={fingerprints.get(role, '')}\n" for role in ROLES)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def image_names(image_set) -> list[str] | None:
    """The file paths of an image set read from files (a subset's too), or None for images held in memory."""
    paths = getattr(image_set, "paths", None)
    if paths is not None:
        return list(paths)
    base, index = getattr(image_set, "base", None), getattr(image_set, "index", None)
    if base is not None and index is not None:
        names = image_names(base)
        return None if names is None else [names[i] for i in index.tolist()]
    return None


def split_identity(splits, registry: Registry | None = None) -> dict[str, str]:
    """The columns every result row carries: ``split_fingerprint`` (``combined_fingerprint`` of the three lists
    when the images are files; the split's content fingerprint when they are held in memory) and ``split_variant``
    (``split_variant``; "" when unknown or in memory)."""
    names = {role: image_names(getattr(splits, role)) for role in ROLES}
    if any(value is None for value in names.values()):
        return {"split_fingerprint": splits.fingerprint(), "split_variant": ""}
    identified = {role: identify_list(paths, registry) for role, paths in names.items()}
    return {"split_fingerprint": combined_fingerprint({role: i.fingerprint for role, i in identified.items()}),
            "split_variant": split_variant(identified)}
