"""The library entry points the CLI calls."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from entropy_probe.entropy.profile import (
    LayerEntropy,
    Profile,
    compute_profile,
    resolve_device,
    with_empirical,
)
from entropy_probe.enums import ConvMethod
from entropy_probe.errors import ArgumentError, ShapeError, SourceError, enum_member
from entropy_probe.loading import DEFAULT_SOURCE, LoadedModel, LoadOptions, load_model
from entropy_probe.loading._base import check_module, input_shape_from
from entropy_probe.plugins import get_registry
from entropy_probe.walk.dispatch import walk
from entropy_probe.walk.records import Example

_LINALG_ERROR: type[Exception] = getattr(torch.linalg, "LinAlgError", RuntimeError)

DataArg = str | Path | Tensor | np.ndarray | None
"""What ``data=`` accepts: a built-in dataset name, an image folder or ``.npy`` file, or an
array/tensor shaped ``(N, *input_shape)``."""
ExampleArg = Example | None
"""What ``example_input=`` accepts: the model's forward input(s) for the shape trace."""


def profile_loaded(
    loaded: LoadedModel,
    *,
    method: ConvMethod | str = ConvMethod.PAPER,
    device: str = "auto",
    data: DataArg = None,
    samples: int = 256,
    batch_size: int = 32,
    estimator: str = "gaussian",
    k: int = 3,
    progress: bool = True,
    example_input: ExampleArg = None,
) -> Profile:
    """The entropy profile of an already loaded model (from :func:`load_model`).

    With ``data`` (a built-in dataset name, an image folder, a ``.npy`` array shaped
    ``(N, *input_shape)``, or a tensor) up to ``samples`` real inputs stream through the model
    in batches of ``batch_size`` and every measured layer gets ``empirical`` (DESIGN.md 2.4):
    entropies per dimension by ``estimator`` (``gaussian`` or ``knn`` with ``k`` neighbours),
    and activation and pooling modules (and an ONNX graph's residual ``Add`` nodes) get rows of
    their own (status ``not_analytic``). Without ``data`` nothing is measured.

    ``example_input`` replaces the seeded random ``(1, *input_shape)`` input of the shape
    trace, for a torch module whose forward takes something else: a tensor, a tuple of
    positional inputs or a dict of keyword inputs (batch first, batch size 1 advised).

    ``progress`` draws progress bars on stderr, only when it is a terminal: one over the
    layers of the spectral method, one over the samples of ``data``.
    """
    if not isinstance(loaded, LoadedModel):
        raise ArgumentError(
            f"profile_loaded expects a LoadedModel (from load_model), got "
            f"{type(loaded).__name__}; for a source string, a path or an nn.Module use profile()"
        )
    method = enum_member(ConvMethod, method, "method")
    _check_data_arg(data)
    if loaded.module is not None:
        check_module(loaded.module, loaded.source)
    registry = get_registry()
    check_input_size(loaded.input_shape)
    inputs = None
    if data is not None:
        from entropy_probe.empirical.estimators import get_estimator
        from entropy_probe.empirical.inputs import load_inputs

        get_estimator(estimator)  # fail on a bad name before any work
        if loaded.state_dict is not None:
            unknown = "" if loaded.input_shape else " and its input shape is unknown"
            raise SourceError(
                f"--data needs a model that can run: a bare state dict has no architecture"
                f"{unknown} (give it one, e.g. timm:NAME --weights FILE)"
            )
        inputs = load_inputs(data, loaded, samples=samples)
    records = walk(loaded, registry, example=example_input)
    result = compute_profile(
        records,
        registry.rules,
        source=loaded.source,
        format=loaded.format,
        input_shape=loaded.input_shape,
        method=method,
        device=device,
        num_params=loaded.num_params,
        pretrained=loaded.pretrained,
        notes=loaded.notes,
        progress=progress,
    )
    if inputs is None:
        if not records:
            raise SourceError(_nothing_to_analyse(loaded))
        return result
    from entropy_probe.empirical.capture import measure
    from entropy_probe.enums import Status

    try:
        measured = measure(
            loaded,
            records,
            inputs.inputs,
            estimator=estimator,
            k=k,
            batch_size=batch_size,
            progress=progress,
            device=resolve_device(device),
        )
    except _LINALG_ERROR:  # the estimator's covariance of NaN/Inf activations
        raise SourceError(
            "--data: the model's activations are not finite (NaN/Inf), so their entropy is "
            "undefined; its weights hold NaN/Inf (see the layers marked skipped without --data)"
            " or it overflows on these inputs"
        ) from None
    if not records and not measured.rows:
        raise SourceError(_nothing_to_analyse(loaded))
    rows = [
        (
            row.anchor,
            LayerEntropy(
                name=row.name,
                kind=row.kind,
                op_type=row.op_type,
                status=Status(row.status),
                reason=row.reason,
                in_shape=row.in_shape,
                out_shape=row.out_shape,
                empirical=row.empirical,
            ),
        )
        for row in measured.rows
    ]
    shown = (
        f"{measured.estimator} (k={measured.k})"
        if measured.estimator == "knn"
        else (measured.estimator)
    )
    note = (
        f"empirical entropy: {shown} estimator on {inputs.description}; entropies per "
        "dimension of a seeded orthonormal random projection to d = min(D, N/2, "
        f"{measured.max_dims}) dims (DESIGN.md 2.4)"
    )
    return with_empirical(
        result,
        measured.by_record,
        rows,
        notes=[note],
        meta={"empirical": {**measured.meta(), "data": inputs.description}},
    )


