"""Estimators on Gaussians whose entropy is known, the projection, the registry, CUDA."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from entropy_probe.empirical import _sketch_kernel
from entropy_probe.empirical.estimators import (
    RandomProjection,
    entropy_per_dim,
    estimate,
    estimate_many,
    estimator_names,
    gaussian_entropy,
    get_estimator,
    knn_entropy,
    ledoit_wolf,
    prepare_whitening,
    projection_dims,
    wishart_bias,
)
from entropy_probe.errors import EntropyProbeError, UnknownNameError

HALF_LOG_2PIE = 0.5 * math.log(2 * math.pi * math.e)


def gaussian_samples(n: int, eigenvalues: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """N samples of N(0, Σ) with Σ = Q·diag(eigenvalues)·Qᵀ for a random rotation Q."""
    gen = torch.Generator().manual_seed(seed)
    d = eigenvalues.numel()
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    z = torch.randn(n, d, generator=gen, dtype=torch.float64)
    samples: torch.Tensor = (z * eigenvalues.sqrt()) @ q.T
    return samples


def exact_per_dim(eigenvalues: torch.Tensor) -> float:
    return HALF_LOG_2PIE + 0.5 * float(torch.log(eigenvalues).mean())


# --------------------------------------------------------------------------- known Gaussians


def test_gaussian_estimator_on_anisotropic_gaussian() -> None:
    # Σ with eigenvalues log-spaced over [0.1, 10], N = 4000, d = 8. The plug-in log det is
    # biased by wishart_bias(4000, 8) = −0.0007 per dim; Ledoit–Wolf shrinkage (ρ of order
    # d/N = 0.002) adds at most ½ρ(μ·mean(1/λ) − 1) ≈ +0.004; the standard deviation of
    # ½ log det S / d is sqrt(Σψ'((N−i)/2))/(2d) ≈ sqrt(2d/N)/(2d) ≈ 0.004. Tolerance 0.02 is
    # four standard deviations plus both biases.
    eig = torch.logspace(-1, 1, 8, dtype=torch.float64)
    for seed in range(3):
        x = gaussian_samples(4000, eig, seed)
        assert float(gaussian_entropy(x)) == pytest.approx(exact_per_dim(eig), abs=0.02)


def test_gaussian_estimator_isotropic_high_dim() -> None:
    # d = N/2, the most the projection allows: the unshrunk estimate is biased by exactly
    # wishart_bias(256, 128) = −0.158 per dim; Ledoit–Wolf shrinks isotropic data almost fully
    # to the (accurate) mean variance, removing that bias: within 0.03 (sd of ½ log μ ≈
    # sqrt(1/(2Nd)) = 0.004, plus the residual shrinkage bias).
    eig = torch.full((128,), 2.5, dtype=torch.float64)
    x = gaussian_samples(256, eig, seed=1)
    assert float(gaussian_entropy(x)) == pytest.approx(exact_per_dim(eig), abs=0.03)
    unshrunk = float(gaussian_entropy(x, shrinkage=False))
    bias = wishart_bias(256, 128)
    assert bias == pytest.approx(-0.1575, abs=1e-3)
    assert unshrunk - exact_per_dim(eig) == pytest.approx(bias, abs=0.03)


def test_knn_estimator_on_gaussians() -> None:
    # Kozachenko–Leonenko with k = 3 at low dimension: measured bias −0.007 per dim at
    # N = 4000 for d = 2…8 and a standard deviation ≤ 0.017 per estimate (5 seeds); a
    # tolerance of 0.06 is over three standard deviations plus the bias.
    for d, seed in ((2, 0), (4, 1), (8, 2)):
        eig = torch.logspace(-0.5, 0.5, d, dtype=torch.float64)
        x = gaussian_samples(4000, eig, seed)
        assert float(knn_entropy(x, k=3)) == pytest.approx(exact_per_dim(eig), abs=0.06)


def test_knn_k_changes_the_estimate_but_not_the_target() -> None:
    eig = torch.ones(3, dtype=torch.float64)
    x = gaussian_samples(3000, eig, seed=4)
    values = [float(knn_entropy(x, k=k)) for k in (1, 3, 10)]
    assert len(set(values)) == 3
    for v in values:
        assert v == pytest.approx(exact_per_dim(eig), abs=0.07)


def test_knn_chunking_gives_the_same_result() -> None:
    x = gaussian_samples(517, torch.linspace(0.5, 2.0, 6, dtype=torch.float64), seed=5)
    whole = knn_entropy(x, k=3, chunk_size=517)
    for chunk in (1, 7, 64, 1000):
        torch.testing.assert_close(knn_entropy(x, k=3, chunk_size=chunk), whole, rtol=0, atol=1e-12)
    torch.testing.assert_close(knn_entropy(x, k=3), whole, rtol=0, atol=1e-12)


def test_ledoit_wolf_matches_sklearn() -> None:
    sklearn_cov = pytest.importorskip("sklearn.covariance")
    x = gaussian_samples(300, torch.logspace(-1, 1, 20, dtype=torch.float64), seed=6)
    ours, rho = ledoit_wolf(x)
    theirs, shrinkage = sklearn_cov.ledoit_wolf(x.numpy())
    assert float(rho) == pytest.approx(float(shrinkage), rel=1e-10)
    torch.testing.assert_close(ours, torch.from_numpy(theirs), rtol=1e-10, atol=1e-12)


def test_unshrunk_gaussian_is_exactly_equivariant() -> None:
    # S_Y = W S_X Wᵀ exactly, so without shrinkage ΔH per dim is log|det W|/n to rounding,
    # whatever the data and however ill-conditioned W is.
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(16, 16, generator=gen, dtype=torch.float64)
    x = torch.rand(200, 16, generator=gen, dtype=torch.float64)  # not even Gaussian
    delta = gaussian_entropy(x @ w.T, shrinkage=False) - gaussian_entropy(x, shrinkage=False)
    exact = torch.linalg.slogdet(w)[1] / 16
    assert float(delta) == pytest.approx(float(exact), abs=1e-9)


def test_degenerate_data_gives_minus_inf_never_nan() -> None:
    const = torch.ones(50, 4, dtype=torch.float64)
    assert float(gaussian_entropy(const)) == -math.inf
    assert float(gaussian_entropy(const, shrinkage=False)) == -math.inf
    dup = torch.cat([torch.randn(20, 3, dtype=torch.float64)] * 2)
    assert float(knn_entropy(dup, k=1)) == -math.inf
    flat = torch.zeros(50, 4, dtype=torch.float64)
    flat[:, 0] = torch.randn(50, dtype=torch.float64)  # rank 1 in 4 dims: shrinkage keeps it finite
    assert math.isfinite(float(gaussian_entropy(flat)))
    assert float(gaussian_entropy(flat, shrinkage=False)) == -math.inf


def test_batched_gaussian_matches_one_at_a_time() -> None:
    eig = torch.logspace(-1, 1, 5, dtype=torch.float64)
    sets = [gaussian_samples(60, eig, seed) for seed in range(4)]
    sets[2] = torch.ones(60, 5, dtype=torch.float64)  # constant: −inf, the others unaffected
    batched = gaussian_entropy(torch.stack(sets))
    assert batched.shape == (4,)
    for i, z in enumerate(sets):
        assert float(batched[i]) == pytest.approx(float(gaussian_entropy(z)), abs=1e-12)
    assert float(batched[2]) == -math.inf
    mixed = [*sets, gaussian_samples(30, eig[:3], seed=9)]
    for name in ("gaussian", "knn"):
        many = estimate_many(name, mixed, k=2, max_batch_bytes=5000)  # several stacked calls
        assert many == pytest.approx([float(estimate(name, z, k=2)) for z in mixed], abs=1e-12)


# --------------------------------------------------------------------------- projection


def test_projection_dims() -> None:
    assert projection_dims(10, 256) == 10
    assert projection_dims(10_000, 256) == 128
    assert projection_dims(10_000, 4096) == 256
    assert projection_dims(10_000, 4096, max_dims=None) == 2048
    with pytest.raises(EntropyProbeError):
        projection_dims(10, 1)


def test_projection_is_orthonormal_and_seeded() -> None:
    proj = RandomProjection(300, 40, seed=3)
    q = proj(torch.eye(300, dtype=torch.float64))  # the composite matrix, (D, d)
    torch.testing.assert_close(q.T @ q, torch.eye(40, dtype=torch.float64), atol=1e-6, rtol=0)
    again = RandomProjection(300, 40, seed=3)
    assert again.matrix is not None and proj.matrix is not None
    assert torch.equal(again.matrix, proj.matrix)
    other = RandomProjection(301, 40, seed=3)
    assert other.matrix is not None and not torch.equal(other.matrix[:300], proj.matrix)
    assert RandomProjection(40, 40).is_identity


def test_projection_preserves_isotropic_entropy_per_dim() -> None:
    # N(0, 3·I) in D = 256 dims, projected to d = 64: the orthonormal projection keeps the
    # per-dim entropy (tolerance as in the isotropic test above, 0.015). A raw Gaussian matrix
    # with N(0, 1/D) entries would not: ½·log det(GᵀG)/d ≈ ½[(1 − D/d)·log(1 − d/D) − 1] =
    # −0.068 per dim (Marchenko–Pastur at d/D = 1/4).
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(4000, 256, generator=gen, dtype=torch.float64) * math.sqrt(3.0)
    exact = HALF_LOG_2PIE + 0.5 * math.log(3.0)
    h = float(entropy_per_dim(x, "gaussian", max_dims=64))
    assert h == pytest.approx(exact, abs=0.015)
    proj = RandomProjection(256, 64, seed=0)
    assert proj.matrix is not None
    raw = float(gaussian_entropy(x.float() @ (proj.matrix / math.sqrt(256))))
    assert raw - exact < -0.04


def test_same_projection_for_equal_dims_makes_scaling_exact() -> None:
    # input and output of equal D share one projection, so a scaling by c reads exactly log c
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(200, 1000, generator=gen, dtype=torch.float64)
    for name in ("gaussian", "knn"):
        delta = entropy_per_dim(2.5 * x, name) - entropy_per_dim(x, name)
        assert float(delta) == pytest.approx(math.log(2.5), abs=1e-5)


def test_sketched_projection_is_orthonormal_and_seeded() -> None:
    # D = 1000 > sketch_dims = 96: signed group sums (orthonormal rows) then a dense 96 → 20
    # frame. The composite D×d matrix still has orthonormal columns, every coordinate of the
    # input reaches the output, and the same (seed, D, d) gives the same frame.
    proj = RandomProjection(1000, 20, seed=4, sketch_dims=96)
    assert proj.groups is not None and proj.weights is not None
    sizes = torch.bincount(proj.groups.long(), minlength=96)
    assert int(sizes.min()) == 1000 // 96 and int(sizes.max()) == 1000 // 96 + 1
    q = proj(torch.eye(1000, dtype=torch.float64))
    torch.testing.assert_close(q.T @ q, torch.eye(20, dtype=torch.float64), atol=1e-6, rtol=0)
    assert bool((q.abs().sum(1) > 0).all())
    again = RandomProjection(1000, 20, seed=4, sketch_dims=96)
    torch.testing.assert_close(again(torch.eye(1000, dtype=torch.float64)), q, rtol=0, atol=0)
    # more output dims than groups: the sketch keeps 2d groups so the frame stays well conditioned
    wide_d = RandomProjection(500, 150, seed=4, sketch_dims=96)
    assert wide_d.groups is not None and wide_d.matrix is not None
    assert wide_d.matrix.shape == (300, 150)
    q_wide = wide_d(torch.eye(500, dtype=torch.float64))
    torch.testing.assert_close(
        q_wide.T @ q_wide, torch.eye(150, dtype=torch.float64), atol=1e-5, rtol=0
    )
    # small tensors keep the dense frame (and so every value measured on them)
    dense = RandomProjection(90, 20, seed=4, sketch_dims=96)
    assert dense.groups is None
    assert torch.equal(dense.matrix, RandomProjection(90, 20, seed=4).matrix)


def _blocked_sketch_matrix(proj: RandomProjection) -> torch.Tensor:
    """The sketch S (groups × D) of a blocked projection, written out from its definition:
    position j of the block-permuted vector holds coordinate order[j // L]·L + j % L and goes
    to group j mod groups with weight weights[j]."""
    assert proj.block_order is not None and proj.weights is not None and proj.matrix is not None
    groups, block = proj.matrix.shape[0], proj.block
    sketch = torch.zeros(groups, proj.dims, dtype=torch.float64)
    for j in range(proj.dims):
        coordinate = int(proj.block_order[j // block]) * block + j % block
        sketch[j % groups, coordinate] = float(proj.weights[j])
    return sketch


@pytest.mark.parametrize(("dims", "block"), [(64 * 49, 64), (48 * 40, 128), (4096 + 48, 16)])
def test_blocked_sketch_matches_its_matrix_and_is_orthonormal(dims: int, block: int) -> None:
    # the CUDA default, forced on CPU: whole blocks of L = gcd(D, 256) coordinates permuted,
    # group = position mod 64 (with and without a partial last round of groups)
    proj = RandomProjection(dims, 8, seed=5, sketch_dims=64, blocked=True)
    assert proj.block == block and proj.groups is None
    sketch = _blocked_sketch_matrix(proj)
    torch.testing.assert_close(sketch @ sketch.T, torch.eye(64, dtype=torch.float64))
    assert sorted(proj.block_order.tolist()) == list(range(dims // block))
    x = torch.randn(5, dims, generator=torch.Generator().manual_seed(1))
    assert proj.matrix is not None
    want = (x.double() @ sketch.T) @ proj.matrix.double()
    torch.testing.assert_close(proj.raw(x).double(), want, rtol=1e-5, atol=1e-5)
    q = proj(torch.eye(dims))
    torch.testing.assert_close(q.T @ q, torch.eye(8, dtype=torch.float64), atol=1e-6, rtol=0)
    again = RandomProjection(dims, 8, seed=5, sketch_dims=64, blocked=True)
    assert torch.equal(again.raw(x), proj.raw(x))


_INTERPRETED_KERNEL = """
import sys, torch
sys.path.insert(0, {tests!r})
from empirical.test_estimators import _blocked_sketch_matrix
from entropy_probe.empirical import _sketch_kernel
from entropy_probe.empirical.estimators import RandomProjection
for dims, groups in ((64 * 49, 64), (4096 + 48, 64), (256 * 30, 512)):
    proj = RandomProjection(dims, 8, seed=5, sketch_dims=groups, blocked=True)
    x = torch.randn(3, dims, generator=torch.Generator().manual_seed(2))
    assert _sketch_kernel.available(x, groups, proj.block)
    got = proj._blocked_sketch(x)
    want = x.double() @ _blocked_sketch_matrix(proj).T
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
print("ok")
"""


def test_triton_sketch_kernel_matches_the_sketch_matrix() -> None:
    # the CUDA kernel, run by Triton's interpreter on CPU tensors (full rounds, a partial last
    # round, several tiles); on a GPU test_estimators_on_cuda_match_cpu runs it compiled.
    # Triton 3.6's interpreter cannot loop to a runtime bound (int() of a 1-element array);
    # 3.8's can (the compiled kernel runs under both)
    pytest.importorskip("triton", minversion="3.8")
    tests = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _INTERPRETED_KERNEL.format(tests=tests)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_whitening_is_drawn_lazily_and_batched_alike() -> None:
    # drawing a projection computes no eigh (on CUDA each one synchronised the device in the
    # middle of a capture); prepare_whitening computes many after the fact, bit-identical to
    # each on first use (odd d: a stacked batch of eighs would differ, MKL rounds by alignment)
    specs = [(3000, 16, 0), (5000, 16, 1), (800, 24, 2), (3000, 35, 0), (3100, 35, 1), (40, 40, 3)]
    batched = [RandomProjection(dims, d, seed=seed, sketch_dims=512) for dims, d, seed in specs]
    single = [RandomProjection(dims, d, seed=seed, sketch_dims=512) for dims, d, seed in specs]
    assert all(proj._whiten is None for proj in batched)
    prepare_whitening(batched)
    for a, b in zip(batched, single, strict=True):
        assert (a._whiten is None) == (a.matrix is None)
        if a.matrix is not None:
            assert torch.equal(a._whiten, b.whiten)  # b: computed on first use, alone
    proj = batched[0]
    q = proj(torch.eye(3000))
    torch.testing.assert_close(q.T @ q, torch.eye(16, dtype=torch.float64), atol=1e-6, rtol=0)


def test_blocked_sketch_only_where_blocks_are_long_enough() -> None:
    # CPU default: coordinate by coordinate; L = gcd(1000, 256) = 8 < 16 and D < 2·groups
    # (each group would not keep a coordinate) fall back to it when blocked is asked for
    assert RandomProjection(64 * 49, 8, sketch_dims=64).block_order is None
    assert RandomProjection(1000, 8, sketch_dims=64, blocked=True).block_order is None
    assert RandomProjection(96, 8, sketch_dims=64, blocked=True).block_order is None
    assert RandomProjection(128, 8, sketch_dims=64, blocked=True).block_order is not None


@pytest.mark.parametrize(("dims", "blocked"), [(5000, None), (4096, True)])
def test_sketched_projection_keeps_isotropic_entropy_and_exact_scaling(
    dims: int, blocked: bool | None
) -> None:
    # the coordinate-by-coordinate sketch (CPU default), then the blocked one (CUDA default)
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(3000, dims, generator=gen) * math.sqrt(3.0)
    proj = RandomProjection(dims, 64, seed=0, sketch_dims=512, blocked=blocked)
    assert (proj.groups is not None, proj.block) == ((False, 256) if blocked else (True, 0))
    z = proj(x)
    exact = HALF_LOG_2PIE + 0.5 * math.log(3.0)
    assert float(gaussian_entropy(z)) == pytest.approx(exact, abs=0.015)
    delta = gaussian_entropy(proj(2.5 * x)) - gaussian_entropy(z)
    assert float(delta) == pytest.approx(math.log(2.5), abs=1e-5)


def test_sketch_memory_is_linear_in_d_not_d_times_dims() -> None:
    # a 64×112×112 activation (resnet50's stem) projected to d = 128: a dense frame would hold
    # 802816·128 float32 = 392 MiB; the sketch holds 12 bytes per coordinate (int64 group,
    # float32 weight) plus a 16384×128 float32 frame
    proj = RandomProjection(64 * 112 * 112, 128, seed=0)
    assert proj.nbytes == 64 * 112 * 112 * 12 + 16384 * 128 * 4
    assert proj.nbytes < 18 * 2**20


# --------------------------------------------------------------------------- registry


def test_registry() -> None:
    assert estimator_names() == ["gaussian", "knn"]
    assert get_estimator("knn").options == ("k",)
    x = gaussian_samples(500, torch.ones(3, dtype=torch.float64))
    assert float(estimate("knn", x, k=5)) == float(knn_entropy(x, k=5))
    assert float(estimate("gaussian", x, k=5)) == float(gaussian_entropy(x))
    with pytest.raises(UnknownNameError, match="did you mean 'knn'"):
        get_estimator("knnn")
    with pytest.raises(EntropyProbeError, match="k must be a positive integer"):
        knn_entropy(x, k=0)
    with pytest.raises(EntropyProbeError, match=r"need at least 4 samples"):
        knn_entropy(x[:3], k=3)


# --------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_estimators_on_cuda_match_cpu() -> None:
    x = gaussian_samples(700, torch.logspace(-1, 1, 12, dtype=torch.float64), seed=10)
    for name in ("gaussian", "knn"):
        cpu = estimate(name, x)
        gpu = estimate(name, x.cuda())
        assert gpu.device.type == "cuda"
        assert float(gpu) == pytest.approx(float(cpu), abs=1e-9)
    torch.testing.assert_close(
        knn_entropy(x.cuda(), chunk_size=13).cpu(), knn_entropy(x), rtol=0, atol=1e-9
    )
    for sketch_dims in (16384, 512):  # dense frame, then the signed-group sketch
        proj = RandomProjection(5000, 64, device="cuda", sketch_dims=sketch_dims)
        assert (proj.groups is not None) == (sketch_dims == 512)
        q = proj(torch.eye(5000, device="cuda"))
        torch.testing.assert_close(
            q.T @ q, torch.eye(64, dtype=torch.float64, device="cuda"), atol=1e-5, rtol=0
        )
    # on CUDA a D with gcd(D, 256) ≥ 16 gets the blocked sketch by default: same frame as the
    # blocked sketch drawn on CPU would give for the CUDA-drawn permutation
    proj = RandomProjection(4096 + 48, 8, device="cuda", sketch_dims=64)
    assert proj.block == 16 and proj.block_order is not None
    x = torch.randn(5, 4096 + 48, generator=torch.Generator().manual_seed(1))
    cpu_copy = _on_cpu(proj, sketch_dims=64)
    torch.testing.assert_close(proj.raw(x.cuda()).cpu(), cpu_copy.raw(x), rtol=1e-5, atol=1e-5)
    # resnet50's stem activation: the Triton kernel on CUDA against the torch ops on CPU
    wide = RandomProjection(64 * 112 * 112, 128, device="cuda")
    assert wide.block == 256 and _sketch_kernel.available(x.cuda(), 16384, 256)
    x = torch.randn(4, 64 * 112 * 112, generator=torch.Generator().manual_seed(3))
    cpu_copy = _on_cpu(wide, sketch_dims=16384)
    torch.testing.assert_close(wide.raw(x.cuda()).cpu(), cpu_copy.raw(x), rtol=1e-4, atol=1e-3)


def _on_cpu(proj: RandomProjection, sketch_dims: int) -> RandomProjection:
    """A CPU projection with ``proj``'s (CUDA-drawn) blocked sketch, frame and whitening: it
    applies the sketch with torch ops where ``proj`` uses the Triton kernel."""
    copy = RandomProjection(proj.dims, proj.d, sketch_dims=sketch_dims, blocked=True)
    for name in ("block_order", "weights", "matrix", "whiten"):
        setattr(copy, name, getattr(proj, name).cpu())
    return copy
