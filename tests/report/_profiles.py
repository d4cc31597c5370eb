"""Hand-built profiles for the report tests: every status, −inf values, hostile layer names."""

from __future__ import annotations

import math

from entropy_probe.entropy.profile import LayerEntropy, Profile
from entropy_probe.enums import ConvMethod, Status

EVIL = "<script>alert(1)</script>"
EVIL_END = "</script><script>alert(2)</script>"
EVIL_ATTR = "\"'><img src=x onerror=alert(3)>"
EVIL_REASON = "no rule for <b>bold</b> & <script>alert(4)</script>"


def _emp(h_out: float, delta: float) -> dict[str, object]:
    return {"estimator": "gaussian", "h_out_per_dim": h_out, "delta_h_per_dim": delta}


def hostile_profile(*, empirical: bool = True) -> Profile:
    """Every status, a folded BatchNorm, −inf values, and layer names that are markup."""
    layers = (
        LayerEntropy(
            name="features.0",
            kind="conv2d",
            op_type="Conv2d",
            status=Status.OK,
            reason="eval BatchNorm 'features.1' folded in",
            weight_shape=(8, 3, 3, 3),
            in_shape=(3, 8, 8),
            out_shape=(8, 8, 8),
            positions=64,
            delta_h=-12.5,
            delta_h_per_dim=-0.0651,
            delta_h_spectral=40.25,
            spectral_shape=-0.3,
            delta_h_raw=-30.0,
            folded_batchnorm="features.1",
            depth=0.0,
            empirical=_emp(1.2, -0.05) if empirical else None,
        ),
        LayerEntropy(
            name="features.1",
            kind="batchnorm",
            op_type="BatchNorm2d",
            status=Status.OK,
            reason="folded into 'features.0' (counted there)",
            in_shape=(8, 8, 8),
            out_shape=(8, 8, 8),
            positions=64,
            delta_h=17.5,
            delta_h_per_dim=0.034,
            spectral_shape=-0.01,
            folded_into="features.0",
        ),
        LayerEntropy(
            name=EVIL,
            kind="conv2d",
            op_type="Conv2d",
            status=Status.OK,
            weight_shape=(8, 8, 3, 3),
            in_shape=(8, 8, 8),
            out_shape=(8, 8, 8),
            positions=64,
            delta_h=1234.5,
            delta_h_per_dim=2.4,
            delta_h_spectral=-5.0e5,
            spectral_shape=-1.1,
            depth=1 / 3,
            empirical=_emp(1.5, 0.3) if empirical else None,
        ),
        LayerEntropy(
            name=EVIL_END,
            kind="linear",
            op_type="Linear",
            status=Status.SINGULAR,
            reason="a zero singular value: the layer discards information (ΔH = −inf)",
            weight_shape=(16, 512),
            in_shape=(512,),
            out_shape=(16,),
            positions=1,
            delta_h=-math.inf,
            delta_h_per_dim=-math.inf,
            spectral_shape=-math.inf,
            depth=2 / 3,
            empirical=_emp(-math.inf, -math.inf) if empirical else None,
        ),
        LayerEntropy(
            name=EVIL_ATTR,
            kind="weird",
            op_type="Weird",
            status=Status.SKIPPED,
            reason=EVIL_REASON,
        ),
        LayerEntropy(
            name="act",
            kind="relu",
            op_type="ReLU",
            status=Status.NOT_ANALYTIC,
            reason="activation: no weight-only closed form",
            empirical={**_emp(0.9, -0.2), "samples": 256} if empirical else None,
        ),
        LayerEntropy(
            name="head",
            kind="linear",
            op_type="Linear",
            status=Status.OK,
            weight_shape=(10, 16),
            in_shape=(16,),
            out_shape=(10,),
            positions=1,
            delta_h=-1.5,
            delta_h_per_dim=-0.15,
            spectral_shape=-0.2,
            depth=1.0,
            empirical=_emp(0.5, -0.1) if empirical else None,
        ),
    )
    return Profile(
        source="models/<evil>&.onnx",
        format="onnx",
        input_shape=(3, 8, 8),
        layers=layers,
        method=ConvMethod.BOTH,
        num_params=12345,
        pretrained=False,
        elapsed_s=0.5,
        notes=("a note with <em>markup</em> & an ampersand",),
    )


def unanalysed_profile() -> Profile:
    """Layers, but not one analysed: every plot is empty."""
    return Profile(
        source="nothing-to-analyse",
        format="torch",
        input_shape=None,
        layers=(
            LayerEntropy("a", "relu", "ReLU", Status.NOT_ANALYTIC, reason="activation"),
            LayerEntropy("b", "weird", "Weird", Status.SKIPPED, reason="no rule"),
        ),
    )


class FakeComparison:
    """The shape the report reads from a comparison, nothing more."""

    def __init__(self) -> None:
        self.score = 0.625
        self.reference = "classifier-cnn <v1>"
        self.layers = [
            {"name": "features.0", "deviation": 0.4, "in_band": True},
            {"name": EVIL, "deviation": 2.75, "in_band": False},
            {"name": "head", "deviation": -1.5, "in_band": False},
        ]
