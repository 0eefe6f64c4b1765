"""Gallery records: the picture every paper of this field prints (HAG Fig. 5, ProS-GAN Fig. 3).

For a few seeded queries of a cell: the clean query, the perturbation, the adversarial query, and the top
database items retrieved for each, with which of them are relevant (share a label with the query) and, for a
targeted attack, which carry the target label. The harness builds one record per cell with
``gallery_record`` and caches it as ``.cache/gallery/<cell_key>.pt``; the leaderboard reads it with
``load_record`` and writes small PNG strips with ``write_pngs`` (offline, Pillow).

Images are stored as uint8 (retrieved items shrunk to at most ``max_side`` pixels), the perturbation as
float16 at full size, so a record stays small (about 1 MB for four 224-pixel RGB queries).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from benchmark.attack.stage import GALLERY_QUERIES, gallery_queries  # noqa: F401 - the queries shown

RECORD_VERSION = 1
GALLERY_TOP = 6         # retrieved items shown per query (HAG Fig. 5 shows 6)
MAX_SIDE = 112          # retrieved items are shrunk to at most this many pixels a side
MAGNIFY = 10            # the perturbation is shown magnified (HAG Fig. 1 and 5: x10)
RELEVANT, IRRELEVANT, TARGET = (26, 127, 55), (180, 35, 24), (11, 92, 173)


def _as_uint8(images: torch.Tensor) -> torch.Tensor:
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def _shrink(images: torch.Tensor, max_side: int) -> torch.Tensor:
    side = max(images.shape[-2:])
    if side <= max_side:
        return images
    size = [max(1, round(s * max_side / side)) for s in images.shape[-2:]]
    return torch.nn.functional.interpolate(images.float(), size=size, mode="bilinear", antialias=True,
                                           align_corners=False)


def _load(database_images, index: torch.Tensor) -> torch.Tensor:
    """Images at ``index`` from an ImageSet (anything with ``load``) or a (N, C, H, W) tensor."""
    flat = index.reshape(-1).cpu()
    if hasattr(database_images, "load"):
        images = database_images.load(flat)
    elif isinstance(database_images, torch.Tensor):
        images = database_images[flat]
    else:
        raise TypeError(f"database_images must be an ImageSet or a tensor; got {type(database_images).__name__}")
    return images.reshape(*index.shape, *images.shape[1:])


def _shares_label(labels: torch.Tensor, database_labels: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """(G, T) bool: retrieved item shares at least one label with the row's label vector."""
    items = database_labels.cpu().float()[top.reshape(-1).cpu()].reshape(*top.shape, -1)
    return (items * labels.cpu().float()[:, None, :]).sum(-1) > 0


def gallery_record(clean_images: torch.Tensor, adversarial_images: torch.Tensor, query_labels: torch.Tensor,
                   clean_top: torch.Tensor, adversarial_top: torch.Tensor, database_images,
                   database_labels: torch.Tensor, *, query_index: torch.Tensor | None = None,
                   target_labels: torch.Tensor | None = None, epsilon: float = math.nan,
                   max_side: int = MAX_SIDE) -> dict:
    """What the gallery needs for one cell.

    ``clean_images``/``adversarial_images``: (G, C, H, W) in [0, 1], the shown queries before and after the
    attack (after the harness's projection); ``query_labels``: (G, L) multi-hot; ``clean_top``/``adversarial_top``:
    (G, T) database indices in rank order (``benchmark.search.rank`` of the clean and the adversarial codes);
    ``database_images``: the database ImageSet (or a tensor); ``target_labels``: (G, L) for a targeted attack.
    """
    if clean_images.shape != adversarial_images.shape or clean_images.dim() != 4:
        raise ValueError(f"clean and adversarial images must both be (G, C, H, W); got {tuple(clean_images.shape)} "
                         f"and {tuple(adversarial_images.shape)}")
    g = len(clean_images)
    for name, value in (("query_labels", query_labels), ("clean_top", clean_top), ("adversarial_top", adversarial_top)):
        if len(value) != g:
            raise ValueError(f"{name} has {len(value)} rows for {g} queries")
    if target_labels is not None and len(target_labels) != g:
        raise ValueError(f"target_labels has {len(target_labels)} rows for {g} queries")
    clean_top, adversarial_top = clean_top.long().cpu(), adversarial_top.long().cpu()
    record = {
        "version": RECORD_VERSION,
        "query_index": (torch.arange(g) if query_index is None else torch.as_tensor(query_index)).long().cpu(),
        "clean": _as_uint8(clean_images),
        "adversarial": _as_uint8(adversarial_images),
        "perturbation": (adversarial_images.detach().float() - clean_images.detach().float()).half().cpu(),
        "labels": query_labels.detach().cpu() > 0,
        "target_labels": None if target_labels is None else target_labels.detach().cpu() > 0,
        "clean_top": clean_top,
        "adversarial_top": adversarial_top,
        "clean_top_images": _as_uint8(_shrink_grid(_load(database_images, clean_top), max_side)),
        "adversarial_top_images": _as_uint8(_shrink_grid(_load(database_images, adversarial_top), max_side)),
        "clean_relevant": _shares_label(query_labels, database_labels, clean_top),
        "adversarial_relevant": _shares_label(query_labels, database_labels, adversarial_top),
        "adversarial_target_relevant": (None if target_labels is None
                                        else _shares_label(target_labels, database_labels, adversarial_top)),
        "epsilon": float(epsilon),
    }
    return record


