"""From a :class:`Profile` (and an optional comparison) to what the templates show.

Aggregation only: rows, summary items, grouped reasons and plot geometry. No markup here (the
templates write it, with autoescape on) and no model: the report sees only the profile records.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from entropy_probe.entropy.profile import LayerEntropy, Profile
from entropy_probe.enums import LayerKind, Status
from entropy_probe.patterns.pattern import (
    RELATIVE_EXCESS_FLOOR,
    Quantity,
    layer_group,
    layer_value,
    no_group_reason,
)
from entropy_probe.report.svg import Datum, Plot, SeriesSpec, build_plot

__all__ = [
    "ComparisonView",
    "DetailItem",
    "NotCompared",
    "ReasonGroup",
    "ReportView",
    "Row",
    "SummaryItem",
    "build_view",
]


@dataclass(frozen=True)
class SummaryItem:
    label: str
    value: str
    warn: bool = False
    sub: str = ""


@dataclass(frozen=True)
class DetailItem:
    """One card of the details box: a value, or (for a mapping) readable entries."""

    label: str
    value: str = ""
    entries: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Row:
    """One table row: the layer record plus what the report derives from it."""

    index: int
    layer: LayerEntropy
    row_id: str
    family: str  # conv | dense | norm | other: colours and filters
    status_key: str  # ok | singular | skipped | not_analytic | folded
    status_label: str
    emp_h_out: float | None = None
    emp_delta: float | None = None
    shape_excess: float | None = None
    estimator: str = ""
    deviation: float | None = None
    in_band: bool | None = None
    not_compared: str = ""  # why the comparison left this analysed layer out


@dataclass(frozen=True)
class ReasonGroup:
    status: str
    reason: str
    names: tuple[str, ...]


@dataclass(frozen=True)
class ComparisonLayer:
    name: str
    deviation: float | None
    in_band: bool | None
    value: float | None = None
    toward_random: bool | None = None  # outside on the random-init side


@dataclass(frozen=True)
class NotCompared:
    """An analysed dense/conv layer the comparison left out, and why."""

    name: str
    reason: str


@dataclass(frozen=True)
class ComparisonView:
    score: float | None
    reference: str
    layers: tuple[ComparisonLayer, ...]
    picked: str = ""
    quantity: str = ""
    members: tuple[str, ...] = ()
    # layer group -> [(depth, lower, center, upper)] of the family band
    band: tuple[tuple[str, tuple[tuple[float, float, float, float], ...]], ...] = ()
    not_compared: tuple[NotCompared, ...] = ()

    @property
    def out_of_band(self) -> tuple[ComparisonLayer, ...]:
        return tuple(layer for layer in self.layers if layer.in_band is False)

    @property
    def not_compared_groups(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """The not-compared layers by reason, reasons in order of first appearance."""
        groups: dict[str, list[str]] = {}
        for item in self.not_compared:
            groups.setdefault(item.reason, []).append(item.name)
        return tuple((reason, tuple(names)) for reason, names in groups.items())


@dataclass(frozen=True)
class ReportView:
    profile: Profile
    title: str
    summary: tuple[SummaryItem, ...]
    details: tuple[DetailItem, ...]
    rows: tuple[Row, ...]
    plots: tuple[Plot, ...]
    reason_groups: tuple[ReasonGroup, ...]
    singular: tuple[Row, ...]
    singular_after_fold: int
    comparison: ComparisonView | None
    estimators: tuple[str, ...]
    samples: str
    has_spectral: bool
    has_raw: bool
    has_empirical: bool
    kinds: tuple[str, ...]
    data: dict[str, Any]
    row_ids: dict[str, str]  # layer name -> its table row's id (the first, if repeated)


def fmt_num(value: Any, digits: int = 3) -> str:
    """A number for people: ``—`` when missing, ``−inf`` for singular layers."""
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    value = float(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "−inf" if value < 0 else "inf"
    if abs(value) >= 1e7:
        return f"{value:.4g}"
    text = f"{value:,.1f}" if abs(value) >= 1e3 else f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and not text.strip("-0.,") else text  # no "-0.000"


def sort_key(value: Any) -> str:
    """The ``data-v`` attribute the table's JS sorts by (``''`` sorts last)."""
    if value is None or isinstance(value, bool):
        return ""
    if isinstance(value, int | float):
        if math.isnan(value):
            return ""
        if math.isinf(value):
            return "-Infinity" if value < 0 else "Infinity"
        return repr(float(value))
    return str(value)


