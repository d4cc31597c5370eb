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
    RELATIVE_EXCESS_FLOOR,
    DepthCurve,
    LayerGroup,
    Quantity,
    ReferencePattern,
    layer_group,
    pattern_points,
    random_baseline,
    undefined_for,
    ungrouped_layers,
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
    # (member, how many of its layers) left out because the quantity is not defined there
    # (relative_excess where |E[s]| < RELATIVE_EXCESS_FLOOR)
    left_out: tuple[tuple[str, int], ...] = ()

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
            "left_out": dict(self.left_out),
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


def _local_layers(points: Points, t: float, window: float) -> list[int]:
    """Which of a reference's layers are within ``window`` of depth ``t`` (its nearest layers
    when none is that close), as indices into ``points``."""
    near = [i for i, (d, _) in enumerate(points) if abs(d - t) <= window]
    if near:
        return near
    gap = min(abs(d - t) for d, _ in points)
    return [i for i, (d, _) in enumerate(points) if abs(d - t) - gap <= 1e-9]


def _min_half_width(
    quantity: Quantity, baselines: Sequence[float | None], weights: Sequence[float]
) -> float:
    """The band's least half width: ``MIN_HALF_WIDTH`` nats per dimension of shape excess.
    relative_excess is shape_excess / |E[s]|, so there it is MIN_HALF_WIDTH / |E[s]|, with
    the weighted median |E[s]| of the pooled layers (a 784→48 layer, |E[s]| = 0.016: ±3.1;
    a square one, |E[s]| ≈ 0.5: ±0.1)."""
    known = [(b, w) for b, w in zip(baselines, weights, strict=True) if b is not None]
    if quantity is not Quantity.RELATIVE_EXCESS or not known:
        return MIN_HALF_WIDTH
    typical = _weighted_quantile([abs(b) for b, _ in known], [w for _, w in known], 0.5)
    return MIN_HALF_WIDTH / typical


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
    ``LOWER`` and ``UPPER`` weighted quantiles, its centre is the weighted median. Layers
    where the quantity is not defined are left out (``Reference.comparable_points``) and
    counted in ``FamilyBand.left_out``.
    """
    quantity = Quantity(quantity)
    if not references:
        raise EntropyProbeError(f"reference family {family!r} has no members to build a band")
    usable = [r.comparable_points(quantity) for r in references]
    left_out = []
    for ref, kept in zip(references, usable, strict=True):
        stored = sum(len(p) for p in ref.points.get(quantity, {}).values())
        if stored > sum(len(p) for p in kept.values()):
            left_out.append((ref.name, stored - sum(len(p) for p in kept.values())))
    points: dict[LayerGroup, tuple[BandPoint, ...]] = {}
    for group in LayerGroup:
        per_ref = [
            (
                kept[group],
                ref.relative_baselines(group)
                if quantity is Quantity.RELATIVE_EXCESS
                else (None,) * len(kept[group]),
            )
            for ref, kept in zip(references, usable, strict=True)
            if kept.get(group)
        ]
        if not per_ref:
            continue
        band = []
        for t in GRID:
            values: list[float] = []
            baselines: list[float | None] = []
            weights: list[float] = []
            for pts, bases in per_ref:
                near = _local_layers(pts, t, window)
                values += [pts[i][1] for i in near]
                baselines += [bases[i] for i in near]
                weights += [1.0 / len(near)] * len(near)
            center = _weighted_quantile(values, weights, 0.5)
            floor = _min_half_width(quantity, baselines, weights)
            lower = min(_weighted_quantile(values, weights, LOWER), center - floor)
            upper = max(_weighted_quantile(values, weights, UPPER), center + floor)
            band.append(BandPoint(t, lower, center, upper))
        points[group] = tuple(band)
    if not points:
        why = (
            f" where it is defined (|E[s]| >= {RELATIVE_EXCESS_FLOOR}); use --quantity shape_excess"
            if left_out
            else ""
        )
        raise EntropyProbeError(f"reference family {family!r} has no {quantity} values{why}")
    return FamilyBand(family, quantity, tuple(r.name for r in references), points, tuple(left_out))


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
    # analysed layers not scored: no band for their group, no finite value, or no group
    not_compared: tuple[str, ...] = ()
    # layers whose value of the quantity is not defined (relative_excess, |E[s]| too small)
    not_defined: tuple[str, ...] = ()
    # (name, reason) of the analysed layers (also in not_compared) whose kind belongs to no
    # layer group: a plugin rule that declares no ``group`` (LayerRule.group)
    no_group: tuple[tuple[str, str], ...] = ()

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

    def notes(self) -> list[str]:
        """What was left out because the quantity is not defined there, and the layers whose
        kind belongs to no layer group, with the reason (empty when neither)."""
        by_reason: dict[str, list[str]] = {}
        for name, reason in self.no_group:
            by_reason.setdefault(reason, []).append(name)
        no_group = [f"{why}; not compared: {', '.join(names)}" for why, names in by_reason.items()]
        return self._undefined_notes() + no_group

    def _undefined_notes(self) -> list[str]:
        if not self.not_defined and not self.band.left_out:
            return []
        where: list[str] = []
        if self.not_defined:
            where.append(f"not compared: {', '.join(self.not_defined)}")
        if self.band.left_out:
            counts = ", ".join(
                f"{name} ({n} layer{'' if n == 1 else 's'})" for name, n in self.band.left_out
            )
            where.append(f"left out of the band: {counts}")
        return [
            f"{self.quantity} is not defined where a random init of the layer's shape is "
            f"within {RELATIVE_EXCESS_FLOOR} of an isometry (|E[s]| < {RELATIVE_EXCESS_FLOOR}: "
            "few outputs from many inputs, or the reverse), where dividing by |E[s]| "
            f"multiplies the excess by over 100; {'; '.join(where)}"
        ]

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
            "not_defined": list(self.not_defined),
            "notes": self.notes(),
            "band": self.band.to_dict(),
        }


def compare_profile(profile: Profile, band: FamilyBand, *, picked: str = "") -> Comparison:
    """Deviation of every analysed dense/conv layer from ``band``, and the agreement score.

    Analysed layers of a kind that belongs to no layer group (a plugin rule declaring no
    ``group``) are listed in ``not_compared``, and in ``no_group`` with the reason."""
    layers = []
    missing: list[str] = []
    undefined: list[str] = []
    for layer, group, value in pattern_points(profile, band.quantity):
        assert layer.depth is not None  # pattern_points keeps layers with a depth only
        if undefined_for(layer, band.quantity):
            undefined.append(layer.name)
            continue
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
    compared = {x.name for x in layers} | set(missing) | set(undefined)
    missing += [
        x.name
        for x in profile.analysed
        if layer_group(x.kind) is not None and x.depth is not None and x.name not in compared
    ]
    no_group = tuple(ungrouped_layers(profile))
    missing += [name for name, _ in no_group if name not in compared]
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
        not_defined=tuple(undefined),
        no_group=no_group,
    )
