"""A worked entropy_probe plugin: ``ScaledLinear`` and the layer rule that analyses it.

``ScaledLinear`` computes y = s·(x Wᵀ) + b with a learnable matrix W and a learnable scalar s.
Its singular values are |s|·σ_i(W), so per position

    ΔH = Σ_i log σ_i(s·W) = Σ_i log σ_i(W) + k·log|s|,   k = min(out, in).

The plugin registers, through the ``entropy_probe.plugins`` entry point (see pyproject.toml):

* the layer kind ``scaled_linear`` for ``ScaledLinear`` (and, along the MRO, its subclasses);
* :class:`ScaledLinearRule`, which hands the engine the matrix s·W as ``PaperTerms``. The engine
  batches it with every other matrix of the same shape, so the rule never takes a
  log-determinant itself. The rule declares ``group = "dense"``: a ``ScaledLinear`` is a matrix
  applied at every token, so its layers are compared with the dense band of the reference
  families and get the dense term of the fine-tuning entropy loss, like ``nn.Linear``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from entropy_probe.entropy.rules import LayerRule, PaperTerms
from entropy_probe.errors import UnsupportedLayerError
from entropy_probe.walk.records import LayerRecord

if TYPE_CHECKING:
    from entropy_probe.plugins import PluginRegistrar

__all__ = ["KIND", "ScaledLinear", "ScaledLinearRule", "register"]
__version__ = "0.1.0"

KIND = "scaled_linear"


class ScaledLinear(nn.Module):
    """y = s·(x Wᵀ) + b, with W = ``weight_unscaled`` (out, in) and s = ``scale`` (a scalar).

    Like a ``torch.nn.utils.parametrize`` module, ``weight`` is the *effective* weight s·W:
    entropy_probe's walker reads a layer's map from ``module.weight``, and this is the matrix
    the data is multiplied by.
    """

    def __init__(
        self, in_features: int, out_features: int, *, bias: bool = True, scale: float = 1.0
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight_unscaled = nn.Parameter(torch.empty(out_features, in_features))
        self.scale = nn.Parameter(torch.tensor(float(scale)))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight_unscaled, a=math.sqrt(5))  # as nn.Linear
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    @property
    def weight(self) -> Tensor:
        """The effective weight s·W."""
        return self.scale * self.weight_unscaled

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * F.linear(x, self.weight_unscaled) + (
            self.bias if self.bias is not None else 0.0
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}"
        )


class ScaledLinearRule(LayerRule):
    """ΔH per position = Σ log σ_i(s·W) = Σ log σ_i(W) + min(out, in)·log|s|."""

    kind = KIND
    #: compared with the dense band, and given the dense loss term, like nn.Linear (a rule
    #: that leaves this None keeps its layers out of the comparison and the loss)
    group = "dense"

    def check(self, record: LayerRecord) -> None:
        super().check(record)  # a weight is present
        assert record.weight is not None
        if record.weight.dim() != 2:
            raise UnsupportedLayerError(
                f"{KIND} layer {record.name!r} has weight shape {tuple(record.weight.shape)}; "
                "expected (out_features, in_features)"
            )

    def positions(self, record: LayerRecord) -> int | None:
        """One application per token: 1 for a flat vector, L for an (L, in) sequence."""
        if record.in_shape is None:
            return None
        return math.prod(record.in_shape[:-1])

    def paper_terms(self, record: LayerRecord, weight: Tensor) -> PaperTerms:
        # ``weight`` is s·W as the walker read it (with a following eval BatchNorm folded in,
        # when there is one): one matrix, min(out, in) singular values.
        return PaperTerms(dims=min(weight.shape), matrices=weight[None])


def register(registrar: PluginRegistrar) -> None:
    """Called once by entropy_probe when it builds its registry."""
    registrar.add_rule(ScaledLinearRule())
    registrar.add_module_kind(ScaledLinear, KIND)
