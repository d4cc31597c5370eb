"""``forward_hooks``: hooks always removed, training flags always restored (captum's
``tests/attr/test_hook_removal.py`` style: after success, after bad input, after a module that
raises, over every fixture model)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from entropy_probe.errors import ShapeError
from entropy_probe.plugins import build_registry
from entropy_probe.walk.hooks import forward_hooks
from entropy_probe.walk.module_walker import walk_module

from .fixtures import CASES, RAISING, Case, Raises, RaisesAfterALayer


def hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


def flags(model: nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in model.named_modules()}


def recorder(seen: list[str], name: str) -> Callable[[nn.Module, Any, Any], None]:
    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        seen.append(name)

    return hook


def all_hooks(
    model: nn.Module, seen: list[str]
) -> dict[str, Callable[[nn.Module, Any, Any], None]]:
    return {name: recorder(seen, name) for name, _ in model.named_modules()}


def bad_shape(case: Case) -> tuple[int, ...]:
    """A per-sample shape whose channels (features) cannot fit the first layer."""
    return (case.input_shape[0] + 3, *case.input_shape[1:])


# --------------------------------------------------------------------------- hook removal


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_no_hooks_left_after_success(case: Case) -> None:
    model = case.model()
    seen: list[str] = []
    with forward_hooks(model, all_hooks(model, seen)), torch.no_grad():
        assert hook_count(model) == len(dict(model.named_modules()))
        model(torch.zeros(2, *case.input_shape))
    assert seen  # the hooks did run
    assert "" in seen  # the root's own hook too
    assert hook_count(model) == 0


@pytest.mark.parametrize(
    "case",
    [c for c in CASES if c.names],  # models with weights fail on wrong channels
    ids=lambda c: c.name,
)
def test_no_hooks_left_after_bad_input(case: Case) -> None:
    model = case.model()
    before = flags(model)
    with pytest.raises(RuntimeError), forward_hooks(model, all_hooks(model, [])), torch.no_grad():
        model(torch.zeros(1, *bad_shape(case)))
    assert hook_count(model) == 0
    assert flags(model) == before


@pytest.mark.parametrize("build", RAISING, ids=lambda b: b.__name__)
def test_no_hooks_left_after_a_module_raises(build: Callable[[], nn.Module]) -> None:
    model = build()
    seen: list[str] = []
    with (
        pytest.raises(RuntimeError, match="this module always fails"),
        forward_hooks(model, all_hooks(model, seen)),
    ):
        model(torch.zeros(1, 4))
    assert hook_count(model) == 0
    assert model.training  # back to train mode


def test_no_hooks_left_when_a_hook_raises() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))

    def failing(module: nn.Module, inputs: Any, output: Any) -> None:
        raise ValueError("hook failed")

    with pytest.raises(ValueError, match="hook failed"), forward_hooks(model, {"1": failing}):
        model(torch.zeros(1, 4))
    assert hook_count(model) == 0


def test_no_hooks_left_when_the_block_raises_before_forward() -> None:
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(KeyboardInterrupt), forward_hooks(model, all_hooks(model, [])):
        raise KeyboardInterrupt
    assert hook_count(model) == 0


def test_unknown_module_name_is_refused_before_anything_is_attached() -> None:
    model = nn.Sequential(nn.Linear(4, 4)).train()
    with (
        pytest.raises(KeyError, match="no module named 'missing' in the model"),
        forward_hooks(model, {"0": recorder([], "0"), "missing": recorder([], "x")}),
    ):
        pass  # pragma: no cover - never reached
    assert hook_count(model) == 0
    assert model.training


def test_existing_user_hooks_survive() -> None:
    model = nn.Sequential(nn.Linear(4, 4))
    mine: list[str] = []
    handle = model[0].register_forward_hook(recorder(mine, "user"))
    with forward_hooks(model, {"0": recorder(mine, "ours")}):
        model(torch.zeros(1, 4))
    assert mine == ["user", "ours"]
    assert len(model[0]._forward_hooks) == 1
    handle.remove()


def test_shared_module_hooked_once_fires_per_call() -> None:
    model = CASES[[c.name for c in CASES].index("shared_linear")].model()
    seen: list[str] = []
    with forward_hooks(model, {"fc": recorder(seen, "fc")}):
        model(torch.zeros(1, 4))
    assert seen == ["fc", "fc"]
    assert hook_count(model) == 0


# --------------------------------------------------------------------------- training flags


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_eval_mode_inside_restored_after(train: bool) -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.BatchNorm1d(4))
    model.train(train)
    model[1].train(not train)  # mixed flags
    before = flags(model)
    inside: dict[str, bool] = {}
    with forward_hooks(model, {}):
        inside = flags(model)
    assert set(inside.values()) == {False}
    assert flags(model) == before


def test_eval_mode_false_leaves_flags_alone_inside() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).train()
    with forward_hooks(model, {}, eval_mode=False):
        assert model.training and model[1].training
        model.eval()  # whatever happens inside ...
    assert model.training and model[1].training  # ... is undone


@pytest.mark.parametrize("build", RAISING, ids=lambda b: b.__name__)
def test_training_restored_after_a_raising_module(build: Callable[[], nn.Module]) -> None:
    model = build().train()
    with pytest.raises(RuntimeError), forward_hooks(model, {}):
        assert not model.training
        model(torch.zeros(1, 4))
    assert all(m.training for m in model.modules())


# --------------------------------------------------------------------------- through the walker


@pytest.fixture(scope="module")
def registry():  # type: ignore[no-untyped-def]
    return build_registry(autoload=False)


@pytest.mark.parametrize("case", [c for c in CASES if c.names], ids=lambda c: c.name)
def test_walker_wrong_input_shape_says_input_shape(case: Case, registry) -> None:  # type: ignore[no-untyped-def]
    model = case.model().train()
    shape = bad_shape(case)
    expected = r"failed.*Check --input-shape C,H,W \(from Python"
    with pytest.raises(ShapeError, match=expected) as info:
        walk_module(model, shape, registry)
    message = str(info.value)
    assert str(tuple(shape)) in message
    assert "--input-shape" in message
    assert hook_count(model) == 0
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize("build", [Raises, RaisesAfterALayer], ids=lambda b: b.__name__)
def test_walker_raising_module(build: Callable[[], nn.Module], registry) -> None:  # type: ignore[no-untyped-def]
    model = build().train()
    with pytest.raises(ShapeError, match="this module always fails"):
        walk_module(model, (4,), registry)
    assert hook_count(model) == 0
    assert all(m.training for m in model.modules())


def test_walker_wrong_rank_input_shape(registry) -> None:  # type: ignore[no-untyped-def]
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    with pytest.raises(ShapeError, match=r"input shape \(3, 4\) failed.*--input-shape"):
        walk_module(model, (3, 4), registry)
    assert hook_count(model) == 0
