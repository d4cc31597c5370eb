"""The Python API as a library user meets it: in-memory modules and paths as sources, several
inputs through ``example_input``, and every wrong argument an ``EntropyProbeError``."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import entropy_probe
from entropy_probe import LoadedModel, profile, profile_loaded
from entropy_probe.errors import ArgumentError, EntropyProbeError, ShapeError, SourceError
from entropy_probe.patterns.select import compare_with


def small() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5)
    ).eval()


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _values(p: entropy_probe.Profile) -> dict[str, float | None]:
    return {layer.name: layer.delta_h for layer in p.analysed}


def test_an_nn_module_in_memory_is_a_source_and_is_left_alone() -> None:
    model = small().train()
    before = _state(model)
    got = profile(model, input_shape=(1, 4, 4), progress=False)
    direct = profile_loaded(
        LoadedModel(source="m", format="torch", module=model, input_shape=(1, 4, 4)),
        progress=False,
    )
    assert _values(got) == _values(direct) and len(got.analysed) == 3
    assert got.source == "<Sequential in memory>"
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_path_object_is_a_source(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in small().state_dict().items()}, str(path))
    assert _values(profile(path, progress=False)) == _values(profile(str(path), progress=False))


@pytest.mark.parametrize(
    ("shape", "ok"),
    [
        ("1,4,4", True),
        (torch.Size([1, 4, 4]), True),
        ((np.int64(1), 4, 4), True),
        ((1, -4, 4), False),
        ((1, 2.5, 4), False),  # used to be truncated to 2 without a word
        ("1,a,4", False),
        (5, False),
        ((1, 2, 3, 4, 5), False),
    ],
)
def test_input_shape_forms(shape: object, ok: bool) -> None:
    if ok:
        assert profile(small(), input_shape=shape, progress=False).input_shape == (1, 4, 4)  # type: ignore[arg-type]
    else:
        with pytest.raises(ArgumentError, match="input_shape") as info:
            profile(small(), input_shape=shape, progress=False)  # type: ignore[arg-type]
        assert isinstance(info.value, TypeError | ValueError)  # idiomatic handlers catch it


@pytest.mark.parametrize(
    ("call", "pattern"),
    [
        (lambda: profile("default", method="bogus"), r"unknown method 'bogus'.*paper, spectral"),
        (lambda: profile("default", data=[[1, 2]]), r"data must be .* got list"),
        (lambda: profile(42), r"source must be .* got int"),  # type: ignore[arg-type]
        (lambda: profile("default", weights=3), r"weights must be a path"),  # type: ignore[arg-type]
        (lambda: profile_loaded("default"), r"expects a LoadedModel .* use profile\(\)"),  # type: ignore[arg-type]
        (lambda: compare_with("default"), r"expects a Profile"),  # type: ignore[arg-type]
    ],
)
def test_wrong_arguments_are_entropy_probe_errors(call: object, pattern: str) -> None:
    with pytest.raises(EntropyProbeError, match=pattern):
        call()  # type: ignore[operator]


def test_compare_with_validates_quantity_and_takes_none_for_auto() -> None:
    result = profile("default", progress=False)
    with pytest.raises(EntropyProbeError, match=r"unknown quantity 'bogus'.*shape_excess"):
        compare_with(result, "auto", quantity="bogus")
    assert compare_with(result, None).score == compare_with(result, "auto").score


@pytest.mark.filterwarnings("ignore:`torch.jit")  # torch announces TorchScript's deprecation
def test_meta_device_and_torchscript_modules_are_refused_in_one_sentence() -> None:
    with torch.device("meta"):
        meta = nn.Linear(4, 4)
    with pytest.raises(SourceError, match="on the meta device"):
        profile(meta, input_shape=(4,), progress=False)
    scripted = torch.jit.script(small())
    traced = torch.jit.trace(small(), torch.randn(1, 1, 4, 4))
    for module in (scripted, traced):
        with pytest.raises(SourceError, match="TorchScript module"):
            profile(module, input_shape=(1, 4, 4), progress=False)
    wrapped = LoadedModel(source="s", format="torch", module=scripted, input_shape=(1, 4, 4))
    with pytest.raises(SourceError, match="TorchScript module"):
        profile_loaded(wrapped, progress=False)


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(5, 4)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(y)


class DictInput(TwoInputs):
    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        return self.a(batch["x"]) + self.b(batch["y"])


def test_several_inputs_go_through_example_input() -> None:
    x, y = torch.randn(1, 3), torch.randn(1, 5)
    two = profile(TwoInputs(), example_input=(x, y), progress=False)
    keyed = profile(DictInput(), example_input={"batch": {"x": x, "y": y}}, progress=False)
    for result in (two, keyed):
        assert [(layer.name, layer.in_shape) for layer in result.analysed] == [
            ("a", (3,)),
            ("b", (5,)),
        ]
        assert all(math.isfinite(layer.delta_h_per_dim or math.nan) for layer in result.analysed)
    with pytest.raises(ShapeError, match="example_input= for a forward that takes several"):
        profile(TwoInputs(), input_shape=(3,), progress=False)


def test_the_library_profile_of_a_module_matches_the_cli_source() -> None:
    """``profile(module)`` is the same math as a loaded source: the default model both ways."""
    from entropy_probe.default_model import load_default_model

    via_source = profile("default", progress=False)
    via_module = profile(load_default_model(), input_shape=(1, 28, 28), progress=False)
    assert _values(via_module) == _values(via_source)
    assert replace(via_module.layers[0], name="x") == replace(via_source.layers[0], name="x")


def test_random_init_architectures_are_the_same_every_run() -> None:
    """timm:/smp: without weights are built under seed 0 (a report of random init used to
    change from run to run), and the caller's RNG stream is left where it was."""
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = profile("timm:test_resnet", progress=False)
    assert torch.equal(torch.rand(3), expected_next)
    second = profile("timm:test_resnet", progress=False)
    assert _values(first) == _values(second)
    assert any("seed 0" in note for note in first.notes)
    unet = [profile("smp:Unet/resnet18", input_shape=(3, 64, 64), progress=False) for _ in range(2)]
    assert _values(unet[0]) == _values(unet[1])
