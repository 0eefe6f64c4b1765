"""Dataset plugins: both list formats, protocol sizes, clear errors, the FashionMNIST mosaic, discovery.

No dataset can be downloaded here, so each loader reads a small folder written into tmp_path in the real on-disk
format (tiny PNG/JPEG images, list files, CIFAR pickles); protocol sizes are checked on synthetic full-size label
matrices through each plugin's pure split function.
"""
from __future__ import annotations

import hashlib
import logging
import pickle
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import benchmark
from benchmark import DatasetNotFound, ListSplit, Registry, load_lists, read_lists
from benchmark.data import lists

REGISTRY = Registry.discover()
LIST_SETS = ["flickr25k", "nuswide", "mscoco", "imagenet100", "imagenet13"]
SINGLE_LABEL = {"imagenet100", "imagenet13"}
EXPECTED = {  # name -> (classes, multi-label)
    "fashion_mnist": (10, False), "fashion_mnist_mosaic": (10, True), "fashion_mnist_canvas": (20, True), "cifar10": (10, False),
    "flickr25k": (38, True), "nuswide": (21, True), "mscoco": (80, True), "imagenet100": (100, False),
    "imagenet13": (13, False),
}


@pytest.fixture(autouse=True)
def no_env_data_root(monkeypatch):
    monkeypatch.delenv("HASHBENCH_DATA", raising=False)


def plugin(name: str, **overrides):
    return REGISTRY.get("datasets", name).configure(overrides)


def module_globals(name: str) -> dict:
    """The plugin file's globals (through its class, since a later discovery may re-import the file)."""
    return REGISTRY.get("datasets", name).load.__globals__


def module(name: str) -> SimpleNamespace:
    return SimpleNamespace(**module_globals(name))


def color(i: int) -> tuple[int, int, int]:
    return (37 * i % 256, 91 * i % 256, 173 * i % 256)


def write_list(folder: Path, stem: str, paths: list[str], labels: np.ndarray, fmt: str) -> None:
    rows = [" ".join(str(int(v)) for v in row) for row in labels]
    if fmt == "xunguangwang":
        (folder / f"{stem}_img.txt").write_text("".join(f"{p}\n" for p in paths))
        (folder / f"{stem}_label.txt").write_text("".join(f"{r}\n" for r in rows))
    else:
        (folder / f"{stem}.txt").write_text("".join(f"{p} {r}\n" for p, r in zip(paths, rows)))


def random_labels(n: int, num_classes: int, single: bool, rng: np.random.Generator) -> np.ndarray:
    if single:
        return np.eye(num_classes, dtype=np.int64)[rng.integers(0, num_classes, n)]
    labels = (rng.random((n, num_classes)) < 0.15).astype(np.int64)
    labels[np.arange(n), rng.integers(0, num_classes, n)] = 1
    return labels


def write_list_set(folder: Path, name: str, fmt: str = "xunguangwang", ext: str = "png", n_test: int = 4,
                   n_database: int = 10, train=(0, 2, 5, 7, 9)) -> dict:
    """Images im{i}.{ext} of uniform colour i under images/, and the test/database/train lists."""
    num_classes = EXPECTED[name][0]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    n = n_test + n_database
    labels = random_labels(n, num_classes, name in SINGLE_LABEL, np.random.default_rng(1))
    paths = [f"images/im{i}.{ext}" for i in range(n)]
    for i, path in enumerate(paths):
        Image.new("RGB", (10, 7), color(i)).save(folder / path)
    index = {"test": list(range(n_test)), "database": list(range(n_test, n)), "train": [n_test + j for j in train]}
    for stem, rows in index.items():
        write_list(folder, stem, [paths[i] for i in rows], labels[rows], fmt)
    return {stem: (rows, labels[rows]) for stem, rows in index.items()}


def check_images(images, rows, tolerance):
    batch = images.load(torch.arange(len(rows)))
    assert batch.shape == (len(rows), 3, 224, 224) and batch.dtype == torch.float32
    assert 0.0 <= batch.min() and batch.max() <= 1.0
    expected = torch.tensor([color(i) for i in rows], dtype=torch.float32)[:, :, None, None] / 255
    assert (batch - expected).abs().max() <= tolerance


# ---- list-based sets: both formats, real images --------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["xunguangwang", "swuxyj"])
@pytest.mark.parametrize("name", LIST_SETS)
def test_list_formats(tmp_path, name, fmt):
    written = write_list_set(tmp_path / name, name, fmt)
    splits = plugin(name).splits(tmp_path)
    assert splits.sizes() == {"n_query": 4, "n_database": 10, "n_train": 5}
    assert splits.num_classes == EXPECTED[name][0]
    assert splits.topk == (plugin(name).topk or None)
    for role, stem in (("query", "test"), ("database", "database"), ("train", "train")):
        images, (rows, labels) = getattr(splits, role), written[stem]
        assert torch.equal(images.labels, torch.from_numpy(labels).float())
        check_images(images, rows[:3], tolerance=1.5 / 255)
    assert splits.notes["lists"] == "test/database/train lists"


