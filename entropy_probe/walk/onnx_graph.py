"""Walk an ONNX graph into :class:`LayerRecord`s without converting the model to torch.

Weights are read from the graph's initializers and ``Constant`` nodes (following simple chains
of Identity / Cast / Transpose / Reshape / DequantizeLinear on constants), each converted once.
Per-sample shapes come from ONNX shape inference on a light copy of the graph (large constant
tensors replaced by typed inputs, the batch dim set to 1 and the given input shape applied), so
the caller's model is never mutated and the weights are never copied for inference.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from entropy_probe.enums import LayerKind, Status
from entropy_probe.errors import ShapeError, SourceError
from entropy_probe.walk.onnx_shapes import SHAPED_OPS, infer_shapes, runtime_shapes
from entropy_probe.walk.records import BatchNormParams, LayerRecord, Shape

__all__ = ["layer_tensors", "record_name", "walk_onnx"]

_DEFAULT_DOMAINS = ("", "ai.onnx")
_CONV_OPS = ("Conv", "ConvTranspose")
# Ops that carry weights but have no rule: listed as skipped, never dropped silently.
_UNANALYSED_WEIGHTED = {
    "QLinearConv": "quantised conv",
    "ConvInteger": "quantised conv",
    "QLinearMatMul": "quantised matmul",
    "MatMulInteger": "quantised matmul",
    "FusedConv": "onnxruntime-fused conv",
    "FusedGemm": "onnxruntime-fused gemm",
    "FusedMatMul": "onnxruntime-fused matmul",
    "DynamicQuantizeMatMul": "quantised matmul",
    "QGemm": "quantised gemm",
}
_DENSE_OPS = ("Gemm", "MatMul")
_NORM_OPS = {
    "LayerNormalization": (
        "layernorm",
        "normalises each sample over its features with the sample's own statistics (a"
        " non-linear map): no weight-only closed form",
    ),
    "InstanceNormalization": (
        "instancenorm",
        "normalises each channel of each sample with the sample's own statistics (a non-linear"
        " map): no weight-only closed form",
    ),
    "GroupNormalization": (
        "groupnorm",
        "normalises each channel group of each sample with the sample's own statistics (a"
        " non-linear map): no weight-only closed form",
    ),
}
_MAX_CHAIN = 16


def record_name(node: Any) -> str:
    """A node's record name: its ``name``, or its first output's name when unnamed."""
    return str(node.name) if node.name else str(node.output[0]) if node.output else node.op_type


def walk_onnx(model: Any, input_shape: Sequence[int] | None = None) -> list[LayerRecord]:
    """One :class:`LayerRecord` per weighted node of ``model`` (an ``onnx.ModelProto``).

    ``input_shape`` is the per-sample shape of the graph's first real input (e.g. ``(3, 224,
    224)``); without it the input's declared shape is used, and a declared shape with
    symbolic dims raises :class:`SourceError`. Records are in graph (topological) order.
    """
    return [rec for rec, _node in _walk(model, input_shape)]


def layer_tensors(
    model: Any, input_shape: Sequence[int] | None = None
) -> dict[str, tuple[str, str]]:
    """Record name → (input tensor name, output tensor name) of every record of
    :func:`walk_onnx`: what to add as graph outputs to measure a layer in onnxruntime."""
    return {
        rec.name: (str(node.input[0]), str(node.output[0]))
        for rec, node in _walk(model, input_shape)
    }


def _walk(model: Any, input_shape: Sequence[int] | None) -> list[tuple[LayerRecord, Any]]:
    graph = model.graph
    shapes = infer_shapes(model, input_shape)
    missing = [
        name
        for node in graph.node
        if node.op_type in SHAPED_OPS
        for name in (node.input[0], node.output[0])
        if name not in shapes
    ]
    if missing and input_shape is not None:
        shapes.update(runtime_shapes(model, input_shape, missing))
    consts = _Constants(graph)
    built: list[tuple[LayerRecord, Any]] = []
    used: set[str] = set()
    for node in graph.node:
        if node.op_type in _UNANALYSED_WEIGHTED:
            rec: LayerRecord | None = LayerRecord(
                name=record_name(node),
                kind=node.op_type.lower(),
                op_type=node.op_type,
                in_shape=shapes.get(node.input[0]) if node.input else None,
                out_shape=shapes.get(node.output[0]) if node.output else None,
                status=Status.SKIPPED,
                reason=f"{node.op_type} ({_UNANALYSED_WEIGHTED[node.op_type]}) has no rule yet; "
                "export the float model (without quantisation or runtime fusion) to analyse it",
            )
        elif node.domain not in _DEFAULT_DOMAINS:
            continue
        else:
            rec = _record(node, consts, shapes)
        if rec is None:
            continue
        if rec.name in used:  # ONNX does not require unique node names
            rec = replace(rec, name=f"{rec.name}/{node.output[0]}")
        used.add(rec.name)
        built.append((rec, node))
    if input_shape is not None:
        _check_input_fits([rec for rec, _node in built], input_shape)
    return _detect_folds(graph, built)


def _check_input_fits(records: Sequence[LayerRecord], input_shape: Sequence[int]) -> None:
    """Refuse an input shape under which a layer would see the wrong number of channels or
    features. ONNX shape inference propagates any shape without running the graph (a wrong
    --input-shape on a dynamic-axes export gives a 3136-feature input to a 784-input Gemm);
    onnxruntime would refuse to run it."""
    for rec in records:
        weight, shape = rec.weight, rec.in_shape
        if weight is None or not shape or weight.dim() < 2:
            continue
        channels = shape[-(weight.dim() - 1)] if len(shape) >= weight.dim() - 1 else None
        if rec.kind.startswith("conv_transpose"):
            want, got, what = int(weight.shape[0]), channels, "input channels"
        elif rec.kind.startswith("conv"):
            want, got, what = int(weight.shape[1]) * rec.groups, channels, "input channels"
        elif rec.kind == LayerKind.LINEAR.value:
            want, got, what = int(weight.shape[1]), shape[-1], "input features"
        else:
            continue
        if got is not None and want != got:
            raise ShapeError(
                f"input shape {','.join(map(str, input_shape))} does not fit the model: layer "
                f"{rec.name!r} takes {want} {what} but would get {got} (input "
                f"{'×'.join(map(str, shape))}); pass the per-sample shape the model was "
                "exported for with --input-shape"
            )


# --------------------------------------------------------------------------------------------
# constants


class _Constants:
    """Resolve a tensor name to its constant value (initializer, Constant node, or a simple
    chain of ops on constants); every tensor is converted at most once."""

    def __init__(self, graph: Any) -> None:
        self._inits = {t.name: t for t in graph.initializer}
        self._producer = {out: node for node in graph.node for out in node.output if out}
        self._arrays: dict[str, np.ndarray | None] = {}
        self._tensors: dict[str, Tensor | None] = {}

    def tensor(self, name: str) -> Tensor | None:
        """The constant as a float tensor (float64 kept, everything else float32), or None."""
        if name not in self._tensors:
            arr = self.array(name)
            if arr is None or not (np.issubdtype(arr.dtype, np.number) or arr.dtype.kind == "V"):
                self._tensors[name] = None
            else:
                dtype = np.float64 if arr.dtype == np.float64 else np.float32
                try:
                    t = torch.from_numpy(np.array(arr, dtype=dtype, copy=True))
                except (TypeError, ValueError):
                    t = None
                self._tensors[name] = t
                if t is not None and arr.dtype == dtype:
                    self._arrays[name] = t.numpy()  # share memory: one copy of each weight
        return self._tensors[name]

    def array(self, name: str, depth: int = 0) -> np.ndarray | None:
        if not name:
            return None
        if name not in self._arrays:
            self._arrays[name] = self._resolve(name, depth)
        return self._arrays[name]

    def _resolve(self, name: str, depth: int) -> np.ndarray | None:
        from onnx import numpy_helper

        if name in self._inits:
            try:
                return np.asarray(numpy_helper.to_array(self._inits[name]))
            except Exception:  # unloaded external data, odd dtypes: treat as not constant
                return None
        node = self._producer.get(name)
        if node is None or depth > _MAX_CHAIN or node.domain not in _DEFAULT_DOMAINS:
            return None
        try:
            return self._through(node, depth + 1)
        except Exception:  # a malformed chain is "not a constant", never a crash
            return None

    def _through(self, node: Any, depth: int) -> np.ndarray | None:
        op = node.op_type
        attrs = _attrs(node)
        if op == "Constant":
            return _constant_value(node)
        if not node.input:
            return None
        src = self.array(node.input[0], depth)
        if src is None:
            return None
        if op == "Identity":
            return src
        if op == "Cast":
            from onnx import helper

            return src.astype(helper.tensor_dtype_to_np_dtype(int(attrs["to"])))
        if op == "Transpose":
            perm = attrs.get("perm")
            return np.transpose(src, None if perm is None else tuple(perm))
        if op == "Reshape":
            shape = self.array(node.input[1], depth) if len(node.input) > 1 else None
            if shape is None:
                return None
            target = [int(v) for v in shape.reshape(-1)]
            if not attrs.get("allowzero", 0):
                target = [src.shape[i] if v == 0 else v for i, v in enumerate(target)]
            return src.reshape(target)
        if op == "DequantizeLinear":
            if attrs.get("block_size", 0):
                return None
            scale = self.array(node.input[1], depth) if len(node.input) > 1 else None
            if scale is None:
                return None
            zero = self.array(node.input[2], depth) if len(node.input) > 2 else None
            x = src.astype(np.float32)
            if scale.size > 1:  # per-axis
                axis = int(attrs.get("axis", 1)) % src.ndim
                bshape = [1] * src.ndim
                bshape[axis] = -1
                scale = scale.reshape(bshape)
                zero = None if zero is None else zero.reshape(bshape)
            if zero is not None:
                x = x - zero.astype(np.float32)
            return (x * scale.astype(np.float32)).astype(np.float32)
        return None


def _constant_value(node: Any) -> np.ndarray | None:
    from onnx import numpy_helper

    for attr in node.attribute:
        if attr.name == "value":
            return np.asarray(numpy_helper.to_array(attr.t))
        if attr.name == "value_float":
            return np.asarray(attr.f, dtype=np.float32)
        if attr.name == "value_floats":
            return np.asarray(list(attr.floats), dtype=np.float32)
        if attr.name == "value_int":
            return np.asarray(attr.i, dtype=np.int64)
        if attr.name == "value_ints":
            return np.asarray(list(attr.ints), dtype=np.int64)
    return None  # sparse_value, strings


# The attribute types this walker reads (ONNX operator specs); any other type is corruption.
_ATTRIBUTE_TYPES = {
    "allowzero": "INT",
    "alpha": "FLOAT",
    "auto_pad": "STRING",
    "axis": "INT",
    "block_size": "INT",
    "dilations": "INTS",
    "epsilon": "FLOAT",
    "group": "INT",
    "kernel_shape": "INTS",
    "output_padding": "INTS",
    "pads": "INTS",
    "perm": "INTS",
    "strides": "INTS",
    "to": "INT",
    "training_mode": "INT",
    "transA": "INT",
    "transB": "INT",
}


def _attrs(node: Any) -> dict[str, Any]:
    """The node's attributes by name; one the walker reads with the wrong type is a
    SourceError naming the node (a flipped bit can turn ``group`` into an empty string)."""
    from onnx import AttributeProto, helper

    out: dict[str, Any] = {}
    for attr in node.attribute:
        expected = _ATTRIBUTE_TYPES.get(attr.name)
        if expected is not None and attr.type != getattr(AttributeProto, expected):
            got = (
                AttributeProto.AttributeType.Name(attr.type)
                if attr.type in (AttributeProto.AttributeType.values())
                else str(attr.type)
            )
            raise SourceError(
                f"ONNX node {record_name(node)!r} ({node.op_type}): attribute {attr.name!r} "
                f"has type {got}, the operator needs {expected}: the file is corrupt or not "
                "valid ONNX"
            )
        value = helper.get_attribute_value(attr)
        out[attr.name] = value.decode() if isinstance(value, bytes) else value
    return out


# --------------------------------------------------------------------------------------------
# records


def _record(node: Any, consts: _Constants, shapes: dict[str, Shape]) -> LayerRecord | None:
    op = node.op_type
    if op in _CONV_OPS:
        return _conv_record(node, consts, shapes)
    if op == "Gemm":
        return _gemm_record(node, consts, shapes)
    if op == "MatMul":
        return _matmul_record(node, consts, shapes)
    if op == "BatchNormalization":
        return _batchnorm_record(node, consts, shapes)
    if op in _NORM_OPS:
        kind, reason = _NORM_OPS[op]
        scale = consts.tensor(node.input[1]) if len(node.input) > 1 else None
        return LayerRecord(
            name=record_name(node),
            kind=kind,
            op_type=op,
            weight=scale,
            in_shape=shapes.get(node.input[0]),
            out_shape=shapes.get(node.output[0]),
            status=Status.NOT_ANALYTIC,
            reason=reason,
        )
    return None


def _runtime(name: str) -> str:
    return f"weight is computed at run time (input {name} is not a constant)"


def _conv_record(node: Any, consts: _Constants, shapes: dict[str, Shape]) -> LayerRecord:
    op = node.op_type
    transposed = op == "ConvTranspose"
    attrs = _attrs(node)
    w_name = node.input[1] if len(node.input) > 1 else ""
    weight = consts.tensor(w_name)
    in_shape = shapes.get(node.input[0])
    out_shape = shapes.get(node.output[0])
    if weight is not None:
        nd = weight.dim() - 2
    elif attrs.get("kernel_shape"):
        nd = len(attrs["kernel_shape"])
    elif in_shape is not None:
        nd = len(in_shape) - 1
    else:
        nd = 2
    kind = f"conv_transpose{nd}d" if transposed else f"conv{nd}d"
    groups = int(attrs.get("group", 1))
    stride = tuple(int(v) for v in attrs.get("strides", [1] * nd))
    dilation = tuple(int(v) for v in attrs.get("dilations", [1] * nd))
    kernel = (
        tuple(int(v) for v in weight.shape[2:])
        if weight is not None
        else tuple(int(v) for v in attrs.get("kernel_shape", ()))
    )
    padding = _begin_pads(attrs, nd, stride, dilation, kernel, in_shape, transposed)
    status: Status | None = None
    reason = ""
    if weight is None:
        status, reason = Status.SKIPPED, _runtime(w_name or "W")
    elif nd < 1 or nd > 3:
        status, reason = Status.SKIPPED, f"{nd}-D convolutions are not supported"
    elif groups < 1 or weight.shape[0] % groups:
        status, reason = Status.SKIPPED, f"group={groups} does not divide the weight's channels"
    return LayerRecord(
        name=record_name(node),
        kind=kind,
        op_type=op,
        weight=weight,
        in_shape=in_shape,
        out_shape=out_shape,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        status=status,
        reason=reason,
    )


def _begin_pads(
    attrs: dict[str, Any],
    nd: int,
    stride: Shape,
    dilation: Shape,
    kernel: Shape,
    in_shape: Shape | None,
    transposed: bool,
) -> Shape:
    auto = str(attrs.get("auto_pad", "NOTSET"))
    if auto in ("NOTSET", ""):
        pads = attrs.get("pads")
        return tuple(int(v) for v in pads[:nd]) if pads else (0,) * nd
    if auto == "VALID":
        return (0,) * nd
    if in_shape is None or len(kernel) != nd or len(in_shape) != nd + 1:
        return ()
    begin = []
    out_pad = attrs.get("output_padding", [0] * nd)
    for i in range(nd):
        size, s, d, k = in_shape[i + 1], stride[i], dilation[i], kernel[i]
        if transposed:
            total = max(s * (size - 1) + int(out_pad[i]) + (k - 1) * d + 1 - size * s, 0)
        else:
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        begin.append(total // 2 if auto == "SAME_UPPER" else total - total // 2)
    return tuple(begin)


def _gemm_record(node: Any, consts: _Constants, shapes: dict[str, Shape]) -> LayerRecord:
    attrs = _attrs(node)
    b_name = node.input[1] if len(node.input) > 1 else ""
    b = consts.tensor(b_name)
    weight: Tensor | None = None
    status: Status | None = None
    reason = ""
    if b is None:
        status, reason = Status.SKIPPED, _runtime(b_name or "B")
    elif b.dim() != 2:
        status, reason = Status.SKIPPED, f"Gemm operand B has shape {tuple(b.shape)}, not 2-D"
    else:
        weight = b if int(attrs.get("transB", 0)) else b.T.contiguous()
        alpha = float(attrs.get("alpha", 1.0))
        if alpha != 1.0:
            weight = weight * alpha
    in_shape = shapes.get(node.input[0])
    if int(attrs.get("transA", 0)):
        in_shape = (int(weight.shape[1]),) if weight is not None else None
    return LayerRecord(
        name=record_name(node),
        kind=LayerKind.LINEAR.value,
        op_type="Gemm",
        weight=weight,
        in_shape=in_shape,
        out_shape=shapes.get(node.output[0]),
        status=status,
        reason=reason,
    )


def _matmul_record(node: Any, consts: _Constants, shapes: dict[str, Shape]) -> LayerRecord | None:
    if len(node.input) < 2:
        return None
    a = consts.tensor(node.input[0])
    b = consts.tensor(node.input[1])
    if (a is None) == (b is None):
        return None  # both dynamic (attention scores, ...) or a constant subexpression
    weight: Tensor | None = None
    status: Status | None = None
    reason = ""
    if b is None:
        status = Status.SKIPPED
        reason = "the constant is MatMul's first operand (W·X); only X·W dense layers are supported"
    else:
        mat = b
        while mat.dim() > 2 and mat.shape[0] == 1:
            mat = mat[0]
        if mat.dim() == 1:
            weight = mat.reshape(1, -1)
        elif mat.dim() == 2:
            weight = mat.T.contiguous()
        else:
            status = Status.SKIPPED
            reason = f"the constant operand is a stack of matrices (shape {tuple(b.shape)})"
    return LayerRecord(
        name=record_name(node),
        kind=LayerKind.LINEAR.value,
        op_type="MatMul",
        weight=weight,
        in_shape=shapes.get(node.input[0]),
        out_shape=shapes.get(node.output[0]),
        status=status,
        reason=reason,
    )


def _batchnorm_record(node: Any, consts: _Constants, shapes: dict[str, Shape]) -> LayerRecord:
    attrs = _attrs(node)
    names = list(node.input) + [""] * (5 - len(node.input))
    scale = consts.tensor(names[1])
    var = consts.tensor(names[4])
    status: Status | None = None
    reason = ""
    params: BatchNormParams | None = None
    if scale is None or var is None:
        missing = names[1] if scale is None else names[4]
        status, reason = Status.SKIPPED, _runtime(missing or "scale")
    else:
        params = BatchNormParams(
            running_var=var, weight=scale, eps=float(attrs.get("epsilon", 1e-5))
        )
        if int(attrs.get("training_mode", 0)):
            status = Status.NOT_ANALYTIC
            reason = "training-mode BatchNormalization normalises with batch statistics"
    return LayerRecord(
        name=record_name(node),
        kind=LayerKind.BATCHNORM.value,
        op_type="BatchNormalization",
        weight=scale,
        in_shape=shapes.get(names[0]),
        out_shape=shapes.get(node.output[0]),
        batchnorm=params,
        status=status,
        reason=reason,
    )


def _out_channels(rec: LayerRecord) -> int | None:
    w = rec.weight
    if w is None:
        return None
    if rec.op_type == "ConvTranspose":
        return int(w.shape[1]) * rec.groups
    return int(w.shape[0])


def _detect_folds(
    graph: Any, built: list[tuple[LayerRecord, Any]]
) -> list[tuple[LayerRecord, Any]]:
    """Mark eval BatchNorms that directly follow a conv/dense layer feeding only them."""
    uses: Counter[str] = Counter(name for node in graph.node for name in node.input if name)
    uses.update(out.name for out in graph.output)
    by_output = {node.output[0]: i for i, (_rec, node) in enumerate(built) if node.output}
    out = list(built)
    for j, (bn, bn_node) in enumerate(built):
        if bn.op_type != "BatchNormalization" or bn.status is not None or bn.batchnorm is None:
            continue
        i = by_output.get(bn_node.input[0])
        if i is None or uses[bn_node.input[0]] != 1:
            continue
        layer, _node = out[i]
        if layer.op_type not in (*_CONV_OPS, *_DENSE_OPS) or layer.status is not None:
            continue
        if (
            layer.folded_batchnorm is not None
            or _out_channels(layer) != bn.batchnorm.running_var.numel()
        ):
            continue
        if layer.op_type in _DENSE_OPS and (layer.out_shape is None or len(layer.out_shape) != 1):
            continue  # BatchNorm normalises dim 1: only a (N, features) output is per feature
        out[i] = (replace(layer, folded_batchnorm=bn.name), out[i][1])
        out[j] = (replace(bn, folded_into=layer.name), bn_node)
    return out
