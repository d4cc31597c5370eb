"""Plot geometry for the report's inline SVG charts.

This module turns numbers into pixel positions, tick labels and path strings; it writes no
markup. The template ``_plot.html.j2`` turns a :class:`Plot` into ``<svg>`` with autoescape on,
so labels and tooltips (which carry untrusted layer names) are always escaped.

Non-finite values never break a plot: ``None`` is left out, ``±inf`` becomes a triangle on the
plot's bottom (or top) edge with its own tooltip, and a line is broken at it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "Datum",
    "Mark",
    "OffScale",
    "Plot",
    "SeriesGeom",
    "SeriesSpec",
    "Tick",
    "build_plot",
    "linear_ticks",
    "symlog",
]

Scale = Literal["linear", "symlog"]
Shape = Literal["circle", "square", "diamond", "none"]

WIDTH = 620
HEIGHT = 330
MARGIN_LEFT = 70
MARGIN_RIGHT = 18
MARGIN_TOP = 14
MARGIN_BOTTOM = 50
X_PAD = 0.025


@dataclass(frozen=True)
class Datum:
    """One value to plot. ``y=None`` is left out; ``y=±inf`` is drawn on the edge."""

    x: float
    y: float | None
    label: str
    ref: str = ""  # id of the table row this point stands for
    ring: bool = False  # drawn with a ring (e.g. out of the reference band)


@dataclass(frozen=True)
class SeriesSpec:
    name: str
    css: str  # CSS class that colours the series
    data: Sequence[Datum]
    line: bool = False
    shape: Shape = "circle"
    dashed: bool = False
    marks: bool = True  # False: only the line (e.g. a trend through another series' points)
    legend: bool = True


@dataclass(frozen=True)
class Tick:
    pos: float
    label: str


@dataclass(frozen=True)
class Mark:
    d: str  # SVG path of the marker
    cx: float
    cy: float
    title: str
    ref: str
    ring: bool


@dataclass(frozen=True)
class OffScale:
    d: str  # triangle on the plot edge
    title: str
    ref: str


@dataclass(frozen=True)
class SeriesGeom:
    name: str
    css: str
    path: str  # polyline through the finite points ('' for a scatter)
    marks: tuple[Mark, ...]
    dashed: bool
    shape: Shape


@dataclass(frozen=True)
class Plot:
    id: str
    title: str
    x_label: str
    y_label: str
    series: tuple[SeriesGeom, ...]
    offscale: tuple[OffScale, ...]
    x_ticks: tuple[Tick, ...]
    y_ticks: tuple[Tick, ...]
    zero_y: float | None
    caption: str = ""
    empty: str = ""  # message shown instead of data when nothing is finite
    width: int = WIDTH
    height: int = HEIGHT
    left: int = MARGIN_LEFT
    top: int = MARGIN_TOP
    right: int = WIDTH - MARGIN_RIGHT
    bottom: int = HEIGHT - MARGIN_BOTTOM
    legend: tuple[tuple[str, str, Shape, bool], ...] = field(default=())


def symlog(y: float, c: float = 1.0) -> float:
    """sign(y)·log10(1 + |y|/c): linear near 0, logarithmic beyond ``c``."""
    return math.copysign(math.log10(1.0 + abs(y) / c), y)


def _nice_step(span: float, target: int) -> float:
    raw = span / max(target, 1)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    for factor in (1.0, 2.0, 2.5, 5.0, 10.0):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10.0 * magnitude  # pragma: no cover - the loop always returns


def linear_ticks(lo: float, hi: float, target: int = 5) -> tuple[float, float, list[float]]:
    """A widened domain ``(lo', hi')`` with round tick values covering ``[lo, hi]``."""
    if hi - lo < 1e-12:
        pad = max(abs(lo) * 0.1, 0.5)
        lo, hi = lo - pad, hi + pad
    step = _nice_step(hi - lo, target)
    start = math.floor(lo / step + 1e-9) * step
    stop = math.ceil(hi / step - 1e-9) * step
    count = round((stop - start) / step)
    ticks = [start + i * step for i in range(count + 1)]
    return start, stop, [0.0 if abs(t) < step * 1e-9 else t for t in ticks]


def _tick_label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return _compact(value)
    text = f"{value:.6g}"
    return text.replace("-", "−")


_SUFFIXES = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def _compact(value: float) -> str:
    sign = "−" if value < 0 else ""
    size = abs(value)
    for base, suffix in _SUFFIXES:
        if size >= base:
            return f"{sign}{size / base:.3g}{suffix}"
    return f"{sign}{size:.2g}"


def _symlog_ticks(lo: float, hi: float) -> list[tuple[float, float]]:
    """(value, transformed) ticks at 0 and ±10^k inside the transformed domain [lo, hi]."""
    top = math.ceil(max(abs(lo), abs(hi)))
    # ±1 sits right next to 0 on a wide axis: label it only on narrow ones.
    decades = list(range(0 if top <= 2 else 1, top + 1))
    step = 1 if len(decades) <= 4 else 2 if len(decades) <= 8 else 3
    ticks = [(0.0, 0.0)] if lo <= 0 <= hi else []
    for k in decades[::-1][::step]:
        value = 10.0**k
        for signed in (value, -value):
            t = symlog(signed)
            if lo - 1e-3 <= t <= hi + 1e-3:
                ticks.append((signed, t))
    return sorted(ticks, key=lambda pair: pair[1])


def _shape_path(shape: Shape, x: float, y: float, r: float = 4.0) -> str:
    if shape == "square":
        s = r * 0.9
        return f"M{x - s:.1f} {y - s:.1f}h{2 * s:.1f}v{2 * s:.1f}h{-2 * s:.1f}z"
    if shape == "diamond":
        s = r * 1.25
        return f"M{x:.1f} {y - s:.1f}l{s:.1f} {s:.1f}l{-s:.1f} {s:.1f}l{-s:.1f} {-s:.1f}z"
    if shape == "none":
        r = 2.5
    arc = f"a{r:.1f} {r:.1f} 0 1 0"
    return f"M{x - r:.1f} {y:.1f}{arc} {2 * r:.1f} 0{arc} {-2 * r:.1f} 0z"


def _triangle(x: float, y: float, down: bool) -> str:
    tip = 7.0 if down else -7.0
    return f"M{x - 5:.1f} {y:.1f}l10 0l-5 {tip:.1f}z"


def build_plot(
    plot_id: str,
    title: str,
    series: Sequence[SeriesSpec],
    *,
    x_label: str,
    y_label: str,
    y_scale: Scale = "linear",
    x_domain: tuple[float, float] | None = None,
    x_integer: bool = False,
    caption: str = "",
    empty: str = "no finite values to plot",
) -> Plot:
    """Lay out ``series`` on shared axes; nothing here depends on where the data came from."""
    left, top = MARGIN_LEFT, MARGIN_TOP
    right, bottom = WIDTH - MARGIN_RIGHT, HEIGHT - MARGIN_BOTTOM

    def ty(value: float) -> float:
        return symlog(value) if y_scale == "symlog" else value

    finite = [d for s in series for d in s.data if d.y is not None and math.isfinite(d.y)]
    xs = [d.x for s in series for d in s.data if d.y is not None and math.isfinite(d.x)]
    if x_domain is not None:
        x_lo, x_hi = x_domain
    elif xs:
        x_lo, x_hi = min(xs), max(xs)
    else:
        x_lo, x_hi = 0.0, 1.0
    if x_hi - x_lo < 1e-12:
        x_lo, x_hi = x_lo - 0.5, x_hi + 0.5
    if x_integer:
        x_vals = [
            v for v in linear_ticks(x_lo, x_hi, 8)[2] if float(v).is_integer() and x_lo <= v <= x_hi
        ]
        x_lo, x_hi = x_lo - 0.5, x_hi + 0.5
    else:
        x_lo, x_hi, x_vals = linear_ticks(x_lo, x_hi, 5)
        pad = X_PAD * (x_hi - x_lo)  # keeps points at the ends off the frame
        x_lo, x_hi = x_lo - pad, x_hi + pad

    transformed = [ty(d.y) for d in finite if d.y is not None]
    if y_scale == "symlog":
        lo = min([*transformed, 0.0])
        hi = max([*transformed, 0.0])
        y_lo, y_hi = float(math.floor(lo)), float(math.ceil(hi))
        if y_hi - y_lo < 1:
            y_hi = y_lo + 1.0
        y_tick_pairs = _symlog_ticks(y_lo, y_hi)
    else:
        lo = min(transformed) if transformed else -1.0
        hi = max(transformed) if transformed else 1.0
        y_lo, y_hi, vals = linear_ticks(lo, hi, 5)
        y_tick_pairs = [(v, v) for v in vals]

    def px(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * (right - left)

    def py(t: float) -> float:
        return bottom - (t - y_lo) / (y_hi - y_lo) * (bottom - top)

    geoms: list[SeriesGeom] = []
    offscale: list[OffScale] = []
    for spec in series:
        marks: list[Mark] = []
        parts: list[str] = []
        pen_down = False
        for d in spec.data:
            if d.y is None or not math.isfinite(d.x):
                pen_down = False
                continue
            if not math.isfinite(d.y):
                down = d.y < 0
                if spec.marks:
                    edge = bottom - 1 if down else top + 1
                    offscale.append(OffScale(_triangle(px(d.x), edge, down), d.label, d.ref))
                pen_down = False
                continue
            x, y = px(d.x), py(ty(d.y))
            parts.append(f"{'L' if pen_down else 'M'}{x:.1f} {y:.1f}")
            pen_down = True
            if spec.marks:
                marks.append(Mark(_shape_path(spec.shape, x, y), x, y, d.label, d.ref, d.ring))
        path = "".join(parts) if spec.line and len(parts) > 1 else ""
        geoms.append(SeriesGeom(spec.name, spec.css, path, tuple(marks), spec.dashed, spec.shape))

    x_ticks = tuple(Tick(px(v), _tick_label(v)) for v in x_vals)
    y_ticks = tuple(Tick(py(t), _tick_label(v)) for v, t in y_tick_pairs)
    zero_y = py(0.0) if y_lo < 0 < y_hi else None
    legend = tuple((s.name, s.css, s.shape, s.dashed) for s in series if s.data and s.legend)
    return Plot(
        id=plot_id,
        title=title,
        x_label=x_label,
        y_label=y_label + (" (symlog)" if y_scale == "symlog" else ""),
        series=tuple(geoms),
        offscale=tuple(offscale),
        x_ticks=x_ticks,
        y_ticks=y_ticks,
        zero_y=zero_y,
        caption=caption,
        empty="" if finite or offscale else empty,
        legend=legend,
    )
