"""Entropy loss terms: one implementation of the math with the analysis, and the loss contract."""

from __future__ import annotations

import math

import pytest
import torch
from scaled_dense_plugin import ScaledDense, UngroupedDense, plugin_mlp, register
from torch import nn

from entropy_probe.default_model import load_default_model
from entropy_probe.errors import EntropyProbeError, UnsupportedLayerError
from entropy_probe.patterns.pattern import (
    DepthCurve,
    LayerGroup,
    Quantity,
    ReferencePattern,
    layer_value,
    profile_pattern,
)
from entropy_probe.train.losses import (
    AuxiliaryLoss,
    LossConfigError,
    build_entropy_loss,
)

QUANTITIES = [q.value for q in Quantity]


def flat(value: float, quantity: Quantity | str = Quantity.SHAPE_EXCESS) -> ReferencePattern:
    curve = DepthCurve((0.0, 1.0), (value, value))
    return ReferencePattern(Quantity(quantity), {LayerGroup.DENSE: curve, LayerGroup.CONV: curve})


def mlp(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 5)
    ).to(dtype)


def small_cnn() -> nn.Module:
    """conv+BN (folded), a strided conv, a grouped conv, a dense head: every fold path."""
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 4, 1),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 6),
    )
    with torch.no_grad():  # non-trivial eval statistics and γ, so the fold matters
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.2, 3.0)
                m.weight.uniform_(0.5, 2.0)
    return model.eval()


def test_is_an_auxiliary_loss() -> None:
    model = mlp()
    loss = build_entropy_loss(
        model,
        lambda_dense=1.0,
        lambda_conv=1.0,
        reference=flat(-0.1),
        example_input=torch.randn(1, 12),
    )
    assert isinstance(loss, AuxiliaryLoss)
    terms = loss(model, 0)
    assert set(terms) == {"dense"}
    assert terms["dense"].shape == () and bool(terms["dense"] > 0)


@pytest.mark.parametrize("quantity", QUANTITIES)
@pytest.mark.parametrize(
    "case", ["default_model", "small_cnn", "mlp", "resnet18"], ids=lambda c: str(c)
)
def test_layer_values_equal_the_analysis_profile(case: str, quantity: str) -> None:
    """The loss's h_l is the profile's value for the same model, BatchNorm folds included."""
    from entropy_probe import LoadedModel, profile_loaded

    if case == "default_model":
        model, shape = load_default_model(), (1, 28, 28)
    elif case == "small_cnn":
        model, shape = small_cnn(), (3, 8, 8)
    elif case == "mlp":
        model, shape = mlp(), (12,)
    else:
        timm = pytest.importorskip("timm")
        torch.manual_seed(0)
        model, shape = timm.create_model("resnet18", pretrained=False).eval(), (3, 64, 64)
    gen = torch.Generator().manual_seed(0)
    example = torch.randn((1, *shape), generator=gen)
    loss = build_entropy_loss(
        model,
        lambda_dense=1.0,
        lambda_conv=1.0,
        reference=flat(-0.1, quantity),
        quantity=quantity,
        example_input=example,
    )
    loaded = LoadedModel(source=case, format="torch", module=model, input_shape=shape)
    profile = profile_loaded(loaded, device="cpu", progress=False)
    got = loss.layer_values(model)
    compared = 0
    for layer in profile.analysed:
        if layer.depth is None:
            continue
        expected = layer_value(layer, quantity)
        if layer.status == "singular":  # e.g. timm's zero-initialised last BatchNorm γ
            assert not math.isfinite(got[layer.name]), layer.name
        elif expected is None:  # one singular value: the shapes leave it out
            assert quantity != "delta_h_per_dim" and layer.name not in got
        else:
            assert got[layer.name] == pytest.approx(expected, abs=1e-10, rel=1e-10), layer.name
            compared += 1
    assert compared >= 3 and len(got) >= compared
    folded = [layer for layer in loss.layers if layer.batchnorm is not None]
    if case in ("default_model", "small_cnn", "resnet18"):
        assert folded, "BatchNorm folds were not found"


