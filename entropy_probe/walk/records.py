"""Typed records produced by the walkers: one per weighted (or measured) layer."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from entropy_probe.enums import Status

Shape = tuple[int, ...]
Example = Tensor | tuple[Any, ...] | dict[str, Any]
"""A model's forward input for the shape trace: a tensor, positional inputs or keyword inputs."""


@dataclass(frozen=True)
class BatchNormParams:
    """Eval-mode BatchNorm statistics: y = γ·(x − μ)/sqrt(var + ε) + β per channel."""

    running_var: Tensor = field(repr=False)
    weight: Tensor | None = field(repr=False, default=None)
    eps: float = 1e-5


@dataclass(frozen=True)
class LayerRecord:
    """What a walker saw of one layer: structure and weights, no entropy yet.

    Shapes are per sample (no batch dimension); ``None`` where unknown (a bare state dict).
    ``weight`` is the layer's weight as stored (ConvTranspose keeps torch's (C_in, C_out/g, *k)
    layout). ``status``/``reason`` are set when the walker already knows the layer cannot be
    analysed.
    """

    name: str
    kind: str
    op_type: str
    weight: Tensor | None = field(default=None, repr=False, compare=False)
    in_shape: Shape | None = None
    out_shape: Shape | None = None
    stride: Shape = ()
    padding: Shape = ()
    dilation: Shape = ()
    groups: int = 1
    batchnorm: BatchNormParams | None = field(default=None, repr=False, compare=False)
    folded_batchnorm: str | None = None  # name of an eval BatchNorm folded into this layer
    folded_into: str | None = None  # for a BatchNorm: the layer it was folded into
    calls: int = 1  # how often the forward pass applied this layer (shared modules: > 1)
    # per-sample (in_shape, out_shape) of every call, when a shared module saw several shapes
    call_shapes: tuple[tuple[Shape | None, Shape | None], ...] = ()
    status: Status | None = None
    reason: str = ""

    @property
    def weight_shape(self) -> Shape | None:
        return tuple(self.weight.shape) if self.weight is not None else None

    @property
    def num_params(self) -> int:
        return math.prod(self.weight.shape) if self.weight is not None else 0
