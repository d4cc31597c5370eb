"""Patterns over depth, family bands and the comparison score (DESIGN.md 2.6–2.7)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from entropy_probe import plugins
from entropy_probe.api import profile_loaded
from entropy_probe.default_model import load_default_model
from entropy_probe.entropy.profile import LayerEntropy, Profile
from entropy_probe.entropy.rules import DenseRule
from entropy_probe.enums import Status
from entropy_probe.errors import EntropyProbeError
from entropy_probe.loading import LoadedModel
from entropy_probe.patterns.compare import (
    MIN_HALF_WIDTH,
    _weighted_quantile,
    compare_profile,
    family_band,
)
from entropy_probe.patterns.pattern import (
    DepthCurve,
    LayerGroup,
    Quantity,
    layer_group,
    layer_value,
    no_group_reason,
    pattern_points,
    profile_pattern,
)
from entropy_probe.patterns.reference import Provenance, Reference, reference_from_profile
from entropy_probe.patterns.select import Traits, guess_family
from entropy_probe.plugins import PluginRegistrar, build_registry

pytestmark = pytest.mark.usefixtures("builtin_plugins_only")

PROV = Provenance(checkpoint="test", sha256="", data="none")


def layer(name: str, kind: str, depth: float, s: float, base: float = -0.5) -> LayerEntropy:
    return LayerEntropy(
        name=name,
        kind=kind,
        op_type=kind,
        status=Status.OK,
        depth=depth,
        spectral_shape=s,
        spectral_shape_random=base,
        delta_h_per_dim=s,
        in_shape=(4,),  # traced shapes: the layer order is an execution order
        out_shape=(4,),
    )


def make_profile(*layers: LayerEntropy, input_shape: tuple[int, ...] = (1, 8, 8)) -> Profile:
    return Profile(source="t", format="test", input_shape=input_shape, layers=tuple(layers))


def ref(name: str, points: dict[LayerGroup, list[tuple[float, float]]]) -> Reference:
    groups = {g: tuple(p) for g, p in points.items()}
    return Reference(name, "fam", "arch", PROV, {Quantity.SHAPE_EXCESS: groups}, layers=1)


def default_profile(model: torch.nn.Module | None = None) -> Profile:
    module = model if model is not None else load_default_model()
    return profile_loaded(
        LoadedModel(source="default", format="torch", module=module, input_shape=(1, 28, 28)),
        progress=False,
    )


# -- depth curves --------------------------------------------------------------------------


def test_depth_curve_interpolates_and_clamps() -> None:
    curve = DepthCurve((0.0, 0.5, 1.0), (1.0, 3.0, -1.0))
    assert curve.at(0.25) == pytest.approx(2.0)
    assert curve.at(0.75) == pytest.approx(1.0)
    assert curve.at(-1.0) == 1.0 and curve.at(2.0) == -1.0


def test_depth_curve_from_points_averages_equal_depths() -> None:
    curve = DepthCurve.from_points([(0.5, 1.0), (0.0, 4.0), (0.5, 3.0)])
    assert curve.depths == (0.0, 0.5) and curve.values == (4.0, 2.0)


@pytest.mark.parametrize(
    ("depths", "values"), [((), ()), ((0.0, 1.0), (1.0,)), ((1.0, 0.0), (1.0, 2.0))]
)
def test_depth_curve_rejects_bad_input(
    depths: tuple[float, ...], values: tuple[float, ...]
) -> None:
    with pytest.raises(ValueError):
        DepthCurve(depths, values)


# -- per-layer quantity ------------------------------------------------------------------------


def test_shape_excess_is_shape_minus_random_baseline() -> None:
    item = layer("a", "conv2d", 0.0, -0.8, base=-0.5)
    assert layer_value(item, Quantity.SHAPE_EXCESS) == pytest.approx(-0.3)
    assert layer_value(item, Quantity.SPECTRAL_SHAPE) == pytest.approx(-0.8)


def test_a_single_singular_value_has_no_shape() -> None:
    item = layer("a", "conv2d", 0.0, 0.0, base=0.0)
    assert layer_value(item, Quantity.SHAPE_EXCESS) is None
    assert layer_value(item, Quantity.DELTA_H_PER_DIM) == 0.0


def test_pattern_points_leave_out_batchnorm_singular_and_skipped() -> None:
    bn = replace(layer("bn", "batchnorm", 0.5, -0.1), depth=None)
    singular = replace(layer("s", "linear", 0.5, -math.inf), status=Status.SINGULAR)
    skipped = replace(layer("k", "conv2d", 0.5, -0.2), status=Status.SKIPPED)
    kept = layer("ok", "linear", 1.0, -0.9)
    points = pattern_points(make_profile(bn, singular, skipped, kept))
    assert [(p[0].name, p[1]) for p in points] == [("ok", LayerGroup.DENSE)]


def test_profile_pattern_of_the_default_model() -> None:
    prof = default_profile()
    pattern = profile_pattern(prof)
    assert set(pattern.curves) == {LayerGroup.CONV, LayerGroup.DENSE}
    for item, group, value in pattern_points(prof):
        assert item.depth is not None
        assert pattern.target(group, item.depth) == pytest.approx(value)


def test_profile_pattern_needs_a_layer() -> None:
    with pytest.raises(EntropyProbeError, match="no analysed dense or conv layer"):
        profile_pattern(make_profile())


# -- bands ----------------------------------------------------------------------------------


def test_weighted_quantile_midpoint_rule() -> None:
    assert _weighted_quantile([1.0, 3.0], [1.0, 1.0], 0.5) == pytest.approx(2.0)
    assert _weighted_quantile([1.0, 3.0], [1.0, 1.0], 0.1) == 1.0
    # cumulative midpoints 1/8, 3/8, 6/8: q = 1/2 lies a third of the way from 2 to 10
    assert _weighted_quantile([1.0, 2.0, 10.0], [1.0, 1.0, 2.0], 0.5) == pytest.approx(14 / 3)


def test_band_weights_references_equally_whatever_their_layer_count() -> None:
    many = ref("many", {LayerGroup.CONV: [(d / 10, -1.0) for d in range(11)]})
    few = ref("few", {LayerGroup.CONV: [(0.0, 0.0), (1.0, 0.0)]})
    band = family_band("fam", [many, few])
    point = band.at(LayerGroup.CONV, 0.5)
    assert point is not None
    # "many" has 3 layers within the window (weight 1/3 each), "few" none, so its 2 nearest
    # count (1/2 each): one vote per reference puts the median between them (midpoint rule:
    # -0.6), where counting layers would have given -1
    assert point.center == pytest.approx(-0.6)


def test_band_never_thinner_than_the_floor() -> None:
    band = family_band("fam", [ref("a", {LayerGroup.DENSE: [(0.5, -0.4)]})])
    point = band.at(LayerGroup.DENSE, 0.3)
    assert point is not None
    assert point.upper - point.center == pytest.approx(MIN_HALF_WIDTH)
    assert point.center - point.lower == pytest.approx(MIN_HALF_WIDTH)
    assert band.at(LayerGroup.CONV, 0.3) is None


def test_band_needs_members() -> None:
    with pytest.raises(EntropyProbeError, match="no members"):
        family_band("fam", [])


# -- comparison ---------------------------------------------------------------------------------


def test_deviation_in_half_band_widths_and_score() -> None:
    band = family_band("fam", [ref("a", {LayerGroup.DENSE: [(0.0, -1.0), (1.0, -1.0)]})])
    half = MIN_HALF_WIDTH
    prof = make_profile(
        layer("in", "linear", 0.0, -1.0 + 0.5 * half - 0.5),
        layer("edge", "linear", 0.5, -1.0 - 1.5 * half - 0.5),
        layer("far", "linear", 1.0, -1.0 + 3.0 * half - 0.5),
    )
    result = compare_profile(prof, band)
    got = {x.name: (x.deviation, x.in_band) for x in result.layers}
    assert got["in"][0] == pytest.approx(0.5) and got["in"][1]
    assert got["edge"][0] == pytest.approx(-1.5) and not got["edge"][1]
    assert got["far"][0] == pytest.approx(3.0) and not got["far"][1]
    # "edge" is outside on the structured side (away from the random-init value 0): out of
    # band but full credit; "far" is on the random side: no credit beyond 2 half widths
    assert not got_side(result, "edge") and got_side(result, "far")
    assert result.score == pytest.approx((1.0 + 1.0 + 0.0) / 3)
    assert [x.name for x in result.out_of_band] == ["edge", "far"]


def got_side(result: object, name: str) -> bool | None:
    return next(x.toward_random for x in result.layers if x.name == name)  # type: ignore[attr-defined]


def test_layers_without_a_band_are_listed_not_scored() -> None:
    band = family_band("fam", [ref("a", {LayerGroup.DENSE: [(0.0, -1.0)]})])
    result = compare_profile(make_profile(layer("c", "conv2d", 0.0, -1.0)), band)
    assert result.score is None and result.not_compared == ("c",)
    assert "no layer could be compared" in result.verdict()


class _PluginDense(DenseRule):
    kind = "plug_dense"
    group = "conv"  # a plugin may put its layers in either group


class _PluginPlain(DenseRule):
    kind = "plug_plain"
    group = None


@pytest.fixture
def plugin_rules(builtin_plugins_only: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The built-ins plus two plugin rules (plugin 'plug'): one in the conv group, one in none."""
    registry = build_registry(autoload=False)
    registrar = PluginRegistrar(registry, "plug")
    registrar.add_rule(_PluginDense())
    registrar.add_rule(_PluginPlain())
    monkeypatch.setattr(plugins, "_registry", registry)


