"""ONNX sources in fine-tuning: the graph as a trainable torch module, the input size its
export fixed, and the fine-tuned module exported back with the source's declared input."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from entropy_probe._io import atomic_write_bytes
from entropy_probe.errors import EntropyProbeError, SourceError, first_line
from entropy_probe.loading import LoadedModel
from entropy_probe.train.data import TaskData
from entropy_probe.train.onnx_head import make_matmul_weights_trainable

__all__ = ["export_onnx", "onnx_fixed_size", "onnx_to_torch"]


def onnx_to_torch(loaded: LoadedModel) -> nn.Module:
    """An ONNX graph as a trainable torch module (onnx2torch), after two clean-ups: ``Constant``
    nodes become initializers (PP-OCR keeps its weights there, which onnx2torch cannot train or
    even find) and unused initializers are dropped."""
    import onnx

    try:
        from onnx2torch import convert
    except ImportError as exc:  # pragma: no cover - a dependency
        raise SourceError("fine-tuning ONNX needs onnx2torch: pip install onnx2torch") from exc
    model = onnx.ModelProto()
    model.CopyFrom(loaded.onnx_model)
    graph = model.graph
    nodes = []
    for node in graph.node:
        attrs = list(node.attribute)
        if node.op_type == "Constant" and len(attrs) == 1 and attrs[0].name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(attrs[0].t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module: nn.Module = convert(model)
    except Exception as exc:  # onnx2torch raises bare KeyError/NotImplementedError on gaps
        raise SourceError(
            f"onnx2torch cannot convert {loaded.source} for training: {first_line(exc)}"
        ) from None
    # onnx2torch reads a MatMul's weight (and the bias added after it) from buffers: without
    # this, fine-tuning would never update a MatMul classifier head or a transformer's weights
    make_matmul_weights_trainable(module)
    return module


def _declared_dims(value_info: Any) -> list[tuple[int | None, str]] | None:
    """(fixed size or None, symbolic name) of each declared dim of an ONNX graph input or
    output; None when it declares no shape."""
    ttype = value_info.type.tensor_type
    if not ttype.HasField("shape") or len(ttype.shape.dim) == 0:
        return None
    return [
        (int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None, d.dim_param)
        for d in ttype.shape.dim
    ]


def onnx_fixed_size(loaded: LoadedModel) -> tuple[int | None, int | None] | None:
    """The (H, W) an ONNX source's (C, H, W) input declares (``None`` for a dynamic dim), or
    None when it is not an ONNX image model or fixes neither."""
    if loaded.format != "onnx" or loaded.onnx_model is None:
        return None
    from entropy_probe.loading.onnx_loader import first_real_input

    inp = first_real_input(loaded.onnx_model)
    dims = _declared_dims(inp) if inp is not None else None
    if dims is None or len(dims) != 4:
        return None
    height, width = dims[2][0], dims[3][0]
    return None if height is None and width is None else (height, width)


def _onnx_dynamic_axes(loaded: LoadedModel, name: str) -> dict[str, dict[int, str]]:
    """The export's dynamic axes: the batch, and every other dim the source left dynamic
    (named as it named them), so ``model.onnx`` declares the source's input shape."""
    axes: dict[str, dict[int, str]] = {name: {0: "batch"}, "output": {0: "batch"}}
    if loaded.onnx_model is None:
        return axes
    from entropy_probe.loading.onnx_loader import first_real_input

    graph = loaded.onnx_model.graph
    for key, info in ((name, first_real_input(loaded.onnx_model)), ("output", None)):
        if key == "output":
            info = graph.output[0] if len(graph.output) else None
        dims = _declared_dims(info) if info is not None else None
        for i, (size, symbol) in enumerate(dims or []):
            if i == 0:
                axes[key][0] = symbol or "batch"
            elif size is None:
                axes[key][i] = symbol or f"{key}_dim{i}"
    return axes


def export_onnx(loaded: LoadedModel, module: nn.Module, data: TaskData, path: Path) -> Path:
    """``module`` (fine-tuned from the ONNX ``loaded``) as ``path``, atomically: opset 17, the
    source's input name and declared input shape, ``data``'s first sample as the example."""
    name = str(loaded.meta.get("input_name") or "input")
    example = data.val_x[:1].to(next(module.parameters()).device)
    was = module.training
    module.eval()
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (example,),
                buffer,  # type: ignore[arg-type]  # a file object works with dynamo=False
                dynamo=False,
                opset_version=17,
                input_names=[name],
                output_names=["output"],
                dynamic_axes=_onnx_dynamic_axes(loaded, name),
            )
    except Exception as exc:  # torch.onnx raises many kinds; the user gets one line
        raise EntropyProbeError(
            f"exporting the fine-tuned model back to ONNX failed: {first_line(exc)} "
            "(model.safetensors holds the weights)"
        ) from None
    finally:
        module.train(was)
    return atomic_write_bytes(path, buffer.getvalue())
