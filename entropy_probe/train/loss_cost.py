"""How often to evaluate the entropy terms: a FLOP model of their cost against a training step.

The terms take Σ log σ of each layer's matrices through a float64 Gram matrix and a Cholesky
(and their backward pass); a training step costs about 3 × 2 × batch × MACs (forward and
backward) in float32. With k = min(m, n) and K = max(m, n) for each of a layer's B matrices:

    terms ≈ 4 · F64 · Σ_layers B · (2·k²·K + k³/3)          (forward + about 3× for backward)
    step  ≈ 6 · batch · Σ_layers positions · weight numel

``F64`` (= 2) is the float64 penalty of CPUs and datacentre GPUs. :func:`auto_every` picks the
smallest ``every`` whose amortised share of the step stays within ``budget``. Checked against
``tests/bench/bench_loss_overhead.py`` (CPU): predicted 43.9 plain steps per evaluation for an
MLP 784-1024-1024-10 at batch 64 (measured 50; 58–150 under load), 11.0 at batch 256 (measured
16), and 0.77 for timm resnet50 at batch 8 (measured 0.66–1.8). ``auto`` then picks every = 879,
220 and 16: the measured costs stay under 10%.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from entropy_probe.entropy.profile import LayerEntropy
from entropy_probe.errors import EntropyProbeError

__all__ = ["AUTO_BUDGET", "MAX_EVERY", "auto_every", "relative_cost", "step_flops", "term_flops"]

AUTO_BUDGET = 0.05  # target share of the step spent on the terms
MAX_EVERY = 4096
F64 = 2.0


def _matrices(layer: LayerEntropy, groups: int) -> tuple[int, int, int] | None:
    """(blocks, m, n) of the layer's paper matrices, from its weight shape."""
    shape = layer.weight_shape
    if not shape:
        return None
    if len(shape) == 2:
        return 1, int(shape[0]), int(shape[1])
    rows, cols = int(shape[0]), int(shape[1])  # (C_out, C_in/g) or transposed (C_in, C_out/g)
    return groups, rows // groups, cols


def term_flops(layers: Iterable[tuple[LayerEntropy, int]]) -> float:
    """float32-equivalent FLOPs of one evaluation (forward + backward) of the terms for
    ``layers`` given as (profile row, groups)."""
    total = 0.0
    for layer, groups in layers:
        mats = _matrices(layer, max(1, groups))
        if mats is None:
            continue
        blocks, m, n = mats
        k, big = min(m, n), max(m, n)
        total += blocks * (2.0 * k * k * big + k**3 / 3.0)
    return 4.0 * F64 * total


def step_flops(layers: Iterable[LayerEntropy], batch_size: int) -> float:
    """FLOPs of one training step (forward + backward) through the analysed layers."""
    macs = 0.0
    for layer in layers:
        if layer.weight_shape and layer.positions:
            macs += layer.positions * math.prod(layer.weight_shape)
    return 6.0 * batch_size * macs


def relative_cost(
    terms: Iterable[tuple[LayerEntropy, int]], steps: Iterable[LayerEntropy], batch_size: int
) -> float:
    """One evaluation of the terms, in plain training steps."""
    step = step_flops(steps, batch_size)
    if step <= 0:
        raise EntropyProbeError("cannot estimate a training step's cost: no layer has positions")
    return term_flops(terms) / step


def auto_every(cost_in_steps: float, budget: float = AUTO_BUDGET) -> int:
    """The smallest ``every`` with cost/every ≤ budget, within [1, MAX_EVERY]."""
    if not budget > 0:
        raise EntropyProbeError(f"budget must be > 0, got {budget}")
    return max(1, min(MAX_EVERY, math.ceil(cost_in_steps / budget)))
