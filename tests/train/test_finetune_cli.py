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
def test_user_mistakes_are_one_line_errors(tmp_path: Path, args: tuple[str, ...], message: str):
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
