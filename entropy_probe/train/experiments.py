"""Building blocks of the entropy-guidance experiments (``scripts/guidance_experiment.py``).

An experiment trains one architecture under several *arms* (DESIGN.md 2.7): plain training,
the strongest unguided controls (a learning rate tuned on a validation split, the
entropy-preserving init rescale) and the entropy-guided variants, each with SGD+momentum and
Adam, over several seeds; every run is one :class:`RunRecord` (per-epoch held-out metric and
wall time), cached as JSON so an interrupted experiment resumes. :func:`summarise` turns the
records into epochs-to-target and final-metric medians with their spread.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from entropy_probe._io import atomic_write_text
from entropy_probe.datasets import train_val_split
from entropy_probe.errors import EntropyProbeError
from entropy_probe.patterns.pattern import ReferencePattern
from entropy_probe.train.data import TaskData
from entropy_probe.train.loop import EpochRecord, FitConfig, fit

__all__ = [
    "Arm",
    "ArmSummary",
    "Guidance",
    "RunRecord",
    "ScheduledLoss",
    "cached_run",
    "epochs_to_target",
    "pick_best",
    "render_table",
    "rescale_init",
    "run_arm",
    "seconds_to_target",
    "summarise",
    "three_way_split",
]

_GROUPS = ("both", "dense", "conv")
_SCHEDULES = ("constant", "decay")


@dataclass(frozen=True)
class Guidance:
    """Which entropy terms a guided arm adds (the options of ``build_entropy_loss``).

    ``groups``: which layer groups get λ (``both``, ``dense`` or ``conv``). ``schedule``:
    ``constant`` λ, or ``decay`` (λ falls linearly to 0 over the run). ``reference``: a family
    name, ``auto``, or the name of a pattern passed to :func:`run_arm` in ``patterns``.
    """

    mode: str = "target"
    quantity: str = "shape_excess"
    reference: str = "auto"
    groups: str = "both"
    every: int = 32
    schedule: str = "constant"

    def __post_init__(self) -> None:
        if self.groups not in _GROUPS:
            raise EntropyProbeError(f"groups must be one of {', '.join(_GROUPS)}")
        if self.schedule not in _SCHEDULES:
            raise EntropyProbeError(f"schedule must be one of {', '.join(_SCHEDULES)}")

    def label(self) -> str:
        default = Guidance()
        parts = [
            f"{name}={getattr(self, name)}"
            for name in ("mode", "quantity", "reference", "groups", "every", "schedule")
            if getattr(self, name) != getattr(default, name)
        ]
        return ",".join(parts) or "default"


@dataclass(frozen=True)
class Arm:
    """One training configuration: optimizer, learning rate, λ (0 = unguided), guidance terms
    and whether the init is rescaled to ``delta_h_per_dim`` = 0 per layer."""

    name: str
    optimizer: str
    lr: float
    lam: float = 0.0
    guidance: Guidance | None = None
    init_rescale: bool = False

    def key(self, split: str, seed: int) -> str:
        """A file-name-safe identifier of this arm's run on ``split`` with ``seed``."""
        guide = self.guidance.label() if self.guidance is not None and self.lam > 0 else "none"
        text = (
            f"{split}_{self.optimizer}_lr{self.lr:g}_lam{self.lam:g}_{guide}"
            f"_rescale{int(self.init_rescale)}_s{seed}"
        )
        return "".join(c if c.isalnum() or c in "-_.=" else "-" for c in text)