@pytest.mark.usefixtures("plugin_rules")
def test_layer_group_comes_from_the_rule_not_the_kind_name() -> None:
    assert layer_group("linear") is LayerGroup.DENSE
    for kind in ("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose3d"):
        assert layer_group(kind) is LayerGroup.CONV
    assert layer_group("batchnorm") is None
    assert layer_group("plug_dense") is LayerGroup.CONV  # what its rule declares
    assert layer_group("plug_plain") is None
    assert layer_group("conv_lora") is None  # no rule registered: no guess from the name
    assert no_group_reason("plug_plain") == (
        "kind 'plug_plain' belongs to no layer group: its rule declares none "
        "(LayerRule.group, plugin 'plug')"
    )
    assert no_group_reason("conv_lora").startswith(
        "kind 'conv_lora' belongs to no layer group: no rule is registered for it"
    )


@pytest.mark.usefixtures("plugin_rules")
def test_layers_of_no_group_are_listed_not_compared_with_the_reason() -> None:
    band = family_band(
        "fam",
        [ref("a", {LayerGroup.DENSE: [(0.0, -1.0)], LayerGroup.CONV: [(0.0, -1.0)]})],
    )
    bn = replace(layer("bn", "batchnorm", 0.5, -0.1), depth=None)
    prof = make_profile(
        layer("d", "linear", 0.0, -1.5),
        bn,
        layer("p", "plug_dense", 0.25, -1.5),
        layer("x", "plug_plain", 0.5, -1.5),
        layer("y", "plug_plain", 0.75, -1.5),
        layer("gone", "conv_lora", 1.0, -1.5),
    )
    result = compare_profile(prof, band)
    assert [(x.name, x.group) for x in result.layers] == [
        ("d", LayerGroup.DENSE),
        ("p", LayerGroup.CONV),
    ]
    assert result.not_compared == ("x", "y", "gone")  # not the BatchNorm: it has no depth
    assert [name for name, _ in result.no_group] == ["x", "y", "gone"]
    plain, gone = no_group_reason("plug_plain"), no_group_reason("conv_lora")
    assert result.notes() == [f"{plain}; not compared: x, y", f"{gone}; not compared: gone"]
    assert result.to_dict()["not_compared"] == ["x", "y", "gone"]


