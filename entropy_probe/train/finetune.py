"""``finetune``: load a checkpoint → adapt it to the data → ``fit`` → save it in its own format.

Outputs in ``out_dir`` (rank 0 only): ``model.safetensors`` (always), the model in its input
format (a timm or SMP ``config.json`` beside the weights, so ``OUT`` loads back as a source;
``model.onnx`` for ONNX input; ``model.pt`` state dict for a torch module), ``profile_before.json``
and ``profile_after.json`` (schema ``entropy_probe.profile/1``), ``metrics.jsonl``, the
checkpoints, ``run_config.json`` and ``finetune.json`` (what was done, with every note).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from entropy_probe._io import atomic_write_bytes, atomic_write_text
from entropy_probe.errors import EntropyProbeError, SourceError, first_line
from entropy_probe.loading import DEFAULT_SOURCE, LoadedModel, LoadOptions, load_model
from entropy_probe.train.checkpoint import RunLock, list_checkpoints, safe_path
from entropy_probe.train.data import TaskData, as_task_data, match_input
from entropy_probe.train.loop import (
    CONFIG_NAME,
    METRICS_NAME,
    EpochRecord,
    FitConfig,
    FitResult,
    fit,
)
from entropy_probe.train.onnx_io import export_onnx, onnx_fixed_size, onnx_to_torch
from entropy_probe.train.tasks import (
    Task,
    TaskError,
    adapt_head,
    current_outputs,
    get_task,
    output_channels_for,
)

__all__ = ["FinetuneResult", "finetune", "onnx_fixed_size", "onnx_to_torch", "prepare_model"]


@dataclass
class FinetuneResult:
    fit: FitResult
    source: str
    format: str
    out_dir: Path
    files: dict[str, Path]
    notes: list[str] = field(default_factory=list)


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _module_of(loaded: LoadedModel) -> nn.Module:
    if loaded.module is not None:
        return loaded.module
    if loaded.onnx_model is not None:
        return onnx_to_torch(loaded)
    raise SourceError(
        f"{loaded.source} is a bare state dict without an architecture, so it cannot be "
        "trained: name the architecture, e.g. timm:resnet18 --weights FILE or "
        "smp:Unet/resnet34 --weights FILE"
    )


def _try_forward(module: nn.Module, x: torch.Tensor) -> tuple[Any, str | None]:
    """(output, None) if ``module`` accepts ``x`` (eval, no grad), else (None, the first line
    of the error)."""
    was = module.training
    module.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return module(x), None
    except Exception as exc:  # any model error: reported, never hidden
        return None, first_line(exc)
    finally:
        module.train(was)


def prepare_model(
    module: nn.Module,
    task: Task,
    data: TaskData,
    *,
    input_shape: tuple[int, ...] | None = None,
    normalise: tuple[Any, Any] | None = None,
    seed: int = 0,
    fixed_size: tuple[int | None, int | None] | None = None,
) -> tuple[TaskData, list[str]]:
    """Fit ``data`` to ``module`` and ``module``'s head to the data; return the data and notes.

    Channels follow ``input_shape`` (grey → RGB by repetition, RGB → grey by luma). The data's
    H×W is resized to ``fixed_size`` (H, W; ``None`` for a free dim) when the model declares
    one (an ONNX input whose export fixed its size); otherwise it is kept when the model
    accepts it, else resized to ``input_shape``. The head is replaced when its output count
    does not fit (its init is seeded with ``seed``).
    """
    notes: list[str] = []
    channels = input_shape[0] if input_shape is not None and len(input_shape) == 3 else None
    data = match_input(data, channels, None, normalise)
    if fixed_size is not None and data.val_x.dim() == 4:
        height, width = (int(s) for s in data.val_x.shape[-2:])
        size = (fixed_size[0] or height, fixed_size[1] or width)
        if size != (height, width):
            data = match_input(data, None, size)
    x = data.val_x[:2]
    output, problem = _try_forward(module, x)
    if problem is not None and input_shape is not None and len(input_shape) == 3:
        size = (int(input_shape[1]), int(input_shape[2]))
        if tuple(x.shape[-2:]) != size:
            data = match_input(data, None, size)
            output, problem = _try_forward(module, data.val_x[:2])
    if problem is not None:
        raise TaskError(
            f"the model cannot run on the data shaped {tuple(data.val_x.shape[1:])}: {problem}"
        )
    if not isinstance(output, torch.Tensor):
        raise TaskError(
            f"the model returns {type(output).__name__}, not one tensor: fine-tuning needs a "
            "model whose forward returns the task output"
        )
    # The kind of output (and, for segment, its size) must fit before a head is swapped;
    # the class count is what adapt_head fixes, so it is not checked here.
    y = task.target_for(data.val_x[:2], None if data.val_y is None else data.val_y[:2])
    task.check_output(output, y, 0)
    want = output_channels_for(task, data.num_classes, current_outputs(module, task))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        change = adapt_head(module, task, want)
    if change is not None:
        notes.append(change.describe())
    return data, notes


def _jsonable(value: Any) -> Any:
    return json.loads(
        json.dumps(value, default=lambda o: list(o) if isinstance(o, tuple) else str(o))
    )


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in module.state_dict().items()}


def _save_outputs(
    loaded: LoadedModel, module: nn.Module, data: TaskData, out: Path
) -> tuple[dict[str, Path], list[str]]:
    from safetensors.torch import save as safetensors_bytes

    files: dict[str, Path] = {}
    notes: list[str] = []
    state = _state(module)
    files["safetensors"] = atomic_write_bytes(
        safe_path(out, "model.safetensors"), safetensors_bytes(state)
    )
    fmt = loaded.format
    if fmt == "timm":
        cfg = dict(getattr(module, "pretrained_cfg", None) or {})
        cfg["input_size"] = list(data.input_shape)
        config = {
            "architecture": loaded.meta.get("architecture"),
            "num_classes": int(getattr(module, "num_classes", 0)),
            "in_chans": int(data.input_shape[0]),
            "pretrained_cfg": _jsonable(cfg),
        }
        files["config"] = atomic_write_text(
            safe_path(out, "config.json"), json.dumps(config, indent=2) + "\n"
        )
        notes.append(f"timm directory: `entropy-probe profile {out}` loads it back")
    elif fmt == "smp":
        init = dict(getattr(module, "_hub_mixin_config", None) or {})
        head = getattr(module, "segmentation_head", None)
        if isinstance(head, nn.Sequential) and isinstance(head[0], nn.Conv2d):
            init["classes"] = int(head[0].out_channels)
        init["in_channels"] = int(data.input_shape[0])
        init["encoder_weights"] = None
        config = {"_model_class": type(module).__name__, **_jsonable(init)}
        files["config"] = atomic_write_text(
            safe_path(out, "config.json"), json.dumps(config, indent=2) + "\n"
        )
        notes.append(f"SMP directory: `entropy-probe profile {out}` loads it back")
    elif fmt == "onnx":
        files["onnx"] = export_onnx(loaded, module, data, safe_path(out, "model.onnx"))
    elif fmt == "torch":
        buffer = io.BytesIO()
        torch.save(state, buffer)
        files["torch"] = atomic_write_bytes(safe_path(out, "model.pt"), buffer.getvalue())
        notes.append("model.pt holds the state dict (a whole pickled module is never written)")
    return files, notes


def _profile(loaded: LoadedModel, module: nn.Module, shape: tuple[int, ...]) -> dict[str, Any]:
    from entropy_probe.api import profile_loaded

    view = LoadedModel(
        source=loaded.source,
        format=loaded.format,
        module=module,
        input_shape=shape,
        pretrained=loaded.pretrained,
        meta=dict(loaded.meta),
    )
    with torch.random.fork_rng(devices=[]):
        result: dict[str, Any] = profile_loaded(view, device="cpu", progress=False).to_dict()
    return result


def finetune(
    source: str = DEFAULT_SOURCE,
    *,
    task: str | Task,
    data: Any,
    out_dir: str | Path,
    config: FitConfig | None = None,
    weights: str | Path | None = None,
    input_shape: tuple[int, ...] | None = None,
    trust_pickle: bool = False,
    lambda_dense: float = 0.0,
    lambda_conv: float = 0.0,
    mode: str = "target",
    reference: str | None = None,
    entropy_every: int | str = "auto",
    resume: bool = False,
    progress: bool | None = None,
    on_step: Callable[[int, int], None] | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> FinetuneResult:
    """Fine-tune ``source`` on ``data`` and write the result into ``out_dir``.

    ``lambda_dense``/``lambda_conv`` > 0 add the entropy loss terms of
    :func:`entropy_probe.train.losses.build_entropy_loss` (``mode``, ``reference``, evaluated
    every ``entropy_every`` steps: ``auto`` keeps them within 5% of a step); with both 0 that
    module is not even imported. A λ > 0 for a group the model or the reference lacks is
    refused (``strict=True``).

    Options, the device and ``out_dir`` are checked before anything is loaded or written; a
    run that still fails before its first checkpoint removes the files it wrote and the
    directories it created.
    """
    cfg = config or FitConfig(log_entropy=True)
    # Everything that can be checked before loading anything, so that a refused run leaves
    # no file and no directory behind.
    out = _check_out_dir(out_dir, resume)
    cfg.check_device()
    for name, value in (("lambda_dense", lambda_dense), ("lambda_conv", lambda_conv)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise EntropyProbeError(f"{name} must be a finite number >= 0, got {value!r}")
        if not math.isfinite(value) or value < 0:
            raise EntropyProbeError(f"{name} must be a finite number >= 0, got {value}")
    the_task = get_task(task)
    loaded = load_model(
        source,
        LoadOptions(
            weights=Path(weights) if weights is not None else None,
            input_shape=input_shape,
            trust_pickle=trust_pickle,
        ),
    )
    module = _module_of(loaded)
    notes = list(loaded.notes)
    shape = loaded.input_shape
    # Folder images are read with the model's channels at their own size; prepare_model
    # resizes them to the model's input size only if the model cannot run on them.
    channels = shape[0] if shape is not None and len(shape) == 3 and shape[0] in (1, 3) else None
    task_data = as_task_data(
        data, the_task, image_shape=(channels, None, None), split_seed=cfg.seed
    )
    normalise = None
    if isinstance(data, str | Path) and task_data.train_x.dim() == 4:
        from entropy_probe.empirical.inputs import normalisation

        wanted = shape[0] if shape is not None else int(task_data.train_x.shape[1])
        normalise = normalisation(loaded, wanted) if loaded.format != "default" else None
    task_data, head_notes = prepare_model(
        module,
        the_task,
        task_data,
        input_shape=shape,
        normalise=normalise,
        seed=cfg.seed,
        fixed_size=onnx_fixed_size(loaded),
    )
    notes += list(task_data.notes) + head_notes
    aux = None
    if lambda_dense or lambda_conv:
        from entropy_probe.train.losses import build_entropy_loss

        aux = build_entropy_loss(
            module,
            mode=mode,
            lambda_dense=lambda_dense,
            lambda_conv=lambda_conv,
            reference=reference,
            example_input=task_data.train_x[:1],
            every=entropy_every,
            batch_size=cfg.batch_size,
            strict=True,
        )
        cost = aux.cost_in_steps
        notes.append(
            f"entropy terms evaluated every {aux.every} steps"
            + (f" (one evaluation ≈ {cost:.2g} training steps)" if cost is not None else "")
        )
    extra = {
        "source": loaded.source,
        "weights": str(weights) if weights is not None else None,
        "lambda_dense": lambda_dense,
        "lambda_conv": lambda_conv,
        "mode": mode if aux is not None else None,
        "reference": reference if aux is not None else None,
        "entropy_every": aux.every if aux is not None else None,
    }
    result, files = _locked_run(
        loaded,
        module,
        the_task,
        task_data,
        cfg,
        out,
        aux=aux,
        extra=extra,
        notes=notes,
        resume=resume,
        progress=progress,
        on_step=on_step,
        on_epoch=on_epoch,
    )
    return FinetuneResult(result, loaded.source, loaded.format, out, files, notes)


def _check_out_dir(out_dir: str | Path, resume: bool) -> Path:
    """``out_dir`` as a path, refused when empty, a file, or (without ``resume``) a directory
    that already holds a run."""
    if not str(out_dir).strip():
        raise EntropyProbeError(
            "the output directory is empty: give --out a directory name (an empty one would "
            "write the run into the current directory)"
        )
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise EntropyProbeError(f"--out {out} is a file, not a directory: choose another --out")
    if list_checkpoints(out) and not resume:
        raise EntropyProbeError(
            f"{out} already holds a run: pass --resume to continue it, or choose another --out"
        )
    return out


def _missing_dirs(out: Path) -> list[Path]:
    """``out`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    path = out.absolute()
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


_RUN_FILES = ("profile_before.json", CONFIG_NAME, METRICS_NAME)
"""What a run writes before its first checkpoint."""


def _existing(out: Path) -> set[str]:
    return {name for name in _RUN_FILES if (out / name).exists()}


def _remove_new_files(out: Path, existed: set[str]) -> None:
    """Remove the run files that did not exist when this run took the lock (called with the
    lock still held: they are this run's own)."""
    for name in _RUN_FILES:
        if name not in existed:
            with contextlib.suppress(OSError, EntropyProbeError):
                safe_path(out, name).unlink(missing_ok=True)


def _remove_empty_dirs(created: list[Path]) -> None:
    """``created`` (deepest first), as far as they are empty: nothing else is touched."""
    for path in created:
        try:
            path.rmdir()
        except OSError:
            return


def _locked_run(
    loaded: LoadedModel,
    module: nn.Module,
    the_task: Task,
    task_data: TaskData,
    cfg: FitConfig,
    out: Path,
    *,
    aux: Any,
    extra: dict[str, Any],
    notes: list[str],
    resume: bool,
    progress: bool | None,
    on_step: Callable[[int, int], None] | None,
    on_epoch: Callable[[EpochRecord], None] | None,
) -> tuple[FitResult, dict[str, Path]]:
    """Lock ``out``, profile, ``fit``, profile again and save (files on rank 0 only).

    A run that fails before writing a checkpoint removes the files it added and the
    directories it created: a refused run leaves nothing behind."""
    main = _is_main()
    lock = RunLock(out) if main else None
    created = _missing_dirs(out) if main else []
    files: dict[str, Path] = {}
    existed: set[str] | None = None  # set once this run holds the lock
    checkpoints = list_checkpoints(out)
    failed = False
    try:
        if lock is not None:
            lock.acquire()
            existed = _existing(out)
            if lock.note:
                notes.append(lock.note)
            if list_checkpoints(out) and not resume:
                raise EntropyProbeError(
                    f"{out} already holds a run: pass --resume to continue it, or choose "
                    "another --out"
                )
            before = safe_path(out, "profile_before.json")
            if not (resume and before.is_file()):
                profile = _profile(loaded, module, task_data.input_shape)
                atomic_write_text(before, json.dumps(profile, indent=2, allow_nan=False) + "\n")
            files["profile_before"] = before
        result = fit(
            module,
            the_task,
            task_data,
            cfg,
            aux_loss=aux,
            out_dir=out,
            resume=resume,
            progress=progress,
            extra_config=extra,
            on_step=on_step,
            on_epoch=on_epoch,
        )
        notes += [n for n in result.notes if n not in notes]
        if main:
            module.to("cpu")
            after = safe_path(out, "profile_after.json")
            profile = _profile(loaded, module, task_data.input_shape)
            atomic_write_text(after, json.dumps(profile, indent=2, allow_nan=False) + "\n")
            files["profile_after"] = after
            saved, save_notes = _save_outputs(loaded, module, task_data, out)
            files.update(saved)
            notes += save_notes
            if result.metrics_path is not None:
                files["metrics"] = result.metrics_path
            summary = {
                "source": loaded.source,
                "format": loaded.format,
                "task": the_task.name,
                "data": task_data.description,
                "metric": result.metric_name,
                "final_metric": result.final_metric,
                "best_metric": result.best_metric,
                "steps": result.steps,
                "wall_s": result.wall_s,
                "files": {k: p.name for k, p in files.items()},
                "notes": notes,
            }
            files["summary"] = atomic_write_text(
                safe_path(out, "finetune.json"), json.dumps(summary, indent=2) + "\n"
            )
    except Exception:
        failed = existed is not None and list_checkpoints(out) == checkpoints
        if failed and existed is not None:
            _remove_new_files(out, existed)
        raise
    finally:
        if lock is not None:
            lock.release()
        if failed and created:
            _remove_empty_dirs(created)
    return result, files
