"""Nothing silently wrong: data changed in place is noticed, a given data root is the only one read (and recorded
on every row), list files cannot reach outside their folder or repeat an image, every grid axis value is checked
where the grid is parsed, and errors name the file (and line) they come from.

Each test writes its own small inputs into tmp_path; the row test reads Debian's FashionMNIST through symbolic
links (skipped without it).
"""
from __future__ import annotations

import gzip
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark import DatasetNotFound, HashingMethod, Registry, TensorImages, TrainContext, one_hot
from benchmark.data import dataset, images, lists
from benchmark.planning.grid import expand, parse_filters
from benchmark.planning.plan import Planner
from benchmark.rows import base_row
from benchmark.victim.hashing import TrainingDiverged
from benchmark.victim.model import build_victim

ROOT = Path(__file__).resolve().parent.parent
REGISTRY = Registry.discover()
DEBIAN = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte")


@pytest.fixture(autouse=True)
def no_env_data_root(monkeypatch):
    monkeypatch.delenv("HASHBENCH_DATA", raising=False)


def dataset_plugin(name: str, **overrides):
    return REGISTRY.get("datasets", name).configure(overrides)


# ---- 1. fingerprints notice in-place changes -------------------------------------------------------------------

@pytest.fixture
def digest_memo(tmp_path, monkeypatch):
    memo = tmp_path / "digests.sqlite"
    monkeypatch.setattr(images, "DIGEST_CACHE", memo)
    return memo


def rewrite_in_place(path: Path, data: bytes) -> None:
    """New bytes of the same length into the same inode, the modification time put back as it was."""
    before = os.stat(path)
    with open(path, "r+b") as handle:
        handle.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)


def saved_image(path: Path, colour: tuple[int, int, int], size=(40, 30)) -> bytes:
    Image.new("RGB", size, colour).save(path)
    return path.read_bytes()


def test_an_image_rewritten_in_place_gets_a_new_digest(tmp_path, digest_memo):
    path = tmp_path / "a.png"
    data = bytearray(saved_image(path, (10, 20, 30)))
    first = images.file_digests([str(path)])
    data[len(data) // 2] ^= 0xFF  # same size, inode and mtime: only ctime and content tell the rewrite
    rewrite_in_place(path, bytes(data))
    assert images.file_digests([str(path)]) == [hashlib.sha256(data).hexdigest()[:16]] != first


def test_the_content_sample_catches_a_rewrite_that_keeps_every_stat_field(tmp_path, digest_memo, monkeypatch):
    path = tmp_path / "a.png"
    big = np.random.default_rng(0).integers(0, 256, (120, 120, 3), dtype=np.uint8)  # > 8 KiB: sampled, not whole
    Image.fromarray(big).save(path)
    signature = images.file_signature(str(path))
    first = images.file_digests([str(path)])
    data = bytearray(path.read_bytes())
    assert len(data) > 2 * images.SAMPLE_BYTES
    data[-20] ^= 0xFF  # in the last 4 KiB
    rewrite_in_place(path, bytes(data))
    monkeypatch.setattr(images, "file_signature", lambda _: signature)  # a faked ctime too
    assert images.file_digests([str(path)]) != first


def test_an_unchanged_file_is_served_from_the_memo(tmp_path, digest_memo, monkeypatch):
    path = tmp_path / "a.png"
    saved_image(path, (1, 2, 3))
    first = images.file_digests([str(path)])
    monkeypatch.setattr(images, "whole_file_digest", lambda _: pytest.fail("read again although unchanged"))
    assert images.file_digests([str(path)]) == first


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def write_fashion(folder: Path, n_train: int = 30, n_test: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte": np.arange(n_train) % 10,
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte": np.arange(n_test) % 10}
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write_idx(folder / f"{name}.gz", array)
    return arrays


def tiny_fashion(**overrides):
    return dataset_plugin("fashion_mnist", n_train=20, download=False, **overrides)


def test_a_changed_idx_file_changes_the_in_memory_fingerprint(tmp_path):
    arrays = write_fashion(tmp_path)
    first = tiny_fashion().load(tmp_path)
    assert tiny_fashion().load(tmp_path).fingerprint() == first.fingerprint()
    changed = arrays["train-images-idx3-ubyte"].copy()
    changed[5, 3, 3] ^= 1  # one pixel of one database image
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", changed)
    second = tiny_fashion().load(tmp_path)
    assert second.fingerprint() != first.fingerprint()
    assert second.database.fingerprint() != first.database.fingerprint()
    assert second.query.fingerprint() == first.query.fingerprint()
    relabelled = arrays["t10k-labels-idx1-ubyte"].copy()
    relabelled[0] = 9 - relabelled[0]
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", relabelled)
    assert tiny_fashion().load(tmp_path).query.fingerprint() != second.query.fingerprint()


# ---- 2. --data-root -----------------------------------------------------------------------------------------------

def test_a_data_root_that_does_not_exist_is_an_error_naming_it(tmp_path, monkeypatch):
    nowhere = tmp_path / "nowhere"
    with pytest.raises(ValueError, match=f"^--data-root {re.escape(str(nowhere))} does not exist; give the folder"):
        Planner(REGISTRY, str(nowhere))
    with pytest.raises(ValueError, match=f"--data-root {re.escape(str(nowhere))} does not exist"):
        tiny_fashion().load(nowhere)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is not a folder"):
        Planner(REGISTRY, str(tmp_path / "file"))
    monkeypatch.setenv("HASHBENCH_DATA", str(nowhere))
    with pytest.raises(ValueError, match=f"^\\$HASHBENCH_DATA={re.escape(str(nowhere))} does not exist"):
        Planner(REGISTRY, None)


def test_plan_with_a_mistyped_data_root_fails_before_any_work(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "bench.py"), "plan", "--data-root", str(tmp_path / "typo"),
                             "--results", str(tmp_path / "results")], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)
    assert result.returncode == 2
    assert f"--data-root {tmp_path / 'typo'} does not exist" in result.stderr
    assert "cells" not in result.stdout and not (tmp_path / "results").exists()