def test_spectral_values_equal_the_analysis_profile() -> None:
    """conv_method='spectral': h_l·(number of σ) is the profile's exact spectral ΔH."""
    from entropy_probe import LoadedModel, profile_loaded

    model = small_cnn()
    loss = build_entropy_loss(
        model,
        lambda_dense=1.0,
        lambda_conv=1.0,
        reference=flat(-0.5, "delta_h_per_dim"),
        quantity="delta_h_per_dim",
        conv_method="spectral",
        example_input=torch.randn(1, 3, 8, 8),
    )
    loaded = LoadedModel(source="cnn", format="torch", module=model, input_shape=(3, 8, 8))
    profile = profile_loaded(loaded, method="spectral", device="cpu", progress=False)
    spectral = {layer.name: layer.delta_h_spectral for layer in profile.analysed}
    values = loss.layer_values(model)
    convs = [layer for layer in loss.layers if layer.group is LayerGroup.CONV]
    assert len(convs) == 3 and all(layer.spectral_dims > 0 for layer in convs)
    for layer in convs:
        expected = spectral[layer.name]
        assert expected is not None
        assert values[layer.name] * layer.spectral_dims == pytest.approx(expected, rel=1e-10)


def test_spectral_shape_by_the_spectral_method_is_scale_free_and_at_most_zero() -> None:
    model = small_cnn()
    kwargs = {
        "lambda_dense": 0.0,
        "lambda_conv": 1.0,
        "reference": flat(-0.2, "spectral_shape"),
        "quantity": "spectral_shape",
        "conv_method": "spectral",
        "example_input": torch.randn(1, 3, 8, 8),
    }
    loss = build_entropy_loss(model, **kwargs)  # type: ignore[arg-type]
    before = loss.layer_values(model)
    with torch.no_grad():
        model[3].weight.mul_(8.0)  # a power of 2: exact in float32
    after = loss.layer_values(model)
    for name, value in before.items():
        assert value <= 1e-12
        assert after[name] == pytest.approx(value, abs=1e-10)


def test_target_mode_is_zero_for_its_own_pattern_and_positive_otherwise() -> None:
    model = small_cnn()
    x = torch.randn(1, 3, 8, 8)
    probe = build_entropy_loss(
        model, lambda_dense=1, lambda_conv=1, reference=flat(0), example_input=x
    )
    own = profile_pattern(probe.profile, Quantity.SHAPE_EXCESS)
    loss = build_entropy_loss(
        model, lambda_dense=1, lambda_conv=1, reference=own, example_input=x, every=1
    )
    terms = loss(model, 0)
    assert set(terms) == {"dense", "conv"}
    for value in terms.values():
        assert float(value.detach()) == pytest.approx(0.0, abs=1e-20)
    with torch.no_grad():
        model[6].weight.add_(0.3 * torch.randn_like(model[6].weight))
    moved = loss(model, 0)
    assert float(moved["conv"].detach()) > 1e-8 and float(moved["dense"].detach()) == pytest.approx(
        0, abs=1e-20
    )


def test_target_mode_is_the_mean_squared_deviation() -> None:
    model = mlp()
    loss = build_entropy_loss(
        model,
        lambda_dense=0.5,
        lambda_conv=0,
        reference=flat(-0.25),
        example_input=torch.randn(1, 12),
        every=1,
    )
    values = loss.layer_values(model)
    expected = 0.5 * sum((v + 0.25) ** 2 for v in values.values()) / len(values)
    assert float(loss(model, 0)["dense"].detach()) == pytest.approx(expected, rel=1e-12)


