"""The summary counts maps (a folded BatchNorm is counted in its layer), renders metadata for
people, and says exactly what its time covers."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from entropy_probe.cli import main
from entropy_probe.entropy.profile import LayerEntropy, Profile
from entropy_probe.enums import Status
from entropy_probe.report import render_report

from ._html import Node, parse
from ._profiles import hostile_profile


def _card(tree: Node, label: str, *, details: bool = False) -> Node:
    """The summary (or details) card whose <dt> is ``label``."""
    box = [
        dl for dl in tree.by_id("summary").find_all("dl") if ("details" in dl.classes()) == details
    ]
    cards = [c for c in box[0].find_all("div") if c.find_all("dt")[0].text() == label]
    assert len(cards) == 1, [c.find_all("dt")[0].text() for c in box[0].find_all("div")]
    return cards[0].find_all("dd")[0]


def _words(node: Node) -> str:
    return " ".join(node.text().split())


def _singular_callout(tree: Node) -> Node:
    return next(d for d in tree.by_id("summary").find_all("div") if "bad" in d.classes())


# --------------------------------------------------------------------------- item 2: counts


def _folded_singular_profile() -> Profile:
    """conv → BatchNorm with a zero γ (folded: the conv is singular, the BN row too) → linear."""
    inf = -math.inf
    return Profile(
        source="folded-zero-gamma",
        format="torch",
        input_shape=(3, 8, 8),
        layers=(
            LayerEntropy(
                "conv", "conv2d", "Conv2d", Status.SINGULAR, delta_h=inf, delta_h_per_dim=inf,
                delta_h_raw=-3.0, folded_batchnorm="bn", depth=0.0,
            ),
            LayerEntropy(
                "bn", "batchnorm", "BatchNorm2d", Status.SINGULAR, delta_h=inf,
                delta_h_per_dim=inf, folded_into="conv",
                reason="folded into 'conv' (counted there)",
            ),
            LayerEntropy("act", "relu", "ReLU", Status.NOT_ANALYTIC, reason="activation"),
            LayerEntropy(
                "fc", "linear", "Linear", Status.OK, delta_h=-1.0, delta_h_per_dim=-0.1,
                depth=1.0,
            ),
        ),
    )  # fmt: skip


def test_a_folded_batchnorm_is_counted_in_its_layer_not_again() -> None:
    tree = parse(render_report(_folded_singular_profile()))
    layers = _words(_card(tree, "Layers"))
    assert layers.startswith("2 of 3 analysed")  # conv, fc; act not analytic; bn is in conv
    assert "1 singular · 0 skipped · 1 not analytic" in layers
    assert "1 BatchNorm folded into the layer before it, counted there" in layers
    callout = _singular_callout(tree)
    assert _words(callout).startswith("1 singular layer (ΔH = −inf)")
    assert "1 of them is singular only after folding" in _words(callout)
    assert [c.text() for c in callout.find_all("code")] == ["conv"]
    # the table still shows every row, the BatchNorm as folded
    assert tree.by_id("layer-1").attrs["data-status"] == "folded"


def test_random_init_resnet_counts_maps(random_resnet_report: Node) -> None:
    """timm:test_resnet at random init: 4 convolutions singular after folding a γ = 0
    BatchNorm; the report said 8 singular layers and counted 31 layers."""
    tree = random_resnet_report
    rows = tree.by_id("layer-table").find_all("tr")[1:]
    folded = [r for r in rows if r.attrs["data-status"] == "folded"]
    assert len(rows) == 31 and len(folded) == 15
    layers = _words(_card(tree, "Layers"))
    assert layers.startswith("16 of 16 analysed") and "4 singular" in layers
    assert "15 BatchNorms folded into the layer before them, counted there" in layers
    callout = _singular_callout(tree)
    assert _words(callout).startswith("4 singular layers")
    names = [c.text() for c in callout.find_all("code")]
    assert names == ["layer1.0.conv2", "layer2.0.conv2", "layer3.0.conv3", "layer4.0.conv2"]


def test_hostile_profile_counts() -> None:
    tree = parse(render_report(hostile_profile()))
    layers = _words(_card(tree, "Layers"))
    assert layers.startswith("4 of 6 analysed")
    assert "1 singular · 1 skipped · 1 not analytic; 1 BatchNorm folded" in layers


# --------------------------------------------------------------------------- items 3 and 4


def _empirical_meta(**overrides: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "estimator": "gaussian",
        "k": 3,
        "samples": 256,
        "seed": 0,
        "max_dims": 256,
        "elapsed_s": 2.0,
        "stored_bytes": 3 * 2**20,
        "projection_bytes": 512,
        "skipped": {},
        "data": "256 digits",
    }
    return {"empirical": {**meta, **overrides}}


def _with_meta(meta: dict[str, Any], elapsed_s: float = 0.5) -> Profile:
    return dataclasses.replace(hostile_profile(), meta=meta, elapsed_s=elapsed_s)


def _entries(dd: Node) -> dict[str, str]:
    return {
        li.find_all("span")[0].text(): li.text()[len(li.find_all("span")[0].text()) :].strip()
        for li in dd.find_all("li")
    }


def test_empirical_details_are_readable_and_leave_out_empty_skipped() -> None:
    tree = parse(render_report(_with_meta(_empirical_meta())))
    entries = _entries(_card(tree, "empirical", details=True))
    assert "skipped" not in entries
    assert entries["time"] == "2.00 s"
    assert entries["stored"] == "3.0 MiB" and entries["projection"] == "512 bytes"
    assert entries["max dims"] == "256" and entries["data"] == "256 digits"
    assert "{}" not in tree.by_id("summary").text()


def test_skipped_taps_are_a_readable_list() -> None:
    meta = _empirical_meta(skipped={"layer1.relu": "no output <tensor>", "pool": ""})
    html = render_report(_with_meta(meta))
    entries = _entries(_card(parse(html), "empirical", details=True))
    assert entries["skipped"] == "layer1.relu (no output <tensor>); pool"
    assert "no output <tensor>" not in html  # escaped
    assert "{" not in entries["skipped"] and "'" not in entries["skipped"]


def test_time_covers_analytic_and_empirical_and_says_so() -> None:
    tree = parse(render_report(_with_meta(_empirical_meta(), elapsed_s=0.5)))
    assert [n.text() for n in tree.by_id("summary").find_all("dt")].count("Time taken") == 0
    text = _words(_card(tree, "Compute time"))
    assert text.startswith("2.50 s")  # 0.5 s analytic + 2.0 s empirical
    assert "analytic 500 ms + empirical 2.00 s" in text
    assert "loading the model and the data not included" in text
    tree = parse(render_report(_with_meta({}, elapsed_s=0.012)))
    text = _words(_card(tree, "Compute time"))
    assert text.startswith("12 ms") and "the analytic profile" in text


def test_data_digits_report_end_to_end(tmp_path: Path) -> None:
    """``--data digits`` on the embedded default model: no raw dict, both times."""
    target = tmp_path / "d.html"
    args = "report --data digits --samples 64 --method paper --device cpu --reference none"
    result = CliRunner().invoke(main, [*args.split(), "-o", str(target)])
    assert result.exit_code == 0, result.output
    tree = parse(target.read_text(encoding="utf-8"))
    assert "{}" not in tree.by_id("summary").text()
    entries = _entries(_card(tree, "empirical", details=True))
    assert "skipped" not in entries
    assert entries["samples"] == "64" and entries["estimator"] == "gaussian"
    text = _words(_card(tree, "Compute time"))
    assert "analytic " in text and " + empirical " in text