def test_a_network_agrees_fully_with_itself() -> None:
    prof = default_profile()
    own = reference_from_profile(
        prof, name="self", family="fam", architecture="cnn", provenance=PROV
    )
    result = compare_profile(prof, family_band("fam", [own]))
    assert result.score == pytest.approx(1.0)
    assert all(x.in_band for x in result.layers)
    assert result.no_group == () and result.notes() == []  # built-ins: every kind has a group
    data = result.to_dict()
    assert data["schema"] == "entropy_probe.comparison/1"
    assert {"reference", "score", "layers"} <= set(data)
    assert set(data["layers"][0]) >= {"name", "deviation", "in_band"}


# -- scale controls (DESIGN.md 2.7) ----------------------------------------------------------


def _reference_band() -> object:
    own = reference_from_profile(
        default_profile(), name="self", family="fam", architecture="cnn", provenance=PROV
    )
    return family_band("fam", [own])


def test_rescaling_every_layer_does_not_change_the_comparison() -> None:
    band = _reference_band()
    model = load_default_model()
    with torch.no_grad():
        for i, module in enumerate(m for m in model.modules() if hasattr(m, "weight")):
            module.weight.mul_(0.1 * (i + 2))  # type: ignore[operator]
    scaled = compare_profile(default_profile(model), band)  # type: ignore[arg-type]
    plain = compare_profile(default_profile(), band)  # type: ignore[arg-type]
    assert scaled.score == pytest.approx(plain.score, abs=1e-9)