def test_run_with_a_mistyped_data_root_writes_nothing(tmp_path):
    from benchmark.running.runner import Runner

    with pytest.raises(ValueError, match="--data-root .*typo does not exist"):
        Runner(REGISTRY, tmp_path / "results", tmp_path / "cache", device="cpu", data_root=str(tmp_path / "typo"))
    assert sorted(tmp_path.iterdir()) == []


def test_a_data_root_without_the_dataset_is_searched_alone(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFound) as error:
        dataset_plugin("fashion_mnist").load(tmp_path / "empty")  # Debian's copy exists, and is not used
    message = str(error.value)
    assert str(tmp_path / "empty") in message and str(tmp_path / "empty" / "fashion_mnist") in message
    assert "/usr/share/datasets" not in message.split("Looked in:")[1].split("Get them")[0]
    assert "Only the data root given (--data-root) was searched" in message
    roots = lists.data_roots("nuswide", tmp_path / "empty", [tmp_path / "cache"])
    assert roots == [tmp_path / "empty", tmp_path / "empty" / "nuswide"]
    assert dataset.data_roots("nuswide", None, [tmp_path / "cache"]) == [tmp_path / "cache"]


def test_the_folder_read_is_on_every_row(tmp_path):
    if not all((DEBIAN / f"{name}.gz").is_file() for name in FASHION_FILES):
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in FASHION_FILES:
        (copy / f"{name}.gz").symlink_to(DEBIAN / f"{name}.gz")
    cells = expand({"block": [{"dataset": "fashion_mnist", "hashing": "dpsh", "bits": 16, "attack": "none"}]},
                   REGISTRY)
    debian_plan = Planner(REGISTRY).plan(cells[0])
    copy_plan = Planner(REGISTRY, str(copy)).plan(cells[0])
    assert base_row(debian_plan, REGISTRY, 0, 0.0)["data_folder"] == str(DEBIAN)
    assert base_row(copy_plan, REGISTRY, 0, 0.0)["data_folder"] == str(copy)
    assert copy_plan.key == debian_plan.key  # the same contents elsewhere: the same numbers, so the same key


# ---- 3. list datasets -------------------------------------------------------------------------------------------

def write_flat_list(folder: Path, paths: list[str], labels: np.ndarray, stem: str = "all") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.txt").write_text("".join(f"{p} {' '.join(str(int(v)) for v in row)}\n"
                                                for p, row in zip(paths, labels)))


def list_thing(**overrides):
    values = {"name": "thing", "num_classes": 2, "zero_label": "error", "image_dir": "", "check_files": False,
              "topk": 0, "duplicates": "error", "paths_outside_folder": False}
    return SimpleNamespace(**{**values, **overrides})


