"""Turn walked records into an entropy profile, batching the math across layers."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import torch
from torch import Tensor

from entropy_probe._progress import progress_bar
from entropy_probe.entropy import functional as F
from entropy_probe.entropy._buffers import BufferPool, thread_pool
from entropy_probe.entropy.rules import LayerRule, PaperTerms
from entropy_probe.enums import ConvMethod, LayerKind, Status
from entropy_probe.errors import (
    EntropyProbeError,
    ShapeError,
    UnknownNameError,
    UnsupportedLayerError,
)
from entropy_probe.walk.records import LayerRecord, Shape

PROFILE_SCHEMA = "entropy_probe.profile/1"
_BATCH_BYTES = 256 * 2**20  # float64 matrices decomposed in one batched call, at most


@dataclass(frozen=True)
class LayerEntropy:
    """The entropy change of one layer, in nats. Non-finite values are kept as floats here
    (−inf for singular layers) and become ``null`` in JSON.

    ``delta_h`` is the `paper` value (DESIGN.md 2.1–2.2) of the map the data really sees (an
    eval BatchNorm directly after the layer folded in); ``delta_h_raw`` the same without the
    fold. ``delta_h_per_dim`` is the mean log singular value, ``spectral_shape`` its scale-free
    part (DESIGN.md 2.7) and ``spectral_shape_random`` the shape an iid Gaussian weight of the
    same matrix structure has on average (the random-init baseline of the shape);
    ``delta_h_spectral`` the exact circular-boundary value.
    """

    name: str
    kind: str
    op_type: str
    status: Status
    reason: str = ""
    weight_shape: Shape | None = None
    in_shape: Shape | None = None
    out_shape: Shape | None = None
    positions: int | None = None
    delta_h: float | None = None
    delta_h_per_dim: float | None = None
    delta_h_spectral: float | None = None
    spectral_shape: float | None = None
    spectral_shape_random: float | None = None
    delta_h_raw: float | None = None
    folded_batchnorm: str | None = None
    folded_into: str | None = None
    calls: int = 1
    depth: float | None = None
    empirical: dict[str, Any] | None = None

    @property
    def analysed(self) -> bool:
        return self.status in (Status.OK, Status.SINGULAR)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in self.__dataclass_fields__:
            value = getattr(self, key)
            if isinstance(value, tuple):
                value = list(value)
            out[key] = _finite_or_none(value)
        out["status"] = str(self.status)
        return out


@dataclass(frozen=True)
class Profile:
    """The entropy profile of one model: per-layer records plus how they were computed."""

    source: str
    format: str
    input_shape: Shape | None
    layers: tuple[LayerEntropy, ...]
    method: ConvMethod = ConvMethod.PAPER
    device: str = "cpu"
    num_params: int = 0
    pretrained: bool = True
    elapsed_s: float = 0.0
    notes: tuple[str, ...] = ()
    schema: str = PROFILE_SCHEMA
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def analysed(self) -> list[LayerEntropy]:
        return [layer for layer in self.layers if layer.analysed]

    def total_delta_h(self) -> float | None:
        """Σ ΔH over analysed layers, BatchNorms folded into a layer counted once; −inf when a
        layer is singular; None when any counted layer's positions are unknown (a partial sum
        would pass for the whole)."""
        counted = [layer for layer in self.analysed if layer.folded_into is None]
        if not counted:
            return None
        if any(layer.status is Status.SINGULAR for layer in counted):
            return -math.inf
        values = [layer.delta_h for layer in counted]
        if any(v is None for v in values):
            return None
        return math.fsum(v for v in values if v is not None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "source": self.source,
            "format": self.format,
            "input_shape": list(self.input_shape) if self.input_shape else None,
            "method": str(self.method),
            "device": self.device,
            "num_params": self.num_params,
            "pretrained": self.pretrained,
            "elapsed_s": round(self.elapsed_s, 4),
            "notes": list(self.notes),
            "total_delta_h": _finite_or_none(self.total_delta_h()),
            "layers": [layer.to_dict() for layer in self.layers],
        }


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is a clear error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EntropyProbeError("--device cuda was asked for, but no CUDA device is available")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise EntropyProbeError(f"unknown device {device!r}: use auto, cpu or cuda") from exc
    if dev.type not in ("cpu", "cuda"):
        raise EntropyProbeError(f"device {device!r} is not supported: use auto, cpu or cuda")
    return dev


@dataclass
class _Pending:
    record: LayerRecord
    rule: LayerRule
    weight: Tensor | None
    terms: PaperTerms
    raw_terms: PaperTerms | None = None
    fold_scale: Tensor | None = None
    # the BatchNorm fold still to be multiplied into ``terms.matrices`` (LayerRule.fold_factor),
    # applied while they are copied into their float64 batch; None: nothing left to apply
    fold_factor: Tensor | None = None

    def effective_weight(self) -> Tensor | None:
        """The whole kernel with the BatchNorm folded in (only the spectral method needs it)."""
        if self.weight is None or self.fold_scale is None:
            return self.weight
        return self.rule.fold(self.record, self.weight, self.fold_scale)


def _per_matrix(factor: Tensor, terms: PaperTerms, record: LayerRecord) -> Tensor:
    """A rule's fold factor with one entry per matrix along the batch dimension (a view), so
    that it splits into batches with the matrices; any factor that broadcasts against them is
    allowed, as in the eager ``fold_terms``."""
    mats = terms.matrices
    assert mats is not None  # fold_factor refuses terms without matrices
    try:
        broadcast = torch.broadcast_shapes(factor.shape, mats.shape)  # type: ignore[no-untyped-call]
    except RuntimeError:
        broadcast = None
    if broadcast != mats.shape:
        raise ShapeError(
            f"the BatchNorm fold factor for layer {record.name!r} has shape "
            f"{tuple(factor.shape)}, which does not broadcast against its matrices "
            f"{tuple(mats.shape)}"
        )
    leading = factor.reshape((1,) * (mats.dim() - factor.dim()) + tuple(factor.shape))
    return leading.expand(mats.shape[0], *leading.shape[1:])


class _Item(NamedTuple):
    terms: PaperTerms
    key: int
    dtype: torch.dtype  # of the stored weights: its precision sets the rank tolerance
    fold_factor: Tensor | None = None  # still to be multiplied into terms.matrices


class _Piece(NamedTuple):
    key: int
    mats: Tensor  # (batch, rows, cols) in the wide orientation (rows ≤ cols), any dtype
    factor: Tensor | None  # broadcast against ``mats``, multiplied in while batching


def _evaluate_terms(items: Sequence[_Item], device: torch.device) -> dict[int, tuple[float, float]]:
    """Σ log σ and Σ σ² per item, with all matrices of one shape decomposed in one batched call.

    The dtype of an item's stored weights sets the rank tolerance, even when a BatchNorm fold
    makes the matrices float64; the result maps key → (sum_log, sum_sq).
    """
    by_shape: dict[tuple[int, int, torch.dtype], list[_Item]] = defaultdict(list)
    out: dict[int, list[float]] = {}
    for item in items:
        terms, key, dtype = item.terms, item.key, item.dtype
        out[key] = [0.0, 0.0]
        if terms.matrices is not None:
            mats = terms.matrices
            by_shape[(mats.shape[-2], mats.shape[-1], dtype)].append(item)
        else:
            assert terms.value is not None and terms.sq_norm is not None
            out[key] = [float(terms.value), float(terms.sq_norm)]
    chunks = [
        (dtype, chunk) for (m, n, dtype), group in by_shape.items() for chunk in _chunks(group)
    ]
    pool = thread_pool()
    for _, chunk in chunks:
        pool.reserve("batch", _stack_shape(chunk), F.precise_dtype(chunk[0].mats), device)
    with pool.active():
        for dtype, chunk in chunks:
            keys = [piece.key for piece in chunk for _ in range(piece.mats.shape[0])]
            batch = _stacked_precise(chunk, device, pool)
            volume = F.sum_log_and_sum_sq(batch, tolerance_dtype=dtype)
            logs, sqs = volume.sum_log.cpu().tolist(), volume.sum_sq.cpu().tolist()
            for key, log_value, sq in zip(keys, logs, sqs, strict=True):
                out[key][0] += log_value
                out[key][1] += sq
    return {key: (vals[0], vals[1]) for key, vals in out.items()}


def _chunks(group: Sequence[_Item]) -> list[list[_Piece]]:
    """A shape group's matrices cut into batches of at most ``_BATCH_BYTES`` of float64,
    each piece in the wide orientation (Aᴴ has A's singular values; the Gram product wants
    rows ≤ columns). Float64 copies of a whole group at once would cost 2× a large model's
    weights (vit_large: +2.4 GB); the batches bound the memory and keep the batching."""
    assert group[0].terms.matrices is not None
    m, n = group[0].terms.matrices.shape[-2:]
    per_batch = max(1, _BATCH_BYTES // (8 * m * n))
    batches: list[list[_Piece]] = [[]]
    filled = 0  # matrices in the last batch
    for item in group:
        assert item.terms.matrices is not None
        mats = torch.split(item.terms.matrices.detach(), per_batch)
        factors = (
            torch.split(item.fold_factor, per_batch)
            if item.fold_factor is not None
            else (None,) * len(mats)
        )
        for piece, factor in zip(mats, factors, strict=True):
            if filled + piece.shape[0] > per_batch:
                batches.append([])
                filled = 0
            if m > n:
                piece, factor = piece.mH, (factor.mT if factor is not None else None)
            batches[-1].append(_Piece(item.key, piece, factor))
            filled += piece.shape[0]
    return batches


def _stack_shape(pieces: Sequence[_Piece]) -> tuple[int, ...]:
    return (sum(p.mats.shape[0] for p in pieces), *pieces[0].mats.shape[1:])


def _stacked_precise(pieces: Sequence[_Piece], device: torch.device, pool: BufferPool) -> Tensor:
    """``pieces`` (batches of equal-shape matrices, any dtype, strided views allowed)
    concatenated as one contiguous float64 (complex128) batch on ``device``, in
    ``pool``: one copy per piece that converts dtype and layout at once (cat, then a
    conversion, was two passes), and the piece's BatchNorm factor multiplied in place (a fold
    written on its own, then copied here, was a third pass: 35 ms of ResNet-50's profile);
    none for a lone piece that already is one."""
    first = pieces[0].mats
    dtype = F.precise_dtype(first)
    if (
        len(pieces) == 1
        and pieces[0].factor is None
        and first.dtype == dtype
        and first.device == device
    ):
        return first.contiguous()
    out = pool.take("batch", _stack_shape(pieces), dtype, device)
    start = 0
    for piece in pieces:
        target = out[start : start + piece.mats.shape[0]]
        _copy_transposing_in_tiles(target, piece.mats)
        if piece.factor is not None:
            target.mul_(piece.factor.to(device))
        start += piece.mats.shape[0]
    return out


_TILE = 256  # columns per tile of a transposing copy


def _copy_transposing_in_tiles(dst: Tensor, src: Tensor) -> None:
    """``dst.copy_(src)``; where ``src`` is the transposed view of contiguous (tall) matrices,
    column tiles keep the reads contiguous and the writes short: 1.3–2× faster than one
    strided copy (ViT-B's 12 3072×768 fc1 weights: 63 → 32 ms)."""
    if src.is_contiguous() or not src.mT.is_contiguous() or src.shape[-1] <= _TILE:
        dst.copy_(src)
        return
    for start in range(0, src.shape[-1], _TILE):
        dst[..., start : start + _TILE].copy_(src[..., start : start + _TILE])


def compute_profile(
    records: Iterable[LayerRecord],
    rules: Any,
    *,
    source: str,
    format: str,
    input_shape: Shape | None,
    method: ConvMethod | str = ConvMethod.PAPER,
    device: str | torch.device = "auto",
    num_params: int = 0,
    pretrained: bool = True,
    notes: Sequence[str] = (),
    progress: bool = False,
) -> Profile:
    """Analyse walked ``records`` with the registered ``rules`` (a Registry of LayerRule).

    Equal-shape matrices of all layers are decomposed in one batched call on ``device``. With
    ``progress``, the spectral method (seconds per conv layer on a CPU) shows a bar on a
    terminal.
    """
    start = time.perf_counter()
    method = ConvMethod(method)
    dev = resolve_device(device)
    records = list(records)
    by_name = {r.name: r for r in records}
    pending: dict[int, _Pending] = {}
    finished: dict[int, LayerEntropy] = {}

    for index, record in enumerate(records):
        base = _base_entry(record)
        if record.status is not None and record.status not in (Status.OK, Status.SINGULAR):
            finished[index] = replace(base, status=record.status, reason=record.reason)
            continue
        try:
            rule: LayerRule = rules.get(record.kind)
            rule.check(record)
        except (UnknownNameError, UnsupportedLayerError) as exc:
            finished[index] = replace(base, status=Status.SKIPPED, reason=str(exc))
            continue
        unusable = _unusable(record, by_name)
        if unusable:
            finished[index] = replace(base, status=Status.SKIPPED, reason=unusable)
            continue
        weight = record.weight
        bn = (
            by_name[record.folded_batchnorm].batchnorm
            if record.folded_batchnorm in by_name
            else None
        )
        scale = F.batchnorm_scale(bn.running_var, bn.weight, bn.eps) if bn is not None else None
        try:
            terms = rule.paper_terms(record, weight if weight is not None else torch.empty(0))
            raw_terms = factor = None
            if scale is not None:  # fold the first-tap matrices only; the kernel lazily
                raw_terms = terms
                if type(rule).fold_terms is LayerRule.fold_terms:  # by fold_factor: deferred
                    factor = _per_matrix(rule.fold_factor(record, terms, scale), terms, record)
                else:
                    terms = rule.fold_terms(record, terms, scale)
        except EntropyProbeError as exc:
            finished[index] = replace(base, status=Status.SKIPPED, reason=str(exc))
            continue
        pending[index] = _Pending(record, rule, weight, terms, raw_terms, scale, factor)

    # The unfolded value: exact from the folded one when the BatchNorm scales the smaller side
    # of every matrix (det(S·G·S) = det(S)²·det(G) for the smaller Gram G). Where it scales the
    # larger side the unfolded matrices are decomposed too, batched with the folded ones of the
    # same shape; where the folded map turns out singular, in a second batched call.
    items = [
        _Item(p.terms, 2 * i, _stored_dtype(p.record), p.fold_factor) for i, p in pending.items()
    ]
    items += [
        _Item(p.raw_terms, 2 * i + 1, _stored_dtype(p.record))
        for i, p in pending.items()
        if p.raw_terms is not None and not _raw_derivable(p)
    ]
    values = _evaluate_terms(items, dev)
    raw_direct = []
    for i, p in pending.items():
        if p.raw_terms is None or 2 * i + 1 in values:
            continue
        folded_sum_log = values[2 * i][0]
        if math.isfinite(folded_sum_log):
            values[2 * i + 1] = (folded_sum_log - _log_abs_det_scale(p), math.nan)
        else:
            raw_direct.append(_Item(p.raw_terms, 2 * i + 1, _stored_dtype(p.record)))
    values.update(_evaluate_terms(raw_direct, dev))

    with_weight = sum(1 for p in pending.values() if p.weight is not None)
    spectral_bar = progress_bar(
        with_weight, progress and method is not ConvMethod.PAPER, "spectral", "layer"
    )
    # the bar is closed (its line cleared) on an error or Ctrl-C too
    with spectral_bar, thread_pool().active():
        for index, p in pending.items():
            spectral = None
            effective = p.effective_weight() if method is not ConvMethod.PAPER else None
            if effective is not None:
                value = p.rule.spectral_delta_h(p.record, effective.to(dev))
                spectral = float(value) * p.record.calls if value is not None else None
                spectral_bar.update(1)
            raw_sum_log = values[2 * index + 1][0] if p.raw_terms is not None else None
            finished[index] = _finished(p, *values[2 * index], raw_sum_log, spectral)

    layers = [finished[i] for i in range(len(records))]
    analysed = [
        i for i, layer in enumerate(layers) if layer.analysed and layer.kind != LayerKind.BATCHNORM
    ]
    for rank, i in enumerate(analysed):
        depth = rank / (len(analysed) - 1) if len(analysed) > 1 else 0.0
        layers[i] = replace(layers[i], depth=depth)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return Profile(
        source=source,
        format=format,
        input_shape=input_shape,
        layers=tuple(layers),
        method=method,
        device=str(dev),
        num_params=num_params,
        pretrained=pretrained,
        elapsed_s=time.perf_counter() - start,
        notes=tuple(notes),
    )


def _finished(
    p: _Pending,
    sum_log: float,
    sum_sq: float,
    raw_sum_log: float | None,
    spectral: float | None,
) -> LayerEntropy:
    """The record of one analysed layer from its evaluated sums (per position)."""
    positions = _positions(p.rule, p.record)
    per_dim = sum_log / p.terms.dims
    singular = math.isinf(sum_log) and sum_log < 0
    mats = p.terms.matrices
    shape_random = (
        F.gaussian_spectral_shape(mats.shape[-2], mats.shape[-1], math.prod(mats.shape[:-2]))
        if mats is not None
        else None
    )
    reason = p.record.reason
    if singular:
        reason = "a zero singular value: the layer discards information (ΔH = −inf)"
    elif p.record.folded_batchnorm:
        reason = f"eval BatchNorm {p.record.folded_batchnorm!r} folded in"
    elif p.record.folded_into:
        reason = f"folded into {p.record.folded_into!r} (counted there)"
    return replace(
        _base_entry(p.record),
        status=Status.SINGULAR if singular else Status.OK,
        reason=reason,
        positions=positions,
        delta_h=positions * sum_log if positions is not None else None,
        delta_h_per_dim=per_dim,
        delta_h_spectral=spectral,
        spectral_shape=(
            per_dim - 0.5 * math.log(sum_sq / p.terms.dims) if sum_sq > 0 else -math.inf
        ),
        spectral_shape_random=shape_random,
        delta_h_raw=(
            positions * raw_sum_log if raw_sum_log is not None and positions is not None else None
        ),
    )


def _raw_derivable(p: _Pending) -> bool:
    """Whether the unfolded Σ log σ follows from the folded one: the BatchNorm scales the
    smaller side of every matrix and no scale is zero (then Σ log σ gains Σ log|scale|)."""
    mats, scale = (p.raw_terms.matrices if p.raw_terms else None), p.fold_scale
    if mats is None or scale is None:
        return False
    m, n = mats.shape[-2], mats.shape[-1]
    scaled_side_is_smaller = n <= m if p.rule.transposed else m <= n
    return scaled_side_is_smaller and bool(torch.log(scale.abs()).isfinite().all())


def _log_abs_det_scale(p: _Pending) -> float:
    assert p.fold_scale is not None  # only called where _raw_derivable held
    return float(torch.log(p.fold_scale.abs()).sum())


def _positions(rule: LayerRule, record: LayerRecord) -> int | None:
    """Kernel applications over every call of the layer (a shared module's calls may see
    different shapes, e.g. an FPN head on several scales)."""
    if len(record.call_shapes) > 1:
        per_call = [
            rule.positions(replace(record, in_shape=i, out_shape=o)) for i, o in record.call_shapes
        ]
        return None if any(p is None for p in per_call) else sum(p for p in per_call if p)
    positions = rule.positions(record)
    return positions * record.calls if positions is not None else None


def _layer_tensors(
    record: LayerRecord, by_name: dict[str, LayerRecord]
) -> list[tuple[str, Tensor]]:
    """(label, tensor) of the layer's weight and of its (or its folded) BatchNorm's."""
    tensors: list[tuple[str, Tensor | None]] = [("the weight", record.weight)]
    bns = [record.batchnorm]
    if record.folded_batchnorm in by_name:
        bns.append(by_name[record.folded_batchnorm].batchnorm)
    for bn in bns:
        if bn is not None:
            tensors += [("the BatchNorm variance", bn.running_var), ("the BatchNorm γ", bn.weight)]
    return [(label, tensor) for label, tensor in tensors if tensor is not None]


def _unusable(record: LayerRecord, by_name: dict[str, LayerRecord]) -> str:
    """Why nothing can be computed from the layer's tensors, or '' when something can."""
    for label, tensor in _layer_tensors(record, by_name):
        if tensor.numel() == 0:
            return (
                f"{label} is empty (shape {tuple(tensor.shape)}): a layer without units "
                "has no entropy change to compute"
            )
        if tensor.is_floating_point() and not _all_finite(tensor):
            return (
                f"{label} holds NaN or Inf values: the checkpoint is corrupt or diverged; "
                "nothing can be computed from it"
            )
    return ""


def _all_finite(tensor: Tensor) -> bool:
    """No NaN or Inf in ``tensor``; a finite sum proves it in one vectorised pass (20× faster
    than ``isfinite().all()`` on CPU), and only a sum that overflowed needs the full check."""
    return math.isfinite(float(tensor.sum())) or bool(tensor.isfinite().all())


def _stored_dtype(record: LayerRecord) -> torch.dtype:
    if record.weight is not None and record.weight.is_floating_point():
        return record.weight.dtype
    if record.batchnorm is not None:
        return record.batchnorm.running_var.dtype
    return torch.float64


def _base_entry(record: LayerRecord) -> LayerEntropy:
    return LayerEntropy(
        name=record.name,
        kind=record.kind,
        op_type=record.op_type,
        status=record.status or Status.OK,
        reason=record.reason,
        weight_shape=record.weight_shape,
        in_shape=record.in_shape,
        out_shape=record.out_shape,
        folded_batchnorm=record.folded_batchnorm,
        folded_into=record.folded_into,
        calls=record.calls,
    )


def with_empirical(
    profile: Profile,
    empirical: Mapping[str, dict[str, Any]],
    rows: Sequence[tuple[str | None, LayerEntropy]] = (),
    *,
    notes: Sequence[str] = (),
    meta: Mapping[str, Any] | None = None,
) -> Profile:
    """``profile`` with measured entropies merged in (DESIGN.md 2.4).

    ``empirical`` maps a layer name to its ``empirical`` dict; ``rows`` are (anchor, row) for
    measured layers that are not records (activations, pooling, residual adds): each goes
    right after the layer named ``anchor`` (``None``: before the first layer; an anchor that
    is not a layer: at the end), rows of one anchor in the given order. Existing layers keep
    their order and every other field.
    """
    after: dict[str | None, list[LayerEntropy]] = defaultdict(list)
    for anchor, row in rows:
        after[anchor].append(row)
    merged: list[LayerEntropy] = list(after.pop(None, []))
    for layer in profile.layers:
        found = empirical.get(layer.name)
        merged.append(replace(layer, empirical=dict(found)) if found is not None else layer)
        merged.extend(after.pop(layer.name, []))
    for leftover in after.values():
        merged.extend(leftover)
    return replace(
        profile,
        layers=tuple(merged),
        notes=(*profile.notes, *notes),
        meta={**profile.meta, **(meta or {})},
    )