def test_function_preserving_conv_rescale_in_a_bn_network_changes_nothing() -> None:
    """Scale a conv by a and its BatchNorm's running statistics to match: the network computes
    the same function, so even the raw folded ΔH/dim must not move."""
    model = load_default_model().eval()
    x = torch.rand(4, 1, 28, 28)
    before = model(x)
    conv, bn = model.features[4], model.features[5]
    a = 7.0
    with torch.no_grad():
        conv.weight.mul_(a)
        conv.bias.mul_(a)
        bn.running_mean.mul_(a)
        bn.running_var.mul_(a * a)
        bn.eps *= a * a  # var + eps scales exactly by a²
    torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-4)
    plain, scaled = default_profile(), default_profile(model)
    for q in Quantity:
        a_vals = [v for _, _, v in pattern_points(plain, q)]
        b_vals = [v for _, _, v in pattern_points(scaled, q)]
        assert a_vals == pytest.approx(b_vals, abs=1e-6), q


# -- family choice ----------------------------------------------------------------------------


def test_auto_family_from_the_architecture() -> None:
    families = ["classifier_cnn", "conv_autoencoder", "dense_autoencoder", "encoder_decoder"]
    classifier = default_profile()
    assert guess_family(classifier, families)[0] == "classifier_cnn"
    dense_ae = make_profile(
        replace(layer("enc", "linear", 0.0, -0.5), out_shape=(32,)),
        replace(layer("dec", "linear", 1.0, -0.5), out_shape=(64,)),
    )
    assert guess_family(dense_ae, families)[0] == "dense_autoencoder"
    segmenter = make_profile(
        replace(layer("enc", "conv2d", 0.0, -0.5), out_shape=(16, 4, 4)),
        replace(layer("head", "conv2d", 1.0, -0.5), out_shape=(2, 8, 8)),
        input_shape=(1, 8, 8),
    )
    assert Traits.of(segmenter).dense_prediction
    assert guess_family(segmenter, families)[0] == "encoder_decoder"
    conv_ae = make_profile(
        replace(layer("enc", "conv2d", 0.0, -0.5), out_shape=(16, 4, 4)),
        replace(layer("dec", "conv_transpose2d", 1.0, -0.5), out_shape=(1, 8, 8)),
        input_shape=(1, 8, 8),
    )
    assert guess_family(conv_ae, families)[0] == "conv_autoencoder"
    family, why = guess_family(conv_ae, ["classifier_cnn", "encoder_decoder"])
    assert family == "encoder_decoder" and "per-pixel" in why


# -- relative_excess: not compared where |E[s]| is near zero -------------------------------------


def relative_ref(name: str, layers: list[tuple[float, float, float]]) -> Reference:
    """A dense reference from (depth, shape_excess, E[s]) per layer, stored as
    reference_from_profile stores it (relative_excess = shape_excess / |E[s]|)."""
    excess = tuple((d, ex) for d, ex, _ in layers)
    relative = tuple((d, ex / abs(base)) for d, ex, base in layers)
    points = {
        Quantity.SHAPE_EXCESS: {LayerGroup.DENSE: excess},
        Quantity.RELATIVE_EXCESS: {LayerGroup.DENSE: relative},
    }
    return Reference(name, "fam", "arch", PROV, points, layers=len(layers))


