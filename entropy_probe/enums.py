"""Closed option sets. Strings are accepted at the boundary and converted here."""

from __future__ import annotations

import sys
from enum import Enum, unique

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # pragma: no cover - Python 3.10

    class StrEnum(str, Enum):
        def __str__(self) -> str:
            return str(self.value)


@unique
class Status(StrEnum):
    """Outcome of analysing one layer."""

    OK = "ok"
    SINGULAR = "singular"  # a zero singular value: ΔH = -inf
    SKIPPED = "skipped"  # cannot be analysed; `reason` says why
    NOT_ANALYTIC = "not_analytic"  # no weight-only closed form (activations, pooling, ...)


@unique
class LayerKind(StrEnum):
    """Built-in layer kinds. Plugins may use other lower-case names."""

    LINEAR = "linear"
    CONV1D = "conv1d"
    CONV2D = "conv2d"
    CONV3D = "conv3d"
    CONV_TRANSPOSE1D = "conv_transpose1d"
    CONV_TRANSPOSE2D = "conv_transpose2d"
    CONV_TRANSPOSE3D = "conv_transpose3d"
    BATCHNORM = "batchnorm"


@unique
class ConvMethod(StrEnum):
    """How a convolution's entropy change is computed (DESIGN.md 2.2)."""

    PAPER = "paper"  # first-tap matrix, the paper's formula generalised
    SPECTRAL = "spectral"  # exact log-volume with circular boundary
    BOTH = "both"


@unique
class LogDetMethod(StrEnum):
    """How Σ log σ_i is evaluated for a batch of matrices."""

    AUTO = "auto"  # Cholesky of the smaller Gram; QR, then SVD, where it is not trusted
    CHOLESKY = "cholesky"
    SVD = "svd"
