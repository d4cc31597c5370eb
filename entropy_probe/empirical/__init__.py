"""Entropy measured from real activations (DESIGN.md 2.4).

* :mod:`~entropy_probe.empirical.estimators` — pure torch estimators on ``(N, D)`` samples
  (``gaussian``, ``knn``), the seeded orthonormal projection, the estimator registry;
* :mod:`~entropy_probe.empirical.inputs` — ``--data`` resolution to model-ready inputs;
* :mod:`~entropy_probe.empirical.capture` — streaming capture through torch hooks or
  onnxruntime, and the per-layer ``empirical`` results.

``entropy_probe.profile(..., data=...)`` is the usual entry point.
"""

from __future__ import annotations

from entropy_probe.empirical.estimators import (
    EstimatorSpec,
    RandomProjection,
    entropy_per_dim,
    estimate,
    estimator_names,
    gaussian_entropy,
    get_estimator,
    knn_entropy,
    register_estimator,
)
from entropy_probe.empirical.inputs import InputData, load_inputs

__all__ = [
    "EstimatorSpec",
    "InputData",
    "RandomProjection",
    "entropy_per_dim",
    "estimate",
    "estimator_names",
    "gaussian_entropy",
    "get_estimator",
    "knn_entropy",
    "load_inputs",
    "register_estimator",
]
