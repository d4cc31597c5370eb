"""Bad model inputs through ``entropy-probe profile`` / ``report``: each is refused in one line
(exit 1, no traceback, no output file) or, where the input is legal, profiled with the layer
clearly marked (``singular`` / ``skipped``). The README's fault table lists these tests."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from safetensors.torch import save_file
from torch import nn

from entropy_probe import profile
from entropy_probe.errors import EntropyProbeError, ShapeError, SourceError, UnknownNameError

from ._cli import assert_profiled, assert_refused, files_under, profile_json, run, statuses
from .conftest import export_onnx, tiny_net

# --------------------------------------------------------------------------------------------
# helpers


def _matmul_model(weight: TensorProto, dims: tuple[int, int]) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", weight.name], ["y"], name="mm")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, dims[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, dims[1]])],
        initializer=[weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _safetensors_with_header(path: Path, header: dict, data: bytes) -> Path:  # type: ignore[type-arg]
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def _refused_profile(tmp_path: Path, source: str | Path, pattern: str, *args: str | Path) -> str:
    """Refused both by ``profile --json`` and by ``report -o``; neither leaves a file."""
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    before = files_under(tmp_path)
    message = assert_refused(
        profile_json(source, out / "p.json", *args), pattern, directory=tmp_path, before=before
    )
    result = run("report", source, "-o", out / "r.html", "--device", "cpu", *args)
    assert_refused(result, pattern, directory=tmp_path, before=before)
    return message


# --------------------------------------------------------------------------------------------
# empty, truncated and wrongly named files


@pytest.mark.parametrize("suffix", [".onnx", ".safetensors", ".pt"])
def test_empty_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    _refused_profile(tmp_path, path, r"empty")


@pytest.mark.parametrize("name", ["tiny.onnx", "tiny.safetensors", "tiny.pt"])
def test_truncated_file(tmp_path: Path, model_dir: Path, name: str) -> None:
    data = (model_dir / name).read_bytes()
    path = tmp_path / name
    path.write_bytes(data[: len(data) // 2])
    message = _refused_profile(tmp_path, path, rf"cannot read .*{name}")
    assert "corrupt" in message or "truncated" in message


@pytest.mark.parametrize(
    ("content", "named", "looks_like"),
    [
        ("tiny.safetensors", "model.onnx", "safetensors"),
        ("tiny.pt", "model.onnx", "torch"),
        ("tiny.onnx", "model.pt", "onnx"),
        ("tiny.safetensors", "model.pt", "safetensors"),
        ("tiny.onnx", "model.safetensors", "onnx"),
        ("tiny.pt", "model.safetensors", "torch"),
    ],
)
def test_wrong_extension_names_the_real_format(
    tmp_path: Path, model_dir: Path, content: str, named: str, looks_like: str
) -> None:
    path = tmp_path / named
    path.write_bytes((model_dir / content).read_bytes())
    message = _refused_profile(tmp_path, path, rf"cannot read .*{named}")
    assert f"give it as {looks_like}:{path}" in message
    # ... and the advice works
    out = tmp_path / "ok.json"
    assert_profiled(profile_json(f"{looks_like}:{path}", out), out)


def test_unknown_extension(tmp_path: Path, model_dir: Path) -> None:
    path = tmp_path / "model.weights"
    path.write_bytes((model_dir / "tiny.onnx").read_bytes())
    _refused_profile(tmp_path, path, r"cannot tell the format .*prefix it")


def test_text_file_given_as_weights(tmp_path: Path) -> None:
    path = tmp_path / "notes.pt"
    path.write_text("not a checkpoint\n", encoding="utf-8")
    _refused_profile(tmp_path, "timm:test_resnet", r"cannot read .*notes\.pt", "--weights", path)


# --------------------------------------------------------------------------------------------
# ONNX: external data, lying and enormous shapes, corrupt ops


def _external(tmp_path: Path, tiny_onnx: Path) -> tuple[Path, Path]:
    model = onnx.load(str(tiny_onnx))
    path = tmp_path / "ext.onnx"
    onnx.save(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="ext.data",
        size_threshold=0,
    )
    return path, tmp_path / "ext.data"


def test_onnx_with_its_external_data(tmp_path: Path, tiny_onnx: Path) -> None:
    path, _ = _external(tmp_path, tiny_onnx)
    out = tmp_path / "p.json"
    data = assert_profiled(profile_json(path, out), out)
    assert set(statuses(data).values()) == {"ok"}


def test_onnx_external_data_missing(tmp_path: Path, tiny_onnx: Path) -> None:
    path, data = _external(tmp_path, tiny_onnx)
    data.unlink()
    message = _refused_profile(tmp_path, path, r"external data file 'ext\.data', which is missing")
    assert "Keep the data file next to the .onnx file" in message


def test_onnx_external_data_truncated(tmp_path: Path, tiny_onnx: Path) -> None:
    path, data = _external(tmp_path, tiny_onnx)
    data.write_bytes(data.read_bytes()[:1000])
    _refused_profile(tmp_path, path, r"cannot read the external data of ONNX file .*ext\.onnx")


def test_onnx_initializer_whose_shape_lies(tmp_path: Path) -> None:
    """Dims 4×4 with 3 values: a layer that silently vanished before."""
    weight = TensorProto(
        name="W", data_type=TensorProto.FLOAT, dims=[4, 4], raw_data=np.ones(3, "<f4").tobytes()
    )
    path = tmp_path / "lie.onnx"
    onnx.save(_matmul_model(weight, (4, 4)), str(path))
    message = _refused_profile(tmp_path, path, r"tensor 'W' declares shape 4×4 \(64 bytes\)")
    assert "holds 12" in message and "Re-export" in message


def test_onnx_initializer_with_typed_values_that_lie(tmp_path: Path) -> None:
    weight = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[4, 4])
    weight.float_data.extend([1.0] * 15)
    path = tmp_path / "lie.onnx"
    onnx.save(_matmul_model(weight, (4, 4)), str(path))
    _refused_profile(tmp_path, path, r"tensor 'W' declares shape 4×4 \(16 values\) but holds 15")


def test_onnx_enormous_declared_dims(tmp_path: Path) -> None:
    """A 10⁵×10⁵ weight (40 GB) declared over 16 bytes: refused without allocating it."""
    weight = TensorProto(
        name="W", data_type=TensorProto.FLOAT, dims=[100_000, 100_000], raw_data=bytes(16)
    )
    path = tmp_path / "huge.onnx"
    onnx.save(_matmul_model(weight, (100_000, 100_000)), str(path))
    _refused_profile(tmp_path, path, r"declares shape 100000×100000 \(40,000,000,000 bytes\)")


def test_onnx_op_type_that_is_not_an_operator(tmp_path: Path, tiny_onnx: Path) -> None:
    """A corrupt op type used to drop the layer from the profile without a word."""
    model = onnx.load(str(tiny_onnx))
    model.graph.node[0].op_type = "Cnnv"
    path = tmp_path / "op.onnx"
    onnx.save(model, str(path))
    _refused_profile(tmp_path, path, r"op type 'Cnnv', which is not an ONNX operator")


@pytest.mark.parametrize(
    ("attribute", "value"), [("group", ""), ("strides", 2.5), ("transB", "yes")]
)
def test_onnx_attribute_of_the_wrong_type(
    tmp_path: Path, tiny_onnx: Path, attribute: str, value: object
) -> None:
    """A Conv/Gemm attribute of the wrong type (a flipped bit made ``group`` an empty string)
    used to end in a ValueError traceback."""
    model = onnx.load(str(tiny_onnx))
    op = "Gemm" if attribute == "transB" else "Conv"
    node = next(n for n in model.graph.node if n.op_type == op)
    kept = [a for a in node.attribute if a.name != attribute]
    del node.attribute[:]
    node.attribute.extend([*kept, helper.make_attribute(attribute, value)])
    path = tmp_path / "attr.onnx"
    onnx.save(model, str(path))
    _refused_profile(tmp_path, path, rf"attribute '{attribute}' has type \w+, the operator needs")


def test_onnx_graph_input_that_nothing_produces(tmp_path: Path, tiny_onnx: Path) -> None:
    model = onnx.load(str(tiny_onnx))
    del model.graph.initializer[0]
    path = tmp_path / "dangling.onnx"
    onnx.save(model, str(path))
    _refused_profile(tmp_path, path, r"the graph is incomplete .*which nothing produces")


# --------------------------------------------------------------------------------------------
# safetensors headers that lie


def test_safetensors_shape_larger_than_its_data(tmp_path: Path) -> None:
    header = {"w.weight": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 12]}}
    path = _safetensors_with_header(tmp_path / "lie.safetensors", header, bytes(12))
    _refused_profile(tmp_path, path, r"cannot read .*lie\.safetensors as safetensors")


def test_safetensors_enormous_declared_dims(tmp_path: Path) -> None:
    header = {
        "w.weight": {"dtype": "F32", "shape": [100_000, 100_000], "data_offsets": [0, 4 * 10**10]}
    }
    path = _safetensors_with_header(tmp_path / "huge.safetensors", header, bytes(16))
    _refused_profile(tmp_path, path, r"cannot read .*huge\.safetensors as safetensors")


# --------------------------------------------------------------------------------------------
# input shapes


@pytest.mark.parametrize("source", ["default", "onnx"], ids=["torch-module", "onnx-graph"])
def test_enormous_input_shape(tmp_path: Path, source: str) -> None:
    """10¹⁰ values per sample: refused before anything is allocated (this was a traceback
    from the allocator for torch models). The ONNX export leaves H and W dynamic (a fixed one
    is refused earlier, for not fitting)."""
    conv = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    dynamic = export_onnx(conv, tmp_path / "dyn.onnx", dynamic={2: "h", 3: "w"})
    src = dynamic if source == "onnx" else source
    _refused_profile(
        tmp_path,
        src,
        r"values per sample, more than .*--input-shape",
        "--input-shape",
        "3,100000,100000",
    )


def test_input_shape_that_does_not_fit_the_model(tmp_path: Path) -> None:
    _refused_profile(tmp_path, "default", r"forward pass .* failed", "--input-shape", "3,5,5")


def test_input_shape_with_the_wrong_rank_for_onnx(tmp_path: Path, tiny_onnx: Path) -> None:
    _refused_profile(tmp_path, tiny_onnx, r"has 2 dims, but the ONNX input", "--input-shape", "8,8")


def test_enormous_input_shape_in_the_api() -> None:
    with pytest.raises(ShapeError, match="values per sample"):
        profile("default", input_shape=(1, 100_000, 100_000))


# --------------------------------------------------------------------------------------------
# weights: NaN/Inf, all-zero, singular


def _weights(tmp_path: Path, edit: str) -> Path:
    state = {k: v.clone().contiguous() for k, v in tiny_net().state_dict().items()}
    conv, dense = state["0.weight"], state["3.weight"]
    if edit == "nan":
        conv[0, 0, 0, 0] = float("nan")
        dense[0, 0] = float("inf")
    elif edit == "zero":
        conv.zero_()
    elif edit == "singular":
        dense[1] = dense[0]  # two equal rows: rank 9 of 10
    path = tmp_path / f"{edit}.safetensors"
    save_file(state, str(path))
    return path


def test_nan_and_inf_weights_are_skipped_with_a_reason(tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    data = assert_profiled(profile_json(_weights(tmp_path, "nan"), out), out)
    assert statuses(data) == {"0": "skipped", "3": "skipped"}
    assert all("NaN" in layer["reason"] or "finite" in layer["reason"] for layer in data["layers"])


def test_nan_weights_in_a_module_are_skipped(tmp_path: Path) -> None:
    """Through a real architecture (timm) as well: the layer is skipped, the others computed."""
    import timm

    model = timm.create_model("test_resnet", pretrained=False)
    state = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    state["conv1.0.weight"][0] = float("nan")
    weights = tmp_path / "nan.safetensors"
    save_file(state, str(weights))
    out = tmp_path / "p.json"
    data = assert_profiled(profile_json("timm:test_resnet", out, "--weights", weights), out)
    found = statuses(data)
    assert found["conv1.0"] == "skipped"
    assert "ok" in found.values()


def test_nan_weights_with_data_are_refused_in_one_line(tmp_path: Path) -> None:
    """Their activations are NaN: the estimator used to raise a raw LinAlgError."""
    import timm

    model = timm.create_model("test_resnet", pretrained=False)
    state = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    state["conv1.0.weight"][0] = float("nan")
    weights = tmp_path / "nan.safetensors"
    save_file(state, str(weights))
    _refused_profile(
        tmp_path,
        "timm:test_resnet",
        r"activations are not finite",
        "--weights",
        weights,
        "--data",
        "digits",
        "--samples",
        "16",
    )


def test_all_zero_layer_is_singular(tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    data = assert_profiled(profile_json(_weights(tmp_path, "zero"), out), out)
    assert statuses(data) == {"0": "singular", "3": "ok"}
    conv = data["layers"][0]
    assert conv["delta_h_per_dim"] is None  # −inf is written as null in strict JSON


def test_rank_deficient_layer_is_singular(tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    data = assert_profiled(profile_json(_weights(tmp_path, "singular"), out), out)
    assert statuses(data) == {"0": "ok", "3": "singular"}


def test_all_zero_onnx_layer_is_singular(tmp_path: Path) -> None:
    net = tiny_net()
    with torch.no_grad():
        net[3].weight.zero_()
    from .conftest import export_onnx

    path = export_onnx(net, tmp_path / "zero.onnx")
    out = tmp_path / "p.json"
    data = assert_profiled(profile_json(path, out), out)
    assert sorted(statuses(data).values()) == ["ok", "singular"]
    assert data["total_delta_h"] is None  # −inf


# --------------------------------------------------------------------------------------------
# nothing to analyse


def test_onnx_without_an_analysable_layer(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    message = _refused_profile(tmp_path, path, r"no layer to analyse in .*relu\.onnx")
    assert "Relu" in message


def test_state_dict_without_a_layer_weight(tmp_path: Path) -> None:
    path = tmp_path / "biases.safetensors"
    save_file({"a.bias": torch.zeros(3), "b.running_mean": torch.zeros(3)}, str(path))
    _refused_profile(
        tmp_path, path, r"no layer to analyse .*none of its 2 tensors is a `\*\.weight`"
    )


def test_state_dict_of_only_non_weights_is_listed_as_skipped(tmp_path: Path) -> None:
    """A 2-D tensor without ``.weight`` (an embedding?) is listed, marked skipped."""
    path = tmp_path / "embed.safetensors"
    save_file({"tokens": torch.randn(4, 4)}, str(path))
    out = tmp_path / "p.json"
    data = assert_profiled(profile_json(path, out), out)
    assert statuses(data) == {"tokens": "skipped"}


def test_no_layer_error_type_in_the_api(tmp_path: Path) -> None:
    path = tmp_path / "biases.safetensors"
    save_file({"a.bias": torch.zeros(3)}, str(path))
    with pytest.raises(SourceError, match="no layer to analyse"):
        profile(str(path))


# --------------------------------------------------------------------------------------------
# names and directories


@pytest.mark.parametrize(
    ("source", "pattern"),
    [
        ("timm:resnet_nope", r"unknown timm model 'resnet_nope'\. Did you mean"),
        ("smp:Unet/resnet_nope", r"unknown SMP encoder 'resnet_nope'\. Did you mean"),
        ("smp:Uxnet/resnet34", r"unknown SMP architecture 'Uxnet'\. Did you mean"),
        ("smp:Unet/tu-resnet_nope", r"unknown timm model 'resnet_nope' in SMP encoder"),
        ("smp:resnet34", r"SMP sources are smp:ARCH/ENCODER"),
        ("nope:thing", r"source scheme"),
        ("timm:", r"needs a name"),
    ],
)
def test_unknown_names(tmp_path: Path, source: str, pattern: str) -> None:
    _refused_profile(tmp_path, source, pattern)


def test_unknown_name_error_type_in_the_api() -> None:
    with pytest.raises(UnknownNameError):
        profile("timm:resnet_nope")


def test_directory_without_config(tmp_path: Path) -> None:
    folder = tmp_path / "weights_only"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"x")
    _refused_profile(tmp_path, folder, r"is a directory but not a timm or SMP save_pretrained")


def test_directory_with_invalid_config(tmp_path: Path) -> None:
    folder = tmp_path / "bad_config"
    folder.mkdir()
    (folder / "config.json").write_text("{", encoding="utf-8")
    _refused_profile(tmp_path, folder, r"not a timm or SMP save_pretrained directory")


@pytest.mark.parametrize("prefix", ["timm", "smp"])
def test_prefixed_directory_with_invalid_config(tmp_path: Path, prefix: str) -> None:
    folder = tmp_path / "bad_config"
    folder.mkdir()
    (folder / "config.json").write_text("{", encoding="utf-8")
    _refused_profile(tmp_path, f"{prefix}:{folder}", r"config\.json is not valid JSON")


def test_directory_with_config_but_no_weights(tmp_path: Path) -> None:
    folder = tmp_path / "cfg_only"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({"architecture": "test_resnet", "num_classes": 10}), encoding="utf-8"
    )
    _refused_profile(tmp_path, folder, r"has a config\.json but no weights file")


def test_directory_naming_an_unknown_architecture(tmp_path: Path) -> None:
    folder = tmp_path / "cfg"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({"architecture": "resnet_nope"}), encoding="utf-8"
    )
    _refused_profile(tmp_path, folder, r"unknown timm model 'resnet_nope'")


def test_directory_whose_weights_do_not_fit(tmp_path: Path) -> None:
    folder = tmp_path / "cfg"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({"architecture": "test_resnet"}), encoding="utf-8"
    )
    save_file({"fc.weight": torch.zeros(3, 3)}, str(folder / "model.safetensors"))
    _refused_profile(tmp_path, folder, r"the weights do not fit .*missing key")


def test_missing_source_file(tmp_path: Path) -> None:
    _refused_profile(tmp_path, tmp_path / "missing.onnx", r"not found")


def test_errors_are_entropy_probe_errors(tmp_path: Path, model_dir: Path) -> None:
    """Through the API every refusal above is an EntropyProbeError subclass."""
    path = tmp_path / "half.pt"
    data = (model_dir / "tiny.pt").read_bytes()
    path.write_bytes(data[: len(data) // 2])
    for source in (str(path), "relu-missing.onnx", "timm:resnet_nope"):
        with pytest.raises(EntropyProbeError):
            profile(source)


def test_a_control_character_in_a_name_keeps_the_error_on_one_line(tmp_path: Path) -> None:
    """Found by the slow bit-flip run: a flipped byte turned a tensor name into 'x\\n0.weig';
    the refusal quoted it and spanned two lines."""
    from click.testing import CliRunner
    from onnx import TensorProto, helper

    from entropy_probe.cli import main

    node = helper.make_node("Conv", ["x", "x\n0.weig"], ["y"], name="/0/Conv")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    path = tmp_path / "newline.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    result = CliRunner().invoke(main, ["profile", str(path)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "x\\n0.weig" in lines[0], result.stderr


# --------------------------------------------------------------------------------------------
# found by a reviewer acting as a new user


def test_input_shape_that_contradicts_fixed_onnx_dims(tmp_path: Path, tiny_onnx: Path) -> None:
    """tiny.onnx fixes 3×8×8 per sample: a 1-channel shape used to be profiled as if it fit."""
    message = _refused_profile(
        tmp_path, tiny_onnx, r"does not fit the ONNX input", "--input-shape", "1,8,8"
    )
    assert "fixed dim 1 to 3" in message


def test_input_shape_for_a_bare_state_dict_is_refused(
    tmp_path: Path, tiny_safetensors: Path
) -> None:
    """It used to be printed in the header and written to the JSON, and never used."""
    _refused_profile(
        tmp_path, tiny_safetensors, r"--input-shape needs an architecture", "--input-shape", "3,8,8"
    )


def test_bare_state_dict_note_says_spectral_values_are_unknown(tiny_safetensors: Path) -> None:
    result = profile(str(tiny_safetensors), method="spectral")
    assert all(layer.delta_h_spectral is None for layer in result.layers)
    assert any("spectral values unknown" in note for note in result.notes)


@pytest.mark.parametrize(
    ("tensors", "label"),
    [
        ({"a.weight": torch.zeros(0, 4)}, "the weight"),
        ({"a.weight": torch.zeros(4, 0)}, "the weight"),
        ({"bn.running_var": torch.zeros(0), "bn.weight": torch.zeros(0)}, "the weight"),
    ],
)
def test_zero_size_tensors_are_skipped_with_a_reason(
    tmp_path: Path, tensors: dict[str, torch.Tensor], label: str
) -> None:
    """These were ZeroDivisionError tracebacks."""
    path = tmp_path / "empty.safetensors"
    save_file(tensors, str(path))
    out = tmp_path / "p.json"
    data = assert_profiled(profile_json(path, out), out)
    (layer,) = data["layers"]
    assert layer["status"] == "skipped"
    assert label in layer["reason"] and "is empty" in layer["reason"]


def test_default_scheme_takes_no_name(tmp_path: Path) -> None:
    _refused_profile(tmp_path, "default:foo", r"default model takes no name")


def test_a_bare_tensor_is_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "tensor.pt"
    torch.save(torch.randn(3), path)
    _refused_profile(tmp_path, path, r"found a single tensor\); expected a state_dict")


def test_text_given_as_weights_names_what_it_is_not(tmp_path: Path) -> None:
    """The message used to end in a bare '101' (a KeyError on the byte 'e')."""
    path = tmp_path / "text.pt"
    path.write_text("hello\n", encoding="utf-8")
    message = _refused_profile(tmp_path, "timm:test_resnet", r"cannot read", "--weights", path)
    assert "not a pickle or zip checkpoint" in message or "invalid" in message


def test_timm_directory_whose_architecture_is_not_a_name(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"architecture": 5}', encoding="utf-8")
    _refused_profile(tmp_path, folder, r"'architecture' must be a timm model name .* got 5")
