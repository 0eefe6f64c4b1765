"""Data folders without code (benchmark/data/layouts.py, datasets/folder.py) and split fingerprints
(benchmark/data/fingerprints.py, benchmark/data/split_registry.json), on tiny folders the tests write."""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


from benchmark import FileImages, Splits, TensorImages, one_hot
from benchmark.cli import main
from benchmark.data import fingerprints, layouts
from benchmark.data.fingerprints import (combined_fingerprint, encode_sketch, identify_list, list_fingerprint,
                                         load_registry, name_sketch, read_registry, shared_names, split_identity,
                                         stored_sketch)
from benchmark.planning.grid import expand, parse_settings
from benchmark.planning.plan import Planner
from benchmark.rows import base_row


def write_image(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 6, 3), value, np.uint8)).save(path, format="JPEG" if path.suffix == ".jpg" else "PNG")


def image_folder(root: Path, classes=("cat", "dog", "eel"), per_class: int = 5) -> Path:
    for c, name in enumerate(classes):
        for i in range(per_class):
            write_image(root / name / f"{name}{i}.png", 40 * c + i)
    return root


def write_rows(folder: Path, rows: dict[str, list[tuple[str, list[int]]]], pairs: bool = False) -> Path:
    """List files of (path, labels) rows by stem; joint "path l1 ... lC" lines, or *_img.txt + *_label.txt."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem, items in rows.items():
        if pairs:
            (folder / f"{stem}_img.txt").write_text("".join(f"{path}\n" for path, _ in items))
            (folder / f"{stem}_label.txt").write_text("".join(" ".join(map(str, row)) + "\n" for _, row in items))
        else:
            (folder / f"{stem}.txt").write_text("".join(f"{path} {' '.join(map(str, row))}\n" for path, row in items))
        for path, _ in items:
            write_image(folder / path)
    return folder


# queries: one of class 0, one of class 1; database: ten of class 0, two of classes 1 and 2; train: four of them
KNOWN = {"test": [("images/q0.jpg", [1, 0, 0]), ("images/q1.jpg", [0, 1, 0])],
         "database": [(f"images/d{i}.jpg", [1, 0, 0]) for i in range(10)]
                     + [("images/d10.jpg", [0, 1, 1]), ("images/d11.jpg", [0, 1, 0])],
         "train": [(f"images/d{i}.jpg", [1, 0, 0]) for i in range(3)] + [("images/d10.jpg", [0, 1, 1])]}


def entry(entry_id: str, role: str, names: list[str], dataset: str = "toy") -> dict:
    sketch, sampled = stored_sketch(name_sketch(names))
    return {"id": entry_id, "variant": entry_id.split("/")[0], "dataset": dataset, "role": role, "repo": "owner/repo",
            "commit": "0" * 40, "paths": [f"data/{role}.txt"], "status": "ok", "size": len(names),
            "distinct": len(set(names)), "label_columns": 3, "sha256": list_fingerprint(names),
            "sketch": encode_sketch(sketch), "sketch_sampled": sampled}


@pytest.fixture
def toy_registry():
    """The KNOWN lists registered under other roots (toy@paper), and a list sharing one query (toy@other)."""
    elsewhere = {stem: [f"/home/someone/toy/{path}" for path, _ in items] for stem, items in KNOWN.items()}
    lists = [entry("toy@paper/query", "query", elsewhere["test"]),
             entry("toy@paper/database", "database", elsewhere["database"]),
             entry("toy@paper/train", "train", elsewhere["train"]),
             entry("toy@other/query", "query", ["x/q0.jpg", "x/other1.jpg", "x/other2.jpg"]),
             {"id": "toy@other/database", "variant": "toy@other", "role": "database", "repo": "owner/repo",
              "commit": "0" * 40, "paths": ["data/database.txt"], "status": "absent", "reason": "too large"}]
    return read_registry({"lists": lists})


# ---- layouts ------------------------------------------------------------------------------------------------------

def test_an_image_folder_is_recognised_and_split_by_the_seeded_rule(tmp_path):
    folder = image_folder(tmp_path / "pets")
    data = layouts.read_folder(folder)
    assert data.layout == "image folder" and data.class_names == ["cat", "dog", "eel"] and data.num_classes == 3
    sizes = {role: len(split.paths) for role, split in data.lists.items()}
    assert sizes == {"query": 3, "database": 12, "train": 12}  # one query per class (round(0.5), at least one)
    query_classes = data.lists["query"].labels.argmax(axis=1)
    assert sorted(query_classes.tolist()) == [0, 1, 2]
    assert not set(data.lists["query"].paths) & set(data.lists["database"].paths)
    again = layouts.read_folder(folder)
    other = layouts.read_folder(folder, split_seed=1, train_share=0.5)
    assert again.lists["query"].paths == data.lists["query"].paths
    assert other.lists["query"].paths != data.lists["query"].paths
    assert len(other.lists["train"].paths) == 6 and set(other.lists["train"].paths) <= set(other.lists["database"].paths)
    assert "seeded: split_seed 1" in other.origin


def test_split_folders_give_the_split_and_the_union_of_their_classes(tmp_path):
    image_folder(tmp_path / "set" / "test", ("cat", "dog"), 2)
    image_folder(tmp_path / "set" / "database", ("cat", "dog", "eel"), 3)
    image_folder(tmp_path / "set" / "train", ("dog", "eel"), 2)
    data = layouts.read_folder(tmp_path / "set")
    assert data.layout == "split folders" and data.class_names == ["cat", "dog", "eel"]
    assert {role: len(s.paths) for role, s in data.lists.items()} == {"query": 4, "database": 9, "train": 4}
    assert data.lists["train"].labels[:, 0].sum() == 0 and data.lists["query"].paths[0].startswith("test/")


@pytest.mark.parametrize("pairs", [False, True], ids=["lists", "pairs"])
def test_both_list_formats_are_recognised_with_their_label_count(tmp_path, pairs):
    data = layouts.read_folder(write_rows(tmp_path / "lists", KNOWN, pairs))
    assert data.layout == ("pairs" if pairs else "lists") and data.num_classes == 3
    assert data.lists["query"].paths == ["images/q0.jpg", "images/q1.jpg"]
    assert np.array_equal(data.lists["database"].labels[10], [0, 1, 1])


def test_a_full_list_alone_is_split_here(tmp_path):
    rows = {"all": [(f"images/{i}.jpg", [int(i % 2 == 0), int(i % 2 == 1)]) for i in range(20)]}
    data = layouts.read_folder(write_rows(tmp_path / "full", rows), query_share=0.2)
    assert data.layout == "lists" and {r: len(s.paths) for r, s in data.lists.items()} == \
        {"query": 4, "database": 16, "train": 16}
    assert data.lists["query"].labels.sum(axis=0).tolist() == [2, 2]  # per class: single-label


@pytest.mark.parametrize("build, problem", [
    (lambda root: root.mkdir(), "holds no list file and no image"),
    (lambda root: write_image(root / "loose.png"), "1 image files but no class sub-folder"),
    (lambda root: (write_rows(root, {"test": KNOWN["test"]}), write_rows(root, {"train": KNOWN["train"]}, True)),
     "both list formats"),
    (lambda root: (image_folder(root / "query"), image_folder(root / "database"), image_folder(root / "train"),
                   image_folder(root / "extra")), r"beside other image folders \(extra\)"),
    (lambda root: (image_folder(root / "query"), image_folder(root / "test"), image_folder(root / "database"),
                   image_folder(root / "train")), "both query/ and test/"),
    (lambda root: (image_folder(root / "query"), image_folder(root / "train")), "but not database"),
    (lambda root: (image_folder(root), write_image(root / "stray.png")), "1 image files .*stray.png.* beside"),
], ids=["empty", "loose images", "two formats", "split and class folders", "query and test", "no database",
        "images beside class folders"])
def test_a_folder_of_no_single_layout_is_refused_naming_it_and_the_layouts(tmp_path, build, problem):
    root = tmp_path / "data"
    build(root)
    with pytest.raises(ValueError, match=problem) as error:
        layouts.recognise(root)
    message = str(error.value)
    assert f"data folder {root}:" in message and "Accepted layouts: lists:" in message
    assert all(name in message for name in layouts.LAYOUTS)


def test_the_card_counts_a_known_folder(tmp_path, toy_registry):
    data = layouts.read_folder(write_rows(tmp_path / "known", KNOWN))
    card = layouts.folder_card(data, registry=toy_registry)
    assert card["roles"]["query"] == {"images": 2, "labels_mean": 1.0, "labels_max": 1, "zero_label": 0}
    assert card["roles"]["database"]["labels_mean"] == pytest.approx(13 / 12) and \
        card["roles"]["database"]["labels_max"] == 2
    assert card["base_rate"] == pytest.approx((10 + 2) / (2 * 12))  # q0: the ten of class 0; q1: d10, d11
    assert card["few_relevant_share"] == 0.5  # q1 has 2 relevant items, q0 exactly 10
    text = layouts.format_card(card)
    assert "relevance base rate 0.5000" in text and "fewer than 10 relevant items: 50.0%" in text
    assert "exactly toy@paper/query" in text


# ---- identification -----------------------------------------------------------------------------------------------

def test_the_fingerprint_ignores_the_root_and_the_order():
    assert list_fingerprint(["b/x.jpg", "/root/a/y.jpg"]) == list_fingerprint(["./y.jpg", "x.jpg"])
    assert list_fingerprint(["x.jpg"]) == hashlib.sha256(b"x.jpg\n").hexdigest()
    assert list_fingerprint(["x.jpg", "y.jpg"]) != list_fingerprint(["x.jpg", "z.jpg"])


def test_identify_names_the_exact_variant_of_lists_under_another_root(tmp_path, toy_registry):
    identified = layouts.identify_folder(write_rows(tmp_path / "toy", KNOWN), toy_registry)
    assert [i.matches() for i in identified.values()] == ["toy@paper/query", "toy@paper/database", "toy@paper/train"]
    assert fingerprints.split_variant(identified) == "toy@paper"
    report = layouts.identify_report(identified)
    assert "split_variant toy@paper" in report
    assert combined_fingerprint({r: i.fingerprint for r, i in identified.items()}) in report


def test_identify_gives_the_nearest_lists_with_their_overlaps(tmp_path, toy_registry):
    rows = {**KNOWN, "test": [("images/q0.jpg", [1, 0, 0]), ("images/other1.jpg", [0, 1, 0]),
                              ("images/new.jpg", [0, 1, 0]), ("images/new2.jpg", [0, 0, 1])]}
    identified = layouts.identify_folder(write_rows(tmp_path / "mixed", rows), toy_registry)
    query = identified["query"]
    assert not query.exact
    nearest = [(o.entry["id"], o.shared, o.share_of_list, round(o.share_of_entry, 3)) for o in query.nearest]
    assert nearest == [("toy@other/query", 2, 0.5, 0.667), ("toy@paper/query", 1, 0.25, 0.5)]
    assert fingerprints.split_variant(identified) == "database=toy@paper/database; train=toy@paper/train"
    text = layouts.describe_identification(query)
    assert "toy@other/query: 2 of 4 (50.0%; 66.7% of its 3)" in text


def test_a_query_subset_reads_as_a_subset_of_its_list(toy_registry):
    ident = identify_list(["q0.jpg"], toy_registry)
    assert {e["id"] for e in ident.contained_in} == {"toy@paper/query", "toy@other/query"}
    assert fingerprints.split_variant({"query": ident}) == "query=subset of toy@other/query|toy@paper/query"


def test_a_sampled_sketch_estimates_the_overlap_of_large_lists():
    names = [f"img{i}.jpg" for i in range(60_000)]
    theirs, sampled = stored_sketch(name_sketch(names))
    assert sampled and len(theirs) == fingerprints.BOTTOM_K
    mine = name_sketch(names[:20_000] + [f"new{i}.jpg" for i in range(10_000)])
    assert shared_names(mine, theirs, 60_000) == pytest.approx(20_000, rel=0.05)
    assert shared_names(mine, name_sketch(names)) == 20_000


def test_the_shipped_registry_holds_the_papers_lists_and_their_overlaps():
    registry = load_registry()
    by_id = {e["id"]: e for e in registry.entries}
    for entry_id, size, labels in (("nuswide@prosgan/query", 2_100, 21), ("nuswide@deephash/query", 2_100, 21),
                                   ("mscoco@deephash/query", 5_000, 80), ("mscoco@hashnet/query", 5_000, 80),
                                   ("imagenet100@dhta/query", 5_000, 100), ("imagenet100@hashnet/train", 13_000, 100),
                                   ("flickr25k@prosgan/database", 23_300, 38)):
        assert (by_id[entry_id]["size"], by_id[entry_id]["label_columns"]) == (size, labels), entry_id
        assert by_id[entry_id]["repo"] and len(by_id[entry_id]["commit"]) == 40 and by_id[entry_id]["paths"]
    assert by_id["nuswide@prosgan/database"]["status"] == "absent" and "git blob" in \
        by_id["nuswide@prosgan/database"]["reason"]

    def shared(a, b):
        return shared_names(registry.sketches[a], registry.sketches[b])

    assert shared("nuswide@prosgan/query", "nuswide@deephash/query") == 51
    assert shared("mscoco@deephash/query", "mscoco@hashnet/query") == 194
    assert len(set(by_id["imagenet100@dhta/train"]["imagenet_classes"])
               & set(by_id["imagenet100@hashnet/train"]["imagenet_classes"])) == 7
    assert by_id["mscoco@prosgan/query"]["sha256"] == by_id["mscoco@hashnet/query"]["sha256"]


# ---- the plugin, the command and the rows -------------------------------------------------------------------------

def test_the_folder_plugin_loads_a_folder_and_logs_its_card(tmp_path, registry, caplog):
    image_folder(tmp_path / "root" / "pets")
    plugin = registry.get("datasets", "folder")
    with caplog.at_level(logging.INFO, logger="hashbench"):
        splits = plugin.configure({"path": "pets"}).splits(tmp_path / "root")  # relative: under the data root
    assert isinstance(splits.query, FileImages) and splits.sizes() == {"n_query": 3, "n_database": 12, "n_train": 12}
    assert splits.num_classes == 3 and splits.notes["layout"] == "image folder"
    assert splits.image_shape() == (3, 224, 224)
    assert "layout: image folder" in caplog.text and "relevance base rate" in caplog.text
    with pytest.raises(ValueError, match="datasets.folder.path is not set"):
        plugin.configure({}).splits()


def test_splits_card_and_identify_print_and_refuse(tmp_path, capsys):
    folder = write_rows(tmp_path / "toy", KNOWN)
    assert main(["splits", "card", str(folder)]) == 0
    assert "layout: lists" in capsys.readouterr().out
    assert main(["splits", "identify", str(folder)]) == 0
    assert "split_fingerprint" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert main(["splits", "identify", str(tmp_path / "empty")]) == 2
    assert "Accepted layouts" in capsys.readouterr().err


def test_rows_carry_the_split_fingerprint_and_variant(tmp_path, registry, toy_registry, monkeypatch):
    monkeypatch.setattr(fingerprints, "load_registry", lambda path=None: toy_registry)
    folder = write_rows(tmp_path / "toy", KNOWN)
    cells = expand({"block": [{"dataset": "folder", "hashing": "dpsh", "bits": 16, "attack": "none"}]}, registry,
                   None, parse_settings([f"datasets.folder.path={folder}"]))
    plan = Planner(registry).plan(cells[0])
    row = base_row(plan, registry, 0, 0.0)
    lists = layouts.read_folder(folder).lists
    assert row["split_fingerprint"] == combined_fingerprint({r: list_fingerprint(s.paths) for r, s in lists.items()})
    assert row["split_variant"] == "toy@paper"
    images = TensorImages(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), one_hot([0, 1, 0, 1], 2))
    in_memory = Splits(images, images, images, None, 2)
    assert split_identity(in_memory) == {"split_fingerprint": in_memory.fingerprint(), "split_variant": ""}


def test_a_folder_with_only_some_lists_is_identified_as_far_as_it_goes(tmp_path, toy_registry):
    folder = write_rows(tmp_path / "partial", {"test": KNOWN["test"], "train": KNOWN["train"]}, pairs=True)
    identified = layouts.identify_folder(folder, toy_registry)
    assert {role: i.matches() for role, i in identified.items()} == {"query": "toy@paper/query",
                                                                     "train": "toy@paper/train"}
    assert fingerprints.split_variant(identified) == "query=toy@paper/query; train=toy@paper/train"


def test_a_split_folder_without_class_folders_is_refused(tmp_path):
    image_folder(tmp_path / "set" / "query")
    image_folder(tmp_path / "set" / "database")
    write_image(tmp_path / "set" / "train" / "loose.png")
    with pytest.raises(ValueError, match="train/ holds images but no class folder"):
        layouts.read_folder(tmp_path / "set")


def test_an_overlap_that_prefix_collisions_explain_is_not_reported():
    theirs = [f"theirs{i}.jpg" for i in range(20_000)]
    registry = read_registry({"lists": [entry("big@paper/database", "database", theirs)]})
    mine = [f"mine{i}.jpg" for i in range(20_000)]
    assert identify_list(mine[1:] + theirs[:1], registry).nearest == ()  # 1 shared: a 9% chance of collisions
    nearest = identify_list(mine[20:] + theirs[:20], registry).nearest
    assert [(o.entry["id"], o.shared) for o in nearest] == [("big@paper/database", 20)]
