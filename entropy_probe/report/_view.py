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
from entropy_probe.patterns.pattern import Quantity, layer_value
from entropy_probe.report.svg import Datum, Plot, SeriesSpec, build_plot

__all__ = ["ComparisonView", "ReasonGroup", "ReportView", "Row", "SummaryItem", "build_view"]


@dataclass(frozen=True)
class SummaryItem:
    label: str
    value: str
    warn: bool = False
    sub: str = ""


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
class ComparisonView:
    score: float | None
    reference: str
    layers: tuple[ComparisonLayer, ...]
    picked: str = ""
    quantity: str = ""
    members: tuple[str, ...] = ()
    # layer group -> [(depth, lower, center, upper)] of the family band
    band: tuple[tuple[str, tuple[tuple[float, float, float, float], ...]], ...] = ()

    @property
    def out_of_band(self) -> tuple[ComparisonLayer, ...]:
        return tuple(layer for layer in self.layers if layer.in_band is False)


@dataclass(frozen=True)
class ReportView:
    profile: Profile
    title: str
    summary: tuple[SummaryItem, ...]
    details: tuple[SummaryItem, ...]
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
    if kind == LayerKind.LINEAR:
        return "dense"
    if kind.startswith("conv"):
        return "conv"
    if kind == LayerKind.BATCHNORM:
        return "norm"
    return "other"


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


def comparison_view(comparison: Any) -> ComparisonView | None:
    """Read any object (or mapping) with ``score``, ``reference`` and
    ``layers[{name, deviation, in_band}]``; missing fields show as missing."""
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
    return ComparisonView(
        score=_as_float(_field(comparison, "score")),
        reference=str(ref_name if isinstance(ref_name, str) else (reference or "—")),
        layers=tuple(layers),
        picked=str(_field(comparison, "picked") or ""),
        quantity=str(_field(comparison, "quantity") or ""),
        members=tuple(str(m) for m in (_field(_field(comparison, "band"), "members") or ())),
        band=_band_points(_field(comparison, "band")),
    )


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


def _summary(profile: Profile, rows: Sequence[Row]) -> tuple[SummaryItem, ...]:
    counts = {s: sum(1 for r in rows if r.layer.status == s) for s in Status}
    analysed = counts[Status.OK] + counts[Status.SINGULAR]
    breakdown = (
        f"{counts[Status.SINGULAR]} singular · {counts[Status.SKIPPED]} skipped · "
        f"{counts[Status.NOT_ANALYTIC]} not analytic"
    )
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
        SummaryItem("Time taken", _duration(profile.elapsed_s)),
        SummaryItem("Layers", f"{analysed} of {len(rows)} analysed", sub=breakdown),
        SummaryItem(
            "Total ΔH (paper)",
            f"{fmt_num(profile.total_delta_h(), 1)} nats",
            warn=profile.total_delta_h() == -math.inf,
        ),
    )


def _detail(value: Any) -> str:
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {fmt_num(v)}" for k, v in value.items()) or "none"
    if isinstance(value, list | tuple):
        return ", ".join(fmt_num(v) for v in value) or "none"
    return fmt_num(value)


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
    comp = comparison_view(comparison)
    rows = _rows(profile, comp)
    extra = {**profile.meta, **(meta or {})}
    details = tuple(SummaryItem(str(k), _detail(v)) for k, v in extra.items())
    estimators = tuple(sorted({r.estimator for r in rows if r.estimator}))
    per_layer = [r.layer.empirical.get("samples") for r in rows if r.layer.empirical]
    samples = next(
        (str(extra[k]) for k in ("samples", "num_samples", "n_samples") if k in extra),
        ", ".join(sorted({str(n) for n in per_layer if n is not None})),
    )
    singular = tuple(r for r in rows if r.layer.status is Status.SINGULAR)
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
                "band": {group: [list(q) for q in quads] for group, quads in comp.band},
            }
        ),
        "meta": json_safe(extra),
    }
    return ReportView(
        profile=profile,
        title=f"Entropy report: {profile.source}",
        summary=_summary(profile, rows),
        details=details,
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
    )
