"""The rendered report, checked structurally: layers, escaping, self-containment, −inf."""

from __future__ import annotations

import base64
import hashlib
import json
import math
from pathlib import Path

import pytest

from entropy_probe.entropy.profile import LayerEntropy, Profile
from entropy_probe.enums import Status
from entropy_probe.report import render_report, write_report
from entropy_probe.report.html import environment

from ._html import MalformedHTMLError, Node, parse
from ._profiles import (
    EVIL,
    EVIL_ATTR,
    EVIL_END,
    EVIL_REASON,
    FakeComparison,
    hostile_profile,
    unanalysed_profile,
)


def render(profile: Profile, **kwargs: object) -> tuple[str, Node]:
    html = render_report(profile, **kwargs)  # type: ignore[arg-type]
    return html, parse(html)


def table_names(tree: Node) -> list[str]:
    table = tree.by_id("layer-table")
    return [td.text() for td in table.find_all("td") if "name" in td.classes()]


def embedded_data(tree: Node) -> dict[str, object]:
    node = tree.by_id("report-data")
    assert node.tag == "script" and node.attrs["type"] == "application/json"
    data: dict[str, object] = json.loads(node.text())
    return data


# --------------------------------------------------------------------------- structure


def test_default_model_report_is_well_formed(default_profile: Profile) -> None:
    html, tree = render(default_profile)
    assert html.startswith("<!DOCTYPE html>")
    assert table_names(tree) == [layer.name for layer in default_profile.layers]
    assert tree.find_all("html")[0].attrs["lang"] == "en"
    assert len(tree.find_all("svg", class_="chart")) == 3  # per-dim, whole-layer, cumulative
    assert "plot-empirical" not in html  # no activation data in this profile
    data = embedded_data(tree)
    assert data["profile"] == json.loads(json.dumps(default_profile.to_dict()))


def test_hostile_profile_every_name_in_the_table_exactly() -> None:
    profile = hostile_profile()
    _, tree = render(profile)
    assert table_names(tree) == [layer.name for layer in profile.layers]


def test_parser_rejects_what_a_browser_would_repair() -> None:
    with pytest.raises(MalformedHTMLError, match="closes <b>"):
        parse("<!DOCTYPE html><p><b>x</p></b>")
    with pytest.raises(MalformedHTMLError, match="left open"):
        parse("<!DOCTYPE html><div><span>x</span>")
    with pytest.raises(MalformedHTMLError, match="duplicate id"):
        parse('<!DOCTYPE html><i id="a"></i><i id="a"></i>')


def test_internal_references_resolve() -> None:
    """Every #fragment link and every plot point's row reference names an element."""
    _, tree = render(hostile_profile(), comparison=FakeComparison())
    ids = {n.attrs["id"] for n in tree.iter() if "id" in n.attrs}
    hrefs = [n.attrs["href"] for n in tree.iter() if n.attrs.get("href", "").startswith("#")]
    assert hrefs and all(h[1:] in ids for h in hrefs)
    refs = [n.attrs["data-ref"] for n in tree.iter() if "data-ref" in n.attrs]
    assert refs and all(r in ids for r in refs)


# --------------------------------------------------------------------------- escaping


def test_autoescape_applies_to_j2_templates_and_not_to_static_files() -> None:
    env = environment()
    assert callable(env.autoescape)
    for name in ("report.html.j2", "_layer_table.html.j2", "_plot.html.j2", "x.svg"):
        assert env.autoescape(name) is True, name
    for name in ("style.css", "report.js"):
        assert env.autoescape(name) is False, name
    assert env.from_string("{{ x }}").render(x="<b>&") == "&lt;b&gt;&amp;"


@pytest.mark.parametrize("name", [EVIL, EVIL_END, EVIL_ATTR])
def test_hostile_names_render_as_text(name: str) -> None:
    html, tree = render(hostile_profile(), comparison=FakeComparison())
    assert name not in html  # nowhere raw: not in the table, SVG, summary or JSON
    assert name in table_names(tree)
    # the only elements are ours: two scripts (data + code), no <img>, no inline handlers
    scripts = tree.find_all("script")
    assert [s.attrs.get("type") for s in scripts] == ["application/json", None]
    assert tree.find_all("img") == []
    assert not [n for n in tree.iter() if any(a.startswith("on") for a in n.attrs)]
    layer_names = {layer["name"] for layer in embedded_data(tree)["profile"]["layers"]}  # type: ignore[index]
    assert name in layer_names or name == EVIL_ATTR  # EVIL_ATTR is skipped: no plot points


def test_hostile_names_in_svg_tooltips_are_text() -> None:
    html, tree = render(hostile_profile())
    titles = [t.text() for t in tree.find_all("title")[1:]]  # [0] is the page <title>
    assert any(EVIL in t for t in titles)
    assert any(EVIL_END in t for t in titles)  # the singular layer's ▼ marker
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_embedded_json_cannot_close_its_script_element() -> None:
    html, _ = render(hostile_profile(), comparison=FakeComparison())
    raw = html.split('<script type="application/json" id="report-data">', 1)[1]
    raw = raw.split("</script>", 1)[0]
    assert "<" not in raw and ">" not in raw and "&" not in raw
    data = json.loads(raw)
    assert data["comparison"]["reference"] == "classifier-cnn <v1>"
    names = [layer["name"] for layer in data["profile"]["layers"]]
    assert names == [layer.name for layer in hostile_profile().layers]