def _shrink_grid(images: torch.Tensor, max_side: int) -> torch.Tensor:
    g, t = images.shape[:2]
    small = _shrink(images.reshape(g * t, *images.shape[2:]).float(), max_side)
    return small.reshape(g, t, *small.shape[1:])


def save_record(path: str | Path, record: dict) -> None:
    """Write a record (the harness uses its stage cache instead: ``StageCache.save("gallery", cell_key, record)``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(record, path)


def load_record(path: str | Path) -> dict:
    """A record written by ``save_record`` or the stage cache; raises ValueError naming the file if unusable."""
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is named
        raise ValueError(f"gallery record {path} is unreadable: {type(exc).__name__}: {exc}") from exc
    if isinstance(record, dict) and record.get("stage") == "gallery":  # the stage cache's envelope
        record = record.get("value")
    if not isinstance(record, dict) or record.get("version") != RECORD_VERSION:
        raise ValueError(f"gallery record {path} is not a version-{RECORD_VERSION} gallery record")
    return record


# ---------------------------------------------------------------- PNG strips (Pillow)

def _image(pixels: torch.Tensor, scale: int):
    """A (C, H, W) uint8 tensor as a PIL image, enlarged ``scale`` times (nearest: pixels stay visible)."""
    from PIL import Image

    array = pixels.permute(1, 2, 0).numpy()
    image = Image.fromarray(array[:, :, 0], "L") if array.shape[2] == 1 else Image.fromarray(array[:, :, :3], "RGB")
    image = image.convert("RGB")
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST) if scale > 1 else image


def _scale_for(side: int, at_least: int) -> int:
    return max(1, math.ceil(at_least / max(side, 1)))


def _strip(images: list, gap: int = 6, border: list | None = None, tags: list | None = None, width: int = 3):
    from PIL import Image, ImageDraw

    pad = width if border else 0
    tiles = []
    for i, image in enumerate(images):
        tile = Image.new("RGB", (image.width + 2 * pad, image.height + 2 * pad), "white")
        if border:
            tile.paste(border[i], (0, 0, tile.width, tile.height))
        tile.paste(image, (pad, pad))
        if tags and tags[i]:
            ImageDraw.Draw(tile).rectangle((tile.width - 12, 0, tile.width - 1, 11), fill=TARGET)
        tiles.append(tile)
    out = Image.new("RGB", (sum(t.width for t in tiles) + gap * (len(tiles) - 1), max(t.height for t in tiles)),
                    "white")
    x = 0
    for tile in tiles:
        out.paste(tile, (x, 0))
        x += tile.width + gap
    return out


def perturbation_pixels(perturbation: torch.Tensor, magnify: int = MAGNIFY) -> torch.Tensor:
    """The perturbation magnified around mid-grey, as uint8 (C, H, W)."""
    return _as_uint8(0.5 + magnify * perturbation.float())


def write_pngs(record: dict, folder: str | Path, prefix: str, magnify: int = MAGNIFY,
               query_px: int = 96, item_px: int = 64) -> list[dict]:
    """Three PNG strips per shown query (query | perturbation | adversarial; clean top-T; adversarial top-T).

    Returns one dict per query: the file names (relative to ``folder``) and the relevance counts. Borders:
    green = shares a label with the query, red = does not; a blue corner = carries the target label.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    targeted = record.get("adversarial_target_relevant") is not None
    for g in range(len(record["clean"])):
        clean, adversarial = record["clean"][g], record["adversarial"][g]
        scale = _scale_for(max(clean.shape[-2:]), query_px)
        trio = [_image(clean, scale), _image(perturbation_pixels(record["perturbation"][g], magnify), scale),
                _image(adversarial, scale)]
        names = {"query": f"{prefix}-{g}-query.png", "clean_top": f"{prefix}-{g}-clean.png",
                 "adversarial_top": f"{prefix}-{g}-adversarial.png"}
        _strip(trio).save(folder / names["query"], optimize=True)
        for kind, images, relevant, tags in (
                ("clean_top", record["clean_top_images"][g], record["clean_relevant"][g], None),
                ("adversarial_top", record["adversarial_top_images"][g], record["adversarial_relevant"][g],
                 record["adversarial_target_relevant"][g] if targeted else None)):
            item_scale = _scale_for(max(images.shape[-2:]), item_px)
            tiles = [_image(image, item_scale) for image in images]
            borders = [RELEVANT if bool(r) else IRRELEVANT for r in relevant]
            _strip(tiles, gap=4, border=borders, tags=None if tags is None else [bool(t) for t in tags]).save(
                folder / names[kind], optimize=True)
        out.append({**names, "query_index": int(record["query_index"][g]),
                    "clean_relevant": int(record["clean_relevant"][g].sum()),
                    "adversarial_relevant": int(record["adversarial_relevant"][g].sum()),
                    "adversarial_target": (int(record["adversarial_target_relevant"][g].sum()) if targeted else None),
                    "top": int(record["clean_top"].shape[1])})
    return out
