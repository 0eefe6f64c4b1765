"""Line charts as inline SVG markup (no plotting library: the pages must stay small and offline).

``line_chart`` returns SVG text in which every string is escaped; the legend is HTML drawn by the
template from the same series (``style`` gives each series its colour and dash pattern).
"""
from __future__ import annotations

import itertools
import math
from html import escape

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#7f7f7f", "#bcbd22"]
DASHES = ["", "6 3", "2 2", "8 3 2 3"]
W, H = 440, 270
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 10, 40


def style(i: int) -> dict:
    """Colour and dash pattern of the i-th series (10 colours, then dashed repeats)."""
    return {"color": PALETTE[i % len(PALETTE)], "dash": DASHES[(i // len(PALETTE)) % len(DASHES)]}


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def fmt_tick(v: float) -> str:
    return f"{v:g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.0e}"


def y_grid_and_axis_labels(py, y0: float, y1: float, xlabel: str, ylabel: str) -> list[str]:
    """The horizontal grid lines with their tick labels, and both axis titles (``py``: value -> pixel row)."""
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM
    out = [f'<line x1="{LEFT}" x2="{LEFT + pw}" y1="{py(t):.1f}" y2="{py(t):.1f}" class="grid"/>'
           f'<text x="{LEFT - 4}" y="{py(t) + 4:.1f}" text-anchor="end">{escape(fmt_tick(t))}</text>'
           for t in nice_ticks(y0, y1)]
    out.append(f'<text x="{LEFT + pw / 2}" y="{H - 6}" text-anchor="middle" class="axis">{escape(xlabel)}</text>'
               f'<text transform="translate(12 {TOP + ph / 2}) rotate(-90)" text-anchor="middle" '
               f'class="axis">{escape(ylabel)}</text>')
    return out


def line_chart(series: list[dict], xlabel: str, ylabel: str, ylim: tuple[float, float] | None = (0.0, 1.0),
               xlog: bool | None = None, xmin: float | None = None, xfmt=fmt_tick) -> str:
    """SVG for ``series``: dicts with ``label``, ``points`` [(x, y)], ``color``, ``dash``; ``hline`` = y only.

    ``xlog=None`` picks a log x axis when the positive x values span more than a factor of 20; ``xmin``
    extends a linear x axis down to that value (e.g. 0 for epsilon).
    """
    xs = [x for s in series for x, _ in s.get("points", [])]
    ys = [y for s in series for _, y in s.get("points", [])] + [s["hline"] for s in series if "hline" in s]
    if not xs:
        return ""
    if xlog is None:
        pos = [x for x in xs if x > 0]
        xlog = len(pos) == len(xs) and max(pos) / min(pos) > 20
    tx = (lambda v: math.log10(v)) if xlog else (lambda v: v)
    x0, x1 = tx(min(xs)), tx(max(xs))
    if xmin is not None and not xlog:
        x0 = min(x0, xmin)
    if x1 == x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    y0, y1 = ylim if ylim else (min(ys), max(ys))
    y0, y1 = min(y0, min(ys, default=y0)), max(y1, max(ys, default=y1))
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def px(v):
        return LEFT + (tx(v) - x0) / (x1 - x0) * pw

    def py(v):
        return TOP + (1 - (v - y0) / (y1 - y0)) * ph

    out = [f'<svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
           f'role="img" aria-label="{escape(ylabel)} against {escape(xlabel)}" class="chart">',
           f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" class="plot"/>']
    if xlog:
        xticks = [10.0 ** e for e in range(math.floor(x0), math.ceil(x1) + 1) if x0 - 1e-9 <= e <= x1 + 1e-9]
        xticks = xticks or [min(xs), max(xs)]
    else:
        xticks = nice_ticks(x0, x1)
    for t in xticks:
        out.append(f'<line x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{TOP}" y2="{TOP + ph}" class="grid"/>'
                   f'<text x="{px(t):.1f}" y="{TOP + ph + 14}" text-anchor="middle">{escape(xfmt(t))}</text>')
    out += y_grid_and_axis_labels(py, y0, y1, xlabel, ylabel)
    for s in series:
        dash = f' stroke-dasharray="{s["dash"]}"' if s.get("dash") else ""
        title = f"<title>{escape(s['label'])}</title>"
        if "hline" in s:
            y = py(s["hline"])
            out.append(f'<line x1="{LEFT}" x2="{LEFT + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="{s["color"]}" '
                       f'stroke-dasharray="4 3" class="series">{title}</line>')
            continue
        pts = sorted(s["points"])
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        out.append(f'<g stroke="{s["color"]}" fill="{s["color"]}">{title}'
                   f'<polyline points="{coords}" fill="none" class="series"{dash}/>')
        if len(pts) <= 30:
            out.extend(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.2"/>' for x, y in pts)
        out.append("</g>")
    out.append("</svg>")
    return "".join(out)


def scatter_chart(points: list[dict], xlabel: str, ylabel: str) -> str:
    """SVG scatter of ``points`` (dicts with ``label``, ``x`` > 0, ``y``, ``front``: on the Pareto front) on a
    log x axis; the front's points are filled and joined by a step line, the others hollow; each point is
    labelled (escaped)."""
    if not points:
        return ""
    xs, ys = [p["x"] for p in points], [p["y"] for p in points]
    x0, x1 = math.log10(min(xs)), math.log10(max(xs))
    if x1 - x0 < 1e-9:
        x0, x1 = x0 - 0.5, x1 + 0.5
    x0, x1 = x0 - 0.05 * (x1 - x0), x1 + 0.05 * (x1 - x0)
    y0, y1 = min(0.0, min(ys)), max(ys)
    if y1 - y0 < 1e-9:
        y1 = y0 + 0.1
    y1 += 0.08 * (y1 - y0)
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def px(v):
        return LEFT + (math.log10(v) - x0) / (x1 - x0) * pw

    def py(v):
        return TOP + (1 - (v - y0) / (y1 - y0)) * ph

    out = [(f'<svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
            f'aria-label="{escape(ylabel)} against {escape(xlabel)}" class="chart scatter">'),
           f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" class="plot"/>']
    for e in range(math.floor(x0), math.ceil(x1) + 1):
        if x0 <= e <= x1:
            x = px(10.0 ** e)
            out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{TOP + ph}" class="grid"/>'
                       f'<text x="{x:.1f}" y="{TOP + ph + 14}" text-anchor="middle">{escape(fmt_tick(10.0 ** e))}</text>')
    out += y_grid_and_axis_labels(py, y0, y1, xlabel, ylabel)
    front = sorted((p for p in points if p["front"]), key=lambda p: p["x"])
    if len(front) > 1:
        steps = [f"{px(front[0]['x']):.1f},{py(front[0]['y']):.1f}"]
        for a, b in itertools.pairwise(front):
            steps += [f"{px(b['x']):.1f},{py(a['y']):.1f}", f"{px(b['x']):.1f},{py(b['y']):.1f}"]
        out.append(f'<polyline points="{" ".join(steps)}" fill="none" stroke="#d62728" class="series front"/>')
    labels = [p["label"][:28] for p in points]
    places = place_labels([(px(p["x"]), py(p["y"])) for p in points], labels, (LEFT, TOP, LEFT + pw, TOP + ph))
    for p, label, (lx, ly, anchor) in zip(points, labels, places):
        colour = "#d62728" if p["front"] else "#1f77b4"
        fill = colour if p["front"] else "white"
        out.append(f'<g class="{"front" if p["front"] else "dominated"}"><title>{escape(p["label"])}: '
                   f'{p["y"]:.4f} at {p["x"]:.3g} s{" (Pareto front)" if p["front"] else ""}</title>'
                   f'<circle cx="{px(p["x"]):.1f}" cy="{py(p["y"]):.1f}" r="4" stroke="{colour}" fill="{fill}"/>'
                   f'<text x="{lx:.1f}" y="{ly:.1f}" text-anchor="{anchor}" class="pointlabel">'
                   f'{escape(label)}</text></g>')
    out.append("</svg>")
    return "".join(out)


LABEL_CHAR_WIDTH, LABEL_HEIGHT = 5.6, 11.0  # a point label's box at the scatter's 10 px font (an estimate)


def label_box(x: float, y: float, anchor: str, text: str) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of a label whose baseline starts (anchor "start") or ends ("end") at x, y."""
    width = LABEL_CHAR_WIDTH * len(text)
    left = x if anchor == "start" else x - width
    return left, y - LABEL_HEIGHT + 2, left + width, y + 2


def boxes_overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_labels(anchors: list[tuple[float, float]], texts: list[str],
                 plot: tuple[float, float, float, float]) -> list[tuple[float, float, str]]:
    """Where each point's label goes, (x, y, text-anchor): the first of above-right, below-right, above-left,
    below-left, then further up or down, whose box overlaps no label placed before it and no point, and stays
    inside ``plot``'s width; the nearest spot when none is free (points placed top to bottom)."""
    placed: list[tuple[float, float, float, float]] = []
    dots = [(x - 4, y - 4, x + 4, y + 4) for x, y in anchors]
    out: list[tuple[float, float, str] | None] = [None] * len(anchors)
    for i in sorted(range(len(anchors)), key=lambda i: (anchors[i][1], anchors[i][0])):
        x, y = anchors[i]
        candidates = [(x + dx, y + dy, anchor) for lift in (0, 1, 2, 3)
                      for dx, anchor in ((6, "start"), (-6, "end"))
                      for dy in (-5 - lift * LABEL_HEIGHT, 13 + lift * LABEL_HEIGHT)]
        boxes = {c: label_box(*c, texts[i]) for c in candidates}
        inside = [c for c in candidates if plot[0] <= boxes[c][0] and boxes[c][2] <= plot[2]]
        free = [c for c in inside or candidates if not any(boxes_overlap(boxes[c], other) for other in placed + dots)]
        choice = (free or inside or candidates)[0]
        placed.append(boxes[choice])
        out[i] = choice
    return out


def loss_curves(info: dict) -> dict[str, list[tuple[float, float]]]:
    """The curves in a training record: a list of numbers (one per epoch), or a list of dicts with an
    ``iteration`` or ``epoch`` field and one number per loss term; {name: [(x, y), ...]}."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for name, value in (info or {}).items():
        if not isinstance(value, list) or len(value) < 2:
            continue
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            curves[name] = [(float(i + 1), float(v)) for i, v in enumerate(value)]
        elif all(isinstance(v, dict) for v in value):
            for i, entry in enumerate(value):
                x = float(entry.get("iteration", entry.get("epoch", i + 1)))
                for term, y in entry.items():
                    if term not in ("iteration", "epoch") and isinstance(y, (int, float)) and not isinstance(y, bool):
                        curves.setdefault(f"{name}: {term}", []).append((x, float(y)))
    return {name: points for name, points in curves.items() if all(math.isfinite(y) for _, y in points)}
