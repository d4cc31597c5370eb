"""Slow, obviously correct reference implementations for the entropy math tests.

Every function here builds the EXPLICIT matrix of a layer's linear part (float64, rows = outputs,
columns = inputs, both flattened in torch's channel-major (C, *spatial) order) so the tests can
take ``slogdet`` / ``svdvals`` of it directly. Nothing here is clever and nothing here is used
outside the tests:

* :func:`dense_matrix`: the weight itself.
* :func:`conv_matrix`: a conv with any padding (all of torch's padding modes), stride, dilation
  and groups, built by applying ``torch.nn.functional.conv{1,2,3}d`` to every basis vector of
  the input space.
* :func:`conv_transpose_matrix`: the same with ``F.conv_transpose{1,2,3}d``.
* :func:`circular_conv_matrix` / :func:`circular_conv_transpose_matrix`: a circular conv with
  stride and dilation written out with index loops, ``y[i] = Σ_a K[a]·x[(s·i + d·a) mod grid]``;
  groups are block-diagonal.
* :func:`paper_block`: the square block of a valid stride-1 conv matrix formed by the top-left
  output-sized input block (the matrix behind the paper's (l−p+1)(w−q+1)·log|c11|).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one thread. The oracles make many tiny conv calls over a batch of basis
    vectors; with a second OpenMP thread on a busy 2-core machine, torch's dilated-conv path
    waited seconds per call at its barriers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def per_dim(value: Sequence[int] | int, nd: int) -> tuple[int, ...]:
    """An int or a sequence of ints as one int per spatial dimension."""
    out = (int(value),) * nd if isinstance(value, int) else tuple(int(v) for v in value)
    assert len(out) == nd, (value, nd)
    return out


def log_volume(M: Tensor) -> float:
    """Σ log σ_i over the min(m, n) singular values of an explicit matrix, in float64.

    No rank tolerance: a singular matrix gives a very negative number or ``-inf``; use
    :func:`is_rank_deficient` to decide which case a test is in.
    """
    M = M.to(torch.complex128 if M.is_complex() else torch.float64)
    return float(torch.log(torch.linalg.svdvals(M)).sum())


def is_rank_deficient(M: Tensor, rtol: float = 1e-10) -> bool:
    """σ_min ≤ rtol·σ_max of an explicit matrix (structural zeros land far below 1e-10)."""
    sv = torch.linalg.svdvals(M.to(torch.complex128 if M.is_complex() else torch.float64))
    return bool(sv[-1] <= rtol * sv[0])


def dense_matrix(weight: Tensor) -> Tensor:
    """A dense layer's matrix is its weight (out × in)."""
    return weight.to(torch.float64)


def _basis(n_channels: int, spatial: Sequence[int]) -> Tensor:
    n = n_channels * math.prod(spatial)
    return torch.eye(n, dtype=torch.float64).reshape(n, n_channels, *spatial)


