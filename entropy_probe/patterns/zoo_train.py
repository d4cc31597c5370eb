"""Deterministic single-process training of one zoo member, with snapshots along the way.

``train_member(name, seed, out_dir=...)`` writes::

    <out_dir>/<name>/seed<k>/epoch0.safetensors       the random initialisation
    <out_dir>/<name>/seed<k>/epoch0.25.safetensors    partly trained (a quarter of an epoch)
    ...
    <out_dir>/<name>/seed<k>/epoch<E>.safetensors     the final, converged weights
    <out_dir>/<name>/seed<k>/metrics.json             held-out metric per snapshot and epoch,
                                                      baselines, time, versions, provenance

metrics.json is written last, so its presence with ``"complete": true`` marks a finished run
(resumable at member granularity). Every file is written atomically.

Reproducibility: the model init and the shuffling/augmentation come from ``seed`` alone (the
global RNG is forked and restored), the held-out split from a fixed split seed, and training
runs with deterministic algorithms on ``threads`` intra-op threads (1 by default; the thread
count changes float reduction order and hence the bits). On CUDA the forward runs under bf16
autocast; those runs are deterministic on one machine but do not match the CPU bits.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from entropy_probe._io import atomic_write_bytes, atomic_write_text
from entropy_probe.datasets import load_dataset, train_val_split
from entropy_probe.patterns.zoo import ZooSpec, get_spec

__all__ = [
    "METRICS_FILE",
    "MemberResult",
    "SnapshotRecord",
    "member_dir",
    "read_member_result",
    "snapshot_name",
    "train_member",
]

METRICS_FILE = "metrics.json"
SCHEMA_VERSION = 1
VAL_FRACTION = 0.2
SPLIT_SEED = 0  # every seed is scored on the same held-out split
_EVAL_BATCH = 500


@dataclass(frozen=True)
class SnapshotRecord:
    """One saved checkpoint: where in training it was taken and its held-out metric."""

    epoch: float
    step: int
    file: str  # file name inside the member's seed directory
    metric: float
    sha256: str


@dataclass(frozen=True)
class MemberResult:
    """What :func:`train_member` produced (or found already complete)."""

    name: str
    family: str
    seed: int
    epochs: int
    directory: Path
    metric: str
    direction: str
    snapshots: tuple[SnapshotRecord, ...]
    final_metric: float
    baselines: dict[str, float]
    train_seconds: float
    skipped: bool = False  # True when an existing complete run was reused

    @property
    def baseline(self) -> float:
        """The trivial baseline (majority class, mean image, or all-foreground)."""
        return self.baselines["trivial"]


# --------------------------------------------------------------------------------------------
# paths and resumption


def member_dir(out_dir: str | Path, name: str, seed: int) -> Path:
    return Path(out_dir) / name / f"seed{seed}"


def snapshot_name(epoch: float) -> str:
    """``epoch0``, ``epoch0.25``, ``epoch20`` (no trailing zeros)."""
    return f"epoch{epoch:g}"


def read_member_result(directory: str | Path) -> MemberResult | None:
    """The result recorded in ``directory/metrics.json``, or None when absent or incomplete."""
    path = Path(directory) / METRICS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("complete") is not True:
        return None
    snaps = tuple(
        SnapshotRecord(
            epoch=float(s["epoch"]),
            step=int(s["step"]),
            file=str(s["file"]),
            metric=float(s["metric"]),
            sha256=str(s["sha256"]),
        )
        for s in data["snapshots"]
    )
    if not all((Path(directory) / s.file).is_file() for s in snaps):
        return None
    return MemberResult(
        name=str(data["name"]),
        family=str(data["family"]),
        seed=int(data["seed"]),
        epochs=int(data["epochs"]),
        directory=Path(directory),
        metric=str(data["metric"]),
        direction=str(data["direction"]),
        snapshots=snaps,
        final_metric=float(data["final_metric"]),
        baselines={str(k): float(v) for k, v in data["baselines"].items()},
        train_seconds=float(data["train_seconds"]),
        skipped=True,
    )


# --------------------------------------------------------------------------------------------
# determinism


@contextlib.contextmanager
def _deterministic(threads: int, device: torch.device) -> Iterator[None]:
    """Deterministic algorithms on ``threads`` threads; global torch state restored after."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    if device.type == "cuda":  # cuBLAS needs this for deterministic matmuls
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    devices = [device] if device.type == "cuda" else []
    try:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True)
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
        torch.set_num_threads(old_threads)