def take_halves(labels):
    n = len(labels)
    return {"query": np.arange(0, n // 2), "database": np.arange(n // 2, n), "train": np.arange(n // 2, n)}


def test_a_list_path_outside_the_dataset_folder_is_refused(tmp_path):
    folder = tmp_path / "thing"
    labels = np.eye(2, dtype=np.int64)[[0, 1, 0, 1]]
    write_flat_list(folder, ["a.png", "../../etc/passwd", "b.png", "/etc/hostname"], labels)
    with pytest.raises(ValueError, match=r"image '\.\./\.\./etc/passwd' \(line 2 of all\.txt\) resolves to "
                                         r"\S+/etc/passwd, outside the dataset folder .*\(2 of 4 images of all\.txt "
                                         r"lie outside\).*paths_outside_folder"):
        lists.load_lists(list_thing(), tmp_path, [], "Get it.", take_halves)
    splits = lists.load_lists(list_thing(paths_outside_folder=True), tmp_path, [], "Get it.", take_halves)
    assert splits.query.paths[1] == os.path.join(str(folder), "../../etc/passwd")
    write_flat_list(folder, ["a.png", "b.png"], labels[:2])
    with pytest.raises(ValueError, match="outside the dataset folder"):  # image_dir cannot lead out either
        lists.load_lists(list_thing(image_dir=".."), tmp_path, [], "Get it.", take_halves)


def test_shipped_list_plugins_refuse_paths_outside_their_folder(tmp_path):
    for name, classes in (("nuswide", 21), ("flickr25k", 38)):
        folder = tmp_path / name
        labels = np.zeros((2, classes), dtype=np.int64)
        labels[:, 0] = 1
        write_flat_list(folder, ["images/a.png", "../../../etc/passwd"], labels, stem="all")
        with pytest.raises(ValueError, match="outside the dataset folder"):
            dataset_plugin(name, check_files=False).load(tmp_path)


def test_a_path_listed_twice_is_an_error_naming_the_lines(tmp_path):
    folder = tmp_path / "thing"
    paths = [f"im{i}.png" for i in range(10)] + ["im3.png"] * 10
    labels = np.eye(2, dtype=np.int64)[[i % 2 for i in range(20)]]  # the repeats of im3 alternate its label
    write_flat_list(folder, paths, labels)
    with pytest.raises(ValueError, match=r"^all\.txt lists 'im3\.png' 11 times \(lines 4, 11, 12, 13, 14, 15, 16, "
                                         r"17, 18, 19 and 1 more\) with different labels"):
        lists.load_lists(list_thing(duplicates="keep"), tmp_path, [], "Get it.", take_halves)
    same = labels.copy()
    same[10:] = labels[3]
    write_flat_list(folder, paths, same)
    with pytest.raises(ValueError, match=r"^all\.txt lists 'im3\.png' 11 times .*; paths of all\.txt listed more "
                                         r"than once: 1\. .*duplicates = 'keep'"):
        lists.load_lists(list_thing(), tmp_path, [], "Get it.", take_halves)
    kept = lists.load_lists(list_thing(duplicates="keep"), tmp_path, [], "Get it.", take_halves)
    assert len(kept.query) + len(kept.database) == 20
    with pytest.raises(ValueError, match=r"thing\.duplicates must be one of \('error', 'keep'\); got 'drop'"):
        lists.load_lists(list_thing(duplicates="drop"), tmp_path, [], "Get it.", take_halves)


def test_flickr_keeps_its_published_repeats_but_not_conflicting_ones(tmp_path):
    folder = tmp_path / "flickr25k"
    (folder / "images").mkdir(parents=True)
    for i in range(3):
        saved_image(folder / "images" / f"im{i}.png", (i, i, i), size=(4, 4))
    labels = np.zeros((4, 38), dtype=np.int64)
    labels[:, 0] = 1
    for stem in ("test", "database"):
        write_flat_list(folder, ["images/im0.png", "images/im1.png"], labels[:2], stem=stem)
    write_flat_list(folder, ["images/im1.png", "images/im2.png", "images/im1.png"], labels[:3], stem="train")
    assert len(dataset_plugin("flickr25k").load(tmp_path).train) == 3
    with pytest.raises(ValueError, match="listed more than once"):
        dataset_plugin("flickr25k", duplicates="error").load(tmp_path)
    labels[2, 1] = 1
    write_flat_list(folder, ["images/im1.png", "images/im2.png", "images/im1.png"], labels[:3], stem="train")
    with pytest.raises(ValueError, match=r"train\.txt lists 'images/im1\.png' 2 times \(lines 1, 3\) with different"):
        dataset_plugin("flickr25k").load(tmp_path)


def test_a_missing_image_is_counted_over_the_list_file(tmp_path):
    folder = tmp_path / "thing"
    folder.mkdir()
    paths = [f"im{i}.png" for i in range(120)]
    for path in paths[:119]:
        (folder / path).write_bytes(b"")
    write_flat_list(folder, paths, np.eye(2, dtype=np.int64)[[i % 2 for i in range(120)]])

    def build(labels):  # the missing last image is one of 20 queries
        return {"query": np.arange(100, 120), "database": np.arange(100), "train": np.arange(20)}

    with pytest.raises(DatasetNotFound, match=r"\(1 of 120 images of all\.txt are missing\)"):
        lists.load_lists(list_thing(check_files=True), tmp_path, [], "Get it.", build)


def test_rows_taken_from_a_file_are_counted_as_such():
    split = lists.ListSplit([f"im{i}" for i in range(5)], np.eye(5, dtype=np.float32), "all.txt", "all.txt",
                            np.arange(1, 6), np.arange(1, 6), 5)
    assert split.counted(2) == "2 of 5 images of all.txt"
    assert split.take([0, 1]).counted(1) == "1 of the 2 images taken from the 5 of all.txt"


# ---- 4. every axis value validated where the grid is parsed -------------------------------------------------------

def one_block(**axes):
    block = {"dataset": "fashion_mnist", "hashing": "dpsh", "backbone": "smallcnn_fc500", "bits": 32,
             "attack": "pgd", **axes}
    return {"block": [block]}


@pytest.mark.parametrize("surrogate, message", [
    ("nosuch/smallcnn/16", r"surrogate 'nosuch/smallcnn/16': unknown hashing plugin 'nosuch'; found: .*dpsh"),
    ("dpsh/nosuchnet/16", r"surrogate 'dpsh/nosuchnet/16': unknown backbone 'nosuchnet'; known: .*smallcnn"),
    ("dpsh/smallcnn", r"surrogate 'dpsh/smallcnn' is malformed; write 'self' \(white box\) or HASHING/BACKBONE/BITS"),
    ("dpsh/smallcnn/0", r"surrogate 'dpsh/smallcnn/0': its bits '0' are not a whole number in 1\.\.4096"),
    ("dpsh/smallcnn/16.5", r"its bits '16\.5' are not a whole number"),
    ("/smallcnn/16", "is malformed"),
])
def test_a_bad_surrogate_is_refused_where_the_grid_is_parsed(surrogate, message):
    with pytest.raises(ValueError, match=message):
        expand(one_block(surrogate=[surrogate]), REGISTRY)


def test_a_bad_backbone_or_surrogate_in_a_filter_is_refused():
    with pytest.raises(ValueError, match="unknown backbone 'nosuchnet'"):
        parse_filters(["backbone=nosuchnet"])
    with pytest.raises(ValueError, match="unknown hashing plugin 'nosuch'"):
        expand(one_block(surrogate=["self"]), REGISTRY, parse_filters(["surrogate=nosuch/smallcnn/16"]))


def test_a_surrogate_naming_the_victim_is_the_white_box_cell():
    cells = expand(one_block(surrogate=["self", "dpsh/smallcnn_fc500/032", "dpsh/smallcnn_fc500/016"]), REGISTRY)
    assert sorted(c.surrogate for c in cells) == ["dpsh/smallcnn_fc500/16", "self"]
    defended = expand(one_block(surrogate=["dpsh/smallcnn_fc500/032"], defense="cgat", attack="pgd"), REGISTRY)
    assert [c.surrogate for c in defended] == ["dpsh/smallcnn_fc500/32"]  # another victim than the defended one
    filtered = expand(one_block(surrogate=["dpsh/smallcnn_fc500/16"]), REGISTRY,
                      parse_filters(["surrogate=dpsh/smallcnn_fc500/0016"]))
    assert [c.surrogate for c in filtered] == ["dpsh/smallcnn_fc500/16"]


# ---- 5. messages that name their input ----------------------------------------------------------------------------

def test_a_truncated_gz_names_the_file(tmp_path):
    write_fashion(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))} cannot be read \\(EOFError: .*expected a "
                                         f"complete gzipped IDX file"):
        tiny_fashion().load(tmp_path)


