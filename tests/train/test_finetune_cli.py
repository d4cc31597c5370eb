"""``entropy-probe finetune`` end to end on small real data, for every source format."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from PIL import Image
from torch import nn

from entropy_probe.cli import main
from entropy_probe.entropy.profile import PROFILE_SCHEMA
from entropy_probe.loading import load_model

pytestmark = pytest.mark.usefixtures("builtin_plugins_only")

FAST = ("--device", "cpu", "--epochs", "1", "--batch-size", "64")


def run(*args: str) -> Result:
    return CliRunner().invoke(main, ["finetune", *args], catch_exceptions=True)


def assert_clean_error(result: Result, text: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], result.stderr


def _classes(root: Path, n: int = 3, per: int = 6, size: int = 16) -> Path:
    rng = np.random.default_rng(0)
    for c in range(n):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per):
            arr = rng.integers(0, 60, (size, size, 3), dtype=np.uint8) + np.uint8(60 * c)
            Image.fromarray(arr).save(root / f"class{c}" / f"{i}.png")
    return root


def _digit_folder(root: Path, per_class: int = 12) -> Path:
    """Real sklearn digits written as 8x8 PNGs in class folders (120 images)."""
    from entropy_probe.datasets import load_digits

    digits = load_digits()
    for c in range(10):
        (root / str(c)).mkdir(parents=True)
        picks = (digits.targets == c).nonzero()[:per_class, 0]
        for i in picks.tolist():
            pixels = (digits.inputs[i, 0].numpy() * 255).round().astype(np.uint8)
            Image.fromarray(pixels).save(root / str(c) / f"{i}.png")
    return root


def test_default_model_on_a_digit_folder(tmp_path: Path):
    out, data = tmp_path / "out", _digit_folder(tmp_path / "digits")
    result = run("--task", "classify", "--data", str(data), "--out", str(out), *FAST,
                 "--batch-size", "16", "--lr", "0.003")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "default (default) classify: held-out accuracy" in result.stdout
    assert "resized to the model's 28x28" in result.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["metric"] > 0.3  # 24 held-out digits; chance 0.1
    assert set(rows[0]["entropy"]) >= {"features.0", "classifier.3"}
    assert "features.1" not in rows[0]["entropy"]  # its BatchNorm, folded into features.0
    conv = rows[0]["entropy"]["features.4"]  # features.0's 8×1 first tap has one σ: no shape
    assert set(conv) == {"delta_h_per_dim", "spectral_shape", "shape_excess"}
    assert conv["shape_excess"] is not None and conv["shape_excess"] < 0.5
    for name in ("profile_before.json", "profile_after.json"):
        profile = json.loads((out / name).read_text())
        assert profile["schema"] == PROFILE_SCHEMA
    before = json.loads((out / "profile_before.json").read_text())["layers"]
    after = json.loads((out / "profile_after.json").read_text())["layers"]
    assert [x["delta_h_per_dim"] for x in before] != [x["delta_h_per_dim"] for x in after]
    from safetensors.torch import load_file

    from entropy_probe.default_model import DefaultMnistCNN

    DefaultMnistCNN().load_state_dict(load_file(out / "model.safetensors"))
    summary = json.loads((out / "finetune.json").read_text())
    assert summary["format"] == "default" and summary["steps"] == 6  # 96 train / 16
    assert not (out / ".lock").exists()


def test_lambda_zero_never_imports_the_loss_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "entropy_probe.train.losses", None)  # import would fail
    data = str(_digit_folder(tmp_path / "d", per_class=4))
    result = run("--task", "classify", "--data", data, "--out", str(tmp_path / "o"), *FAST)
    assert result.exit_code == 0, result.output


def test_entropy_loss_terms_are_logged(tmp_path: Path):
    pytest.importorskip("entropy_probe.train.losses")
    patterns = pytest.importorskip("entropy_probe.patterns")
    if not hasattr(patterns, "resolve_pattern"):
        pytest.skip("entropy_probe.patterns.resolve_pattern (reference by name) not there yet")
    out = tmp_path / "out"
    result = run(
        "--task", "classify", "--data", "digits", "--out", str(out), *FAST,
        "--lambda-dense", "0.01", "--lambda-conv", "0.01", "--no-entropy-log",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    row = json.loads((out / "metrics.jsonl").read_text())
    assert set(row["parts"]) == {"dense", "conv"}
    assert row["train_loss"] != row["task_loss"]
    assert json.loads((out / "run_config.json").read_text())["lambda_dense"] == 0.01


def test_timm_on_an_image_folder_adapts_the_head_and_loads_back(tmp_path: Path):
    data, out = _classes(tmp_path / "data"), tmp_path / "out"
    result = run("timm:resnet10t", "--task", "classify", "--data", str(data), "--out", str(out),
                 *FAST, "--no-entropy-log")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "head classifier adapted from 1000 to 3 outputs" in result.stderr
    loaded = load_model(str(out))
    assert loaded.format == "timm" and loaded.module is not None
    assert loaded.module.num_classes == 3
    assert loaded.input_shape == (3, 16, 16)  # the data's size, which the CNN accepts


def test_smp_on_a_segmentation_folder_loads_back(tmp_path: Path):
    data, out = tmp_path / "data", tmp_path / "out"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        image = rng.integers(0, 255, (32, 32), dtype=np.uint8)
        Image.fromarray(image).save(data / "images" / f"{i}.png")
        Image.fromarray(((image > 128) * 255).astype(np.uint8)).save(data / "masks" / f"{i}.png")
    result = run("smp:Unet/resnet18", "--task", "segment", "--data", str(data), "--out",
                 str(out), *FAST, "--batch-size", "4", "--no-entropy-log")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "held-out dice" in result.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["_model_class"] == "Unet" and config["classes"] == 1
    assert load_model(str(out)).format == "smp"


class _TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 * 16 * 16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.head(torch.relu(self.conv(x)).flatten(1)), dim=1)


def test_onnx_in_onnx_out(tmp_path: Path):
    import onnxruntime as ort
    from safetensors.torch import load_file

    from entropy_probe.train.finetune import onnx_to_torch

    source = tmp_path / "tiny.onnx"
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _TinyNet().eval(), (torch.rand(1, 3, 16, 16),), str(source), dynamo=False,
            opset_version=17, input_names=["pixels"], dynamic_axes={"pixels": {0: "b"}},
        )  # fmt: skip
    data, out = _classes(tmp_path / "data"), tmp_path / "out"
    result = run(str(source), "--task", "classify", "--data", str(data), "--out", str(out),
                 *FAST, "--lr", "0.01")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "outputs probabilities" in result.stderr
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "pixels"
    x = torch.rand(5, 3, 16, 16)
    exported = session.run(None, {"pixels": x.numpy()})[0]
    module = onnx_to_torch(load_model(str(source)))
    module.load_state_dict(load_file(out / "model.safetensors"))
    with torch.no_grad():
        np.testing.assert_allclose(exported, module.eval()(x).numpy(), atol=1e-5)
    original = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    assert not np.allclose(original.run(None, {"pixels": x.numpy()})[0], exported)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--task", "segment", "--data", "nuclei"), "task segment needs a (N, classes, H, W) map"),
        (("--task", "classify", "--data", "cifar10"), "neither a built-in dataset"),
        (("--task", "classify", "--data", "nuclei"), "is for task segment, not classify"),
        (("--task", "classify", "--data", "digits", "--amp", "bf16"), "needs a CUDA device"),
        (("--task", "classify", "--data", "digits", "--device", "tpu"), "cpu or cuda"),
    ],
)
def test_user_mistakes_are_one_line_errors(
    tmp_path: Path, args: tuple[str, ...], message: str, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # --amp on a CUDA machine runs
    assert_clean_error(run(*args, "--out", str(tmp_path / "o"), "--epochs", "1"), message)


def test_a_bare_state_dict_is_refused(tmp_path: Path):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(2, 2)}, path)
    result = run(str(path), "--task", "classify", "--data", "digits", "--out", str(tmp_path / "o"))
    assert_clean_error(result, "bare state dict without an architecture")


def test_resume_with_changed_options_is_refused(tmp_path: Path):
    out, data = str(tmp_path / "out"), str(_digit_folder(tmp_path / "d", per_class=4))
    base = ("--task", "classify", "--data", data, "--out", out, *FAST, "--no-entropy-log")
    assert run(*base).exit_code == 0
    assert_clean_error(run(*base), "already holds a run: pass --resume")
    assert_clean_error(run(*base, "--resume", "--seed", "1"), "seed: 0 → 1")


# --------------------------------------------------------------------------------------------
# tiny ONNX sources (fast: a conv and a head)


class _PoolNet(nn.Module):
    """Runs on any input size (global pooling), as most exported CNN classifiers do."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.head(torch.relu(self.conv(x)).mean(dim=(2, 3))), dim=1)