def test_jpeg_images_and_image_dir(tmp_path):
    folder = tmp_path / "FLICKR-25K"
    write_list_set(folder, "flickr25k", ext="jpg")
    for stem in ("test", "database", "train"):  # list paths without the images/ prefix; image_dir supplies it
        listed = folder / f"{stem}_img.txt"
        listed.write_text(listed.read_text().replace("images/", ""))
    splits = plugin("flickr25k", image_dir="images").load(tmp_path)  # found through the alias FLICKR-25K
    check_images(splits.query, [0, 1, 2, 3], tolerance=4 / 255)  # JPEG is lossy


@pytest.mark.parametrize("name, overrides, sizes", [
    ("flickr25k", {"n_query": 3, "n_train": 4}, (3, 9, 4)),
    ("mscoco", {"n_query": 3, "n_train": 4}, (3, 9, 4)),
    ("nuswide", {"query_quota": 1, "train_quota": 1}, (21, None, 21)),
    ("imagenet100", {"n_query": 100, "n_train": 100}, (100, None, 100)),
    ("imagenet13", {"query_per_class": 1, "database_per_class": 2, "n_train": 5}, (13, 26, 5)),
])
def test_full_list_builds_the_split(tmp_path, name, overrides, sizes):
    folder = tmp_path / name
    folder.mkdir()
    num_classes = EXPECTED[name][0]
    n = 12 if name in ("flickr25k", "mscoco") else 4 * num_classes
    labels = random_labels(n, num_classes, name in SINGLE_LABEL, np.random.default_rng(2))
    if name in SINGLE_LABEL:  # every class needs its quota: four images each
        labels = np.eye(num_classes, dtype=np.int64)[np.arange(n) % num_classes]
    write_list(folder, "all", [f"im{i}.png" for i in range(n)], labels, "swuxyj")
    splits = plugin(name, check_files=False, **overrides).load(tmp_path)
    n_query, n_database, n_train = sizes
    assert (len(splits.query), len(splits.train)) == (n_query, n_train)
    assert len(splits.database) == (n_database if n_database is not None else n - n_query)
    query, database, train = (set(s.paths) for s in (splits.query, splits.database, splits.train))
    assert not query & database and train <= database
    assert splits.notes["lists"] == "full list; split built here"
    again = plugin(name, check_files=False, **overrides).load(tmp_path)
    other = plugin(name, check_files=False, split_seed=5, **overrides).load(tmp_path)
    assert again.query.paths == splits.query.paths and other.query.paths != splits.query.paths


def test_database_from_full_list_minus_test(tmp_path):
    """ProS-GAN ships NUS-WIDE / MS-COCO test and train lists only: database = full list minus test."""
    folder = tmp_path / "mscoco"
    written = write_list_set(folder, "mscoco")
    rows = written["test"][0] + written["database"][0]
    labels = np.concatenate([written["test"][1], written["database"][1]])
    write_list(folder, "all", [f"images/im{i}.png" for i in rows], labels, "swuxyj")
    for suffix in ("img", "label"):
        (folder / f"database_{suffix}.txt").unlink()
    splits = plugin("mscoco").load(tmp_path)
    assert splits.sizes() == {"n_query": 4, "n_database": 10, "n_train": 5}
    assert torch.equal(splits.database.labels, torch.from_numpy(written["database"][1]).float())
    assert "minus the test list" in splits.notes["lists"]


# ---- protocol sizes on synthetic full-size label matrices ----------------------------------------------------------

def disjoint_and_nested(index, train_in_database=True):
    query, database, train = (set(index[k].tolist()) for k in ("query", "database", "train"))
    assert not query & database
    assert not query & train
    if train_in_database:
        assert train <= database
    for key in ("query", "database", "train"):
        assert len(set(index[key].tolist())) == len(index[key])


@pytest.mark.parametrize("name, n, classes, sizes", [
    ("flickr25k", 25_000, 38, (1_700, 23_300, 5_000)),
    ("mscoco", 122_218, 80, (5_000, 117_218, 10_000)),
])
def test_random_protocol_sizes(name, n, classes, sizes):
    labels = random_labels(n, classes, False, np.random.default_rng(3)).astype(np.float32)
    index = module(name).build_split(labels, seed=0)
    assert tuple(len(index[k]) for k in ("query", "database", "train")) == sizes
    disjoint_and_nested(index)
    assert set(index["query"].tolist()) | set(index["database"].tolist()) == set(range(n))
    assert not np.array_equal(module(name).build_split(labels, seed=1)["query"], index["query"])


def nuswide_reference(labels: np.ndarray, order: np.ndarray, query_quota: int, train_quota: int) -> dict:
    """A plain restatement of DeepHash-pytorch's rule, to check build_split against."""
    train_left, query_left = [train_quota] * labels.shape[1], [query_quota] * labels.shape[1]
    taken = {"query": {}, "train": {}}
    for i in order.tolist():
        if not any(train_left) and not any(query_left):
            break
        for concept in range(labels.shape[1]):
            if labels[i, concept]:
                if train_left[concept]:
                    train_left[concept] -= 1
                    taken["train"][i] = concept
                    break
                if query_left[concept]:
                    query_left[concept] -= 1
                    taken["query"][i] = concept
                    break
    return taken