# --------------------------------------------------------------------------------------------
# data


@dataclass(frozen=True)
class _Data:
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    split: dict[str, Any]
    provenance: str


def _region_split(n_tiles: int) -> tuple[Tensor, Tensor, str]:
    """Hold out the right quarter of a square tile grid (whole tile columns)."""
    cols = math.isqrt(n_tiles)
    if cols * cols != n_tiles or cols < 4:
        raise ValueError(f"expected a square grid of at least 4x4 tiles, got {n_tiles} tiles")
    held_cols = cols // 4
    col = torch.arange(n_tiles) % cols
    val = torch.nonzero(col >= cols - held_cols).flatten()
    train = torch.nonzero(col < cols - held_cols).flatten()
    how = (
        f"right quarter of the image held out (tile columns {cols - held_cols}-{cols - 1} "
        f"of 0-{cols - 1}, row-major tiles)"
    )
    return train, val, how


def _load_data(spec: ZooSpec, max_train: int | None, max_val: int | None) -> _Data:
    data = load_dataset(spec.dataset, **dict(spec.dataset_kwargs))
    if spec.task == "segment":
        train_idx, val_idx, how = _region_split(len(data))
        split: dict[str, Any] = {"kind": "region", "description": how}
    else:
        train_idx, val_idx = train_val_split(len(data), VAL_FRACTION, SPLIT_SEED)
        split = {
            "kind": "random",
            "description": f"entropy_probe.datasets.train_val_split({len(data)}, "
            f"val_fraction={VAL_FRACTION}, seed={SPLIT_SEED})",
        }
    train_idx, val_idx = train_idx[:max_train], val_idx[:max_val]
    split.update(num_train=len(train_idx), num_val=len(val_idx))
    if spec.task == "reconstruct":
        targets = data.inputs
    elif data.targets is None:  # pragma: no cover - every built-in dataset has targets
        raise ValueError(f"dataset {spec.dataset!r} has no targets for task {spec.task!r}")
    else:
        targets = data.targets
    return _Data(
        x_train=data.inputs[train_idx],
        y_train=targets[train_idx],
        x_val=data.inputs[val_idx],
        y_val=targets[val_idx],
        split=split,
        provenance=data.provenance,
    )


