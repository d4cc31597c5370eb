"""Walk a bare state dict: no architecture, so kinds come from weight ranks and positions are
unknown. Only per-dimension values can be computed; each record says so."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from entropy_probe.enums import LayerKind, Status
from entropy_probe.walk.records import BatchNormParams, LayerRecord

_RANK_KIND = {2: LayerKind.LINEAR, 3: LayerKind.CONV1D, 4: LayerKind.CONV2D, 5: LayerKind.CONV3D}
NO_ARCH = "no architecture: kind from the weight's rank, groups assumed 1, positions unknown"


def walk_state_dict(state: Mapping[str, Tensor]) -> list[LayerRecord]:
    """One record per ``*.weight`` tensor (or 2-D+ tensor without a ``.weight`` suffix)."""
    records = []
    for key, tensor in state.items():
        if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
            continue
        prefix, _, leaf = key.rpartition(".")
        if leaf != "weight" and tensor.dim() < 2:
            continue  # biases, running stats, scalars
        if leaf in ("running_mean", "running_var", "bias"):
            continue
        name = prefix if leaf == "weight" and prefix else key
        if leaf != "weight":
            records.append(_skipped(key, tensor, _NOT_A_WEIGHT))
            continue
        var = state.get(f"{prefix}.running_var")
        if tensor.dim() == 1 and isinstance(var, Tensor) and var.shape == tensor.shape:
            records.append(
                LayerRecord(
                    name=name,
                    kind=LayerKind.BATCHNORM,
                    op_type="state_dict",
                    weight=tensor,
                    batchnorm=BatchNormParams(running_var=var, weight=tensor),
                    reason=NO_ARCH,
                )
            )
        elif tensor.dim() in _RANK_KIND:
            records.append(
                LayerRecord(
                    name=name,
                    kind=_RANK_KIND[tensor.dim()],
                    op_type="state_dict",
                    weight=tensor,
                    reason=NO_ARCH,
                )
            )
        else:
            records.append(_skipped(name, tensor, _SCALE_ONLY))
    return records


_NOT_A_WEIGHT = (
    "not a layer weight (no `.weight` suffix: an embedding, token or buffer?); "
    "give the architecture to analyse the model"
)
_SCALE_ONLY = (
    "a 1-D weight without running statistics (a norm/PReLU scale?): "
    "not analysable without the architecture"
)


def _skipped(name: str, tensor: Tensor, reason: str) -> LayerRecord:
    return LayerRecord(
        name=name,
        kind=f"tensor{tensor.dim()}d",
        op_type="state_dict",
        weight=tensor,
        status=Status.SKIPPED,
        reason=reason,
    )