def test_a_label_out_of_range_names_the_file_and_the_classes(tmp_path):
    arrays = write_fashion(tmp_path)
    labels = arrays["train-labels-idx1-ubyte"].copy()
    labels[7] = 12
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: label 12 of image 7 is not a class; "
                                         f"FashionMNIST labels are 0\\.\\.9 \\(labels out of range: 1\\)$"):
        tiny_fashion().load(tmp_path)
    write_idx(path, labels[:-1] % 10)
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))} holds labels of shape \\(29,\\); expected "
                                         f"\\(30,\\), one per image"):
        tiny_fashion().load(tmp_path)


def test_a_truncated_png_names_its_path(tmp_path):
    path = tmp_path / "im.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    files = images.FileImages([str(path)], torch.ones(1, 2))
    with pytest.raises(images.ImageUnreadable, match=f"^image file {re.escape(str(path))} cannot be read as an image "
                                                     f"\\((OSError|SyntaxError): "):
        files.load(torch.tensor([0]))


def test_a_truncated_image_of_a_list_dataset_names_its_line(tmp_path):
    folder = tmp_path / "thing"
    folder.mkdir()
    for i in range(4):
        saved_image(folder / f"im{i}.png", (i, 0, 0))
    (folder / "im2.png").write_bytes((folder / "im2.png").read_bytes()[:30])
    write_flat_list(folder, [f"im{i}.png" for i in range(4)], np.eye(2, dtype=np.int64)[[0, 1, 0, 1]])
    splits = lists.load_lists(list_thing(check_files=True), tmp_path, [], "Get it.", take_halves)
    with pytest.raises(images.ImageUnreadable, match=r"im2\.png \(listed at line 3 of all\.txt\) cannot be read"):
        splits.database.load(torch.tensor([0, 1]))


