"""Load an ``.onnx`` file as it is: the graph is profiled without converting it to torch.

Only the protobuf is read here (plus its external data files, when it has any). No initializer
is converted to an array: the walker (:func:`entropy_probe.walk.onnx_graph.walk_onnx`) converts
the few tensors it needs, once each.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from entropy_probe.errors import ShapeError, SourceError, first_line
from entropy_probe.loading._base import LoadedModel, Loader, LoadOptions, Shape

__all__ = ["OnnxLoader", "first_real_input", "per_sample_dims"]


def _text(value: str | bytes) -> str:
    """A free-text field of the file (protobuf hands over non-UTF-8 strings as bytes)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class OnnxLoader(Loader):
    """``*.onnx`` files (or ``onnx:PATH``)."""

    scheme = "onnx"
    extensions = (".onnx",)
    description = "ONNX model file, profiled from its graph (initializers and Constant nodes)"

    def load(self, ident: str, options: LoadOptions) -> LoadedModel:
        path = Path(ident).expanduser()
        model = read_onnx(path)
        inp = first_real_input(model)
        notes: list[str] = []
        meta: dict[str, Any] = {
            "path": str(path),
            "producer": " ".join(
                _text(p) for p in (model.producer_name, model.producer_version) if p
            ),
            "opset": {
                _text(imp.domain) or "ai.onnx": int(imp.version) for imp in model.opset_import
            },
        }
        input_shape: Shape | None = None
        if inp is not None:
            meta["input_name"] = inp.name
            dims = per_sample_dims(inp)
            if options.input_shape is not None:
                if dims is not None and len(dims) != len(options.input_shape):
                    raise ShapeError(
                        f"--input-shape {_fmt(options.input_shape)} has {len(options.input_shape)}"
                        f" dims, but the ONNX input '{inp.name}' has {len(dims)} per sample"
                        f" ({_fmt(dims)})"
                    )
                fixed = [(i, d) for i, d in enumerate(dims or ()) if d is not None]
                if any(int(options.input_shape[i]) != d for i, d in fixed):
                    raise ShapeError(
                        f"--input-shape {_fmt(options.input_shape)} does not fit the ONNX input"
                        f" '{inp.name}' ({_fmt(dims or ())} per sample): its export fixed "
                        + ", ".join(f"dim {i + 1} to {d}" for i, d in fixed)
                        + "; only dims left dynamic can be chosen"
                    )
                input_shape = tuple(int(d) for d in options.input_shape)
            elif dims is not None and all(d is not None for d in dims):
                input_shape = tuple(int(d) for d in dims if d is not None)
            else:
                notes.append(
                    f"the ONNX input '{inp.name}' has per-sample dims "
                    f"{_fmt(dims) if dims is not None else '(unknown)'} that are not all fixed: "
                    "pass --input-shape C,H,W to get layer shapes"
                )
        elif options.input_shape is not None:
            input_shape = tuple(int(d) for d in options.input_shape)
        return LoadedModel(
            source=str(path),
            format="onnx",
            onnx_model=model,
            input_shape=input_shape,
            notes=notes,
            meta=meta,
        )