def _shift(x: Tensor, generator: torch.Generator, max_shift: int = 2) -> Tensor:
    """Random translation of each sample by up to ``max_shift`` pixels (zero fill)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator).tolist()
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator).tolist()
    return torch.stack(
        [padded[i, :, a : a + h, b : b + w] for i, (a, b) in enumerate(zip(dy, dx, strict=True))]
    )


def _dihedral(x: Tensor, y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """The same random rotation by k·90° and optional flip applied to each image and its mask."""
    ks = torch.randint(0, 4, (len(x),), generator=generator).tolist()
    flips = torch.randint(0, 2, (len(x),), generator=generator).tolist()
    xs, ys = [], []
    for i, (k, flip) in enumerate(zip(ks, flips, strict=True)):
        a, b = torch.rot90(x[i], k, (1, 2)), torch.rot90(y[i], k, (1, 2))
        if flip:
            a, b = a.flip(2), b.flip(2)
        xs.append(a)
        ys.append(b)
    return torch.stack(xs), torch.stack(ys)


# --------------------------------------------------------------------------------------------
# losses, metrics, baselines


def _loss(task: str, out: Tensor, target: Tensor) -> Tensor:
    out = out.float()
    if task == "classify":
        return F.cross_entropy(out, target)
    if task == "reconstruct":
        return F.mse_loss(out, target)
    prob = torch.sigmoid(out)
    inter = (prob * target).sum()
    soft_dice = (2 * inter + 1.0) / (prob.sum() + target.sum() + 1.0)
    return F.binary_cross_entropy_with_logits(out, target) + (1 - soft_dice)


def _dice(pred: Tensor, target: Tensor) -> float:
    inter = float((pred * target).sum())
    total = float(pred.sum() + target.sum())
    return 1.0 if total == 0 else 2 * inter / total


@torch.no_grad()
def _evaluate(model: nn.Module, task: str, x: Tensor, y: Tensor, amp: bool) -> float:
    """The held-out metric in eval mode: accuracy, per-pixel MSE, or global hard Dice."""
    was_training = model.training
    model.eval()
    try:
        outs = []
        for i in range(0, len(x), _EVAL_BATCH):
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
                outs.append(model(x[i : i + _EVAL_BATCH]).float())
        out = torch.cat(outs)
    finally:
        model.train(was_training)
    if task == "classify":
        return float((out.argmax(1) == y).float().mean())
    if task == "reconstruct":
        return float(F.mse_loss(out, y))
    return _dice((out > 0).float(), y)


def _baselines(task: str, data: _Data) -> dict[str, float]:
    """Trivial scores that a trained member must beat (computed on the same held-out split)."""
    if task == "classify":
        majority = torch.bincount(data.y_train).argmax()
        return {"trivial": float((data.y_val == majority).float().mean())}
    if task == "reconstruct":
        mean_image = data.x_train.mean(0, keepdim=True)
        return {"trivial": float(F.mse_loss(mean_image.expand_as(data.x_val), data.x_val))}
    # segment: all foreground, and the best global intensity threshold fitted on the train tiles
    all_fg = _dice(torch.ones_like(data.y_val), data.y_val)
    grid = torch.quantile(data.x_train.flatten()[::7].float(), torch.linspace(0.05, 0.95, 91))
    scores = [_dice((data.x_train > t).float(), data.y_train) for t in grid.tolist()]
    best = grid[int(torch.tensor(scores).argmax())]
    return {"trivial": all_fg, "threshold": _dice((data.x_val > best).float(), data.y_val)}


# --------------------------------------------------------------------------------------------
# training


def _save(model: nn.Module, path: Path) -> str:
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    # one metadata key only: several keys are written in random order (bits would differ)
    blob = save(state, metadata={"format": "pt"})
    atomic_write_bytes(path, blob)
    return hashlib.sha256(blob).hexdigest()


def _snapshot_steps(points: Sequence[float], epochs: int, steps_per_epoch: int) -> dict[int, float]:
    """Step index → epoch label, for 0, each point within range, and the final epoch.

    A point that rounds to the same step as an earlier one (possible on tiny data) is dropped.
    """
    bad = [p for p in points if not 0 <= p <= epochs]
    if bad:
        raise ValueError(f"snapshot epochs {bad} lie outside 0..{epochs}")
    steps: dict[int, float] = {}
    for p in sorted({0.0, *map(float, points), float(epochs)}):
        steps.setdefault(round(p * steps_per_epoch), p)
    return steps


def _versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "torch": torch.__version__}
    for mod in ("timm", "segmentation_models_pytorch", "safetensors"):
        module = sys.modules.get(mod)
        if module is not None:
            out[mod] = str(getattr(module, "__version__", "?"))
    return out


def train_member(
    name: str,
    seed: int,
    *,
    out_dir: str | Path,
    epochs: int | None = None,
    snapshot_epochs: Sequence[float] | None = None,
    threads: int = 1,
    device: str | torch.device = "cpu",
    max_train: int | None = None,
    max_val: int | None = None,
    resume: bool = True,
    log: Callable[[str], None] | None = None,
) -> MemberResult:
    """Train zoo member ``name`` from seed ``seed``; write its snapshots and metrics.json.

    ``epochs`` and ``snapshot_epochs`` default to the spec's; 0 and the final epoch are always
    snapshots. ``max_train``/``max_val`` cut the splits (for quick tests). With ``resume``, a
    directory that already holds a complete run of the same length is reused, not retrained.
    """
    spec = get_spec(name)
    epochs = spec.epochs if epochs is None else int(epochs)
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    points = spec.snapshot_epochs if snapshot_epochs is None else tuple(snapshot_epochs)
    points = tuple(p for p in points if p <= epochs) if snapshot_epochs is None else points
    directory = member_dir(out_dir, name, seed)
    if resume:
        done = read_member_result(directory)
        if done is not None and done.epochs == epochs:
            return done
    dev = torch.device(device)
    with _deterministic(threads, dev):
        return _train(spec, seed, epochs, points, directory, threads, dev, max_train, max_val, log)


def _train(
    spec: ZooSpec,
    seed: int,
    epochs: int,
    points: Sequence[float],
    directory: Path,
    threads: int,
    device: torch.device,
    max_train: int | None,
    max_val: int | None,
    log: Callable[[str], None] | None,
) -> MemberResult:
    start = time.perf_counter()
    data = _load_data(spec, max_train, max_val)
    baselines = _baselines(spec.task, data)
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    x_val, y_val = data.x_val.to(device), data.y_val.to(device)
    amp = device.type == "cuda"

    torch.manual_seed(seed)
    model = spec.build().to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    steps_per_epoch = -(-len(x_train) // spec.batch_size)
    total = epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    snap_steps = _snapshot_steps(points, epochs, steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    snapshots: list[SnapshotRecord] = []
    history: list[dict[str, float]] = []

    def snapshot(step: int) -> float:
        epoch = snap_steps[step]
        fname = f"{snapshot_name(epoch)}.safetensors"
        metric = _evaluate(model, spec.task, x_val, y_val, amp)
        digest = _save(model, directory / fname)
        snapshots.append(SnapshotRecord(epoch, step, fname, metric, digest))
        return metric

    step = 0
    snapshot(0)
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(len(x_train), generator=generator).to(device)
        loss_sum, epoch_metric = 0.0, math.nan
        for i in range(0, len(perm), spec.batch_size):
            idx = perm[i : i + spec.batch_size]
            xb, yb = x_train[idx], y_train[idx]
            if spec.augment == "shift2":
                xb = _shift(xb, generator)
                yb = xb if spec.task == "reconstruct" else yb
            elif spec.augment == "dihedral":
                xb, yb = _dihedral(xb, yb, generator)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = _loss(spec.task, model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            optimizer.step()
            scheduler.step()
            step += 1
            loss_sum += float(loss.detach()) * len(idx)
            if step in snap_steps:
                epoch_metric = snapshot(step)
        if step not in snap_steps:
            epoch_metric = _evaluate(model, spec.task, x_val, y_val, amp)
        history.append(
            {"epoch": epoch, "train_loss": loss_sum / len(x_train), spec.metric: epoch_metric}
        )
        if log is not None:
            log(
                f"{spec.name} seed{seed} epoch {epoch}/{epochs}  loss {loss_sum / len(x_train):.4f}"
                f"  held-out {spec.metric} {epoch_metric:.4f}  ({time.perf_counter() - start:.0f}s)"
            )

    seconds = time.perf_counter() - start
    final = snapshots[-1].metric
    record = {
        "schema_version": SCHEMA_VERSION,
        "complete": True,
        "name": spec.name,
        "family": spec.family,
        "task": spec.task,
        "architecture": spec.architecture,
        "input_shape": list(spec.input_shape),
        "num_params": sum(p.numel() for p in model.parameters()),
        "seed": seed,
        "epochs": epochs,
        "steps_per_epoch": steps_per_epoch,
        "metric": spec.metric,
        "direction": spec.direction,
        "final_metric": final,
        "baselines": baselines,
        "snapshots": [s.__dict__ for s in snapshots],
        "history": history,
        "train_seconds": round(seconds, 2),
        "threads": threads,
        "device": str(device),
        "amp": "bf16 autocast" if amp else "none",
        "versions": _versions(),
        "optimizer": f"AdamW lr={spec.lr} weight_decay={spec.weight_decay}, cosine decay per step "
        f"to 0 over {epochs} epochs, batch size {spec.batch_size}",
        "augmentation": spec.augment,
        "provenance": {
            "dataset": spec.dataset,
            "dataset_kwargs": dict(spec.dataset_kwargs),
            "dataset_source": data.provenance,
            "split": data.split,
            "init": "random (torch.manual_seed(seed)); no pretrained weights",
            "notes": spec.notes,
            "trainer": "entropy_probe.patterns.zoo_train.train_member",
        },
    }
    atomic_write_text(directory / METRICS_FILE, json.dumps(record, indent=2) + "\n")
    return MemberResult(
        name=spec.name,
        family=spec.family,
        seed=seed,
        epochs=epochs,
        directory=directory,
        metric=spec.metric,
        direction=spec.direction,
        snapshots=tuple(snapshots),
        final_metric=final,
        baselines=baselines,
        train_seconds=seconds,
    )
