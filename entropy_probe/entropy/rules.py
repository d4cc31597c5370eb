"""Layer rules: how one kind of layer turns into the inputs of the math core.

A rule never computes a log-determinant itself: it returns the matrices whose Σ log σ is the
layer's per-position ΔH (so the profile engine can batch equal shapes across layers into one
call), a direct value for diagonal maps, and optionally the exact spectral ΔH.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from entropy_probe.entropy import functional as F
from entropy_probe.enums import LayerKind
from entropy_probe.errors import ShapeError, UnsupportedLayerError
from entropy_probe.walk.records import LayerRecord


@dataclass(frozen=True)
class PaperTerms:
    """Per-position ΔH of a layer, still to be evaluated.

    Either ``matrices`` (B, m, n): ΔH per position = Σ_B Σ_i log σ_i; or ``value``: a direct
    per-position ΔH (diagonal maps), with ``sq_norm`` = Σ σ² for the spectral shape.
    ``dims`` is the number of singular values, the denominator of ``delta_h_per_dim``.
    """

    dims: int
    matrices: Tensor | None = None
    value: Tensor | None = None
    sq_norm: Tensor | None = None


class LayerRule(ABC):
    """How to analyse one layer kind. Subclass, then register through a plugin."""

    kind: str = ""
    #: The layer group this kind's layers belong to: ``"dense"`` (a matrix applied at every
    #: token, like ``nn.Linear``) or ``"conv"`` (a convolution). It decides the band a layer is
    #: compared with (``entropy_probe.patterns``) and the fine-tuning loss term it gets;
    #: ``None`` (the default) keeps the kind's layers out of both (they are still profiled,
    #: and listed as not compared).
    group: str | None = None
    #: True when the weight's output channels sit in dim 1 (ConvTranspose layout).
    transposed: bool = False

    @abstractmethod
    def positions(self, record: LayerRecord) -> int | None:
        """How many times the kernel is applied (None when the shapes are unknown)."""

    @abstractmethod
    def paper_terms(self, record: LayerRecord, weight: Tensor) -> PaperTerms:
        """The per-position terms for ``weight`` (the record's weight, BN-folded if any)."""

    def spectral_delta_h(self, record: LayerRecord, weight: Tensor) -> Tensor | None:
        """Exact whole-layer ΔH with circular boundary, or None where it does not apply."""
        return None

    def fold(self, record: LayerRecord, weight: Tensor, scale: Tensor) -> Tensor:
        """``weight`` with a following BatchNorm's per-channel ``scale`` folded in."""
        return F.fold_batchnorm_into_weight(
            weight, scale, transposed=self.transposed, groups=record.groups
        )

    def fold_terms(self, record: LayerRecord, terms: PaperTerms, scale: Tensor) -> PaperTerms:
        """``terms`` of the weight with a BatchNorm ``scale`` folded in, without refolding the
        whole kernel: ``terms.matrices`` times :meth:`fold_factor`. Override that (or this)
        when a rule lays its matrices out otherwise.
        """
        factor = self.fold_factor(record, terms, scale)
        assert terms.matrices is not None  # fold_factor checked it
        return replace(terms, matrices=_scaled_wide_contiguous(terms.matrices, factor))

    def fold_factor(self, record: LayerRecord, terms: PaperTerms, scale: Tensor) -> Tensor:
        """The float64 factor that, multiplied into ``terms.matrices`` (broadcast), folds a
        BatchNorm ``scale`` in: the output-channel axis (rows; columns for the ConvTranspose
        layout) is scaled, group-major. The profile applies it while it copies the matrices
        into their float64 batch, so the folded matrices are never written twice."""
        if terms.matrices is None:
            raise UnsupportedLayerError(f"layer {record.name!r} has no matrices to fold into")
        mats = terms.matrices
        groups, rows, cols = mats.shape
        channels = groups * (cols if self.transposed else rows)
        if scale.numel() != channels:
            raise ShapeError(f"BatchNorm has {scale.numel()} channels, the layer {channels}")
        # (groups, rows, cols): scale each group's rows (its columns in the ConvTranspose layout)
        return F.precise(scale.to(mats.device)).reshape(
            (groups, 1, cols) if self.transposed else (groups, rows, 1)
        )

    def check(self, record: LayerRecord) -> None:
        """Raise UnsupportedLayerError when the record does not fit this rule."""
        if record.weight is None:
            raise UnsupportedLayerError(f"layer {record.name!r} has no weight")


def _scaled_wide_contiguous(mats: Tensor, factor: Tensor) -> Tensor:
    """``mats · factor`` in float64, laid out so that the wide orientation (rows ≤ cols) is
    contiguous: the profile batches tall matrices transposed, and copying a contiguous block
    is ~10× faster than a transposing copy (the conversion does the one strided read)."""
    dtype = F.precise_dtype(mats)
    if mats.shape[-2] <= mats.shape[-1]:
        return mats.to(dtype, memory_format=torch.contiguous_format, copy=True).mul_(factor)
    wide = torch.empty(mats.mT.shape, dtype=dtype, device=mats.device)
    wide.copy_(mats.mT)
    return wide.mul_(factor.mT).mT


class DenseRule(LayerRule):
    """nn.Linear / Gemm / MatMul by a constant: W (out, in) applied at every token."""

    kind = LayerKind.LINEAR
    group = "dense"

    def check(self, record: LayerRecord) -> None:
        super().check(record)
        assert record.weight is not None
        if record.weight.dim() != 2:
            raise UnsupportedLayerError(
                f"dense layer {record.name!r} has a {record.weight.dim()}-D weight; expected 2-D"
            )

    def positions(self, record: LayerRecord) -> int | None:
        if record.in_shape is None:
            return None
        return math.prod(record.in_shape[:-1])  # tokens; 1 for a flat vector

    def paper_terms(self, record: LayerRecord, weight: Tensor) -> PaperTerms:
        return PaperTerms(dims=min(weight.shape), matrices=weight[None])


class ConvRule(LayerRule):
    """Conv1d/2d/3d: `paper` first-tap method and the exact `spectral` method."""

    group = "conv"

    def __init__(self, kind: str, spatial_dims: int, *, transposed: bool = False) -> None:
        self.kind = kind
        self.spatial_dims = spatial_dims
        self.transposed = transposed

    def check(self, record: LayerRecord) -> None:
        super().check(record)
        assert record.weight is not None
        if record.weight.dim() != self.spatial_dims + 2:
            raise UnsupportedLayerError(
                f"{self.kind} layer {record.name!r} has weight shape "
                f"{tuple(record.weight.shape)}; expected {self.spatial_dims + 2} dims"
            )

    def positions(self, record: LayerRecord) -> int | None:
        # A ConvTranspose shares its singular values with the adjoint conv, which maps the
        # transposed layer's output grid onto its input grid: count the input positions.
        shape = record.in_shape if self.transposed else record.out_shape
        if shape is None or len(shape) != self.spatial_dims + 1:
            return None
        return math.prod(shape[1:])

    def paper_terms(self, record: LayerRecord, weight: Tensor) -> PaperTerms:
        mats = F.conv_first_tap_matrices(weight, record.groups)
        return PaperTerms(dims=mats.shape[0] * min(mats.shape[1:]), matrices=mats)

    def spectral_grid(self, record: LayerRecord) -> tuple[int, ...] | None:
        shape = record.in_shape
        if shape is None or len(shape) != self.spatial_dims + 1:
            return None
        stride = record.stride or (1,) * self.spatial_dims
        if self.transposed:
            # The adjoint conv (stride s) maps the grid s·in onto the layer's input grid.
            return tuple(s * size for s, size in zip(stride, shape[1:], strict=True))
        return F.spectral_grid(shape[1:], stride)

    def spectral_delta_h(self, record: LayerRecord, weight: Tensor) -> Tensor | None:
        grid = self.spectral_grid(record)
        if grid is None:
            return None
        stride = record.stride or (1,) * self.spatial_dims
        dilation = record.dilation or (1,) * self.spatial_dims
        try:
            return F.conv_spectral_log_volume(weight, grid, stride, dilation, record.groups)
        except ShapeError:
            return None


class BatchNormRule(LayerRule):
    """Eval-mode BatchNorm: a diagonal map, ΔH = positions·Σ_c log|γ_c/sqrt(var_c+ε)|.

    No layer group: a BatchNorm is folded into the layer before it, or counted on its own."""

    kind = LayerKind.BATCHNORM

    def check(self, record: LayerRecord) -> None:
        if record.batchnorm is None:
            raise UnsupportedLayerError(
                f"BatchNorm {record.name!r} has no running statistics (track_running_stats=False)"
            )

    def positions(self, record: LayerRecord) -> int | None:
        if record.in_shape is None:
            return None
        return math.prod(record.in_shape[1:]) if len(record.in_shape) > 1 else 1

    def paper_terms(self, record: LayerRecord, weight: Tensor) -> PaperTerms:
        bn = record.batchnorm
        assert bn is not None
        scale = F.batchnorm_scale(bn.running_var, bn.weight, bn.eps)
        return PaperTerms(
            dims=scale.numel(),
            value=torch.log(scale.abs()).sum(),
            sq_norm=(scale**2).sum(),
        )


def builtin_rules() -> list[LayerRule]:
    """The rules that ship with entropy_probe (registered by the built-in plugin)."""
    rules: list[LayerRule] = [DenseRule(), BatchNormRule()]
    for nd in (1, 2, 3):
        rules.append(ConvRule(f"conv{nd}d", nd))
        rules.append(ConvRule(f"conv_transpose{nd}d", nd, transposed=True))
    return rules
