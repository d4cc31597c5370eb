"""Entropy loss terms for fine-tuning (DESIGN.md 2.5, 2.7).

L = L_task + λ_dense·L_dense + λ_conv·L_conv, where each term averages a per-layer penalty on
h_l, the layer's ``shape_excess`` (the scale-free spectral shape minus its random-init
baseline; the default), ``spectral_shape`` or ``delta_h_per_dim``:

* ``target``: (h_l − h*_l)², h*_l the reference pattern at the layer's relative depth;
* ``direction``: −d_l·τ·tanh(h_l/τ), d_l = sign of the reference at that depth (bounded).

The layers, their groups, relative depths and BatchNorm folds are found once by walking the
model with an example input; each call reads the live parameters. h_l is computed by the same
rules and functions as the analysis profile (``entropy_probe.entropy.functional``).

>>> loss_fn = build_entropy_loss(model, lambda_dense=0.1, lambda_conv=0.1,
...                              reference=pattern, example_input=x[:1])
>>> terms = loss_fn(model, step)          # {} on steps an amortised term is skipped
>>> (task_loss + sum(terms.values())).backward()
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from entropy_probe.entropy.profile import Profile
from entropy_probe.enums import ConvMethod
from entropy_probe.errors import EntropyProbeError, UnsupportedLayerError
from entropy_probe.patterns.pattern import (
    DEFAULT_QUANTITY,
    LayerGroup,
    Quantity,
    ReferencePattern,
    layer_group,
    relative_excess_defined,
)
from entropy_probe.train._loss_layers import (
    LossLayer,
    find_loss_layers,
    layer_quantity,
    module_map,
)
from entropy_probe.train.loss_cost import auto_every, relative_cost

__all__ = [
    "DEFAULT_AMORTISE",
    "DEFAULT_EVERY",
    "Amortise",
    "AuxiliaryLoss",
    "EntropyLoss",
    "LossConfigError",
    "LossMode",
    "build_entropy_loss",
]

#: Default amortisation: evaluate the terms every 32nd step and replay the last gradient on the
#: steps between (tests/bench/bench_loss_overhead.py, README). Evaluated every step the terms
#: cost about 1.8 plain steps of timm resnet50 (batch 8, CPU) and about 100 of an MLP
#: 784-1024-1024-10 (batch 64): 32 keeps resnet50-sized models under 10%; dense models with
#: small batches need a larger ``every`` (the README's table).
DEFAULT_EVERY = 32
DEFAULT_AMORTISE = "reuse"


class LossConfigError(EntropyProbeError, ValueError):
    """An entropy loss was configured with an invalid option."""


class LossMode(str, Enum):
    TARGET = "target"
    DIRECTION = "direction"

    def __str__(self) -> str:
        return self.value


class Amortise(str, Enum):
    """How the terms are spread over the ``every`` steps between two evaluations.

    ``scale``: evaluated every k-th step, multiplied by k, nothing on the steps between (the
    expected gradient is that of every step; the optimiser sees one k-fold kick).
    ``reuse``: the gradient of the last evaluation is applied again on every step between
    (a lagged estimate: no kick, so adaptive optimisers such as Adam see the same magnitude as
    every=1; the value logged between evaluations is the last evaluated one).
    """

    SCALE = "scale"
    REUSE = "reuse"

    def __str__(self) -> str:
        return self.value


class _ReplayGradient(torch.autograd.Function):
    """A scalar whose backward hands fixed gradients to ``params`` (times the incoming
    gradient, so a GradScaler's loss scale applies)."""

    @staticmethod
    def forward(ctx: Any, value: Tensor, grads: tuple[Tensor, ...], *params: Tensor) -> Tensor:
        ctx.grads = grads
        return value.detach().clone()

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        grads: tuple[Tensor, ...] = ctx.grads
        if grad_out.device.type == "cpu" and float(grad_out) == 1.0:
            # No copy: autograd accumulates into .grad (it never adopts a tensor still
            # referenced here), and on CPU the extra pass over the weights costs ~10% of an
            # MLP step. On CUDA the check would synchronise; multiplying is cheaper there.
            return (None, None, *grads)
        if len({(g.dtype, g.device) for g in grads}) == 1:
            # one multi-tensor launch: per-tensor products cost 6 of a 24 ms resnet50 step on an
            # H100 (161 gradients)
            return (None, None, *torch._foreach_mul(list(grads), grad_out.to(grads[0].dtype)))
        return (None, None, *(g * grad_out.to(g.dtype) for g in grads))


@runtime_checkable
class AuxiliaryLoss(Protocol):
    """Extra loss terms a training loop adds to its task loss."""

    def __call__(self, model: nn.Module, step: int) -> dict[str, Tensor]:
        """Named, already weighted terms for this ``step``; ``{}`` when none are due.
        ``model`` is the unwrapped module (``model.module`` under DDP)."""
        ...


@dataclass(frozen=True)
class _Targeted:
    layer: LossLayer
    target: float  # h*_l in target mode, d_l = sign(h*_l) in direction mode


class EntropyLoss:
    """The entropy terms of one model (an :class:`AuxiliaryLoss`); build it with
    :func:`build_entropy_loss`.

    The terms are evaluated on steps where ``step % every == 0``; see :class:`Amortise` for
    what the steps between receive.
    """

    def __init__(
        self,
        layers: list[LossLayer],
        reference: ReferencePattern,
        *,
        mode: LossMode,
        lambdas: Mapping[LayerGroup, float],
        every: int,
        amortise: Amortise = Amortise.SCALE,
        tau: float,
        model: nn.Module,
        profile: Profile,
    ) -> None:
        self.mode = mode
        self.amortise = amortise
        self._cache: dict[LayerGroup, tuple[Tensor, tuple[Tensor, ...], list[Tensor]]] = {}
        self.quantity = reference.quantity
        self.reference = reference
        self.lambdas = dict(lambdas)
        self.every = every
        self.cost_in_steps: float | None = None  # one evaluation, in plain training steps
        self.tau = tau
        self.layers = layers
        self.profile = profile
        self._targeted: dict[LayerGroup, list[_Targeted]] = {}
        for layer in layers:
            value = reference.target(layer.group, layer.depth)
            if value is None:
                continue
            if mode is LossMode.DIRECTION:
                value = float(math.copysign(1.0, value)) if value != 0 else 0.0
            self._targeted.setdefault(layer.group, []).append(_Targeted(layer, value))
        # λ > 0 only for groups without a target would make every call return nothing
        active = {group for group, value in self.lambdas.items() if value > 0}
        if not self._targeted or (active and not active & set(self._targeted)):
            groups = sorted({str(layer.group) for layer in layers})
            curves = sorted(str(group) for group in reference.curves)
            raise LossConfigError(
                f"the reference {reference.label!r} has no curve for this model's layer groups "
                f"({', '.join(groups)}) given a λ > 0 (it has {' and '.join(curves) or 'no'} "
                "curves): use a reference of the same kind of network"
            )
        self._model_id = id(model)
        self._modules = module_map(model, layers)

    @property
    def groups(self) -> tuple[LayerGroup, ...]:
        """The groups that get a term: layers in the model, a curve in the reference, λ > 0."""
        return tuple(g for g in self._targeted if self.lambdas.get(g, 0.0) > 0)

    def _modules_of(self, model: nn.Module) -> dict[str, nn.Module]:
        if id(model) != self._model_id:
            self._modules = module_map(model, self.layers)
            self._model_id = id(model)
        return self._modules

    def __call__(self, model: nn.Module, step: int) -> dict[str, Tensor]:
        due = step % self.every == 0
        if self.amortise is Amortise.SCALE:
            if not due:
                return {}
            return {
                str(group): term * (self.lambdas[group] * self.every)
                for group, term in self.terms(model).items()
            }
        if due or not self._cache or id(model) != self._model_id:
            self._refresh(model)
        return {
            str(group): _ReplayGradient.apply(value, grads, *params)
            for group, (value, grads, params) in self._cache.items()
        }

    def _refresh(self, model: nn.Module) -> None:
        """Evaluate the weighted terms and keep each one's value and parameter gradients."""
        self._cache = {}
        for group, term in self.terms(model).items():
            weighted = term * self.lambdas[group]
            params = [p for p in self._group_params(group) if p.requires_grad]
            if not params or not weighted.requires_grad:
                continue
            grads = torch.autograd.grad(weighted, params, allow_unused=True)
            kept = [(p, g) for p, g in zip(params, grads, strict=True) if g is not None]
            self._cache[group] = (
                weighted.detach(),
                tuple(g for _, g in kept),
                [p for p, _ in kept],
            )

    def _group_params(self, group: LayerGroup) -> list[Tensor]:
        """The live parameters the ``group`` term can depend on: each layer's and its folded
        BatchNorm's own (``weight`` may be computed from others, e.g. a plugin's scale·W, so
        the parameters themselves are what gradients must reach)."""
        out: list[Tensor] = []
        for item in self._targeted.get(group, []):
            for name in (item.layer.name, item.layer.batchnorm):
                module = self._modules.get(name or "")
                if module is not None:
                    out.extend(module.parameters(recurse=False))
        return out

    def terms(self, model: nn.Module) -> dict[LayerGroup, Tensor]:
        """The unweighted L_dense / L_conv (float64) for the groups with λ > 0. Layers whose h_l
        is not finite (a zero singular value, e.g. a BatchNorm with γ = 0 folded in) are left
        out of the mean; a group with none left is left out."""
        modules = self._modules_of(model)
        out: dict[LayerGroup, Tensor] = {}
        device = next(p for m in modules.values() for p in m.parameters(recurse=False)).device
        with torch.autocast(device.type, enabled=False):
            for group, items in self._targeted.items():
                if self.lambdas.get(group, 0.0) <= 0:
                    continue
                penalties = []
                for item in items:
                    h = layer_quantity(item.layer, modules, self.quantity)
                    if not bool(torch.isfinite(h)):
                        continue
                    penalties.append(self._penalty(h, item.target))
                if penalties:
                    out[group] = torch.stack(penalties).mean()
        return out

    def _penalty(self, h: Tensor, target: float) -> Tensor:
        if self.mode is LossMode.TARGET:
            return (h - target) ** 2
        return -target * self.tau * torch.tanh(h / self.tau)

    @torch.no_grad()
    def layer_values(self, model: nn.Module) -> dict[str, float]:
        """h_l of every layer the loss acts on (for logging), by layer name."""
        modules = self._modules_of(model)
        return {
            layer.name: float(layer_quantity(layer, modules, self.quantity))
            for layer in self.layers
        }

    def layer_targets(self) -> dict[str, float]:
        """h*_l (target mode) or d_l (direction mode) of every layer the loss pulls on."""
        return {t.layer.name: t.target for items in self._targeted.values() for t in items}


def build_entropy_loss(
    model: nn.Module,
    *,
    mode: str = "target",
    lambda_dense: float,
    lambda_conv: float,
    reference: str | ReferencePattern | None = None,
    quantity: str = str(DEFAULT_QUANTITY),
    conv_method: str = "paper",
    every: int | str = DEFAULT_EVERY,
    example_input: Tensor | None = None,
    tau: float = 1.0,
    amortise: str = str(DEFAULT_AMORTISE),
    batch_size: int | None = None,
    strict: bool = False,
) -> EntropyLoss:
    """Entropy loss terms for ``model`` (DESIGN.md 2.5).

    ``reference``: a :class:`ReferencePattern`, or a family name / ``auto`` / checkpoint source
    resolved by ``entropy_probe.patterns.resolve_pattern`` (``None`` means ``auto``).
    ``every``/``amortise``: evaluate the terms every k-th step; between evaluations ``scale``
    gives nothing (and the evaluated term ×k), ``reuse`` re-applies the last gradient
    (:class:`Amortise`). ``example_input``: one batch
    (``(1, *input_shape)`` is enough) for the walk; optional for timm models, whose
    ``pretrained_cfg`` gives the input size. ``tau``: the tanh bound of ``direction`` mode.
    ``every="auto"`` (needs ``batch_size``) picks the smallest ``every`` that keeps the terms
    within 5% of the training step by the FLOP model of :mod:`entropy_probe.train.loss_cost`
    (``EntropyLoss.cost_in_steps`` keeps the estimate).

    A group (dense or conv) gets a term only where the model has analysable layers of it and
    the reference has a curve for it; :attr:`EntropyLoss.groups` lists those that do. By
    default a λ > 0 for any other group has no effect (model-agnostic code can pass both);
    ``strict=True`` (what ``entropy-probe finetune`` uses) refuses it with a
    :class:`LossConfigError` naming the reference and the groups it and the model have. With
    no group left at all it is refused either way.
    """
    loss_mode = _choice(LossMode, mode, "mode")
    qty = _choice(Quantity, quantity, "quantity")
    method = _choice(ConvMethod, conv_method, "conv_method")
    spread = _choice(Amortise, amortise, "amortise")
    if method is ConvMethod.BOTH:
        raise LossConfigError("conv_method must be 'paper' or 'spectral', not 'both'")
    if method is ConvMethod.SPECTRAL and qty in (Quantity.SHAPE_EXCESS, Quantity.RELATIVE_EXCESS):
        raise LossConfigError(
            f"{qty} has a random-init baseline for the paper method only: with "
            "conv_method='spectral' use quantity='spectral_shape' or 'delta_h_per_dim'"
        )
    for name, value in (("lambda_dense", lambda_dense), ("lambda_conv", lambda_conv)):
        if not math.isfinite(value) or value < 0:
            raise LossConfigError(f"{name} must be a finite number >= 0, got {value}")
    auto = every == "auto"
    if auto and (not isinstance(batch_size, int) or batch_size < 1):
        raise LossConfigError("every='auto' needs the training batch size: pass batch_size=")
    if not auto and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise LossConfigError(f"every must be an integer >= 1 or 'auto', got {every!r}")
    if not math.isfinite(tau) or tau <= 0:
        raise LossConfigError(f"tau must be a finite number > 0, got {tau}")

    example = example_input if example_input is not None else _example_from_config(model)
    layers, profile = find_loss_layers(model, example, method, qty)
    if qty is Quantity.RELATIVE_EXCESS:
        # as the comparison does: no term where |E[s]| is too small for the ratio to mean much
        layers = [
            layer
            for layer in layers
            if layer.shape_random is not None and relative_excess_defined(layer.shape_random)
        ]
    if not layers:
        raise UnsupportedLayerError(
            f"{type(model).__name__} has no analysable dense or conv layer: an entropy loss has "
            "nothing to act on"
        )
    pattern = _resolve_reference(reference, qty, profile)
    lambdas = {LayerGroup.DENSE: float(lambda_dense), LayerGroup.CONV: float(lambda_conv)}
    if strict:
        _check_groups(layers, pattern, lambdas)
    cost = _cost_in_steps(layers, profile, batch_size)
    if auto:
        every = auto_every(cost) if cost is not None else DEFAULT_EVERY
    assert isinstance(every, int)  # checked above, or just chosen
    loss = EntropyLoss(
        layers,
        pattern,
        mode=loss_mode,
        lambdas=lambdas,
        every=every,
        amortise=spread,
        tau=float(tau),
        model=model,
        profile=profile,
    )
    loss.cost_in_steps = cost
    return loss


def _check_groups(
    layers: list[LossLayer], pattern: ReferencePattern, lambdas: Mapping[LayerGroup, float]
) -> None:
    """Refuse a λ > 0 for a group the model has no analysable layer of, or the reference has
    no curve for (strict mode): that term would silently be nothing."""
    have = sorted({str(layer.group) for layer in layers})
    curves = sorted(str(g) for g in pattern.curves)
    label = pattern.label or "given"
    for group, value in lambdas.items():
        if value <= 0:
            continue
        asked = f"lambda_{group}={value:g} (--lambda-{group}) asks for a {group} term"
        if group not in {layer.group for layer in layers}:
            raise LossConfigError(
                f"{asked}, but the model has no analysable {group} layer (it has "
                f"{' and '.join(have)} layers): set lambda_{group} to 0"
            )
        if group not in pattern.curves:
            raise LossConfigError(
                f"{asked}, but the reference {label!r} has no {group} curve (it has "
                f"{' and '.join(curves) or 'no'} curves): choose a reference of a network "
                f"with {group} layers (entropy-probe reference list), or set lambda_{group} to 0"
            )


def _cost_in_steps(
    layers: list[LossLayer], profile: Profile, batch_size: int | None
) -> float | None:
    """One evaluation of the terms in plain steps (None without a batch size or positions)."""
    if batch_size is None:
        return None
    by_name = {row.name: row for row in profile.layers}
    terms = [(by_name[layer.name], layer.record.groups) for layer in layers]
    steps = [row for row in profile.analysed if layer_group(row.kind) is not None]
    try:
        return relative_cost(terms, steps, batch_size)
    except EntropyProbeError:
        return None


def _choice(enum: Any, value: Any, name: str) -> Any:
    try:
        return enum(str(value))
    except ValueError:
        valid = [str(v.value) for v in enum]
        close = difflib.get_close_matches(str(value), valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise LossConfigError(
            f"unknown {name} {value!r}{hint}; choose one of: {', '.join(valid)}"
        ) from None


def _example_from_config(model: nn.Module) -> Tensor:
    cfg = getattr(model, "pretrained_cfg", None)
    size = cfg.get("input_size") if isinstance(cfg, Mapping) else None
    if not size:
        raise LossConfigError(
            f"cannot tell the input shape of {type(model).__name__}: pass example_input= "
            "(one batch, e.g. x[:1])"
        )
    gen = torch.Generator().manual_seed(0)
    return torch.randn((1, *(int(s) for s in size)), generator=gen)


def _resolve_reference(
    reference: str | ReferencePattern | None, quantity: Quantity, profile: Profile
) -> ReferencePattern:
    if isinstance(reference, ReferencePattern):
        if reference.quantity is not quantity:
            raise LossConfigError(
                f"the reference pattern holds {reference.quantity}, the loss uses {quantity}: "
                f"build the pattern for {quantity} or pass quantity='{reference.quantity}'"
            )
        return reference
    from entropy_probe.patterns.select import resolve_pattern  # reference store: lazily

    return resolve_pattern(
        "auto" if reference is None else reference, quantity=quantity, profile=profile
    )
