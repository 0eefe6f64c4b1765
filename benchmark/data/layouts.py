"""Data folders without code: which layout a folder is, its lists, its card, and its ``Splits``.

A folder is recognised as exactly one of LAYOUTS:

* ``lists``: list files of the DeepHash-pytorch/HashNet kind, ``test.txt``, ``database.txt``, ``train.txt``, one
  "path l1 ... lC" line per image (0/1 labels, one-hot or multi-hot);
* ``pairs``: ProS-GAN's and CgAT's ``test_img.txt`` + ``test_label.txt``, ``database_...``, ``train_...``;
* ``split folders``: sub-folders ``query/`` (or ``test/``), ``database/`` and ``train/``, each with one sub-folder
  of images per class;
* ``image folder``: one sub-folder of images per class (torchvision's ImageFolder), the split drawn here.

Either list format may instead give only a full list (``all.txt``, ``all_img.txt`` + ``all_label.txt``), or the
test and train lists plus a full list (``benchmark.data.lists.read_lists``: the database is the full list minus the
test list). List files, when there are any, define the split, and the sub-folders then hold the images. Refused,
with a message naming the folder, what was found and LAYOUTS: both list formats; split folders beside other
image folders; both ``query/`` and ``test/``; some but not all of the split folders; nothing recognisable.
Classes of the folder layouts are the class folders' names in sorted order; images are the files with
IMAGE_SUFFIXES, found at any depth below a class folder.

Where no split is given (an image folder, or a full list) it is drawn by ``drawn_split``: a permutation seeded by
``split_seed``; per class for single-label data (each class gives ``query_share`` of its images, rounded, at least
one when it has two or more), over all images for multi-label data; the queries come first, the rest is the
database; the training set is the first ``train_share`` of the database (rounded; 1 = the whole database, the
default).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmark.data.dataset import DatasetNotFound, Splits, shares_label
from benchmark.data.fingerprints import ROLES, Identification, combined_fingerprint, identify_list, split_variant
from benchmark.data.images import FileImages
from benchmark.data.lists import (DUPLICATE_POLICIES, IMAGENET_MEAN, IMAGENET_STD, ROLES as LIST_ROLES,
                                  ZERO_LABEL_POLICIES, ListSplit, check_images, check_list, handle_zero_labels,
                                  image_path, read_lists, read_split)

LAYOUTS = {
    "lists": "list files test.txt, database.txt, train.txt ('path l1 ... lC' per line; DeepHash-pytorch, HashNet)",
    "pairs": "list pairs test_img.txt + test_label.txt, database_..., train_... (ProS-GAN, CgAT)",
    "split folders": "sub-folders query/ (or test/), database/, train/, each holding one folder of images per class",
    "image folder": "one sub-folder of images per class (ImageFolder; the split is drawn here, seeded)",
}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
STEMS = ("test", "database", "train", "all")  # list stems; test is the query list
SPLIT_FOLDERS = {"query": ("query", "test"), "database": ("database",), "train": ("train",)}
CARD_SAMPLE = 1_000  # queries whose relevant database items the card counts
FEW_RELEVANT = 10
log = logging.getLogger("hashbench")


@dataclass
class FolderData:
    """A recognised folder's lists, by role (query, database, train), paths relative to ``folder``."""

    folder: Path
    layout: str
    lists: dict  # role -> ListSplit
    origin: str  # what was read, and how the split was made
    num_classes: int
    class_names: list | None = None


def layout_message(folder: Path, problem: str) -> str:
    accepted = "; ".join(f"{name}: {text}" for name, text in LAYOUTS.items())
    return f"data folder {folder}: {problem}. Accepted layouts: {accepted}"


def list_files(folder: Path) -> dict[str, list[str]]:
    """The list files found, by format: {"lists": ["test.txt", ...], "pairs": ["test_img.txt", ...]}."""
    found = {"lists": [], "pairs": []}
    for stem in STEMS:
        if (folder / f"{stem}.txt").is_file():
            found["lists"].append(f"{stem}.txt")
        found["pairs"] += [name for name in (f"{stem}_img.txt", f"{stem}_label.txt") if (folder / name).is_file()]
    return found


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def class_folders(folder: Path) -> dict[str, list[Path]]:
    """{class name: its images} of the sub-folders that hold images (hidden folders skipped)."""
    out = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = image_files(sub)
        if images:
            out[sub.name] = images
    return out


