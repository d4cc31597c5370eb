"""Task losses and metrics on hand-computed values, probability outputs, head adaptation."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from entropy_probe.errors import UnknownNameError
from entropy_probe.train import adapt_head, get_task
from entropy_probe.train.tasks import MetricState, TaskError, current_outputs


def _metric(task_name: str, output: torch.Tensor, target: torch.Tensor, classes: int) -> float:
    task = get_task(task_name)
    task.check_output(output, target, classes)
    state = MetricState()
    task.update(state, output, target)
    return task.compute(state)


def test_classify_accuracy_and_loss():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    target = torch.tensor([0, 0, 0])
    assert _metric("classify", logits, target, 2) == pytest.approx(2 / 3)
    task = get_task("classify")
    task.check_output(logits, target, 2)
    assert not task.probabilities
    assert task.loss(logits, target) == pytest.approx(float(F.cross_entropy(logits, target)))


def test_softmax_outputs_are_trained_as_log_probabilities():
    logits = torch.randn(4, 3)
    target = torch.tensor([0, 1, 2, 1])
    task = get_task("classify")
    task.check_output(logits.softmax(dim=1), target, 3)
    assert task.probabilities and task.note is not None and "softmax" in task.note
    loss = task.loss(logits.softmax(dim=1), target)
    assert float(loss) == pytest.approx(float(F.cross_entropy(logits, target)), rel=1e-5)


def test_binary_dice_by_hand():
    target = torch.tensor([[[1, 1], [0, 0]]])
    logits = torch.tensor([[[[1.0, -1.0], [1.0, -1.0]]]])  # predicts the left column
    assert _metric("segment", logits, target, 2) == pytest.approx(2 * 1 / (2 + 2))
    probs = torch.sigmoid(logits)
    assert _metric("segment", probs, target, 2) == pytest.approx(0.5)  # threshold 0.5


def test_multiclass_dice_averages_the_foreground_classes():
    target = torch.tensor([[[0, 1], [2, 2]]])
    scores = F.one_hot(torch.tensor([[[0, 1], [2, 0]]]), 3).permute(0, 3, 1, 2).float()
    # class 1: perfect (1.0); class 2: inter 1, sizes 1 + 2 → 2/3
    assert _metric("segment", scores * 5, target, 3) == pytest.approx((1.0 + 2 / 3) / 2)


def test_autoencode_mse():
    x = torch.zeros(2, 1, 2, 2)
    out = torch.full_like(x, 0.5)
    task = get_task("autoencode")
    assert task.target_for(x, None) is x
    assert _metric("autoencode", out, x, 0) == pytest.approx(0.25)
    assert not task.higher_is_better and task.best(0.2, 0.1) == 0.1


def test_unknown_task_suggests_the_close_one():
    with pytest.raises(UnknownNameError, match="did you mean 'segment'"):
        get_task("segmnt")


def test_plain_model_heads_are_replaced_and_left_alone_when_they_fit():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 10))
    assert adapt_head(mlp, "classify", 10) is None
    change = adapt_head(mlp, "classify", 3)
    assert change is not None and change.module == "3" and change.old_outputs == 10
    assert mlp(torch.zeros(2, 4)).shape == (2, 3)
    conv = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 1))
    assert adapt_head(conv, "segment", 2) is not None
    assert conv(torch.zeros(1, 1, 6, 6)).shape == (1, 2, 6, 6)
    assert adapt_head(conv, "autoencode", 7) is None
    with pytest.raises(TaskError, match="no Linear layer"):
        adapt_head(conv, "classify", 3)


def test_timm_and_smp_heads():
    import segmentation_models_pytorch as smp
    import timm

    net = timm.create_model("resnet10t", pretrained=False, num_classes=7)
    change = adapt_head(net, "classify", 3)
    assert change is not None and "reset_classifier" in change.how
    assert net.num_classes == 3 and net.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 3)
    unet = smp.Unet("resnet18", encoder_weights=None, classes=1)
    assert current_outputs(unet, get_task("segment")) == 1
    change = adapt_head(unet, "segment", 4)
    assert change is not None and change.module == "segmentation_head.0"
    assert unet.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 4, 32, 32)