def test_direction_mode_is_bounded_by_tau_and_follows_the_reference_sign() -> None:
    model = mlp()
    x = torch.randn(1, 12)
    for tau in (0.05, 1.0):
        for sign in (-1.0, 1.0):
            loss = build_entropy_loss(
                model,
                mode="direction",
                lambda_dense=1,
                lambda_conv=1,
                reference=flat(sign * 0.3, "delta_h_per_dim"),
                quantity="delta_h_per_dim",
                tau=tau,
                every=1,
                example_input=x,
            )
            assert set(loss.layer_targets().values()) == {sign}
            value = float(loss(model, 0)["dense"].detach())
            assert abs(value) <= tau
            h = loss.layer_values(model)
            expected = -sum(sign * tau * math.tanh(v / tau) for v in h.values()) / len(h)
            assert value == pytest.approx(expected, rel=1e-12)
    with torch.no_grad():  # a huge scale saturates the tanh: still within τ
        for p in model.parameters():
            p.mul_(1e6)
    assert abs(float(loss(model, 0)["dense"].detach())) <= 1.0 + 1e-12


class _LossOf(nn.Module):
    """Holds the model, so torch.func.functional_call can substitute its parameters."""

    def __init__(self, model: nn.Module, loss: AuxiliaryLoss) -> None:
        super().__init__()
        self.inner = model
        self.loss = loss

    def forward(self) -> torch.Tensor:
        total: torch.Tensor = sum(self.loss(self.inner, 0).values())  # type: ignore[assignment]
        return total


@pytest.mark.parametrize(
    ("mode", "quantity"), [("target", "shape_excess"), ("direction", "delta_h_per_dim")]
)
def test_gradcheck_float64(mode: str, quantity: str) -> None:
    """Gradients through the Gram/Cholesky path and the BatchNorm fold are right."""
    torch.manual_seed(0)
    model = (
        nn.Sequential(
            nn.Conv2d(2, 3, 3),
            nn.BatchNorm2d(3),
            nn.Flatten(),
            nn.Linear(3 * 2 * 2, 4),
            nn.Linear(4, 3),
        )
        .double()
        .eval()
    )
    with torch.no_grad():
        model[1].running_var.uniform_(0.5, 2.0)
    loss = build_entropy_loss(
        model,
        mode=mode,
        lambda_dense=1.0,
        lambda_conv=1.0,
        reference=flat(-0.2, quantity),
        quantity=quantity,
        every=1,
        example_input=torch.randn(1, 2, 4, 4, dtype=torch.float64),
    )
    names = ["0.weight", "1.weight", "3.weight", "4.weight"]
    base = dict(model.named_parameters())
    wrapper = _LossOf(model, loss)

    def fn(*tensors: torch.Tensor) -> torch.Tensor:
        params = {f"inner.{n}": t for n, t in zip(names, tensors, strict=True)}
        out: torch.Tensor = torch.func.functional_call(wrapper, params, ())
        return out

    inputs = tuple(base[n].detach().clone().requires_grad_(True) for n in names)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)
    grads = torch.autograd.grad(fn(*inputs), inputs)
    assert all(bool(torch.isfinite(g).all()) for g in grads)
    assert float(grads[1].abs().sum()) > 0  # the folded BatchNorm's γ gets a gradient


def test_optimising_the_loss_alone_moves_h_toward_the_target() -> None:
    model = mlp()
    target = -0.4
    loss = build_entropy_loss(
        model,
        lambda_dense=1,
        lambda_conv=0,
        reference=flat(target),
        every=1,
        example_input=torch.randn(1, 12),
    )
    start = loss.layer_values(model)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for step in range(40):
        opt.zero_grad()
        sum(loss(model, step).values()).backward()  # type: ignore[union-attr]
        opt.step()
    end = loss.layer_values(model)
    for name in start:
        assert abs(end[name] - target) < abs(start[name] - target), name
    assert sum(abs(v - target) for v in end.values()) < 0.5 * sum(
        abs(v - target) for v in start.values()
    )


def test_every_k_scale_returns_nothing_between_and_k_times_the_term_when_due() -> None:
    model = mlp()
    x = torch.randn(1, 12)
    one = build_entropy_loss(
        model, lambda_dense=0.3, lambda_conv=0, reference=flat(-0.1), every=1, example_input=x
    )
    four = build_entropy_loss(
        model,
        lambda_dense=0.3,
        lambda_conv=0,
        reference=flat(-0.1),
        every=4,
        amortise="scale",
        example_input=x,
    )
    assert four(model, 1) == {} and four(model, 2) == {} and four(model, 7) == {}
    assert float(four(model, 8)["dense"].detach()) == pytest.approx(
        4 * float(one(model, 8)["dense"].detach())
    )