def conv_matrix(
    weight: Tensor,
    in_spatial: Sequence[int],
    stride: Sequence[int] | int = 1,
    padding: Sequence[int] | int = 0,
    dilation: Sequence[int] | int = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> tuple[Tensor, tuple[int, ...]]:
    """The explicit matrix of ``nn.ConvNd(..., padding_mode=padding_mode)`` (no bias).

    Column j is the layer applied to the j-th basis vector of the (C_in, *in_spatial) input.
    Returns ``(matrix, out_spatial)``.
    """
    nd = weight.dim() - 2
    w = weight.to(torch.float64)
    x = _basis(w.shape[1] * groups, in_spatial)
    pad = per_dim(padding, nd)
    if padding_mode != "zeros":
        # nn.ConvNd does exactly this for the non-zero modes: F.pad, then a conv with padding 0.
        x = F.pad(x, [p for p in reversed(pad) for _ in range(2)], mode=padding_mode)
        pad = (0,) * nd
    with _one_thread():
        y = _CONV[nd](x, w, None, per_dim(stride, nd), pad, per_dim(dilation, nd), groups)
    return y.reshape(y.shape[0], -1).T.contiguous(), tuple(y.shape[2:])


def conv_transpose_matrix(
    weight: Tensor,
    in_spatial: Sequence[int],
    stride: Sequence[int] | int = 1,
    padding: Sequence[int] | int = 0,
    output_padding: Sequence[int] | int = 0,
    dilation: Sequence[int] | int = 1,
    groups: int = 1,
) -> tuple[Tensor, tuple[int, ...]]:
    """The explicit matrix of ``nn.ConvTransposeNd`` (weight ``(C_in, C_out/g, *k)``, no
    bias), built with ``F.conv_transpose{1,2,3}d`` on every basis vector.

    Returns ``(matrix, out_spatial)``.
    """
    nd = weight.dim() - 2
    w = weight.to(torch.float64)
    x = _basis(w.shape[0], in_spatial)
    with _one_thread():
        y = _CONV_T[nd](
            x,
            w,
            None,
            per_dim(stride, nd),
            per_dim(padding, nd),
            per_dim(output_padding, nd),
            groups,
            per_dim(dilation, nd),
        )
    return y.reshape(y.shape[0], -1).T.contiguous(), tuple(y.shape[2:])


def _ravel(index: Sequence[int], shape: Sequence[int]) -> int:
    """Row-major flat index of a multi-index (numpy's ravel_multi_index, without its overhead)."""
    flat = 0
    for i, n in zip(index, shape, strict=True):
        assert 0 <= i < n, (index, shape)
        flat = flat * n + i
    return flat


def circular_conv_matrix(
    weight: Tensor,
    grid: Sequence[int],
    stride: Sequence[int] | int = 1,
    dilation: Sequence[int] | int = 1,
    groups: int = 1,
) -> Tensor:
    """Explicit matrix of the circular conv y[o, i] = Σ_{c,a} K[o,c,a]·x[c, (s·i + d·a) mod grid].

    ``weight`` is ``(C_out, C_in/g, *k)``; the output grid is grid/stride (grid must be a
    multiple of the stride). Output channel o of group g reads the input channels of group g
    only, so the matrix is block-diagonal over groups. Written with plain loops on purpose.
    """
    nd = weight.dim() - 2
    s, d, grid = per_dim(stride, nd), per_dim(dilation, nd), per_dim(grid, nd)
    assert all(g % st == 0 for g, st in zip(grid, s, strict=True)), (grid, s)
    n_out = tuple(g // st for g, st in zip(grid, s, strict=True))
    W = weight.detach().to(torch.float64).cpu().numpy()
    c_out, c_in_g = W.shape[:2]
    c_out_g = c_out // groups
    p_out, p_in = math.prod(n_out), math.prod(grid)
    M = np.zeros((c_out * p_out, c_in_g * groups * p_in))
    outputs = list(itertools.product(*map(range, n_out)))
    taps = list(itertools.product(*map(range, W.shape[2:])))
    for oc in range(c_out):
        g = oc // c_out_g
        for c_local in range(c_in_g):
            ic = g * c_in_g + c_local
            for i in outputs:
                row = oc * p_out + _ravel(i, n_out)
                for a in taps:
                    j = tuple((s[k] * i[k] + d[k] * a[k]) % grid[k] for k in range(nd))
                    M[row, ic * p_in + _ravel(j, grid)] += W[(oc, c_local, *a)]
    return torch.from_numpy(M)


def circular_conv_transpose_matrix(
    weight: Tensor,
    out_grid: Sequence[int],
    stride: Sequence[int] | int = 1,
    dilation: Sequence[int] | int = 1,
    groups: int = 1,
) -> Tensor:
    """Explicit matrix of the circular ConvTranspose, written as the scatter it is:
    y[o, (s·i + d·a) mod out_grid] += K[c, o_local, a]·x[c, i] for every input position i of
    the grid out_grid/stride. ``weight`` is ``(C_in, C_out/g, *k)`` as in nn.ConvTransposeNd.
    """
    nd = weight.dim() - 2
    s, d, grid = per_dim(stride, nd), per_dim(dilation, nd), per_dim(out_grid, nd)
    assert all(g % st == 0 for g, st in zip(grid, s, strict=True)), (grid, s)
    n_in = tuple(g // st for g, st in zip(grid, s, strict=True))
    W = weight.detach().to(torch.float64).cpu().numpy()
    c_in, c_out_g = W.shape[:2]
    c_in_g = c_in // groups
    p_in, p_out = math.prod(n_in), math.prod(grid)
    M = np.zeros((c_out_g * groups * p_out, c_in * p_in))
    inputs = list(itertools.product(*map(range, n_in)))
    taps = list(itertools.product(*map(range, W.shape[2:])))
    for ic in range(c_in):
        g = ic // c_in_g
        for o_local in range(c_out_g):
            oc = g * c_out_g + o_local
            for i in inputs:
                col = ic * p_in + _ravel(i, n_in)
                for a in taps:
                    j = tuple((s[k] * i[k] + d[k] * a[k]) % grid[k] for k in range(nd))
                    M[oc * p_out + _ravel(j, grid), col] += W[(ic, o_local, *a)]
    return torch.from_numpy(M)


def compose_circular_kernels(outer: Tensor, inner: Tensor, grid: Sequence[int]) -> Tensor:
    """The kernel of ``outer ∘ inner`` for stride-1, dilation-1, groups-1 circular convs.

    With y[i] = Σ_a K1[a]·x[i + a] and z[i] = Σ_b K2[b]·y[i + b], z[i] = Σ_c K[c]·x[i + c] with
    K[c] = Σ_{(a + b) mod grid = c} K2[b] @ K1[a]: a kernel as large as the grid.
    """
    nd = inner.dim() - 2
    grid = per_dim(grid, nd)
    K1 = inner.detach().to(torch.float64).cpu().numpy()
    K2 = outer.detach().to(torch.float64).cpu().numpy()
    K = np.zeros((K2.shape[0], K1.shape[1], *grid))
    for a in itertools.product(*map(range, K1.shape[2:])):
        for b in itertools.product(*map(range, K2.shape[2:])):
            c = tuple((a[k] + b[k]) % grid[k] for k in range(nd))
            K[(slice(None), slice(None), *c)] += (
                K2[(slice(None), slice(None), *b)] @ K1[(slice(None), slice(None), *a)]
            )
    return torch.from_numpy(K)


def dense_first_tap(weight: Tensor, groups: int = 1) -> Tensor:
    """The full C_out × C_in first-tap matrix K[:, :, 0, ..., 0], zero outside the groups."""
    nd = weight.dim() - 2
    tap = weight.detach().to(torch.float64)[(slice(None), slice(None), *([0] * nd))]
    c_out_g = tap.shape[0] // groups
    return torch.block_diag(*[tap[g * c_out_g : (g + 1) * c_out_g] for g in range(groups)])


def paper_block(
    weight: Tensor, in_spatial: Sequence[int], groups: int = 1, order: str = "channel"
) -> tuple[Tensor, tuple[int, ...]]:
    """The square block of the valid stride-1 conv matrix formed by the top-left input block
    of the output's size: rows are all outputs, columns the inputs (c, p) with p < out_spatial
    in every coordinate. Needs C_out == C_in. Returns ``(block, out_spatial)``.

    ``order="channel"``: torch's channel-major order (c, p) for rows and columns; every
    channel pair (o, c) is then a positions × positions upper-triangular block with
    K[o, c, 0, ..., 0] on its diagonal. ``order="position"``: position-major (p, c); the block
    is then block upper-triangular with the C × C first-tap matrix on its diagonal.
    """
    M, out = conv_matrix(weight, in_spatial, groups=groups)
    c_out, c_in = weight.shape[0], weight.shape[1] * groups
    assert c_out == c_in, "the paper block is square only when C_out == C_in"
    p_in, p_out = math.prod(in_spatial), math.prod(out)
    cols = [
        c * p_in + _ravel(p, in_spatial)
        for c in range(c_in)
        for p in itertools.product(*map(range, out))
    ]
    block = M[:, cols]
    if order == "position":
        perm = [c * p_out + p for p in range(p_out) for c in range(c_out)]
        block = block[perm][:, perm]
    else:
        assert order == "channel", order
    return block, out
