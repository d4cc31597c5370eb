"""``fit``: the fine-tuning loop (in memory, or with checkpoints, resume, metrics and DDP).

Determinism: the model's own RNG use (dropout, new heads) comes from torch's global generator,
seeded from ``config.seed`` (+ rank) inside a forked RNG scope, so ``fit`` leaves the caller's
RNG state as it found it; the data order comes from one private ``torch.Generator`` seeded once
with ``config.seed``. Every checkpoint holds the model, optimizer, scheduler, grad scaler, the
python/numpy/torch/CUDA RNG states of every rank, the data-order generator, epoch, step and a
hash of the configuration, so ``resume=True`` after any interruption (SIGKILL included) ends
with bitwise the same weights as an uninterrupted run (CPU; on CUDA as far as the kernels are
deterministic).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from entropy_probe._io import atomic_write_text
from entropy_probe.errors import EntropyProbeError
from entropy_probe.train import checkpoint as ckpt
from entropy_probe.train.data import TaskData, as_task_data
from entropy_probe.train.distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_sum,
    broadcast_object,
    resolve_train_device,
    setup,
    shard,
)
from entropy_probe.train.tasks import MetricState, Task, get_task

__all__ = ["AuxLossFn", "EpochRecord", "FitConfig", "FitResult", "fit"]

AuxLossFn = Callable[[nn.Module, int], Mapping[str, Tensor]]
"""An auxiliary loss (``entropy_probe.train.losses.AuxiliaryLoss``): ``(model, step)`` →
named, already-weighted terms added to the task loss (``{}`` on skipped steps)."""

METRICS_NAME = "metrics.jsonl"
CONFIG_NAME = "run_config.json"
_OPTIMIZERS = ("adam", "adamw", "sgd")
_SCHEDULES = ("constant", "cosine", "onecycle")
_AMP = ("off", "bf16", "fp16")
# Fields that do not change the trained weights: a resume may change them.
_NOT_HASHED = ("device", "eval_every", "log_entropy")


@dataclass(frozen=True)
class FitConfig:
    """How to train. ``batch_size`` is per process (the global batch under torchrun is
    ``batch_size × world_size``); ``lr`` is the peak rate of ``onecycle``."""

    epochs: int = 1
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"  # adam | adamw | sgd
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant | cosine | onecycle (stepped per batch)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda[:N]
    amp: str = "off"  # off | bf16 | fp16 (CUDA only; fp16 uses a GradScaler)
    eval_every: int = 1  # evaluate on the held-out split every N epochs (and after the last)
    deterministic: bool = True  # torch deterministic algorithms (warn-only) during fit
    log_entropy: bool = False  # per-layer delta_h_per_dim / spectral_shape after each epoch

    def validate(self) -> None:
        """Raise a one-line :class:`EntropyProbeError` naming the first invalid field."""
        checks = [
            (isinstance(self.epochs, int) and self.epochs >= 1, "epochs must be >= 1"),
            (isinstance(self.batch_size, int) and self.batch_size >= 1, "batch_size must be >= 1"),
            (
                _finite(self.lr, 0.0, open_min=True),
                f"lr must be a finite number > 0, got {self.lr}",
            ),
            (self.optimizer in _OPTIMIZERS, f"optimizer must be one of {', '.join(_OPTIMIZERS)}"),
            (self.schedule in _SCHEDULES, f"schedule must be one of {', '.join(_SCHEDULES)}"),
            (self.amp in _AMP, f"amp must be one of {', '.join(_AMP)}"),
            (
                _finite(self.weight_decay, 0.0),
                f"weight_decay must be a finite number >= 0, got {self.weight_decay}",
            ),
            (
                _finite(self.momentum, 0.0),
                f"momentum must be a finite number >= 0, got {self.momentum}",
            ),
            (isinstance(self.eval_every, int) and self.eval_every >= 1, "eval_every must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise EntropyProbeError(f"invalid fit config: {message}")

    def check_device(self) -> torch.device:
        """Validate the config and resolve this process's device (``LOCAL_RANK`` under
        torchrun) without starting anything: a one-line :class:`EntropyProbeError` when the
        device is missing or ``amp`` is asked for off CUDA. ``fit`` and ``finetune`` call it
        before they create or write any file."""
        self.validate()
        device = resolve_train_device(self.device, int(os.environ.get("LOCAL_RANK", "0")))
        if self.amp != "off" and device.type != "cuda":
            raise EntropyProbeError(
                f"amp={self.amp} needs a CUDA device (this run is on {device.type}): leave amp "
                "off (--amp off) on a CPU"
            )
        return device


@dataclass
class EpochRecord:
    """One line of ``metrics.jsonl``."""

    epoch: int  # 1-based, completed epochs
    step: int  # optimizer steps so far
    metric_name: str
    metric: float | None  # on the held-out split (None when not evaluated this epoch)
    train_loss: float  # mean total loss (task + auxiliary terms) over the epoch's steps
    task_loss: float
    parts: dict[str, float]  # mean of each auxiliary term over the steps that returned it
    lr: float
    epoch_s: float
    elapsed_s: float
    entropy: dict[str, dict[str, float | None]] | None = None  # layer → values (log_entropy)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FitResult:
    history: list[EpochRecord]
    metric_name: str
    final_metric: float | None
    best_metric: float | None
    wall_s: float
    steps: int
    resumed_from: int | None = None  # the epoch a resumed run started after
    out_dir: Path | None = None
    checkpoint: Path | None = None
    metrics_path: Path | None = None
    notes: list[str] = field(default_factory=list)


def fit(
    model: nn.Module,
    task: str | Task,
    data: Any,
    config: FitConfig | None = None,
    *,
    aux_loss: AuxLossFn | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool | None = None,
    extra_config: Mapping[str, Any] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> FitResult:
    """Train ``model`` in place on ``data`` for ``task`` and return the per-epoch history.

    ``data``: a :class:`~entropy_probe.train.data.TaskData`, a built-in dataset name, a folder,
    a :class:`~entropy_probe.datasets.Dataset` or tensors (see
    :func:`~entropy_probe.train.data.as_task_data`). The model's head must already fit the task
    (:func:`~entropy_probe.train.tasks.adapt_head`). Without ``out_dir`` nothing is written.
    With it: ``checkpoint-eNNNN.pt`` after every epoch (the last 2 kept), ``metrics.jsonl``,
    ``run_config.json`` and a lock file while running. ``resume`` continues from the newest
    readable checkpoint there (a changed configuration is refused). ``extra_config`` is hashed
    with the configuration (e.g. the model source and loss weights). ``on_step(epoch, step)``
    is called after every optimizer step, ``on_epoch(record)`` after every epoch (rank 0).
    ``progress``: a tqdm bar per epoch (default: when stderr is a terminal; rank 0 only).
    The model's ``training`` flags are restored afterwards (an eval-mode model stays in eval).
    """
    cfg = config or FitConfig()
    cfg.check_device()
    the_task = get_task(task)
    task_data = as_task_data(data, the_task)
    modes = {name: m.training for name, m in model.named_modules()}
    try:
        with setup(cfg.device) as info:
            runner = _Runner(model, the_task, task_data, cfg, info, aux_loss, on_step, on_epoch)
            out = Path(out_dir) if out_dir is not None else None
            with _rng_scope(cfg.seed + info.rank, info.device), _deterministic(cfg, info.device):
                return runner.run(out, resume, progress, dict(extra_config or {}))
    finally:
        for name, module in model.named_modules():
            module.training = modes.get(name, module.training)


# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _rng_scope(seed: int, device: torch.device) -> Iterator[None]:
    """Seed python/numpy/torch for the run; restore the caller's states afterwards."""
    py, npy = random.getstate(), np.random.get_state()
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


