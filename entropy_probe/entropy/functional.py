"""Pure, differentiable, device-agnostic entropy math (DESIGN.md section 2).

This module is the single implementation of the math: the analysis (``entropy.rules``) and
the fine-tuning losses (``train.losses``) both call it. Everything is accumulated in float64
(complex128 for the spectral method) whatever the dtype of the weights.

Conventions
-----------
* A layer's linear part maps X to Y; ΔH = H(Y) − H(X) in nats. Bias is ignored (translation
  invariance of differential entropy).
* ``*_log_volume`` functions return Σ_i log σ_i for *one* application of the kernel
  ("per position"); the caller multiplies by the number of positions.
* A zero (or numerically zero) singular value yields ``-inf``; nothing here raises or returns
  NaN for a singular matrix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from entropy_probe.entropy.logdet import (
    LogVolume,
    precise_dtype,
    sum_log_and_sum_sq,
    sum_log_singular_values,
)
from entropy_probe.enums import LogDetMethod
from entropy_probe.errors import ShapeError

__all__ = [
    "LogVolume",
    "batchnorm_log_volume",
    "batchnorm_scale",
    "conv_first_tap_matrices",
    "conv_paper_log_volume",
    "conv_spectral_log_volume",
    "conv_spectral_matrices",
    "dense_log_volume",
    "fold_batchnorm_into_weight",
    "gaussian_spectral_shape",
    "paper_conv_delta_h",
    "precise",
    "precise_dtype",
    "spectral_grid",
    "spectral_shape",
    "sum_log_and_sum_sq",
    "sum_log_singular_values",
]


def precise(t: Tensor) -> Tensor:
    """Return ``t`` as float64 (or complex128 when complex), keeping autograd and device."""
    return t.to(precise_dtype(t))


def spectral_shape(mats: Tensor) -> Tensor:
    """Scale-free spectral shape s = mean log σ − log sqrt(mean σ²) (DESIGN.md 2.7).

    The batch ``(..., m, n)`` is treated as one block-diagonal operator, so the result is a
    scalar. s ≤ 0, with 0 exactly when all singular values are equal (an isometry up to scale).
    Uses ‖A‖_F² = Σ σ², so it costs no more than :func:`sum_log_singular_values`.
    """
    m, n = mats.shape[-2], mats.shape[-1]
    count = min(m, n) * math.prod(mats.shape[:-2])
    A = precise(mats)
    mean_log = sum_log_singular_values(A).sum() / count
    mean_sq = (A.abs() ** 2).sum() / count
    return mean_log - 0.5 * torch.log(mean_sq)


def gaussian_spectral_shape(m: int, n: int, blocks: int = 1) -> float:
    """E[s] of :func:`spectral_shape` for ``blocks`` m×n matrices of iid Gaussian entries.

    The baseline a random init sits at, whatever its scale: with k = min(m, n), K = max(m, n),
    E Σ_i log σ_i² = Σ_{i<k} ψ((K−i)/2) + k·log 2 per block (Bartlett decomposition) and
    ‖A‖_F² ~ σ²·χ²_{blocks·m·n}, so

        E[s] = 1/(2k) · Σ_{i<k} ψ((K−i)/2) − ½·ψ(blocks·m·n/2) + ½·log(blocks·k)

    exactly. It is 0 for one 1×1 matrix, about −½ for large square ones and → 0 for very
    rectangular ones: trained layers are compared with it (``spectral_shape`` minus this) so
    that layers of different aspect ratios are comparable (DESIGN.md 2.7).
    """
    if min(m, n, blocks) < 1:
        raise ShapeError(f"need positive dimensions, got blocks={blocks}, m={m}, n={n}")
    k, big = min(m, n), max(m, n)
    halves = (big - torch.arange(k, dtype=torch.float64)) / 2
    mean_log = float(torch.special.digamma(halves).sum()) / (2 * k)
    frob = float(torch.special.digamma(torch.tensor(blocks * m * n / 2, dtype=torch.float64)))
    return mean_log - 0.5 * frob + 0.5 * math.log(blocks * k)


def dense_log_volume(weight: Tensor, method: LogDetMethod | str = LogDetMethod.AUTO) -> Tensor:
    """Σ log σ_i(W) of a dense weight W (m×n): ΔH for one position (DESIGN.md 2.1).

    Exact (= log|det W|) for a square invertible W and for m ≥ n. For m < n it is the change
    relative to the projection of X onto W's row space.
    """
    if weight.dim() != 2:
        raise ShapeError(f"a dense weight must be 2-D (out, in), got shape {tuple(weight.shape)}")
    return sum_log_singular_values(weight, method)


def _check_conv_weight(weight: Tensor, groups: int) -> int:
    nd = weight.dim() - 2
    if nd < 1:
        raise ShapeError(
            f"a conv weight must be (C_out, C_in/groups, *kernel), got shape {tuple(weight.shape)}"
        )
    if weight.numel() == 0:
        raise ShapeError(f"cannot analyse an empty conv weight of shape {tuple(weight.shape)}")
    if groups < 1 or weight.shape[0] % groups:
        raise ShapeError(
            f"groups={groups} does not divide the {weight.shape[0]} leading channels of the weight"
        )
    return nd


def conv_first_tap_matrices(weight: Tensor, groups: int = 1) -> Tensor:
    """Per-group first-tap matrices K_g[:, :, 0, ..., 0], shape (groups, C_out/g, C_in/g).

    ``weight`` is a conv weight ``(C_out, C_in/g, *k)``. A ConvTranspose weight
    ``(C_in, C_out/g, *k)`` is passed as is: it *is* the weight of the adjoint conv, whose
    singular values the transposed layer shares.
    """
    _check_conv_weight(weight, groups)
    tap = weight.reshape(weight.shape[0], weight.shape[1], -1)[:, :, 0]  # tap (0, ..., 0)
    return tap.reshape(groups, weight.shape[0] // groups, weight.shape[1])


def conv_paper_log_volume(weight: Tensor, groups: int = 1) -> Tensor:
    """The `paper` method, per position: Σ_groups Σ_i log σ_i(K_g[:, :, 0, ..., 0]).

    Times the number of output positions this is the paper's (l−p+1)(w−q+1)·log|c11| for one
    channel, valid padding and stride 1, generalised to channels and groups (DESIGN.md 2.2).
    """
    return sum_log_singular_values(conv_first_tap_matrices(weight, groups)).sum()


def paper_conv_delta_h(weight: Tensor, out_spatial: Sequence[int], groups: int = 1) -> Tensor:
    """ΔH of a conv layer by the `paper` method: positions · per-position log volume."""
    return math.prod(out_spatial) * conv_paper_log_volume(weight, groups)


def spectral_grid(in_spatial: Sequence[int], stride: Sequence[int]) -> tuple[int, ...]:
    """The circular grid the spectral method works on: the input grid, rounded up per dimension
    to a multiple of the stride (so the polyphase rearrangement is exact)."""
    return tuple(-(-size // s) * s for size, s in zip(in_spatial, stride, strict=True))


def conv_spectral_matrices(
    weight: Tensor,
    grid: Sequence[int],
    stride: Sequence[int] | int = 1,
    dilation: Sequence[int] | int = 1,
    groups: int = 1,
) -> tuple[Tensor, Tensor]:
    """Frequency-domain matrices of a circular conv (Sedghi, Gupta, Long, ICLR 2019).

    A stride-1 circular conv on the grid is block-circulant, with the singular values of the
    matrices K̂(ω) = Σ_a K[:, :, a]·exp(−2πi⟨ω, a/grid⟩) over all grid frequencies ω. A stride s
    is turned into stride 1 by the polyphase rearrangement of the input (space-to-depth by s),
    which gives C_in·∏s input channels on a grid of size grid/s. Dilation spreads the taps;
    taps beyond the grid wrap around.

    Returns ``(mats, multiplicity)``: ``mats`` of shape ``(F, groups, C_out/g, C_in/g·∏s)``
    (complex128) over the half-spectrum of a real FFT, and the float64 multiplicity of each
    frequency (1 or 2, from conjugate symmetry), which sums to ∏(grid/s).
    """
    nd = _check_conv_weight(weight, groups)
    strides = _per_dim(stride, nd, "stride")
    dilations = _per_dim(dilation, nd, "dilation")
    n_out = _phase_grid(grid, strides)
    c_out, c_in_g = weight.shape[0], weight.shape[1]
    n_phase = math.prod(strides)
    dev = weight.device

    # Each tap a (row-major over the kernel) lands on polyphase phase r and circular shift q:
    # offset d·a = s·q + r per dimension, q taken mod the phase grid (taps beyond it wrap).
    phase = torch.zeros((), dtype=torch.long, device=dev)
    shifts = []
    for dim, (size, s, d, n) in enumerate(
        zip(weight.shape[2:], strides, dilations, n_out, strict=True)
    ):
        offset = torch.arange(size, device=dev) * d
        view = [1] * nd
        view[dim] = size
        phase = phase[..., None] * s + offset % s
        shifts.append(((offset // s) % n).reshape(view))
    n_taps = math.prod(weight.shape[2:])
    # K̂_r(ω) = Σ_{a on phase r} K[:, :, a]·exp(−2πi Σ_d ω_d·q_d(a)/n_d), ω over the half
    # spectrum of a real FFT (all frequencies of the leading dims, ⌊n/2⌋+1 of the last): a
    # DFT restricted to the kernel's few taps, one matrix product instead of a zero-padded
    # FFT over the whole grid (measured 100× faster on ResNet-50's 3×3 convs at 224²).
    dft = _tap_dft(shifts, weight.shape[2:], n_out)  # (F, taps)
    on_phase = phase.reshape(-1)[None, :] == torch.arange(n_phase, device=dev)[:, None]
    dft = (dft[:, None, :] * on_phase).reshape(-1, n_taps)  # (F·phases, taps)
    taps = precise(weight).reshape(c_out * c_in_g, n_taps).to(torch.complex128)
    spec = (dft @ taps.T).reshape(-1, n_phase, c_out, c_in_g)
    if n_phase > 1:  # columns channel-major, phase-minor: c·∏s + r
        spec = spec.permute(0, 2, 3, 1).contiguous()
    spec = spec.reshape(-1, groups, c_out // groups, c_in_g * n_phase)

    last = n_out[-1]
    mult_last = torch.full((last // 2 + 1,), 2.0, dtype=torch.float64, device=weight.device)
    mult_last[0] = 1.0
    if last % 2 == 0:
        mult_last[-1] = 1.0
    mult = mult_last.expand(*n_out[:-1], last // 2 + 1).reshape(-1)
    return spec, mult


def _phase_grid(grid: Sequence[int], strides: Sequence[int]) -> tuple[int, ...]:
    """The grid each polyphase phase lives on, grid/stride, after checking the grid."""
    grid = tuple(int(g) for g in grid)
    if len(grid) != len(strides):
        raise ShapeError(f"grid {grid} has {len(grid)} dims; the kernel has {len(strides)}")
    for g, s in zip(grid, strides, strict=True):
        if g < 1 or g % s:
            raise ShapeError(f"grid {grid} must be positive multiples of the stride {strides}")
    return tuple(g // s for g, s in zip(grid, strides, strict=True))


def _tap_dft(shifts: Sequence[Tensor], kernel: Sequence[int], n_out: Sequence[int]) -> Tensor:
    """exp(−2πi Σ_d ω_d·q_d(a)/n_d) for every half-spectrum frequency ω (rows, flattened
    row-major as rfftn lays them out) and every tap a (columns), complex128.

    The phase is kept as an exact integer fraction T/N of a turn (N = lcm of the grid sizes),
    and split into whole quarter turns, rotated exactly, and a remainder in [0, π/2): values
    at multiples of π/2 are exact, as an FFT's are (a [1, 1] kernel's Nyquist response is 0,
    not 1e-16, so a singular 1×1 frequency matrix is found singular).
    """
    n_taps = math.prod(kernel)
    dev = shifts[0].device
    whole = math.lcm(*n_out)
    numer = torch.zeros((1, n_taps), dtype=torch.long, device=dev)
    for dim, n in enumerate(n_out):
        freqs = torch.arange(n // 2 + 1 if dim == len(n_out) - 1 else n, device=dev)
        per_tap = shifts[dim].expand(*kernel).reshape(-1)
        term = (freqs[:, None] * per_tap[None, :] % n) * (whole // n)
        numer = ((numer[:, None, :] + term[None, :, :]) % whole).reshape(-1, n_taps)
    quarter, rest = torch.div(4 * numer, whole, rounding_mode="floor"), 4 * numer % whole
    theta = (math.pi / 2) * rest.to(torch.float64) / whole
    cos, sin = torch.cos(theta), torch.sin(theta)
    # exp(−i(q·π/2 + θ)) = (−i)^q·(cos θ − i·sin θ), for q = 0, 1, 2, 3
    real = torch.stack([cos, -sin, -cos, sin])
    imag = torch.stack([-sin, -cos, sin, cos])
    pick = quarter[None]
    return torch.complex(real.gather(0, pick)[0], imag.gather(0, pick)[0])


def conv_spectral_log_volume(
    weight: Tensor,
    grid: Sequence[int],
    stride: Sequence[int] | int = 1,
    dilation: Sequence[int] | int = 1,
    groups: int = 1,
    *,
    chunk: int = 4096,
) -> Tensor:
    """The `spectral` method: exact ΔH = Σ_ω Σ_g Σ_i log σ_i(K̂_g(ω)) of the circular conv.

    This is the whole-layer value (all positions included). ``grid`` is the input grid. For a
    ConvTranspose with stride s pass s × its input grid and its weight as is: that weight is
    the adjoint conv's, which maps that grid onto the layer's input. ``chunk`` bounds how many
    frequency matrices are decomposed at once.

    Rank is judged at float64 precision on the frequency matrices (float64 mixes of the
    taps), except for a 1×1 kernel, whose only frequency matrix is its tap: that is judged
    in the weight's precision, as the `paper` value is, so the two stay equal.
    """
    nd = _check_conv_weight(weight, groups)
    strides = _per_dim(stride, nd, "stride")
    n_out = _phase_grid(grid, strides)
    used = _used_phase_columns(weight, stride, dilation)
    # Polyphase phases that no tap reaches are zero columns (e.g. a strided 1×1 conv drops 3 of
    # 4 pixels). If they leave fewer columns than singular values, the operator is rank
    # deficient, whatever the weights; otherwise dropping them leaves A·Aᴴ, so Σ log σ, as is.
    rows, cols = weight.shape[0] // groups, weight.shape[1] * math.prod(strides)
    if used is not None and min(rows, cols) > used.numel():
        return (precise(weight).sum() * 0.0) - math.inf
    if all(k == 1 for k in weight.shape[2:]):
        # one tap: K̂(ω) is that tap's matrix at every frequency (on the phase it reaches),
        # so the value is the paper one over the grid, rank judged as the paper judges it
        return math.prod(n_out) * conv_paper_log_volume(weight, groups)
    dilations = _per_dim(dilation, nd, "dilation")
    if all((k - 1) * d < s for k, d, s in zip(weight.shape[2:], dilations, strides, strict=True)):
        # every tap on its own phase with no shift (a patch embedding: kernel = stride):
        # K̂(ω) = K̂(0) at every frequency, one matrix for the whole grid
        mats, mult = conv_spectral_matrices(weight, strides, stride, dilation, groups)
        mult = mult * math.prod(n_out)
    else:
        mats, mult = conv_spectral_matrices(weight, grid, stride, dilation, groups)
    if used is not None:
        mats = mats.index_select(-1, used.to(mats.device))
    total = torch.zeros((), dtype=torch.float64, device=weight.device)
    for start in range(0, mats.shape[0], chunk):
        part = sum_log_singular_values(mats[start : start + chunk]).sum(-1)
        total = total + (part * mult[start : start + chunk]).sum()
    return total


def _used_phase_columns(
    weight: Tensor, stride: Sequence[int] | int, dilation: Sequence[int] | int
) -> Tensor | None:
    """Column indices (C_in/g·∏s layout) of polyphase phases hit by some tap; None if all are."""
    nd = weight.dim() - 2
    strides = _per_dim(stride, nd, "stride")
    dilations = _per_dim(dilation, nd, "dilation")
    per_dim = [
        sorted({(d * a) % s for a in range(k)})
        for k, s, d in zip(weight.shape[2:], strides, dilations, strict=True)
    ]
    n_phase = math.prod(strides)
    if math.prod(len(p) for p in per_dim) == n_phase:
        return None
    phase = torch.zeros((), dtype=torch.long)
    for residues, s in zip(per_dim, strides, strict=True):
        phase = phase[..., None] * s + torch.tensor(residues, dtype=torch.long)
    phases = phase.reshape(-1)
    channels = torch.arange(weight.shape[1], dtype=torch.long)[:, None] * n_phase
    return (channels + phases[None, :]).reshape(-1)


def batchnorm_scale(running_var: Tensor, weight: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Per-channel multiplier γ_c / sqrt(var_c + ε) of an eval-mode BatchNorm (float64)."""
    scale = torch.rsqrt(precise(running_var) + eps)
    return scale if weight is None else precise(weight) * scale


