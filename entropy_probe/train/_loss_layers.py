"""The layers an entropy loss acts on, found once, and their per-layer quantity h_l each step.

Construction reuses the analysis end to end: the module walker finds the weighted layers, their
execution order and the eval BatchNorms directly after them (the folds), and
:func:`~entropy_probe.entropy.profile.compute_profile` decides which layers are analysable and
gives their relative depth. Each step, h_l is computed from the *live* parameters by the same
layer rules and the same functions of :mod:`entropy_probe.entropy.functional` the profile uses,
so the loss and the analysis report the same numbers (tests prove it to ~1e-10).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from entropy_probe.entropy import functional as F
from entropy_probe.entropy.profile import Profile, compute_profile
from entropy_probe.entropy.rules import ConvRule, LayerRule
from entropy_probe.enums import ConvMethod, LayerKind
from entropy_probe.errors import ShapeError, UnsupportedLayerError
from entropy_probe.patterns.pattern import LayerGroup, Quantity, layer_group, ungrouped_layers
from entropy_probe.plugins import get_registry
from entropy_probe.walk.module_walker import walk_module
from entropy_probe.walk.records import LayerRecord


@dataclass(frozen=True)
class LossLayer:
    """One layer the loss acts on: where it sits and how its h_l is computed.

    ``method`` is the conv method actually used (a conv whose spectral grid is unknown, e.g. a
    module shared across input sizes, falls back to ``paper``); ``spectral_dims`` is the number
    of singular values of the whole circular operator (the spectral per-dimension denominator);
    ``shape_random`` the profile's random-init baseline of the spectral shape (for
    ``shape_excess``).
    """

    name: str
    group: LayerGroup
    depth: float
    record: LayerRecord
    rule: LayerRule
    batchnorm: str | None
    method: ConvMethod
    spectral_dims: int = 0
    shape_random: float | None = None


def find_loss_layers(
    model: nn.Module, example: Tensor, conv_method: ConvMethod, quantity: Quantity
) -> tuple[list[LossLayer], Profile]:
    """Walk ``model`` once with ``example`` (batch included) and profile it.

    Returns the analysable dense/conv layers in execution order with their relative depth, and
    the profile itself (a reference ``auto`` picks its family from it). For the shape
    quantities a layer with a single singular value is left out, as patterns leave it out:
    its shape is 0 whatever the weights.

    A layer's group is the one its rule declares (``LayerRule.group``), so a plugin's layers
    get terms when their rule declares ``dense`` or ``conv``. Analysed layers of a kind that
    belongs to no group get none: a ``UserWarning`` names them and says why.
    """
    registry = get_registry()
    try:
        param = next(model.parameters())
        example = example.to(device=param.device, dtype=param.dtype)
        device = param.device
    except StopIteration:
        device = example.device
    records = walk_module(model, None, registry, example=example)
    profile = compute_profile(
        records,
        registry.rules,
        source=type(model).__name__,
        format="torch",
        input_shape=tuple(int(s) for s in example.shape[1:]),
        method=ConvMethod.PAPER,
        device=device,
    )
    by_name = {r.name: r for r in records}
    layers = []
    for entry in profile.layers:
        group = layer_group(entry.kind)
        if group is None or entry.depth is None or entry.kind == LayerKind.BATCHNORM:
            continue
        record = by_name[entry.name]
        rule = registry.rules.get(record.kind)
        method, dims = ConvMethod.PAPER, 0
        if conv_method is ConvMethod.SPECTRAL and group is LayerGroup.CONV:
            dims = _spectral_dims(record, rule)
            if dims:
                method = ConvMethod.SPECTRAL
        if quantity is not Quantity.DELTA_H_PER_DIM and record.weight is not None:
            paper_dims = rule.paper_terms(record, record.weight).dims
            if (dims if method is ConvMethod.SPECTRAL else paper_dims) == 1:
                continue
        layers.append(
            LossLayer(
                name=entry.name,
                group=group,
                depth=entry.depth,
                record=record,
                rule=rule,
                batchnorm=record.folded_batchnorm,
                method=method,
                spectral_dims=dims,
                shape_random=entry.spectral_shape_random,
            )
        )
    _warn_ungrouped(profile)
    return layers, profile


class NoLossTermWarning(UserWarning):
    """Analysed layers the entropy loss gives no term: their kind belongs to no layer group."""


def _warn_ungrouped(profile: Profile) -> None:
    by_reason: dict[str, list[str]] = {}
    for name, reason in ungrouped_layers(profile):
        by_reason.setdefault(reason, []).append(name)
    for reason, names in by_reason.items():
        plural = "s" if len(names) > 1 else ""
        warnings.warn(
            f"the entropy loss gives layer{plural} {', '.join(map(repr, names))} no term: {reason}",
            NoLossTermWarning,
            stacklevel=4,  # _warn_ungrouped, find_loss_layers, build_entropy_loss, the caller
        )


def _spectral_dims(record: LayerRecord, rule: LayerRule) -> int:
    """Singular values of the circular operator (0 when the spectral method does not apply):
    ∏(grid/stride) frequencies × groups × min(C_out/g, C_in/g·∏stride)."""
    if not isinstance(rule, ConvRule) or record.weight is None or len(record.call_shapes) > 1:
        return 0
    grid = rule.spectral_grid(record)
    if grid is None:
        return 0
    stride = record.stride or (1,) * len(grid)
    rows = record.weight.shape[0] // record.groups
    cols = record.weight.shape[1] * math.prod(stride)
    freqs = math.prod(g // s for g, s in zip(grid, stride, strict=True))
    return freqs * record.groups * min(rows, cols)


def module_map(model: nn.Module, layers: list[LossLayer]) -> dict[str, nn.Module]:
    """Name → module for every layer and folded BatchNorm; a clear error when one is missing
    (the loss was built for another architecture)."""
    modules = dict(model.named_modules())
    wanted = [n for layer in layers for n in (layer.name, layer.batchnorm) if n is not None]
    missing = [n for n in wanted if n not in modules]
    if missing:
        raise UnsupportedLayerError(
            f"the model has no module {missing[0]!r}: the entropy loss was built for a "
            "different architecture (build it again for this model)"
        )
    return {n: modules[n] for n in wanted}


def layer_quantity(layer: LossLayer, modules: dict[str, nn.Module], quantity: Quantity) -> Tensor:
    """h_l of ``layer`` from the live parameters, a differentiable float64 scalar.

    ``delta_h_per_dim`` = Σ log σ / (number of σ); ``spectral_shape`` per
    :func:`~entropy_probe.entropy.functional.spectral_shape`; ``shape_excess`` that minus the
    layer's random-init baseline (``LayerEntropy.spectral_shape_random``). The BatchNorm fold
    uses γ (a parameter: gradients reach it) and the running variance (a buffer).
    """
    weight = getattr(modules[layer.name], "weight", None)
    if not isinstance(weight, Tensor):
        raise UnsupportedLayerError(f"layer {layer.name!r} no longer has a weight tensor")
    scale = None
    if layer.batchnorm is not None:
        bn = modules[layer.batchnorm]
        running_var = getattr(bn, "running_var", None)
        if not isinstance(running_var, Tensor):
            raise UnsupportedLayerError(f"BatchNorm {layer.batchnorm!r} lost its running_var")
        gamma = getattr(bn, "weight", None)
        eps = getattr(bn, "eps", 1e-5)
        scale = F.batchnorm_scale(
            running_var, gamma if isinstance(gamma, Tensor) else None, float(eps)
        )
    if layer.method is ConvMethod.SPECTRAL:
        return _spectral_quantity(layer, weight, scale, quantity)
    if quantity in (Quantity.SHAPE_EXCESS, Quantity.RELATIVE_EXCESS):
        base = layer.shape_random
        if base is None or base == 0:
            raise UnsupportedLayerError(f"layer {layer.name!r} has no random-init shape baseline")
        excess = layer_quantity(layer, modules, Quantity.SPECTRAL_SHAPE) - base
        return excess / abs(base) if quantity is Quantity.RELATIVE_EXCESS else excess
    terms = layer.rule.paper_terms(layer.record, weight)
    if scale is not None:
        terms = layer.rule.fold_terms(layer.record, terms, scale)
    if terms.matrices is None:
        raise UnsupportedLayerError(f"layer {layer.name!r}: its rule gives no matrices")
    if quantity is Quantity.SPECTRAL_SHAPE:
        return F.spectral_shape(terms.matrices)
    return F.sum_log_singular_values(terms.matrices).sum() / terms.dims


def _spectral_quantity(
    layer: LossLayer, weight: Tensor, scale: Tensor | None, quantity: Quantity
) -> Tensor:
    record, rule = layer.record, layer.rule
    assert isinstance(rule, ConvRule)  # find_loss_layers sets SPECTRAL for ConvRule only
    effective = weight if scale is None else rule.fold(record, weight, scale)
    grid = rule.spectral_grid(record)
    if grid is None:
        raise ShapeError(f"layer {layer.name!r}: its spectral grid is unknown")
    stride = record.stride or (1,) * len(grid)
    dilation = record.dilation or (1,) * len(grid)
    if quantity in (Quantity.SHAPE_EXCESS, Quantity.RELATIVE_EXCESS):
        raise ShapeError(f"{quantity} has no spectral-method baseline")
    if quantity is Quantity.DELTA_H_PER_DIM:
        total = F.conv_spectral_log_volume(effective, grid, stride, dilation, record.groups)
        return total / layer.spectral_dims
    # The half spectrum plus the conjugate frequencies it stands for (same singular values):
    # the whole operator as one block-diagonal batch, as spectral_shape expects.
    mats, mult = F.conv_spectral_matrices(effective, grid, stride, dilation, record.groups)
    full = torch.cat([mats, mats[mult > 1]])
    return F.spectral_shape(full)
