"""The preprocessed image cache of a file set: every image decoded, resized and cropped once, into one
memory-mapped uint8 array (N, C, H, W) in the stage cache folder, ``<cache>/images/<key>.u8``.

    array = preprocessed(cache_root, key, count, read, describe="NUS-WIDE database")   # np.memmap, read-only

The key (``cache_key``) hashes the files' contents (their digests, in list order, so the same files elsewhere
share one array), the transform, and the versions of the decoders (PIL and its libjpeg, zlib, libtiff, libwebp)
and of the resize (torchvision): an image read back is the very bytes decoding its file again gives. The array is built under the claim ``images-<key>``
(two processes never both decode the set) into a temporary file that is renamed into place once complete, as
every cache write is. Opening one checks its header (magic, key, shape), its size, and its first and last
image against their files decoded anew; one that fails (truncated, overwritten, another key's) is deleted
(it is derived data, and a second copy of tens of GB could fill the disk) and built again, never read.

File layout: ``MAGIC``, one JSON line (key, shape, dtype), spaces up to ``HEADER_BYTES``, then the images.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from benchmark.storage.cache import current_umask, temporary_prefix
from benchmark.storage.claims import claim

log = logging.getLogger("hashbench")

MAGIC = b"hashbench-images 1\n"
HEADER_BYTES = 4096
BUILD_CHUNK = 256  # images decoded per step of a build (bounds its memory; a progress report per step)


def cache_key(digests: list[str], transform: dict) -> str:
    """The array's key: the files' content digests in order, the transform, and the decoder's versions."""
    import PIL
    import torchvision
    from PIL import features

    decoders = {codec: features.version(codec) for codec in ("jpg", "zlib", "libtiff", "webp")}
    text = json.dumps({"digests": digests, "transform": transform, "pil": PIL.__version__, "decoders": decoders,
                       "torchvision": torchvision.__version__, "format": MAGIC.decode().strip()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def array_path(cache_root: str | Path, key: str) -> Path:
    return Path(cache_root) / "images" / f"{key}.u8"


def header_bytes(key: str, shape: tuple[int, ...]) -> bytes:
    line = MAGIC + json.dumps({"key": key, "shape": list(shape), "dtype": "uint8"}).encode() + b"\n"
    if len(line) > HEADER_BYTES:
        raise ValueError(f"image cache header of {len(line)} bytes exceeds {HEADER_BYTES}")
    return line.ljust(HEADER_BYTES, b" ")


def read_header(path: Path) -> dict:
    """The header's fields; ValueError saying what is wrong when it is not one."""
    with open(path, "rb") as handle:
        head = handle.read(HEADER_BYTES)
    if not head.startswith(MAGIC):
        raise ValueError("it does not start with the image cache's magic line")
    try:
        fields = json.loads(head[len(MAGIC):].split(b"\n", 1)[0])
        fields["shape"] = tuple(int(n) for n in fields["shape"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"its header is not readable ({type(exc).__name__}: {exc})") from None
    return fields


def open_array(path: Path, key: str, count: int, read: Callable[[int], torch.Tensor]) -> np.memmap | None:
    """The stored array if it is whole and is this key's, else None (a bad file is moved aside)."""
    if not path.exists():
        return None
    try:
        fields = read_header(path)
        shape = fields["shape"]
        if fields.get("key") != key or fields.get("dtype") != "uint8":
            raise ValueError(f"it holds key {fields.get('key')} ({fields.get('dtype')}), not {key} (uint8)")
        if len(shape) != 4 or shape[0] != count:
            raise ValueError(f"it holds shape {shape}, not {count} images of (C, H, W)")
        expected = HEADER_BYTES + int(np.prod(shape))
        if path.stat().st_size != expected:
            raise ValueError(f"it is {path.stat().st_size} bytes, not the {expected} its header promises "
                             f"(truncated or appended to)")
        array = np.memmap(path, dtype=np.uint8, mode="r", offset=HEADER_BYTES, shape=shape)
        for index in sorted({0, count - 1}):  # what decoding anew gives, at both ends of the file
            if not np.array_equal(array[index], read(index).numpy()):
                raise ValueError(f"its image {index} differs from its file decoded anew")
    except (OSError, ValueError) as exc:
        log.warning("image cache %s is unusable (%s); deleted and building it again", path, exc)
        path.unlink(missing_ok=True)
        return None
    return array


def build_array(path: Path, key: str, count: int, read: Callable[[int], torch.Tensor], workers: int,
                progress: Callable[[str], None], describe: str) -> None:
    """Decode every image into a temporary file beside ``path``, then rename it into place."""
    first = read(0)
    shape = (count, *first.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=temporary_prefix(path.name))
    try:
        os.fchmod(handle, 0o666 & ~current_umask())
        with os.fdopen(handle, "wb") as out:
            out.write(header_bytes(key, shape))
            out.truncate(HEADER_BYTES + int(np.prod(shape)))
        array = np.memmap(temporary, dtype=np.uint8, mode="r+", offset=HEADER_BYTES, shape=shape)
        with ThreadPoolExecutor(max(1, workers)) as pool:
            for start in range(0, count, BUILD_CHUNK):
                progress(f"decoding {describe} into the image cache: {start:,} of {count:,} images")
                chunk = range(start, min(count, start + BUILD_CHUNK))
                for index, image in zip(chunk, pool.map(read, chunk)):
                    if tuple(image.shape) != shape[1:]:
                        raise ValueError(f"image {index} of {describe} decodes to {tuple(image.shape)}, not "
                                         f"{shape[1:]} as image 0 does: the transform must give one size")
                    array[index] = image.numpy()
        array.flush()
        del array
        with open(temporary, "rb+") as out:
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def preprocessed(cache_root: str | Path, key: str, count: int, read: Callable[[int], torch.Tensor], *,
                 workers: int = 1, describe: str = "images", claim_timeout: float | None = None,
                 report_wait: Callable[[str], None] | None = None,
                 progress: Callable[[str], None] | None = None) -> np.memmap:
    """The set's array (read-only memmap): opened when stored and whole, else built once under its claim.

    ``read(i)`` decodes image i as a uint8 (C, H, W) tensor; ``report_wait`` is told whom a build waits for."""
    path = array_path(cache_root, key)
    array = open_array(path, key, count, read)
    if array is not None:
        return array
    progress = progress or (lambda message: None)
    with claim(cache_root, "images", key, what=f"decoding {count:,} images of {describe} into the image cache",
               wait=lambda holder: (report_wait or progress)(f"waiting for {holder}"), timeout=claim_timeout):
        array = open_array(path, key, count, read)  # the holder we waited for may have built it
        if array is None:
            log.info("decoding %s images of %s into the image cache %s", f"{count:,}", describe, path)
            build_array(path, key, count, read, workers, progress, describe)
            array = open_array(path, key, count, read)
    if array is None:
        raise RuntimeError(f"the image cache {path} just built does not read back whole; is the cache folder's "
                           f"file system full or shared by a writer that ignores claims?")
    return array
