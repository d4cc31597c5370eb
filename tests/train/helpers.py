"""Small models and data shared by the fine-tuning tests (kept tiny: 2 shared CPU cores)."""

from __future__ import annotations

import torch
from torch import nn

from entropy_probe.train import FitConfig, TaskData


def tiny_mlp(seed: int = 0, classes: int = 10) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, classes)
    )


def digits_data(n_train: int = 256, n_val: int = 128) -> TaskData:
    """The real sklearn digits (8x8), a fixed slice: fast and deterministic."""
    from entropy_probe.train import load_task_data

    full = load_task_data("digits", "classify")
    assert full.train_y is not None and full.val_y is not None
    return TaskData(
        full.train_x[:n_train],
        full.train_y[:n_train],
        full.val_x[:n_val],
        full.val_y[:n_val],
        10,
        "digits slice",
    )


def weights_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


CONFIG = FitConfig(epochs=3, batch_size=32, lr=1e-2, schedule="cosine", seed=7, device="cpu")
