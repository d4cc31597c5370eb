"""A fine-tuned timm checkpoint (other class count, other input channels) loads from its
weights alone: the head and stem sizes are read off the state dict."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from entropy_probe import load_model
from entropy_probe.loading import LoadOptions


def test_fine_tuned_head_and_stem_are_read_off_the_weights(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=7, in_chans=1)
    path = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    loaded = load_model("timm:resnet18", LoadOptions(weights=path))
    assert loaded.module is not None
    assert tuple(loaded.module.fc.weight.shape) == (7, 512)
    assert tuple(loaded.module.conv1.weight.shape) == (64, 1, 7, 7)
    assert torch.equal(loaded.module.fc.weight, model.fc.weight)
    assert loaded.input_shape == (1, 224, 224)  # the stem's channels, not the config's 3


def test_matching_head_adds_no_arguments() -> None:
    timm = pytest.importorskip("timm")
    from entropy_probe.loading.timm_loader import _head_kwargs

    state = timm.create_model("resnet18", pretrained=False).state_dict()
    assert _head_kwargs(timm, "resnet18", state) == {}