def test_every_k_reuse_replays_the_last_gradient_between_evaluations() -> None:
    model = mlp()
    x = torch.randn(1, 12)
    kwargs = {"lambda_dense": 0.3, "lambda_conv": 0.0, "reference": flat(-0.1), "example_input": x}
    one = build_entropy_loss(model, every=1, **kwargs)  # type: ignore[arg-type]
    reuse = build_entropy_loss(model, every=4, amortise="reuse", **kwargs)  # type: ignore[arg-type]

    def grads(terms: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        sum(terms.values()).backward()  # type: ignore[union-attr]
        return [
            p.grad.clone() if p.grad is not None else torch.zeros_like(p)
            for p in model.parameters()
        ]

    exact = grads(one(model, 0))
    first = reuse(model, 0)
    assert float(first["dense"].detach()) == pytest.approx(float(one(model, 0)["dense"].detach()))
    for a, b in zip(grads(first), exact, strict=True):
        torch.testing.assert_close(a, b)
    with torch.no_grad():  # the weights move; between evaluations the old gradient is replayed
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    for a, b in zip(grads(reuse(model, 1)), exact, strict=True):
        torch.testing.assert_close(a, b)
    fresh = grads(one(model, 4))
    for a, b in zip(grads(reuse(model, 4)), fresh, strict=True):
        torch.testing.assert_close(a, b)
    scaled = reuse(model, 5)["dense"] * 3.0  # the incoming gradient (e.g. a loss scale) applies
    model.zero_grad(set_to_none=True)
    scaled.backward()  # one multi-tensor product for all the stored gradients
    for param, want in zip(model.parameters(), fresh, strict=True):
        torch.testing.assert_close(
            param.grad if param.grad is not None else torch.zeros_like(param), 3.0 * want
        )


def test_replayed_gradients_of_mixed_dtypes_are_each_scaled() -> None:
    from entropy_probe.train.losses import _ReplayGradient

    params = [
        torch.zeros(3, requires_grad=True),
        torch.zeros(2, dtype=torch.float64, requires_grad=True),
    ]
    grads = (torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 5.0], dtype=torch.float64))
    value = _ReplayGradient.apply(torch.tensor(0.5), grads, *params)
    (value * 2.0).backward()
    for param, grad in zip(params, grads, strict=True):
        assert param.grad is not None and param.grad.dtype == param.dtype
        torch.testing.assert_close(param.grad, 2.0 * grad)


def test_spectral_shape_loss_is_unchanged_by_rescaling_a_layer() -> None:
    model = small_cnn()
    x = torch.randn(1, 3, 8, 8)
    for quantity in ("spectral_shape", "shape_excess"):
        loss = build_entropy_loss(
            model,
            lambda_dense=1,
            lambda_conv=1,
            reference=flat(-0.3, quantity),
            quantity=quantity,
            every=1,
            example_input=x,
        )
        before = {k: float(v.detach()) for k, v in loss(model, 0).items()}
        with torch.no_grad():
            model[0].weight.mul_(
                4.0
            )  # powers of 2: exact in float32  # folded into BN: the folded map scales too
            model[8].weight.mul_(0.125)
        after = {k: float(v.detach()) for k, v in loss(model, 0).items()}
        for key, value in before.items():
            assert after[key] == pytest.approx(value, rel=1e-9, abs=1e-15)
        with torch.no_grad():
            model[0].weight.div_(4.0)
            model[8].weight.div_(0.125)


def test_singular_layers_are_left_out_not_nan() -> None:
    """A BatchNorm with γ = 0 folded in makes a layer singular: it leaves the mean, no NaN."""
    model = small_cnn()
    with torch.no_grad():
        model[4].weight.zero_()
    loss = build_entropy_loss(
        model,
        lambda_dense=1,
        lambda_conv=1,
        reference=flat(-0.3),
        every=1,
        example_input=torch.randn(1, 3, 8, 8),
    )
    assert not math.isfinite(loss.layer_values(model)["3"])
    terms = loss(model, 0)
    total = sum(terms.values())
    total.backward()  # type: ignore[union-attr]
    for p in model.parameters():
        assert p.grad is None or bool(torch.isfinite(p.grad).all())


