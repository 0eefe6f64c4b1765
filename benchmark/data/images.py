"""Image sets: float batches in [0, 1], shape (B, C, H, W), with multi-hot labels (N, C), and their content
fingerprints.

Normalisation and resizing live inside the victim model, so attacks work in [0, 1] pixel space.
Large sets stream from disk in batches: only labels and paths are held in memory, and a run's first pass over a
file set decodes it once into a memory-mapped array in the stage cache (``benchmark.data.preprocessed``).
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch


class DatasetNotFound(FileNotFoundError):
    """Raised with the places searched and how to get the data."""


class ImageUnreadable(ValueError):
    """A listed image file that exists but cannot be decoded (truncated, not an image); names the file."""


class ImageSet:
    """A labelled set of images; subclasses implement ``__len__`` and ``load``."""

    labels: torch.Tensor  # (N, C) float32 multi-hot

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: torch.Tensor) -> torch.Tensor:
        """Images at ``index`` (a 1-D int64 tensor) as float32 in [0, 1], (B, C, H, W)."""
        raise NotImplementedError

    def batches(self, batch_size: int, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield ``(images, labels, index)`` batches. A set read from files makes its preprocessed cache first
        (when it has a cache folder) and loads the next batch on a background thread while this one is used."""
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        indices = [order[start:start + batch_size] for start in range(0, len(self), batch_size)]
        files = self.file_images()
        if files is None:
            for index in indices:
                yield self.load(index), self.labels[index], index
            return
        files.preprocess()
        for index, images in prefetched(self.load, indices):
            yield images, self.labels[index], index

    def file_images(self) -> FileImages | None:
        """The file set this set's images are read from (itself or a subset's base), None for other sets."""
        return None

    def subset(self, index: Sequence[int] | torch.Tensor) -> "ImageSet":
        return SubsetImages(self, torch.as_tensor(index, dtype=torch.long))

    def fingerprint(self) -> str:
        """Content hash of the labels and identity of the images, for cache keys."""
        digest = hashlib.sha256(self.labels.numpy().tobytes())
        digest.update(self.identity().encode())
        return digest.hexdigest()[:16]

    def identity(self) -> str:
        return f"{type(self).__name__}:{len(self)}"


class TensorImages(ImageSet):
    """Images held in memory as uint8 (N, C, H, W) or float in [0, 1]."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W); got shape {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} label rows")
        self.images = images
        self.labels = labels.float()

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: torch.Tensor) -> torch.Tensor:
        batch = self.images[index]
        return batch.float() / 255.0 if batch.dtype == torch.uint8 else batch.float()

    def identity(self) -> str:
        """Hash of every image's bytes (computed once per set)."""
        if getattr(self, "_identity", None) is None:
            digest = hashlib.sha256(str(tuple(self.images.shape)).encode() + str(self.images.dtype).encode())
            digest.update(self.images.contiguous().numpy().tobytes())
            self._identity = digest.hexdigest()[:16]
        return self._identity


class SubsetImages(ImageSet):
    def __init__(self, base: ImageSet, index: torch.Tensor):
        self.base = base
        self.index = index
        self.labels = base.labels[index]

    def __len__(self) -> int:
        return len(self.index)

    def load(self, index: torch.Tensor) -> torch.Tensor:
        return self.base.load(self.index[index])

    def file_images(self) -> FileImages | None:
        return self.base.file_images()

    def identity(self) -> str:
        digest = hashlib.sha256(self.index.numpy().tobytes()).hexdigest()[:16]
        return f"{self.base.identity()}[{digest}]"


