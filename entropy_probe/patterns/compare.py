"""Compare a profile with a family of well-trained references (DESIGN.md 2.6).

The family band at relative depth t comes from the family's layers near t (within
``window`` in depth), each reference weighted equally: the band runs from the ``lower`` to the
``upper`` weighted quantile of their values, its centre is the weighted median. A layer's
deviation is its distance from the centre in half-band widths (the half on its own side), so
|deviation| ≤ 1 is inside the band. The agreement score is the mean layer credit, in [0, 1]: 1
inside the band; beyond it on the side of the random-init value (where untrained and
under-trained layers sit) it falls linearly to 0 one half band width further; beyond it on the
other side (more structure than the references) the layer is flagged out of band but keeps its
credit: that is not what an untrained layer looks like.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from entropy_probe.entropy.profile import Profile
from entropy_probe.errors import EntropyProbeError
from entropy_probe.patterns.pattern import (
    DEFAULT_QUANTITY,
    DepthCurve,
    LayerGroup,
    Quantity,
    ReferencePattern,
    layer_group,
    pattern_points,
    random_baseline,
)
from entropy_probe.patterns.reference import Points, Reference

__all__ = [
    "COMPARISON_SCHEMA",
    "BandPoint",
    "Comparison",
    "FamilyBand",
    "LayerDeviation",
    "compare_profile",
    "family_band",
]

COMPARISON_SCHEMA = "entropy_probe.comparison/1"
GRID = tuple(i / 20 for i in range(21))
WINDOW = 0.125  # half width of the depth window a band point pools layers from
LOWER, UPPER = 0.25, 0.75  # band quantiles
MIN_HALF_WIDTH = 0.05  # a band is never thinner than this on either side (nats per dim)


@dataclass(frozen=True)
class BandPoint:
    depth: float
    lower: float
    center: float
    upper: float


@dataclass(frozen=True)
class FamilyBand:
    """A family's band over depth for one quantity, per layer group."""

    family: str
    quantity: Quantity
    members: tuple[str, ...]
    points: dict[LayerGroup, tuple[BandPoint, ...]]

    @functools.cached_property
    def _curves(self) -> dict[LayerGroup, tuple[DepthCurve, DepthCurve, DepthCurve]]:
        """(lower, centre, upper) curves per group, built once."""
        out = {}
        for group, band in self.points.items():
            if band:
                depths = tuple(p.depth for p in band)
                out[group] = (
                    DepthCurve(depths, tuple(p.lower for p in band)),
                    DepthCurve(depths, tuple(p.center for p in band)),
                    DepthCurve(depths, tuple(p.upper for p in band)),
                )
        return out

    def at(self, group: LayerGroup, depth: float) -> BandPoint | None:
        curves = self._curves.get(group)
        if curves is None:
            return None
        lower, center, upper = curves
        return BandPoint(depth, lower.at(depth), center.at(depth), upper.at(depth))

    def pattern(self) -> ReferencePattern:
        """The band's centre line: what the fine-tuning losses pull toward."""
        curves = {g: center for g, (_, center, _) in self._curves.items()}
        return ReferencePattern(self.quantity, curves, f"family {self.family}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "quantity": str(self.quantity),
            "members": list(self.members),
            "points": {
                str(g): [[p.depth, p.lower, p.center, p.upper] for p in pts]
                for g, pts in self.points.items()
            },
        }


def _weighted_quantile(values: Sequence[float], weights: Sequence[float], q: float) -> float:
    """Quantile of a weighted sample by the midpoint rule (linear between sorted points)."""
    pairs = sorted(zip(values, weights, strict=True))
    total = math.fsum(w for _, w in pairs)
    cumulative, positions = 0.0, []
    for _, w in pairs:
        positions.append((cumulative + w / 2) / total)
        cumulative += w
    if q <= positions[0]:
        return pairs[0][0]
    if q >= positions[-1]:
        return pairs[-1][0]
    for i in range(1, len(pairs)):
        if q <= positions[i]:
            p0, p1 = positions[i - 1], positions[i]
            v0, v1 = pairs[i - 1][0], pairs[i][0]
            return v0 + (v1 - v0) * (q - p0) / (p1 - p0) if p1 > p0 else v1
    return pairs[-1][0]


def _local_values(points: Points, t: float, window: float) -> list[float]:
    """A reference's layer values within ``window`` of depth ``t`` (its nearest layers when
    none is that close)."""
    near = [v for d, v in points if abs(d - t) <= window]
    if near:
        return near
    gap = min(abs(d - t) for d, _ in points)
    return [v for d, v in points if abs(d - t) - gap <= 1e-9]


