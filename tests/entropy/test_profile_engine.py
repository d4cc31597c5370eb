"""The profile engine (``compute_profile``): per-layer values against direct functional calls,
singular layers, strict JSON, BatchNorm folding in the total, depth, skipped records, devices."""

from __future__ import annotations

import copy
import itertools
import json
import math
import sys
from typing import Any

import pytest
import torch
from torch import nn

from entropy_probe.entropy import functional as F
from entropy_probe.entropy.profile import (
    PROFILE_SCHEMA,
    LayerEntropy,
    Profile,
    compute_profile,
    resolve_device,
)
from entropy_probe.entropy.rules import ConvRule, LayerRule, PaperTerms
from entropy_probe.enums import ConvMethod, Status
from entropy_probe.errors import EntropyProbeError
from entropy_probe.plugins import PluginRegistry, build_registry
from entropy_probe.walk.module_walker import walk_module
from entropy_probe.walk.records import LayerRecord

INPUT = (1, 6, 6)


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    return build_registry(autoload=False)


def _randomise_bn(bn: nn.BatchNorm2d, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen))
        bn.weight.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)


def tiny() -> nn.Sequential:
    """Linear on the last axis (6 tokens) → conv+BN (folded) → ReLU → strided conv → ReLU → BN
    (not folded: it follows the ReLU)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 6),  # 0: square, applied to each of 1·6 rows
        nn.Conv2d(1, 3, 3),  # 1: (1,6,6) -> (3,4,4)
        nn.BatchNorm2d(3),  # 2: folded into 1
        nn.ReLU(),  # 3
        nn.Conv2d(3, 4, 3, stride=2, padding=1),  # 4: (3,4,4) -> (4,2,2)
        nn.ReLU(),  # 5
        nn.BatchNorm2d(4),  # 6: not folded
    )
    _randomise_bn(model[2], 1)
    _randomise_bn(model[6], 2)
    return model.eval()


def run(
    model: nn.Module,
    registry: PluginRegistry,
    input_shape: tuple[int, ...] = INPUT,
    method: str = "paper",
) -> Profile:
    records = walk_module(model, input_shape, registry)
    return compute_profile(
        records,
        registry.rules,
        source="tiny",
        format="test",
        input_shape=input_shape,
        method=method,
        device="cpu",
        num_params=sum(p.numel() for p in model.parameters()),
    )


@pytest.fixture(scope="module")
def model() -> nn.Sequential:
    return tiny()


@pytest.fixture(scope="module")
def profile(model: nn.Sequential, registry: PluginRegistry) -> Profile:
    return run(model, registry, method="both")


def layers(profile: Profile) -> dict[str, LayerEntropy]:
    return {layer.name: layer for layer in profile.layers}


def bn_params(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor, float]:
    return bn.running_var.detach(), bn.weight.detach(), bn.eps


def shape_of(mats: torch.Tensor) -> float:
    return float(F.spectral_shape(mats))


# --------------------------------------------------------------------------- values


def test_layer_list(profile: Profile) -> None:
    assert [layer.name for layer in profile.layers] == ["0", "1", "2", "4", "6"]
    assert [layer.kind for layer in profile.layers] == [
        "linear",
        "conv2d",
        "batchnorm",
        "conv2d",
        "batchnorm",
    ]
    assert all(layer.status is Status.OK for layer in profile.layers)
    assert profile.schema == PROFILE_SCHEMA
    assert profile.method is ConvMethod.BOTH
    assert profile.device == "cpu"


def test_square_linear_on_tokens(model: nn.Sequential, profile: Profile) -> None:
    layer = layers(profile)["0"]
    W = model[0].weight.detach().double()
    log_det = torch.linalg.slogdet(W)[1].item()
    assert layer.positions == 6  # 1·6 rows of 6 features
    assert layer.delta_h == pytest.approx(6 * log_det, rel=1e-10)
    assert layer.delta_h_per_dim == pytest.approx(log_det / 6, rel=1e-10)
    assert layer.spectral_shape == pytest.approx(shape_of(W[None]), abs=1e-12)
    sv = torch.linalg.svdvals(W)
    direct_shape = sv.log().mean() - 0.5 * (sv**2).mean().log()
    assert layer.spectral_shape == pytest.approx(direct_shape.item(), abs=1e-10)
    assert layer.delta_h_spectral is None  # dense: no spectral variant
    assert layer.delta_h_raw is None
    assert (layer.in_shape, layer.out_shape, layer.weight_shape) == ((1, 6, 6), (1, 6, 6), (6, 6))


def test_conv_with_folded_batchnorm(model: nn.Sequential, profile: Profile) -> None:
    conv, bn = model[1], model[2]
    layer = layers(profile)["1"]
    scale = F.batchnorm_scale(*bn_params(bn))
    folded = F.fold_batchnorm_into_weight(conv.weight.detach(), scale)
    assert layer.folded_batchnorm == "2"
    assert layer.positions == 16
    assert layer.delta_h == pytest.approx(16 * F.conv_paper_log_volume(folded).item(), rel=1e-10)
    assert layer.delta_h_raw == pytest.approx(
        16 * F.conv_paper_log_volume(conv.weight.detach()).item(), rel=1e-10
    )
    # C_out=3, C_in=1: one 3×1 first-tap matrix, one singular value
    tap = F.conv_first_tap_matrices(folded)
    assert tap.shape == (1, 3, 1)
    assert layer.delta_h_per_dim == pytest.approx(torch.linalg.norm(tap).log().item(), rel=1e-10)
    assert layer.spectral_shape == pytest.approx(shape_of(tap), abs=1e-12)
    grid = F.spectral_grid((6, 6), (1, 1))
    assert layer.delta_h_spectral == pytest.approx(
        F.conv_spectral_log_volume(folded, grid).item(), rel=1e-9
    )
    assert "folded in" in layer.reason


def test_folded_batchnorm_row(model: nn.Sequential, profile: Profile) -> None:
    bn = model[2]
    layer = layers(profile)["2"]
    per_pos = F.batchnorm_log_volume(*bn_params(bn)).item()
    var, gamma, eps = bn_params(bn)
    var, gamma = var.double(), gamma.double()  # a float32 oracle is off by ~1e-6 relative
    direct = torch.log((gamma / torch.sqrt(var + eps)).abs()).sum().item()
    assert per_pos == pytest.approx(direct, rel=1e-12)
    assert layer.folded_into == "1"
    assert layer.positions == 16
    assert layer.delta_h == pytest.approx(16 * per_pos, rel=1e-10)
    assert layer.delta_h_per_dim == pytest.approx(per_pos / 3, rel=1e-10)
    assert layer.depth is None  # BatchNorms do not take a depth slot
    assert layer.reason == "folded into '1' (counted there)"


def test_strided_conv(model: nn.Sequential, profile: Profile) -> None:
    conv = model[4]
    layer = layers(profile)["4"]
    W = conv.weight.detach()
    tap = W[:, :, 0, 0].double()  # 4×3
    assert layer.positions == 4  # 2×2 output grid
    assert layer.delta_h == pytest.approx(
        4 * torch.linalg.svdvals(tap).log().sum().item(), rel=1e-9
    )
    assert layer.delta_h_per_dim == pytest.approx(F.conv_paper_log_volume(W).item() / 3, rel=1e-10)
    grid = F.spectral_grid((4, 4), (2, 2))
    assert layer.delta_h_spectral == pytest.approx(
        F.conv_spectral_log_volume(W, grid, (2, 2), (1, 1)).item(), rel=1e-9
    )
    assert layer.folded_batchnorm is None
    assert layer.delta_h_raw is None


def test_unfolded_batchnorm(model: nn.Sequential, profile: Profile) -> None:
    bn = model[6]
    layer = layers(profile)["6"]
    assert layer.folded_into is None
    assert layer.positions == 4
    expected = 4 * F.batchnorm_log_volume(*bn_params(bn)).item()
    assert layer.delta_h == pytest.approx(expected, rel=1e-10)
    scale = F.batchnorm_scale(*bn_params(bn))
    expected_shape = scale.abs().log().mean() - 0.5 * (scale**2).mean().log()
    assert layer.spectral_shape == pytest.approx(expected_shape.item(), abs=1e-12)


def test_total_counts_folded_batchnorm_once(profile: Profile) -> None:
    by = layers(profile)
    expected = math.fsum(by[name].delta_h for name in ("0", "1", "4", "6"))  # type: ignore[misc]
    assert profile.total_delta_h() == pytest.approx(expected, rel=1e-12)
    with_double_count = expected + by["2"].delta_h  # type: ignore[operator]
    assert profile.total_delta_h() != pytest.approx(with_double_count)


def test_relative_depth(profile: Profile) -> None:
    depths = [layer.depth for layer in profile.layers if layer.kind != "batchnorm"]
    assert depths == [0.0, 0.5, 1.0]
    assert all(0.0 <= d <= 1.0 for d in depths if d is not None)
    assert depths == sorted(depths)  # type: ignore[type-var]


def test_depth_of_a_single_layer(registry: PluginRegistry) -> None:
    profile = run(nn.Sequential(nn.Linear(3, 3)), registry, (3,))
    assert profile.layers[0].depth == 0.0


def test_depth_monotone_on_a_deeper_model(registry: PluginRegistry) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(7)])
    depths = [layer.depth for layer in run(model, registry, (4,)).layers]
    assert depths[0] == 0.0 and depths[-1] == 1.0
    assert all(a < b for a, b in itertools.pairwise(depths))  # type: ignore[operator]


def test_paper_method_has_no_spectral_values(
    model: nn.Sequential, registry: PluginRegistry
) -> None:
    profile = run(model, registry, method="paper")
    assert profile.method is ConvMethod.PAPER
    assert all(layer.delta_h_spectral is None for layer in profile.layers)


def test_spectral_equals_paper_for_a_1x1_conv(registry: PluginRegistry) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 3, 1))
    (layer,) = run(model, registry, (3, 5, 5), method="spectral").layers
    assert layer.delta_h_spectral == pytest.approx(layer.delta_h, rel=1e-9)


# --------------------------------------------------------------------------- singular, JSON


@pytest.fixture
def singular_profile(registry: PluginRegistry) -> Profile:
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    with torch.no_grad():
        model[0].weight.zero_()
    return run(model, registry, (3,))


def test_zero_weight_is_singular(singular_profile: Profile) -> None:
    zero, other = singular_profile.layers
    assert zero.status is Status.SINGULAR
    assert zero.analysed
    assert zero.delta_h == -math.inf
    assert zero.delta_h_per_dim == -math.inf
    assert zero.spectral_shape == -math.inf
    assert "zero singular value" in zero.reason
    assert other.status is Status.OK
    assert math.isfinite(other.delta_h)  # type: ignore[arg-type]
    assert singular_profile.total_delta_h() == -math.inf


def test_rank_deficient_weight_is_singular(registry: PluginRegistry) -> None:
    model = nn.Sequential(nn.Linear(3, 3, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 2, 3], [2, 4, 6], [0, 1, 1]]))
    (layer,) = run(model, registry, (3,)).layers
    assert layer.status is Status.SINGULAR
    assert layer.delta_h == -math.inf


@pytest.mark.parametrize(
    ("c_in", "c_out", "zero_gamma"),
    [(3, 8, False), (3, 8, True), (8, 3, False), (8, 3, True), (5, 5, True)],
    ids=["tall", "tall-zero-gamma", "wide", "wide-zero-gamma", "square-zero-gamma"],
)
def test_raw_value_beside_the_folded_one(
    registry: PluginRegistry, c_in: int, c_out: int, zero_gamma: bool
) -> None:
    # The unfolded value is derived from the folded one where the BatchNorm scales the smaller
    # side (wide), decomposed in the same batch where it scales the larger (tall), and in a
    # second batch where the folded map is singular (a γ = 0 channel): each equals the direct
    # value of the unfolded weight.
    torch.manual_seed(c_in * 10 + c_out)
    model = nn.Sequential(nn.Conv2d(c_in, c_out, 1), nn.BatchNorm2d(c_out)).eval()
    _randomise_bn(model[1], 3)
    if zero_gamma:
        with torch.no_grad():
            model[1].weight[1] = 0.0
    conv = run(model, registry, (c_in, 4, 4)).layers[0]
    weight = model[0].weight.detach()
    raw = 16 * F.conv_paper_log_volume(weight).item()
    assert conv.delta_h_raw == pytest.approx(raw, rel=1e-10)
    folded = F.fold_batchnorm_into_weight(weight, F.batchnorm_scale(*bn_params(model[1])))
    expected = 16 * F.conv_paper_log_volume(folded).item()
    if zero_gamma and c_out <= c_in:  # a zero output row: rank deficient
        assert conv.status is Status.SINGULAR and conv.delta_h == -math.inf
    else:
        assert conv.delta_h == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("terminal", [True, False])
def test_spectral_progress_is_drawn_on_a_terminal_only(
    registry: PluginRegistry,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    terminal: bool,
) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    records = walk_module(tiny(), INPUT, registry)
    common = {"source": "tiny", "format": "test", "input_shape": INPUT}
    compute_profile(records, registry.rules, method="spectral", progress=True, **common)
    drawn = capsys.readouterr().err
    if terminal:
        assert "spectral" in drawn and "layer" in drawn
    else:
        assert drawn == ""
    compute_profile(records, registry.rules, method="paper", progress=True, **common)
    assert capsys.readouterr().err == ""  # the paper method is quick: no bar


def test_spectral_progress_bar_is_closed_when_a_layer_fails(
    registry: PluginRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tqdm import tqdm

    from entropy_probe.entropy.rules import ConvRule

    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    monkeypatch.setattr(ConvRule, "spectral_delta_h", fail)
    records = walk_module(tiny(), INPUT, registry)
    with pytest.raises(RuntimeError, match="boom"):
        compute_profile(
            records,
            registry.rules,
            source="tiny",
            format="test",
            input_shape=INPUT,
            method="spectral",
            progress=True,
        )
    assert not list(getattr(tqdm, "_instances", ()))  # no bar left drawing over the error


def test_non_finite_values_become_null(singular_profile: Profile) -> None:
    data = singular_profile.to_dict()
    zero = data["layers"][0]
    assert zero["status"] == "singular"
    assert zero["delta_h"] is None
    assert zero["delta_h_per_dim"] is None
    assert zero["spectral_shape"] is None
    assert data["total_delta_h"] is None
    text = json.dumps(data, allow_nan=False)
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text)["layers"][1]["status"] == "ok"


def test_to_dict_is_strict_json(profile: Profile) -> None:
    data = profile.to_dict()
    text = json.dumps(data, allow_nan=False)
    back = json.loads(text)
    assert back["schema"] == PROFILE_SCHEMA == "entropy_probe.profile/1"
    assert back["source"] == "tiny"
    assert back["input_shape"] == list(INPUT)
    assert back["method"] == "both"
    assert back["total_delta_h"] == pytest.approx(profile.total_delta_h())
    first = back["layers"][0]
    assert first["in_shape"] == [1, 6, 6]
    assert first["weight_shape"] == [6, 6]
    assert first["status"] == "ok"
    assert set(first) == set(LayerEntropy.__dataclass_fields__)
    assert set(data) >= {"schema", "layers", "notes", "num_params", "pretrained", "elapsed_s"}


# ------------------------------------------------------------ records the engine cannot analyse


def test_unknown_kind_is_skipped_with_a_reason(registry: PluginRegistry) -> None:
    record = LayerRecord(name="x", kind="mystery", op_type="Mystery", weight=torch.eye(2))
    profile = compute_profile([record], registry.rules, source="s", format="f", input_shape=None)
    (layer,) = profile.layers
    assert layer.status is Status.SKIPPED
    assert "unknown layer rule 'mystery'" in layer.reason
    assert "linear" in layer.reason  # the valid kinds are listed
    assert layer.delta_h is None and layer.depth is None
    assert profile.total_delta_h() is None


def test_record_not_fitting_its_rule_is_skipped(registry: PluginRegistry) -> None:
    records = [
        LayerRecord(name="d", kind="linear", op_type="X", weight=torch.ones(2, 2, 2)),
        LayerRecord(name="c", kind="conv2d", op_type="X", weight=torch.ones(2, 2)),
        LayerRecord(name="n", kind="linear", op_type="X"),
    ]
    profile = compute_profile(records, registry.rules, source="s", format="f", input_shape=None)
    reasons = {layer.name: layer.reason for layer in profile.layers}
    assert all(layer.status is Status.SKIPPED for layer in profile.layers)
    assert "3-D weight; expected 2-D" in reasons["d"]
    assert "expected 4 dims" in reasons["c"]
    assert "has no weight" in reasons["n"]


def test_walker_status_passes_through(registry: PluginRegistry) -> None:
    record = LayerRecord(
        name="ln", kind="layernorm", op_type="LayerNorm", status=Status.NOT_ANALYTIC, reason="why"
    )
    (layer,) = compute_profile(
        [record], registry.rules, source="s", format="f", input_shape=None
    ).layers
    assert (layer.status, layer.reason) == (Status.NOT_ANALYTIC, "why")
    assert not layer.analysed


def test_record_without_shapes_has_no_positions(registry: PluginRegistry) -> None:
    W = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    record = LayerRecord(name="w", kind="linear", op_type="state_dict", weight=W)
    (layer,) = compute_profile(
        [record], registry.rules, source="s", format="f", input_shape=None
    ).layers
    assert layer.positions is None
    assert layer.delta_h is None
    assert layer.delta_h_per_dim == pytest.approx(math.log(6) / 2)


# --------------------------------------------------------------------------- devices


def test_resolve_device_cuda_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(EntropyProbeError, match=r"--device cuda was asked for, but no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(EntropyProbeError, match="no CUDA device"):
        resolve_device("cuda:1")
    assert resolve_device("auto") == torch.device("cpu")


def test_resolve_device_other_values() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(EntropyProbeError, match=r"unknown device 'tpu9': use auto, cpu or cuda"):
        resolve_device("tpu9")


def test_compute_profile_refuses_missing_cuda(
    monkeypatch: pytest.MonkeyPatch, registry: PluginRegistry
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(EntropyProbeError, match="no CUDA device"):
        compute_profile([], registry.rules, source="s", format="f", input_shape=None, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(model: nn.Sequential, registry: PluginRegistry, profile: Profile) -> None:
    records = walk_module(model, INPUT, registry)
    gpu = compute_profile(
        records,
        registry.rules,
        source="t",
        format="t",
        input_shape=INPUT,
        method="both",
        device="cuda",
    )
    assert gpu.device.startswith("cuda")
    for a, b in zip(gpu.layers, profile.layers, strict=True):
        assert a.delta_h == pytest.approx(b.delta_h, rel=1e-8)
        assert a.delta_h_spectral == pytest.approx(b.delta_h_spectral, rel=1e-8)


def test_batchnorm_fold_applied_while_batching_equals_the_eager_fold(
    registry: PluginRegistry,
) -> None:
    # The engine multiplies a default rule's fold_factor in while it copies the matrices into
    # their float64 batch; a rule overriding fold_terms is folded eagerly. Same-shape layers
    # share a batch (tall, wide, grouped and ConvTranspose ones): the values are identical.
    torch.manual_seed(7)
    model = nn.Sequential(
        nn.Conv2d(4, 8, 1),
        nn.BatchNorm2d(8),  # tall, twice: one batch
        nn.Conv2d(8, 8, 1, groups=2),
        nn.BatchNorm2d(8),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ConvTranspose2d(8, 6, 1),
        nn.BatchNorm2d(6),
        nn.Conv2d(6, 8, 1),
        nn.BatchNorm2d(8),  # tall, with the first
        nn.Conv2d(8, 3, 1),
        nn.BatchNorm2d(3),  # wide
        nn.Conv2d(3, 3, 1),
        nn.BatchNorm2d(3),
    ).eval()
    for i, bn in enumerate(m for m in model if isinstance(m, nn.BatchNorm2d)):
        _randomise_bn(bn, 10 + i)
    records = walk_module(model, (4, 5, 5), registry)
    assert sum(r.folded_batchnorm is not None for r in records) == 7

    class EagerRules:
        def get(self, kind: str) -> LayerRule:
            rule = registry.rules.get(kind)
            eager = copy.copy(rule)
            eager.__class__ = type(
                f"Eager{type(rule).__name__}",
                (type(rule),),
                {"fold_terms": lambda self, *args: LayerRule.fold_terms(self, *args)},
            )
            return eager

    options: dict[str, Any] = {"source": "x", "format": "torch", "input_shape": (4, 5, 5)}
    deferred = compute_profile(records, registry.rules, **options)
    eager = compute_profile(records, EagerRules(), **options)
    for got, expected in zip(deferred.layers, eager.layers, strict=True):
        assert (got.delta_h, got.delta_h_raw, got.spectral_shape) == (
            expected.delta_h,
            expected.delta_h_raw,
            expected.spectral_shape,
        ), got.name
    assert all(math.isfinite(layer.delta_h or 0.0) for layer in deferred.layers)


class _AllTapsConv1dRule(ConvRule):
    """Every tap's matrix, (taps, out, in), with one fold factor broadcast over the taps."""

    def __init__(self, factor_shape: tuple[int, ...] = (1, -1, 1)) -> None:
        super().__init__("conv1d", 1)
        self.factor_shape = factor_shape

    def paper_terms(self, record: LayerRecord, weight: torch.Tensor) -> PaperTerms:
        mats = weight.permute(2, 0, 1)
        return PaperTerms(dims=mats.shape[0] * min(mats.shape[1:]), matrices=mats)

    def fold_factor(
        self, record: LayerRecord, terms: PaperTerms, scale: torch.Tensor
    ) -> torch.Tensor:
        return F.precise(scale).reshape(self.factor_shape)


