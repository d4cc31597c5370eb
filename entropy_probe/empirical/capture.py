"""Streaming activation capture: real inputs through the model, one projected slot per tensor.

Torch models: a forward pre-hook (input, read *before* an in-place module overwrites it) and a
forward hook (output) on every walked record's module and on every non-analytic module
(activations, pooling, upsampling; Dropout, Identity and Flatten are left out). ONNX models:
run in onnxruntime on a copy of the graph with the wanted intermediate tensors added as graph
outputs (records, activations, pooling, upsampling, and Add/Mul nodes of two computed tensors:
residual additions and gates).

Inputs stream through in batches. Each hooked tensor is flattened to (B, D) and immediately
projected to (B, d) (estimators.RandomProjection; one projection per distinct D, shared by all
tensors of that size), and only the projected rows are kept: memory is one (N, d) float32
buffer per measured tensor plus one projection per distinct D (a signed-group sketch and a
dense frame for wide tensors; resnet50 at 224×224 with N = 256, d = 128: 40 MiB of buffers,
77 MiB of projections), never the activations of
all layers (an onnxruntime batch is sized so that all requested outputs of one batch fit in
``onnx_batch_bytes``). Within one batch a tensor seen twice (a layer's output that is the
next layer's input) is projected once. After the last batch every buffer is whitened and
estimated.

A record whose eval BatchNorm is folded into it (DESIGN.md 2.3) is measured on the map it
is profiled as: its input to the BatchNorm's output (``output_of`` in its ``empirical``).
A module called several times is measured on its first call when it is a record; a
non-analytic module gets one row per call (``name#2``, ...).
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from entropy_probe._progress import progress_bar
from entropy_probe.empirical.estimators import (
    DEFAULT_MAX_DIMS,
    RandomProjection,
    estimate_many,
    get_estimator,
    prepare_whitening,
    projection_dims,
)
from entropy_probe.enums import Status
from entropy_probe.errors import EntropyProbeError, ShapeError, SourceError, first_line
from entropy_probe.loading._base import LoadedModel
from entropy_probe.walk.hooks import forward_hooks
from entropy_probe.walk.module_walker import first_tensor
from entropy_probe.walk.records import LayerRecord, Shape

__all__ = ["EmpiricalResult", "NewRow", "measure"]

_ROOT_NAME = "<root>"
_REASON = "no weight-only closed form (DESIGN.md 2.3): entropy measured from activations"
_ONNX_UNARY = frozenset(
    {
        "Relu",
        "LeakyRelu",
        "PRelu",
        "Elu",
        "Selu",
        "Celu",
        "Sigmoid",
        "HardSigmoid",
        "HardSwish",
        "Tanh",
        "Softplus",
        "Softsign",
        "Gelu",
        "Mish",
        "Clip",
        "ThresholdedRelu",
        "Softmax",
        "LogSoftmax",
        "MaxPool",
        "AveragePool",
        "LpPool",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "GlobalLpPool",
        "Resize",
        "Upsample",
    }
)
_ONNX_BINARY = frozenset({"Add", "Mul", "Sum"})  # only with two computed (non-constant) inputs
_TORCH_MODULES = ("torch.nn.modules.activation", "torch.nn.modules.pooling")
_TIMM_ACTIVATIONS = ("timm.layers.activations", "timm.layers.activations_me")
DEFAULT_ONNX_BATCH_BYTES = 1024 * 2**20


@dataclass(frozen=True)
class NewRow:
    """A measured layer that is not a walked record (an activation, a pool, a residual add):
    insert it after the record named ``anchor`` (None: before the first)."""

    anchor: str | None
    name: str
    kind: str
    op_type: str
    in_shape: Shape | None
    out_shape: Shape | None
    empirical: dict[str, Any]
    reason: str = _REASON
    status: Status = Status.NOT_ANALYTIC


@dataclass
class EmpiricalResult:
    """What :func:`measure` found: ``empirical`` dicts by record name, new rows, and costs."""

    estimator: str
    k: int
    samples: int
    seed: int
    max_dims: int | None
    by_record: dict[str, dict[str, Any]]
    rows: list[NewRow]
    elapsed_s: float
    stored_bytes: int  # projected feature buffers, all layers together
    projection_bytes: int  # the D×d projection matrices
    skipped: dict[str, str] = field(default_factory=dict)  # tap name → why it got no value

    def meta(self) -> dict[str, Any]:
        return {
            "estimator": self.estimator,
            "k": self.k,
            "samples": self.samples,
            "seed": self.seed,
            "max_dims": self.max_dims,
            "elapsed_s": round(self.elapsed_s, 4),
            "stored_bytes": self.stored_bytes,
            "projection_bytes": self.projection_bytes,
            "skipped": dict(self.skipped),
        }


# --------------------------------------------------------------------------------------------
# projected feature buffers


class _Slot:
    """The projected (N, d) rows of one measured tensor, filled batch by batch."""

    def __init__(self, shape: Shape) -> None:
        self.shape = shape
        self.dims = math.prod(shape) if shape else 1
        self.buffer: Tensor | None = None
        self.proj: RandomProjection | None = None
        self.filled = 0
        self.error = ""

    def nbytes(self) -> int:
        return 0 if self.buffer is None else self.buffer.numel() * self.buffer.element_size()


class _Store:
    """Projections by D, slots by key, and the per-batch cache of projected tensors."""

    def __init__(self, samples: int, max_dims: int | None, seed: int, device: torch.device):
        self.samples = samples
        self.max_dims = max_dims
        self.seed = seed
        self.device = device
        self.projections: dict[int, RandomProjection] = {}
        self.slots: dict[Any, _Slot] = {}
        self.order: list[Any] = []
        self._batch_cache: dict[int, tuple[weakref.ref[Tensor], int, Tensor]] = {}
        self.start = 0
        self.batch = 0
        self.first_batch = True

    def begin_batch(self, start: int, size: int, *, first: bool) -> None:
        self.start, self.batch, self.first_batch = start, size, first
        self._batch_cache.clear()

    def projection(self, dims: int) -> RandomProjection:
        if dims not in self.projections:
            d = projection_dims(dims, self.samples, self.max_dims)
            self.projections[dims] = RandomProjection(dims, d, seed=self.seed, device=self.device)
        return self.projections[dims]

    def _project_into(self, t: Tensor, proj: RandomProjection, dest: Tensor) -> None:
        """Write ``t``'s projected rows into ``dest``, or copy them from where this batch
        already projected the same tensor (unchanged since: same version)."""
        key = id(t)
        version = t._version
        hit = self._batch_cache.get(key)
        if hit is not None and hit[0]() is t and hit[1] == version:
            dest.copy_(hit[2])
            return
        flat = (t.detach() if t.requires_grad else t).reshape(t.shape[0], -1)
        if flat.device != self.device:
            flat = flat.to(self.device)
        if dest.is_cuda:
            proj.raw(flat, out=dest)  # a copy less (CUDA values already differ from the CPU's)
        else:
            # MKL's sgemm rounds by the output's alignment: a row slice of the buffer would
            # change the CPU's values in the last bits
            dest.copy_(proj.raw(flat))
        self._batch_cache[key] = (weakref.ref(t), version, dest)

    def end_batches(self) -> None:
        """After the last batch: drop the cache, whose views would keep slot buffers alive."""
        self._batch_cache.clear()

    def record(self, key: Any, t: Any) -> None:
        """Project tensor ``t`` (batch first) into slot ``key`` for the current batch."""
        if not isinstance(t, Tensor) or not t.is_floating_point():
            return
        slot = self.slots.get(key)
        if slot is None:
            if not self.first_batch:
                return  # not seen on the first batch: dynamic control flow, left out
            slot = _Slot(tuple(int(s) for s in t.shape[1:]))
            self.slots[key] = slot
            self.order.append(key)
        if slot.error:
            return
        if t.dim() < 1 or t.shape[0] != self.batch:
            slot.error = f"its tensor {tuple(t.shape)} does not have the batch ({self.batch}) first"
            return
        if tuple(t.shape[1:]) != slot.shape:
            slot.error = f"its shape changed between batches ({slot.shape} → {tuple(t.shape[1:])})"
            return
        if slot.filled != self.start:
            return  # already filled for this batch (a second call mapped to the same slot)
        proj = self.projection(slot.dims)
        if slot.buffer is None:
            slot.proj = proj
            slot.buffer = torch.empty(
                (self.samples, proj.d), dtype=torch.float32, device=self.device
            )
        self._project_into(t, proj, slot.buffer[self.start : self.start + self.batch])
        slot.filled += self.batch


@dataclass
class _Tap:
    """One row to fill: where its input and output live."""

    name: str
    kind: str
    op_type: str
    is_record: bool
    in_key: Any
    out_key: Any
    anchor: str | None = None
    output_of: str | None = None
    call: int = 1


# --------------------------------------------------------------------------------------------
# public entry point


def measure(
    loaded: LoadedModel,
    records: Sequence[LayerRecord],
    inputs: Tensor,
    *,
    estimator: str = "gaussian",
    k: int = 3,
    batch_size: int = 32,
    progress: bool = True,
    device: torch.device | str = "cpu",
    max_dims: int | None = DEFAULT_MAX_DIMS,
    seed: int = 0,
    onnx_batch_bytes: int = DEFAULT_ONNX_BATCH_BYTES,
) -> EmpiricalResult:
    """Stream ``inputs`` (N, *input_shape) through ``loaded`` and estimate every measured
    layer's input and output entropy per dimension (see the module docstring)."""
    start_time = time.perf_counter()
    spec = get_estimator(estimator)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise EntropyProbeError(f"--batch-size must be a positive integer, got {batch_size!r}")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise EntropyProbeError(f"k must be a positive integer, got {k!r}")
    n = int(inputs.shape[0])
    minimum = max(4, k + 2) if "k" in spec.options else 4
    if n < minimum:
        raise SourceError(
            f"the data gives {n} samples; the {spec.name} estimator needs at least {minimum}"
        )
    dev = torch.device(device)
    store = _Store(n, max_dims, seed, dev)
    if loaded.module is not None:
        taps = _capture_module(loaded.module, records, inputs, store, batch_size, progress)
    elif loaded.onnx_model is not None:
        taps = _capture_onnx(loaded, records, inputs, store, batch_size, progress, onnx_batch_bytes)
    else:
        raise SourceError(
            "empirical entropy needs a model that can run: a bare state dict has no "
            "architecture (give e.g. timm:NAME --weights FILE)"
        )
    stored_bytes = sum(s.nbytes() for s in store.slots.values())
    by_record, rows, skipped = _estimate(taps, store, spec.name, k)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return EmpiricalResult(
        estimator=spec.name,
        k=k,
        samples=n,
        seed=seed,
        max_dims=max_dims,
        by_record=by_record,
        rows=rows,
        elapsed_s=time.perf_counter() - start_time,
        stored_bytes=stored_bytes,
        projection_bytes=sum(p.nbytes for p in store.projections.values()),
        skipped=skipped,
    )


