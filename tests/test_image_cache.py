"""The preprocessed image cache of file sets (benchmark/data/preprocessed.py): decoded once into a memory-mapped
uint8 array, read back byte for byte as decoding the files anew gives, built once under a claim, rebuilt when the
file is truncated or overwritten; and the prefetching reader of file sets."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from conftest import ROOT

from benchmark.data import preprocessed
from benchmark.data.images import FileImages, prefetched
from benchmark.storage.claims import ClaimTimeout, claim

SHAPES = [(224, 224), (375, 500), (640, 300), (257, 256), (224, 224), (300, 301), (224, 260)]  # (height, width)


def write_jpegs(folder, count=None, seed=0):
    import sys

    sys.path.insert(0, str(ROOT / "tools"))
    from synthetic_datasets import noise_image, write_jpeg

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count or len(SHAPES)):
        height, width = SHAPES[i % len(SHAPES)]
        path = folder / f"images/{i:03d}.jpg"
        write_jpeg(path, noise_image(rng, (height, width, 3), i))
        paths.append(str(path))
    return paths


@pytest.fixture
def jpegs(tmp_path):
    paths = write_jpegs(tmp_path / "data")
    return paths, torch.nn.functional.one_hot(torch.arange(len(paths)) % 3, 3).float()


def decoded_anew(paths, labels):
    return FileImages(paths, labels, workers=1).load(torch.arange(len(paths)))


class Counting(FileImages):
    """A FileImages that counts the files it decodes."""

    decodes = 0

    def _read(self, path):
        type(self).decodes += 1
        return super()._read(path)


def cached_set(paths, labels, cache, **options):
    images = Counting(paths, labels, workers=2, **options)
    images.use_cache(cache)
    return images


def test_images_read_from_the_cache_are_the_decoded_ones(jpegs, tmp_path):
    paths, labels = jpegs
    reference = decoded_anew(paths, labels)
    images = cached_set(paths, labels, tmp_path / "cache")
    seen = torch.zeros(len(paths), dtype=torch.bool)
    for batch, batch_labels, index in images.batches(3, shuffle=True, generator=torch.Generator().manual_seed(1)):
        assert torch.equal(batch, reference[index])  # bit for bit, float32 in [0, 1]
        assert torch.equal(batch_labels, labels[index])
        seen[index] = True
    assert seen.all() and images.array is not None
    stored = list((tmp_path / "cache" / "images").glob("*.u8"))
    assert len(stored) == 1 and stored[0].stat().st_size == preprocessed.HEADER_BYTES + len(paths) * 3 * 224 * 224
    assert torch.equal(images.load(torch.tensor([4, 0, 4])), reference[[4, 0, 4]])  # random access, repeats
    assert torch.equal(images.subset([5, 2]).load(torch.tensor([1, 0])), reference[[2, 5]])


def test_a_second_set_of_the_same_files_reads_the_array_without_decoding_them(jpegs, tmp_path):
    paths, labels = jpegs
    list(cached_set(paths, labels, tmp_path / "cache").batches(4))
    Counting.decodes = 0
    again = cached_set(paths, labels, tmp_path / "cache")
    batches = list(again.batches(4))
    assert Counting.decodes == 2  # the first and last images, checked against their files
    assert torch.equal(torch.cat([b for b, _, _ in batches]), decoded_anew(paths, labels))


def test_the_key_follows_the_contents_and_the_transform(jpegs, tmp_path):
    paths, labels = jpegs
    cache = tmp_path / "cache"
    list(cached_set(paths, labels, cache).batches(4))
    cropped = cached_set(paths, labels, cache, resize=128, crop=112)
    batches = list(cropped.batches(4))
    assert batches[0][0].shape[1:] == (3, 112, 112)
    assert torch.equal(torch.cat([b for b, _, _ in batches]),
                       FileImages(paths, labels, resize=128, crop=112).load(torch.arange(len(paths))))
    write_jpegs(tmp_path / "data", seed=5)  # the same paths, other pixels
    changed = cached_set(paths, labels, cache)
    assert torch.equal(torch.cat([b for b, _, _ in changed.batches(4)]), decoded_anew(paths, labels))
    assert len(list((cache / "images").glob("*.u8"))) == 3


def damage_truncate(path):
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size - 1000)


def damage_header(path):
    with open(path, "r+b") as handle:
        handle.write(b"garbage")


def damage_last_image(path):
    with open(path, "r+b") as handle:
        handle.seek(-3 * 224 * 224, 2)
        handle.write(bytes(3 * 224 * 224))  # zeros, as a sparse hole or a lost write leaves


def damage_append(path):
    with open(path, "ab") as handle:
        handle.write(b"\0" * 10)


@pytest.mark.parametrize("damage", [damage_truncate, damage_header, damage_last_image, damage_append])
def test_a_damaged_array_is_detected_and_built_again(jpegs, tmp_path, damage, caplog):
    paths, labels = jpegs
    cache = tmp_path / "cache"
    list(cached_set(paths, labels, cache).batches(4))
    (stored,) = (cache / "images").glob("*.u8")
    size = stored.stat().st_size
    damage(stored)
    Counting.decodes = 0
    again = cached_set(paths, labels, cache)
    with caplog.at_level("WARNING", logger="hashbench"):
        batches = list(again.batches(4))
    assert "is unusable" in caplog.text and str(stored) in caplog.text
    assert Counting.decodes >= len(paths)  # decoded again, not read from the damaged file
    assert stored.stat().st_size == size
    assert torch.equal(torch.cat([b for b, _, _ in batches]), decoded_anew(paths, labels))


def test_a_build_held_by_another_process_is_waited_for_and_not_repeated(jpegs, tmp_path):
    paths, labels = jpegs
    cache = tmp_path / "cache"
    builder = FileImages(paths, labels, workers=1)
    builder.identity()
    key = preprocessed.cache_key(builder._digests, builder.transform())
    waiting, outcome = threading.Event(), {}
    Counting.decodes = 0
    waiter = cached_set(paths, labels, cache)
    waiter.cache["report_wait"] = lambda message: waiting.set()

    def read_all():
        outcome["images"] = torch.cat([b for b, _, _ in waiter.batches(4)])

    with claim(cache, "images", key, what="a test holding the build"):  # another lock holder, as another process
        thread = threading.Thread(target=read_all)
        thread.start()
        assert waiting.wait(20), "the second reader did not wait for the claim"
        preprocessed.build_array(preprocessed.array_path(cache, key), key, len(paths),
                                 lambda i: builder._read(paths[i]), 1, lambda message: None, "the test's images")
    thread.join(30)
    assert Counting.decodes == 2  # it opened what the holder built (its two end checks), and decoded nothing else
    assert torch.equal(outcome["images"], decoded_anew(paths, labels))
    waiter_timeout = cached_set(paths, labels, tmp_path / "other-cache")
    waiter_timeout.cache["claim_timeout"] = 0.2
    with claim(tmp_path / "other-cache", "images", key, what="a test holding the build"), \
            pytest.raises(ClaimTimeout, match="a test holding the build"):
        list(waiter_timeout.batches(4))


def test_without_a_cache_folder_nothing_is_written_and_each_pass_decodes(jpegs, tmp_path):
    paths, labels = jpegs
    images = Counting(paths, labels, workers=1)
    Counting.decodes = 0
    list(images.batches(4))
    list(images.batches(4))
    assert Counting.decodes == 2 * len(paths) and images.array is None


def test_the_next_batch_loads_while_the_current_one_is_used():
    second_loading = threading.Event()

    def load(index):
        if int(index[0]) == 1:
            second_loading.set()
        return index.float()

    batches = prefetched(load, [torch.tensor([0]), torch.tensor([1]), torch.tensor([2])])
    assert int(next(batches)[0]) == 0
    assert second_loading.wait(10), "batch 1 was not loaded while batch 0 was in use"
    assert [int(i) for i, _ in batches] == [1, 2]
    assert list(prefetched(load, [])) == []


def test_a_file_that_cannot_be_read_fails_the_build_naming_it(jpegs, tmp_path):
    paths, labels = jpegs
    with open(paths[3], "r+b") as handle:
        handle.truncate(100)
    images = cached_set(paths, labels, tmp_path / "cache")
    with pytest.raises(ValueError, match=f"image file {paths[3]} cannot be read"):
        list(images.batches(4))
    assert not list((tmp_path / "cache" / "images").glob("*"))  # no partial array, no temporary left


GRID = """
[[block]]
dataset = "nuswide"
hashing = "dpsh"
backbone = "smallcnn"
bits = 16
attack = ["none", "pgd"]
epsilon = "8/255"
[block.params.hashing.dpsh]
epochs = 1
[block.params.attacks.pgd]
iterations = 2
"""


def test_a_run_gives_the_same_numbers_with_and_without_the_image_cache(registry, tmp_path, monkeypatch):
    import sys

    import pandas as pd
    from conftest import write_grid

    from benchmark.planning.grid import expand, load_preset
    from benchmark.running.runner import Runner

    sys.path.insert(0, str(ROOT / "tools"))
    from synthetic_datasets import LIST_DATASETS, write_list_dataset

    classes, multi_label, list_format = LIST_DATASETS["nuswide"]
    write_list_dataset(tmp_path / "data" / "nuswide", classes, multi_label, list_format, seed=4)
    cells = expand(load_preset(str(write_grid(tmp_path / "grid.toml", GRID))), registry)

    def run(name):
        runner = Runner(registry, tmp_path / name / "results", tmp_path / name / "cache", device="cpu",
                        data_root=str(tmp_path / "data"))
        assert runner.run(cells) == {"ran": 2, "cached": 0, "error": 0}
        table = pd.read_parquet(tmp_path / name / "results")
        table = table[~table["metric"].isin(("seconds_per_image", "prepare_seconds", "score_seconds"))]
        return table.set_index(["cell_key", "metric", "topk", "recall", "iterations"])["value"].sort_index()

    cached = run("cached")
    assert len(list((tmp_path / "cached" / "cache" / "images").glob("*.u8"))) == 3
    with monkeypatch.context() as patch:
        patch.setattr(FileImages, "use_cache", lambda self, *args, **kwargs: None)
        decoded = run("decoded")
    assert not (tmp_path / "decoded" / "cache" / "images").exists()
    pd.testing.assert_series_equal(cached, decoded)