@dataclass
class RunRecord:
    """One training run: its arm and the held-out metric and elapsed time after every epoch."""

    task: str
    split: str  # "val" (tuning) or "test" (reported)
    arm: str
    optimizer: str
    seed: int
    lr: float
    lam: float
    guidance: dict[str, Any] | None
    init_rescale: bool
    metric_name: str
    higher_is_better: bool
    metrics: list[float | None]
    elapsed_s: list[float]
    wall_s: float
    diverged: str | None = None
    rescale_factors: dict[str, float] = field(default_factory=dict)

    @property
    def final(self) -> float | None:
        """The last epoch's metric; None when the run diverged before the end."""
        return None if self.diverged else (self.metrics[-1] if self.metrics else None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunRecord:
        return cls(**dict(data))


def three_way_split(
    n: int, *, test_fraction: float = 0.2, val_fraction: float = 0.2, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """(train, val, test) index tensors: ``test_fraction`` of ``range(n)`` held out for the
    reported numbers, then ``val_fraction`` of the rest for tuning (both by
    :func:`~entropy_probe.datasets.train_val_split`, seeds ``seed`` and ``seed + 1``)."""
    rest, test = train_val_split(n, test_fraction, seed)
    train_pos, val_pos = train_val_split(len(rest), val_fraction, seed + 1)
    return rest[train_pos], rest[val_pos], test


def rescale_init(model: nn.Module, input_shape: Sequence[int]) -> dict[str, float]:
    """Multiply each analysed dense/conv layer's weight by exp(−delta_h_per_dim), so that the
    profile's ``delta_h_per_dim`` (of the BatchNorm-folded map) becomes 0; return the factors.

    The values come from :func:`entropy_probe.api.profile_loaded` (every singular value of the
    layer's map scales with its weight, so one multiplication zeroes the mean log σ).
    """
    from entropy_probe.api import profile_loaded
    from entropy_probe.enums import Status
    from entropy_probe.loading import LoadedModel
    from entropy_probe.patterns.pattern import layer_group

    loaded = LoadedModel(
        source="rescale", format="torch", module=model, input_shape=tuple(input_shape)
    )
    with torch.random.fork_rng(devices=[]):
        profile = profile_loaded(loaded, device="cpu", progress=False)
    factors: dict[str, float] = {}
    for layer in profile.layers:
        value = layer.delta_h_per_dim
        if layer_group(layer.kind) is None or layer.status is not Status.OK or value is None:
            continue
        if not math.isfinite(value):
            continue
        weight = getattr(model.get_submodule(layer.name), "weight", None)
        if not isinstance(weight, Tensor):
            continue
        factor = math.exp(-value)
        with torch.no_grad():
            weight.mul_(factor)
        factors[layer.name] = factor
    return factors


def epochs_to_target(
    metrics: Sequence[float | None], target: float, higher_is_better: bool
) -> int | None:
    """The first epoch (1-based) whose metric reaches ``target``; None if none does."""
    for epoch, value in enumerate(metrics, start=1):
        if value is None or not math.isfinite(value):
            continue
        if (value >= target) if higher_is_better else (value <= target):
            return epoch
    return None


def seconds_to_target(
    metrics: Sequence[float | None],
    elapsed_s: Sequence[float],
    target: float,
    higher_is_better: bool,
) -> float | None:
    """Wall time at the end of the first epoch that reaches ``target``; None if none does."""
    epoch = epochs_to_target(metrics, target, higher_is_better)
    return None if epoch is None else float(elapsed_s[epoch - 1])


class ScheduledLoss:
    """An auxiliary loss whose terms are multiplied by a schedule factor of the step (the
    replayed gradients of ``amortise="reuse"`` scale with it too)."""

    def __init__(self, inner: Callable[[nn.Module, int], Mapping[str, Tensor]], total: int):
        self.inner, self.total = inner, max(int(total), 1)

    def factor(self, step: int) -> float:
        return max(0.0, 1.0 - step / self.total)

    def __call__(self, model: nn.Module, step: int) -> dict[str, Tensor]:
        scale = self.factor(step)
        return {k: v * scale for k, v in self.inner(model, step).items()}


def _steps_per_epoch(samples: int, batch_size: int) -> int:
    steps = -(-samples // batch_size)
    return steps - 1 if steps > 1 and samples % batch_size == 1 else steps


def run_arm(
    build: Callable[[], nn.Module],
    task: str,
    data: TaskData,
    arm: Arm,
    *,
    seed: int,
    epochs: int,
    batch_size: int,
    split: str,
    patterns: Mapping[str, ReferencePattern] | None = None,
    device: str = "cpu",
    on_model: Callable[[nn.Module], None] | None = None,
) -> RunRecord:
    """Build a model (under ``torch.manual_seed(seed)``), apply the arm and train it with
    :func:`~entropy_probe.train.loop.fit` on ``data`` (whose held-out split is ``split``).
    A run whose loss becomes non-finite is recorded as diverged, with the epochs it finished.
    ``on_model`` receives the trained model (e.g. to take its pattern as a reference)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build()
    factors = rescale_init(model, data.input_shape) if arm.init_rescale else {}
    aux = None
    guidance = arm.guidance if arm.lam > 0 else None
    if guidance is not None:
        from entropy_probe.train.losses import build_entropy_loss

        reference: Any = (patterns or {}).get(guidance.reference, guidance.reference)
        loss = build_entropy_loss(
            model,
            mode=guidance.mode,
            quantity=guidance.quantity,
            lambda_dense=arm.lam if guidance.groups in ("both", "dense") else 0.0,
            lambda_conv=arm.lam if guidance.groups in ("both", "conv") else 0.0,
            reference=reference,
            every=guidance.every,
            example_input=data.train_x[:1],
        )
        total = epochs * _steps_per_epoch(len(data.train_x), batch_size)
        aux = ScheduledLoss(loss, total) if guidance.schedule == "decay" else loss
    history: list[EpochRecord] = []
    config = FitConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=arm.lr,
        optimizer=arm.optimizer,
        seed=seed,
        device=device,
    )
    diverged = None
    start = time.perf_counter()
    try:
        fit(model, task, data, config, aux_loss=aux, progress=False, on_epoch=history.append)
    except EntropyProbeError as exc:
        if "the loss became" not in str(exc):
            raise
        diverged = str(exc)
    wall = time.perf_counter() - start
    if on_model is not None and diverged is None:
        on_model(model)
    from entropy_probe.train.tasks import get_task

    the_task = get_task(task)
    return RunRecord(
        task=task,
        split=split,
        arm=arm.name,
        optimizer=arm.optimizer,
        seed=seed,
        lr=arm.lr,
        lam=arm.lam,
        guidance=asdict(guidance) if guidance is not None else None,
        init_rescale=arm.init_rescale,
        metric_name=the_task.metric_name,
        higher_is_better=the_task.higher_is_better,
        metrics=[r.metric for r in history],
        elapsed_s=[r.elapsed_s for r in history],
        wall_s=wall,
        diverged=diverged,
        rescale_factors=factors,
    )


def cached_run(path: Path, run: Callable[[], RunRecord], *, arm_name: str) -> RunRecord:
    """The record stored at ``path`` (JSON), or ``run()``'s, stored there first. The arm name
    is set from ``arm_name`` (the same run may serve several arms, e.g. plain and lr-tuned)."""
    if path.is_file():
        record = RunRecord.from_dict(json.loads(path.read_text()))
    else:
        record = run()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(record.to_dict(), indent=1) + "\n")
    return replace(record, arm=arm_name)


def _score(record: RunRecord) -> float:
    """Mean held-out metric over the epochs (a diverged run scores worst)."""
    values = [v for v in record.metrics if v is not None and math.isfinite(v)]
    if record.diverged or not values:
        return -math.inf
    mean = math.fsum(values) / len(values)
    return mean if record.higher_is_better else -mean


def pick_best(records: Iterable[RunRecord]) -> RunRecord:
    """The record with the best mean validation metric over its epochs (rewards both speed
    and the final value; ties go to the first)."""
    items = list(records)
    if not items:
        raise EntropyProbeError("nothing to pick from")
    return max(items, key=_score)


@dataclass
class ArmSummary:
    """Medians and spread of one (arm, optimizer) over its seeds."""

    arm: str
    optimizer: str
    lr: float
    lam: float
    seeds: int
    reached: int
    epochs_median: float | None  # over all seeds, "not reached" counted as epochs + 1
    epochs_min: int | None
    epochs_max: int | None
    seconds_median: float | None  # over the seeds that reached the target
    final_median: float | None
    final_min: float | None
    final_max: float | None
    wall_median: float
    diverged: int


def summarise(records: Iterable[RunRecord], target: float) -> list[ArmSummary]:
    """One :class:`ArmSummary` per (arm, optimizer), in first-seen order."""
    groups: dict[tuple[str, str], list[RunRecord]] = {}
    for record in records:
        groups.setdefault((record.arm, record.optimizer), []).append(record)
    out = []
    for (arm, optimizer), runs in groups.items():
        hib = runs[0].higher_is_better
        epochs = [epochs_to_target(r.metrics, target, hib) for r in runs]
        budget = max(len(r.metrics) for r in runs) if runs else 0
        budget = max([budget, *(len(r.elapsed_s) for r in runs)])
        counted = [e if e is not None else budget + 1 for e in epochs]
        reached = [e for e in epochs if e is not None]
        seconds = [
            s
            for r in runs
            if (s := seconds_to_target(r.metrics, r.elapsed_s, target, hib)) is not None
        ]
        finals = [f for r in runs if (f := r.final) is not None]
        out.append(
            ArmSummary(
                arm=arm,
                optimizer=optimizer,
                lr=runs[0].lr,
                lam=runs[0].lam,
                seeds=len(runs),
                reached=len(reached),
                epochs_median=float(statistics.median(counted)) if counted else None,
                epochs_min=min(counted) if counted else None,
                epochs_max=max(counted) if counted else None,
                seconds_median=float(statistics.median(seconds)) if seconds else None,
                final_median=float(statistics.median(finals)) if finals else None,
                final_min=min(finals) if finals else None,
                final_max=max(finals) if finals else None,
                wall_median=float(statistics.median(r.wall_s for r in runs)),
                diverged=sum(1 for r in runs if r.diverged),
            )
        )
    return out


def _epochs_cell(s: ArmSummary, budget: int) -> str:
    if s.epochs_median is None or s.epochs_min is None or s.epochs_max is None:
        return "—"

    def show(v: float) -> str:
        return f">{budget}" if v > budget else f"{v:g}"

    return f"{show(s.epochs_median)} ({show(s.epochs_min)}–{show(s.epochs_max)})"


def render_table(summaries: Sequence[ArmSummary], *, budget: int, digits: int = 4) -> str:
    """A markdown table of :func:`summarise`'s rows (``budget``: the epochs every run had)."""
    head = (
        "| arm | optimizer | lr | λ | reached | epochs to target, median (min–max) | "
        "s to target, median | final, median (min–max) | run s, median |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for s in summaries:
        final = (
            f"{s.final_median:.{digits}f} ({s.final_min:.{digits}f}–{s.final_max:.{digits}f})"
            if s.final_median is not None and s.final_min is not None and s.final_max is not None
            else "—"
        )
        secs = f"{s.seconds_median:.1f}" if s.seconds_median is not None else "—"
        div = f", {s.diverged} diverged" if s.diverged else ""
        rows.append(
            f"| {s.arm} | {s.optimizer} | {s.lr:g} | {s.lam:g} | {s.reached}/{s.seeds}{div} | "
            f"{_epochs_cell(s, budget)} | {secs} | {final} | {s.wall_median:.1f} |"
        )
    return head + "\n".join(rows) + "\n"
