"""The tiers of ``sum_log_singular_values``: short rows (deficient outright), Cholesky of the
Gram (trusted by a condition estimate or, near the rank threshold, by inertia tests), QR, SVD.

Each tier is checked against matrices with known singular values (random orthogonal factors
around a chosen diagonal, so Σ log σ is exact by construction), and the tests assert which
tier answered by making the later ones unavailable.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch.autograd import forward_ad

from entropy_probe.entropy import functional as F
from entropy_probe.entropy import logdet as L
from entropy_probe.errors import ShapeError

from .test_functional import randn, with_singular_values

F64 = torch.float64


def _forbid(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{name} was called")

    monkeypatch.setattr(L, name, refuse)


def _count_svd_rows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Patch the SVD tier to record how many matrices each call decomposed (and still run)."""
    rows: list[int] = []
    svd = L._svd_sum_log

    def spy(A: torch.Tensor, tol: float) -> torch.Tensor:
        rows.append(A.shape[0])
        return svd(A, tol)

    monkeypatch.setattr(L, "_svd_sum_log", spy)
    return rows


@pytest.mark.parametrize("k", [1, 255, 256, 257, 300, 513, 1024])
@pytest.mark.parametrize("complex_", [False, True])
def test_blocked_gram_equals_one_matmul(k: int, complex_: bool) -> None:
    rows = randn(2, k, 40, seed=k)
    if complex_:
        rows = torch.complex(rows, randn(2, k, 40, seed=k + 1))
    expected = rows @ rows.mH
    got = L._row_gram(rows)
    torch.testing.assert_close(got, expected, rtol=1e-13, atol=1e-12)