def _estimate(
    taps: list[_Tap], store: _Store, estimator: str, k: int
) -> tuple[dict[str, dict[str, Any]], list[NewRow], dict[str, str]]:
    values: dict[Any, float | None] = {}
    slot_error: dict[Any, str] = {}
    ready: list[Any] = []
    for key in store.order:
        slot = store.slots[key]
        if not slot.error and slot.filled != store.samples:
            slot.error = f"it ran on {slot.filled} of {store.samples} samples"
        if slot.error or slot.buffer is None or slot.proj is None:
            slot_error[key] = slot.error or "no tensor was seen"
            values[key] = None
        else:
            ready.append(key)
    store.end_batches()
    prepare_whitening(store.projections.values())  # no device synchronisation mid-capture
    finished = []
    for key in ready:
        slot = store.slots[key]
        assert slot.proj is not None and slot.buffer is not None
        finished.append(slot.proj.finish(slot.buffer))
        slot.buffer = None  # the projected rows are no longer needed once whitened
    for key, h in zip(ready, estimate_many(estimator, finished, k=k), strict=True):
        values[key] = None if math.isnan(h) else h
    del finished

    by_record: dict[str, dict[str, Any]] = {}
    rows: list[NewRow] = []
    skipped: dict[str, str] = {}
    for tap in taps:
        if tap.out_key not in store.slots:
            continue  # never executed on these inputs
        if tap.out_key in slot_error:
            skipped[tap.name] = slot_error[tap.out_key]
            continue
        out_slot = store.slots[tap.out_key]
        in_slot = store.slots.get(tap.in_key) if tap.in_key is not None else None
        h_out = values[tap.out_key]
        h_in = values.get(tap.in_key) if in_slot is not None else None
        emp: dict[str, Any] = {
            "estimator": estimator,
            "h_in_per_dim": h_in,
            "h_out_per_dim": h_out,
            "delta_h_per_dim": _difference(h_out, h_in),
            "samples": store.samples,
            "dims_in": in_slot.dims if in_slot is not None else None,
            "dims_out": out_slot.dims,
            "proj_dims_in": in_slot.proj.d if in_slot is not None and in_slot.proj else None,
            "proj_dims_out": out_slot.proj.d if out_slot.proj else None,
        }
        emp["projected"] = any(
            s is not None and s.proj is not None and s.proj.d < s.dims for s in (in_slot, out_slot)
        )
        if estimator == "knn":
            emp["k"] = k
        if tap.output_of:
            emp["output_of"] = tap.output_of
        if tap.call > 1:
            emp["call"] = tap.call
        if tap.is_record:
            by_record[tap.name] = emp
        else:
            rows.append(
                NewRow(
                    anchor=tap.anchor,
                    name=tap.name,
                    kind=tap.kind,
                    op_type=tap.op_type,
                    in_shape=in_slot.shape if in_slot is not None else None,
                    out_shape=out_slot.shape,
                    empirical=emp,
                )
            )
    return by_record, rows, skipped


