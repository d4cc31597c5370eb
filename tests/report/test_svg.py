"""Plot geometry: scales, ticks, and non-finite values that must never break a plot."""

from __future__ import annotations

import math

import pytest

from entropy_probe.report.svg import Datum, SeriesSpec, build_plot, linear_ticks, symlog


def test_symlog_is_odd_monotone_and_linear_near_zero() -> None:
    values = [-1e6, -100.0, -1.0, -1e-3, 0.0, 1e-3, 1.0, 100.0, 1e6]
    mapped = [symlog(v) for v in values]
    assert mapped == sorted(mapped)
    assert all(symlog(-v) == -symlog(v) for v in values)
    assert symlog(1e-6) == pytest.approx(1e-6 / math.log(10), rel=1e-3)
    assert symlog(999.0) == pytest.approx(3.0)


@pytest.mark.parametrize(("lo", "hi"), [(0.0, 1.0), (-2.33, 1.21), (-1e-9, 1e-9), (5.0, 5.0)])
def test_linear_ticks_cover_the_data(lo: float, hi: float) -> None:
    start, stop, ticks = linear_ticks(lo, hi)
    assert start <= lo and stop >= hi
    assert ticks[0] == pytest.approx(start) and ticks[-1] == pytest.approx(stop)
    assert 2 <= len(ticks) <= 12


def _series(*ys: float | None, line: bool = True) -> SeriesSpec:
    data = [Datum(float(i), y, f"point {i}", f"layer-{i}") for i, y in enumerate(ys)]
    return SeriesSpec("s", "s-conv", data, line=line)


def test_minus_inf_becomes_an_edge_marker_and_breaks_the_line() -> None:
    plot = build_plot("p", "t", [_series(1.0, 2.0, -math.inf, 3.0, 4.0)], x_label="x", y_label="y")
    (series,) = plot.series
    assert len(series.marks) == 4
    assert len(plot.offscale) == 1 and plot.offscale[0].title == "point 2"
    assert series.path.count("M") == 2  # the line restarts after the −inf point
    assert "inf" not in series.path and "nan" not in series.path
    assert all(plot.top <= m.cy <= plot.bottom for m in series.marks)


def test_missing_values_are_left_out() -> None:
    plot = build_plot("p", "t", [_series(None, 1.0, None)], x_label="x", y_label="y")
    assert len(plot.series[0].marks) == 1 and plot.series[0].path == ""
    assert plot.empty == ""


@pytest.mark.parametrize("scale", ["linear", "symlog"])
def test_nothing_finite_gives_an_empty_plot_not_an_error(scale: str) -> None:
    plot = build_plot(
        "p",
        "t",
        [_series(None, None)],
        x_label="x",
        y_label="y",
        y_scale=scale,  # type: ignore[arg-type]
    )
    assert plot.empty and plot.series[0].marks == () and plot.y_ticks


def test_symlog_ticks_are_round_and_span_both_signs() -> None:
    plot = build_plot(
        "p", "t", [_series(-4.7e5, 12.0, 2.1e5)], x_label="x", y_label="y", y_scale="symlog"
    )
    labels = [t.label for t in plot.y_ticks]
    assert "0" in labels and any(label.startswith("−") for label in labels)
    positions = [t.pos for t in plot.y_ticks]
    assert positions == sorted(positions, reverse=True)  # larger values higher up
    assert plot.zero_y is not None and plot.top < plot.zero_y < plot.bottom
    assert plot.y_label.endswith("(symlog)")
