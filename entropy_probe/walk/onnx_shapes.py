"""Per-sample tensor shapes of an ONNX graph, for the walker.

Static ONNX shape inference on a light copy of the graph (large constants replaced by typed
inputs, batch dim 1, the given input shape applied); where that cannot determine a weighted
layer's shapes (e.g. a Reshape target built through Cast at opset < 13), one batch-1
onnxruntime run reads them off. The caller's model is never mutated.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from entropy_probe.errors import ShapeError, SourceError
from entropy_probe.walk.records import Shape

__all__ = ["SHAPED_OPS", "infer_shapes", "runtime_shapes"]

# Constant tensors with more elements than this are left out of the shape-inference copy
# (shape inference only needs the values of small shape-like tensors).
_INFERENCE_CONST_LIMIT = 1024
_DEFAULT_DOMAINS = ("", "ai.onnx")


def infer_shapes(model: Any, input_shape: Sequence[int] | None) -> dict[str, Shape]:
    """Per-sample shape of every tensor whose shape inference fully determined it."""
    import onnx
    from onnx import helper

    graph = model.graph
    inits = {t.name for t in graph.initializer}
    real = [i for i in graph.input if i.name not in inits]

    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    g = light.graph
    g.name = graph.name
    declared = {i.name for i in graph.input}
    for t in graph.initializer:
        if _numel(t.dims) <= _INFERENCE_CONST_LIMIT:
            g.initializer.append(t)
        elif t.name not in declared:
            g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    for node in graph.node:
        big = _big_constant(node)
        if big is not None:
            g.input.append(
                helper.make_tensor_value_info(node.output[0], big.data_type, list(big.dims))
            )
        else:
            g.node.append(node)
    for inp in graph.input:
        new = g.input.add()
        new.CopyFrom(inp)
        if inp.name in inits:
            continue
        if inp.name == real[0].name:
            _set_first_input(new, input_shape)
        else:
            _set_batch_one(new)
    for out in graph.output:
        new = g.output.add()
        new.CopyFrom(out)
        if new.type.HasField("tensor_type"):
            new.type.tensor_type.ClearField("shape")  # recomputed; a stale one would conflict

    try:
        inferred = onnx.shape_inference.infer_shapes(
            light, check_type=False, strict_mode=False, data_prop=True
        )
    except Exception:  # inference is best effort: shapes stay unknown
        return {}
    shapes: dict[str, Shape] = {}
    for vi in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        ttype = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or not ttype.HasField("shape"):
            continue
        dims = ttype.shape.dim
        if len(dims) < 1 or not all(d.HasField("dim_value") for d in dims):
            continue
        shapes[vi.name] = _per_sample(tuple(int(d.dim_value) for d in dims))
    return shapes


SHAPED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization"})


def _per_sample(full: Shape) -> Shape:
    """Drop the batch dim (forced to 1 for inference). A tensor whose leading dim is not 1 has
    folded the batch into another dim (e.g. (B·T, C) tokens): keep it whole, so positions
    still count every token."""
    return full[1:] if full and full[0] == 1 else full


def runtime_shapes(
    model: Any, input_shape: Sequence[int], names: Sequence[str]
) -> dict[str, Shape]:
    """Shapes that static inference could not determine (e.g. a Reshape target built through
    Cast at opset < 13), read off one batch-1 onnxruntime run. Best effort: {} on failure."""
    try:
        import numpy as np
        import onnx
        import onnxruntime as ort

        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        inits = {t.name for t in probe.graph.initializer}
        real = [i for i in probe.graph.input if i.name not in inits]
        if len(real) != 1:
            return {}
        present = {o.name for o in probe.graph.output}
        for name in dict.fromkeys(names):
            if name not in present:
                probe.graph.output.append(onnx.ValueInfoProto(name=name))
        options = ort.SessionOptions()
        options.log_severity_level = 4  # a failed probe is handled here, not logged
        session = ort.InferenceSession(
            probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        x = np.random.default_rng(0).standard_normal((1, *input_shape)).astype(np.float32)
        outputs = session.run(list(dict.fromkeys(names)), {real[0].name: x})
    except Exception:  # shapes stay unknown; the layer then has positions=None
        return {}
    return {
        name: _per_sample(tuple(int(d) for d in out.shape))
        for name, out in zip(dict.fromkeys(names), outputs, strict=True)
    }


def _numel(dims: Iterable[int]) -> int:
    return math.prod(int(d) for d in dims)


def _big_constant(node: Any) -> Any | None:
    if node.op_type != "Constant" or node.domain not in _DEFAULT_DOMAINS or not node.output:
        return None
    for attr in node.attribute:
        if attr.name == "value" and _numel(attr.t.dims) > _INFERENCE_CONST_LIMIT:
            return attr.t
    return None


def _set_first_input(vi: Any, input_shape: Sequence[int] | None) -> None:
    ttype = vi.type.tensor_type
    dims = ttype.shape.dim if ttype.HasField("shape") else None
    if input_shape is None:
        if dims is None or len(dims) == 0:
            return  # no declared shape: inference leaves everything downstream unknown
        per_sample = dims[1:]
        if not all(d.HasField("dim_value") and d.dim_value > 0 for d in per_sample):
            shown = ",".join(
                str(d.dim_value)
                if d.HasField("dim_value") and d.dim_value > 0
                else (d.dim_param or "?")
                for d in per_sample
            )
            raise SourceError(
                f"the ONNX input '{vi.name}' has dims ({shown}) per sample that are not fixed:"
                " pass the per-sample input shape, e.g. --input-shape C,H,W"
                " (--input-shape 3,224,224)"
            )
        _set_batch_one(vi)
        return
    wanted = [int(v) for v in input_shape]
    if any(v < 1 for v in wanted):
        raise ShapeError(f"input shape {tuple(wanted)} must be positive integers")
    if dims is not None and len(dims) > 0 and len(dims) - 1 != len(wanted):
        raise ShapeError(
            f"input shape {tuple(wanted)} has {len(wanted)} dims, but the ONNX input"
            f" '{vi.name}' has {len(dims) - 1} per sample"
        )
    batch = 1
    if (
        dims is not None
        and len(dims) > 0
        and dims[0].HasField("dim_value")
        and dims[0].dim_value > 0
    ):
        batch = int(dims[0].dim_value)
    ttype.ClearField("shape")
    shape = ttype.shape
    for v in (batch, *wanted):
        shape.dim.add().dim_value = v


def _set_batch_one(vi: Any) -> None:
    ttype = vi.type.tensor_type
    if not ttype.HasField("shape") or len(ttype.shape.dim) == 0:
        return
    first = ttype.shape.dim[0]
    if not (first.HasField("dim_value") and first.dim_value > 0):
        first.Clear()
        first.dim_value = 1