def read_onnx(path: Path) -> Any:
    """Read and sanity-check an ONNX file; every failure is a :class:`SourceError`."""
    import onnx

    if not path.exists():
        raise SourceError(f"ONNX file not found: {path}")
    if not path.is_file():
        raise SourceError(f"{path} is not a file (expected an .onnx model file)")

    def bad(reason: str) -> SourceError:
        from entropy_probe.loading.torch_file import wrong_format_hint

        hint = wrong_format_hint(path, "onnx") or "Is it a valid .onnx file?"
        return SourceError(f"cannot read ONNX file {path}: {reason}. {hint}")

    if path.stat().st_size == 0:
        raise bad("the file is empty")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except OSError as exc:
        raise SourceError(f"cannot read ONNX file {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # protobuf DecodeError and friends: never a raw traceback
        raise bad(_short_reason(exc)) from None
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise bad("it holds no graph (no nodes)")
    if len(model.opset_import) == 0:
        raise bad("it declares no opset (the file may be truncated)")
    _check_text(model, path)
    _load_external_data(model, path)
    dangling = _first_dangling_input(model.graph)
    if dangling is not None:
        node, name = dangling
        raise bad(f"the graph is incomplete (node '{node}' reads '{name}', which nothing produces)")
    _check_nodes(model.graph, path)
    _check_tensor_sizes(model, path)
    return model


def _short_reason(exc: Exception) -> str:
    if type(exc).__name__ == "DecodeError":
        return "the protobuf data is corrupt or truncated"
    return first_line(exc, 160)


def _all_tensors(graph: Any) -> Iterator[Any]:
    """Every TensorProto of a graph: initializers and tensor attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for sub in attr.graphs:
                yield from _all_tensors(sub)


def _load_external_data(model: Any, path: Path) -> None:
    import onnx

    base = path.parent
    external = [
        t for t in _all_tensors(model.graph) if t.data_location == onnx.TensorProto.EXTERNAL
    ]
    if not external:
        return
    for tensor in external:
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        if not location:
            raise SourceError(
                f"ONNX file {path}: tensor '{tensor.name}' is stored externally but names no"
                " data file"
            )
        if not (base / location).is_file():
            raise SourceError(
                f"ONNX file {path} keeps tensor '{tensor.name}' in the external data file"
                f" '{location}', which is missing (looked in {base}). Keep the data file next to"
                " the .onnx file."
            )
    try:
        onnx.load_external_data_for_model(model, str(base))
    except Exception as exc:
        raise SourceError(
            f"cannot read the external data of ONNX file {path}: {_short_reason(exc)}"
        ) from None


def _check_text(model: Any, path: Path) -> None:
    """Every name the analysis reads or copies is valid UTF-8. protobuf hands back bytes for
    a string field with a flipped bit, and copying one into a new message (shape inference
    does) raises UnicodeDecodeError: refuse the file here, by name, instead. The producer
    fields are only shown, decoded with replacement: a bad one does not stop the profile."""
    graph = model.graph
    typed = (*graph.input, *graph.output, *graph.value_info)
    names = [graph.name]
    names += [opset.domain for opset in model.opset_import]
    names += [t.name for t in (*graph.initializer, *typed)]
    names += [d.dim_param for v in typed for d in v.type.tensor_type.shape.dim]
    for node in graph.node:
        names += [node.op_type, node.domain, node.name, *node.input, *node.output]
        names += [attr.name for attr in node.attribute]
    bad = next((name for name in names if not isinstance(name, str)), None)
    if bad is not None:
        raise SourceError(
            f"ONNX file {path}: the name {bad!r} is not valid UTF-8: the file is corrupt. "
            "Re-export the model."
        )


def _check_nodes(graph: Any, path: Path) -> None:
    """Every default-domain node is a known operator with typed attributes: a corrupt op type
    would drop the layer silently, an untyped attribute read as None."""
    import onnx

    for node in graph.node:
        where = node.name or node.op_type
        if node.domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type):
            raise SourceError(
                f"ONNX file {path}: node '{where}' has op type '{node.op_type}', which is not an "
                f"ONNX operator: the file is corrupt, or needs a newer onnx package than "
                f"{onnx.__version__}"
            )
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.UNDEFINED:
                raise SourceError(
                    f"ONNX file {path}: attribute '{attr.name}' of node '{where}' has no type: "
                    "the file is corrupt. Re-export the model."
                )


# Byte-sized element types: raw_data holds itemsize bytes per value, typed fields one value per
# element (two for complex). Sub-byte and string types are not checked.
_ITEMSIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 14: 8,
             15: 16, 16: 2, 17: 1, 18: 1, 19: 1, 20: 1}  # fmt: skip
_TYPED_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data")


def _check_tensor_sizes(model: Any, path: Path) -> None:
    """Every tensor holds as many values as its dims declare: a mismatch (a truncated or
    edited file, or absurd dims) is a SourceError, never a layer that silently disappears."""
    for tensor in _all_tensors(model.graph):
        itemsize = _ITEMSIZE.get(int(tensor.data_type))
        if itemsize is None or tensor.HasField("segment"):
            continue
        dims = [int(d) for d in tensor.dims]
        values = math.prod(dims)
        if tensor.raw_data:
            have, want, unit = len(tensor.raw_data), values * itemsize, "bytes"
        else:
            have = max(len(getattr(tensor, f)) for f in _TYPED_FIELDS)
            want, unit = values * (2 if tensor.data_type in (14, 15) else 1), "values"
        if any(d < 0 for d in dims) or have != want:
            shown = "×".join(map(str, dims)) or "scalar"
            raise SourceError(
                f"ONNX file {path}: tensor '{tensor.name}' declares shape {shown} ({want:,} "
                f"{unit}) but holds {have:,}: the file is corrupt or truncated. Re-export the "
                "model."
            )


def _first_dangling_input(graph: Any) -> tuple[str, str] | None:
    """The first top-level node input that no node, graph input or initializer provides."""
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    known |= {t.name for t in graph.sparse_initializer}
    known |= {name for node in graph.node for name in node.output}
    for node in graph.node:
        for name in node.input:
            if name and name not in known:
                return (node.name or node.op_type, name)
    return None


def first_real_input(model: Any) -> Any | None:
    """The graph's first input that is not an initializer (old IRs list weights as inputs)."""
    inits = {t.name for t in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name not in inits:
            return inp
    return None


def per_sample_dims(value_info: Any) -> tuple[int | None, ...] | None:
    """Declared dims of a graph input without the batch dim; ``None`` for unknown dims
    (symbolic or missing), and ``None`` overall when the input has no shape at all."""
    ttype = value_info.type.tensor_type
    if not ttype.HasField("shape") or len(ttype.shape.dim) == 0:
        return None
    dims = [
        int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None
        for d in ttype.shape.dim
    ]
    return tuple(dims[1:])


def _fmt(dims: tuple[int | None, ...] | Shape) -> str:
    return ",".join("?" if d is None else str(d) for d in dims) or "()"