def test_called_with_another_instance_reads_its_parameters() -> None:
    """E.g. the unwrapped module of a DDP wrapper, or a copy: names are looked up again."""
    model = mlp()
    loss = build_entropy_loss(
        model,
        lambda_dense=1,
        lambda_conv=0,
        reference=flat(-0.1),
        every=1,
        example_input=torch.randn(1, 12),
    )
    other = mlp()
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.0 + torch.rand_like(p))
    assert loss.layer_values(other) != loss.layer_values(model)
    with pytest.raises(UnsupportedLayerError, match="different architecture"):
        loss(nn.Sequential(nn.Linear(12, 5)), 0)


def test_timm_models_need_no_example_input() -> None:
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet18", pretrained=False, num_classes=4)
    loss = build_entropy_loss(model, lambda_dense=1, lambda_conv=1, reference=flat(-0.1), every=1)
    assert len(loss.layers) == 21
    assert {layer.group for layer in loss.layers} == {LayerGroup.CONV, LayerGroup.DENSE}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "targt"}, r"unknown mode 'targt' \(did you mean 'target'\?\)"),
        ({"quantity": "entropy"}, "unknown quantity 'entropy'"),
        ({"conv_method": "both"}, "'paper' or 'spectral'"),
        (
            {"conv_method": "spectral"},
            "shape_excess has a random-init baseline for the paper method only",
        ),
        ({"amortise": "skip"}, "unknown amortise 'skip'"),
        ({"lambda_dense": -1.0}, "lambda_dense must be a finite number >= 0"),
        ({"lambda_conv": float("nan")}, "lambda_conv must be a finite number >= 0"),
        ({"every": 0}, "every must be an integer >= 1"),
        ({"tau": 0.0}, "tau must be a finite number > 0"),
        ({"reference": flat(-0.1, "spectral_shape")}, "holds spectral_shape, the loss uses"),
    ],
)
def test_bad_options_are_one_line_errors(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {
        "lambda_dense": 1.0,
        "lambda_conv": 1.0,
        "reference": flat(-0.1),
        "example_input": torch.randn(1, 12),
        **kwargs,
    }
    with pytest.raises(LossConfigError, match=match) as info:
        build_entropy_loss(mlp(), **args)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_model_without_analysable_layers_is_refused() -> None:
    model = nn.Sequential(nn.ReLU(), nn.LayerNorm(4))
    with pytest.raises(UnsupportedLayerError, match="no analysable dense or conv layer"):
        build_entropy_loss(
            model, lambda_dense=1, lambda_conv=1, reference=flat(0), example_input=torch.randn(1, 4)
        )


def test_unknown_input_shape_and_mismatched_reference_are_clear_errors() -> None:
    with pytest.raises(LossConfigError, match="pass example_input="):
        build_entropy_loss(mlp(), lambda_dense=1, lambda_conv=1, reference=flat(0))
    conv_only = ReferencePattern(
        Quantity.SHAPE_EXCESS, {LayerGroup.CONV: DepthCurve((0.0,), (-0.2,))}, "cnn family"
    )
    with pytest.raises(LossConfigError, match="no curve for this model's layer groups"):
        build_entropy_loss(
            mlp(),
            lambda_dense=1,
            lambda_conv=1,
            reference=conv_only,
            example_input=torch.randn(1, 12),
        )
    assert issubclass(LossConfigError, EntropyProbeError)


def test_reference_by_name_resolves_through_the_pattern_store() -> None:
    """None means ``auto``: the family is picked from the model's own profile."""
    model = load_default_model()
    x = torch.zeros(1, 1, 28, 28)
    auto = build_entropy_loss(model, lambda_dense=1, lambda_conv=1, example_input=x, every=1)
    assert auto.reference.quantity is Quantity.SHAPE_EXCESS and auto.reference.label
    terms = auto(model, 0)
    assert set(terms) == {"dense", "conv"}
    assert all(bool(torch.isfinite(t)) and float(t.detach()) >= 0 for t in terms.values())
    with pytest.raises(EntropyProbeError, match="unknown reference"):
        build_entropy_loss(
            model, lambda_dense=1, lambda_conv=1, reference="nosuchfamily", example_input=x
        )


def test_strict_refuses_a_lambda_whose_group_has_no_target() -> None:
    """``strict`` (what finetune uses): a λ > 0 for a group the model lacks, or the reference
    has no curve for, is an error naming the reference and what it and the model have."""
    x = torch.randn(1, 12)
    dense_only = ReferencePattern(
        Quantity.SHAPE_EXCESS, {LayerGroup.DENSE: DepthCurve((0.0,), (-0.2,))}, "family mlp"
    )
    with pytest.raises(LossConfigError, match="model has no analysable conv layer") as info:
        build_entropy_loss(
            mlp(), lambda_dense=1, lambda_conv=0.5, reference=flat(0), example_input=x, strict=True
        )
    assert "lambda_conv=0.5 (--lambda-conv)" in str(info.value) and "dense layers" in str(
        info.value
    )
    model, image = small_cnn(), torch.randn(1, 3, 8, 8)
    with pytest.raises(
        LossConfigError, match=r"reference 'family mlp' has no conv curve \(it has dense curves\)"
    ):
        build_entropy_loss(
            model, lambda_dense=0, lambda_conv=0.1, reference=dense_only, example_input=image,
            strict=True,
        )  # fmt: skip
    strict = build_entropy_loss(
        model, lambda_dense=0.1, lambda_conv=0, reference=dense_only, example_input=image,
        every=1, strict=True,
    )  # fmt: skip
    assert strict.groups == (LayerGroup.DENSE,) and set(strict(model, 0)) == {"dense"}


def test_without_strict_a_lambda_with_no_target_never_makes_the_loss_empty() -> None:
    """The lenient default leaves out a group without a target (``groups`` says which are
    left), but λ > 0 only for such groups would make every call return nothing: refused."""
    model, image = small_cnn(), torch.randn(1, 3, 8, 8)
    dense_only = ReferencePattern(
        Quantity.SHAPE_EXCESS, {LayerGroup.DENSE: DepthCurve((0.0,), (-0.2,))}, "family mlp"
    )
    both = build_entropy_loss(
        model, lambda_dense=1, lambda_conv=1, reference=dense_only, example_input=image, every=1
    )
    assert both.groups == (LayerGroup.DENSE,)
    with pytest.raises(LossConfigError, match=r"given a λ > 0 \(it has dense curves\)"):
        build_entropy_loss(
            model, lambda_dense=0, lambda_conv=1, reference=dense_only, example_input=image
        )


def test_relative_excess_terms_leave_out_layers_where_it_is_not_defined() -> None:
    """|E[s]| of a 16×1280 layer is 0.003: the ratio shape_excess/|E[s]| is noise there, so
    the comparison leaves such layers out and the loss must too (no term on them)."""
    from entropy_probe.entropy.functional import gaussian_spectral_shape
    from entropy_probe.patterns.pattern import relative_excess_defined

    assert not relative_excess_defined(gaussian_spectral_shape(16, 1280))
    assert relative_excess_defined(gaussian_spectral_shape(4, 16))
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(1280, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)
    ).eval()
    kwargs = {
        "lambda_dense": 1.0,
        "lambda_conv": 0.0,
        "every": 1,
        "example_input": torch.randn(1, 1280),
    }
    shape = build_entropy_loss(model, reference=flat(-0.1), **kwargs)  # type: ignore[arg-type]
    relative = build_entropy_loss(
        model,
        reference=flat(-0.1, Quantity.RELATIVE_EXCESS),
        quantity="relative_excess",
        **kwargs,  # type: ignore[arg-type]
    )
    assert [layer.name for layer in shape.layers] == ["0", "2", "4"]
    assert [layer.name for layer in relative.layers] == ["2", "4"]
    assert math.isfinite(float(sum(relative(model, 0).values()).detach()))  # type: ignore[union-attr]