def test_reasons_notes_and_source_are_escaped() -> None:
    html, tree = render(hostile_profile())
    assert EVIL_REASON not in html
    assert tree.by_id("not-analysed").text().count(EVIL_REASON) == 1
    assert "<em>markup</em>" not in html
    assert "a note with <em>markup</em> & an ampersand" in tree.by_id("summary").text()
    assert tree.find_all("title")[0].text() == "Entropy report: models/<evil>&.onnx"


# --------------------------------------------------------------------------- self-contained


def _external(value: str) -> bool:
    return not (value == "" or value.startswith(("#", "data:")))


@pytest.mark.parametrize("with_extras", [False, True])
def test_no_external_src_or_href(with_extras: bool, default_profile: Profile) -> None:
    profile = hostile_profile() if with_extras else default_profile
    comparison = FakeComparison() if with_extras else None
    html, tree = render(profile, comparison=comparison)
    links = [
        (n.tag, attr, n.attrs[attr])
        for n in tree.iter()
        for attr in ("src", "href", "xlink:href", "action", "srcset", "poster")
        if attr in n.attrs
    ]
    assert links, "expected at least the in-page navigation links"
    assert [link for link in links if _external(link[2])] == []
    assert tree.find_all("link") == [] and tree.find_all("iframe") == []
    assert "@import" not in html and "url(" not in html
    assert "http://" not in html.lower()
    assert "https://" not in html.lower()


def test_csp_allows_exactly_the_inline_script_and_style(default_profile: Profile) -> None:
    _, tree = render(default_profile)
    csp = next(
        m.attrs["content"]
        for m in tree.find_all("meta")
        if m.attrs.get("http-equiv") == "Content-Security-Policy"
    )
    assert "default-src 'none'" in csp
    assert "unsafe-inline" not in csp

    def digest(text: str) -> str:
        return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()

    code = next(s for s in tree.find_all("script") if "type" not in s.attrs).text()
    style = tree.find_all("style")[0].text()
    assert f"script-src 'sha256-{digest(code)}'" in csp
    assert f"style-src 'sha256-{digest(style)}'" in csp
    # no style attributes: the hash-only policy would block them
    assert not [n for n in tree.iter() if "style" in n.attrs]


# --------------------------------------------------------------------------- values


def _row(tree: Node, index: int) -> Node:
    return tree.by_id(f"layer-{index}")


def test_minus_inf_renders_as_text_and_plots_mark_it() -> None:
    _, tree = render(hostile_profile())
    singular = _row(tree, 3)
    assert singular.attrs["data-status"] == "singular"
    cells = [td for td in singular.find_all("td") if "n" in td.classes()]
    assert "−inf" in [td.text() for td in cells]
    assert any(td.attrs["data-v"] == "-Infinity" for td in cells)
    assert any("ninf" in td.classes() for td in cells)
    summary = tree.by_id("summary").text()
    assert "−inf nats" in summary and "1 singular layer" in summary
    offscale = [n for n in tree.iter() if "offscale" in n.classes()]
    assert len(offscale) >= 3  # per-dim, shape, cumulative (and the empirical chart)
    assert "NaN" not in tree.by_id("layers").text() + tree.by_id("plots").text()
    assert "nan" not in tree.by_id("layers").text()
    for path in tree.find_all("path"):
        assert "inf" not in path.attrs.get("d", "").lower()
        assert "nan" not in path.attrs.get("d", "").lower()


def test_table_values_and_folding(default_profile: Profile) -> None:
    _, tree = render(default_profile)
    bn = _row(tree, 1)
    assert bn.attrs["data-status"] == "folded"
    assert "folded into 'features.0'" in bn.text()
    conv = _row(tree, 0)
    expected = f"{default_profile.layers[0].delta_h:,.1f}"
    assert expected in [td.text() for td in conv.find_all("td")]
    total = default_profile.total_delta_h()
    assert total is not None and math.isfinite(total)
    assert f"{total:,.1f} nats" in tree.by_id("summary").text()


def test_cumulative_curve_counts_folded_batchnorm_once(default_profile: Profile) -> None:
    _, tree = render(default_profile)
    plot = tree.by_id("plot-cumulative")
    marks = [n for n in plot.iter() if "mk" in n.classes() and n.tag == "path"]
    counted = [
        layer
        for layer in default_profile.analysed
        if layer.folded_into is None and layer.delta_h is not None
    ]
    assert len(marks) == len(counted) == 4
    last = marks[-1].find_all("title")[0].text()
    total = default_profile.total_delta_h()
    assert total is not None
    assert f"cumulative ΔH = {total:,.1f} nats" in last


