"""The FLOP model behind every='auto' (entropy_probe.train.loss_cost)."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from entropy_probe.entropy.profile import LayerEntropy
from entropy_probe.enums import Status
from entropy_probe.errors import EntropyProbeError
from entropy_probe.patterns.pattern import DepthCurve, LayerGroup, Quantity, ReferencePattern
from entropy_probe.train.loss_cost import (
    MAX_EVERY,
    auto_every,
    relative_cost,
    step_flops,
    term_flops,
)
from entropy_probe.train.losses import LossConfigError, build_entropy_loss

pytestmark = pytest.mark.usefixtures("builtin_plugins_only")

FLAT = ReferencePattern(
    Quantity.SHAPE_EXCESS,
    {g: DepthCurve((0.0, 1.0), (-0.3, -0.3)) for g in (LayerGroup.DENSE, LayerGroup.CONV)},
)


def row(shape: tuple[int, ...], positions: int) -> LayerEntropy:
    kind = "linear" if len(shape) == 2 else "conv2d"
    return LayerEntropy("x", kind, kind, Status.OK, weight_shape=shape, positions=positions)


def test_hand_computed_flops() -> None:
    dense = row((30, 20), 1)  # k = 20, K = 30: 2·20²·30 + 20³/3
    assert term_flops([(dense, 1)]) == pytest.approx(4 * 2 * (2 * 400 * 30 + 8000 / 3))
    # a grouped conv: 4 blocks of (8/4)×6 first-tap matrices
    conv = row((8, 6, 3, 3), 100)
    assert term_flops([(conv, 4)]) == pytest.approx(4 * 2 * 4 * (2 * 4 * 6 + 8 / 3))
    assert step_flops([dense, conv], batch_size=2) == pytest.approx(6 * 2 * (600 + 100 * 432))


def test_auto_every_keeps_the_share_within_the_budget() -> None:
    assert auto_every(0.01) == 1
    assert auto_every(1.0, budget=0.05) == 20
    assert auto_every(43.9) == 878 or auto_every(43.9) == 879
    assert auto_every(1e9) == MAX_EVERY
    with pytest.raises(EntropyProbeError):
        auto_every(1.0, budget=0.0)
    with pytest.raises(EntropyProbeError, match="positions"):
        relative_cost([], [row((3, 3), 0)], 8)


def test_auto_every_grows_for_wide_dense_models_and_shrinks_with_the_batch() -> None:
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 10))
    example = torch.rand(1, 1, 28, 28)

    def build(batch: int) -> int:
        loss = build_entropy_loss(
            mlp, lambda_dense=1, lambda_conv=1, reference=FLAT, example_input=example,
            every="auto", batch_size=batch,
        )  # fmt: skip
        assert loss.cost_in_steps is not None and loss.cost_in_steps > 0
        return loss.every

    small, large = build(16), build(1024)
    assert small > large >= 1


def test_auto_needs_the_batch_size() -> None:
    mlp = nn.Sequential(nn.Linear(8, 8))
    with pytest.raises(LossConfigError, match="batch_size"):
        build_entropy_loss(
            mlp, lambda_dense=1, lambda_conv=0, reference=FLAT,
            example_input=torch.rand(1, 8), every="auto",
        )  # fmt: skip


def test_the_cli_option_is_validated() -> None:
    from entropy_probe.cli import main

    result = CliRunner().invoke(
        main, ["finetune", "--task", "classify", "--data", "digits", "--entropy-every", "0"]
    )
    assert result.exit_code == 2 and "auto or a whole number" in result.output