def _export(path: Path, dynamic: dict[int, str]) -> Path:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _PoolNet().eval(), (torch.rand(1, 3, 16, 16),), str(path), dynamo=False,
            opset_version=17, input_names=["pixels"], dynamic_axes={"pixels": dynamic},
        )  # fmt: skip
    return path


def _declared(path: Path) -> list[int | str]:
    import onnx

    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    return [d.dim_param or d.dim_value for d in dims]


# --------------------------------------------------------------------------------------------
# refused runs: one line, and nothing written


def test_an_empty_out_is_refused_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from entropy_probe.errors import EntropyProbeError
    from entropy_probe.train.finetune import finetune

    monkeypatch.chdir(tmp_path)
    result = run("--task", "classify", "--data", "digits", "--out", "", "--epochs", "1")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "Invalid value for '--out': an empty path would write the run into" in result.stderr
    with pytest.raises(EntropyProbeError, match="the output directory is empty"):
        finetune(task="classify", data="digits", out_dir="")
    assert list(tmp_path.iterdir()) == []


_NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        pytest.param(("--amp", "bf16"), 1, "amp=bf16 needs a CUDA device", marks=_NO_CUDA),
        pytest.param(("--device", "cuda"), 1, "no CUDA device is available", marks=_NO_CUDA),
        (("--lr", "nan"), 2, "'--lr': nan is not a finite number: give a number > 0"),
        (("--lr", "inf"), 2, "'--lr': inf is not a finite number"),
        (("--weight-decay", "nan"), 2, "'--weight-decay': nan is not a finite number"),
        (("--weight-decay", "inf"), 2, "'--weight-decay': inf is not a finite number"),
        (("--lambda-dense", "nan"), 2, "'--lambda-dense': nan is not a finite number"),
        (("--lambda-conv", "inf"), 2, "'--lambda-conv': inf is not a finite number"),
    ],
)
def test_refused_options_leave_no_output_directory(
    tmp_path: Path, args: tuple[str, ...], code: int, message: str
):
    out = tmp_path / "o"
    result = run("--task", "classify", "--data", "digits", "--out", str(out), *FAST, *args)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert not out.exists()


