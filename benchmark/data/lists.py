"""Reading the list files of the list-based dataset plugins (flickr25k, nuswide, mscoco, imagenet100, imagenet13).

A dataset folder holds image paths and 0/1 label rows in one of two formats, per list ``test``, ``database``,
``train`` (the query, database and training roles of ``Splits``):

* xunguangwang/ProS-GAN: ``{stem}_img.txt`` (one image path a line) and ``{stem}_label.txt`` (one row of C
  values, each 0 or 1, a line), matched line for line;
* swuxyj/DeepHash-pytorch: ``{stem}.txt``, one "path l1 ... lC" line per image.

Instead of the three lists a folder may hold only a full list, ``all.txt`` or ``all_img.txt`` + ``all_label.txt``
(in either format), from which the plugin's own ``build`` function draws the split; or the test and train lists
plus a full list, in which case the database is the full list minus the test list. Blank lines are skipped;
errors name the file and line. Image paths are relative to the dataset folder (plus the plugin's ``image_dir``)
and must stay inside it (no absolute paths, no ``..`` out of it) unless the plugin's ``paths_outside_folder`` is
true; a path listed twice in one list is an error unless the plugin's ``duplicates`` is "keep", which keeps
repeats whose labels agree (a repeat with other labels is always an error). The images stream from disk as
``FileImages``, resized and centre-cropped to 224 (a run decodes each set once into its image cache:
``benchmark.data.preprocessed``).

    from benchmark import load_lists

    def load(self, data_root=None) -> Splits:      # in a dataset plugin with zero_label, image_dir, check_files,
                                                   # duplicates, paths_outside_folder
        return load_lists(self, data_root, ALIASES, HOW_TO_GET, lambda labels: build_split(labels, self.split_seed))
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch

from benchmark.data.dataset import DatasetNotFound, Splits, data_roots
from benchmark.data.images import FileImages

ZERO_LABEL_POLICIES = ("error", "drop", "keep")
DUPLICATE_POLICIES = ("error", "keep")
SHOWN_LINES = 10  # line numbers named in a message about repeated paths
LIST_MARKERS = ("test_img.txt", "test.txt", "all_img.txt", "all.txt")
ROLES = {"test": "query", "database": "database", "train": "train"}  # list stem -> role in Splits
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DATA_CACHE = Path.home() / ".cache" / "hashbench" / "data"
log = logging.getLogger("hashbench")

__all__ = ["ListSplit", "read_split", "read_lists", "load_lists"]  # exported by benchmark


class ListSplit(NamedTuple):
    """The rows of one list: image paths (relative to the dataset folder), 0/1 labels, and line numbers."""

    paths: list
    labels: np.ndarray  # (N, C) float32
    image_file: str
    label_file: str
    image_lines: np.ndarray
    label_lines: np.ndarray
    file_rows: int = 0  # rows the file lists (``take`` keeps it); 0 = as many as ``paths``

    def counted(self, some: int) -> str:
        """Message counts over the file's own rows: '3 of 120 images of all.txt', or for rows taken from a file
        '3 of the 100 images taken from the 120 of all.txt'."""
        listed = self.file_rows or len(self.paths)
        if listed == len(self.paths):
            return f"{some} of {listed} images of {self.image_file}"
        return f"{some} of the {len(self.paths)} images taken from the {listed} of {self.image_file}"

    def origins(self) -> list[str]:
        return [f"line {line} of {self.image_file}" for line in self.image_lines]

    def take(self, index) -> "ListSplit":
        index = np.asarray(index, dtype=np.int64)
        return self._replace(paths=[self.paths[i] for i in index], labels=self.labels[index],
                             image_lines=self.image_lines[index], label_lines=self.label_lines[index])


def read_lines(path: Path) -> list[tuple[int, str]]:
    """The non-blank lines of a text file, stripped, with their 1-based numbers."""
    with open(path, encoding="utf-8") as handle:
        lines = [(number, line.strip()) for number, line in enumerate(handle, 1) if line.strip()]
    if not lines:
        raise ValueError(f"list file {path} is empty")
    return lines


def parse_labels(rows: list, num_classes: int, file_name: str, what: str = "values") -> np.ndarray:
    """(N, C) float32 from ``rows`` of (line number, C tokens, each 0 or 1)."""
    for number, values in rows:
        if len(values) != num_classes:
            raise ValueError(f"line {number} of {file_name} has {len(values)} {what}, expected {num_classes}")
    try:
        labels = np.array([values for _, values in rows], dtype=np.float32).reshape(len(rows), num_classes)
    except ValueError:
        for number, values in rows:
            try:
                [float(value) for value in values]
            except ValueError:
                raise ValueError(f"line {number} of {file_name} holds a value that is not a number: "
                                 f"{' '.join(values)!r}") from None
        raise
    bad = np.flatnonzero(~((labels == 0) | (labels == 1)).all(axis=1))
    if bad.size:
        number, values = rows[bad[0]]
        raise ValueError(f"line {number} of {file_name} has a label value other than 0 or 1: {' '.join(values)!r}")
    return labels


def read_split(folder: Path, stem: str, num_classes: int) -> ListSplit | None:
    """``stem``_img.txt + ``stem``_label.txt (xunguangwang) or ``stem``.txt of "path l1 ... lC" lines (swuxyj)."""
    images, label_file, joint = folder / f"{stem}_img.txt", folder / f"{stem}_label.txt", folder / f"{stem}.txt"
    if images.is_file() != label_file.is_file():
        have, lack = (images, label_file) if images.is_file() else (label_file, images)
        raise DatasetNotFound(f"{lack} is missing; {have.name} in the same folder needs it")
    if images.is_file():
        names, rows = read_lines(images), read_lines(label_file)
        if len(names) != len(rows):
            raise ValueError(f"{images} lists {len(names)} images but {label_file.name} has {len(rows)} label rows")
        labels = parse_labels([(number, line.split()) for number, line in rows], num_classes, label_file.name)
        return ListSplit([name for _, name in names], labels, images.name, label_file.name,
                         np.array([number for number, _ in names]), np.array([number for number, _ in rows]),
                         len(names))
    if joint.is_file():
        rows = [(number, line.split()) for number, line in read_lines(joint)]
        labels = parse_labels([(number, values[1:]) for number, values in rows], num_classes, joint.name,
                              "label values after the path")
        lines = np.array([number for number, _ in rows])
        return ListSplit([values[0] for _, values in rows], labels, joint.name, joint.name, lines, lines, len(rows))
    return None


def read_lists(folder: Path, num_classes: int) -> tuple[dict[str, ListSplit], str]:
    """The test/database/train lists, or ``{"all": ...}`` when only a full list is there; and what was read."""
    found = {stem: read_split(folder, stem, num_classes) for stem in ROLES}
    if all(found.values()):
        return found, "test/database/train lists"
    full = read_split(folder, "all", num_classes)
    if found["test"] and found["train"] and not found["database"] and full:
        queries = set(found["test"].paths)
        found["database"] = full.take([i for i, path in enumerate(full.paths) if path not in queries])
        return found, "test/train lists; database = the full list minus the test list"
    if full and not any(found.values()):
        return {"all": full}, "full list; split built here"
    lacking = " and ".join(f"{stem}_img.txt + {stem}_label.txt (or {stem}.txt)" for stem in found if not found[stem])
    raise DatasetNotFound(f"{folder} lacks {lacking}. Give the test, database and train lists, or only a full list "
                          f"(all.txt, or all_img.txt + all_label.txt) to build the split here")


def locate_folder(name: str, data_root, aliases: Sequence[str], how_to_get: str) -> Path:
    candidates = []
    for root in data_roots(name, data_root, [DATA_CACHE / name]):
        candidates += [root] + [root / alias for alias in aliases]
    candidates = list(dict.fromkeys(candidates))
    for folder in candidates:
        if any((folder / marker).is_file() for marker in LIST_MARKERS):
            return folder
    searched = "\n  ".join(str(folder) for folder in candidates)
    raise DatasetNotFound(f"no {name} list files ({', '.join(LIST_MARKERS)}) were found. Looked in:\n  {searched}\n"
                          f"{how_to_get} Then pass --data-root FOLDER (or set HASHBENCH_DATA).")


def handle_zero_labels(split: ListSplit, policy: str) -> tuple[ListSplit, int]:
    zero = split.labels.sum(axis=1) == 0
    count = int(zero.sum())
    if count and policy == "error":
        raise ValueError(f"line {split.label_lines[np.argmax(zero)]} of {split.label_file} has no label (all "
                         f"{split.labels.shape[1]} values are 0; {count} such rows in the file). Set zero_label to "
                         f"'drop' to remove them or 'keep' to keep them (relevant to nothing)")
    if count:
        log.info("%d of %d rows of %s have no label: %s", count, len(zero), split.label_file,
                 "dropped" if policy == "drop" else "kept")
    return (split.take(np.flatnonzero(~zero)) if policy == "drop" else split), count


def image_path(image_root: Path, path: str) -> str:
    return os.path.join(str(image_root), path)


def check_images(split: ListSplit, image_root: Path, folder: Path) -> None:
    missing = [i for i, path in enumerate(split.paths) if not os.path.isfile(image_path(image_root, path))]
    if missing:
        first = missing[0]
        raise DatasetNotFound(
            f"image {split.paths[first]!r} (line {split.image_lines[first]} of {split.image_file}) is missing: "
            f"{image_path(image_root, split.paths[first])} does not exist ({split.counted(len(missing))} are "
            f"missing). List paths are relative to the dataset folder {folder}; set "
            f"image_dir if the images sit in a sub-folder of it")


def check_inside_folder(split: ListSplit, image_root: Path, folder: Path) -> None:
    """Every image path, joined to ``image_root`` and made absolute (symbolic links are not followed: a link in
    the folder is the user's choice), lies inside the dataset folder: a list cannot make the harness open
    ``../../etc/passwd`` or ``/home/...``."""
    inside = os.path.join(os.path.abspath(folder), "")
    outside = [i for i, path in enumerate(split.paths)
               if not os.path.abspath(image_path(image_root, path)).startswith(inside)]
    if outside:
        first = outside[0]
        raise ValueError(
            f"image {split.paths[first]!r} (line {split.image_lines[first]} of {split.image_file}) resolves to "
            f"{os.path.abspath(image_path(image_root, split.paths[first]))}, outside the dataset folder {folder} "
            f"({split.counted(len(outside))} lie outside). List paths must be relative to "
            f"the dataset folder and stay inside it; set paths_outside_folder = true to read images elsewhere")


def check_duplicates(split: ListSplit, policy: str) -> None:
    """A path listed more than once is an error (with ``policy`` "keep": only when its label rows differ)."""
    rows_of: dict[str, list[int]] = {}
    for row, path in enumerate(split.paths):
        rows_of.setdefault(path, []).append(row)
    repeated = [rows for rows in rows_of.values() if len(rows) > 1]
    conflicting = [rows for rows in repeated if not (split.labels[rows] == split.labels[rows[0]]).all()]
    offending = conflicting if policy == "keep" else repeated
    if not offending:
        return
    rows = offending[0]
    lines = ", ".join(str(split.image_lines[row]) for row in rows[:SHOWN_LINES])
    more = f" and {len(rows) - SHOWN_LINES} more" if len(rows) > SHOWN_LINES else ""
    where = f"{split.image_file} lists {split.paths[rows[0]]!r} {len(rows)} times (lines {lines}{more})"
    if rows in conflicting:
        label_lines = ", ".join(str(split.label_lines[row]) for row in rows[:SHOWN_LINES])
        raise ValueError(f"{where} with different labels (lines {label_lines}{more} of {split.label_file}); "
                         f"paths of {split.image_file} listed with different labels: {len(conflicting)}. An image "
                         f"has one label row: remove the repeats")
    raise ValueError(f"{where}; paths of {split.image_file} listed more than once: {len(repeated)}. Remove the "
                     f"repeats, or set duplicates = 'keep' to keep repeats whose labels agree")


def check_list(split: ListSplit, plugin, image_root: Path, folder: Path) -> None:
    """The checks of one list's paths, as read from its file."""
    if not getattr(plugin, "paths_outside_folder", False):
        check_inside_folder(split, image_root, folder)
    check_duplicates(split, getattr(plugin, "duplicates", "error"))


def load_lists(plugin, data_root, aliases: Sequence[str], how_to_get: str,
               build: Callable[[np.ndarray], dict[str, np.ndarray]]) -> Splits:
    """Splits of FileImages from the list files; ``build(labels)`` makes query/database/train from a full list.

    ``plugin`` is a dataset plugin instance with ``name``, ``num_classes``, ``zero_label`` (one of
    ZERO_LABEL_POLICIES), ``image_dir``, ``check_files`` and ``topk`` (0 = the whole database), and optionally
    ``duplicates`` (one of DUPLICATE_POLICIES, default "error") and ``paths_outside_folder`` (default False).
    ``build`` returns row indices of the full list under the keys "query", "database" and "train".
    """
    if plugin.zero_label not in ZERO_LABEL_POLICIES:
        raise ValueError(f"{plugin.name}.zero_label must be one of {ZERO_LABEL_POLICIES}; got {plugin.zero_label!r}")
    if getattr(plugin, "duplicates", "error") not in DUPLICATE_POLICIES:
        raise ValueError(f"{plugin.name}.duplicates must be one of {DUPLICATE_POLICIES}; got {plugin.duplicates!r}")
    folder = locate_folder(plugin.name, data_root, aliases, how_to_get)
    image_root = folder / plugin.image_dir
    lists, origin = read_lists(folder, plugin.num_classes)
    zero_rows = {}
    for stem in list(lists):
        check_list(lists[stem], plugin, image_root, folder)
        lists[stem], zero_rows[stem] = handle_zero_labels(lists[stem], plugin.zero_label)
        if plugin.check_files:  # before the split is drawn, so a message counts the list's rows, not a part's
            check_images(lists[stem], image_root, folder)
    if "all" in lists:
        index = build(lists["all"].labels)
        lists = {stem: lists["all"].take(index[role]) for stem, role in ROLES.items()}
    sets = {ROLES[stem]: FileImages([image_path(image_root, path) for path in split.paths],
                                    torch.from_numpy(split.labels), origins=split.origins())
            for stem, split in lists.items()}
    return Splits(**sets, topk=plugin.topk or None, num_classes=plugin.num_classes, mean=IMAGENET_MEAN,
                  std=IMAGENET_STD, notes={"folder": str(folder), "lists": origin, "zero_label_rows": zero_rows},
                  folder=str(folder))
