"""The example plugin, as installed: discovered through its entry point, its rule used by
``profile_loaded``, and listed by the CLI. Skipped when the distribution is not installed."""

from __future__ import annotations

import importlib.metadata
import json
import math
from collections.abc import Iterator

import pytest
import torch
from torch import nn

example = pytest.importorskip("entropy_probe_example")

from click.testing import CliRunner  # noqa: E402

from entropy_probe import LoadedModel, Status, profile_loaded  # noqa: E402
from entropy_probe.cli import main  # noqa: E402
from entropy_probe.plugins import (  # noqa: E402
    DISABLE_ENV,
    ENTRY_POINT_GROUP,
    build_registry,
    get_registry,
    reset_registry,
)

ScaledLinear = example.ScaledLinear

if not any(
    ep.name == "example" and ep.value == "entropy_probe_example"
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
):
    pytest.skip(
        "entropy-probe-example is importable but its entry point is not installed: "
        "pip install --no-deps -e plugins/entropy-probe-example",
        allow_module_level=True,
    )


@pytest.fixture(autouse=True)
def _autoload(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    reset_registry()
    yield
    reset_registry()


# The layer forms s·W in float32 (its own dtype); the formula is evaluated in float64.
REL = 1e-6


def expected_per_position(module: ScaledLinear) -> float:
    """Σ log σ_i(W) + k·log|s|, from W and s separately (not from s·W)."""
    W = module.weight_unscaled.detach().double()
    s = module.scale.detach().item()
    k = min(W.shape)
    return torch.linalg.svdvals(W).log().sum().item() + k * math.log(abs(s))


def model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        ScaledLinear(4, 4, scale=3.0),  # square
        nn.ReLU(),
        ScaledLinear(4, 2, scale=-0.5),  # wide: 2 singular values, a negative gain
        nn.Tanh(),
        ScaledLinear(2, 3, scale=1.5, bias=False),  # tall
    ).eval()


def test_registered_through_the_entry_point() -> None:
    registry = get_registry()
    assert registry.plugins["example"] == "entropy-probe-example 0.1.0"
    assert registry.rules.owner("scaled_linear") == "example"
    assert isinstance(registry.rule_for("scaled_linear"), example.ScaledLinearRule)
    assert registry.kind_of(ScaledLinear(2, 2)) == "scaled_linear"

    class Sub(ScaledLinear):
        pass

    assert registry.kind_of(Sub(2, 2)) == "scaled_linear"  # along the MRO


def test_not_loaded_when_autoload_is_disabled() -> None:
    registry = build_registry(autoload=False)
    assert "example" not in registry.plugins
    assert "scaled_linear" not in registry.rules


def test_module_computes_s_times_x_wt() -> None:
    layer = ScaledLinear(3, 2, scale=2.5)
    x = torch.randn(5, 3)
    expected = 2.5 * (x @ layer.weight_unscaled.T) + layer.bias
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer.weight, 2.5 * layer.weight_unscaled)
    assert set(dict(layer.named_parameters())) == {"weight_unscaled", "scale", "bias"}


@pytest.mark.parametrize("tokens", [(), (5,)], ids=["vector", "sequence"])
def test_profile_matches_the_formula(tokens: tuple[int, ...]) -> None:
    net = model()
    input_shape = (*tokens, 4)
    positions = math.prod(tokens)
    profile = profile_loaded(
        LoadedModel(source="example", format="torch", module=net, input_shape=input_shape),
        device="cpu",
    )
    assert [layer.name for layer in profile.layers] == ["0", "2", "4"]
    for layer, module in zip(profile.layers, (net[0], net[2], net[4]), strict=True):
        per_position = expected_per_position(module)
        k = min(module.in_features, module.out_features)
        assert layer.kind == "scaled_linear"
        assert layer.op_type == "ScaledLinear"
        assert layer.status is Status.OK, layer.reason
        assert layer.positions == positions
        assert layer.delta_h == pytest.approx(positions * per_position, rel=REL, abs=1e-9)
        assert layer.delta_h_per_dim == pytest.approx(per_position / k, rel=REL, abs=1e-9)
    square = profile.layers[0]
    W = net[0].weight_unscaled.detach().double()
    log_det = torch.linalg.slogdet(W)[1].item()
    assert square.delta_h == pytest.approx(positions * (log_det + 4 * math.log(3.0)), rel=REL)
    assert profile.total_delta_h() == pytest.approx(
        math.fsum(layer.delta_h for layer in profile.layers), rel=1e-12
    )
    json.dumps(profile.to_dict(), allow_nan=False)