def test_the_python_pipeline_checks_its_options_before_writing(tmp_path: Path):
    from entropy_probe.errors import EntropyProbeError
    from entropy_probe.train import FitConfig
    from entropy_probe.train.finetune import finetune

    out = tmp_path / "o"
    for config, kwargs, message in [
        (FitConfig(lr=float("nan")), {}, "lr must be a finite number > 0, got nan"),
        (FitConfig(weight_decay=float("inf")), {}, "weight_decay must be a finite number >= 0"),
        (FitConfig(device="cpu", amp="bf16"), {}, "amp=bf16 needs a CUDA device"),
        (FitConfig(device="cpu"), {"lambda_dense": float("nan")}, "lambda_dense must be a finite"),
    ]:
        with pytest.raises(EntropyProbeError, match=message):
            finetune(task="classify", data="digits", out_dir=out, config=config, **kwargs)
        assert not out.exists()


def test_a_run_failing_before_its_first_checkpoint_leaves_nothing_new(tmp_path: Path):
    """Not every refusal can be known before the run starts (here the loss diverges at once):
    the files it wrote and the directories it created are removed again; a directory that
    was there already is left as it was."""
    source = str(_export(tmp_path / "m.onnx", {0: "b", 2: "h", 3: "w"}))
    data = str(_classes(tmp_path / "d", size=8))
    diverge = (*FAST, "--lr", "1e30", "--optimizer", "sgd", "--batch-size", "4")
    nested = tmp_path / "runs" / "a"
    result = run(source, "--task", "classify", "--data", data, "--out", str(nested), *diverge)
    assert_clean_error(result, "the loss became")
    assert not (tmp_path / "runs").exists()
    there = tmp_path / "there"
    there.mkdir()
    (there / "mine.txt").write_text("kept")
    result = run(source, "--task", "classify", "--data", data, "--out", str(there), *diverge)
    assert_clean_error(result, "the loss became")
    assert sorted(p.name for p in there.iterdir()) == ["mine.txt"]