def fmt_shape(shape: Sequence[int] | None) -> str:
    return "×".join(str(s) for s in shape) if shape else "—"


def _family(kind: str) -> str:
    """The table's filter family: the layer group its rule declares (a plugin kind too)."""
    if kind == LayerKind.BATCHNORM:
        return "norm"
    group = layer_group(kind)
    return str(group) if group is not None else "other"


def _field(obj: Any, key: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


def _as_float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def comparison_view(comparison: Any, profile: Profile | None = None) -> ComparisonView | None:
    """Read any object (or mapping) with ``score``, ``reference`` and
    ``layers[{name, deviation, in_band}]``; missing fields show as missing. The layers it
    left out (``not_compared``, ``not_defined``: names, or ``{name, reason}``) are listed with
    a reason, found from ``profile`` where the comparison gives none."""
    if comparison is None:
        return None
    reference = _field(comparison, "reference")
    ref_name = _field(reference, "name") if reference is not None else None
    layers = []
    for item in _field(comparison, "layers") or ():
        in_band = _field(item, "in_band")
        layers.append(
            ComparisonLayer(
                name=str(_field(item, "name")),
                deviation=_as_float(_field(item, "deviation")),
                in_band=None if in_band is None else bool(in_band),
                value=_as_float(_field(item, "value")),
                toward_random=_field(item, "toward_random"),
            )
        )
    quantity = str(_field(comparison, "quantity") or "")
    return ComparisonView(
        score=_as_float(_field(comparison, "score")),
        reference=str(ref_name if isinstance(ref_name, str) else (reference or "—")),
        layers=tuple(layers),
        picked=str(_field(comparison, "picked") or ""),
        quantity=quantity,
        members=tuple(str(m) for m in (_field(_field(comparison, "band"), "members") or ())),
        band=_band_points(_field(comparison, "band")),
        not_compared=_not_compared(comparison, profile, quantity),
    )


def _not_compared(
    comparison: Any, profile: Profile | None, quantity: str
) -> tuple[NotCompared, ...]:
    by_name = {layer.name: layer for layer in profile.layers} if profile is not None else {}
    compared = {str(_field(item, "name")) for item in _field(comparison, "layers") or ()}
    out: list[NotCompared] = []
    seen: set[str] = set()
    for key in ("not_compared", "not_defined"):
        items = _field(comparison, key) or ()
        for item in (items,) if isinstance(items, str | Mapping) else items:
            name = str(item if isinstance(item, str) else _field(item, "name"))
            if name in seen or name in compared:
                continue
            seen.add(name)
            given = None if isinstance(item, str) else _field(item, "reason")
            if given:
                reason = str(given)
            elif key == "not_defined":
                reason = (
                    f"{quantity or 'the quantity'} is not defined here: a random init of this "
                    f"shape is within {RELATIVE_EXCESS_FLOOR} of an isometry "
                    f"(|E[s]| < {RELATIVE_EXCESS_FLOOR}), where the ratio is noise"
                )
            else:
                reason = _not_compared_reason(by_name.get(name), quantity)
            out.append(NotCompared(name, reason))
    return tuple(out)


def _not_compared_reason(layer: LayerEntropy | None, quantity: str) -> str:
    """Why the comparison left out an analysed layer, in the order compare_profile decides:
    no finite value (singular; a single singular value), else no band for its group."""
    if layer is None:
        return "singular, a single singular value, or no band for its layer group"
    try:
        q: Quantity | None = Quantity(quantity)
    except ValueError:
        q = None
    if layer.status is Status.SINGULAR:
        after_fold = (
            layer.folded_batchnorm
            and layer.delta_h_raw is not None
            and math.isfinite(layer.delta_h_raw)
        )
        return (
            "singular (ΔH = −inf)"
            + (" only after folding in its BatchNorm (γ has zeros)" if after_fold else "")
            + f": no finite {q or 'value'} to compare"
        )
    if q is not None and layer_value(layer, q) is None:
        single = (
            layer.spectral_shape_random is not None and abs(layer.spectral_shape_random) < 1e-12
        )
        if single and q is not Quantity.DELTA_H_PER_DIM:
            return "a single singular value: its shape is 0 whatever the weights"
        return f"no finite {q}"
    group = layer_group(layer.kind)
    return f"the reference band has no {group} layers" if group else no_group_reason(layer.kind)


def _band_points(
    band: Any,
) -> tuple[tuple[str, tuple[tuple[float, float, float, float], ...]], ...]:
    """A family band's points by layer group, from a FamilyBand or its dict form."""
    if band is None:
        return ()
    if hasattr(band, "to_dict"):
        band = band.to_dict()
    points = _field(band, "points") or {}
    out = []
    try:
        for group, rows in points.items():
            quads = tuple(tuple(float(v) for v in row[:4]) for row in rows)
            if all(len(q) == 4 and all(math.isfinite(v) for v in q) for q in quads):
                out.append((str(group), quads))
    except (AttributeError, TypeError, ValueError):
        return ()
    return tuple(out)  # type: ignore[arg-type]


def _status(layer: LayerEntropy) -> tuple[str, str]:
    if layer.folded_into:
        return "folded", "folded"
    if layer.status is Status.OK and layer.folded_batchnorm:
        return "ok", "ok (+BN)"
    return str(layer.status), str(layer.status).replace("_", " ")


def _rows(profile: Profile, comparison: ComparisonView | None) -> tuple[Row, ...]:
    by_name = {c.name: c for c in comparison.layers} if comparison else {}
    left_out = {c.name: c.reason for c in comparison.not_compared} if comparison else {}
    rows = []
    for index, layer in enumerate(profile.layers):
        key, label = _status(layer)
        emp = layer.empirical or {}
        match = by_name.get(layer.name)
        rows.append(
            Row(
                index=index,
                layer=layer,
                row_id=f"layer-{index}",
                family=_family(layer.kind),
                status_key=key,
                status_label=label,
                emp_h_out=_as_float(emp.get("h_out_per_dim")),
                emp_delta=_as_float(emp.get("delta_h_per_dim")),
                shape_excess=layer_value(layer, Quantity.SHAPE_EXCESS),
                estimator=str(emp.get("estimator") or ""),
                deviation=match.deviation if match else None,
                in_band=match.in_band if match else None,
                not_compared=left_out.get(layer.name, ""),
            )
        )
    return tuple(rows)


def _tip(row: Row, *parts: str) -> str:
    layer = row.layer
    head = f"#{row.index} {layer.name} ({layer.kind})"
    depth = f"depth {layer.depth:.3f}" if layer.depth is not None else ""
    return "\n".join(p for p in (head, depth, *parts) if p)


def _band_plot(rows: Sequence[Row], comp: ComparisonView) -> Plot:
    series = []
    by_name = {c.name: c for c in comp.layers}
    for group, quads in comp.band:
        css = "s-dense" if group == "dense" else "s-conv"
        for index, label in ((1, "lower"), (2, "centre"), (3, "upper")):
            data = [
                Datum(q[0], q[index], f"{group} band {label} at depth {q[0]:.2f}: {q[index]:.3f}")
                for q in quads
            ]
            series.append(
                SeriesSpec(
                    f"{group} band {label}",
                    css,
                    data,
                    line=True,
                    marks=False,
                    dashed=index != 2,
                    legend=index == 2,
                )
            )
    for family, shape in (("conv", "circle"), ("dense", "square")):
        data = []
        for r in rows:
            match = by_name.get(r.layer.name)
            if r.family != family or match is None or match.value is None:
                continue
            where = "inside" if match.in_band else "OUTSIDE"
            tip = _tip(r, f"{comp.quantity} = {fmt_num(match.value)}", f"{where} the band")
            data.append(Datum(r.layer.depth or 0.0, match.value, tip, r.row_id, not match.in_band))
        series.append(SeriesSpec(f"this model, {family}", f"s-{family}", data, shape=shape))  # type: ignore[arg-type]
    return build_plot(
        "plot-band",
        f"{comp.quantity or 'pattern'} over depth vs the {comp.reference} band",
        series,
        x_label="relative depth (0 = first analysed layer, 1 = last)",
        y_label=f"{comp.quantity or 'value'}, nats per dimension",
        x_domain=(0.0, 1.0),
        caption="Dashed: the band of well-trained networks of the family (25–75% of their "
        "layers near each depth, every network weighted equally); solid: its centre. Ringed "
        "points lie outside the band.",
    )


def _plots(rows: Sequence[Row]) -> tuple[Plot, ...]:
    depth_rows = sorted(
        (r for r in rows if r.layer.analysed and r.layer.depth is not None),
        key=lambda r: (r.layer.depth, r.index),
    )
    x_depth = "relative depth (0 = first analysed layer, 1 = last)"

    def per_dim(row: Row) -> Datum:
        value = row.layer.delta_h_per_dim
        label = _tip(row, f"ΔH/dim = {fmt_num(value)} nats")
        return Datum(row.layer.depth or 0.0, value, label, row.row_id, row.in_band is False)

    series = [
        SeriesSpec(
            "trend",
            "s-trend",
            [per_dim(r) for r in depth_rows],
            line=True,
            marks=False,
            legend=False,
        )
    ]
    for family, name, css, shape in (
        ("conv", "ΔH/dim, conv", "s-conv", "circle"),
        ("dense", "ΔH/dim, dense", "s-dense", "square"),
        ("other", "ΔH/dim, other", "s-other", "circle"),
    ):
        data = [per_dim(r) for r in depth_rows if r.family == family]
        series.append(SeriesSpec(name, css, data, shape=shape))  # type: ignore[arg-type]
    series.append(
        SeriesSpec(
            "shape s (scale-free)",
            "s-shape",
            [
                Datum(
                    r.layer.depth or 0.0,
                    r.layer.spectral_shape,
                    _tip(r, f"shape s = {fmt_num(r.layer.spectral_shape)}"),
                    r.row_id,
                )
                for r in depth_rows
            ],
            shape="diamond",
        )
    )
    plots = [
        build_plot(
            "plot-per-dim",
            "ΔH per dimension over depth",
            series,
            x_label=x_depth,
            y_label="nats per dimension",
            x_domain=(0.0, 1.0),
            caption="Mean log singular value of each layer's (BatchNorm-folded) map: "
            "comparable across widths. The shape s ≤ 0 is its scale-free part "
            "(0 = an isometry up to scale). ▼ marks −inf (singular)."
            + (" Ringed points are outside the reference band." if _any_ring(rows) else ""),
        )
    ]

    has_spectral = any(r.layer.delta_h_spectral is not None for r in depth_rows)
    whole = [
        SeriesSpec(
            "ΔH paper",
            "s-conv",
            [
                Datum(
                    r.layer.depth or 0.0,
                    r.layer.delta_h,
                    _tip(r, f"ΔH paper = {fmt_num(r.layer.delta_h, 1)} nats"),
                    r.row_id,
                )
                for r in depth_rows
            ],
        )
    ]
    if has_spectral:
        whole.append(
            SeriesSpec(
                "ΔH spectral",
                "s-spectral",
                [
                    Datum(
                        r.layer.depth or 0.0,
                        r.layer.delta_h_spectral,
                        _tip(r, f"ΔH spectral = {fmt_num(r.layer.delta_h_spectral, 1)} nats"),
                        r.row_id,
                    )
                    for r in depth_rows
                ],
                shape="diamond",
            )
        )
    plots.append(
        build_plot(
            "plot-whole",
            "Whole-layer ΔH: paper vs spectral" if has_spectral else "Whole-layer ΔH (paper)",
            whole,
            x_label=x_depth,
            y_label="ΔH, nats",
            y_scale="symlog",
            x_domain=(0.0, 1.0),
            caption="ΔH of the whole layer (all positions). Spectral values exist for "
            "convolutions only (for a dense layer there is no grid; it equals paper)."
            if has_spectral
            else "Run with --method both (or spectral) to add the exact circular-boundary value.",
        )
    )
    plots.append(_cumulative_plot(rows))
    if any(r.emp_delta is not None or r.emp_h_out is not None for r in rows):
        plots.append(_empirical_plot(rows))
    return tuple(plots)


def _any_ring(rows: Sequence[Row]) -> bool:
    return any(r.in_band is False for r in rows)


def counted(rows: Sequence[Row]) -> list[Row]:
    """The rows that :meth:`Profile.total_delta_h` sums (folded BatchNorms excluded)."""
    return [
        r
        for r in rows
        if r.layer.analysed and r.layer.folded_into is None and r.layer.delta_h is not None
    ]


def _cumulative_plot(rows: Sequence[Row]) -> Plot:
    data = []
    total = 0.0
    for number, row in enumerate(counted(rows), start=1):
        delta = row.layer.delta_h
        if delta is None or math.isinf(total):
            break
        total = math.fsum((total, delta)) if math.isfinite(delta) else delta
        label = _tip(row, f"ΔH = {fmt_num(delta, 1)}", f"cumulative ΔH = {fmt_num(total, 1)} nats")
        if math.isinf(total):
            label += "\n(a singular layer: −inf from here on)"
        data.append(Datum(float(number), total, label, row.row_id))
    return build_plot(
        "plot-cumulative",
        "Cumulative ΔH along the layers",
        [SeriesSpec("cumulative ΔH (paper)", "s-cum", data, line=True, shape="circle")],
        x_label="analysed layer, in model order (folded BatchNorms not counted twice)",
        y_label="Σ ΔH, nats",
        y_scale="symlog",
        x_integer=True,
        caption="Running sum of whole-layer ΔH; its last value is the profile's total. In a "
        "network with branches (residual blocks) it is the sum of per-layer changes, not the "
        "entropy along one path. ▼ marks the first singular layer (−inf from there on).",
    )


def _empirical_plot(rows: Sequence[Row]) -> Plot:
    """Over table order, not depth: measured rows without a weight (activations, pooling,
    residual additions) have no relative depth but belong on this chart."""
    shown = [
        r
        for r in rows
        if r.emp_delta is not None
        or r.emp_h_out is not None
        or (r.layer.analysed and r.layer.depth is not None)
    ]

    def data(attr: str, what: str) -> list[Datum]:
        out = []
        for r in shown:
            if attr == "analytic":
                value = r.layer.delta_h_per_dim if r.layer.depth is not None else None
            else:
                value = getattr(r, attr)
            label = _tip(r, f"{what} = {fmt_num(value)}")
            out.append(Datum(float(r.index), value, label, r.row_id))
        return out

    return build_plot(
        "plot-empirical",
        "Empirical vs analytic entropy per dimension",
        [
            SeriesSpec("analytic ΔH/dim", "s-conv", data("analytic", "analytic ΔH/dim"), line=True),
            SeriesSpec(
                "empirical ΔH/dim",
                "s-emp",
                data("emp_delta", "empirical ΔH/dim"),
                line=True,
                shape="square",
            ),
            SeriesSpec(
                "empirical H(out)/dim",
                "s-emp-h",
                data("emp_h_out", "empirical H(out)/dim"),
                line=True,
                shape="diamond",
                dashed=True,
            ),
        ],
        x_label="layer, in table order (#)",
        y_label="nats per dimension",
        x_integer=True,
        caption="Analytic values from the weights; empirical ones estimated from activations "
        "on real inputs (estimator in the table and below), also for layers without weights.",
    )


def maps(rows: Sequence[Row]) -> list[Row]:
    """The layers the report counts: every row but a BatchNorm folded into the layer before
    it (the data sees one map; it is counted in that layer, as in the total ΔH)."""
    return [r for r in rows if r.layer.folded_into is None]


def _layer_counts(rows: Sequence[Row]) -> SummaryItem:
    layers = maps(rows)
    counts = {s: sum(1 for r in layers if r.layer.status == s) for s in Status}
    analysed = counts[Status.OK] + counts[Status.SINGULAR]
    folded = len(rows) - len(layers)
    breakdown = (
        f"{counts[Status.SINGULAR]} singular · {counts[Status.SKIPPED]} skipped · "
        f"{counts[Status.NOT_ANALYTIC]} not analytic"
    )
    if folded:
        breakdown += (
            f"; {folded} BatchNorm{'s' if folded != 1 else ''} folded into the layer before "
            f"{'them' if folded != 1 else 'it'}, counted there"
        )
    return SummaryItem("Layers", f"{analysed} of {len(layers)} analysed", sub=breakdown)


def _timing(profile: Profile, extra: Mapping[str, Any]) -> SummaryItem:
    """``elapsed_s`` is the analytic profile only; an empirical measurement records its own
    time in ``meta["empirical"]["elapsed_s"]``. Loading and tracing the model (and reading
    the data) are in neither."""
    empirical = extra.get("empirical")
    measured = _as_float(empirical.get("elapsed_s")) if isinstance(empirical, Mapping) else None
    if measured is None or not math.isfinite(measured):
        return SummaryItem(
            "Compute time",
            _duration(profile.elapsed_s),
            sub="the analytic profile; loading and tracing the model not included",
        )
    return SummaryItem(
        "Compute time",
        _duration(profile.elapsed_s + measured),
        sub=f"analytic {_duration(profile.elapsed_s)} + empirical {_duration(measured)}; "
        "loading the model and the data not included",
    )


def _summary(
    profile: Profile, rows: Sequence[Row], extra: Mapping[str, Any]
) -> tuple[SummaryItem, ...]:
    return (
        SummaryItem("Source", profile.source),
        SummaryItem("Format", profile.format),
        SummaryItem("Parameters", f"{profile.num_params:,}"),
        SummaryItem("Input shape", fmt_shape(profile.input_shape)),
        SummaryItem(
            "Weights",
            "pretrained" if profile.pretrained else "RANDOM (untrained initial weights)",
            warn=not profile.pretrained,
        ),
        SummaryItem("Conv method", str(profile.method)),
        SummaryItem("Device", profile.device),
        _timing(profile, extra),
        _layer_counts(rows),
        SummaryItem(
            "Total ΔH (paper)",
            f"{fmt_num(profile.total_delta_h(), 1)} nats",
            warn=profile.total_delta_h() == -math.inf,
        ),
    )


def _details(extra: Mapping[str, Any]) -> tuple[DetailItem, ...]:
    """The details box: one card per metadata key; a mapping (the empirical run's settings)
    as labelled entries, empty ones left out."""
    items = []
    for key, value in extra.items():
        if isinstance(value, Mapping):
            entries = tuple(
                (_label(k), text) for k, v in value.items() if (text := _detail_value(str(k), v))
            )
            if entries:
                items.append(DetailItem(str(key), entries=entries))
        elif text := _detail_value(str(key), value):
            items.append(DetailItem(str(key), text))
    return tuple(items)


def _label(key: str) -> str:
    if key == "elapsed_s":
        return "time"
    if key.endswith("_bytes"):
        key = key[: -len("_bytes")]
    return key.replace("_", " ")


def _detail_value(key: str, value: Any) -> str:
    """A metadata value for people; ``""`` for an empty one (left out)."""
    if isinstance(value, Mapping):  # e.g. skipped taps: name -> why
        parts = []
        for name, why in value.items():
            text = _detail_value("", why)
            parts.append(f"{name} ({text})" if text else str(name))
        return "; ".join(parts)
    if isinstance(value, list | tuple):
        return ", ".join(_detail_value("", v) for v in value)
    if key.endswith("_s") and isinstance(value, int | float) and not isinstance(value, bool):
        return _duration(float(value))
    if key.endswith("_bytes") and isinstance(value, int) and not isinstance(value, bool):
        return _size(value)
    if value is None:
        return "—"
    return fmt_num(value)


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _duration(seconds: float) -> str:
    if seconds < 1.0:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120.0:
        return f"{seconds:.2f} s"
    return f"{seconds / 60:.1f} min"


def _reason_groups(rows: Sequence[Row]) -> tuple[ReasonGroup, ...]:
    groups: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        if row.layer.status in (Status.SKIPPED, Status.NOT_ANALYTIC):
            key = (str(row.layer.status), row.layer.reason or "no reason given")
            groups.setdefault(key, []).append(row.layer.name)
    return tuple(ReasonGroup(s, r, tuple(names)) for (s, r), names in groups.items())


def json_safe(value: Any) -> Any:
    """Strict-JSON data: non-finite floats → None, unknown objects → str."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return str(value)


def build_view(
    profile: Profile,
    *,
    comparison: Any | None = None,
    meta: Mapping[str, Any] | None = None,
    version: str = "",
) -> ReportView:
    comp = comparison_view(comparison, profile)
    rows = _rows(profile, comp)
    extra = {**profile.meta, **(meta or {})}
    estimators = tuple(sorted({r.estimator for r in rows if r.estimator}))
    per_layer = [r.layer.empirical.get("samples") for r in rows if r.layer.empirical]
    samples = next(
        (str(extra[k]) for k in ("samples", "num_samples", "n_samples") if k in extra),
        ", ".join(sorted({str(n) for n in per_layer if n is not None})),
    )
    singular = tuple(r for r in maps(rows) if r.layer.status is Status.SINGULAR)
    after_fold = sum(
        1
        for r in singular
        if r.layer.folded_batchnorm
        and r.layer.delta_h_raw is not None
        and math.isfinite(r.layer.delta_h_raw)
    )
    data = {
        "generator": f"entropy-probe {version}".strip(),
        "profile": profile.to_dict(),
        "comparison": json_safe(
            None
            if comp is None
            else {
                "score": comp.score,
                "reference": comp.reference,
                "picked": comp.picked,
                "quantity": comp.quantity,
                "members": list(comp.members),
                "layers": [asdict(layer) for layer in comp.layers],
                "not_compared": [asdict(item) for item in comp.not_compared],
                "band": {group: [list(q) for q in quads] for group, quads in comp.band},
            }
        ),
        "meta": json_safe(extra),
    }
    return ReportView(
        profile=profile,
        title=f"Entropy report: {profile.source}",
        summary=_summary(profile, rows, extra),
        details=_details(extra),
        rows=rows,
        plots=(_band_plot(rows, comp), *_plots(rows)) if comp and comp.band else _plots(rows),
        reason_groups=_reason_groups(rows),
        singular=singular,
        singular_after_fold=after_fold,
        comparison=comp,
        estimators=estimators,
        samples=samples,
        has_spectral=any(r.layer.delta_h_spectral is not None for r in rows),
        has_raw=any(r.layer.delta_h_raw is not None for r in rows),
        has_empirical=any(r.layer.empirical for r in rows),
        kinds=tuple(sorted({r.layer.kind for r in rows})),
        data=data,
        row_ids={r.layer.name: r.row_id for r in reversed(rows)},
    )