class FileImages(ImageSet):
    """Images read from files on demand: Resize(256) on the shorter side, CenterCrop(224), [0, 1].

    This is the test-time pipeline of the attack papers' code (ProS-GAN, THA, CgAT, SAAT). With a cache folder
    (``use_cache``), the first full pass (``batches``) decodes every file once into a memory-mapped uint8 array
    (``benchmark.data.preprocessed``) and every later read comes from it, byte for byte what decoding gives.
    """

    def __init__(self, paths: Sequence[str | Path], labels: torch.Tensor, resize: int = 256, crop: int = 224,
                 workers: int = min(8, os.cpu_count() or 1), origins: Sequence[str] | None = None):
        """``origins``: where each path was listed ("line 3 of test_img.txt"), for messages about its file."""
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} image paths but {len(labels)} label rows")
        self.paths = [str(p) for p in paths]
        self.labels = labels.float()
        self.resize, self.crop, self.workers = resize, crop, workers
        self.origins = dict(zip(self.paths, origins or ()))
        self.cache: dict | None = None  # use_cache's settings
        self.array = None  # the preprocessed uint8 (N, C, H, W) memmap, once made or opened

    def __len__(self) -> int:
        return len(self.paths)

    def file_images(self) -> FileImages:
        return self

    def transform(self) -> dict:
        """What ``_read`` does to a file, for the preprocessed cache's key."""
        return {"convert": "RGB", "resize_shorter_side": self.resize, "center_crop": self.crop,
                "interpolation": "bilinear, antialias (torchvision functional.resize on PIL)"}

    def use_cache(self, cache_root: str | Path, claim_timeout: float | None = None,
                  report_wait: Callable[[str], None] | None = None,
                  progress: Callable[[str], None] | None = None) -> None:
        """Keep the preprocessed images in ``cache_root``/images (made by the first full pass, ``preprocess``)."""
        self.cache = {"cache_root": Path(cache_root), "claim_timeout": claim_timeout, "report_wait": report_wait,
                      "progress": progress}

    def preprocess(self) -> None:
        """With a cache folder: open the preprocessed array, or decode every file into it once (under a claim)."""
        if self.cache is None or self.array is not None or not self.paths:
            return
        from benchmark.data.preprocessed import cache_key, preprocessed

        self.identity()
        key = cache_key(self._digests, self.transform())
        folder = os.path.commonpath([os.path.dirname(path) for path in self.paths])
        self.array = preprocessed(self.cache["cache_root"], key, len(self), lambda i: self._read(self.paths[i]),
                                  workers=self.workers, describe=f"{len(self):,} files under {folder}",
                                  claim_timeout=self.cache["claim_timeout"], report_wait=self.cache["report_wait"],
                                  progress=self.cache["progress"])

    def _read(self, path: str) -> torch.Tensor:
        from PIL import Image
        from torchvision.transforms import functional as F

        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
                image = F.resize(image, self.resize)
                image = F.center_crop(image, self.crop)
                return F.pil_to_tensor(image)
        except FileNotFoundError:
            raise DatasetNotFound(f"image file listed in the dataset is missing: {path}") from None
        except (OSError, ValueError, SyntaxError) as exc:  # PIL: truncated or unidentified files, bad headers
            listed = f" (listed at {self.origins[path]})" if path in self.origins else ""
            raise ImageUnreadable(f"image file {path}{listed} cannot be read as an image ({type(exc).__name__}: "
                                  f"{exc}); a dataset image must be a complete file PIL can open (PNG, JPEG, ...): "
                                  f"replace it, or remove its line from the list") from None

    def load(self, index: torch.Tensor) -> torch.Tensor:
        if self.array is not None:
            return torch.from_numpy(self.array[index.numpy()]).float().div_(255.0)  # the same bits as below
        paths = [self.paths[i] for i in index.tolist()]
        with ThreadPoolExecutor(self.workers) as pool:
            images = list(pool.map(self._read, paths))
        return torch.stack(images).float() / 255.0

    def identity(self) -> str:
        """Hash of every listed file's path and contents (each file's digest is remembered with its stat and a
        sample of its bytes, so only new or changed files are read again)."""
        if getattr(self, "_identity", None) is None:
            self._digests = file_digests(self.paths)
            text = "\n".join(f"{path}\t{digest}" for path, digest in zip(self.paths, self._digests))
            self._identity = hashlib.sha256(text.encode()).hexdigest()[:16]
        return self._identity