@pytest.mark.parametrize("profile", [unanalysed_profile(), None], ids=["unanalysed", "empty"])
def test_profile_without_analysed_layers_renders(profile: Profile | None) -> None:
    if profile is None:
        profile = Profile(source="empty", format="torch", input_shape=None, layers=())
    html, tree = render(profile)
    assert table_names(tree) == [layer.name for layer in profile.layers]
    assert html.count("no finite values to plot") == 3
    assert "Total ΔH (paper)" in html and "— nats" in html
    if profile.layers:
        reasons = tree.by_id("not-analysed").text()
        assert "activation" in reasons and "no rule" in reasons


def test_empirical_chart_and_columns_when_present() -> None:
    _, tree = render(hostile_profile(empirical=True))
    plot = tree.by_id("plot-empirical")
    assert "Empirical vs analytic" in plot.text()
    headers = [th.text() for th in tree.by_id("layer-table").find_all("th")]
    assert "ΔH/dim emp." in headers and "Estimator" in headers
    method = " ".join(tree.by_id("method").text().split())
    assert "Estimator: gaussian; samples: 256." in method
    # a measured layer without weights (no depth) is on the chart, at its table position
    refs = {n.attrs.get("data-ref") for n in plot.iter() if "mk" in n.classes()}
    assert {"layer-0", "layer-2", "layer-5", "layer-6"} <= refs
    _, tree = render(hostile_profile(empirical=False))
    assert "plot-empirical" not in {n.attrs.get("id") for n in tree.iter()}
    headers = [th.text() for th in tree.by_id("layer-table").find_all("th")]
    assert "ΔH/dim emp." not in headers


def test_comparison_verdict_in_plain_words() -> None:
    _, tree = render(hostile_profile(), comparison=FakeComparison())
    section = tree.by_id("comparison").text()
    assert "0.62" in section or "0.63" in section
    assert "classifier-cnn <v1>" in section
    assert "2 of 3 compared layers are outside" in " ".join(section.split())
    assert EVIL in section and "2.75 half band widths above" in section
    assert "-1.50 half band widths below" in section
    assert "oob" in _row(tree, 2).classes()
    assert any(n.tag == "circle" and "ring" in n.classes() for n in tree.iter())
    headers = [th.text() for th in tree.by_id("layer-table").find_all("th")]
    assert "Deviation" in headers


def test_comparison_as_mapping_and_all_in_band() -> None:
    comparison = {
        "score": 1.0,
        "reference": type("Ref", (), {"name": "ref-object"})(),
        "layers": [{"name": "head", "deviation": 0.1, "in_band": True}],
    }
    _, tree = render(hostile_profile(), comparison=comparison)
    text = " ".join(tree.by_id("comparison").text().split())
    assert "ref-object" in text and "All 1 compared layers are inside" in text


def test_meta_rows_and_sample_count() -> None:
    _, tree = render(hostile_profile(), meta={"samples": 512, "dataset": "mnist5k <5k>"})
    details = " ".join(tree.by_id("summary").text().split())
    assert "mnist5k <5k>" in details and "samples512 " in details
    assert "samples: 512" in " ".join(tree.by_id("method").text().split())


def test_render_report_rejects_other_types() -> None:
    with pytest.raises(TypeError, match="expects a Profile"):
        render_report({"layers": []})  # type: ignore[arg-type]


# --------------------------------------------------------------------------- writing


def test_write_report_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "sub" / "report.html"
    written = write_report(hostile_profile(), target)
    assert written == target and target.read_text(encoding="utf-8").startswith("<!DOCTYPE")
    before = target.read_bytes()

    def broken(*args: object, **kwargs: object) -> str:
        raise RuntimeError("render failed")

    monkeypatch.setattr("entropy_probe.report.render_html", broken)
    with pytest.raises(RuntimeError, match="render failed"):
        write_report(hostile_profile(), target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.html"]


def test_layer_entropy_fields_reach_the_table() -> None:
    """Every LayerEntropy field that matters has a column (guards against a new field
    silently missing from the report)."""
    _, tree = render(hostile_profile(), comparison=FakeComparison())
    headers = {th.text() for th in tree.by_id("layer-table").find_all("th")}
    expected = {
        "#", "Layer", "Kind", "Status", "Weight", "Output", "Positions", "Depth", "ΔH",
        "ΔH/dim", "Shape s", "Shape excess", "ΔH spectral", "ΔH raw", "H(out)/dim emp.",
        "ΔH/dim emp.", "Estimator", "Deviation", "Note",
    }  # fmt: skip
    assert headers == expected
    shown = {
        "name", "kind", "op_type", "status", "reason", "weight_shape", "in_shape", "out_shape",
        "positions", "delta_h", "delta_h_per_dim", "delta_h_spectral", "spectral_shape",
        "spectral_shape_random", "delta_h_raw", "folded_batchnorm", "folded_into", "calls",
        "depth", "empirical",
    }  # fmt: skip
    assert set(LayerEntropy.__dataclass_fields__) == shown
    assert Status.SKIPPED.value in {r.attrs["data-status"] for r in tree.find_all("tr")[1:]}