def recognise(folder: Path) -> str:
    """The one layout ``folder`` is (a key of LAYOUTS); a ValueError naming the folder, what was found and the
    layouts accepted when it is none or more than one."""
    folder = Path(folder)
    if not folder.is_dir():
        state = "is not a folder" if folder.exists() else "does not exist"
        raise DatasetNotFound(layout_message(folder, state))
    found = list_files(folder)
    if found["lists"] and found["pairs"]:
        raise ValueError(layout_message(folder, f"it holds both list formats ({', '.join(found['lists'])} and "
                                                f"{', '.join(found['pairs'])}); keep one"))
    if found["lists"] or found["pairs"]:
        return "lists" if found["lists"] else "pairs"
    classes = class_folders(folder)
    splits = {role: [name for name in names if name in classes] for role, names in SPLIT_FOLDERS.items()}
    named = [name for names in splits.values() for name in names]
    if not classes:
        loose = len(image_files(folder))
        what = f"{loose} image files but no class sub-folder" if loose else "no list file and no image"
        raise ValueError(layout_message(folder, f"it holds {what}"))
    loose = [p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    if loose:
        raise ValueError(layout_message(folder, f"it holds {len(loose)} image files (e.g. {sorted(loose)[0]}) beside "
                                                f"its image folders; an image's class is its folder"))
    if not named:
        return "image folder"
    if len(splits["query"]) > 1:
        raise ValueError(layout_message(folder, "it holds both query/ and test/; keep one as the queries"))
    others = sorted(set(classes) - set(named))
    if others:
        raise ValueError(layout_message(folder, f"it holds split folders ({', '.join(named)}) beside other image "
                                                f"folders ({', '.join(others)}); it is one layout or the other"))
    missing = [role for role, names in splits.items() if not names]
    if missing:
        raise ValueError(layout_message(folder, f"it holds split folders {', '.join(named)} but not "
                                                f"{' and '.join('/'.join(SPLIT_FOLDERS[r]) for r in missing)}"))
    return "split folders"


def label_columns(folder: Path, layout: str) -> int:
    """The number of label values per image, read from the first row of the first list."""
    for stem in STEMS:
        path = folder / (f"{stem}.txt" if layout == "lists" else f"{stem}_label.txt")
        if path.is_file():
            with open(path, encoding="utf-8") as handle:
                first = next((line.split() for line in handle if line.strip()), None)
            if first is None:
                raise ValueError(f"list file {path} is empty")
            return len(first) - 1 if layout == "lists" else len(first)
    raise ValueError(layout_message(folder, f"no {'list' if layout == 'lists' else 'label'} file to read the "
                                            f"label count from"))


def folder_list(folder: Path, images: dict[str, list[Path]], class_names: list[str], where: str) -> ListSplit:
    """A ListSplit of class-folder images: paths relative to ``folder``, one-hot labels over ``class_names``."""
    paths, classes = [], []
    for name, files in images.items():
        paths += [str(path.relative_to(folder)) for path in files]
        classes += [class_names.index(name)] * len(files)
    labels = np.eye(len(class_names), dtype=np.float32)[classes]
    lines = np.arange(1, len(paths) + 1)
    return ListSplit(paths, labels, where, where, lines, lines, len(paths))


def drawn_split(labels: np.ndarray, seed: int, query_share: float, train_share: float) -> dict[str, np.ndarray]:
    """Row indices (sorted) of query, database and train; the rule is the module's docstring's."""
    order = np.random.default_rng(seed).permutation(len(labels))
    single = bool((labels.sum(axis=1) == 1).all())
    groups = [order[labels[order].argmax(axis=1) == c] for c in range(labels.shape[1])] if single else [order]
    query, database = [], []
    for members in groups:
        count = int(round(query_share * len(members)))
        count = max(count, 1) if len(members) >= 2 and query_share > 0 else count
        query.append(members[:count])
        database.append(members[count:])
    database = order[np.isin(order, np.concatenate(database))]  # in the permutation's order, for the draw of train
    if not len(database) or not sum(len(q) for q in query):
        raise ValueError(f"{len(labels)} images with query_share {query_share} give "
                         f"{sum(len(q) for q in query)} queries and {len(database)} database images; both must be "
                         f"at least one")
    train = database[:max(1, int(round(train_share * len(database))))]
    return {"query": np.sort(np.concatenate(query)), "database": np.sort(database), "train": np.sort(train)}


def read_folder(folder: str | Path, split_seed: int = 0, query_share: float = 0.1,
                train_share: float = 1.0) -> FolderData:
    """The folder's lists by role, in whichever layout it is (``recognise``); images are not opened."""
    folder = Path(folder)
    layout = recognise(folder)
    class_names = None
    if layout in ("lists", "pairs"):
        num_classes = label_columns(folder, layout)
        lists, origin = read_lists(folder, num_classes)
        origin = f"{LAYOUTS[layout].split(' (')[0]}: {origin}"
        lists = {LIST_ROLES.get(stem, stem): split for stem, split in lists.items()}
    else:
        classes = class_folders(folder)
        if layout == "split folders":
            trees = {role: next(folder / n for n in names if n in classes) for role, names in SPLIT_FOLDERS.items()}
            per_role = {role: class_folders(tree) for role, tree in trees.items()}
            for role, tree in trees.items():
                if image_files(tree) and not per_role[role]:
                    raise ValueError(layout_message(folder, f"{tree.name}/ holds images but no class folder"))
            class_names = sorted({name for images in per_role.values() for name in images})
            lists = {role: folder_list(folder, per_role[role], class_names, f"{trees[role].name}/")
                     for role in ROLES}
            origin = f"split folders {', '.join(f'{t.name}/' for t in trees.values())}"
        else:
            class_names = sorted(classes)
            lists = {"all": folder_list(folder, classes, class_names, "class folders")}
            origin = "class folders; split drawn here"
        num_classes = len(class_names)
    if "all" in lists:
        index = drawn_split(lists["all"].labels, split_seed, query_share, train_share)
        lists = {role: lists["all"].take(index[role]) for role in ROLES}
        origin += (f" (seeded: split_seed {split_seed}, query_share {query_share}, train_share {train_share}; "
                   f"benchmark/data/layouts.py drawn_split)")
    return FolderData(folder, layout, lists, origin, num_classes, class_names)


def relevant_counts(query: np.ndarray, database: np.ndarray, sample: int, seed: int) -> np.ndarray:
    """Relevant database items (sharing a label) of up to ``sample`` seeded queries."""
    pick = np.sort(np.random.default_rng(seed).permutation(len(query))[:sample])
    database = torch.from_numpy(database)
    counts = [shares_label(torch.from_numpy(query[pick[i:i + 256]]), database).sum(dim=1).numpy()
              for i in range(0, len(pick), 256)]
    return np.concatenate(counts) if counts else np.zeros(0)


def folder_card(data: FolderData, sample: int = CARD_SAMPLE, seed: int = 0, registry=None,
                identify: bool = True) -> dict:
    """Counts per role, classes, labels per image (mean, max), the relevance base rate (share of query-database
    pairs sharing a label) and the share of queries with fewer than FEW_RELEVANT relevant items, both over up to
    ``sample`` seeded queries against the whole database; and each list's identification."""
    roles = {}
    for role, split in data.lists.items():
        per_image = split.labels.sum(axis=1)
        roles[role] = {"images": len(split.paths), "labels_mean": float(per_image.mean()) if len(per_image) else 0.0,
                       "labels_max": int(per_image.max()) if len(per_image) else 0,
                       "zero_label": int((per_image == 0).sum())}
    relevant = relevant_counts(data.lists["query"].labels, data.lists["database"].labels, sample, seed)
    database = len(data.lists["database"].paths)
    card = {"folder": str(data.folder), "layout": data.layout, "origin": data.origin, "classes": data.num_classes,
            "class_names": data.class_names, "roles": roles, "sampled_queries": int(len(relevant)),
            "base_rate": float(relevant.sum() / (len(relevant) * database)) if len(relevant) and database else 0.0,
            "few_relevant_share": float((relevant < FEW_RELEVANT).mean()) if len(relevant) else 0.0}
    if identify:
        card["identified"] = {role: identify_list(split.paths, registry, role=role)
                              for role, split in data.lists.items()}
    return card


def describe_identification(ident: Identification) -> str:
    if ident.exact:
        same = ", ".join(f"{e['id']} ({e['repo']} {', '.join(e['paths'][:1])}{' ...' if len(e['paths']) > 1 else ''})"
                         for e in ident.exact)
        return f"fingerprint {ident.fingerprint[:16]}: exactly {same}"
    if not ident.nearest:
        return f"fingerprint {ident.fingerprint[:16]}: no registered list shares an image"
    near = "; ".join(
        f"{' = '.join((o.entry['id'], *o.same_as))}: {'about ' if o.estimated else ''}{o.shared:,} of {ident.size:,} ({o.share_of_list:.1%}; "
        f"{o.share_of_entry:.1%} of its {o.entry['distinct']:,})"
        + (f", {o.shared_classes} of {o.classes} ImageNet classes" if o.shared_classes is not None else "")
        for o in ident.nearest)
    return f"fingerprint {ident.fingerprint[:16]}: unregistered; nearest {near}"


def format_card(card: dict) -> str:
    lines = [f"data folder {card['folder']}", f"  layout: {card['layout']} ({card['origin']})",
             f"  classes: {card['classes']}"
             + (f" ({', '.join(card['class_names'][:8])}{', ...' if card['classes'] > 8 else ''})"
                if card.get("class_names") else "")]
    for role, row in card["roles"].items():
        lines.append(f"  {role:<9} {row['images']:>8,} images, labels per image mean {row['labels_mean']:.2f} max "
                     f"{row['labels_max']}" + (f", {row['zero_label']:,} with no label" if row["zero_label"] else ""))
    lines.append(f"  relevance base rate {card['base_rate']:.4f} (query-database pairs sharing a label, over "
                 f"{card['sampled_queries']:,} queries); queries with fewer than {FEW_RELEVANT} relevant items: "
                 f"{card['few_relevant_share']:.1%}")
    for role, ident in card.get("identified", {}).items():
        lines.append(f"  {role:<9} {describe_identification(ident)}")
    return "\n".join(lines)


def folder_splits(plugin, folder: Path) -> Splits:
    """``Splits`` of FileImages from a data folder, its lists checked as the list datasets' are (paths inside
    the folder, repeats, unlabelled rows, missing images), its card logged."""
    for what, policies in (("zero_label", ZERO_LABEL_POLICIES), ("duplicates", DUPLICATE_POLICIES)):
        if getattr(plugin, what) not in policies:
            raise ValueError(f"{plugin.name}.{what} must be one of {policies}; got {getattr(plugin, what)!r}")
    data = read_folder(folder, plugin.split_seed, plugin.query_share, plugin.train_share)
    image_root = folder / plugin.image_dir
    zero_rows = {}
    for role in ROLES:
        split = data.lists[role]
        check_list(split, plugin, image_root, folder)
        data.lists[role], zero_rows[role] = handle_zero_labels(split, plugin.zero_label)
        if plugin.check_files:
            check_images(data.lists[role], image_root, folder)
    log.info("%s", format_card(folder_card(data)))
    sets = {role: FileImages([image_path(image_root, path) for path in split.paths],
                             torch.from_numpy(split.labels), origins=split.origins())
            for role, split in data.lists.items()}
    return Splits(**sets, topk=plugin.topk or None, num_classes=data.num_classes, mean=IMAGENET_MEAN,
                  std=IMAGENET_STD, notes={"folder": str(folder), "layout": data.layout, "lists": data.origin,
                                           "zero_label_rows": zero_rows}, folder=str(folder))


def identify_folder(folder: str | Path, registry=None, split_seed: int = 0, query_share: float = 0.1,
                    train_share: float = 1.0) -> dict[str, Identification]:
    """Each role's list in ``folder`` (any layout) identified against the registry. The lists of a list layout
    are identified one by one, so a folder holding only some of them (ProS-GAN ships no NUS-WIDE or MS-COCO
    database list) is identified as far as it goes."""
    folder = Path(folder)
    layout = recognise(folder)
    if layout in ("lists", "pairs"):
        num_classes = label_columns(folder, layout)
        found = {LIST_ROLES[stem]: read_split(folder, stem, num_classes) for stem in LIST_ROLES}
        if any(found.values()):
            return {role: identify_list(split.paths, registry, role=role) for role, split in found.items() if split}
    data = read_folder(folder, split_seed, query_share, train_share)
    return {role: identify_list(split.paths, registry, role=role) for role, split in data.lists.items()}


def identify_report(identified: dict[str, Identification]) -> str:
    """Lines for `splits identify`: each role's fingerprint and variant or nearest lists, then the row's variant."""
    lines = [f"{role:<9} {ident.size:>8,} images  {describe_identification(ident)}"
             for role, ident in identified.items()]
    variant = split_variant(identified)
    lines.append(f"split_fingerprint {combined_fingerprint({r: i.fingerprint for r, i in identified.items()})}  "
                 f"split_variant {variant or '(none registered)'}")
    return "\n".join(lines)
