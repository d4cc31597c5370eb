"""Walk a torch ``nn.Module``: one traced forward pass, one record per weighted module."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from entropy_probe.enums import LayerKind, Status
from entropy_probe.errors import ShapeError, SourceError
from entropy_probe.plugins import PluginRegistry
from entropy_probe.walk.hooks import forward_hooks
from entropy_probe.walk.records import BatchNormParams, LayerRecord, Shape

_FEATURE_NORMS: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.instancenorm._InstanceNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
_ROOT_NAME = "<root>"


@dataclass
class _Trace:
    order: list[str] = field(default_factory=list)
    in_shape: dict[str, Shape] = field(default_factory=dict)
    out_shape: dict[str, Shape] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    folded: dict[str, str] = field(default_factory=dict)  # batchnorm name -> layer name
    last_weighted: tuple[str, Tensor, int] | None = None  # name, output, its version
    last_name: str = ""


def first_tensor(value: Any) -> Tensor | None:
    """The first tensor in a (nested) module input/output: tensor, tuple/list, or dict."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (list, tuple)):
        for item in value:
            found = first_tensor(item)
            if found is not None:
                return found
    if isinstance(value, dict):
        return first_tensor(list(value.values()))
    return None


def _has_direct_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def walk_module(
    model: nn.Module,
    input_shape: Sequence[int] | None,
    registry: PluginRegistry,
    *,
    example: Tensor | None = None,
) -> list[LayerRecord]:
    """Records for every weighted module of ``model`` in execution order.

    One forward pass in eval mode with a seeded random input of ``(1, *input_shape)`` (or
    ``example``) gives per-sample input/output shapes, call counts and which eval BatchNorms
    directly follow a conv/dense layer. The model is not mutated: hooks are removed and the
    ``training`` flags restored whatever happens.
    """
    named = dict(model.named_modules())  # shared modules appear once, under their first name
    kinds = {name: registry.kind_of(m) for name, m in named.items()}
    candidates = [n for n, m in named.items() if kinds[n] is not None or _has_direct_params(m)]
    trace = _Trace()
    weighted_kinds = {k for k in registry.rules.names() if k != LayerKind.BATCHNORM}

    def make_hook(name: str) -> Any:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            trace.last_name = name
            x, y = first_tensor(inputs), first_tensor(output)
            if name not in trace.calls:
                trace.order.append(name)
                trace.calls[name] = 0
                if x is not None:
                    trace.in_shape[name] = tuple(x.shape[1:])
                if y is not None:
                    trace.out_shape[name] = tuple(y.shape[1:])
            trace.calls[name] += 1
            kind = kinds[name]
            if (
                kind == LayerKind.BATCHNORM
                and trace.last_weighted is not None
                and x is trace.last_weighted[1]
                and x._version == trace.last_weighted[2]  # no in-place op (ReLU) in between
                and name not in trace.folded
            ):
                trace.folded[name] = trace.last_weighted[0]
            if kind in weighted_kinds and isinstance(y, Tensor):
                trace.last_weighted = (name, y, y._version)

        return hook

    if example is None:
        if input_shape is None:
            raise SourceError(
                "the model's input shape is unknown: pass --input-shape C,H,W (e.g. 3,224,224)"
            )
        gen = torch.Generator().manual_seed(0)
        try:
            param = next(model.parameters())
            dtype, device = param.dtype, param.device
        except StopIteration:
            dtype, device = torch.float32, torch.device("cpu")
        example = torch.randn((1, *input_shape), generator=gen).to(device=device, dtype=dtype)

    with forward_hooks(model, {n: make_hook(n) for n in candidates}), torch.no_grad():
        try:
            model(example)
        except Exception as exc:
            where = f" after layer {trace.last_name!r}" if trace.last_name else ""
            raise ShapeError(
                f"the forward pass with input shape {tuple(example.shape[1:])} failed{where}: "
                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}. "
                "Check --input-shape C,H,W."
            ) from exc

    folded_by_layer = {layer: bn for bn, layer in trace.folded.items()}
    executed = [n for n in trace.order if n in set(candidates)]
    ordered = executed + [n for n in candidates if n not in trace.calls]
    return [_record(name, named[name], kinds[name], trace, folded_by_layer) for name in ordered]


def _record(
    name: str,
    module: nn.Module,
    kind: str | None,
    trace: _Trace,
    folded_by_layer: dict[str, str],
) -> LayerRecord:
    common: dict[str, Any] = {
        "name": name or _ROOT_NAME,
        "op_type": type(module).__name__,
        "in_shape": trace.in_shape.get(name),
        "out_shape": trace.out_shape.get(name),
        "calls": max(trace.calls.get(name, 0), 1),
    }
    if name not in trace.calls:
        common["reason"] = "not executed by the traced forward pass: positions unknown"
    if kind is None:
        params = ", ".join(n for n, _ in module.named_parameters(recurse=False))
        if isinstance(module, _FEATURE_NORMS):
            status, reason = Status.NOT_ANALYTIC, "normalisation over features depends on the data"
        elif isinstance(module, nn.Embedding):
            status, reason = Status.SKIPPED, "a lookup table, not a map of its input"
        else:
            status = Status.SKIPPED
            reason = (
                f"no rule for {type(module).__name__} (parameters: {params}); a plugin can add one"
            )
        return LayerRecord(
            kind=type(module).__name__.lower(), status=status, reason=reason, **common
        )
    if kind == LayerKind.BATCHNORM:
        var = getattr(module, "running_var", None)
        if not isinstance(var, Tensor):
            return LayerRecord(
                kind=kind,
                status=Status.SKIPPED,
                reason="BatchNorm without running statistics (track_running_stats=False)",
                **common,
            )
        gamma = getattr(module, "weight", None)
        bn = BatchNormParams(
            running_var=var.detach(),
            weight=gamma.detach() if isinstance(gamma, Tensor) else None,
            eps=float(getattr(module, "eps", 1e-5)),
        )
        folded_into = trace.folded.get(name)
        return LayerRecord(kind=kind, batchnorm=bn, folded_into=folded_into, **common)
    weight = getattr(module, "weight", None)
    if not isinstance(weight, Tensor):
        return LayerRecord(
            kind=kind, status=Status.SKIPPED, reason="module has no `weight` tensor", **common
        )
    conv: dict[str, Any] = {}
    if isinstance(module, nn.modules.conv._ConvNd):
        padding = module.padding if isinstance(module.padding, tuple) else ()
        conv = {
            "stride": tuple(module.stride),
            "padding": tuple(int(p) for p in padding),
            "dilation": tuple(module.dilation),
            "groups": int(module.groups),
        }
    return LayerRecord(
        kind=kind,
        weight=weight.detach(),
        folded_batchnorm=folded_by_layer.get(name),
        **conv,
        **common,
    )