def family_band(
    family: str,
    references: Sequence[Reference],
    quantity: Quantity | str = DEFAULT_QUANTITY,
    *,
    window: float = WINDOW,
) -> FamilyBand:
    """Build the band of ``references`` (all of one family) for ``quantity``.

    At each grid depth the layers of every reference within ``window`` of it (its nearest
    layers when none is that close) are pooled, each reference's layers sharing one unit of
    weight, so every network counts once whatever its layer count; the band runs between the
    ``LOWER`` and ``UPPER`` weighted quantiles, its centre is the weighted median.
    """
    quantity = Quantity(quantity)
    if not references:
        raise EntropyProbeError(f"reference family {family!r} has no members to build a band")
    points: dict[LayerGroup, tuple[BandPoint, ...]] = {}
    for group in LayerGroup:
        per_ref = [r.points.get(quantity, {}).get(group, ()) for r in references]
        per_ref = [p for p in per_ref if p]
        if not per_ref:
            continue
        band = []
        for t in GRID:
            values: list[float] = []
            weights: list[float] = []
            for pts in per_ref:
                near = _local_values(pts, t, window)
                values += near
                weights += [1.0 / len(near)] * len(near)
            center = _weighted_quantile(values, weights, 0.5)
            lower = min(_weighted_quantile(values, weights, LOWER), center - MIN_HALF_WIDTH)
            upper = max(_weighted_quantile(values, weights, UPPER), center + MIN_HALF_WIDTH)
            band.append(BandPoint(t, lower, center, upper))
        points[group] = tuple(band)
    if not points:
        raise EntropyProbeError(f"reference family {family!r} has no {quantity} values")
    return FamilyBand(family, quantity, tuple(r.name for r in references), points)


@dataclass(frozen=True)
class LayerDeviation:
    name: str
    kind: str
    group: LayerGroup
    depth: float
    value: float
    lower: float
    center: float
    upper: float
    deviation: float  # in half-band widths, signed; |d| ≤ 1 inside the band
    in_band: bool
    toward_random: bool | None = None  # outside on the random-init side (None: no baseline)

    @property
    def credit(self) -> float:
        """1 inside the band and beyond it away from the random-init value (more structure
        than the references: flagged out of band, not penalised); on the random-init side,
        where untrained and under-trained layers sit, falling linearly to 0 one half band
        width beyond the band. With no random baseline (``delta_h_per_dim``) both sides are
        treated as the random side."""
        if self.toward_random is False:
            return 1.0
        return max(0.0, min(1.0, 2.0 - abs(self.deviation)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "group": str(self.group),
            "depth": round(self.depth, 6),
            "value": self.value,
            "band": [self.lower, self.center, self.upper],
            "deviation": self.deviation,
            "in_band": self.in_band,
            "toward_random": self.toward_random,
        }


@dataclass(frozen=True)
class Comparison:
    """A profile against one family band: per-layer deviations and one agreement score."""

    source: str
    reference: str  # the family
    quantity: Quantity
    score: float | None
    layers: tuple[LayerDeviation, ...]
    band: FamilyBand
    picked: str = ""  # how the family was chosen (for --reference auto)
    # analysed dense/conv layers not scored: no band for their group, or no finite value
    not_compared: tuple[str, ...] = ()

    @property
    def out_of_band(self) -> tuple[LayerDeviation, ...]:
        return tuple(layer for layer in self.layers if not layer.in_band)

    def verdict(self) -> str:
        """One sentence for people."""
        if self.score is None:
            return "no layer could be compared with the reference band"
        n, out = len(self.layers), len(self.out_of_band)
        return (
            f"agreement {self.score:.2f} with the {self.reference} family: {n - out} of {n} "
            f"compared layers inside the band of well-trained networks"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": COMPARISON_SCHEMA,
            "source": self.source,
            "reference": self.reference,
            "picked": self.picked,
            "quantity": str(self.quantity),
            "score": self.score,
            "verdict": self.verdict(),
            "members": list(self.band.members),
            "layers": [layer.to_dict() for layer in self.layers],
            "not_compared": list(self.not_compared),
            "band": self.band.to_dict(),
        }


def compare_profile(profile: Profile, band: FamilyBand, *, picked: str = "") -> Comparison:
    """Deviation of every analysed dense/conv layer from ``band``, and the agreement score."""
    layers = []
    missing = []
    for layer, group, value in pattern_points(profile, band.quantity):
        assert layer.depth is not None  # pattern_points keeps layers with a depth only
        point = band.at(group, layer.depth)
        if point is None:
            missing.append(layer.name)
            continue
        side = (
            (point.upper - point.center) if value >= point.center else (point.center - point.lower)
        )
        deviation = (value - point.center) / side
        baseline = random_baseline(layer, band.quantity)
        toward_random = (
            None if baseline is None else (value - point.center) * (baseline - point.center) > 0
        )
        layers.append(
            LayerDeviation(
                name=layer.name,
                kind=layer.kind,
                group=group,
                depth=layer.depth,
                value=value,
                lower=point.lower,
                center=point.center,
                upper=point.upper,
                deviation=deviation,
                in_band=point.lower <= value <= point.upper,
                toward_random=toward_random,
            )
        )
    # analysed dense/conv layers without a finite value (singular, e.g. a BatchNorm with γ = 0
    # folded in; or a single singular value, which has no shape) are listed, not scored
    compared = {x.name for x in layers} | set(missing)
    missing += [
        x.name
        for x in profile.analysed
        if layer_group(x.kind) is not None and x.depth is not None and x.name not in compared
    ]
    score = math.fsum(x.credit for x in layers) / len(layers) if layers else None
    return Comparison(
        source=profile.source,
        reference=band.family,
        quantity=band.quantity,
        score=score,
        layers=tuple(layers),
        band=band,
        picked=picked,
        not_compared=tuple(missing),
    )