def _difference(h_out: float | None, h_in: float | None) -> float | None:
    if h_out is None or h_in is None:
        return None
    diff = h_out - h_in
    return None if math.isnan(diff) else diff


# --------------------------------------------------------------------------------------------
# torch


def is_non_analytic_module(module: nn.Module) -> bool:
    """Activations, pooling and upsampling: measured, never analysed from weights."""
    cls = type(module)
    if isinstance(module, nn.MultiheadAttention):
        return False
    if cls.__module__ in _TORCH_MODULES or cls.__module__ in _TIMM_ACTIVATIONS:
        return True
    return isinstance(module, nn.Upsample | nn.PixelShuffle | nn.PixelUnshuffle)


@contextmanager
def _pre_hooks(modules: dict[str, nn.Module], hooks: dict[str, Any]) -> Iterator[None]:
    handles: list[RemovableHandle] = []
    try:
        for name, hook in hooks.items():
            handles.append(modules[name].register_forward_pre_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _on_device(module: nn.Module, device: torch.device) -> Iterator[None]:
    """Run ``module`` on ``device``: moved there for the block and back afterwards (a model
    spread over several devices is left where it is)."""
    places = {t.device for t in (*module.parameters(), *module.buffers())}
    if len(places) != 1 or next(iter(places)) == device:
        yield
        return
    home = next(iter(places))
    module.to(device)
    try:
        yield
    finally:
        module.to(home)


def _capture_module(
    model: nn.Module,
    records: Sequence[LayerRecord],
    inputs: Tensor,
    store: _Store,
    batch_size: int,
    progress: bool,
) -> list[_Tap]:
    modules = dict(model.named_modules())
    rec_by_module = {
        ("" if r.name == _ROOT_NAME else r.name): r
        for r in records
        if ("" if r.name == _ROOT_NAME else r.name) in modules
    }
    measured = dict.fromkeys(rec_by_module)
    for name, module in modules.items():
        if name not in measured and is_non_analytic_module(module):
            measured[name] = None
    calls: dict[str, int] = {}
    stack: dict[str, list[int]] = {}
    events: list[tuple[str, int]] = []  # first batch: (module, call) in completion order

    def wanted(name: str, call: int) -> bool:
        return call == 1 or name not in rec_by_module

    def make_pre(name: str) -> Any:
        def pre(module: nn.Module, args: tuple[Any, ...]) -> None:
            call = calls.get(name, 0) + 1
            calls[name] = call
            stack.setdefault(name, []).append(call)
            if wanted(name, call):
                store.record((name, call, "in"), first_tensor(args))

        return pre

    def make_post(name: str) -> Any:
        def post(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            call = stack[name].pop() if stack.get(name) else calls.get(name, 1)
            if wanted(name, call):
                store.record((name, call, "out"), first_tensor(output))
                if store.first_batch:
                    events.append((name, call))

        return post

    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = param.dtype if param is not None else torch.float32
    n = int(inputs.shape[0])
    bar = progress_bar(n, progress, "activations", "sample")
    try:
        with (
            _on_device(model, store.device),
            forward_hooks(model, {name: make_post(name) for name in measured}),
            _pre_hooks(modules, {name: make_pre(name) for name in measured}),
            torch.no_grad(),
        ):
            for start in range(0, n, batch_size):
                batch = inputs[start : start + batch_size].to(store.device, dtype)
                store.begin_batch(start, int(batch.shape[0]), first=start == 0)
                calls.clear()
                stack.clear()
                try:
                    model(batch)
                except Exception as exc:
                    raise ShapeError(
                        f"the forward pass on the data failed: {first_line(exc)}"
                    ) from exc
                bar.update(int(batch.shape[0]))
    finally:
        bar.close()

    taps: list[_Tap] = []
    anchor: str | None = None
    for name, call in events:
        rec = rec_by_module.get(name)
        module = modules[name]
        if rec is not None:
            out_key: Any = (name, 1, "out")
            output_of = None
            if rec.folded_batchnorm and rec.folded_batchnorm in modules:
                out_key, output_of = (rec.folded_batchnorm, 1, "out"), rec.folded_batchnorm
            taps.append(
                _Tap(rec.name, rec.kind, rec.op_type, True, (name, 1, "in"), out_key,
                     output_of=output_of)
            )  # fmt: skip
            anchor = rec.name
        else:
            row = name if call == 1 else f"{name}#{call}"
            cls = type(module).__name__
            taps.append(
                _Tap(row, cls.lower(), cls, False, (name, call, "in"), (name, call, "out"),
                     anchor=anchor, call=call)
            )  # fmt: skip
    return taps


# --------------------------------------------------------------------------------------------
# onnx


def _constant_names(graph: Any) -> set[str]:
    names = {t.name for t in graph.initializer}
    names.update(n.output[0] for n in graph.node if n.op_type == "Constant" and n.output)
    return names


def _capture_onnx(
    loaded: LoadedModel,
    records: Sequence[LayerRecord],
    inputs: Tensor,
    store: _Store,
    batch_size: int,
    progress: bool,
    onnx_batch_bytes: int,
) -> list[_Tap]:
    import onnx
    import onnxruntime as ort

    from entropy_probe.walk.onnx_graph import layer_tensors, record_name

    model = loaded.onnx_model
    graph = model.graph
    shape = tuple(int(s) for s in inputs.shape[1:])
    tensors = layer_tensors(model, shape)
    consts = _constant_names(graph)
    real_inputs = [i for i in graph.input if i.name not in consts]
    if len(real_inputs) != 1:
        raise SourceError(
            f"empirical entropy feeds one input tensor; this ONNX graph has {len(real_inputs)}"
            f" ({', '.join(i.name for i in real_inputs)})"
        )
    input_name = real_inputs[0].name
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output if out}

    # taps in graph order: records (from layer_tensors) and non-analytic nodes
    by_name = {r.name: r for r in records}
    placed: list[tuple[int, _Tap]] = []
    for name, (tin, tout) in tensors.items():
        rec = by_name.get(name)
        if rec is None:
            continue
        output_of = None
        if rec.folded_batchnorm and rec.folded_batchnorm in tensors:
            output_of = rec.folded_batchnorm
            tout = tensors[rec.folded_batchnorm][1]
        index = producer.get(tensors[name][1], -1)
        placed.append((index, _Tap(name, rec.kind, rec.op_type, True, tin, tout,
                                   output_of=output_of)))  # fmt: skip
    used = set(tensors)
    for index, node in enumerate(graph.node):
        op = node.op_type
        if node.domain not in ("", "ai.onnx") or not node.output or not node.input:
            continue
        computed = [i for i in node.input if i and i not in consts]
        if op in _ONNX_BINARY:
            if len(computed) < 2:
                continue  # a bias add or a constant scale: not a residual or a gate
        elif op not in _ONNX_UNARY or not computed:
            continue
        row = record_name(node)
        if row in used:
            row = f"{row}/{node.output[0]}"
        used.add(row)
        placed.append((index, _Tap(row, op.lower(), op, False, computed[0], node.output[0])))
    placed.sort(key=lambda item: item[0])
    anchor: str | None = None
    taps: list[_Tap] = []
    for _, tap in placed:
        if tap.is_record:
            anchor = tap.name
        else:
            tap.anchor = anchor
        taps.append(tap)

    wanted = sorted({t for tap in taps for t in (tap.in_key, tap.out_key) if t != input_name})
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    existing = {o.name for o in copy.graph.output}
    for name in wanted:
        if name not in existing:
            copy.graph.output.append(onnx.ValueInfoProto(name=name))
    providers = ["CPUExecutionProvider"]
    if store.device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    options = ort.SessionOptions()
    # idle onnxruntime threads must not spin: torch projects and estimates between the runs
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(
            copy.SerializeToString(), sess_options=options, providers=providers
        )
    except Exception as exc:
        raise SourceError(f"onnxruntime cannot run this model: {exc}") from exc
    del copy
    elem = real_inputs[0].type.tensor_type.elem_type
    np_dtype = onnx.helper.tensor_dtype_to_np_dtype(elem) if elem else np.dtype(np.float32)

    n = int(inputs.shape[0])
    bar = progress_bar(n, progress, "activations", "sample")
    start, size = 0, 1  # the first batch is one sample: it measures the outputs' size
    try:
        while start < n:
            batch = inputs[start : start + size]
            feed = batch.numpy().astype(np_dtype, copy=False)
            try:
                outs = session.run(wanted, {input_name: feed})
            except Exception as exc:
                raise ShapeError(f"onnxruntime failed on the data: {first_line(exc)}") from exc
            b = int(batch.shape[0])
            store.begin_batch(start, b, first=start == 0)
            arrays = dict(zip(wanted, outs, strict=True))
            per_sample = sum(a.nbytes for a in outs) / max(b, 1)
            arrays[input_name] = feed
            for name in (input_name, *wanted):
                arr = np.ascontiguousarray(arrays[name])
                if not arr.flags.writeable:
                    arr = arr.copy()
                store.record(name, torch.from_numpy(arr))
            del outs, arrays
            bar.update(b)
            start += b
            size = int(max(1, min(batch_size, onnx_batch_bytes // max(per_sample, 1.0))))
    finally:
        bar.close()
    return taps