MAX_INPUT_VALUES = 2**28
"""The largest per-sample input (values) profiled: 1 GiB of float32 for one sample."""


def check_input_size(shape: Sequence[int] | None) -> None:
    """Refuse an absurd per-sample input shape before anything is allocated for it."""
    if shape is not None and math.prod(int(s) for s in shape) > MAX_INPUT_VALUES:
        shown = ",".join(str(int(s)) for s in shape)
        raise ShapeError(
            f"input shape {shown} has {math.prod(int(s) for s in shape):,} values per sample, "
            f"more than the {MAX_INPUT_VALUES:,} entropy-probe allocates: give a smaller "
            "--input-shape C,H,W (e.g. 3,224,224)"
        )


def _nothing_to_analyse(loaded: LoadedModel) -> str:
    """Why ``loaded`` gave no layer at all, and what to do."""
    if loaded.onnx_model is not None:
        ops = sorted({node.op_type for node in loaded.onnx_model.graph.node})
        shown = ", ".join(ops[:8]) + (", ..." if len(ops) > 8 else "")
        held = f"its {shown} nodes hold no constant weights of those kinds"
    elif loaded.state_dict is not None:
        keys = list(loaded.state_dict)
        held = f"none of its {len(keys)} tensors is a `*.weight`" + (
            f" (e.g. {keys[0]!r})" if keys else ""
        )
    else:
        held = "it has no module of those kinds (a plugin can add rules for others)"
    return (
        f"no layer to analyse in {loaded.source}: entropy-probe reads dense, convolutional and "
        f"BatchNorm weights, and {held}. Check that this is the model you meant"
    )


def profile(
    source: str | os.PathLike[str] | nn.Module = DEFAULT_SOURCE,
    *,
    weights: str | Path | None = None,
    input_shape: Sequence[int] | str | None = None,
    method: ConvMethod | str = ConvMethod.PAPER,
    device: str = "auto",
    trust_pickle: bool = False,
    data: DataArg = None,
    samples: int = 256,
    batch_size: int = 32,
    estimator: str = "gaussian",
    k: int = 3,
    progress: bool = True,
    example_input: ExampleArg = None,
) -> Profile:
    """Load ``source`` (a source string such as ``timm:resnet18``, a path, or an
    ``nn.Module`` in memory) and compute its entropy profile (``data`` etc.: see
    :func:`profile_loaded`).

    >>> from entropy_probe import profile
    >>> p = profile("default")              # the embedded MNIST CNN
    >>> [layer.name for layer in p.analysed][:2]
    ['features.0', 'features.1']
    """
    if weights is not None and not isinstance(weights, str | os.PathLike):
        raise ArgumentError(f"weights must be a path, got {type(weights).__name__}")
    options = LoadOptions(
        weights=Path(weights) if weights is not None else None,
        input_shape=input_shape_from(input_shape),
        trust_pickle=trust_pickle,
    )
    return profile_loaded(
        load_model(source, options),
        method=method,
        device=device,
        data=data,
        samples=samples,
        batch_size=batch_size,
        estimator=estimator,
        k=k,
        progress=progress,
        example_input=example_input,
    )


def _check_data_arg(data: object) -> None:
    if data is not None and not isinstance(data, str | os.PathLike | Tensor | np.ndarray):
        raise ArgumentError(
            "data must be a built-in dataset name, an image folder or .npy path, a numpy "
            f"array or a tensor shaped (N, *input_shape); got {type(data).__name__}"
        )
