"""The embedded default model: a small CNN trained on the real mnist5k digits.

It lets every command run with no checkpoint of the user's: ``load_default_model()`` returns
the architecture with the weights that ship in ``entropy_probe/assets/``. The weights and the
metadata next to them (held-out accuracy, seed, command) are both written by
``scripts/train_default_model.py``; nothing here is hard-coded but the architecture.

Input: float32 ``(N, 1, 28, 28)`` in [0, 1] (as :func:`entropy_probe.datasets.load_mnist5k`
returns it, no mean/std normalisation). Output: ``(N, 10)`` logits.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

import torch
from torch import nn

from entropy_probe.errors import SourceError

__all__ = [
    "DEFAULT_MODEL_INFO",
    "DefaultMnistCNN",
    "DefaultModelInfo",
    "build_default_model",
    "default_model_info",
    "load_default_model",
]

WEIGHTS_FILE = "default_mnist_cnn.safetensors"
INFO_FILE = "default_mnist_cnn.json"
HIDDEN = 48  # 16·7·7 → 48 keeps the float32 weights file under 200 KB (→ 64 would not)


class DefaultMnistCNN(nn.Module):
    """conv(1→8)+BN+ReLU → pool → conv(8→16)+BN+ReLU → pool → dense(784→48)+ReLU → dense(48→10)."""

    def __init__(self, num_classes: int = 10, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, kernel_size=3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, kernel_size=3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 7 * 7, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classifier(self.features(x))
        return logits


@dataclass(frozen=True)
class DefaultModelInfo:
    """Provenance of the shipped default weights (read from the JSON beside them)."""

    name: str
    input_shape: tuple[int, int, int]
    dataset: str
    accuracy: float  # on the held-out validation split, eval mode, in [0, 1]
    num_val: int
    val_fraction: float
    split_seed: int
    seed: int
    epochs: int
    command: str
    torch_version: str
    date: str
    sha256: str  # of the .safetensors file

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DefaultModelInfo:
        return cls(
            name=str(data["name"]),
            input_shape=(
                int(data["input_shape"][0]),
                int(data["input_shape"][1]),
                int(data["input_shape"][2]),
            ),
            dataset=str(data["dataset"]),
            accuracy=float(data["accuracy"]),
            num_val=int(data["num_val"]),
            val_fraction=float(data["val_fraction"]),
            split_seed=int(data["split_seed"]),
            seed=int(data["seed"]),
            epochs=int(data["epochs"]),
            command=str(data["command"]),
            torch_version=str(data["torch_version"]),
            date=str(data["date"]),
            sha256=str(data["sha256"]),
        )


def _asset(name: str) -> bytes:
    try:
        return (resources.files("entropy_probe") / "assets" / name).read_bytes()
    except (FileNotFoundError, OSError) as exc:
        raise SourceError(
            f"the default model asset {name!r} is missing from entropy_probe/assets; "
            "recreate it with: python scripts/train_default_model.py"
        ) from exc


def build_default_model() -> nn.Module:
    """The default architecture with fresh (untrained) weights, in training mode."""
    return DefaultMnistCNN()


@functools.lru_cache(maxsize=1)
def default_model_info() -> DefaultModelInfo:
    """Metadata of the shipped weights, read from ``assets/default_mnist_cnn.json``."""
    try:
        data = json.loads(_asset(INFO_FILE).decode("utf-8"))
        return DefaultModelInfo.from_json(data)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise SourceError(f"entropy_probe/assets/{INFO_FILE} is malformed: {exc}") from exc


def load_default_model() -> nn.Module:
    """The default architecture with the shipped trained weights, in eval mode."""
    from safetensors.torch import load as load_safetensors

    blob = _asset(WEIGHTS_FILE)
    expected = default_model_info().sha256
    actual = hashlib.sha256(blob).hexdigest()
    if actual != expected:
        raise SourceError(
            f"entropy_probe/assets/{WEIGHTS_FILE} does not match its metadata "
            f"(sha256 {actual[:12]}…, expected {expected[:12]}…); recreate both with: "
            "python scripts/train_default_model.py"
        )
    model = build_default_model()
    model.load_state_dict(load_safetensors(blob), strict=True)
    return model.eval()


# ``DEFAULT_MODEL_INFO`` is declared here but read lazily (module ``__getattr__``), so that
# importing this module (e.g. from the training script, before the assets exist) never touches
# the asset files. ``from entropy_probe.default_model import DEFAULT_MODEL_INFO`` works as usual.
DEFAULT_MODEL_INFO: DefaultModelInfo


def __getattr__(name: str) -> Any:
    if name == "DEFAULT_MODEL_INFO":
        return default_model_info()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
