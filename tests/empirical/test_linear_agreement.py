"""DESIGN.md 2.4: on Gaussian data the measured ΔH of a linear layer agrees with the formula.

Both layers keep the dimension (D_in = D_out = n) and n ≤ N/2, so no projection is made and
the empirical ``delta_h_per_dim`` estimates ΔH/n itself. Data and layers go through the
public API (``profile_loaded(data=...)``), hooks and all.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from entropy_probe import LoadedModel, profile_loaded
from entropy_probe.empirical.estimators import wishart_bias
from entropy_probe.entropy import functional as Fn

N = 2048
NOISE = 0.01  # ≈ 3 sd of the offset's sampling noise at N = 2048 (measured sd ≈ 0.002)


def shrinkage_offset(eigenvalues: torch.Tensor, samples: int) -> float:
    """Predicted upward bias per dim of the Ledoit–Wolf log det for a Gaussian with these
    population covariance eigenvalues: ½·mean_i log(1 − ρ + ρμ/λ_i), with ρ the LW oracle
    intensity E‖S − Σ‖²/(E‖S − Σ‖² + ‖Σ − μI‖²) ≈ a/(a + b), a = (tr Σ² + tr²Σ)/N."""
    lam = eigenvalues.double()
    mu = lam.mean()
    a = ((lam**2).sum() + lam.sum() ** 2) / samples
    b = ((lam - mu) ** 2).sum()
    rho = min(1.0, float(a / (a + b)))
    return 0.5 * float(torch.log(1 - rho + rho * mu / lam).mean())


def check_agreement(error: float, output_eigenvalues: torch.Tensor) -> None:
    """The sample covariance is exactly equivariant (S_Y = W·S_X·Wᵀ), so its finite-N bias
    (wishart_bias) cancels between input and output. What is left is Ledoit–Wolf shrinkage:
    + the output's offset (predicted from the layer's exact spectrum), − the input's offset
    (isotropic input, shrunk to μI: between 0 and −wishart_bias(N, n)), ± sampling noise."""
    n = output_eigenvalues.numel()
    predicted = shrinkage_offset(output_eigenvalues, N)
    assert predicted < 0.05
    assert predicted + wishart_bias(N, n) - NOISE <= error <= predicted + NOISE


def well_conditioned(n: int, gen: torch.Generator) -> torch.Tensor:
    """Q₁·diag(s)·Q₂ with singular values s log-uniform in [0.5, 2] (condition number ≤ 4)."""
    q1, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    s = torch.empty(n, dtype=torch.float64).uniform_(math.log(0.5), math.log(2.0), generator=gen)
    w: torch.Tensor = q1 @ torch.diag(s.exp()) @ q2
    return w


def measured(model: nn.Module, x: torch.Tensor, estimator: str = "gaussian") -> dict[str, float]:
    loaded = LoadedModel(
        source="test", format="torch", module=model, input_shape=tuple(x.shape[1:])
    )
    result = profile_loaded(
        loaded, data=x, samples=len(x), batch_size=512, estimator=estimator, progress=False
    )
    layer = result.analysed[0]
    assert layer.empirical is not None
    assert layer.empirical["projected"] is False
    return {"empirical": layer.empirical["delta_h_per_dim"], "analytic": layer.delta_h_per_dim}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dense_layer_gaussian_estimator(seed: int) -> None:
    # n = 32, N = 2048 (tolerance: check_agreement). For this output the LW intensity is
    # ρ ≈ 0.03 (order d/N) and the predicted offset ≈ +0.012 per dim; the input's offset is
    # ≤ −wishart_bias(2048, 32) = 0.004. Measured errors +0.006…+0.010 over 6 seeds.
    gen = torch.Generator().manual_seed(seed)
    n = 32
    layer = nn.Linear(n, n)
    with torch.no_grad():
        layer.weight.copy_(well_conditioned(n, gen))
    x = torch.randn(N, n, generator=gen)
    got = measured(nn.Sequential(layer), x)
    exact = float(torch.linalg.slogdet(layer.weight.detach().double())[1]) / n
    assert got["analytic"] == pytest.approx(exact, abs=1e-6)
    check_agreement(got["empirical"] - exact, torch.linalg.svdvals(layer.weight.detach()) ** 2)


def test_dense_layer_knn_estimator() -> None:
    # n = 3, N = 2048: Kozachenko–Leonenko is equivariant only under similarity maps, but at
    # d = 3 with κ ≤ 4 its bias is nearly the same for input and output (measured within
    # ±0.004 at N = 4000); the estimate's sd at this N is ≈ 0.015 per dim and the input and
    # output errors are strongly correlated (same samples). Tolerance 0.04.
    gen = torch.Generator().manual_seed(3)
    layer = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        layer.weight.copy_(well_conditioned(3, gen))
    x = torch.randn(N, 3, generator=gen)
    got = measured(nn.Sequential(layer), x, estimator="knn")
    assert got["empirical"] == pytest.approx(got["analytic"], abs=0.04)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_circular_conv_gaussian_estimator(seed: int) -> None:
    # Conv2d(2→2, 3×3, padding 1, circular, stride 1) on 2×6×6: an invertible block-circulant
    # map of D = 72 dims whose exact ΔH is conv_spectral_log_volume (DESIGN.md 2.2), and whose
    # singular values are those of the frequency matrices K̂(ω). Kernel = identity centre tap
    # + 0.1·noise (condition number 3–11 over seeds 0–5): predicted offsets +0.014…+0.046,
    # the input's ≤ −wishart_bias(2048, 72) = 0.009; measured errors +0.009…+0.039.
    gen = torch.Generator().manual_seed(seed)
    c, h, w = 2, 6, 6
    conv = nn.Conv2d(c, c, 3, padding=1, padding_mode="circular")
    kernel = torch.zeros(c, c, 3, 3)
    kernel[:, :, 1, 1] = torch.eye(c)
    kernel += 0.1 * torch.randn(c, c, 3, 3, generator=gen)
    with torch.no_grad():
        conv.weight.copy_(kernel)
    x = torch.randn(N, c, h, w, generator=gen)
    got = measured(nn.Sequential(conv), x)
    exact = float(Fn.conv_spectral_log_volume(kernel, (h, w))) / (c * h * w)
    mats, mult = Fn.conv_spectral_matrices(kernel, (h, w))
    per_freq = torch.linalg.svdvals(mats).reshape(mats.shape[0], -1) ** 2
    eigenvalues = torch.repeat_interleave(per_freq, mult.long(), dim=0).reshape(-1)
    assert eigenvalues.numel() == c * h * w
    check_agreement(got["empirical"] - exact, eigenvalues)
