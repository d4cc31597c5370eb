"""``entropy-probe finetune``: a thin click layer over :func:`entropy_probe.train.finetune`."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from entropy_probe.cli_errors import friendly_errors

F = TypeVar("F", bound=Callable[..., Any])

_TASKS = ("classify", "segment", "autoencode")


def _errors(func: F) -> F:
    """The commands' error handling (cli_errors.friendly_errors); Ctrl-C says how to resume."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except KeyboardInterrupt:
            out = kwargs.get("out", "")
            click.echo(
                f"interrupted: the last finished epoch's checkpoint in {out} is kept; run the "
                "same command with --resume to continue",
                err=True,
            )
            sys.exit(130)

    return friendly_errors(wrapper)  # type: ignore[return-value]


def _main_rank() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


class _FiniteFloat(click.FloatRange):
    """A FloatRange that also refuses nan and ±inf (which compare false with every bound)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            bound = f"{'>' if self.min_open else '>='} {self.min:g}"
            self.fail(f"{number} is not a finite number: give a number {bound}", param, ctx)
        return number


def _out_dir(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not value.strip():
        raise click.BadParameter(
            "an empty path would write the run into the current directory: give a directory "
            "name, e.g. --out runs/a"
        )
    return value


def _every(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        every = int(value)
    except ValueError:
        every = 0
    if every < 1:
        raise click.BadParameter(f"{value!r}: give auto or a whole number >= 1")
    return every


@click.command(
    help="""Fine-tune SOURCE on real data, optionally with entropy loss terms.

    \b
    SOURCE: (nothing) the embedded default model, timm:NAME [--weights F],
    smp:ARCH/ENCODER [--weights F], a timm/SMP save_pretrained directory, or a .onnx file
    (converted with onnx2torch, exported back to ONNX at the end).

    \b
    --data: mnist5k, digits or nuclei (built in); a folder of class sub-folders (classify);
    a folder with images/ and masks/ of the same file names (segment); any image folder
    (autoencode). A train/ + val/ pair of such folders is used as the split, otherwise a
    seeded 20% is held out.

    \b
    --out gets model.safetensors, the model in its input format (config.json for timm/SMP so
    the directory loads back as a source, model.onnx for ONNX, model.pt as a state dict for a
    torch module), metrics.jsonl (one line per epoch: held-out metric, losses, per-layer
    entropy), profile_before.json / profile_after.json,
    the last 2 checkpoints, run_config.json and finetune.json.

    \b
    Multi-GPU / multi-node: torchrun --nproc_per_node N -m entropy_probe finetune ...
    (gloo on CPU, NCCL on CUDA; --batch-size is per process).
    """
)
@click.argument("source", required=False, default="default")
@click.option("--task", type=click.Choice(_TASKS), required=True, help="What to train for.")
@click.option("--data", required=True, metavar="NAME|DIR", help="Training data (see above).")
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Passes over the data.",
)
@click.option(
    "--lambda-dense",
    type=_FiniteFloat(min=0),
    default=0.0,
    show_default=True,
    help="Weight of the dense-layer entropy term (0: off; > 0 is refused when the model has no "
    "dense layer or the reference no dense curve).",
)
@click.option(
    "--lambda-conv",
    type=_FiniteFloat(min=0),
    default=0.0,
    show_default=True,
    help="Weight of the conv-layer entropy term (0: off; > 0 is refused when the model has no "
    "conv layer or the reference no conv curve).",
)
@click.option(
    "--mode",
    type=click.Choice(["target", "direction"]),
    default="target",
    show_default=True,
    help="Entropy loss: pull toward the reference pattern, or push along its sign.",
)
@click.option(
    "--reference",
    metavar="auto|FAMILY|NAME|SOURCE",
    help="Target pattern of the entropy terms (used only when a λ > 0): a family, a "
    "reference name or a well-trained checkpoint; default auto (family from the architecture).",
)
@click.option(
    "--entropy-every",
    default="auto",
    show_default=True,
    metavar="auto|N",
    callback=lambda ctx, param, value: _every(value),
    help="Evaluate the entropy terms every N steps (the last gradient is reused between); "
    "auto keeps them within 5% of a training step by a FLOP estimate.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    callback=_out_dir,
    default="finetune_out",
    show_default=True,
    help="Output directory (locked while a run writes it).",
)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Initialisation, data order, split."
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Per process (under torchrun the global batch is this × the process count).",
)
@click.option(
    "--lr",
    type=_FiniteFloat(min=0, min_open=True),
    default=1e-3,
    show_default=True,
    help="Learning rate (the peak of onecycle).",
)
@click.option(
    "--optimizer",
    type=click.Choice(["adam", "adamw", "sgd"]),
    default="adam",
    show_default=True,
    help="sgd uses momentum 0.9.",
)
@click.option(
    "--weight-decay",
    type=_FiniteFloat(min=0),
    default=0.0,
    show_default=True,
    help="L2 (adam, sgd) or decoupled (adamw) weight decay.",
)
@click.option(
    "--schedule",
    type=click.Choice(["constant", "cosine", "onecycle"]),
    default="constant",
    show_default=True,
    help="Learning-rate schedule, stepped per batch.",
)
@click.option(
    "--amp",
    type=click.Choice(["off", "bf16", "fp16"]),
    default="off",
    show_default=True,
    help="Mixed precision (CUDA only).",
)
@click.option("--weights", type=click.Path(dir_okay=False), help="Weights for timm:/smp: sources.")
@click.option(
    "--trust-pickle", is_flag=True, help="Allow unpickling a full-model .pt file you trust."
)
@click.option(
    "--entropy-log/--no-entropy-log",
    default=True,
    show_default=True,
    help="Per-layer entropy in metrics.jsonl after every epoch.",
)
@_errors
def finetune(**opts: Any) -> None:
    from entropy_probe.train import FitConfig
    from entropy_probe.train.finetune import finetune as run
    from entropy_probe.train.loop import EpochRecord, epoch_line

    config = FitConfig(
        epochs=opts["epochs"],
        batch_size=opts["batch_size"],
        lr=opts["lr"],
        optimizer=opts["optimizer"],
        weight_decay=opts["weight_decay"],
        schedule=opts["schedule"],
        seed=opts["seed"],
        device=opts["device"],
        amp=opts["amp"],
        log_entropy=opts["entropy_log"],
    )
    main = _main_rank()

    def echo(record: EpochRecord) -> None:
        click.echo(epoch_line(record, config.epochs), err=True)

    result = run(
        opts["source"],
        task=opts["task"],
        data=opts["data"],
        out_dir=opts["out"],
        config=config,
        weights=opts["weights"],
        trust_pickle=opts["trust_pickle"],
        lambda_dense=opts["lambda_dense"],
        lambda_conv=opts["lambda_conv"],
        mode=opts["mode"],
        reference=opts["reference"],
        entropy_every=opts["entropy_every"],
        resume=opts["resume"],
        on_epoch=echo,
    )
    if not main:
        return
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    fit = result.fit
    final = f"{fit.final_metric:.4f}" if fit.final_metric is not None else "—"
    best = f"{fit.best_metric:.4f}" if fit.best_metric is not None else "—"
    click.echo(
        f"{result.source} ({result.format}) {opts['task']}: held-out {fit.metric_name} {final} "
        f"(best {best}) after {fit.steps} steps, {fit.wall_s:.1f}s"
    )
    for kind, path in sorted(result.files.items()):
        click.echo(f"wrote {path}  ({kind})", err=True)