def test_relative_excess_band_leaves_out_layers_with_a_near_zero_baseline() -> None:
    """A 1280→4 head has E[s] ≈ −0.0009: its −0.56 shape excess is −639 relative. Such a
    layer would set a band hundreds of units away from every other network's; it is left
    out (and counted), the layers of ordinary shape stay."""
    head = relative_ref("head", [(0.5, -0.5, -0.5), (1.0, -0.5625, -0.00088)])
    band = family_band("fam", [head], Quantity.RELATIVE_EXCESS)
    assert band.left_out == (("head", 1),)
    point = band.at(LayerGroup.DENSE, 1.0)
    assert point is not None and point.center == pytest.approx(-1.0)  # the 0.5 layer's
    assert head.comparable_points(Quantity.SHAPE_EXCESS)[LayerGroup.DENSE] == (
        (0.5, -0.5),
        (1.0, -0.5625),
    )  # only relative_excess is affected
    assert head.pattern(Quantity.RELATIVE_EXCESS).curves[LayerGroup.DENSE].values == (-1.0,)
    only_head = relative_ref("only", [(1.0, -0.5625, -0.00088)])
    with pytest.raises(EntropyProbeError, match=r"where it is defined \(\|E\[s\]\| >= 0.01\)"):
        family_band("fam", [only_head], Quantity.RELATIVE_EXCESS)


def test_relative_excess_band_floor_is_the_shape_excess_floor_in_its_units() -> None:
    """relative = excess / |E[s]|: the ±MIN_HALF_WIDTH floor of shape excess becomes
    ±MIN_HALF_WIDTH / |E[s]| (a single reference's band was ±0.05 around a value of −28)."""
    band = family_band("fam", [relative_ref("a", [(0.5, -0.45, -0.016)])], "relative_excess")
    point = band.at(LayerGroup.DENSE, 0.5)
    assert point is not None
    assert point.center == pytest.approx(-0.45 / 0.016)
    assert point.upper - point.center == pytest.approx(MIN_HALF_WIDTH / 0.016)
    plain = family_band("fam", [relative_ref("a", [(0.5, -0.45, -0.016)])], "shape_excess")
    assert plain.at(LayerGroup.DENSE, 0.5).upper - (-0.45) == pytest.approx(MIN_HALF_WIDTH)  # type: ignore[union-attr]


def test_relative_excess_profile_layers_with_a_near_zero_baseline_are_not_compared() -> None:
    band = family_band(
        "fam", [relative_ref("a", [(0.0, -0.5, -0.5), (1.0, -0.5, -0.5)])], "relative_excess"
    )
    prof = make_profile(
        layer("wide", "linear", 0.0, -1.0, base=-0.5),
        layer("head", "linear", 1.0, -0.5, base=-0.001),
    )
    result = compare_profile(prof, band)
    assert [x.name for x in result.layers] == ["wide"]
    assert result.not_defined == ("head",) and result.not_compared == ()
    assert "relative_excess is not defined" in result.notes()[0]
    assert result.to_dict()["not_defined"] == ["head"]
    # the stored value keeps every layer (rebuilds must match the shipped file)
    assert layer_value(prof.layers[1], Quantity.RELATIVE_EXCESS) == pytest.approx(-0.499 / 0.001)
    assert set(profile_pattern(prof, "relative_excess").curves[LayerGroup.DENSE].depths) == {0.0}
    # the default quantity compares both
    plain = compare_profile(prof, family_band("fam", [relative_ref("a", [(0.0, -0.5, -0.5)])]))
    assert [x.name for x in plain.layers] == ["wide", "head"] and plain.notes() == []


# -- untrained sources ----------------------------------------------------------------------------


def test_a_random_init_profile_is_no_reference_unless_allowed() -> None:
    prof = replace(default_profile(), pretrained=False)
    with pytest.raises(EntropyProbeError, match=r"random initial weights.*--allow-untrained"):
        reference_from_profile(prof, name="r", family="fam", architecture="cnn", provenance=PROV)
    made = reference_from_profile(
        prof, name="r", family="fam", architecture="cnn", provenance=PROV, allow_untrained=True
    )
    assert made.provenance.untrained
    assert made.to_dict()["provenance"]["untrained"] is True
    assert Reference.from_dict(made.to_dict()).provenance.untrained
    trained = reference_from_profile(
        default_profile(), name="t", family="fam", architecture="cnn", provenance=PROV
    )
    assert "untrained" not in trained.to_dict()["provenance"]  # the shipped form is unchanged