class _WithRule:
    def __init__(self, registry: PluginRegistry, rule: LayerRule) -> None:
        self.registry, self.rule = registry, rule

    def get(self, kind: str) -> LayerRule:
        return self.rule if kind == self.rule.kind else self.registry.rules.get(kind)


@pytest.mark.parametrize("factor_shape", [(1, -1, 1), (-1, 1)])
def test_a_fold_factor_broadcast_over_the_matrices_splits_with_them(
    registry: PluginRegistry, monkeypatch: pytest.MonkeyPatch, factor_shape: tuple[int, ...]
) -> None:
    # A plugin's fold_factor may broadcast (one factor for every tap); the deferred fold
    # spreads it over the matrices, also when one layer's matrices span several batches.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(8, 8, 5), nn.BatchNorm1d(8)).eval()
    _randomise_bn(model[1], 4)  # type: ignore[arg-type]
    records = walk_module(model, (8, 16), registry)
    rule = _AllTapsConv1dRule(factor_shape)
    conv = records[0]
    scale = F.batchnorm_scale(*bn_params(model[1]))
    eager = rule.fold_terms(conv, rule.paper_terms(conv, model[0].weight.detach()), scale)
    assert eager.matrices is not None
    expected = float(torch.log(torch.linalg.svdvals(eager.matrices)).sum())
    options: dict[str, Any] = {"source": "x", "format": "torch", "input_shape": (8, 16)}
    for batch_bytes in (256 * 2**20, 2 * 8 * 8 * 8):  # one batch; the 5 taps over 3 batches
        monkeypatch.setattr("entropy_probe.entropy.profile._BATCH_BYTES", batch_bytes)
        layer = compute_profile(records, _WithRule(registry, rule), **options).layers[0]
        assert layer.delta_h_per_dim is not None
        assert layer.delta_h_per_dim * 5 * 8 == pytest.approx(expected, rel=1e-12)


def test_a_fold_factor_that_does_not_fit_skips_the_layer_with_a_reason(
    registry: PluginRegistry,
) -> None:
    model = nn.Sequential(nn.Conv1d(8, 8, 5), nn.BatchNorm1d(8)).eval()
    records = walk_module(model, (8, 16), registry)
    rule = _AllTapsConv1dRule((2, -1, 1))  # 2 × 4: neither 1 nor the 5 taps
    options: dict[str, Any] = {"source": "x", "format": "torch", "input_shape": (8, 16)}
    layer = compute_profile(records, _WithRule(registry, rule), **options).layers[0]
    assert layer.status is Status.SKIPPED
    assert "does not broadcast against its matrices (5, 8, 8)" in layer.reason