@contextlib.contextmanager
def _deterministic(cfg: FitConfig, device: torch.device) -> Iterator[None]:
    if not cfg.deterministic:
        yield
        return
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark = before[2]
        torch.backends.cudnn.deterministic = before[3]


def _model_fingerprint(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, t in model.state_dict().items():
        c = t.detach().to("cpu").contiguous()
        digest.update(f"{name}{tuple(c.shape)}{c.dtype}".encode())
        if c.numel():
            digest.update(c.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _steps(samples: int, batch_size: int) -> int:
    """Batches per epoch: a last batch of one sample is merged into the one before it
    (BatchNorm cannot train on a single sample)."""
    steps = -(-samples // batch_size)
    return steps - 1 if steps > 1 and samples % batch_size == 1 else steps


def _constant(_: int) -> float:
    return 1.0


class _Runner:
    def __init__(
        self,
        model: nn.Module,
        task: Task,
        data: TaskData,
        cfg: FitConfig,
        info: DistInfo,
        aux_loss: AuxLossFn | None,
        on_step: Callable[[int, int], None] | None,
        on_epoch: Callable[[EpochRecord], None] | None = None,
    ) -> None:
        self.model, self.task, self.data, self.cfg, self.info = model, task, data, cfg, info
        self.aux_loss, self.on_step, self.on_epoch = aux_loss, on_step, on_epoch
        self.lock: ckpt.RunLock | None = None
        self.device = info.device
        per_rank = -(-len(data.train_x) // info.world_size)
        if per_rank == 0:
            raise EntropyProbeError("the training split is empty")
        self.steps_per_epoch = _steps(per_rank, cfg.batch_size)

    # -- setup ---------------------------------------------------------------------------

    def _config_record(self, extra: dict[str, Any], hashed: bool) -> dict[str, Any]:
        """What a resume must match. The data and model hashes (tens of ms on mnist5k) are
        only computed when there is an output directory to resume from."""
        return {
            "fit": {f.name: getattr(self.cfg, f.name) for f in fields(self.cfg)},
            "task": self.task.name,
            "data": self.data.description,
            "data_sha256": self.data.fingerprint() if hashed else None,
            "model_sha256": _model_fingerprint(self.model) if hashed else None,
            "world_size": self.info.world_size,
            "aux_loss": type(self.aux_loss).__name__ if self.aux_loss is not None else None,
            **extra,
        }

    @staticmethod
    def _hash(record: dict[str, Any]) -> str:
        hashed = {k: v for k, v in record.items() if k != "fit"}
        hashed["fit"] = {k: v for k, v in record["fit"].items() if k not in _NOT_HASHED}
        return hashlib.sha256(json.dumps(hashed, sort_keys=True, default=str).encode()).hexdigest()

    def _build(self) -> None:
        cfg = self.cfg
        self.model.to(self.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise EntropyProbeError("the model has no trainable parameters")
        self.optimizer: torch.optim.Optimizer
        if cfg.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(
                params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
            )
        elif cfg.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            self.optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        total = self.steps_per_epoch * cfg.epochs
        self.scheduler: torch.optim.lr_scheduler.LRScheduler
        if cfg.schedule == "cosine":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, total)
        elif cfg.schedule == "onecycle":
            self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
                self.optimizer, max_lr=cfg.lr, total_steps=total
            )
        else:
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _constant)
        self.scaler = torch.amp.GradScaler("cuda") if cfg.amp == "fp16" else None
        self.order = torch.Generator().manual_seed(cfg.seed)
        self.train_module: nn.Module = self.model
        if self.info.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_module = DistributedDataParallel(self.model, device_ids=ids)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.cfg.amp == "off":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.cfg.amp == "bf16" else torch.float16
        return torch.autocast(device_type="cuda", dtype=dtype)

    def _check_output(self) -> None:
        """One eval forward on two held-out samples: a clear error if the task cannot score it."""
        was = self.model.training
        x = self.data.val_x[:2].to(self.device)
        y = self.task.target_for(x, None if self.data.val_y is None else self.data.val_y[:2])
        self.model.eval()
        try:
            with torch.no_grad(), self._autocast():
                output = self.model(x)
        finally:
            self.model.train(was)
        if not isinstance(output, Tensor):
            raise EntropyProbeError(
                f"the model returns {type(output).__name__}, not one tensor: fit needs a model "
                "whose forward returns the task output"
            )
        self.task.check_output(output, y.to(self.device), self.data.num_classes)
        if self.task.note:
            self.notes.append(self.task.note)

    # -- checkpoints ---------------------------------------------------------------------

    def _state(self, epoch: int, step: int, history: list[EpochRecord], elapsed: float) -> Any:
        rngs = all_gather_objects(ckpt.get_rng_state(), self.info)
        return {
            "format": "entropy_probe.checkpoint/1",
            "epoch": epoch,
            "step": step,
            "config_hash": self.config_hash,
            "config": json.dumps(self.config_record, sort_keys=True, default=str),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rngs,
            "data_order": self.order.get_state(),
            "history": [r.to_dict() for r in history],
            "elapsed_s": elapsed,
            "num_threads": torch.get_num_threads(),
        }

    def _restore(self, payload: dict[str, Any]) -> None:
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        if self.scaler is not None and payload["scaler"] is not None:
            self.scaler.load_state_dict(payload["scaler"])
        self.order.set_state(payload["data_order"])
        rngs = payload["rng"]
        ckpt.set_rng_state(rngs[self.info.rank] if self.info.rank < len(rngs) else rngs[0])

    def _config_mismatch(self, payload: dict[str, Any], path: Path) -> str | None:
        if payload.get("config_hash") == self.config_hash:
            return None
        try:
            old = json.loads(payload.get("config", "{}"))
        except (TypeError, ValueError):
            old = {}
        changes = []
        for key in sorted(set(old) | set(self.config_record)):
            a, b = old.get(key), self.config_record.get(key)
            if key == "fit" and isinstance(a, dict) and isinstance(b, dict):
                changes += [
                    f"{k}: {a.get(k)!r} → {b.get(k)!r}"
                    for k in sorted(set(a) | set(b))
                    if k not in _NOT_HASHED and a.get(k) != b.get(k)
                ]
            elif a != b:
                changes.append(f"{key} differs")
        what = "; ".join(changes) or "configuration hash differs"
        return (
            f"cannot resume: {path} was written with a different configuration ({what}). "
            "Run with the same options, or choose another --out"
        )

    def _open_out(self, out: Path, resume: bool) -> dict[str, Any] | None:
        """Rank 0: lock, find the checkpoint to resume from, write run_config.json."""
        self.lock = ckpt.RunLock(out).acquire()
        if self.lock.note:
            self.notes.append(self.lock.note)
        existing = ckpt.list_checkpoints(out)
        if existing and not resume:
            raise EntropyProbeError(
                f"{out} already holds a run ({existing[0][1].name}): pass --resume to continue "
                "it, or choose another --out"
            )
        loaded = ckpt.load_latest(out) if resume else None
        if loaded is not None:
            self.notes += list(loaded.warnings)
            problem = self._config_mismatch(loaded.payload, loaded.path)
            if problem:
                raise EntropyProbeError(problem)
            self.notes.append(f"resumed from {loaded.path.name} (epoch {loaded.payload['epoch']})")
            threads = loaded.payload.get("num_threads")
            if threads is not None and threads != torch.get_num_threads():
                self.notes.append(
                    f"the checkpoint was written with {threads} torch threads and this run has "
                    f"{torch.get_num_threads()}: CPU float sums may round differently, so the "
                    "weights can differ in the last bits from an uninterrupted run"
                )
        elif resume:
            self.notes.append(f"--resume: no checkpoint in {out} yet, starting from scratch")
        atomic_write_text(
            ckpt.safe_path(out, CONFIG_NAME), json.dumps(self.config_record, indent=2) + "\n"
        )
        return loaded.payload if loaded is not None else None

    def _write_metrics(self, out: Path, history: list[EpochRecord]) -> Path:
        text = "".join(json.dumps(r.to_dict(), allow_nan=False) + "\n" for r in history)
        return atomic_write_text(ckpt.safe_path(out, METRICS_NAME), text)

    # -- the run -------------------------------------------------------------------------

    def run(
        self, out: Path | None, resume: bool, progress: bool | None, extra: dict[str, Any]
    ) -> FitResult:
        start = time.perf_counter()
        self.notes: list[str] = list(self.data.notes)
        self.config_record = self._config_record(extra, hashed=out is not None)
        self.config_hash = self._hash(self.config_record)
        self._build()
        self._check_output()
        try:
            payload: dict[str, Any] | None = None
            error: str | None = None
            if out is not None and self.info.is_main:
                try:
                    payload = self._open_out(out, resume)
                except EntropyProbeError as exc:
                    error = str(exc)
                    if not self.info.distributed:
                        raise
            error, payload = broadcast_object((error, payload), self.info)
            if error is not None:
                raise EntropyProbeError(error)
            history: list[EpochRecord] = []
            first, step, elapsed0 = 0, 0, 0.0
            if payload is not None:
                self._restore(payload)
                first, step = int(payload["epoch"]), int(payload["step"])
                history = [EpochRecord(**r) for r in payload["history"]]
                elapsed0 = float(payload["elapsed_s"])
            show = self.info.is_main and (sys.stderr.isatty() if progress is None else progress)
            last_ckpt: Path | None = None
            for epoch in range(first, self.cfg.epochs):
                t0 = time.perf_counter()
                step, sums = self._train_epoch(epoch, step, show)
                metric = None
                if (epoch + 1) % self.cfg.eval_every == 0 or epoch + 1 == self.cfg.epochs:
                    metric = self.evaluate()
                record = EpochRecord(
                    epoch=epoch + 1,
                    step=step,
                    metric_name=self.task.metric_name,
                    metric=metric,
                    train_loss=sums["loss"],
                    task_loss=sums["task"],
                    parts={k[5:]: v for k, v in sums.items() if k.startswith("part:")},
                    lr=float(self.optimizer.param_groups[0]["lr"]),
                    epoch_s=time.perf_counter() - t0,
                    elapsed_s=elapsed0 + time.perf_counter() - start,
                    entropy=self._entropy() if self.cfg.log_entropy and self.info.is_main else None,
                )
                history.append(record)
                if out is not None:
                    state = self._state(epoch + 1, step, history, record.elapsed_s)
                    if self.info.is_main:
                        last_ckpt = ckpt.save_checkpoint(out, epoch + 1, state)
                        self._write_metrics(out, history)
                if self.on_epoch is not None and self.info.is_main:
                    self.on_epoch(record)
            metrics_path = None
            if out is not None and self.info.is_main:
                if last_ckpt is None and (found := ckpt.list_checkpoints(out)):
                    last_ckpt = found[0][1]
                metrics_path = self._write_metrics(out, history)
            evaluated = [r.metric for r in history if r.metric is not None]
            best = None
            for value in evaluated:
                best = value if best is None else self.task.best(best, value)
            return FitResult(
                history=history,
                metric_name=self.task.metric_name,
                final_metric=evaluated[-1] if evaluated else None,
                best_metric=best,
                wall_s=time.perf_counter() - start,
                steps=step,
                resumed_from=first if payload is not None else None,
                out_dir=out,
                checkpoint=last_ckpt,
                metrics_path=metrics_path,
                notes=self.notes,
            )
        finally:
            if self.lock is not None:
                self.lock.release()

    def _batches(self) -> list[Tensor]:
        """This epoch's batches of this rank (the data-order generator advances once)."""
        order = shard(torch.randperm(len(self.data.train_x), generator=self.order), self.info)
        size = self.cfg.batch_size
        cuts = [order[i * size : (i + 1) * size] for i in range(self.steps_per_epoch)]
        cuts[-1] = order[(self.steps_per_epoch - 1) * size :]  # takes a 1-sample remainder
        return cuts

    def _train_epoch(self, epoch: int, step: int, show: bool) -> tuple[int, dict[str, float]]:
        self.model.train()
        batches = self._batches()
        keys = ["loss", "task"]
        totals: dict[str, float] = {"loss": 0.0, "task": 0.0}
        counts: dict[str, int] = {"loss": 0, "task": 0}
        bar = None
        if show:
            from tqdm import tqdm

            bar = tqdm(total=len(batches), desc=f"epoch {epoch + 1}", leave=False, file=sys.stderr)
        unwrapped = self.model
        for idx in batches:
            x = self.data.train_x[idx].to(self.device, non_blocking=True)
            y = self.task.target_for(
                x, None if self.data.train_y is None else self.data.train_y[idx].to(self.device)
            )
            self.optimizer.zero_grad(set_to_none=True)
            with self._autocast():
                output = self.train_module(x)
                task_loss = self.task.loss(output, y)
            parts = dict(self.aux_loss(unwrapped, step)) if self.aux_loss is not None else {}
            loss = task_loss
            for part in parts.values():
                loss = loss + part.float()
            if not bool(torch.isfinite(loss)):
                raise EntropyProbeError(
                    f"the loss became {float(loss.detach())} at epoch {epoch + 1}, step "
                    f"{step + 1} (task {float(task_loss.detach()):.4g}); try a lower --lr"
                )
            if self.scaler is not None:
                self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()  # type: ignore[no-untyped-call]
                self.optimizer.step()
            self.scheduler.step()
            step += 1
            for name, value in (("loss", loss), ("task", task_loss)):
                totals[name] += float(value.detach())
                counts[name] += 1
            for name, value in parts.items():
                key = f"part:{name}"
                if key not in totals:
                    keys.append(key)
                    totals[key], counts[key] = 0.0, 0
                totals[key] += float(value.detach())
                counts[key] += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
            if self.on_step is not None:
                self.on_step(epoch + 1, step)
        if bar is not None:
            bar.close()
        keys = sorted(keys)
        packed = torch.tensor(
            [totals[k] for k in keys] + [float(counts[k]) for k in keys], dtype=torch.float64
        )
        packed = all_reduce_sum(packed, self.info)
        n = len(keys)
        return step, {
            k: float(packed[i]) / max(float(packed[n + i]), 1.0) for i, k in enumerate(keys)
        }

    def evaluate(self) -> float:
        """The task metric on the held-out split (eval mode, the unwrapped model)."""
        was = self.model.training
        self.model.eval()
        state = MetricState()
        size = max(self.cfg.batch_size, 64)
        try:
            with torch.no_grad():
                for i in range(0, len(self.data.val_x), size):
                    x = self.data.val_x[i : i + size].to(self.device)
                    y = self.task.target_for(
                        x,
                        None if self.data.val_y is None else self.data.val_y[i : i + size],
                    ).to(self.device)
                    with self._autocast():
                        output = self.model(x)
                    self.task.update(state, output.float(), y)
        finally:
            self.model.train(was)
        return self.task.compute(state)

    def _entropy(self) -> dict[str, dict[str, float | None]]:
        from entropy_probe.api import profile_loaded
        from entropy_probe.loading import LoadedModel

        loaded = LoadedModel(
            source="fit", format="torch", module=self.model, input_shape=self.data.input_shape
        )
        from entropy_probe.patterns.pattern import Quantity, layer_value

        with torch.random.fork_rng(devices=[]):
            prof = profile_loaded(loaded, device=str(self.device), progress=False)
        # a BatchNorm folded into its layer is counted in that layer's values
        return {
            layer.name: {
                "delta_h_per_dim": _finite_or_none(layer.delta_h_per_dim),
                "spectral_shape": _finite_or_none(layer.spectral_shape),
                "shape_excess": layer_value(layer, Quantity.SHAPE_EXCESS),
            }
            for layer in prof.analysed
            if not layer.folded_into
        }


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _finite(value: object, minimum: float, *, open_min: bool = False) -> bool:
    """``value`` is a real, finite number >= ``minimum`` (> with ``open_min``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if not math.isfinite(value):
        return False
    return value > minimum if open_min else value >= minimum


def epoch_line(r: EpochRecord, epochs: int) -> str:
    """One human line for an epoch record (the CLI prints it)."""
    metric = f"{r.metric_name} {r.metric:.4f}" if r.metric is not None else "(not evaluated)"
    parts = "".join(f"  {k} {v:.4g}" for k, v in r.parts.items())
    return (
        f"epoch {r.epoch}/{epochs}  step {r.step}  loss {r.train_loss:.4f}{parts}  {metric}  "
        f"{r.epoch_s:.1f}s"
    )
