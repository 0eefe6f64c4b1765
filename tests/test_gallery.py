"""Gallery records (benchmark.gallery) and the gallery page: seeded queries, relevance marks, small PNG files."""
from __future__ import annotations

import re

import pytest
import torch
from PIL import Image
from result_rows import cell_rows, write_cells

from benchmark.data.images import TensorImages
from benchmark.scoring.gallery import (
    GALLERY_TOP,
    gallery_queries,
    gallery_record,
    load_record,
    perturbation_pixels,
    save_record,
    write_pngs,
)
from leaderboard.render import render

CLASSES = 4


def one_hot(classes: list[int]) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(classes), CLASSES).float()


@pytest.fixture(scope="module")
def database():
    generator = torch.Generator().manual_seed(0)
    images = (torch.rand(40, 1, 28, 28, generator=generator) * 255).to(torch.uint8)
    return TensorImages(images, one_hot([i % CLASSES for i in range(40)]))


def make_record(database, targeted: bool = True, channels: int = 1, side: int = 28) -> dict:
    clean = torch.rand(2, channels, side, side, generator=torch.Generator().manual_seed(1))
    adversarial = (clean + 8 / 255 * torch.sign(torch.randn(clean.shape, generator=torch.Generator().manual_seed(2)))
                   ).clamp(0, 1)
    labels = one_hot([0, 1])
    clean_top = torch.tensor([[0, 4, 8, 1, 12, 16], [1, 5, 9, 13, 2, 3]])  # query 0: 5 of 6 share class 0
    adversarial_top = torch.tensor([[2, 6, 10, 3, 7, 0], [3, 7, 11, 15, 19, 1]])  # query 0: item 0 relevant
    targets = one_hot([2, 3]) if targeted else None
    db = database if channels == 1 else torch.rand(40, channels, side, side)
    return gallery_record(clean, adversarial, labels, clean_top, adversarial_top, db, database.labels,
                          query_index=torch.tensor([3, 17]), target_labels=targets, epsilon=8 / 255)


def test_record_marks_relevance_and_stays_small(database, tmp_path):
    record = make_record(database)
    assert record["clean_relevant"][0].tolist() == [True, True, True, False, True, True]
    assert record["adversarial_relevant"][0].tolist() == [False, False, False, False, False, True]
    assert record["adversarial_target_relevant"][0].tolist() == [True, True, True, False, False, False]
    assert record["clean"].dtype == torch.uint8 and record["clean_top_images"].shape == (2, GALLERY_TOP, 1, 28, 28)
    assert torch.equal(record["clean_top_images"][0, 1], database.images[4])  # the retrieved item's pixels
    assert record["perturbation"].abs().max() <= 8 / 255 + 1e-3
    save_record(tmp_path / "r.pt", record)
    again = load_record(tmp_path / "r.pt")
    assert torch.equal(again["adversarial_top"], record["adversarial_top"]) and again["epsilon"] == 8 / 255
    big = make_record(database, channels=3, side=224)
    assert big["clean_top_images"].shape[-2:] == (112, 112)  # retrieved items are shrunk
    save_record(tmp_path / "big.pt", big)
    assert (tmp_path / "big.pt").stat().st_size < 2_500_000


def test_queries_are_seeded_and_inputs_checked(database):
    assert torch.equal(gallery_queries(1000, seed=0), gallery_queries(1000, seed=0))
    assert not torch.equal(gallery_queries(1000, seed=0), gallery_queries(1000, seed=1))
    assert len(gallery_queries(3, seed=0)) == 3
    with pytest.raises(ValueError, match="clean_top has 1 rows for 2 queries"):
        gallery_record(torch.rand(2, 1, 28, 28), torch.rand(2, 1, 28, 28), one_hot([0, 1]), torch.zeros(1, 6).long(),
                       torch.zeros(2, 6).long(), database, database.labels)
    with pytest.raises(ValueError, match="not a version-1 gallery record"):
        path = "/tmp/hashbench-not-a-record.pt"
        torch.save({"x": 1}, path)
        load_record(path)


def test_pngs_and_perturbation(database, tmp_path):
    record = make_record(database)
    queries = write_pngs(record, tmp_path, "cell")
    assert [q["query_index"] for q in queries] == [3, 17]
    assert queries[0]["clean_relevant"] == 5 and queries[0]["adversarial_relevant"] == 1
    assert queries[0]["adversarial_target"] == 3
    strip = Image.open(tmp_path / queries[0]["query"])
    assert strip.format == "PNG" and strip.width > 3 * 84 and strip.height >= 84  # three 28-px images, enlarged
    top = Image.open(tmp_path / queries[0]["adversarial_top"]).convert("RGB")
    assert top.getpixel((0, 0)) == (180, 35, 24)  # the first item is not relevant: red border
    clean_top = Image.open(tmp_path / queries[0]["clean_top"]).convert("RGB")
    assert clean_top.getpixel((0, 0)) == (26, 127, 55)  # relevant: green
    grey = perturbation_pixels(torch.zeros(1, 2, 2))
    assert int(grey.unique()) == 128  # no perturbation is mid-grey


def test_gallery_page_from_the_cache(database, tmp_path):
    key = "gallerycell"
    rows = cell_rows({"map": 0.2}, attack="dhta", attack_label="<b>dhta</b>", epsilon=8 / 255, targeted=True,
                     cell_key=key)
    rows += cell_rows({"map": 0.9}, cell_key="cleancell")
    results = write_cells(tmp_path, rows)
    save_record(tmp_path / "cache" / "gallery" / f"{key}.pt", make_record(database))
    (tmp_path / "cache" / "gallery" / "cleancell.pt").write_bytes(b"not a record")
    site = render(results, tmp_path / "site", cache_dir=tmp_path / "cache").parent
    html = (site / "gallery.html").read_text()
    assert "&lt;b&gt;dhta&lt;/b&gt;" in html and "<b>dhta</b>" not in html
    assert html.count("<figure class=\"query\">") == 2
    assert "clean query: 5/6 relevant" in html and "adversarial query: 1/6 relevant, 3/6 carry the target label" in html
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert len(sources) == 6
    for src in sources:
        assert Image.open(site / src).format == "PNG"
    assert "cleancell.pt is unreadable" in html  # a broken record is named, the rest renders
    empty = render(results, tmp_path / "site2", cache_dir=tmp_path / "nothing").parent
    assert "No gallery records yet" in (empty / "gallery.html").read_text()