class NaNAtEpoch3(HashingMethod):
    """Writes NaN into the first weight tensor at the end of epoch 3."""

    name = "nan_at_epoch3"
    paper = "test"
    epochs = 5
    batch_size = 8

    def loss(self, outputs, labels, index):
        return (outputs ** 2).mean()

    def end_epoch(self, model, train, epoch, ctx):
        if epoch == 2:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))


def test_nan_written_into_weights_names_the_epoch_it_happened_in():
    torch.manual_seed(0)
    model = build_victim("smallcnn", 8, 1, 28, (0.5,), (0.5,))
    train = TensorImages(torch.rand(16, 1, 28, 28), one_hot(torch.arange(16) % 2, 2))
    ctx = TrainContext(torch.device("cpu"), torch.Generator().manual_seed(0), 2)
    with pytest.raises(TrainingDiverged, match=r"^nan_at_epoch3 left non-finite weights in \S+ at the end of "
                                               r"epoch 3 \(its last step or end_epoch\)"):
        NaNAtEpoch3.configure().fit(model, train, ctx)
    assert len(ctx.info["loss_per_epoch"]) == 3


def plugin_root(tmp_path: Path, source: str) -> Path:
    (tmp_path / "methods" / "attacks").mkdir(parents=True)
    path = tmp_path / "methods" / "attacks" / "broken.py"
    path.write_text(source)
    return path


def test_a_plugin_load_error_names_the_plugin_file_and_line(tmp_path):
    path = plugin_root(tmp_path, "from benchmark import Range\n\n\nRange(1).check(-1, 'broken.steps')\n")
    registry = Registry.discover(tmp_path)
    [failure] = registry.failures
    assert failure.error == f"ValueError: broken.steps must be >= 1; got -1 ({path}, line 4)"
    with pytest.raises(ValueError, match=f"attacks plugin 'broken' failed to load: .*\\({re.escape(str(path))}, "
                                         f"line 4\\)"):
        Registry.load_one("attacks", "broken", tmp_path)


@pytest.mark.parametrize("source, where", [
    ("x = 1\ndef f(:\n", "line 2"),
    ("import sys\n\nsys.exit(3)\n", "at line 3"),
    ("from benchmark import Attack\n\n\nclass X(Attack):\n    name = 'other'\n    paper = 'p'\n", "(line 4)"),
])
def test_syntax_errors_exits_and_misnamed_classes_name_their_line(tmp_path, source, where):
    path = plugin_root(tmp_path, source)
    [failure] = Registry.discover(tmp_path).failures
    assert where in failure.error and str(path) in failure.error