def test_blocked_gram_gradient_matches_one_matmul() -> None:
    rows = randn(300, 7, seed=3).requires_grad_(True)
    weights = randn(300, 300, seed=4)
    (grad_blocked,) = torch.autograd.grad((L._row_gram(rows) * weights).sum(), rows)
    (grad_plain,) = torch.autograd.grad(((rows @ rows.mT) * weights).sum(), rows)
    torch.testing.assert_close(grad_blocked, grad_plain, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("k", [1, 127, 128, 129, 300])
def test_lower_only_gram_has_the_full_lower_triangle(k: int) -> None:
    rows = randn(3, k, 50, seed=k)
    torch.testing.assert_close(
        torch.tril(L._row_gram(rows, lower_only=True)),
        torch.tril(rows @ rows.mT),
        rtol=1e-13,
        atol=1e-12,
    )


@pytest.mark.parametrize("k", [256, 511, 512, 1024])
def test_power_of_two_grams_are_factored_padded_with_the_same_factor(
    k: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # MKL's Cholesky is slow for k a multiple of 512: G ⊕ I₈ is factored instead, and its
    # leading block is G's factor, handed on compact and column-major as LAPACK returns it.
    rows = randn(2, k, k + 40, seed=k)
    factored: list[int] = []
    cholesky_ex = torch.linalg.cholesky_ex

    def spy(gram: torch.Tensor, **options: Any) -> Any:
        factored.append(gram.shape[-1])
        return cholesky_ex(gram, **options)

    monkeypatch.setattr(torch.linalg, "cholesky_ex", spy)
    gram, chol, info = L._lower_gram_cholesky(rows)
    assert factored == [k + 8 if k % 512 == 0 else k]
    expected = rows @ rows.mT
    torch.testing.assert_close(torch.tril(gram), torch.tril(expected), rtol=1e-13, atol=1e-12)
    torch.testing.assert_close(chol, torch.linalg.cholesky(expected), rtol=1e-12, atol=1e-12)
    assert chol.shape == (2, k, k) and chol.mT.is_contiguous()
    assert bool((info == 0).all())
    torch.testing.assert_close(
        F.sum_log_singular_values(rows), F.sum_log_singular_values(rows, "svd"), rtol=1e-12, atol=0
    )


def test_verdict_reads_only_the_lower_triangle(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every tier (accepted outright, σ_max estimate, inertia tests, deficient) gives the same
    # verdict when the Gram's upper part is garbage, as with the lower-only Gram.
    tol = L.rank_tolerance(torch.float32, 128, 128)
    near = []
    for i, factor in enumerate([0.5, 0.9, 1.1, 2.0, 3.0]):  # σ_min = factor·tol·σ_max
        sv = torch.logspace(0, -1, 128, dtype=F64)
        sv[-1] = factor * tol
        near.append(with_singular_values(sv.tolist(), 128, 128, seed=60 + i))
    gen = torch.Generator().manual_seed(5)
    healthy = torch.linalg.qr(torch.randn(2, 128, 128, generator=gen, dtype=F64)).Q
    mats = torch.cat([torch.stack(near), healthy])
    mats[-1, 3] = 0.0  # a zero row: deficient
    gram = mats @ mats.mT
    chol, info = torch.linalg.cholesky_ex(gram)
    inertia_batches: list[int] = []
    inertia = L._inertia_verdict

    def spy(gram: torch.Tensor, *args: torch.Tensor | float) -> L._Verdict:
        inertia_batches.append(gram.shape[0])
        return inertia(gram, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(L, "_inertia_verdict", spy)
    full = L._gram_verdict(gram, chol, info, tol, 128)
    assert inertia_batches and inertia_batches[0] > 0  # the inertia tier is exercised
    garbage = gram.clone()
    upper = torch.triu_indices(128, 128, 1)
    garbage[:, upper[0], upper[1]] = float("nan")
    lower = L._gram_verdict(garbage, chol, info, tol, 128)
    assert bool(full.accepted[-2]) and bool(full.deficient[-1])
    for got, expected in zip(lower, full, strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_well_conditioned_needs_only_cholesky(monkeypatch: pytest.MonkeyPatch) -> None:
    sv = [2.0, 1.0, 0.5, 0.25]
    A = with_singular_values(sv, 6, 4, seed=1)
    _forbid(monkeypatch, "_qr_sum_log")
    _forbid(monkeypatch, "_svd_sum_log")
    assert float(F.sum_log_singular_values(A)) == pytest.approx(sum(map(math.log, sv)), abs=1e-12)


@pytest.mark.parametrize("shape", [(5, 5), (9, 4), (4, 9)])
def test_ill_conditioned_full_rank_is_settled_by_qr(
    monkeypatch: pytest.MonkeyPatch, shape: tuple[int, int]
) -> None:
    # σ_min/σ_max = 1e-9: far below the Cholesky's precision floor (the Gram squares it to
    # 1e-18, under float64 rounding) but far above the float64 rank tolerance (~2e-15).
    m, n = shape
    k = min(m, n)
    sv = [10.0 ** (-9 * i / (k - 1)) for i in range(k)]
    A = with_singular_values(sv, m, n, seed=7)
    _forbid(monkeypatch, "_svd_sum_log")
    got = float(F.sum_log_singular_values(A))
    assert got == pytest.approx(sum(map(math.log, sv)), abs=1e-6)


def test_qr_tier_keeps_digits_the_gram_loses() -> None:
    # The Gram route alone on σ_min = 1e-7 loses most digits of log σ_min; the QR tier does not.
    sv = [1.0, 1.0, 1e-7]
    A = with_singular_values(sv, 3, 3, seed=11)
    exact = sum(map(math.log, sv))
    assert float(F.sum_log_singular_values(A)) == pytest.approx(exact, abs=1e-8)


def test_rank_deficient_reaches_the_svd_and_is_minus_inf(monkeypatch: pytest.MonkeyPatch) -> None:
    svd_rows = _count_svd_rows(monkeypatch)
    A = randn(3, 6, 2, seed=2) @ randn(3, 2, 6, seed=3)  # rank 2 in a 6×6 matrix
    A[1] = with_singular_values([3.0, 2.0, 1.0, 1.0, 0.5, 0.1], 6, 6, seed=4)
    out = F.sum_log_singular_values(A)
    assert out[0] == -math.inf and out[2] == -math.inf
    assert out[1] == pytest.approx(math.log(3 * 2 * 0.5 * 0.1), abs=1e-10)
    assert sum(svd_rows) == 2  # only the two deficient ones


def test_qr_tier_gradient_is_the_inverse_transpose(monkeypatch: pytest.MonkeyPatch) -> None:
    # d/dA Σ log σ_i = A^{-T} for a square invertible A, also where the QR tier answered.
    sv = [1.0, 0.3, 1e-6]
    A = with_singular_values(sv, 3, 3, seed=5).requires_grad_(True)
    _forbid(monkeypatch, "_svd_sum_log")
    (grad,) = torch.autograd.grad(F.sum_log_singular_values(A), A)
    torch.testing.assert_close(grad, torch.linalg.inv(A.detach()).T, rtol=1e-7, atol=1e-6)


def test_random_square_float32_layers_get_the_svd_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    # Random-init 512×512 float32 first taps (ResNet-50's last stage): σ_min sits within a
    # few × of numpy's threshold 512·eps32·σ_max (here 0.18× to 18×), where the condition
    # estimate cannot decide. Far above the Gram's rounding, its eigenvalues do: the verdicts
    # and values are the SVD's, with neither a QR nor an SVD.
    gen = torch.Generator().manual_seed(0)
    mats = torch.randn(8, 512, 512, generator=gen) / 48
    expected = F.sum_log_singular_values(mats, "svd")
    _forbid(monkeypatch, "_qr_sum_log")
    _forbid(monkeypatch, "_svd_sum_log")
    got = F.sum_log_singular_values(mats)
    assert torch.equal(torch.isinf(got), torch.isinf(expected))
    assert 0 < int(torch.isinf(expected).sum()) < 8
    finite = torch.isfinite(expected)
    torch.testing.assert_close(got[finite], expected[finite], rtol=1e-10, atol=1e-8)


def test_inertia_verdict_is_not_tried_where_rounding_hides_the_threshold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # float64 tolerance (~2e-15 relative) lies far under the Gram's rounding: only the QR can
    # settle an ill-conditioned matrix there, so no inertia tests are spent on it.
    sv = [1.0, 1e-4, 1e-9]
    A = with_singular_values(sv, 3, 3, seed=13)
    _forbid(monkeypatch, "_inertia_verdict")
    assert float(F.sum_log_singular_values(A)) == pytest.approx(sum(map(math.log, sv)), abs=1e-6)


@pytest.mark.parametrize("k", [40, 200])
def test_inertia_verdicts_are_never_wrong_and_settle_all_but_the_bracket(k: int) -> None:
    # Gram matrices with λ_min = factor·tol²·λ_max (float32 tolerance): a verdict is only ever
    # the true one, and outside the λ_max bracket (θ to θ·(1 + 1/32)) every one is settled.
    tol = L.rank_tolerance(torch.float32, k, k)
    factors = [0.25, 0.5, 0.9, 0.99, 1.01, 1.1, 1.5, 2.0, 8.0]
    grams = []
    for i, factor in enumerate(factors):
        sv = torch.logspace(0, -1, k, dtype=F64)
        sv[-1] = math.sqrt(factor) * tol
        A = with_singular_values(sv.tolist(), k, k, seed=40 + i)
        grams.append(A @ A.T)
    gram = torch.stack(grams)
    frob_sq = torch.diagonal(gram, dim1=-2, dim2=-1).sum(-1)
    rounding = L._ROUNDING_MARGIN * 2 * k * L._EPS64 * frob_sq
    row_sums = gram.abs().sum(-1).amax(-1)  # ‖G‖_∞: the caller's rigorous upper bound
    verdict = L._inertia_verdict(
        gram, tol, rounding, torch.zeros(len(factors), dtype=F64), row_sums
    )
    for i, factor in enumerate(factors):
        assert not (verdict.deficient[i] and verdict.accepted[i])
        if factor < 1:
            assert not verdict.accepted[i], factor
        else:
            assert not verdict.deficient[i], factor
        if factor <= 0.5:
            assert verdict.deficient[i], factor
        if factor >= 1.5:
            assert verdict.accepted[i], factor
    # where a verdict is still needed, σ_max comes back bounded from above (true value 1)
    rest = ~verdict.deficient
    assert bool((verdict.sigma_max[rest] >= 1.0).all())
    assert bool((verdict.sigma_max[rest] <= 1.3).all())


def test_a_short_row_is_deficient_before_any_gram(monkeypatch: pytest.MonkeyPatch) -> None:
    # A zero row (a folded BatchNorm with γ = 0) proves rank deficiency; no Gram is formed
    # for it, the healthy member of the batch still gets its exact value and gradient.
    healthy = with_singular_values([2.0, 1.0, 0.5], 3, 5, seed=30)
    zero_row = healthy.clone()
    zero_row[1] = 0.0
    grams: list[int] = []
    row_gram = L._row_gram

    def spy(rows: torch.Tensor, **options: Any) -> torch.Tensor:
        grams.append(rows.shape[0])
        return row_gram(rows, **options)

    monkeypatch.setattr(L, "_row_gram", spy)
    A = torch.stack([zero_row, healthy]).requires_grad_(True)
    out = F.sum_log_singular_values(A)
    assert out[0] == -math.inf
    assert float(out[1].detach()) == pytest.approx(math.log(2.0 * 1.0 * 0.5), abs=1e-12)
    assert grams == [1]
    (grad,) = torch.autograd.grad(out[1], A)
    assert bool((grad[0] == 0).all())
    torch.testing.assert_close(grad[1], torch.linalg.pinv(healthy).T)
    # 'cholesky' counts every matrix it cannot take, short rows included
    with pytest.raises(ShapeError, match=r"^2 matrix"):
        F.sum_log_singular_values(torch.stack([zero_row, healthy, zero_row]), "cholesky")
    _forbid(monkeypatch, "_row_gram")
    assert bool(torch.isinf(F.sum_log_singular_values(zero_row[None])).all())


# a FutureWarning or a DeprecationWarning, by torch version
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
@pytest.mark.parametrize("k", [5, 512])
def test_forward_mode_gradients_match_the_pseudo_inverse(k: int) -> None:
    # d/dε Σ log σ(A + εT) = Σ <pinv(A)ᵀ, T>: through torch.func.jvp and dual tensors alike
    # (forward AD cannot follow out= products or scratch blocks; they are not used for it)
    A, T = randn(2, k, k + 3, seed=k), randn(2, k, k + 3, seed=k + 1)
    A[1, 2] = 0.0  # a short row: −inf, no tangent needed there
    want = (torch.linalg.pinv(A[0]).mT * T[0]).sum()
    _, tangent = torch.func.jvp(F.sum_log_singular_values, (A,), (T,))
    torch.testing.assert_close(tangent[0], want, rtol=1e-9, atol=1e-9)
    with forward_ad.dual_level():
        out = F.sum_log_singular_values(forward_ad.make_dual(A, T))
        dual_tangent = forward_ad.unpack_dual(out).tangent
    assert dual_tangent is not None
    torch.testing.assert_close(dual_tangent[0], want, rtol=1e-9, atol=1e-9)


def test_runs_of_a_mask() -> None:
    mask = torch.tensor([True, True, False, True, False, False, True])
    assert L._runs(mask) == [(0, 2), (3, 4), (6, 7)]
    assert L._runs(torch.tensor([False, False])) == []


@pytest.mark.parametrize(
    "deficient", [[1, 2], [0, 3, 5, 7, 9, 11], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]
)
def test_members_left_after_short_rows_get_their_values_and_gradients(
    deficient: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Members left after the short-row check go on as slices of the batch (no copy) when
    # they form at most 4 runs, as one copied batch otherwise: the same values either way.
    mats = torch.stack([randn(4, 7, seed=70 + i) for i in range(12)])
    mats[deficient, 2] = 0.0
    mats.requires_grad_(True)
    calls: list[bool] = []
    gram_sum_log = L._gram_sum_log

    def spy(wide: torch.Tensor, *args: Any) -> torch.Tensor:
        calls.append(wide.untyped_storage().data_ptr() == mats.untyped_storage().data_ptr())
        return gram_sum_log(wide, *args)

    monkeypatch.setattr(L, "_gram_sum_log", spy)
    got = F.sum_log_singular_values(mats)
    expected = F.sum_log_singular_values(mats.detach(), "svd")
    torch.testing.assert_close(got.detach(), expected, rtol=1e-12, atol=0)
    runs = L._runs(torch.isfinite(expected))
    assert calls == ([True] * len(runs) if len(runs) <= 4 else [False])
    (grad,) = torch.autograd.grad(got[torch.isfinite(got)].sum(), mats)
    healthy = [i for i in range(12) if i not in deficient]
    for i in healthy:
        torch.testing.assert_close(grad[i], torch.linalg.pinv(mats[i].detach()).mT)
    assert bool((grad[deficient] == 0).all())


@pytest.mark.parametrize("scale", [1e-310, 1e-300, 1e-170, 1e160, 1e300, 1e308])
def test_extreme_float64_scales_keep_their_value(scale: float) -> None:
    # Squared row norms (and the Gram, and the SVD's internals) would underflow to a false
    # "deficient" or overflow; an exact power-of-two rescaling keeps the value
    # Σ log σ(A) + k·log(scale), down to a subnormal largest entry (1e-310).
    A = torch.stack([with_singular_values([2.0, 1.0, 0.5, 0.25], 4, 6, seed=31)] * 2)
    A = A / A.abs().amax()
    A[1] = A[1] * scale
    unit = float(F.sum_log_singular_values(A[0], "svd"))
    got = F.sum_log_singular_values(A)
    assert float(got[0]) == pytest.approx(unit, abs=1e-12)
    tolerance = 1e-6 if scale < 2.3e-308 else 1e-12  # a subnormal keeps fewer digits
    expected = unit + 4 * math.log(scale)
    assert float(got[1]) == pytest.approx(expected, rel=tolerance)
    for method in ("svd", "cholesky"):
        assert float(F.sum_log_singular_values(A[1], method)) == pytest.approx(
            expected, rel=tolerance
        )


@pytest.mark.parametrize("scale", [1e-300, 1e300])
def test_extreme_scales_in_a_mixed_batch_complex_and_negative(scale: float) -> None:
    # The largest magnitude of each extreme member is found without an |A| copy: a negative
    # largest entry, complex members (scaled by their largest real or imaginary part) and an
    # all-zero member (nothing to scale: rank deficient) in one batch.
    A = with_singular_values([2.0, 1.0, 0.5, 0.25], 4, 6, seed=32)
    A = -A.abs() / A.abs().amax()  # largest magnitude on a negative entry
    unit = float(F.sum_log_singular_values(A, "svd"))
    expected = unit + 4 * math.log(scale)
    real = torch.stack([A * scale, torch.zeros_like(A), A])
    got = F.sum_log_singular_values(real)
    assert float(got[0]) == pytest.approx(expected, rel=1e-12)
    assert math.isinf(float(got[1])) and float(got[1]) < 0
    assert float(got[2]) == pytest.approx(unit, abs=1e-12)
    phase = complex(math.cos(0.3), math.sin(0.3))  # |phase| = 1: same singular values
    complex_batch = real.to(torch.complex128) * phase
    got_complex = F.sum_log_singular_values(complex_batch)
    torch.testing.assert_close(got_complex, got, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(3, 4, 6), (3, 6, 4)])
@pytest.mark.parametrize("complex_", [False, True])
def test_sum_sq_is_the_squared_frobenius_norm_of_the_input(
    shape: tuple[int, int, int], complex_: bool
) -> None:
    A = randn(*shape, seed=8)
    if complex_:
        A = torch.complex(A, randn(*shape, seed=9))
    A[1] = A[1] * 1e150  # rescaled inside (squared norms beyond 2^800): Σσ² is still A's own
    A[2] = 0.0  # rank deficient outright
    volume = L.sum_log_and_sum_sq(A)
    torch.testing.assert_close(
        volume.sum_sq, torch.linalg.vector_norm(A, dim=(-2, -1)) ** 2, rtol=1e-14, atol=0
    )
    torch.testing.assert_close(volume.sum_log, F.sum_log_singular_values(A), rtol=0, atol=0)
    for method in ("svd", "cholesky"):
        sub = A[:2]
        torch.testing.assert_close(L.sum_log_and_sum_sq(sub, method).sum_sq, volume.sum_sq[:2])


def test_a_start_vector_orthogonal_to_the_top_direction_does_not_fool_sigma_max() -> None:
    # Built against the fixed start the σ_max power iteration used to have (seed 1): with
    # the top singular vector orthogonal to it, the estimate was σ_2 = σ_1/3 and a matrix the
    # SVD calls rank deficient (σ_min = 0.9·tol·σ_1) was accepted with a finite value.
    k = 200
    tol = L.rank_tolerance(torch.float32, k, k)
    start = torch.randn((1, k, 1), generator=torch.Generator().manual_seed(1), dtype=F64)
    x0 = start[0, :, 0]
    r = torch.randn(k, k, generator=torch.Generator().manual_seed(2), dtype=F64)
    r[:, 0] -= x0 * (x0 @ r[:, 0]) / (x0 @ x0)
    U, _ = torch.linalg.qr(r)
    V, _ = torch.linalg.qr(torch.randn(k, k, generator=torch.Generator().manual_seed(3), dtype=F64))
    sv = torch.rand(k, generator=torch.Generator().manual_seed(4), dtype=F64) * 0.6 + 0.3
    sv[0], sv[1], sv[-1] = 3.0, 1.0, 0.9 * tol * 3.0
    A = (U * sv) @ V.T
    assert float(F.sum_log_singular_values(A, "svd", tolerance_dtype=torch.float32)) == -math.inf
    assert float(F.sum_log_singular_values(A, tolerance_dtype=torch.float32)) == -math.inf


def kahan(k: int, theta: float) -> torch.Tensor:
    """Kahan's upper-triangular matrix: pivots s^i stay moderate while σ_min collapses."""
    c, s = math.cos(theta), math.sin(theta)
    upper = torch.triu(torch.ones(k, k, dtype=F64), diagonal=1)
    return torch.diag(s ** torch.arange(k, dtype=F64)) @ (torch.eye(k, dtype=F64) - c * upper)


@pytest.mark.parametrize("transpose", [False, True])
def test_large_pivots_do_not_hide_a_tiny_sigma_min(transpose: bool) -> None:
    # σ_min/σ_max ≈ 6e-11 with every pivot ≥ 0.01·‖A‖: rank deficient for float32 weights
    # (tolerance 100·eps32 = 1.2e-5), and far too ill-conditioned for the Gram route in float64.
    K = kahan(100, 1.35)
    K = K.T if transpose else K
    sv = torch.linalg.svdvals(K)
    assert float(sv[-1] / sv[0]) < 1e-9
    assert float(F.sum_log_singular_values(K.float())) == -math.inf
    exact = float(torch.log(sv).sum())
    got = float(F.sum_log_singular_values(K))  # float64 tolerance: full rank
    assert got == pytest.approx(exact, abs=1e-6)


def test_exactly_singular_members_leave_finite_gradients() -> None:
    singular = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=F64)
    healthy = torch.tensor([[2.0, 0.5], [0.1, 1.0]], dtype=F64)
    for method in ("auto", "svd"):
        A = torch.stack([singular, healthy]).requires_grad_(True)
        out = F.sum_log_singular_values(A, method)
        assert out[0] == -math.inf
        masked = torch.where(torch.isinf(out), torch.zeros_like(out), out).sum()
        (grad,) = torch.autograd.grad(masked, A)
        assert bool(torch.isfinite(grad).all()), (method, grad)
        torch.testing.assert_close(grad[1], torch.linalg.inv(healthy).T)
        assert bool((grad[0] == 0).all())


@pytest.mark.parametrize("factor", [0.5, 0.9, 0.999, 1.001, 1.1, 3.0, 100.0])
def test_verdict_near_the_rank_threshold_is_the_svds(
    monkeypatch: pytest.MonkeyPatch, factor: float
) -> None:
    # 50×50 float64 matrices judged at float32 precision: tol = 50·eps32. σ_min = factor·tol·σ_max,
    # the other singular values spread over [0.01, 1]. Below the threshold −inf, above it the
    # exact value; only near it (within the 2× safety margin, or within the eigenvalues'
    # rounding for 0.999 and 1.001) may the SVD be needed.
    tol = 50 * torch.finfo(torch.float32).eps
    sv = [*torch.logspace(0, -2, 49, dtype=F64).tolist(), factor * tol]
    A = with_singular_values(sv, 50, 50, seed=int(factor * 10))
    svd_rows = _count_svd_rows(monkeypatch)
    got = float(F.sum_log_singular_values(A, tolerance_dtype=torch.float32))
    if factor < 1:
        assert got == -math.inf
    else:
        # the Cholesky's rounding: measured 2e-9 (MKL, torch 2.14) and 1.1e-8 (torch 2.11's
        # LAPACK, on a CUDA machine) at factor 3; the first-order bound k·eps64·‖A‖²_F·Σσ⁻² is 2e-4
        assert got == pytest.approx(sum(map(math.log, sv)), abs=1e-7)
    if factor >= 100:
        assert not svd_rows


@pytest.mark.parametrize(("k", "length"), [(256, 256), (128, 512), (64, 64)])
def test_cholesky_tier_keeps_its_digits_at_the_precision_floor(
    monkeypatch: pytest.MonkeyPatch, k: int, length: int
) -> None:
    # σ_min just above the Gram tier's floor (2× safety on 100·sqrt(eps64)·‖A‖_F, i.e.
    # 3e-6·‖A‖_F): the Cholesky answers, and the squared condition number costs far less
    # than 1e-7 nats on the total.
    _forbid(monkeypatch, "_qr_sum_log")
    sv = torch.logspace(0, -2, k, dtype=F64)
    frob = float(sv.norm())
    for i, ratio in enumerate((4e-6, 1e-5)):
        sv[-1] = ratio * frob
        A = with_singular_values(sv.tolist(), length, k, seed=20 + i)
        exact = float(torch.log(sv).sum())
        assert float(F.sum_log_singular_values(A)) == pytest.approx(exact, abs=1e-7)