# -- plugin layers: the group their rule declares ----------------------------------------------


@pytest.fixture
def scaled_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    """The built-ins plus the ``scaled_dense`` (group dense) and ``ungrouped_dense`` (no group)
    plugin rules of tests/scaled_dense_plugin.py, as the process-wide registry."""
    from entropy_probe import plugins

    registry = plugins.build_registry(autoload=False)
    register(plugins.PluginRegistrar(registry, "scaled"))
    monkeypatch.setattr(plugins, "_registry", registry)


def _scaled_mlp(layer: type[ScaledDense] = ScaledDense) -> nn.Module:
    return plugin_mlp(layer, n_in=12, n_out=5)


@pytest.mark.usefixtures("scaled_plugin")
@pytest.mark.parametrize("quantity", QUANTITIES)
def test_plugin_layers_of_the_dense_group_get_dense_terms(quantity: str) -> None:
    from entropy_probe import profile

    model = _scaled_mlp()
    pattern = flat(-0.1, quantity)
    loss = build_entropy_loss(
        model,
        lambda_dense=1.0,
        lambda_conv=0.0,
        reference=pattern,
        quantity=quantity,
        example_input=torch.randn(1, 12),
        every=1,
        amortise="scale",
    )
    assert [(x.name, x.group) for x in loss.layers] == [
        ("0", LayerGroup.DENSE),
        ("2", LayerGroup.DENSE),
        ("4", LayerGroup.DENSE),
    ]
    rows = profile(model, input_shape=(12,)).layers
    values = {row.name: layer_value(row, quantity) for row in rows}
    assert loss.layer_values(model) == pytest.approx(values, rel=1e-9, abs=1e-12)
    (term,) = loss(model, 0).values()
    expected = math.fsum((v + 0.1) ** 2 for v in values.values() if v is not None) / 3
    assert float(term.detach()) == pytest.approx(expected, rel=1e-9)
    term.backward()
    grads = [model[0].weight_unscaled.grad, model[2].weight_unscaled.grad]
    assert all(g is not None and float(g.abs().sum()) > 0 for g in grads)
    if quantity == "delta_h_per_dim":  # the only quantity that depends on the scale s
        assert model[0].scale.grad is not None and float(model[0].scale.grad) != 0


