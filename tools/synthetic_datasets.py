"""Tiny synthetic copies of every dataset plugin's files, in each plugin's own format and at the real image size.

    .venv/bin/python tools/synthetic_datasets.py DATA_ROOT      # then: bench.py ... --data-root DATA_ROOT

What each folder under DATA_ROOT holds (the formats datasets/*.py and benchmark/data/lists.py read):

- ``fashion_mnist/``: the four IDX files (28x28 grey, uint8; queries are the t10k images);
- ``cifar10/``: the six python-pickle batches (dicts of b"data" (N, 3072) uint8 and b"labels"), 32x32 colour;
- ``flickr25k/``, ``mscoco/``: xunguangwang lists, ``{test,database,train}_img.txt`` + ``_label.txt``;
- ``nuswide/``, ``imagenet100/``, ``imagenet13/``: swuxyj lists, ``{test,database,train}.txt`` ("path l1 ... lC");
- ``folder/``: an ImageFolder tree for the ``folder`` plugin, FOLDER_CLASSES class folders of
  ``(query + database) / FOLDER_CLASSES`` JPEG images each (its split drawn with query_share 1/4, train_share 2/3);
- the list datasets' images: 224x224 RGB JPEG files under ``images/``, the paths in the lists relative to the
  dataset folder. The training list names database images, as the papers' protocols do.

Labels are multi-hot for the multi-label sets (two classes per image, every class of a small range used, so every
query has relevant database items and some database label vectors share no class with it) and one-hot for the
single-label ones. The pixels are seeded noise tinted by the first class: the point is the shapes, not the numbers.
"""
from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import numpy as np

SIZES = {"query": 4, "database": 12, "train": 8}  # train: the first database images
LIST_DATASETS = {  # name: (classes, multi-label, list format)
    "flickr25k": (38, True, "xunguangwang"),
    "mscoco": (80, True, "xunguangwang"),
    "nuswide": (21, True, "swuxyj"),
    "imagenet100": (100, False, "swuxyj"),
    "imagenet13": (13, False, "swuxyj"),
}
IMAGE_SIDE = 224
FOLDER_CLASSES = 4
CIFAR_PER_BATCH = 5  # six batches of 5: 3 images per class, enough for a 1 + 1 per-class query/train draw


def labels_for(count: int, classes: int, multi_label: bool, offset: int = 0) -> np.ndarray:
    """(count, classes) 0/1 rows: image i has class (i + offset) mod 6, and (i + offset + 3) mod 6 + 6 when
    multi-label, so classes 0..11 are used and rows i and i + 3 share no class."""
    labels = np.zeros((count, classes), dtype=np.int64)
    for i in range(count):
        first = (i + offset) % 6
        labels[i, first] = 1
        if multi_label:
            labels[i, 6 + (i + offset + 3) % 6] = 1
    return labels


def noise_image(rng: np.random.Generator, shape: tuple, tint: int) -> np.ndarray:
    image = rng.integers(0, 160, size=shape, dtype=np.int64) + (tint * 17) % 96
    return image.clip(0, 255).astype(np.uint8)


def write_jpeg(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode="RGB").save(path, format="JPEG", quality=90)


def write_list_dataset(folder: Path, classes: int, multi_label: bool, list_format: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    roles = {"test": SIZES["query"], "database": SIZES["database"]}
    rows: dict[str, list[tuple[str, np.ndarray]]] = {}
    for stem, count in roles.items():
        labels = labels_for(count, classes, multi_label, offset=0 if stem == "test" else 1)
        rows[stem] = []
        for i in range(count):
            relative = f"images/{stem}_{i:03d}.jpg"
            write_jpeg(folder / relative, noise_image(rng, (IMAGE_SIDE, IMAGE_SIDE, 3), int(labels[i].argmax())))
            rows[stem].append((relative, labels[i]))
    rows["train"] = rows["database"][: SIZES["train"]]
    for stem, items in rows.items():
        if list_format == "xunguangwang":
            (folder / f"{stem}_img.txt").write_text("".join(f"{path}\n" for path, _ in items))
            (folder / f"{stem}_label.txt").write_text("".join(" ".join(map(str, row)) + "\n" for _, row in items))
        else:
            (folder / f"{stem}.txt").write_text("".join(f"{path} {' '.join(map(str, row))}\n" for path, row in items))


def write_image_folder(folder: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    per_class = (SIZES["query"] + SIZES["database"]) // FOLDER_CLASSES
    for label in range(FOLDER_CLASSES):
        for i in range(per_class):
            write_jpeg(folder / f"class_{label}" / f"{i:03d}.jpg", noise_image(rng, (IMAGE_SIDE, IMAGE_SIDE, 3), label))


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: magic 0x0000 0x08 ndim, the dimensions big-endian, then the data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fashion_mnist(folder: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    parts = {"train": SIZES["database"], "t10k": SIZES["query"]}
    for stem, count in parts.items():
        classes = np.arange(count) % 10
        images = np.stack([noise_image(rng, (28, 28), c) for c in classes])
        (folder / f"{stem}-images-idx3-ubyte").write_bytes(idx_bytes(images))
        (folder / f"{stem}-labels-idx1-ubyte").write_bytes(idx_bytes(classes))


def write_cifar10(folder: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for number, name in enumerate(names):
        classes = [(number * CIFAR_PER_BATCH + i) % 10 for i in range(CIFAR_PER_BATCH)]
        data = np.stack([noise_image(rng, (3 * 32 * 32,), c) for c in classes])
        with open(folder / name, "wb") as handle:
            pickle.dump({b"data": data, b"labels": classes}, handle)


def write_all(root: Path, seed: int = 0) -> dict[str, Path]:
    """Every dataset plugin's synthetic folder under ``root``; returns {dataset name: folder}."""
    folders = {"fashion_mnist": root / "fashion_mnist", "cifar10": root / "cifar10"}
    write_fashion_mnist(folders["fashion_mnist"], seed)
    write_cifar10(folders["cifar10"], seed + 1)
    for offset, (name, (classes, multi_label, list_format)) in enumerate(LIST_DATASETS.items(), 2):
        folders[name] = root / name
        write_list_dataset(folders[name], classes, multi_label, list_format, seed + offset)
    folders["folder"] = root / "folder"
    write_image_folder(folders["folder"], seed + len(folders))
    return folders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="folder to write the datasets' folders into (pass as --data-root)")
    args = parser.parse_args(argv)
    for name, folder in write_all(args.root).items():
        print(f"{name}: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