def test_one_class_or_an_empty_class_folder_is_refused(tmp_path: Path):
    data, out = _classes(tmp_path / "one", n=1), tmp_path / "o"
    result = run("--task", "classify", "--data", str(data), "--out", str(out), *FAST)
    assert_clean_error(result, "classification needs at least 2 classes")
    data = _classes(tmp_path / "empty", n=2)
    (data / "class2").mkdir()
    result = run("--task", "classify", "--data", str(data), "--out", str(out), *FAST)
    assert_clean_error(result, "class folder class2/ holds no images")
    assert not out.exists()


def test_a_lambda_the_reference_has_no_curve_for_is_refused(tmp_path: Path):
    """classifier_mlp has a dense curve only: --lambda-conv with it would add nothing."""
    pytest.importorskip("entropy_probe.patterns.select")
    data, out = str(_digit_folder(tmp_path / "d", per_class=4)), tmp_path / "o"
    base = ("--task", "classify", "--data", data, "--out", str(out), *FAST, "--no-entropy-log")
    result = run(*base, "--lambda-conv", "0.1", "--reference", "classifier_mlp")
    assert_clean_error(result, "lambda_conv=0.1 (--lambda-conv) asks for a conv term")
    assert "'family classifier_mlp' has no conv curve (it has dense curves)" in result.stderr
    assert not out.exists()
    result = run(*base, "--lambda-dense", "0.1", "--reference", "classifier_mlp")
    assert result.exit_code == 0, result.output
    assert set(json.loads((out / "metrics.jsonl").read_text())["parts"]) == {"dense"}


# --------------------------------------------------------------------------------------------
# ONNX inputs keep their declared size


def test_onnx_with_a_fixed_input_size_is_trained_and_exported_at_that_size(tmp_path: Path):
    """The model would run on the 8x8 images, but its export fixed 16x16: the data is resized
    (with a note) and model.onnx declares the same input as the source."""
    import onnxruntime as ort

    source = _export(tmp_path / "fixed.onnx", {0: "b"})
    data, out = _classes(tmp_path / "data", size=8), tmp_path / "out"
    result = run(str(source), "--task", "classify", "--data", str(data), "--out", str(out),
                 *FAST, "--no-entropy-log")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "note: the data's 8x8 images are resized to the model's 16x16" in result.stderr
    assert _declared(out / "model.onnx") == _declared(source) == ["b", 3, 16, 16]
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.run(None, {"pixels": np.random.rand(2, 3, 16, 16).astype(np.float32)})[
        0
    ].shape == (2, 3)
    profile = json.loads((out / "profile_after.json").read_text())
    assert profile["input_shape"] == [3, 16, 16]


def test_onnx_with_a_dynamic_input_size_keeps_the_data_size_and_stays_dynamic(tmp_path: Path):
    import onnxruntime as ort

    source = _export(tmp_path / "dynamic.onnx", {0: "b", 2: "h", 3: "w"})
    data, out = _classes(tmp_path / "data", size=8), tmp_path / "out"
    result = run(str(source), "--task", "classify", "--data", str(data), "--out", str(out),
                 *FAST, "--no-entropy-log")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "resized" not in result.stderr
    assert _declared(out / "model.onnx") == ["b", 3, "h", "w"]
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    for size in (8, 24):
        x = np.random.rand(1, 3, size, size).astype(np.float32)
        assert session.run(None, {"pixels": x})[0].shape == (1, 3)
