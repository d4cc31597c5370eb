"""The random-init baseline of the spectral shape: exact expectation for iid Gaussian weights."""

from __future__ import annotations

import math

import pytest
import torch

from entropy_probe.entropy.functional import (
    gaussian_spectral_shape,
    spectral_shape,
    sum_log_singular_values,
)
from entropy_probe.errors import ShapeError


def test_one_scalar_has_shape_zero() -> None:
    assert gaussian_spectral_shape(1, 1) == pytest.approx(0.0, abs=1e-15)


def test_many_scalar_blocks_hand_value() -> None:
    # blocks → ∞ of 1×1: E log|z| − ½ log E z² = ½(ψ(½) + log 2) = −(γ + log 2)/2
    limit = -(0.5772156649015329 + math.log(2)) / 2
    assert gaussian_spectral_shape(1, 1, blocks=10**7) == pytest.approx(limit, abs=1e-6)


def test_symmetric_in_m_and_n() -> None:
    assert gaussian_spectral_shape(7, 19, 3) == pytest.approx(gaussian_spectral_shape(19, 7, 3))


def test_square_tends_to_minus_half_and_thin_to_zero() -> None:
    # Marchenko–Pastur, square: E log σ² − log E σ² → −1, so s → −½
    assert gaussian_spectral_shape(2000, 2000) == pytest.approx(-0.5, abs=2e-3)
    assert abs(gaussian_spectral_shape(4, 20000)) < 1e-3


@pytest.mark.parametrize(("blocks", "m", "n"), [(1, 3, 3), (1, 5, 40), (6, 4, 4), (32, 1, 1)])
def test_matches_monte_carlo(blocks: int, m: int, n: int) -> None:
    gen = torch.Generator().manual_seed(0)
    draws = torch.randn(4000, blocks, m, n, generator=gen, dtype=torch.float64)
    # spectral_shape of each draw, batched: mean log σ over its blocks minus log rms σ
    k = min(m, n)
    logs = sum_log_singular_values(draws.reshape(-1, m, n)).reshape(4000, blocks).sum(1)
    mean_sq = (draws**2).sum(dim=(1, 2, 3)) / (blocks * k)
    samples = logs / (blocks * k) - 0.5 * torch.log(mean_sq)
    assert float(samples[0]) == pytest.approx(float(spectral_shape(draws[0])), abs=1e-12)
    mean, se = float(samples.mean()), float(samples.std() / math.sqrt(len(samples)))
    assert abs(mean - gaussian_spectral_shape(m, n, blocks)) < 4 * se + 1e-12


def test_scale_free_in_the_weights() -> None:
    # the baseline is an expectation over shapes only; the shape itself ignores scale
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(64, 64, generator=gen, dtype=torch.float64)
    assert float(spectral_shape(w[None] * 37.0)) == pytest.approx(float(spectral_shape(w[None])))


def test_rejects_empty() -> None:
    with pytest.raises(ShapeError, match="positive"):
        gaussian_spectral_shape(0, 3)
