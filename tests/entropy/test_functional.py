"""Tests of the entropy math core, ``entropy_probe.entropy.functional`` (DESIGN.md section 2).

Six levels:

1. hand-computed literals;
2. comparisons with the explicit layer matrices of ``oracle.py`` over random shapes (hypothesis),
   after checking the oracle itself against torch's own layers;
3. algebraic properties (composition, scaling, isometries, BatchNorm folding, singular input,
   bad arguments);
4. ``torch.autograd.gradcheck`` in float64;
5. one statistical check against Gaussian entropy estimates from samples;
6. the same values on CUDA, when there is a device.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from entropy_probe.entropy import functional
from entropy_probe.entropy.functional import (
    batchnorm_log_volume,
    batchnorm_scale,
    conv_first_tap_matrices,
    conv_paper_log_volume,
    conv_spectral_log_volume,
    conv_spectral_matrices,
    dense_log_volume,
    fold_batchnorm_into_weight,
    paper_conv_delta_h,
    precise,
    spectral_grid,
    spectral_shape,
    sum_log_singular_values,
)
from entropy_probe.enums import LogDetMethod
from entropy_probe.errors import ShapeError

from . import oracle

F64 = torch.float64
METHODS = [m.value for m in LogDetMethod]

# Hypothesis: deterministic examples (no example database, the same run every time) and no
# deadline (the oracles are slow on purpose). The example counts keep this file well under 60 s
# on 2 CPU cores.
FEW = settings(deadline=None, max_examples=15, derandomize=True, database=None)
SOME = settings(deadline=None, max_examples=30, derandomize=True, database=None)
MANY = settings(deadline=None, max_examples=60, derandomize=True, database=None)

seeds = st.integers(0, 2**31 - 1)


def randn(*shape: int, seed: int, dtype: torch.dtype = F64) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=F64).to(dtype)


def assert_log_volume_close(value: Tensor | float, M: Tensor, rtol: float = 1e-6) -> None:
    """``value`` is Σ log σ_i of the explicit matrix ``M``: -inf exactly when M is (structurally)
    rank deficient, else equal to it within ``rtol`` of the scale 1 + Σ|log σ_i|."""
    value = float(value.detach()) if isinstance(value, Tensor) else float(value)
    sv = torch.linalg.svdvals(precise(M))
    if oracle.is_rank_deficient(M):
        assert value == -math.inf, (value, sv[-1] / sv[0])
        return
    expected = oracle.log_volume(M)
    scale = float(torch.log(sv).abs().sum()) + 1.0
    assert math.isfinite(value), (value, sv[-1] / sv[0])
    assert abs(value - expected) <= rtol * scale, (value, expected)


def with_singular_values(sv: list[float], m: int, n: int, seed: int) -> Tensor:
    """An m×n float64 matrix with the given singular values (random orthogonal factors)."""
    k = min(m, n)
    U, _ = torch.linalg.qr(randn(m, m, seed=seed))
    V, _ = torch.linalg.qr(randn(n, n, seed=seed + 1))
    return U[:, :k] @ torch.diag(torch.tensor(sv, dtype=F64)) @ V[:, :k].T


# ---------------------------------------------------------------------------------------------
# 1. Hand-computed literals
# ---------------------------------------------------------------------------------------------


class TestLiterals:
    def test_paper_formula_one_channel_valid(self) -> None:
        # 1 channel, 3×3 kernel on a 6×5 input, valid, stride 1: (6−3+1)(5−3+1)·log|c11|.
        w = torch.arange(1.0, 10.0).reshape(1, 1, 3, 3)
        w[0, 0, 0, 0] = -0.5
        got = paper_conv_delta_h(w, out_spatial=(4, 3))
        assert got.dtype == F64
        assert float(got) == pytest.approx(12 * math.log(0.5), rel=1e-15)
        # ... and it is the log|det| of the triangular block of the explicit conv matrix.
        block, out = oracle.paper_block(w, (6, 5))
        assert out == (4, 3)
        assert float(torch.linalg.slogdet(block).logabsdet) == pytest.approx(12 * math.log(0.5))

    def test_paper_two_channels(self) -> None:
        w = torch.zeros(2, 2, 3, 3)
        w[:, :, 0, 0] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # det −2
        w[:, :, 1:, 1:] = 7.0  # taps the paper method never sees
        assert float(conv_paper_log_volume(w)) == pytest.approx(math.log(2))
        assert float(paper_conv_delta_h(w, (5, 5))) == pytest.approx(25 * math.log(2))

    @pytest.mark.parametrize("method", METHODS)
    def test_dense_diagonal(self, method: str) -> None:
        W = torch.diag(torch.tensor([2.0, 3.0]))
        assert float(dense_log_volume(W, method)) == pytest.approx(math.log(6), rel=1e-14)

    @pytest.mark.parametrize("method", METHODS)
    def test_dense_negative_and_rotation(self, method: str) -> None:
        assert float(dense_log_volume(torch.diag(torch.tensor([-2.0, 0.5, -1.0])), method)) == (
            pytest.approx(0.0, abs=1e-14)
        )
        rot = torch.tensor([[0.0, -1.0], [1.0, 0.0]])
        assert float(dense_log_volume(rot, method)) == pytest.approx(0.0, abs=1e-14)

    @pytest.mark.parametrize("method", METHODS)
    def test_dense_tall_and_wide(self, method: str) -> None:
        wide = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
        tall = torch.tensor([[3.0, 0.0], [0.0, 4.0], [0.0, 0.0]])
        assert float(dense_log_volume(wide, method)) == pytest.approx(math.log(2))
        assert float(dense_log_volume(tall, method)) == pytest.approx(math.log(12))

    def test_batchnorm(self) -> None:
        var, gamma = torch.tensor([3.0, 0.25]), torch.tensor([2.0, 1.0])
        expected = math.log(2 / math.sqrt(3)) + math.log(2)
        assert float(batchnorm_log_volume(var, gamma, eps=0.0)) == pytest.approx(expected)
        # The sign of γ does not matter; without γ the scale is 1/sqrt(var + eps).
        assert float(batchnorm_log_volume(var, -gamma, eps=0.0)) == pytest.approx(expected)
        assert float(batchnorm_log_volume(torch.tensor([4.0]), eps=0.0)) == pytest.approx(
            math.log(0.5)
        )
        assert batchnorm_scale(var, gamma, eps=1.0).tolist() == pytest.approx([1.0, 1 / 1.25**0.5])

    def test_circular_literals(self) -> None:
        # Circulant matrix of [a, b] on n points: |det| = |a^n − (−b)^n|.
        w = torch.tensor([[[2.0, 1.0]]])
        assert float(conv_spectral_log_volume(w, (3,))) == pytest.approx(math.log(9))
        assert float(conv_spectral_log_volume(w, (4,))) == pytest.approx(math.log(15))
        # A kernel longer than the grid wraps: [2, 1, 5] on 2 points is [7, 1]: det 48.
        w3 = torch.tensor([[[2.0, 1.0, 5.0]]])
        assert float(conv_spectral_log_volume(w3, (2,))) == pytest.approx(math.log(48))
        # [1, 1] on 4 points vanishes at the Nyquist frequency: singular.
        assert float(conv_spectral_log_volume(torch.ones(1, 1, 2), (4,))) == -math.inf
        # Stride 2: y_i = x_2i + x_2i+1 has singular values √2, √2.
        got = conv_spectral_log_volume(torch.ones(1, 1, 2), (4,), stride=2)
        assert float(got) == pytest.approx(math.log(2))

    def test_spectral_shape_literal(self) -> None:
        W = torch.diag(torch.tensor([1.0, 4.0]))
        expected = math.log(2) - 0.5 * math.log(8.5)
        assert float(spectral_shape(W)) == pytest.approx(expected)

    def test_spectral_grid(self) -> None:
        assert spectral_grid((7, 8), (2, 3)) == (8, 9)
        assert spectral_grid((7,), (1,)) == (7,)

    def test_precise(self) -> None:
        assert precise(torch.ones(2, dtype=torch.float16)).dtype == F64
        assert precise(torch.ones(2, dtype=torch.complex64)).dtype == torch.complex128


# ---------------------------------------------------------------------------------------------
# 2a. The oracle, checked against torch's own layers
# ---------------------------------------------------------------------------------------------


def circular_conv_by_tiling(
    x: Tensor, w: Tensor, stride: tuple[int, ...], dilation: tuple[int, ...], groups: int
) -> Tensor:
    """y[i] = Σ_a K[a]·x[(s·i + d·a) mod grid], computed by tiling x periodically and running a
    valid F.conv: independent of the oracle's index loops."""
    nd = w.dim() - 2
    grid = x.shape[2:]
    reach = [d * (k - 1) for d, k in zip(dilation, w.shape[2:], strict=True)]
    reps = [1 + -(-r // g) for r, g in zip(reach, grid, strict=True)]
    tiled = x.repeat(1, 1, *reps)
    tiled = tiled[
        (slice(None), slice(None), *[slice(0, g + r) for g, r in zip(grid, reach, strict=True)])
    ]
    y = oracle._CONV[nd](tiled, w, None, stride, 0, dilation, groups)
    n_out = [g // s for g, s in zip(grid, stride, strict=True)]
    return y[(slice(None), slice(None), *[slice(0, n) for n in n_out])]


@st.composite
def conv_cases(draw: st.DrawFn, max_positions: int = 36) -> dict:
    """A random circular conv: nd, groups, channels, kernel (may exceed the grid), stride 1–3,
    dilation 1–2, a grid that is a multiple of the stride, and a weight seed."""
    nd = draw(st.sampled_from([1, 2, 3]))
    groups = draw(st.integers(1, 3))
    c_in_g = draw(st.integers(1, 3))
    c_out_g = draw(st.integers(1, 3))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    kmax = {1: 5, 2: 4, 3: 3}[nd]
    kernel = tuple(draw(st.integers(1, kmax)) for _ in range(nd))
    per_dim_cap = {1: max_positions, 2: 6, 3: 3}[nd]
    n_out = tuple(draw(st.integers(1, max(1, per_dim_cap // s))) for s in stride)
    grid = tuple(n * s for n, s in zip(n_out, stride, strict=True))
    return {
        "weight_shape": (c_out_g * groups, c_in_g, *kernel),
        "grid": grid,
        "stride": stride,
        "dilation": dilation,
        "groups": groups,
        "seed": draw(seeds),
    }


class TestOracle:
    @SOME
    @given(case=conv_cases())
    def test_circular_matrix_matches_tiled_conv(self, case: dict) -> None:
        w = randn(*case["weight_shape"], seed=case["seed"])
        M = oracle.circular_conv_matrix(
            w, case["grid"], case["stride"], case["dilation"], case["groups"]
        )
        c_in = w.shape[1] * case["groups"]
        x = randn(2, c_in, *case["grid"], seed=case["seed"] + 1)
        y = circular_conv_by_tiling(x, w, case["stride"], case["dilation"], case["groups"])
        torch.testing.assert_close(x.reshape(2, -1) @ M.T, y.reshape(2, -1))

    @pytest.mark.parametrize("nd", [1, 2, 3])
    def test_circular_matrix_is_torch_circular_padding(self, nd: int) -> None:
        # nn.ConvNd(padding_mode="circular", padding=p) reads x[(i + a − p) mod grid]: the
        # oracle's matrix applied to x rolled by p.
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[nd](
            4, 6, 3, padding=1, padding_mode="circular", groups=2, bias=False, dtype=F64
        )
        grid = {1: (7,), 2: (5, 4), 3: (3, 4, 3)}[nd]
        M = oracle.circular_conv_matrix(conv.weight.detach(), grid, groups=2)
        M_torch, out = oracle.conv_matrix(
            conv.weight.detach(), grid, padding=1, groups=2, padding_mode="circular"
        )
        assert out == grid
        x = randn(4, *grid, seed=nd)
        rolled = torch.roll(x, shifts=(1,) * nd, dims=tuple(range(1, nd + 1)))
        torch.testing.assert_close(M_torch @ x.reshape(-1), M @ rolled.reshape(-1))
        with torch.no_grad():
            torch.testing.assert_close(conv(x[None]).reshape(-1), M_torch @ x.reshape(-1))

    @pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
    def test_conv_matrix_matches_layer(self, mode: str) -> None:
        conv = nn.Conv2d(
            4,
            6,
            (3, 2),
            stride=(2, 1),
            padding=(1, 1),
            dilation=(1, 2),
            groups=2,
            padding_mode=mode,
            bias=False,
            dtype=F64,
        )
        M, out = oracle.conv_matrix(conv.weight.detach(), (6, 7), (2, 1), (1, 1), (1, 2), 2, mode)
        x = randn(3, 4, 6, 7, seed=0)
        with torch.no_grad():
            y = conv(x)
        assert tuple(y.shape[2:]) == out
        torch.testing.assert_close(x.reshape(3, -1) @ M.T, y.reshape(3, -1))

    @SOME
    @given(
        nd=st.sampled_from([1, 2, 3]),
        groups=st.integers(1, 2),
        c=st.integers(1, 3),
        stride=st.integers(1, 3),
        padding=st.integers(0, 2),
        dilation=st.integers(1, 2),
        data=st.data(),
    )
    def test_conv_transpose_is_the_adjoint_conv(
        self, nd: int, groups: int, c: int, stride: int, padding: int, dilation: int, data
    ) -> None:
        # nn.ConvTransposeNd is the adjoint of the conv with the same weight, stride, padding,
        # dilation and groups taken on its output grid: the same matrix, transposed, so the
        # same singular values.
        k = data.draw(st.integers(1, 3))
        in_spatial = tuple(data.draw(st.integers(1, {1: 5, 2: 3, 3: 2}[nd])) for _ in range(nd))
        out_pad = data.draw(st.integers(0, stride - 1))
        c_in, c_out_g = groups * c, data.draw(st.integers(1, 3))
        w = randn(c_in, c_out_g, *([k] * nd), seed=data.draw(seeds))
        # Keep the output non-empty: (in−1)s − 2p + d(k−1) + 1 + op ≥ 1.
        if any(
            (n - 1) * stride - 2 * padding + dilation * (k - 1) + out_pad < 0 for n in in_spatial
        ):
            padding = 0
        T, out = oracle.conv_transpose_matrix(
            w, in_spatial, stride, padding, out_pad, dilation, groups
        )
        C, back = oracle.conv_matrix(w, out, stride, padding, dilation, groups)
        assert back == in_spatial
        torch.testing.assert_close(T, C.T)
        torch.testing.assert_close(torch.linalg.svdvals(T), torch.linalg.svdvals(C))

    @SOME
    @given(case=conv_cases(max_positions=12))
    def test_circular_transpose_is_transpose(self, case: dict) -> None:
        w = randn(*case["weight_shape"], seed=case["seed"])
        args = (case["grid"], case["stride"], case["dilation"], case["groups"])
        T = oracle.circular_conv_transpose_matrix(w, *args)
        torch.testing.assert_close(T, oracle.circular_conv_matrix(w, *args).T)

    def test_circular_transpose_matches_torch_on_exact_grid(self) -> None:
        # Where nothing wraps (kernel = stride, no padding) the circular ConvTranspose is torch's.
        layer = nn.ConvTranspose2d(4, 6, 2, stride=2, groups=2, bias=False, dtype=F64)
        T = oracle.circular_conv_transpose_matrix(layer.weight.detach(), (6, 4), 2, 1, 2)
        T_torch, out = oracle.conv_transpose_matrix(layer.weight.detach(), (3, 2), 2, groups=2)
        assert out == (6, 4)
        torch.testing.assert_close(T, T_torch)

    def test_paper_block_one_channel_is_triangular(self) -> None:
        w = randn(1, 1, 3, 4, seed=1)
        block, out = oracle.paper_block(w, (7, 6))
        assert out == (5, 3)
        assert block.shape == (15, 15)
        torch.testing.assert_close(block, torch.triu(block), rtol=0, atol=0)
        assert torch.all(torch.diagonal(block) == w[0, 0, 0, 0])
        torch.testing.assert_close(
            torch.linalg.slogdet(block).logabsdet, 15 * torch.log(w[0, 0, 0, 0].abs())
        )

    @FEW
    @given(
        nd=st.sampled_from([1, 2, 3]),
        groups=st.sampled_from([1, 2]),
        c_g=st.integers(1, 3),
        data=st.data(),
    )
    def test_paper_block_multichannel(self, nd: int, groups: int, c_g: int, data) -> None:
        # Square channels (C_out = C_in = C), any groups. Channel-major order: each (o, c)
        # positions×positions block is upper triangular with K[o, c, 0…] on its diagonal.
        # Position-major order: block upper-triangular with the C×C first tap on the diagonal,
        # so log|det| = positions · Σ log σ(first tap) = paper_conv_delta_h.
        c = groups * c_g
        kernel = tuple(data.draw(st.integers(1, 3)) for _ in range(nd))
        in_spatial = tuple(k + data.draw(st.integers(0, {1: 4, 2: 2, 3: 1}[nd])) for k in kernel)
        w = randn(c, c_g, *kernel, seed=data.draw(seeds))
        tap = oracle.dense_first_tap(w, groups)

        block, out = oracle.paper_block(w, in_spatial, groups, order="channel")
        P = math.prod(out)
        for o in range(c):
            for i in range(c):
                sub = block[o * P : (o + 1) * P, i * P : (i + 1) * P]
                torch.testing.assert_close(sub, torch.triu(sub), rtol=0, atol=0)
                assert torch.all(torch.diagonal(sub) == tap[o, i])

        pblock, _ = oracle.paper_block(w, in_spatial, groups, order="position")
        for p in range(P):
            torch.testing.assert_close(pblock[p * c : (p + 1) * c, p * c : (p + 1) * c], tap)
            assert torch.all(pblock[(p + 1) * c :, p * c : (p + 1) * c] == 0)

        expected = paper_conv_delta_h(w, out, groups)
        for b in (block, pblock):
            torch.testing.assert_close(torch.linalg.slogdet(b).logabsdet, expected)


# ---------------------------------------------------------------------------------------------
# 2b. functional.py against the oracle
# ---------------------------------------------------------------------------------------------


class TestAgainstOracle:
    @MANY
    @given(case=conv_cases())
    def test_spectral_equals_explicit_circular(self, case: dict) -> None:
        w = randn(*case["weight_shape"], seed=case["seed"])
        args = (case["grid"], case["stride"], case["dilation"], case["groups"])
        M = oracle.circular_conv_matrix(w, *args)
        assert_log_volume_close(conv_spectral_log_volume(w, *args), M)

    @SOME
    @given(case=conv_cases(max_positions=12))
    def test_spectral_conv_transpose(self, case: dict) -> None:
        # A ConvTranspose weight (C_in, C_out/g, *k) is passed as is, with the *output* grid.
        w = randn(*case["weight_shape"], seed=case["seed"])
        args = (case["grid"], case["stride"], case["dilation"], case["groups"])
        T = oracle.circular_conv_transpose_matrix(w, *args)
        assert_log_volume_close(conv_spectral_log_volume(w, *args), T)

    def test_spectral_conv_transpose_layer(self) -> None:
        layer = nn.ConvTranspose2d(4, 6, 3, stride=2, dilation=2, groups=2, bias=False)
        T = oracle.circular_conv_transpose_matrix(layer.weight.detach(), (6, 8), 2, 2, 2)
        got = conv_spectral_log_volume(layer.weight, (6, 8), stride=2, dilation=2, groups=2)
        assert_log_volume_close(got, T)

    @SOME
    @given(case=conv_cases(max_positions=10))
    def test_spectral_chunking_does_not_matter(self, case: dict) -> None:
        w = randn(*case["weight_shape"], seed=case["seed"])
        args = (case["grid"], case["stride"], case["dilation"], case["groups"])
        whole = conv_spectral_log_volume(w, *args)
        chunked = conv_spectral_log_volume(w, *args, chunk=1)
        torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-12)

    @SOME
    @given(case=conv_cases())
    def test_spectral_matrices_shape_and_multiplicity(self, case: dict) -> None:
        w = randn(*case["weight_shape"], seed=case["seed"])
        mats, mult = conv_spectral_matrices(
            w, case["grid"], case["stride"], case["dilation"], case["groups"]
        )
        g, (c_out, c_in_g) = case["groups"], case["weight_shape"][:2]
        n_out = [n // s for n, s in zip(case["grid"], case["stride"], strict=True)]
        assert mats.dtype == torch.complex128 and mult.dtype == F64
        assert mats.shape[1:] == (g, c_out // g, c_in_g * math.prod(case["stride"]))
        assert mats.shape[0] == mult.shape[0]
        assert float(mult.sum()) == math.prod(n_out)

    @MANY
    @given(m=st.integers(1, 8), n=st.integers(1, 8), seed=seeds, method=st.sampled_from(METHODS))
    def test_dense_equals_svdvals(self, m: int, n: int, seed: int, method: str) -> None:
        W = randn(m, n, seed=seed)
        assert_log_volume_close(dense_log_volume(W, method), oracle.dense_matrix(W), rtol=1e-9)

    @SOME
    @given(
        batch=st.integers(1, 5),
        m=st.integers(1, 6),
        n=st.integers(1, 6),
        seed=seeds,
        complex_=st.booleans(),
    )
    def test_methods_batched_and_complex(
        self, batch: int, m: int, n: int, seed: int, complex_: bool
    ) -> None:
        A = randn(batch, 2, m, n, seed=seed)
        if complex_:
            A = torch.complex(A, randn(batch, 2, m, n, seed=seed + 1))
        values = {meth: sum_log_singular_values(A, meth) for meth in METHODS}
        for v in values.values():
            assert v.shape == (batch, 2) and v.dtype == F64
            torch.testing.assert_close(v, values["svd"], rtol=1e-9, atol=1e-9)
        for b in range(batch):
            for j in range(2):
                one = sum_log_singular_values(A[b, j])
                assert one.shape == ()
                torch.testing.assert_close(one, values["auto"][b, j], rtol=1e-9, atol=1e-9)
                assert_log_volume_close(one, A[b, j], rtol=1e-9)

    @SOME
    @given(m=st.integers(2, 7), n=st.integers(2, 7), spread=st.integers(1, 9), seed=seeds)
    def test_ill_conditioned_auto_equals_svd(self, m: int, n: int, spread: int, seed: int) -> None:
        # Singular values spread over up to 9 decades: auto (Cholesky or its SVD fallback) must
        # still match the SVD.
        k = min(m, n)
        sv = [10.0 ** (-spread * i / max(k - 1, 1)) for i in range(k)]
        A = with_singular_values(sv, m, n, seed)
        expected = sum(math.log(s) for s in sv)
        scale = sum(abs(math.log(s)) for s in sv) + 1
        for method in ("auto", "svd"):
            assert abs(float(sum_log_singular_values(A, method)) - expected) <= 1e-6 * scale

    @SOME
    @given(
        nd=st.sampled_from([1, 2, 3]),
        groups=st.integers(1, 3),
        c_in_g=st.integers(1, 3),
        c_out_g=st.integers(1, 3),
        n=st.integers(1, 4),
        stride=st.integers(1, 2),
        seed=seeds,
    )
    def test_one_by_one_conv_spectral_is_positions_times_paper(
        self, nd: int, groups: int, c_in_g: int, c_out_g: int, n: int, stride: int, seed: int
    ) -> None:
        # A 1×1 kernel has a constant K̂(ω). With stride s the other s^nd − 1 input phases are
        # dropped; the value stays positions × paper when C_out/g ≤ C_in/g.
        if stride > 1:
            c_out_g = min(c_out_g, c_in_g)
        w = randn(c_out_g * groups, c_in_g, *([1] * nd), seed=seed)
        grid = (n * stride,) * nd
        spectral = conv_spectral_log_volume(w, grid, stride, 1, groups)
        paper = paper_conv_delta_h(w, (n,) * nd, groups)
        torch.testing.assert_close(spectral, paper, rtol=1e-9, atol=1e-9)
        assert_log_volume_close(spectral, oracle.circular_conv_matrix(w, grid, stride, 1, groups))

    @pytest.mark.parametrize(
        ("shape", "grid", "dilation"),
        [((4, 3, 3, 3), (6, 5), 1), ((2, 2, 5), (3,), 2), ((3, 2, 2, 2, 2), (3, 4, 2), 1)],
    )
    def test_tap_dft_equals_a_zero_padded_fft(
        self, shape: tuple, grid: tuple, dilation: int
    ) -> None:
        # Stride 1: K̂(ω) is the real FFT of the kernel scattered onto the grid (taps beyond
        # it wrap). The matrices built from the kernel's taps alone match it, frequency by
        # frequency, in rfftn's layout.
        w = randn(*shape, seed=5)
        nd = len(grid)
        padded = torch.zeros(*shape[:2], *grid, dtype=F64)
        for tap in itertools.product(*(range(k) for k in shape[2:])):
            where = tuple((a * dilation) % n for a, n in zip(tap, grid, strict=True))
            padded[(slice(None), slice(None), *where)] += w[(slice(None), slice(None), *tap)]
        fft = torch.fft.rfftn(padded, dim=tuple(range(2, 2 + nd)))
        expected = fft.reshape(*shape[:2], -1).permute(2, 0, 1)
        mats, _ = conv_spectral_matrices(w, grid, 1, dilation)
        torch.testing.assert_close(mats[:, 0], expected, rtol=0, atol=1e-12)

    def test_strided_one_by_one_widening_is_singular_without_building_matrices(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Stride 2 keeps one pixel in four: 8 outputs per kept pixel from 3 inputs cannot be
        # full rank. Decided from the shapes, before any (large) frequency matrix exists.
        def refuse(*args: object, **kwargs: object) -> None:
            raise AssertionError("the frequency matrices were built")

        monkeypatch.setattr(functional, "conv_spectral_matrices", refuse)
        w = randn(8, 3, 1, 1, seed=6)
        assert float(conv_spectral_log_volume(w, (4, 4), 2)) == -math.inf
        narrowing = randn(3, 8, 1, 1, seed=7)
        expected = 4 * torch.linalg.svdvals(narrowing[:, :, 0, 0]).log().sum()
        torch.testing.assert_close(conv_spectral_log_volume(narrowing, (4, 4), 2), expected)

    def test_patch_embedding_builds_one_frequency_matrix(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # kernel = stride (ViT's patch embedding): no tap is shifted, K̂(ω) is the same matrix
        # at every frequency, so one is built; the value is still the explicit operator's.
        w = randn(6, 2, 2, 3, seed=8)
        built: list[int] = []
        matrices = functional.conv_spectral_matrices

        def spy(*args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
            mats, mult = matrices(*args, **kwargs)
            built.append(mats.shape[0])
            return mats, mult

        monkeypatch.setattr(functional, "conv_spectral_matrices", spy)
        got = conv_spectral_log_volume(w, (6, 9), (2, 3))
        assert built == [1]
        assert_log_volume_close(got, oracle.circular_conv_matrix(w, (6, 9), (2, 3), 1, 1))

    @pytest.mark.parametrize("stride", [1, 2])
    def test_one_by_one_spectral_judges_rank_like_paper(self, stride: int) -> None:
        # A float32 1×1 kernel with σ_min/σ_max = 1e-6: singular at float32 precision (the
        # paper value's rule), not at float64. The spectral value of a 1×1 conv is the paper
        # value over the grid, verdict included, strided or not; the same operator as a 1×2
        # kernel with a zero tap goes through float64 frequency matrices and stays finite.
        q, _ = torch.linalg.qr(randn(16, 16, seed=9))
        w = ((q * torch.logspace(0, -6, 16, dtype=F64)) @ q.T).float().reshape(16, 16, 1, 1)
        assert float(conv_spectral_log_volume(w, (8, 8), stride)) == -math.inf
        assert float(paper_conv_delta_h(w, (8 // stride,) * 2)) == -math.inf
        padded = torch.cat([w, torch.zeros_like(w)], dim=-1)
        assert math.isfinite(float(conv_spectral_log_volume(padded, (8, 8), stride)))
        w64 = w.double()
        torch.testing.assert_close(
            conv_spectral_log_volume(w64, (8, 8), stride),
            paper_conv_delta_h(w64, (8 // stride,) * 2),
        )

    @pytest.mark.parametrize(
        ("shape", "grid", "stride"),
        [((3, 3, 1, 1), (4, 4), 1), ((2, 4, 1, 1), (4, 4), 2), ((3, 2, 2, 2), (4, 6), 2)],
        ids=["1x1", "1x1-strided", "patch"],
    )
    def test_shortcut_paths_are_differentiable(
        self, shape: tuple, grid: tuple, stride: int
    ) -> None:
        w = randn(*shape, seed=10).requires_grad_(True)
        assert torch.autograd.gradcheck(
            lambda x: conv_spectral_log_volume(x, grid, stride), (w,), atol=1e-6
        )

    def test_circular_padding_layer(self) -> None:
        # What a user runs: nn.Conv2d(padding_mode="circular") with "same" padding, stride 1.
        conv = nn.Conv2d(6, 6, 3, padding=1, padding_mode="circular", groups=3, bias=False)
        M, _ = oracle.conv_matrix(
            conv.weight.detach(), (5, 6), padding=1, groups=3, padding_mode="circular"
        )
        assert_log_volume_close(conv_spectral_log_volume(conv.weight, (5, 6), groups=3), M)


# ---------------------------------------------------------------------------------------------
# 3. Properties
# ---------------------------------------------------------------------------------------------


class TestProperties:
    @SOME
    @given(n=st.integers(1, 8), seed=seeds, method=st.sampled_from(METHODS))
    def test_dense_composition_adds(self, n: int, seed: int, method: str) -> None:
        A, B = randn(n, n, seed=seed), randn(n, n, seed=seed + 1)
        torch.testing.assert_close(
            dense_log_volume(A @ B, method),
            dense_log_volume(A, method) + dense_log_volume(B, method),
            rtol=1e-8,
            atol=1e-8,
        )

    @FEW
    @given(
        nd=st.sampled_from([1, 2]),
        c=st.integers(1, 3),
        k1=st.integers(1, 3),
        k2=st.integers(1, 3),
        n=st.integers(2, 5),
        seed=seeds,
    )
    def test_circular_composition_adds(
        self, nd: int, c: int, k1: int, k2: int, n: int, seed: int
    ) -> None:
        grid = (n,) * nd
        K1 = randn(c, c, *([k1] * nd), seed=seed)
        K2 = randn(c, c, *([k2] * nd), seed=seed + 1)
        K = oracle.compose_circular_kernels(K2, K1, grid)
        # The composed kernel really is the product of the two explicit matrices ...
        torch.testing.assert_close(
            oracle.circular_conv_matrix(K, grid),
            oracle.circular_conv_matrix(K2, grid) @ oracle.circular_conv_matrix(K1, grid),
        )
        # ... and its log volume is the sum (the K̂(ω) multiply frequency by frequency).
        torch.testing.assert_close(
            conv_spectral_log_volume(K, grid),
            conv_spectral_log_volume(K1, grid) + conv_spectral_log_volume(K2, grid),
            rtol=1e-8,
            atol=1e-8,
        )

    @SOME
    @given(
        m=st.integers(1, 7),
        n=st.integers(1, 7),
        seed=seeds,
        a=st.floats(0.01, 100) | st.floats(-100, -0.01),
    )
    def test_dense_scaling(self, m: int, n: int, seed: int, a: float) -> None:
        W = randn(m, n, seed=seed)
        torch.testing.assert_close(
            dense_log_volume(a * W),
            dense_log_volume(W) + min(m, n) * math.log(abs(a)),
            rtol=1e-9,
            atol=1e-9,
        )

    @SOME
    @given(case=conv_cases(max_positions=12), a=st.floats(0.05, 20) | st.floats(-20, -0.05))
    def test_conv_scaling(self, case: dict, a: float) -> None:
        w = randn(*case["weight_shape"], seed=case["seed"])
        args = (case["grid"], case["stride"], case["dilation"], case["groups"])
        g, (c_out, c_in_g) = case["groups"], case["weight_shape"][:2]
        n_out = math.prod(n // s for n, s in zip(case["grid"], case["stride"], strict=True))
        # Per frequency: min(C_out/g, C_in/g·∏s) singular values per group; for a square
        # stride-1 conv that is C·N.
        count = n_out * g * min(c_out // g, c_in_g * math.prod(case["stride"]))
        base = conv_spectral_log_volume(w, *args)
        if math.isfinite(float(base)):
            torch.testing.assert_close(
                conv_spectral_log_volume(a * w, *args),
                base + count * math.log(abs(a)),
                rtol=1e-8,
                atol=1e-8,
            )
        paper = conv_paper_log_volume(w, g)
        torch.testing.assert_close(
            conv_paper_log_volume(a * w, g),
            paper + g * min(c_out // g, c_in_g) * math.log(abs(a)),
            rtol=1e-9,
            atol=1e-9,
        )

    @SOME
    @given(n=st.integers(1, 10), seed=seeds, method=st.sampled_from(METHODS))
    def test_orthogonal_and_permutation_are_zero(self, n: int, seed: int, method: str) -> None:
        Q, _ = torch.linalg.qr(randn(n, n, seed=seed))
        assert abs(float(dense_log_volume(Q, method))) < 1e-10
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        P = torch.eye(n, dtype=F64)[perm]
        assert float(dense_log_volume(P, method)) == pytest.approx(0.0, abs=1e-12)
        # Tall/wide slices of an orthogonal matrix have all singular values 1.
        if n > 1:
            assert abs(float(dense_log_volume(Q[:, : n - 1], method))) < 1e-10
            assert abs(float(dense_log_volume(Q[: n - 1], method))) < 1e-10

    @pytest.mark.parametrize("nd", [1, 2, 3])
    @pytest.mark.parametrize("groups", [1, 4])
    def test_identity_conv_is_zero(self, nd: int, groups: int) -> None:
        c = 4
        w = torch.zeros(c, c // groups, *([3] * nd), dtype=F64)
        for o in range(c):
            w[(o, o % (c // groups), *([0] * nd))] = 1.0
        grid = (5,) * nd
        assert float(conv_paper_log_volume(w, groups)) == 0.0
        assert abs(float(conv_spectral_log_volume(w, grid, groups=groups))) < 1e-10

    def test_shift_kernel_spectral_zero_paper_singular(self) -> None:
        # A delta at tap (1, 1) is a circular shift (a permutation): spectral 0. The paper
        # method sees only the first tap, which is 0 here: -inf. (DESIGN.md 2.2: it is a
        # conditional entropy change that sees only the first tap.)
        w = torch.zeros(1, 1, 3, 3, dtype=F64)
        w[0, 0, 1, 1] = 1.0
        assert abs(float(conv_spectral_log_volume(w, (4, 4)))) < 1e-10
        assert float(conv_paper_log_volume(w)) == -math.inf

    @SOME
    @given(
        batch=st.integers(1, 3),
        m=st.integers(1, 6),
        n=st.integers(1, 6),
        seed=seeds,
        a=st.floats(1e-3, 1e3),
    )
    def test_spectral_shape(self, batch: int, m: int, n: int, seed: int, a: float) -> None:
        A = randn(batch, m, n, seed=seed)
        s = spectral_shape(A)
        assert s.shape == () and float(s) <= 1e-12
        torch.testing.assert_close(spectral_shape(a * A), s, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(spectral_shape(-a * A), s, rtol=1e-9, atol=1e-9)
        # The definition: mean log σ − log sqrt(mean σ²) over all singular values of the batch.
        sv = torch.linalg.svdvals(A).reshape(-1)
        expected = torch.log(sv).mean() - 0.5 * torch.log((sv**2).mean())
        torch.testing.assert_close(s, expected, rtol=1e-9, atol=1e-9)
        # An isometry up to scale (orthogonal times a scalar) has shape exactly 0.
        Q, _ = torch.linalg.qr(randn(batch, max(m, n), max(m, n), seed=seed + 1))
        assert abs(float(spectral_shape(a * Q[..., :m, :n]))) < 1e-10

    # -- BatchNorm folding -------------------------------------------------------------------

    @FEW
    @given(
        nd=st.sampled_from([1, 2, 3]),
        groups=st.integers(1, 3),
        c_g=st.integers(1, 3),
        k=st.integers(1, 3),
        n=st.integers(2, 4),
        seed=seeds,
    )
    def test_fold_batchnorm_conv(
        self, nd: int, groups: int, c_g: int, k: int, n: int, seed: int
    ) -> None:
        c = groups * c_g
        w = randn(c, c_g, *([k] * nd), seed=seed)
        var = randn(c, seed=seed + 1).abs() + 0.1
        gamma = randn(c, seed=seed + 2)
        scale = batchnorm_scale(var, gamma, eps=1e-5)
        bn = batchnorm_log_volume(var, gamma, eps=1e-5)
        folded = fold_batchnorm_into_weight(w, scale, groups=groups)
        assert fold_batchnorm_into_weight(w.float(), scale.float(), groups=groups).dtype == F64
        # Functionally it is BatchNorm(conv(x)) (bias and running mean aside).
        x = randn(2, c, *([n + k] * nd), seed=seed + 3)
        conv = oracle._CONV[nd]
        torch.testing.assert_close(
            conv(x, folded, groups=groups),
            conv(x, w, groups=groups) * scale.reshape(-1, *([1] * nd)),
        )
        # Square per-group channels: ΔH(fold) = ΔH(conv) + ΔH(BN), for both methods.
        torch.testing.assert_close(
            conv_paper_log_volume(folded, groups),
            conv_paper_log_volume(w, groups) + bn,
            rtol=1e-9,
            atol=1e-9,
        )
        grid = (n,) * nd
        torch.testing.assert_close(
            conv_spectral_log_volume(folded, grid, groups=groups),
            conv_spectral_log_volume(w, grid, groups=groups) + n**nd * bn,
            rtol=1e-8,
            atol=1e-8,
        )

    @FEW
    @given(
        nd=st.sampled_from([1, 2]),
        groups=st.integers(1, 3),
        c_g=st.integers(1, 3),
        k=st.integers(1, 3),
        n=st.integers(2, 4),
        seed=seeds,
    )
    def test_fold_batchnorm_conv_transpose(
        self, nd: int, groups: int, c_g: int, k: int, n: int, seed: int
    ) -> None:
        # ConvTranspose weight (C_in, C_out/g, *k); the BatchNorm acts on its C_out outputs.
        c = groups * c_g
        w = randn(c, c_g, *([k] * nd), seed=seed)
        scale = randn(c, seed=seed + 1)
        folded = fold_batchnorm_into_weight(w, scale, transposed=True, groups=groups)
        convt = oracle._CONV_T[nd]
        x = randn(2, c, *([n] * nd), seed=seed + 2)
        torch.testing.assert_close(
            convt(x, folded, groups=groups),
            convt(x, w, groups=groups) * scale.reshape(-1, *([1] * nd)),
        )
        log_bn = torch.log(scale.abs()).sum()
        torch.testing.assert_close(
            conv_paper_log_volume(folded, groups),
            conv_paper_log_volume(w, groups) + log_bn,
            rtol=1e-9,
            atol=1e-9,
        )
        grid = (n,) * nd
        torch.testing.assert_close(
            conv_spectral_log_volume(folded, grid, groups=groups),
            conv_spectral_log_volume(w, grid, groups=groups) + n**nd * log_bn,
            rtol=1e-8,
            atol=1e-8,
        )

    def test_fold_batchnorm_dense(self) -> None:
        W = randn(5, 5, seed=3)
        scale = batchnorm_scale(torch.rand(5, dtype=F64) + 0.5, randn(5, seed=4))
        torch.testing.assert_close(fold_batchnorm_into_weight(W, scale), torch.diag(scale) @ W)
        torch.testing.assert_close(
            dense_log_volume(fold_batchnorm_into_weight(W, scale)),
            dense_log_volume(W) + torch.log(scale.abs()).sum(),
        )

    # -- Singular input: -inf, never NaN, never an exception ----------------------------------

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex128])
    @pytest.mark.parametrize("shape", [(1, 1), (3, 3), (2, 5), (5, 2)])
    @pytest.mark.parametrize("method", ["auto", "svd"])
    def test_all_zero_is_minus_inf(self, dtype: torch.dtype, shape: tuple, method: str) -> None:
        got = sum_log_singular_values(torch.zeros(*shape, dtype=dtype), method)
        assert float(got) == -math.inf

    @MANY
    @given(
        m=st.integers(2, 12),
        n=st.integers(2, 12),
        seed=seeds,
        dtype=st.sampled_from([torch.float32, torch.float64]),
        method=st.sampled_from(["auto", "svd"]),
        factor=st.sampled_from([1.0, -3.0, 0.5]),
    )
    def test_duplicated_row_is_minus_inf(
        self, m: int, n: int, seed: int, dtype: torch.dtype, method: str, factor: float
    ) -> None:
        # A row repeated (times a factor) makes a wide/square matrix rank deficient; a repeated
        # column does the same for a tall one. The Cholesky of the Gram matrix does not always
        # fail on these (rounding leaves a tiny positive pivot): the value must still be -inf.
        W = randn(m, n, seed=seed, dtype=dtype)
        if m <= n:
            W[1] = W[0] * factor
        else:
            W[:, 1] = W[:, 0] * factor
        got = dense_log_volume(W, method)
        assert float(got) == -math.inf
        assert not torch.isnan(got)

    def test_low_rank_product_is_minus_inf(self) -> None:
        for seed in range(20):
            A = randn(6, 3, seed=seed) @ randn(3, 6, seed=seed + 100)
            assert float(dense_log_volume(A)) == -math.inf
            assert float(dense_log_volume(A, "svd")) == -math.inf

    def test_singular_in_a_batch(self) -> None:
        A = randn(4, 3, 3, seed=5)
        A[2, 1] = A[2, 0]
        A.requires_grad_(True)
        out = sum_log_singular_values(A)
        assert float(out[2].detach()) == -math.inf
        for b in (0, 1, 3):
            torch.testing.assert_close(out[b], sum_log_singular_values(A[b].detach()))
        # The singular entry does not poison the gradients of the others.
        out[0].backward()
        assert torch.isfinite(A.grad[0]).all()

    def test_singular_conv(self) -> None:
        w = torch.zeros(3, 3, 2, 2)
        assert float(conv_paper_log_volume(w)) == -math.inf
        assert float(conv_spectral_log_volume(w, (4, 4))) == -math.inf
        assert float(paper_conv_delta_h(w, (3, 3))) == -math.inf

    def test_cholesky_method_refuses_singular(self) -> None:
        W = torch.ones(3, 3)
        with pytest.raises(ShapeError, match="not numerically full rank"):
            dense_log_volume(W, "cholesky")

    # -- Bad arguments -----------------------------------------------------------------------

    @pytest.mark.parametrize("shape", [(0, 3), (3, 0), (0, 0), (2, 0, 4)])
    def test_zero_size(self, shape: tuple) -> None:
        with pytest.raises(ShapeError, match="empty"):
            sum_log_singular_values(torch.zeros(*shape))

    def test_zero_size_dense_and_conv(self) -> None:
        with pytest.raises(ShapeError, match="empty"):
            dense_log_volume(torch.zeros(0, 4))
        with pytest.raises(ShapeError, match="empty"):
            conv_paper_log_volume(torch.zeros(0, 3, 3, 3))
        with pytest.raises(ShapeError, match="empty"):
            conv_spectral_log_volume(torch.zeros(4, 0, 3, 3), (4, 4))
        with pytest.raises(ShapeError, match="empty"):
            conv_paper_log_volume(torch.zeros(4, 2, 0, 3))
        with pytest.raises(ShapeError, match="empty"):
            conv_spectral_log_volume(torch.zeros(4, 2, 3, 0), (4, 4))

    def test_bad_arguments(self) -> None:
        w = torch.randn(4, 2, 3, 3)
        with pytest.raises(ShapeError, match="expected a batch of matrices"):
            sum_log_singular_values(torch.ones(3))
        with pytest.raises(ShapeError, match="must be 2-D"):
            dense_log_volume(torch.ones(2, 2, 2))
        with pytest.raises(ShapeError, match="conv weight must be"):
            conv_paper_log_volume(torch.ones(2, 2))
        with pytest.raises(ShapeError, match="groups=3 does not divide"):
            conv_first_tap_matrices(w, groups=3)
        with pytest.raises(ShapeError, match="groups=0 does not divide"):
            conv_paper_log_volume(w, groups=0)
        with pytest.raises(ShapeError, match="does not divide"):
            conv_spectral_log_volume(w, (4, 4), groups=3)
        with pytest.raises(ShapeError, match="multiples of the stride"):
            conv_spectral_log_volume(w, (5, 4), stride=2)
        with pytest.raises(ShapeError, match="multiples of the stride"):
            conv_spectral_log_volume(w, (0, 4))
        with pytest.raises(ShapeError, match="has 1 dims"):
            conv_spectral_log_volume(w, (4,))
        with pytest.raises(ShapeError, match="stride="):
            conv_spectral_log_volume(w, (4, 4), stride=(1,))
        with pytest.raises(ShapeError, match="dilation="):
            conv_spectral_log_volume(w, (4, 4), dilation=0)
        with pytest.raises(ShapeError, match="BatchNorm has 3 channels"):
            fold_batchnorm_into_weight(w, torch.ones(3))
        with pytest.raises(ShapeError, match="BatchNorm has 3 channels"):
            fold_batchnorm_into_weight(w, torch.ones(3), transposed=True, groups=2)
        with pytest.raises(ValueError, match="bogus"):
            sum_log_singular_values(torch.eye(2), "bogus")


# ---------------------------------------------------------------------------------------------
# 4. Gradients
# ---------------------------------------------------------------------------------------------


def _leaf(*shape: int, seed: int) -> Tensor:
    return randn(*shape, seed=seed).requires_grad_(True)


class TestGradcheck:
    @pytest.mark.parametrize("shape", [(4, 4), (6, 3), (3, 6)], ids=["square", "tall", "wide"])
    @pytest.mark.parametrize("method", METHODS)
    def test_dense_log_volume(self, shape: tuple, method: str) -> None:
        W = _leaf(*shape, seed=1)
        assert torch.autograd.gradcheck(lambda w: dense_log_volume(w, method), (W,))

    def test_dense_gradient_is_inverse_transpose(self) -> None:
        # d log|det W| / dW = W^{-T}.
        W = _leaf(4, 4, seed=2)
        dense_log_volume(W).backward()
        torch.testing.assert_close(W.grad, torch.linalg.inv(W.detach()).T)

    def test_conv_paper_log_volume(self) -> None:
        w = _leaf(4, 2, 3, 3, seed=3)
        assert torch.autograd.gradcheck(lambda x: conv_paper_log_volume(x, groups=2), (w,))

    @pytest.mark.parametrize(
        ("shape", "grid", "stride", "groups"),
        [((2, 2, 2, 2), (3, 4), 1, 1), ((4, 1, 3), (6,), 2, 2), ((2, 3, 2, 2), (2, 2), 1, 1)],
    )
    def test_conv_spectral_log_volume(
        self, shape: tuple, grid: tuple, stride: int, groups: int
    ) -> None:
        w = _leaf(*shape, seed=4)
        assert torch.autograd.gradcheck(
            lambda x: conv_spectral_log_volume(x, grid, stride, 1, groups), (w,)
        )

    def test_spectral_shape(self) -> None:
        A = _leaf(2, 3, 5, seed=5)
        assert torch.autograd.gradcheck(spectral_shape, (A,))

    def test_batchnorm_log_volume(self) -> None:
        var = (randn(5, seed=6).abs() + 0.2).requires_grad_(True)
        gamma = _leaf(5, seed=7)
        assert torch.autograd.gradcheck(
            lambda v, g: batchnorm_log_volume(v, g, eps=1e-3), (var, gamma)
        )

    def test_fold_then_paper(self) -> None:
        w, s = _leaf(3, 3, 2, 2, seed=8), _leaf(3, seed=9)
        assert torch.autograd.gradcheck(
            lambda w, s: conv_paper_log_volume(fold_batchnorm_into_weight(w, s)), (w, s)
        )


# ---------------------------------------------------------------------------------------------
# 5. Statistics: the estimated entropy change of a linear layer on Gaussian data
# ---------------------------------------------------------------------------------------------


def gaussian_entropy(samples: Tensor) -> Tensor:
    """½ log det(2πe Σ̂) of samples (..., n, d), Σ̂ the unbiased sample covariance."""
    n, d = samples.shape[-2:]
    centred = samples - samples.mean(-2, keepdim=True)
    cov = centred.mT @ centred / (n - 1)
    return 0.5 * (d * math.log(2 * math.pi * math.e) + torch.linalg.slogdet(cov).logabsdet)


class TestGaussianEstimate:
    n, d = 5000, 4

    def _draw(self, reps: int, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``reps`` independent problems: a square W, and two independent samples X, X' of
        N(0, Σ), Σ = R Rᵀ with R = L + 2I (well conditioned, not diagonal)."""
        g = torch.Generator().manual_seed(seed)
        eye = torch.eye(self.d, dtype=F64)
        R = torch.randn(reps, self.d, self.d, generator=g, dtype=F64) + 2 * eye
        W = torch.randn(reps, self.d, self.d, generator=g, dtype=F64)
        X = torch.randn(reps, self.n, self.d, generator=g, dtype=F64) @ R.mT
        X2 = torch.randn(reps, self.n, self.d, generator=g, dtype=F64) @ R.mT
        return W, X, X2, R

    def test_same_sample_is_exact(self) -> None:
        # Σ̂ of WX is W Σ̂ Wᵀ, so on the same sample the estimate's change is log|det W| up to
        # rounding: no statistics involved.
        W, X, _, _ = self._draw(1, seed=0)
        delta = gaussian_entropy(X[0] @ W[0].T) - gaussian_entropy(X[0])
        torch.testing.assert_close(delta, dense_log_volume(W[0]), rtol=1e-10, atol=1e-10)

    def test_independent_sample_agrees_within_sampling_noise(self) -> None:
        # With an independent sample X' for the output, the estimate of H(WX') − H(X) is
        # log|det W| + ½(log det S' − log det S), S, S' independent sample covariances of
        # N(0, I) (Σ cancels exactly). For n samples log det S has variance
        # Σ_i ψ'((n−i)/2) ≈ 2d/n (Bartlett's decomposition of a Wishart), so the error has
        # standard deviation ½·sqrt(2·2d/n) = sqrt(d/n) ≈ 0.028 for n = 5000, d = 4;
        # 5 standard deviations (a false alarm about once in 1.7 million) is 0.14. The bias
        # −d(d+1)/(2n) of E log det S is the same for S and S' and cancels.
        sd = math.sqrt(self.d / self.n)
        reps = 200
        W, X, X2, _ = self._draw(reps, seed=1)
        delta = gaussian_entropy(X2 @ W.mT) - gaussian_entropy(X)
        errors = delta - sum_log_singular_values(W)
        assert abs(float(errors[0])) <= 5 * sd
        assert abs(float(errors[0])) > 1e-6  # sampling noise really is involved
        # The tolerance's reasoning, checked over 200 repetitions: the errors are centred
        # (4 standard errors), their spread is sqrt(d/n) (the sample sd of 200 normal draws is
        # within ±15% of the true one with probability 0.997), and none exceeds 5 sd
        # (probability of a false alarm 200·5.7e-7 ≈ 1e-4).
        assert abs(float(errors.mean())) <= 4 * sd / math.sqrt(reps)
        assert 0.85 * sd <= float(errors.std()) <= 1.15 * sd
        assert float(errors.abs().max()) <= 5 * sd


# ---------------------------------------------------------------------------------------------
# 6. CUDA
# ---------------------------------------------------------------------------------------------


def _device_cases() -> list[tuple[str, object]]:
    w4 = randn(4, 2, 3, 3, seed=11)
    return [
        ("dense_square", lambda dev: dense_log_volume(randn(6, 6, seed=1).to(dev))),
        ("dense_tall_svd", lambda dev: dense_log_volume(randn(7, 3, seed=2).to(dev), "svd")),
        (
            "batched_complex",
            lambda dev: sum_log_singular_values(
                torch.complex(randn(5, 3, 4, seed=3), randn(5, 3, 4, seed=4)).to(dev)
            ),
        ),
        ("paper", lambda dev: conv_paper_log_volume(w4.to(dev), groups=2)),
        (
            "spectral",
            lambda dev: conv_spectral_log_volume(
                w4.to(dev), (6, 4), stride=2, dilation=(1, 2), groups=2
            ),
        ),
        (
            "spectral_3d",
            lambda dev: conv_spectral_log_volume(
                randn(3, 3, 2, 2, 2, seed=5).float().to(dev), (4, 4, 4)
            ),
        ),
        ("shape", lambda dev: spectral_shape(randn(3, 4, 5, seed=6).to(dev))),
        (
            "batchnorm",
            lambda dev: batchnorm_log_volume(
                randn(5, seed=7).abs().to(dev), randn(5, seed=8).to(dev)
            ),
        ),
        (
            "fold_transposed",
            lambda dev: conv_spectral_log_volume(
                fold_batchnorm_into_weight(
                    w4.to(dev), randn(4, seed=9).to(dev), transposed=True, groups=2
                ),
                (4, 4),
                groups=2,
            ),
        ),
        ("singular", lambda dev: dense_log_volume(torch.ones(4, 4).to(dev))),
    ]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("name", "fn"), _device_cases(), ids=[c[0] for c in _device_cases()])
def test_cuda_matches_cpu(name: str, fn) -> None:
    cpu = fn("cpu")
    cuda = fn("cuda")
    assert cuda.device.type == "cuda"
    assert cuda.dtype == cpu.dtype == F64
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-9, atol=1e-9)