def test_nuswide_protocol_quotas():
    rng = np.random.default_rng(4)
    n = 195_834
    labels = (rng.random((n, 21)) < rng.uniform(0.02, 0.3, 21)).astype(np.float32)
    labels[np.arange(n), rng.integers(0, 21, n)] = 1
    nuswide = module("nuswide")
    index = nuswide.build_split(labels, seed=0)
    assert (len(index["query"]), len(index["database"]), len(index["train"])) == (2_100, 193_734, 10_500)
    disjoint_and_nested(index)
    reference = nuswide_reference(labels, nuswide.seeded_permutation(n, 0), 100, 500)
    assert sorted(reference["query"]) == index["query"].tolist()
    assert sorted(reference["train"]) == index["train"].tolist()
    for kind, quota in (("query", 100), ("train", 500)):  # each concept takes exactly its quota
        assert np.bincount(list(reference[kind].values()), minlength=21).tolist() == [quota] * 21
        assert (labels[index[kind]].sum(axis=0) >= quota).all()
    rare = labels.copy()
    rare[:, 7] = 0
    rare[:30, 7] = 1
    with pytest.raises(ValueError, match="concept 7 fills only"):
        nuswide.build_split(rare, seed=0)


def test_imagenet_protocol_sizes():
    labels = np.eye(100, dtype=np.float32)[np.arange(130_000) % 100]
    imagenet100 = module("imagenet100")
    for n_train in (10_000, 13_000):
        index = imagenet100.build_split(labels, seed=0, n_train=n_train)
        assert (len(index["query"]), len(index["database"]), len(index["train"])) == (5_000, 125_000, n_train)
        disjoint_and_nested(index)
        assert np.bincount(labels[index["query"]].argmax(1), minlength=100).tolist() == [50] * 100
        assert np.bincount(labels[index["train"]].argmax(1), minlength=100).tolist() == [n_train // 100] * 100

    labels = np.eye(13, dtype=np.float32)[np.arange(13 * 1_400) % 13]
    index = module("imagenet13").build_split(labels, seed=0)
    assert (len(index["query"]), len(index["database"]), len(index["train"])) == (1_300, 16_900, 10_000)
    disjoint_and_nested(index)
    assert np.bincount(labels[index["query"]].argmax(1)).tolist() == [100] * 13
    assert np.bincount(labels[index["database"]].argmax(1)).tolist() == [1_300] * 13


@pytest.mark.parametrize("protocol_name, n_train, sizes, database_is", [
    ("cifar10", 0, (1_000, 54_000, 5_000), "rest"),
    ("cifar10-1", 0, (1_000, 59_000, 5_000), "rest+train"),
    ("cifar10-1", 10_000, (1_000, 59_000, 10_000), "rest+train"),  # PPL
    ("cifar10-2", 0, (10_000, 50_000, 50_000), "train"),
])
def test_cifar10_protocols(protocol_name, n_train, sizes, database_is):
    labels = np.random.default_rng(5).permutation(np.arange(60_000) % 10)
    index = module("cifar10").build_split(labels, protocol_name, seed=0, n_train=n_train)
    assert tuple(len(index[k]) for k in ("query", "database", "train")) == sizes
    disjoint_and_nested(index, train_in_database=database_is != "rest")
    if database_is == "rest":
        assert not set(index["train"].tolist()) & set(index["database"].tolist())
    if database_is == "train":
        assert np.array_equal(index["database"], index["train"])
    assert np.bincount(labels[index["query"]]).tolist() == [sizes[0] // 10] * 10
    assert np.bincount(labels[index["train"]]).tolist() == [sizes[2] // 10] * 10
    with pytest.raises(ValueError, match="cifar10-1, cifar10-2"):
        module("cifar10").build_split(labels, "cifar10-3", seed=0)


# ---- CIFAR-10 pickles ----------------------------------------------------------------------------------------------

def write_cifar(folder: Path, per_batch: int = 20) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(6)
    data, labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        batch_labels = [int(v) for v in rng.permutation(np.arange(per_batch) % 10)]
        with open(folder / name, "wb") as handle:
            pickle.dump({b"batch_label": name.encode(), b"labels": batch_labels, b"data": batch,
                         b"filenames": [b"x.png"] * per_batch}, handle)
        data.append(batch)
        labels += batch_labels
    return np.concatenate(data).reshape(-1, 3, 32, 32), np.array(labels)


def test_cifar10_reads_pickles(tmp_path):
    images, labels = write_cifar(tmp_path / "cifar10" / "cifar-10-batches-py")
    splits = plugin("cifar10", n_query=10, n_train=20, download=False).load(tmp_path)
    assert splits.sizes() == {"n_query": 10, "n_database": 110, "n_train": 20}
    assert splits.topk is None and splits.num_classes == 10
    for part in (splits.query, splits.database, splits.train):
        batch = part.load(torch.arange(len(part)))
        assert batch.shape[1:] == (3, 32, 32) and 0 <= batch.min() and batch.max() <= 1
        expected = torch.from_numpy(images[part.index.numpy()]).float() / 255
        assert torch.equal(batch, expected)
        assert torch.equal(part.labels.argmax(1), torch.from_numpy(labels[part.index.numpy()]))
    assert np.bincount(splits.query.labels.argmax(1).numpy()).tolist() == [1] * 10
    two = plugin("cifar10", protocol_name="cifar10-2", n_query=20, n_train=100, download=False).load(tmp_path)
    assert two.sizes() == {"n_query": 20, "n_database": 100, "n_train": 100}


def test_cifar10_errors(tmp_path, monkeypatch):
    monkeypatch.setitem(module_globals("cifar10"), "DOWNLOAD_FOLDER", tmp_path / "cache")
    (tmp_path / "nowhere").mkdir()
    with pytest.raises(DatasetNotFound, match="Looked in") as error:
        plugin("cifar10", download=False).load(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in str(error.value)
    assert "not tried: only the data root given was searched" in str(error.value)
    with pytest.raises(DatasetNotFound, match="Looked in") as error:
        plugin("cifar10", download=False).load(None)
    assert str(tmp_path / "cache" / "cifar-10-batches-py") in str(error.value)
    assert "download=False" in str(error.value)
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    with open(folder / "data_batch_3", "wb") as handle:
        pickle.dump({b"images": []}, handle)
    with pytest.raises(ValueError, match="data_batch_3 is not a CIFAR-10 python batch"):
        plugin("cifar10", download=False).load(tmp_path)


# ---- clear errors --------------------------------------------------------------------------------------------------

def test_folder_not_found_lists_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setattr(lists, "DATA_CACHE", tmp_path / "cache")  # the list reader's download cache
    (tmp_path / "nowhere").mkdir()
    with pytest.raises(DatasetNotFound) as error:
        plugin("nuswide").load(tmp_path / "nowhere")
    message = str(error.value)
    assert str(tmp_path / "nowhere") in message and str(tmp_path / "nowhere" / "NUS-WIDE") in message
    assert "Looked in" in message and "DeepHash-pytorch" in message
    assert str(tmp_path / "cache") not in message  # a given data root is the only place searched
    with pytest.raises(DatasetNotFound) as error:
        plugin("nuswide").load(None)
    assert str(tmp_path / "cache" / "nuswide") in str(error.value)


def test_missing_image_names_file_and_line(tmp_path):
    write_list_set(tmp_path / "mscoco", "mscoco")
    (tmp_path / "mscoco" / "images" / "im2.png").unlink()
    with pytest.raises(DatasetNotFound, match=r"'images/im2.png' \(line 3 of test_img.txt\) is missing"):
        plugin("mscoco").load(tmp_path)
    lazy = plugin("mscoco", check_files=False).load(tmp_path)  # FileImages still fails clearly when it reads
    with pytest.raises(DatasetNotFound, match="im2.png"):
        lazy.query.load(torch.tensor([2]))


@pytest.mark.parametrize("fmt, file_name, what", [
    ("xunguangwang", "train_label.txt", "values"),
    ("swuxyj", "train.txt", "label values after the path"),
])
def test_label_row_of_wrong_width(tmp_path, fmt, file_name, what):
    write_list_set(tmp_path / "flickr25k", "flickr25k", fmt)
    path = tmp_path / "flickr25k" / file_name
    lines = path.read_text().splitlines()
    lines[2] = lines[2].rsplit(" ", 1)[0]  # drop the last value of line 3
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=f"^line 3 of {file_name} has 37 {what}, expected 38$"):
        plugin("flickr25k").load(tmp_path)


def test_bad_label_values_and_files(tmp_path):
    folder = tmp_path / "nuswide"
    write_list_set(folder, "nuswide")
    label_file = folder / "test_label.txt"
    good = label_file.read_text()
    label_file.write_text(good.replace("1", "2", 1))
    with pytest.raises(ValueError, match="line 1 of test_label.txt has a label value other than 0 or 1"):
        plugin("nuswide").load(tmp_path)
    label_file.write_text(good.replace("0", "x", 1))
    with pytest.raises(ValueError, match="line 1 of test_label.txt holds a value that is not a number"):
        plugin("nuswide").load(tmp_path)
    label_file.write_text(good + " ".join(["0"] * 20 + ["1"]) + "\n")
    with pytest.raises(ValueError, match="test_img.txt lists 4 images but test_label.txt has 5 label rows"):
        plugin("nuswide").load(tmp_path)
    label_file.unlink()
    with pytest.raises(DatasetNotFound, match="test_label.txt is missing; test_img.txt"):
        plugin("nuswide").load(tmp_path)
    label_file.write_text(good)
    for suffix in ("img", "label"):
        (folder / f"train_{suffix}.txt").unlink()
    with pytest.raises(DatasetNotFound, match=r"lacks train_img.txt \+ train_label.txt \(or train.txt\)"):
        plugin("nuswide").load(tmp_path)


def zero_first_test_row(folder: Path, num_classes: int) -> None:
    label_file = folder / "test_label.txt"
    lines = label_file.read_text().splitlines()
    lines[1] = " ".join(["0"] * num_classes)
    label_file.write_text("\n".join(lines) + "\n")


def test_zero_label_policies(tmp_path, caplog):
    write_list_set(tmp_path / "nuswide", "nuswide")
    zero_first_test_row(tmp_path / "nuswide", 21)
    with pytest.raises(ValueError, match="line 2 of test_label.txt has no label .*zero_label"):
        plugin("nuswide").load(tmp_path)
    dropped = plugin("nuswide", zero_label="drop").load(tmp_path)
    assert len(dropped.query) == 3 and (dropped.query.labels.sum(1) > 0).all()
    assert not any("im1.png" in path for path in dropped.query.paths)
    with pytest.raises(ValueError, match="zero_label must be one of"):
        plugin("nuswide", zero_label="ignore").load(tmp_path)

    write_list_set(tmp_path / "flickr25k", "flickr25k")
    zero_first_test_row(tmp_path / "flickr25k", 38)
    with caplog.at_level(logging.INFO, logger="hashbench"):
        kept = plugin("flickr25k").load(tmp_path)  # FLICKR-25K keeps them by default, with a logged count
    assert len(kept.query) == 4 and kept.query.labels[1].sum() == 0
    assert kept.notes["zero_label_rows"] == {"test": 1, "database": 0, "train": 0}
    assert "1 of 4 rows of test_label.txt have no label: kept" in caplog.text


# ---- the shared list reader, benchmark/lists.py ----------------------------------------------------------------

def test_list_plugins_use_the_shared_reader():
    assert benchmark.load_lists is lists.load_lists and benchmark.read_lists is lists.read_lists
    assert benchmark.ListSplit is lists.ListSplit and benchmark.read_split is lists.read_split
    for name in LIST_SETS:
        found = module_globals(name)
        assert found["load_lists"] is lists.load_lists, name
        assert not {"read_split", "read_lists", "ListSplit", "parse_labels"} & set(found), name


def test_read_lines_numbers_the_non_blank_lines(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("a b\n\n  c  \n   \nd\n")
    assert lists.read_lines(path) == [(1, "a b"), (3, "c"), (5, "d")]
    path.write_text("\n  \n")
    with pytest.raises(ValueError, match=f"^list file {re.escape(str(path))} is empty$"):
        lists.read_lines(path)


def test_parse_labels_values_and_errors():
    labels = lists.parse_labels([(1, ["0", "1", "1"]), (4, ["1", "0", "0"])], 3, "x_label.txt")
    assert labels.dtype == np.float32 and labels.tolist() == [[0, 1, 1], [1, 0, 0]]
    with pytest.raises(ValueError, match="^line 4 of x_label.txt has 2 values, expected 3$"):
        lists.parse_labels([(1, ["0", "1", "1"]), (4, ["1", "0"])], 3, "x_label.txt")
    with pytest.raises(ValueError, match="^line 2 of x.txt has 4 label values after the path, expected 3$"):
        lists.parse_labels([(2, ["0", "1", "1", "0"])], 3, "x.txt", "label values after the path")
    with pytest.raises(ValueError, match="^line 7 of x_label.txt holds a value that is not a number: '0 y 1'$"):
        lists.parse_labels([(1, ["0", "1", "1"]), (7, ["0", "y", "1"])], 3, "x_label.txt")
    with pytest.raises(ValueError, match="^line 9 of x_label.txt has a label value other than 0 or 1: '0 0.5 1'$"):
        lists.parse_labels([(1, ["0", "1", "1"]), (9, ["0", "0.5", "1"])], 3, "x_label.txt")


def test_read_split_reads_both_formats_with_line_numbers(tmp_path):
    (tmp_path / "test_img.txt").write_text("a.png\n\nb.png\n")
    (tmp_path / "test_label.txt").write_text("\n1 0 1\n0 1 0\n")
    split = lists.read_split(tmp_path, "test", 3)
    assert split.paths == ["a.png", "b.png"] and split.labels.tolist() == [[1, 0, 1], [0, 1, 0]]
    assert (split.image_file, split.label_file) == ("test_img.txt", "test_label.txt")
    assert split.image_lines.tolist() == [1, 3] and split.label_lines.tolist() == [2, 3]
    (tmp_path / "train.txt").write_text("c.png 0 0 1\n\nd.png 1 1 0\n")
    split = lists.read_split(tmp_path, "train", 3)
    assert split.paths == ["c.png", "d.png"] and split.labels.tolist() == [[0, 0, 1], [1, 1, 0]]
    assert (split.image_file, split.label_file) == ("train.txt", "train.txt")
    assert split.image_lines.tolist() == split.label_lines.tolist() == [1, 3]
    assert lists.read_split(tmp_path, "database", 3) is None
    (tmp_path / "test.txt").write_text("z.png 1 1 1\n")  # the _img/_label pair wins over stem.txt
    assert lists.read_split(tmp_path, "test", 3).paths == ["a.png", "b.png"]


def test_read_split_errors(tmp_path):
    (tmp_path / "test_img.txt").write_text("a.png\nb.png\n")
    with pytest.raises(DatasetNotFound, match="test_label.txt is missing; test_img.txt in the same folder needs it"):
        lists.read_split(tmp_path, "test", 2)
    (tmp_path / "test_label.txt").write_text("1 0\n")
    with pytest.raises(ValueError, match="test_img.txt lists 2 images but test_label.txt has 1 label rows"):
        lists.read_split(tmp_path, "test", 2)
    (tmp_path / "test_img.txt").unlink()
    with pytest.raises(DatasetNotFound, match="test_img.txt is missing; test_label.txt in the same folder needs it"):
        lists.read_split(tmp_path, "test", 2)
    (tmp_path / "train.txt").write_text("a.png 1 0\nb.png 1\n")
    with pytest.raises(ValueError, match="^line 2 of train.txt has 1 label values after the path, expected 2$"):
        lists.read_split(tmp_path, "train", 2)


def test_list_split_take_keeps_rows_together():
    split = ListSplit(["a", "b", "c"], np.eye(3, dtype=np.float32), "i.txt", "l.txt", np.array([1, 2, 4]),
                      np.array([5, 6, 7]))
    taken = split.take([2, 0, 2])
    assert taken.paths == ["c", "a", "c"] and taken.labels.tolist() == [[0, 0, 1], [1, 0, 0], [0, 0, 1]]
    assert taken.image_lines.tolist() == [4, 1, 4] and taken.label_lines.tolist() == [7, 5, 7]
    assert (taken.image_file, taken.label_file) == ("i.txt", "l.txt")
    assert split.take([]).paths == [] and split.take([]).labels.shape == (0, 3)


def test_read_lists_origins(tmp_path):
    labels = np.eye(3, dtype=np.int64)[[0, 1, 2, 0, 1, 2]]
    paths = [f"im{i}.png" for i in range(6)]
    write_list(tmp_path, "all", paths, labels, "swuxyj")
    found, origin = read_lists(tmp_path, 3)
    assert list(found) == ["all"] and found["all"].paths == paths and origin == "full list; split built here"
    write_list(tmp_path, "test", paths[1:3], labels[1:3], "xunguangwang")
    write_list(tmp_path, "train", paths[3:5], labels[3:5], "swuxyj")
    found, origin = read_lists(tmp_path, 3)
    assert origin == "test/train lists; database = the full list minus the test list"
    assert found["database"].paths == ["im0.png", "im3.png", "im4.png", "im5.png"]
    assert found["database"].labels.tolist() == labels[[0, 3, 4, 5]].tolist()
    assert found["database"].image_lines.tolist() == [1, 4, 5, 6] and found["database"].label_file == "all.txt"
    write_list(tmp_path, "database", paths[3:], labels[3:], "xunguangwang")
    found, origin = read_lists(tmp_path, 3)
    assert origin == "test/database/train lists" and set(found) == {"test", "database", "train"}
    assert found["database"].paths == paths[3:] and found["train"].paths == paths[3:5]


def test_read_lists_names_what_is_lacking(tmp_path):
    with pytest.raises(DatasetNotFound, match=re.escape(
            f"{tmp_path} lacks test_img.txt + test_label.txt (or test.txt) and database_img.txt + "
            f"database_label.txt (or database.txt) and train_img.txt + train_label.txt (or train.txt). Give the "
            f"test, database and train lists, or only a full list (all.txt, or all_img.txt + all_label.txt)")):
        read_lists(tmp_path, 3)
    write_list(tmp_path, "test", ["a.png"], np.array([[1, 0, 0]]), "swuxyj")
    write_list(tmp_path, "all", ["a.png", "b.png"], np.array([[1, 0, 0], [0, 1, 0]]), "swuxyj")
    with pytest.raises(DatasetNotFound, match=r"lacks database_img.txt \+ database_label.txt \(or database.txt\) "
                                              r"and train_img.txt \+ train_label.txt \(or train.txt\)\. Give"):
        read_lists(tmp_path, 3)  # a full list with only some of the lists is not a full list alone


def test_locate_folder_order_aliases_and_message(tmp_path, monkeypatch):
    monkeypatch.setattr(lists, "DATA_CACHE", tmp_path / "cache")
    root = tmp_path / "root"
    (root / "Alias").mkdir(parents=True)
    (root / "Alias" / "all.txt").write_text("a.png 1\n")
    assert lists.locate_folder("thing", root, ["other", "Alias"], "Get it.") == root / "Alias"
    (root / "thing").mkdir()
    (root / "thing" / "test_img.txt").write_text("a.png\n")  # the root's aliases come before root/name
    assert lists.locate_folder("thing", root, ["other", "Alias"], "Get it.") == root / "Alias"
    assert lists.locate_folder("thing", root, ["other"], "Get it.") == root / "thing"
    (root / "test_img.txt").write_text("a.png\n")  # and the root itself before both
    assert lists.locate_folder("thing", root, ["other", "Alias"], "Get it.") == root
    cached = tmp_path / "cache" / "thing" / "other"
    cached.mkdir(parents=True)
    (cached / "test.txt").write_text("a.png 1\n")
    assert lists.locate_folder("thing", None, ["other"], "Get it.") == cached
    (tmp_path / "nowhere").mkdir()
    with pytest.raises(DatasetNotFound) as error:
        lists.locate_folder("thing", tmp_path / "nowhere", ["thing", "elsewhere"], "Get it.")
    message = str(error.value)
    nowhere = tmp_path / "nowhere"
    searched = [nowhere, nowhere / "thing", nowhere / "elsewhere", nowhere / "thing" / "thing",
                nowhere / "thing" / "elsewhere"]  # in order, once each; a given root replaces the cache
    assert message == ("no thing list files (test_img.txt, test.txt, all_img.txt, all.txt) were found. Looked in:\n  "
                       + "\n  ".join(map(str, searched))
                       + "\nGet it. Then pass --data-root FOLDER (or set HASHBENCH_DATA).")


def test_handle_zero_labels_policies(caplog):
    labels = np.array([[1, 0], [0, 0], [0, 1], [0, 0]], dtype=np.float32)
    split = ListSplit(list("abcd"), labels, "x_img.txt", "x_label.txt", np.arange(1, 5), np.array([3, 5, 8, 9]))
    with pytest.raises(ValueError, match=r"^line 5 of x_label.txt has no label \(all 2 values are 0; 2 such rows in "
                                         r"the file\)\. Set zero_label to 'drop'"):
        lists.handle_zero_labels(split, "error")
    with caplog.at_level(logging.INFO, logger="hashbench"):
        dropped, count = lists.handle_zero_labels(split, "drop")
        kept, kept_count = lists.handle_zero_labels(split, "keep")
    assert count == kept_count == 2 and dropped.paths == ["a", "c"] and dropped.label_lines.tolist() == [3, 8]
    assert kept is split
    assert "2 of 4 rows of x_label.txt have no label: dropped" in caplog.text
    assert "2 of 4 rows of x_label.txt have no label: kept" in caplog.text
    clean = split.take([0, 2])
    assert lists.handle_zero_labels(clean, "error") == (clean, 0)


def test_check_images_names_the_first_missing(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(b"")
    split = ListSplit(["a.png", "b.png", "c.png"], np.eye(3, dtype=np.float32), "t_img.txt", "t_label.txt",
                      np.array([1, 2, 4]), np.array([1, 2, 3]))
    lists.check_images(split.take([0]), tmp_path / "img", tmp_path)
    with pytest.raises(DatasetNotFound, match=re.escape(
            f"image 'b.png' (line 2 of t_img.txt) is missing: {tmp_path / 'img' / 'b.png'} does not exist (2 of 3 "
            f"images of t_img.txt are missing). List paths are relative to the dataset folder {tmp_path}; set "
            f"image_dir")):
        lists.check_images(split, tmp_path / "img", tmp_path)


def test_load_lists_builds_splits_from_a_full_list(tmp_path):
    folder = tmp_path / "thing"
    folder.mkdir()
    labels = np.eye(2, dtype=np.int64)[[0, 1, 0, 0, 1, 1]]
    write_list(folder, "all", [f"im{i}.png" for i in range(6)], labels, "swuxyj")
    thing = SimpleNamespace(name="thing", num_classes=2, zero_label="error", image_dir="pics", check_files=False,
                            topk=0, duplicates="error", paths_outside_folder=False)
    seen = []

    def build(full_labels):
        seen.append(full_labels)
        return {"query": np.array([1, 4]), "database": np.array([0, 2, 3, 5]), "train": np.array([2, 5])}

    splits = load_lists(thing, tmp_path, ["alias"], "Get it.", build)
    assert len(seen) == 1 and seen[0].dtype == np.float32 and seen[0].tolist() == labels.tolist()
    assert [Path(p).name for p in splits.query.paths] == ["im1.png", "im4.png"]
    assert splits.train.paths == [str(folder / "pics" / "im2.png"), str(folder / "pics" / "im5.png")]
    assert torch.equal(splits.database.labels, torch.from_numpy(labels[[0, 2, 3, 5]]).float())
    assert splits.topk is None and splits.num_classes == 2
    assert (splits.mean, splits.std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert splits.notes == {"folder": str(folder), "lists": "full list; split built here",
                            "zero_label_rows": {"all": 0}}
    thing.topk, thing.check_files = 3, True
    with pytest.raises(DatasetNotFound, match=r"'im0.png' \(line 1 of all.txt\) is missing.*\(6 of 6 images"):
        load_lists(thing, tmp_path, ["alias"], "Get it.", build)  # the full list is checked, before the split
    thing.zero_label = "skip"
    with pytest.raises(ValueError, match=r"^thing.zero_label must be one of \('error', 'drop', 'keep'\); got 'skip'$"):
        load_lists(thing, tmp_path, ["alias"], "Get it.", build)


# ---- FashionMNIST mosaic -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mosaic_and_source():
    try:
        source = plugin("fashion_mnist", download=False).load()
    except DatasetNotFound:
        pytest.skip("FashionMNIST IDX files are not installed")
    splits = plugin("fashion_mnist_mosaic", n_query=300, n_database=1_000, n_train=200, download=False).load()
    return splits, source


def classes_by_image(images) -> dict[bytes, set[int]]:
    found: dict[bytes, set[int]] = {}
    for image, label in zip(images.images[:, 0].numpy(), images.labels.argmax(1).tolist()):
        found.setdefault(image.tobytes(), set()).add(label)
    return found


def test_mosaic_labels_match_its_cells(mosaic_and_source):
    splits, source = mosaic_and_source
    assert splits.sizes() == {"n_query": 300, "n_database": 1_000, "n_train": 200}
    assert splits.image_shape() == (1, 56, 56) and splits.topk is None
    for mosaics, images in ((splits.query, source.query), (splits.database, source.database)):
        lookup = classes_by_image(images)
        batch = mosaics.load(torch.arange(300))
        assert 0 <= batch.min() and batch.max() <= 1
        pixels = (batch[:, 0] * 255).round().to(torch.uint8).numpy()
        exact = 0
        for mosaic, label in zip(pixels, mosaics.labels[:300]):
            cells = [lookup[mosaic[r:r + 28, c:c + 28].tobytes()] for r in (0, 28) for c in (0, 28)]
            shown = set(torch.nonzero(label).flatten().tolist())
            if all(len(cell) == 1 for cell in cells):
                exact += 1
                assert shown == set().union(*cells)
            else:  # a FashionMNIST image that also appears under another class
                assert shown <= set().union(*cells) and all(cell & shown for cell in cells)
        assert exact >= 290


def test_mosaic_relevance_is_multi_label(mosaic_and_source):
    splits, _ = mosaic_and_source
    query, database = splits.query.labels, splits.database.labels
    counts = torch.bincount(database.sum(1).long(), minlength=5)
    assert counts[0] == 0 and (counts[1:] > 150).all()  # 1 to 4 classes, single-class mosaics included
    shared = query @ database.T
    relevant = (shared > 0).float().mean()
    assert 0.2 < relevant < 0.8
    several = (query.sum(1, keepdim=True) >= 2) & (database.sum(1)[None, :] >= 2)
    assert ((shared == 1) & several).any()  # pairs that share one of several labels
    assert torch.equal(splits.train.labels, database[splits.train.index])
    again = plugin("fashion_mnist_mosaic", n_query=300, n_database=1_000, n_train=200, download=False).load()
    assert torch.equal(again.query.labels, query)
    other = plugin("fashion_mnist_mosaic", n_query=300, n_database=1_000, n_train=200, download=False,
                   split_seed=1).load()
    assert not torch.equal(other.query.labels, query)


# ---- discovery -----------------------------------------------------------------------------------------------------

def test_discovery_finds_every_dataset_plugin():
    registry = Registry.discover()
    assert [f for f in registry.failures if f.kind == "datasets"] == []
    assert set(EXPECTED) <= set(registry.names("datasets"))
    for name, (classes, multi_label) in EXPECTED.items():
        card = registry.get("datasets", name).configure().card()
        assert card["protocol"] and card["classes"] == classes and card["multi_label"] == multi_label


def test_load_one_imports_only_the_named_file(tmp_path):
    folder = tmp_path / "datasets"
    folder.mkdir()
    source = Path(REGISTRY.get("datasets", "fashion_mnist").source_file)
    (folder / "fashion_mnist.py").write_text(source.read_text())
    (folder / "other.py").write_text("from pathlib import Path\nPath(__file__).with_suffix('.imported').touch()\n")
    (folder / "broken.py").write_text("import does_not_exist\n")
    loaded = Registry.load_one("datasets", "fashion_mnist", tmp_path)
    assert loaded.name == "fashion_mnist" and loaded.kind == "datasets"
    assert loaded.source_file == str(folder / "fashion_mnist.py")
    assert loaded.source_hash == hashlib.sha256((folder / "fashion_mnist.py").read_bytes()).hexdigest()
    assert not (folder / "other.imported").exists()
    assert "hashbench_plugins.datasets.broken" not in sys.modules
    with pytest.raises(ValueError, match="plugin 'broken' failed to load: ModuleNotFoundError.*does_not_exist"):
        Registry.load_one("datasets", "broken", tmp_path)
    for name in ("fashion_mnst", "../datasets/fashion_mnist", "_private"):
        with pytest.raises(ValueError, match=rf"unknown datasets plugin .*found: broken, fashion_mnist, other \(in "):
            Registry.load_one("datasets", name, tmp_path)
    with pytest.raises(ValueError, match="unknown plugin kind 'dataset'"):
        Registry.load_one("dataset", "fashion_mnist")
    shipped = Registry.load_one("datasets", "mscoco")  # root defaults to the repository
    assert shipped.source_file == REGISTRY.get("datasets", "mscoco").source_file and shipped.num_classes == 80


def test_mosaic_loads_its_source_without_discovery(monkeypatch):
    def no_discovery(*args, **kwargs):
        raise AssertionError("the mosaic plugin re-imported every plugin file")

    monkeypatch.setattr(Registry, "discover", classmethod(no_discovery))
    try:
        splits = plugin("fashion_mnist_mosaic", n_query=10, n_database=30, n_train=5, download=False).load()
    except DatasetNotFound:
        pytest.skip("FashionMNIST IDX files are not installed")
    assert splits.sizes() == {"n_query": 10, "n_database": 30, "n_train": 5}
