"""Differential entropy estimated from samples: pure torch functions on ``(N, D)`` tensors.

Everything here runs on the samples' device (CPU or CUDA) and accumulates in float64. Every
estimator returns the entropy **per dimension**, in nats, as a 0-dim float64 tensor.

The projection (what "per dimension" means)
-------------------------------------------
Activations have far more dimensions D than we have samples N, so every estimate is taken on
a d-dimensional marginal, d = min(D, N // 2, max_dims): Z = X·P with P a fixed, seeded D×d
matrix whose columns are **orthonormal** (a Gaussian matrix made orthonormal by its Gram
matrix: Q = G·(GᵀG)^(-1/2)). When D ≤ d no projection is made at all (P = I): the estimate is
then of H(X)/D itself. When D > 16384 (``SKETCH_DIMS``) the frame is Sᵀ·Q with S a seeded
signed-group sum onto 16384 coordinates (orthonormal rows; see ``RandomProjection``): still
exactly orthonormal, but not Haar-distributed over all D-dimensional frames; everything below
that depends only on orthonormality holds for it unchanged.

A raw Gaussian matrix is *not* volume preserving: with entries N(0, 1/D) its Gram matrix has a
Marchenko–Pastur spectrum and ½·log det(GᵀG)/d ≈ ½·[(1 − D/d)·log(1 − d/D) − 1] per dimension
(−0.15 nats at d = D/2), a bias that would differ between layers of different width. The
orthonormal P maps an isotropic distribution to an isotropic one with the same per-dimension
entropy, so h = H(Z)/d is comparable across layers of different D.

For a distribution that is not isotropic, H(XP)/d is the per-dimension entropy of a random
d-dimensional marginal. For a Gaussian with covariance Σ and Haar-random P, the Jensen operator
inequality for the operator-concave log (Davis–Choi, since PᵀP = I) gives
E_P[½ log det(PᵀΣP)]/d ≥ ½ log det(Σ)/D: the marginal looks *more* isotropic, so d < D
overestimates H(X)/D, and as d/D → 0 it tends to ½·log(2πe·tr Σ/D). The layer's
``delta_h_per_dim`` = h_out − h_in is therefore exactly ΔH/D only when the layer keeps D and
d = D; otherwise it compares per-dimension entropies of marginals. A layer's input and output
with equal D are projected with the *same* P (the seed depends on (seed, D, d) only), so an
identity layer measures exactly 0 and a scaling by c exactly log|c|.

When D_out > D_in (an expanding layer: a conv adding channels, a dense m×n with m > n) the
output lies on a ≤ D_in-dimensional subset of R^D_out, so its entropy there is −∞; the
analytic formula measures it on the layer's range instead (DESIGN.md 2.1). A marginal of
d ≤ D_in dims is generically full-rank and finite, and that is what is reported. Only when
d > D_in (no projection on small layers) does the degeneracy show, as a very low value that
the shrinkage keeps finite. Likewise ReLU outputs have atoms at 0, so H = −∞ in R^D for them
too; their dense random marginals are continuous and have a finite entropy.

Estimator bias (documented, not corrected)
------------------------------------------
``gaussian`` — ½·log det(2πe·Σ̂)/d with Σ̂ the Ledoit–Wolf shrinkage of the sample covariance
(sklearn's ``ledoit_wolf`` formula). Three biases:

1. Finite N: the plug-in log det of the sample covariance S is biased low by exactly
   ``wishart_bias(N, d)`` = ½·mean_{i=1..d}[ψ((N−i)/2) + log(2/N)] per dimension for Gaussian
   data (−0.158 at N=256, d=128; −0.0043 at N=2048, d=32; ≈ −d/(4N) when d ≪ N). It does not
   depend on Σ, and S itself is exactly equivariant (S_Y = A·S_X·Aᵀ for Y = AX), so for a
   square linear layer with equal d the bias cancels in delta_h_per_dim.
2. Shrinkage pulls eigenvalues toward their mean, which raises log det by
   ½·mean_i log(1 − ρ + ρ·μ/λ_i) ≥ 0 per dimension (ρ the LW intensity, of order d/N for
   a spread spectrum, ≈ 1 for isotropic data, where the offset is instead ≈ −wishart_bias).
   No shrinkage is equivariant under general linear maps, so this is the part that does not
   cancel in delta_h_per_dim of a square linear layer. It grows with the spread of the
   output's spectrum, dominated by its smallest eigenvalues: at N=2048, d=32, a dense W with
   singular values in [0.5, 2] reads +0.005…+0.010 nats/dim high, a random Gaussian W
   (condition number 50–1000) +0.09…+0.20. ``gaussian_entropy(z, shrinkage=False)`` is the
   unshrunk estimate: exact for such layers (to rounding), but −inf on degenerate data.
3. The Gaussian with a given covariance has the largest entropy: for non-Gaussian data the
   estimate is an upper bound on H (in the large-N limit).

``knn`` — Kozachenko–Leonenko: H = ψ(N) − ψ(k) + log V_d + (d/N)·Σ_i log ε_i, with ε_i the
Euclidean distance from sample i to its k-th nearest neighbour and V_d the volume of the unit
d-ball. Consistent for fixed d as N → ∞ and exactly equivariant under similarity maps (cQ), but
not under general linear maps, and its bias grows quickly with d/log N. Measured on standard
Gaussians (k=3, per dimension, mean of 5 seeds): −0.007 at N=4000 with d=2, 4 or 8; +0.09 at
N=2048, d=32; +0.22 at N=256, d=128 (``gaussian`` on the same data: within ±0.013). Use it for
shape comparisons across layers at equal N and d, not as an absolute value in high d. Exact
duplicate samples give ε = 0, an atom: the estimate is −inf.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from entropy_probe.empirical import _sketch_kernel
from entropy_probe.errors import DuplicateNameError, EntropyProbeError, unknown_name

__all__ = [
    "DEFAULT_MAX_DIMS",
    "SKETCH_DIMS",
    "EstimatorSpec",
    "RandomProjection",
    "entropy_per_dim",
    "estimate",
    "estimate_many",
    "estimator_names",
    "gaussian_entropy",
    "get_estimator",
    "knn_entropy",
    "ledoit_wolf",
    "prepare_whitening",
    "projection_dims",
    "register_estimator",
    "wishart_bias",
]

DEFAULT_MAX_DIMS = 256
# wider tensors are summed into this many signed groups before the dense projection
SKETCH_DIMS = 16384
# blocked sketches (RandomProjection) permute blocks of gcd(D, 256) coordinates, at least 16
_MAX_BLOCK, _MIN_BLOCK = 256, 16
_HALF_LOG_2PIE = 0.5 * math.log(2.0 * math.pi * math.e)
# rows of the cdist block in knn_entropy: chunk·N float64 values stay under this many bytes
_KNN_BLOCK_BYTES = 64 * 2**20


def projection_dims(dims: int, samples: int, max_dims: int | None = DEFAULT_MAX_DIMS) -> int:
    """d = min(D, N // 2, max_dims): the projected dimension for D features and N samples."""
    if dims < 1 or samples < 2:
        raise EntropyProbeError(f"need D ≥ 1 features and N ≥ 2 samples, got D={dims}, N={samples}")
    d = min(dims, samples // 2)
    if max_dims is not None:
        d = min(d, max(int(max_dims), 1))
    return max(d, 1)


def _projection_seed(seed: int, dims: int, d: int) -> int:
    # A function of (seed, D, d) only: a layer's input and output of equal D share one P.
    return (int(seed) * 1_000_003 + dims * 7_919 + d) % (2**63 - 1)


class RandomProjection:
    """A fixed D → d projection with orthonormal columns (identity when d = D).

    ``raw(x)`` multiplies by the seeded Gaussian matrix G (float32, so a batch costs one GEMM);
    ``finish(z)`` applies (GᵀG)^(-1/2) in float64, which makes the composite Q = G·(GᵀG)^(-1/2)
    exactly orthonormal. Applying ``finish`` once to the stacked raw projections of all batches
    is the same as projecting each batch with Q. G is drawn with a ``torch.Generator`` on
    ``device``: the same (seed, D, d) gives the same P on every run on that device type (CPU
    and CUDA draw different, equally valid, random subspaces).

    Wide tensors (D > ``sketch_dims``, e.g. every early activation of a 224-pixel CNN) are
    first summed into ``sketch_dims`` signed groups: coordinate i goes to group π(i) mod
    ``sketch_dims`` for a seeded permutation π, with a seeded sign and weight
    1/sqrt(group size). That map S has orthonormal rows (disjoint supports of unit norm), so
    Sᵀ·Q (Q now sketch_dims × d) still has orthonormal columns, but it is stored as D indices
    and weights instead of a D×d matrix (all of resnet50's at 224×224, d = 128: 77 MiB instead
    of 847 MiB) and applied in O(B·D).

    ``blocked`` (default: on CUDA) draws S with π permuting blocks of ``L`` = gcd(D, 256)
    consecutive coordinates instead of single ones: position j of the block-permuted vector
    goes to group j mod ``sketch_dims``, each coordinate keeping its own sign. S has the same
    properties, but it is applied by a block gather and a strided sum instead of CUDA's atomic
    adds into random groups (which took 46% of resnet50's capture on an H100: 0.51 ms for a
    32×802816 batch). Blocked needs L ≥ 16 and D ≥ 2·``sketch_dims``; otherwise (and on CPU by
    default) coordinates are permuted one by one.
    """

    def __init__(
        self,
        dims: int,
        d: int,
        *,
        seed: int = 0,
        device: torch.device | str = "cpu",
        sketch_dims: int = SKETCH_DIMS,
        blocked: bool | None = None,
    ) -> None:
        if not 1 <= d <= dims:
            raise EntropyProbeError(f"projection to d={d} dims needs 1 ≤ d ≤ D={dims}")
        self.dims = dims
        self.d = d
        self.device = torch.device(device)
        self.matrix: Tensor | None = None
        self._whiten: Tensor | None = None
        self.groups: Tensor | None = None  # sketch: the group of each input coordinate
        self.weights: Tensor | None = None  # sketch: its signed weight
        self.block_order: Tensor | None = None  # blocked sketch: the permuted block indices
        self.block = 0  # blocked sketch: coordinates per block (L)
        if d == dims:
            return
        gen = torch.Generator(device=self.device).manual_seed(_projection_seed(seed, dims, d))
        inner = dims
        if dims > max(sketch_dims, 2 * d):
            # at least 2d groups: a square Gaussian frame would be too ill-conditioned for the
            # float32 product that ``raw`` computes before the float64 whitening
            inner = max(sketch_dims, 2 * d)
            block = math.gcd(dims, _MAX_BLOCK)
            if blocked is None:
                blocked = self.device.type == "cuda"
            if blocked and block >= _MIN_BLOCK and dims >= 2 * inner:
                self._draw_blocked_sketch(dims, inner, block, gen)
            else:
                perm = torch.randperm(dims, generator=gen, device=self.device)
                self.groups = perm % inner  # int64: index_add_ with int32 is 6× slower on CPU
                self.weights = _signed_weights(self.groups, inner, gen)
        self.matrix = torch.randn(
            (inner, d), generator=gen, device=self.device, dtype=torch.float32
        )

    @property
    def whiten(self) -> Tensor | None:
        """(GᵀG)^(-1/2), float64 on the projection's device (None for the identity). Only
        ``finish`` needs it: it is computed on first use, or for many projections at once by
        :func:`prepare_whitening` (a capture does that after its last batch)."""
        if self._whiten is None and self.matrix is not None:
            prepare_whitening([self])
        return self._whiten

    @whiten.setter
    def whiten(self, value: Tensor | None) -> None:
        self._whiten = value

    def _draw_blocked_sketch(self, dims: int, inner: int, block: int, gen: torch.Generator) -> None:
        """Position j of the block-permuted vector goes to group j mod ``inner``; weights are
        stored in that order (see the class docstring)."""
        self.block = block
        self.block_order = torch.randperm(dims // block, generator=gen, device=self.device)
        self.weights = _signed_weights(torch.arange(dims, device=self.device) % inner, inner, gen)

    @property
    def is_identity(self) -> bool:
        return self.matrix is None

    @property
    def nbytes(self) -> int:
        """Bytes held by the projection (matrix and sketch), excluding the d×d whitening."""
        held = (self.matrix, self.groups, self.weights, self.block_order)
        return sum(t.numel() * t.element_size() for t in held if t is not None)

    def raw(self, x: Tensor, out: Tensor | None = None) -> Tensor:
        """(B, D) → (B, d) float32 before the final whitening (x itself when d = D), written
        into ``out`` (B, d) float32 when given."""
        if x.dim() != 2 or x.shape[1] != self.dims:
            raise EntropyProbeError(f"expected (B, {self.dims}) features, got {tuple(x.shape)}")
        if self.matrix is None:
            return x if out is None else out.copy_(x)
        if x.dtype != torch.float32:
            x = x.to(torch.float32)
        if self.block_order is not None and self.weights is not None:
            x = self._blocked_sketch(x)
        elif self.groups is not None and self.weights is not None:
            sketch = x.new_zeros((x.shape[0], self.matrix.shape[0]))
            x = sketch.index_add_(1, self.groups, x * self.weights)
        return torch.matmul(x, self.matrix, out=out)

    def _blocked_sketch(self, x: Tensor) -> Tensor:
        assert self.block_order is not None and self.weights is not None and self.matrix is not None
        batch, dims, inner = x.shape[0], self.dims, self.matrix.shape[0]
        if _sketch_kernel.available(x, inner, self.block):  # CUDA: one pass instead of three
            return _sketch_kernel.blocked_sketch(
                x, self.block_order, self.weights, inner, self.block
            )
        blocks = x.contiguous().view(batch, dims // self.block, self.block)
        y = blocks.index_select(1, self.block_order).view(batch, dims).mul_(self.weights)
        full, tail = divmod(dims, inner)
        sketch = y.as_strided((batch, full, inner), (dims, inner, 1)).sum(1)
        if tail:
            sketch[:, :tail] += y[:, full * inner :]
        return sketch

    def finish(self, z: Tensor) -> Tensor:
        """Stacked ``raw`` outputs (N, d) → the orthonormal projection, float64."""
        z = z.to(torch.float64)
        return z if self.whiten is None else z @ self.whiten.to(z.device)

    def __call__(self, x: Tensor) -> Tensor:
        return self.finish(self.raw(x))


def _signed_weights(groups: Tensor, inner: int, gen: torch.Generator) -> Tensor:
    """A seeded sign per input position over sqrt(its group's size): unit-norm sketch rows.
    ``groups`` (D,) holds each position's group in [0, inner); D ≥ inner."""
    dims = groups.shape[0]
    signs = torch.randint(0, 2, (dims,), generator=gen, device=groups.device) * 2 - 1
    sizes = dims // inner + (groups < dims % inner).to(torch.float32)
    return signs / sizes.sqrt()


def prepare_whitening(projections: Iterable[RandomProjection]) -> None:
    """Compute the whitening of every projection that lacks it, each by its own float64 eigh
    on the CPU. A capture calls this after its last batch: on CUDA, an eigh per projection as
    it was drawn synchronised the device in the middle of the first batch (19 times for
    resnet50), and cuSOLVER took 1.9 ms per 128×128 matrix. One eigh per matrix, not a batched
    one: MKL's results depend on the matrix's alignment in memory, and a stacked batch would
    change them in the last bits."""
    tiny = torch.finfo(torch.float64).tiny
    for proj in projections:
        if proj.matrix is None or proj._whiten is not None:
            continue
        gram = (proj.matrix.T @ proj.matrix).to(torch.float64).cpu()
        evals, evecs = torch.linalg.eigh(gram)
        whiten = (evecs * evals.clamp_min(tiny).rsqrt()) @ evecs.T
        proj._whiten = whiten.to(proj.device)


# --------------------------------------------------------------------------------------------
# estimators


def _check_samples(z: Tensor, minimum: int = 2, *, batched: bool = False) -> Tensor:
    if z.dim() != 2 and not (batched and z.dim() > 2):
        shape = "(..., N, d)" if batched else "(N, d)"
        raise EntropyProbeError(f"expected samples shaped {shape}, got {tuple(z.shape)}")
    if z.shape[-2] < minimum or z.shape[-1] < 1:
        raise EntropyProbeError(
            f"need at least {minimum} samples of at least 1 dim, got {tuple(z.shape)}"
        )
    return z.to(torch.float64)


def ledoit_wolf(z: Tensor) -> tuple[Tensor, Tensor]:
    """Ledoit–Wolf shrunk covariance of samples ``z`` (N, d) and the shrinkage intensity ρ.

    Σ̂ = (1 − ρ)·S + ρ·(tr S / d)·I with S the maximum-likelihood covariance; ρ is the
    Ledoit–Wolf (2004) estimate, computed as ``sklearn.covariance.ledoit_wolf`` does. A batch
    ``(..., N, d)`` gives ``(..., d, d)`` and ``(...)``.
    """
    x = _check_samples(z, batched=True)
    n, d = x.shape[-2], x.shape[-1]
    x = x - x.mean(dim=-2, keepdim=True)
    s = (x.mT @ x) / n
    mu = torch.diagonal(s, dim1=-2, dim2=-1).sum(-1) / d
    sq_norms = (x * x).sum(dim=-1)
    beta_ = (sq_norms * sq_norms).sum(-1)  # Σ_n ‖x_n‖⁴ = Σ (X²ᵀX²)
    delta_ = (s * s).sum(dim=(-2, -1))  # ‖S‖²_F
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - d * mu * mu) / d  # ‖S − μI‖²_F / d
    beta = torch.minimum(beta, delta)
    rho = torch.where(beta > 0, beta / torch.where(delta > 0, delta, 1.0), 0.0)
    eye = torch.eye(d, dtype=s.dtype, device=s.device)
    shrunk = (1.0 - rho)[..., None, None] * s + (rho * mu)[..., None, None] * eye
    return shrunk, rho


def _logdet_psd(cov: Tensor) -> Tensor:
    """log det of symmetric PSD matrices (..., d, d); −inf where singular."""
    chol, info = torch.linalg.cholesky_ex(cov)
    out = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    failed = info != 0
    if bool(failed.any()):
        evals = torch.linalg.eigvalsh(cov[failed])
        fallback = torch.where(
            (evals <= 0).any(-1), -math.inf, torch.log(evals.clamp_min(1e-300)).sum(-1)
        )
        out = out.masked_scatter(failed, fallback)
    return out


def gaussian_entropy(z: Tensor, *, shrinkage: bool = True) -> Tensor:
    """½·log det(2πe·Σ̂)/d of samples ``z`` (N, d): the entropy per dimension of the Gaussian
    with their (Ledoit–Wolf shrunk) covariance. Constant data gives −inf. A batch
    ``(..., N, d)`` of equal-size sample sets gives ``(...)`` in one batched call. See the
    module docstring for its bias."""
    x = _check_samples(z, batched=True)
    d = x.shape[-1]
    if shrinkage:
        cov, _ = ledoit_wolf(x)
    else:
        xc = x - x.mean(dim=-2, keepdim=True)
        cov = (xc.mT @ xc) / x.shape[-2]
    return _HALF_LOG_2PIE + 0.5 * _logdet_psd(cov) / d


def wishart_bias(samples: int, d: int) -> float:
    """Expected error per dimension of ½·log det of the (unshrunk, maximum-likelihood) sample
    covariance of N Gaussian samples in d dims: ½·mean_{i=1..d}[ψ((N−i)/2) + log(2/N)] < 0."""
    if samples <= d:
        return -math.inf
    i = torch.arange(1, d + 1, dtype=torch.float64)
    return 0.5 * float((torch.special.digamma((samples - i) / 2) + math.log(2.0 / samples)).mean())


def knn_entropy(z: Tensor, *, k: int = 3, chunk_size: int | None = None) -> Tensor:
    """Kozachenko–Leonenko estimate of the entropy per dimension of samples ``z`` (N, d).

    Distances come from ``torch.cdist`` in blocks of ``chunk_size`` rows (default: blocks of
    at most 64 MiB), so memory is O(chunk_size·N), never O(N²). The result does not depend on
    ``chunk_size``.
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise EntropyProbeError(f"k must be a positive integer, got {k!r}")
    x = _check_samples(z, minimum=k + 1)
    n, d = x.shape
    x = x - x.mean(dim=0)  # fewer cancellation errors in cdist's matrix-product path
    if chunk_size is None:
        chunk_size = max(1, _KNN_BLOCK_BYTES // (8 * n))
    if chunk_size < 1:
        raise EntropyProbeError(f"chunk_size must be ≥ 1, got {chunk_size}")
    kth = torch.empty(n, dtype=torch.float64, device=x.device)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        dist = torch.cdist(x[start:stop], x)
        rows = torch.arange(stop - start, device=x.device)
        dist[rows, rows + start] = math.inf  # a sample is not its own neighbour
        kth[start:stop] = dist.topk(k, dim=1, largest=False).values[:, -1]
    if bool((kth <= 0).any()):
        return torch.full((), -math.inf, dtype=torch.float64, device=x.device)
    log_unit_ball = 0.5 * d * math.log(math.pi) - math.lgamma(0.5 * d + 1.0)
    psi_n, psi_k = torch.special.digamma(torch.tensor([n, k], dtype=torch.float64)).tolist()
    h: Tensor = psi_n - psi_k + log_unit_ball + d * torch.log(kth).mean()
    return h / d


# --------------------------------------------------------------------------------------------
# registry


@dataclass(frozen=True)
class EstimatorSpec:
    """A named estimator: ``fn(samples (N, d), **options) -> entropy per dim`` (0-dim tensor).

    ``options`` names the keyword options it takes from the caller (``k`` for knn);
    ``batched`` says that ``fn`` also takes ``(..., N, d)`` and returns ``(...)``."""

    name: str
    fn: Callable[..., Tensor]
    description: str
    options: tuple[str, ...] = ()
    batched: bool = False


def _gaussian(z: Tensor) -> Tensor:
    return gaussian_entropy(z)


def _knn(z: Tensor, *, k: int = 3) -> Tensor:
    return knn_entropy(z, k=k)


_REGISTRY: dict[str, EstimatorSpec] = {
    "gaussian": EstimatorSpec(
        "gaussian",
        _gaussian,
        "½ log det(2πe Σ̂)/d, Ledoit–Wolf shrinkage covariance",
        batched=True,
    ),
    "knn": EstimatorSpec(
        "knn", _knn, "Kozachenko–Leonenko k-nearest-neighbour estimate", options=("k",)
    ),
}


def estimator_names() -> list[str]:
    """Names accepted by :func:`get_estimator`, sorted."""
    return sorted(_REGISTRY)


def get_estimator(name: str) -> EstimatorSpec:
    """The estimator registered under ``name`` (UnknownNameError with a suggestion if none)."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise unknown_name("estimator", name, estimator_names()) from None


def register_estimator(spec: EstimatorSpec) -> None:
    """Add an estimator (plugins); a name can be registered once."""
    if spec.name in _REGISTRY:
        raise DuplicateNameError(f"an estimator named {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec


def estimate(name: str, z: Tensor, *, k: int = 3) -> Tensor:
    """Entropy per dimension of already projected samples ``z`` with estimator ``name``."""
    spec = get_estimator(name)
    options = {"k": k} if "k" in spec.options else {}
    return spec.fn(z, **options)


def estimate_many(
    name: str, samples: Sequence[Tensor], *, k: int = 3, max_batch_bytes: int = 256 * 2**20
) -> list[float]:
    """Entropy per dimension of each (N, d) tensor in ``samples``, as Python floats.

    A batched estimator (``gaussian``) takes all tensors of one shape and device in a few
    stacked calls (at most ``max_batch_bytes`` of float64 at once) with one device sync per
    group, instead of one small call and sync per tensor."""
    spec = get_estimator(name)
    options = {"k": k} if "k" in spec.options else {}
    out: list[float] = [math.nan] * len(samples)
    if not spec.batched:
        for i, z in enumerate(samples):
            out[i] = float(spec.fn(z, **options))
        return out
    groups: dict[tuple[tuple[int, ...], torch.device], list[int]] = {}
    for i, z in enumerate(samples):
        groups.setdefault((tuple(z.shape), z.device), []).append(i)
    for (shape, _), indices in groups.items():
        step = max(1, max_batch_bytes // (8 * max(math.prod(shape), 1)))
        for start in range(0, len(indices), step):
            part = indices[start : start + step]
            stacked = torch.stack([samples[i].to(torch.float64) for i in part])
            for i, value in zip(part, spec.fn(stacked, **options).tolist(), strict=True):
                out[i] = float(value)
    return out


def entropy_per_dim(
    x: Tensor,
    estimator: str = "gaussian",
    *,
    k: int = 3,
    max_dims: int | None = DEFAULT_MAX_DIMS,
    seed: int = 0,
) -> Tensor:
    """Entropy per dimension (nats) of samples ``x`` (N, *feature shape): flattened to (N, D),
    projected to d = min(D, N // 2, max_dims) orthonormal dims (see the module docstring),
    then estimated with ``estimator``."""
    flat = x.reshape(x.shape[0], -1) if x.dim() != 2 else x
    n, dims = flat.shape
    proj = RandomProjection(dims, projection_dims(dims, n, max_dims), seed=seed, device=x.device)
    return estimate(estimator, proj(flat), k=k)