def batchnorm_log_volume(
    running_var: Tensor, weight: Tensor | None = None, eps: float = 1e-5
) -> Tensor:
    """Σ_c log|γ_c / sqrt(var_c + ε)|: ΔH of an eval BatchNorm per position (a diagonal map)."""
    return torch.log(batchnorm_scale(running_var, weight, eps).abs()).sum()


def fold_batchnorm_into_weight(
    weight: Tensor, scale: Tensor, *, transposed: bool = False, groups: int = 1
) -> Tensor:
    """Fold a per-output-channel BatchNorm ``scale`` into a dense/conv weight (float64).

    Dense ``(out, in)`` and conv ``(C_out, C_in/g, *k)`` weights scale dim 0. A ConvTranspose
    weight ``(C_in, C_out/g, *k)`` has its output channels in dim 1, group by group.
    """
    w = precise(weight)
    if not transposed:
        if scale.numel() != w.shape[0]:
            raise ShapeError(f"BatchNorm has {scale.numel()} channels, the layer {w.shape[0]}")
        return w * scale.reshape(-1, *([1] * (w.dim() - 1)))
    c_out_g = w.shape[1]
    if scale.numel() != c_out_g * groups:
        raise ShapeError(f"BatchNorm has {scale.numel()} channels, the layer {c_out_g * groups}")
    per_group = scale.reshape(groups, 1, c_out_g)  # (g, 1, C_out/g)
    c_in_g = w.shape[0] // groups
    w = w.reshape(groups, c_in_g, c_out_g, *w.shape[2:])
    w = w * per_group.reshape(groups, 1, c_out_g, *([1] * (w.dim() - 3)))
    return w.reshape(groups * c_in_g, c_out_g, *w.shape[3:])


def _per_dim(value: Sequence[int] | int, nd: int, name: str) -> tuple[int, ...]:
    values = (int(value),) * nd if isinstance(value, int) else tuple(int(v) for v in value)
    if len(values) != nd or any(v < 1 for v in values):
        raise ShapeError(f"{name}={value!r} must be {nd} positive integer(s)")
    return values
