"""Regression tests for defects found in review: each case once gave a silently wrong value,
a traceback, or a hang."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file
from torch import nn

from entropy_probe import LoadedModel, Status, profile_loaded
from entropy_probe.cli import main
from entropy_probe.entropy import functional as F

from . import oracle


def _profile(model: nn.Module, shape: tuple[int, ...], **kw: object) -> dict[str, object]:
    loaded = LoadedModel(source="test", format="torch", module=model.eval(), input_shape=shape)
    return {layer.name: layer for layer in profile_loaded(loaded, device="cpu", **kw).layers}


class ConvBNWithSkip(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        with torch.no_grad():
            self.bn.running_var.uniform_(0.2, 3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y  # the skip reads the raw conv output too


def test_bn_is_not_folded_when_the_conv_output_also_feeds_a_skip() -> None:
    layers = _profile(ConvBNWithSkip(), (4, 6, 6))
    assert layers["conv"].folded_batchnorm is None
    assert layers["bn"].folded_into is None


def test_unfolded_conv_value_is_the_raw_weight() -> None:
    torch.manual_seed(0)
    model = ConvBNWithSkip()
    layers = _profile(model, (4, 6, 6))
    expected = 36 * float(F.conv_paper_log_volume(model.conv.weight.detach()))
    assert layers["conv"].delta_h == pytest.approx(expected, rel=1e-9)


class LinearOnTokensThenBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 6)
        self.bn = nn.BatchNorm1d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.lin(x))  # (N, 6, 4) → BatchNorm1d normalises dim 1, not features


def test_bn1d_over_tokens_is_not_folded_into_the_linear() -> None:
    layers = _profile(LinearOnTokensThenBN(), (6, 4))
    assert layers["lin"].folded_batchnorm is None
    assert layers["lin"].status is Status.OK


class SharedConvTwoBNs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 3, 1, bias=False)
        self.b1, self.b2 = nn.BatchNorm2d(3), nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b1(self.c(x)) + self.b2(self.c(x))


def test_shared_conv_is_never_folded() -> None:
    layers = _profile(SharedConvTwoBNs(), (3, 4, 4))
    assert layers["c"].folded_batchnorm is None
    assert layers["b1"].folded_into is None and layers["b2"].folded_into is None
    assert layers["c"].calls == 2


class SharedHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(2, 2, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        small = nn.functional.avg_pool2d(x, 2)
        return self.head(x).mean() + self.head(small).mean()


def test_shared_module_positions_add_up_over_calls_of_different_shapes() -> None:
    layers = _profile(SharedHead(), (2, 16, 16))
    assert layers["head"].positions == 16 * 16 + 8 * 8


@pytest.mark.parametrize(
    ("k", "stride", "padding", "n_in"), [(3, 2, 0, 4), (3, 1, 0, 5), (4, 2, 1, 3)]
)
def test_conv_transpose_spectral_matches_the_explicit_circular_matrix(
    k: int, stride: int, padding: int, n_in: int
) -> None:
    torch.manual_seed(1)
    layer = nn.ConvTranspose2d(2, 3, k, stride=stride, padding=padding, bias=False).double()
    layers = _profile(layer, (2, n_in, n_in), method="spectral")
    grid = (stride * n_in, stride * n_in)
    matrix = oracle.circular_conv_transpose_matrix(layer.weight, grid, stride)
    expected = oracle.log_volume(matrix)
    got = layers["<root>"].delta_h_spectral
    assert got == pytest.approx(expected, rel=1e-8)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_orthogonal_weight_is_not_singular(dtype: torch.dtype) -> None:
    q, _ = torch.linalg.qr(torch.randn(64, 64, dtype=torch.float64))
    value = float(F.sum_log_singular_values(q.to(dtype)))
    assert math.isfinite(value)
    assert abs(value) < 0.5  # log|det| of an orthogonal matrix rounded to 16 bits


def test_nan_weights_are_skipped_with_a_reason(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    layers = _profile(model, (4,))
    assert layers["0"].status is Status.SKIPPED
    assert "NaN" in layers["0"].reason
    assert layers["2"].status is Status.OK
    path = tmp_path / "nan.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    result = CliRunner().invoke(main, ["profile", str(path)])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output


def test_json_to_an_unwritable_path_is_a_clean_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["profile", "--json", str(tmp_path)])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "cannot write" in result.output


def test_ddp_module_prefix_is_stripped(tmp_path: Path) -> None:
    from entropy_probe.loading.torch_file import read_weights

    path = tmp_path / "ddp.pt"
    torch.save({"module.fc.weight": torch.eye(3), "module.fc.bias": torch.zeros(3)}, path)
    assert set(read_weights(path)) == {"fc.weight", "fc.bias"}


def test_upper_case_safetensors_suffix(tmp_path: Path) -> None:
    from entropy_probe.loading.torch_file import read_weights

    path = tmp_path / "W.SAFETENSORS"
    save_file({"w": torch.eye(2)}, str(path))
    assert torch.equal(read_weights(path)["w"], torch.eye(2))


def test_unsupported_device_is_a_clean_error() -> None:
    result = CliRunner().invoke(main, ["profile", "--device", "mps"])
    assert result.exit_code == 1
    assert "not supported" in result.output
    assert "Traceback" not in result.output


def test_smp_timm_universal_encoder_is_accepted() -> None:
    import segmentation_models_pytorch as smp

    from entropy_probe.errors import UnknownNameError
    from entropy_probe.loading.smp_loader import parse_smp_ident

    assert parse_smp_ident(smp, "Unet/tu-resnet18") == ("Unet", "tu-resnet18")
    with pytest.raises(UnknownNameError, match="no-such-net"):
        parse_smp_ident(smp, "Unet/tu-no-such-net")


def test_quantised_onnx_conv_is_listed_as_skipped() -> None:
    import onnx
    from onnx import TensorProto, helper

    from entropy_probe.walk.onnx_graph import walk_onnx

    node = helper.make_node("ConvInteger", ["x", "w"], ["y"], name="qconv", kernel_shape=[1, 1])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 2, 4, 4])],
        [helper.make_tensor("w", TensorProto.UINT8, [2, 2, 1, 1], [1, 2, 3, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    records = walk_onnx(onnx.load_from_string(model.SerializeToString()), (2, 4, 4))
    assert [(r.name, r.status) for r in records] == [("qconv", Status.SKIPPED)]
    assert "quantised" in records[0].reason


def test_weights_with_a_source_that_has_its_own_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file({"fc.weight": torch.eye(2)}, str(path))
    result = CliRunner().invoke(main, ["profile", str(path), "--weights", str(path)])
    assert result.exit_code == 1
    assert "--weights applies to" in result.output


def test_state_dict_tensors_without_weight_suffix_are_not_layers() -> None:
    from entropy_probe.walk.state_dict import walk_state_dict

    records = walk_state_dict({"pos_embed": torch.zeros(1, 5, 4), "fc.weight": torch.eye(4)})
    by_name = {r.name: r for r in records}
    assert by_name["pos_embed"].status is Status.SKIPPED
    assert by_name["fc"].kind == "linear" and by_name["fc"].status is None


def test_total_is_unknown_when_some_positions_are_unknown() -> None:
    from entropy_probe.entropy.profile import LayerEntropy, Profile

    def layer(name: str, delta_h: float | None) -> LayerEntropy:
        return LayerEntropy(
            name=name, kind="linear", op_type="x", status=Status.OK, delta_h=delta_h
        )

    partial = Profile(
        source="s", format="f", input_shape=None, layers=(layer("a", 1.0), layer("b", None))
    )
    assert partial.total_delta_h() is None
    full = Profile(
        source="s", format="f", input_shape=None, layers=(layer("a", 1.0), layer("b", 2.5))
    )
    assert full.total_delta_h() == 3.5


def test_batches_split_by_the_memory_budget_give_the_same_values(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The batched math is split to bound float64 copies; a budget of one matrix per call must
    not change a single value (vit_large would otherwise add 2× its weights)."""
    import entropy_probe.entropy.profile as engine
    from entropy_probe.api import profile

    whole = profile("default", progress=False)
    monkeypatch.setattr(engine, "_BATCH_BYTES", 1)
    split = profile("default", progress=False)
    for a, b in zip(whole.layers, split.layers, strict=True):
        assert a.delta_h_per_dim == b.delta_h_per_dim and a.spectral_shape == b.spectral_shape