@pytest.mark.usefixtures("scaled_plugin")
def test_plugin_layers_of_no_group_get_no_term_and_a_warning() -> None:
    from entropy_probe.train._loss_layers import NoLossTermWarning

    model = _scaled_mlp(UngroupedDense)
    with pytest.warns(
        NoLossTermWarning,
        match=r"the entropy loss gives layers '0', '2' no term: kind 'ungrouped_dense' belongs "
        r"to no layer group: its rule declares none \(LayerRule\.group, plugin 'scaled'\)",
    ):
        loss = build_entropy_loss(
            model, lambda_dense=1.0, lambda_conv=0.0, reference=flat(-0.1), example_input=x12()
        )
    assert [x.name for x in loss.layers] == ["4"]
    with pytest.warns(NoLossTermWarning), pytest.raises(UnsupportedLayerError):
        build_entropy_loss(
            nn.Sequential(UngroupedDense(12, 12, 1.0)),
            lambda_dense=1.0,
            lambda_conv=0.0,
            reference=flat(-0.1),
            example_input=x12(),
        )


def x12() -> torch.Tensor:
    return torch.randn(1, 12, generator=torch.Generator().manual_seed(0))


@pytest.mark.usefixtures("scaled_plugin")
def test_reuse_replays_the_gradient_to_the_parameters_behind_a_property_weight() -> None:
    model = _scaled_mlp()
    loss = build_entropy_loss(
        model,
        lambda_dense=1.0,
        lambda_conv=0.0,
        reference=flat(-0.1),
        example_input=x12(),
        every=1,
        amortise="reuse",
    )
    sum(loss(model, 0).values()).backward()  # type: ignore[union-attr]
    grad = model[0].weight_unscaled.grad
    assert grad is not None and float(grad.abs().sum()) > 0
