"""A plugin's dense layer whose map is a computed ``weight`` (s·W, as in the example plugin),
in two kinds: ``scaled_dense`` (its rule declares the dense group) and ``ungrouped_dense``
(its rule declares none). Shared by the plugin tests and the entropy-loss tests."""

from __future__ import annotations

import torch
from torch import nn

from entropy_probe.entropy.rules import DenseRule
from entropy_probe.plugins import PluginRegistrar


class ScaledDense(nn.Module):
    """y = s·(x Wᵀ); its map is the property ``weight`` = s·W (as in the example plugin)."""

    def __init__(self, n_in: int, n_out: int, scale: float = 1.0) -> None:
        super().__init__()
        self.weight_unscaled = nn.Parameter(torch.randn(n_out, n_in) / n_in**0.5)
        self.scale = nn.Parameter(torch.tensor(scale))

    @property
    def weight(self) -> torch.Tensor:
        return self.scale * self.weight_unscaled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * (x @ self.weight_unscaled.T)


class UngroupedDense(ScaledDense):
    pass


class ScaledDenseRule(DenseRule):
    kind = "scaled_dense"
    group = "dense"  # compared with the dense band, given the dense loss term


class UngroupedDenseRule(DenseRule):
    kind = "ungrouped_dense"
    group = None  # analysed, but neither compared nor given a loss term


def register(registrar: PluginRegistrar) -> None:
    """The plugin's ``register``: both rules and both module kinds."""
    registrar.add_rule(ScaledDenseRule())
    registrar.add_rule(UngroupedDenseRule())
    registrar.add_module_kind(ScaledDense, "scaled_dense")
    registrar.add_module_kind(UngroupedDense, "ungrouped_dense")


def plugin_mlp(layer: type[ScaledDense], n_in: int = 16, n_out: int = 4) -> nn.Sequential:
    """layer(n_in→16, s=2), ReLU, layer(16→16, s=0.5), ReLU, Linear(16→n_out), seeded, eval."""
    torch.manual_seed(0)
    return nn.Sequential(
        layer(n_in, 16, 2.0), nn.ReLU(), layer(16, 16, 0.5), nn.ReLU(), nn.Linear(16, n_out)
    ).eval()
