"""Layers the comparison left out are in the report, with their reasons (section, table, JSON)."""

from __future__ import annotations

import json
import math
from typing import Any

from entropy_probe.entropy.profile import LayerEntropy, Profile
from entropy_probe.enums import Status
from entropy_probe.patterns.select import compare_with
from entropy_probe.report import render_report

from ._html import Node, parse
from ._profiles import EVIL_END, hostile_profile


def _data(tree: Node) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(tree.by_id("report-data").text())
    return data


def _words(node: Node) -> str:
    return " ".join(node.text().split())


def _deviation_cell(tree: Node, row_id: str) -> Node:
    cells = tree.by_id(row_id).find_all("td")
    headers = [th.text() for th in tree.by_id("layer-table").find_all("th")]
    return cells[headers.index("Deviation")]


def test_random_init_resnet_lists_its_singular_layers_as_not_compared(
    random_resnet_report: Node,
) -> None:
    """timm zero-initialises each residual block's last BatchNorm γ: after folding, those
    convolutions are singular and the comparison leaves them out. The report said "12 of 12
    compared layers" and never named them."""
    tree = random_resnet_report
    expected = ["layer1.0.conv2", "layer2.0.conv2", "layer3.0.conv3", "layer4.0.conv2"]

    comparison = _data(tree)["comparison"]
    assert [item["name"] for item in comparison["not_compared"]] == expected
    compared = {layer["name"] for layer in comparison["layers"]}
    assert compared.isdisjoint(expected)
    for item in comparison["not_compared"]:
        assert item["reason"].startswith("singular (ΔH = −inf) only after folding")

    section = tree.by_id("not-compared")
    assert "4 analysed layers not compared" in _words(section)
    assert "only after folding in its BatchNorm (γ has zeros)" in _words(section)
    links = {a.text(): a.attrs["href"] for a in section.find_all("a")}
    assert sorted(links) == sorted(expected)
    for name, href in links.items():
        row = tree.by_id(href[1:])
        assert row.find_all("td", class_="name")[0].text() == name
        cell = _deviation_cell(tree, href[1:])
        assert cell.text() == "not compared" and "singular" in cell.attrs["title"]


def test_a_real_comparison_object_reaches_the_report(default_profile: Profile) -> None:
    """The embedded default model's first convolution has one input channel: its first-tap
    matrix has a single singular value, so it has no shape and is not compared."""
    comparison = compare_with(default_profile, "classifier_cnn")
    assert comparison.not_compared == ("features.0",)
    tree = parse(render_report(default_profile, comparison=comparison))
    assert _data(tree)["comparison"]["not_compared"] == [
        {
            "name": "features.0",
            "reason": "a single singular value: its shape is 0 whatever the weights",
        }
    ]
    assert "1 analysed layer not compared" in _words(tree.by_id("not-compared"))
    assert _deviation_cell(tree, "layer-0").text() == "not compared"


def _layer(name: str, kind: str, depth: float, **fields: Any) -> LayerEntropy:
    base: dict[str, Any] = {
        "op_type": kind,
        "status": Status.OK,
        "delta_h": -1.0,
        "delta_h_per_dim": -0.1,
        "spectral_shape": -0.4,
        "spectral_shape_random": -0.3,
        "depth": depth,
    }
    return LayerEntropy(name=name, kind=kind, **{**base, **fields})


def test_each_reason_and_the_comparison_json_form() -> None:
    """A comparison given as its JSON (``Comparison.to_dict``: names only) gets each layer's
    reason from the profile; ``not_defined`` layers and given reasons are kept."""
    profile = Profile(
        source="hand-built",
        format="torch",
        input_shape=(3, 8, 8),
        layers=(
            _layer("c0", "conv2d", 0.0),
            _layer("c1", "conv2d", 0.25, status=Status.SINGULAR, delta_h=-math.inf),
            _layer("c2", "conv2d", 0.5, spectral_shape=0.0, spectral_shape_random=0.0),
            _layer("c3", "conv2d", 0.75, spectral_shape_random=-0.001),
            _layer("fc", "linear", 1.0),
        ),
    )
    comparison = {
        "score": 0.5,
        "reference": "fam",
        "quantity": "relative_excess",
        "layers": [{"name": "c0", "deviation": 0.2, "in_band": True}],
        "not_compared": ["c1", "c2", "fc", {"name": "elsewhere", "reason": "given <why>"}],
        "not_defined": ["c3"],
    }
    html = render_report(profile, comparison=comparison)
    tree = parse(html)
    reasons = {i["name"]: i["reason"] for i in _data(tree)["comparison"]["not_compared"]}
    assert list(reasons) == ["c1", "c2", "fc", "elsewhere", "c3"]
    assert reasons["c1"] == "singular (ΔH = −inf): no finite relative_excess to compare"
    assert reasons["c2"] == "a single singular value: its shape is 0 whatever the weights"
    assert reasons["fc"] == "the reference band has no dense layers"
    assert reasons["elsewhere"] == "given <why>"
    assert reasons["c3"].startswith("relative_excess is not defined here")
    text = _words(tree.by_id("not-compared"))
    assert "5 analysed layers not compared" in text and "given <why>" in text
    assert "given <why>" not in html  # escaped
    # a name that is no row is listed as text, not as a link
    codes = tree.by_id("not-compared").find_all("code")
    assert "elsewhere" in [c.text() for c in codes]
    assert "elsewhere" not in [a.text() for a in tree.by_id("not-compared").find_all("a")]


def test_no_not_compared_section_when_every_layer_was_compared() -> None:
    comparison = {"score": 1.0, "reference": "r", "layers": [], "not_compared": []}
    tree = parse(render_report(hostile_profile(), comparison=comparison))
    assert "not-compared" not in {n.attrs.get("id") for n in tree.iter()}
    assert _data(tree)["comparison"]["not_compared"] == []
    # a hostile name in not_compared is text, in the section and in the JSON
    comparison["not_compared"] = [EVIL_END]
    html = render_report(hostile_profile(), comparison=comparison)
    tree = parse(html)
    assert EVIL_END not in html
    assert [i["name"] for i in _data(tree)["comparison"]["not_compared"]] == [EVIL_END]
    assert "singular (ΔH = −inf)" in _words(tree.by_id("not-compared"))