def prefetched(load: Callable[[torch.Tensor], torch.Tensor],
               indices: list[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(index, load(index))`` for each index in turn, the next one loading on a background thread meanwhile.

    ``load`` must do no work that depends on torch's thread-local or process-wide settings (a file read is
    fine; a plugin's ``protect`` is not, which is why only file sets prefetch)."""
    if not indices:
        return
    with ThreadPoolExecutor(1, thread_name_prefix="hashbench-prefetch") as pool:
        pending = pool.submit(load, indices[0])
        try:
            for position, index in enumerate(indices):
                images = pending.result()
                pending = pool.submit(load, indices[position + 1]) if position + 1 < len(indices) else None
                yield index, images
        finally:
            if pending is not None:
                pending.cancel()


DIGEST_CACHE = Path(os.environ.get("HASHBENCH_DIGESTS", Path.home() / ".cache" / "hashbench" / "file-digests.sqlite"))
SAMPLE_BYTES = 4096  # read from each end of a file for the memo's content sample
# The memo's own table; "digest" (keyed without ctime and sample, which missed in-place rewrites) is left unread.
DIGEST_TABLE = "file_digest"


def file_signature(path: str) -> tuple[int, int, int, int]:
    """(size, mtime_ns, ctime_ns, inode); a missing file raises ``DatasetNotFound`` naming it."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        raise DatasetNotFound(f"image file listed in the dataset is missing: {path}") from None
    return stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino


def content_sample(path: str, size: int) -> str:
    """Hash of the file's first and last SAMPLE_BYTES (the whole file when it is no longer than both)."""
    with open(path, "rb") as handle:
        if size <= 2 * SAMPLE_BYTES:
            sample = handle.read()
        else:
            sample = handle.read(SAMPLE_BYTES)
            handle.seek(-SAMPLE_BYTES, os.SEEK_END)
            sample += handle.read(SAMPLE_BYTES)
    return hashlib.sha256(sample).hexdigest()[:16]


def whole_file_digest(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()[:16]


def file_digests(paths: Sequence[str]) -> list[str]:
    """SHA-256 prefix of each file's contents; a missing file raises ``DatasetNotFound`` naming it.

    Digests are remembered in a small SQLite table shared by every run on the machine, keyed by path and checked
    against the file's size, mtime, ctime, inode and a hash of its first and last 4 KiB: a second fingerprint of
    a large image list reads 8 KiB per image instead of every byte, and a file rewritten in place (same size,
    mtime restored) is read again, since its ctime or its sampled bytes differ.
    """
    import sqlite3

    DIGEST_CACHE.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(DIGEST_CACHE, timeout=60) as db:
        db.execute(f"CREATE TABLE IF NOT EXISTS {DIGEST_TABLE} (path TEXT PRIMARY KEY, size INT, mtime INT, "
                   f"ctime INT, inode INT, sample TEXT, sha TEXT)")
        known = {}
        for start in range(0, len(paths), 900):
            chunk = list(paths[start:start + 900])
            rows = db.execute(f"SELECT path, size, mtime, ctime, inode, sample, sha FROM {DIGEST_TABLE} WHERE path "
                              f"IN ({','.join('?' * len(chunk))})", chunk)
            known.update({row[0]: row[1:] for row in rows})
        out, fresh = [], []
        for path in paths:
            signature = file_signature(path)
            sample = content_sample(path, signature[0])
            entry = known.get(path)
            if entry and entry[:5] == (*signature, sample):
                out.append(entry[5])
                continue
            sha = whole_file_digest(path)
            fresh.append((path, *signature, sample, sha))
            out.append(sha)
        db.executemany(f"INSERT OR REPLACE INTO {DIGEST_TABLE} VALUES (?, ?, ?, ?, ?, ?, ?)", fresh)
    return out