def test_rescaling_shifts_delta_h_by_k_log_s() -> None:
    net = model()
    loaded = LoadedModel(source="example", format="torch", module=net, input_shape=(4,))
    before = profile_loaded(loaded, device="cpu").layers[0].delta_h
    with torch.no_grad():
        net[0].scale.mul_(10.0)
    after = profile_loaded(loaded, device="cpu").layers[0].delta_h
    assert after - before == pytest.approx(4 * math.log(10.0), rel=REL)


def test_zero_scale_is_singular() -> None:
    net = nn.Sequential(ScaledLinear(3, 3, scale=0.0)).eval()
    profile = profile_loaded(
        LoadedModel(source="example", format="torch", module=net, input_shape=(3,)),
        device="cpu",
    )
    (layer,) = profile.layers
    assert layer.status is Status.SINGULAR
    assert layer.delta_h == -math.inf
    assert profile.to_dict()["layers"][0]["delta_h"] is None


def test_following_batchnorm_is_folded() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(ScaledLinear(3, 3, scale=2.0), nn.BatchNorm1d(3)).eval()
    with torch.no_grad():
        net[1].running_var.copy_(torch.tensor([0.25, 1.0, 4.0]))
    profile = profile_loaded(
        LoadedModel(source="example", format="torch", module=net, input_shape=(3,)),
        device="cpu",
    )
    layer, bn = profile.layers
    assert layer.folded_batchnorm == "1"
    assert bn.folded_into == "0"
    eps = net[1].eps
    bn_log = sum(-0.5 * math.log(v + eps) for v in (0.25, 1.0, 4.0))
    assert layer.delta_h_raw == pytest.approx(expected_per_position(net[0]), rel=REL)
    assert layer.delta_h == pytest.approx(expected_per_position(net[0]) + bn_log, rel=REL)


def test_compared_with_the_dense_band_and_given_the_dense_loss_term() -> None:
    """The rule declares ``group = "dense"``: ScaledLinear layers are compared with the dense
    band of the reference family, like nn.Linear, and get the dense fine-tuning loss term."""
    from entropy_probe.patterns.pattern import Quantity, layer_value
    from entropy_probe.patterns.select import compare_with
    from entropy_probe.train.losses import build_entropy_loss

    assert example.ScaledLinearRule.group == "dense"
    torch.manual_seed(0)
    net = nn.Sequential(
        ScaledLinear(16, 16, scale=2.0),
        nn.ReLU(),
        ScaledLinear(16, 16, scale=0.5),
        nn.ReLU(),
        nn.Linear(16, 4),
    ).eval()
    profile = profile_loaded(
        LoadedModel(source="example", format="torch", module=net, input_shape=(16,)),
        device="cpu",
    )
    comparison = compare_with(profile, "auto")
    assert [(x.name, x.kind, str(x.group)) for x in comparison.layers] == [
        ("0", "scaled_linear", "dense"),
        ("2", "scaled_linear", "dense"),
        ("4", "linear", "dense"),
    ]
    assert comparison.not_compared == () and comparison.notes() == []

    # the default amortise="reuse": the replayed gradient reaches weight_unscaled and scale
    loss = build_entropy_loss(
        net,
        lambda_dense=1.0,
        lambda_conv=0.0,
        quantity="delta_h_per_dim",  # the quantity that depends on the gain s too
        example_input=torch.randn(1, 16),
        every=1,
    )
    assert [layer.name for layer in loss.layers] == ["0", "2", "4"]
    expected = {x.name: layer_value(x, Quantity.DELTA_H_PER_DIM) for x in profile.layers}
    assert loss.layer_values(net) == pytest.approx(expected, rel=REL)
    sum(loss(net, 0).values()).backward()  # type: ignore[union-attr]
    for i in (0, 2):
        assert float(net[i].weight_unscaled.grad.abs().sum()) > 0
        assert float(net[i].scale.grad) != 0


def test_cli_lists_the_plugin_and_its_rule() -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["plugins"])
    assert result.exit_code == 0, result.output
    assert ["example", "entropy-probe-example", "0.1.0"] in [
        line.split() for line in result.stdout.splitlines()
    ]
    result = runner.invoke(main, ["list", "rules"])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if line.startswith("scaled_linear"))
    assert "ScaledLinear" in row
    assert "(from example)" in row
