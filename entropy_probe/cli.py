"""The ``entropy-probe`` command line: a thin click layer over :mod:`entropy_probe.api`."""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from entropy_probe import __version__
from entropy_probe._io import atomic_write_text
from entropy_probe.entropy.profile import Profile
from entropy_probe.enums import ConvMethod, Status
from entropy_probe.errors import EntropyProbeError

F = TypeVar("F", bound=Callable[..., Any])


def _friendly_errors(func: F) -> F:
    """User mistakes become one line on stderr and exit code 1, never a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except EntropyProbeError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted: nothing was written", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def _parse_shape(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        shape = tuple(int(v) for v in re.split(r"[,x×]", value.strip()))
    except ValueError:
        raise click.BadParameter(
            f"{value!r}: expected comma-separated integers such as 3,224,224"
        ) from None
    if not shape or any(s < 1 for s in shape):
        raise click.BadParameter(f"{value!r}: every dimension must be a positive integer")
    if len(shape) > 4:
        raise click.BadParameter(
            f"{value!r}: give the per-sample shape without the batch, e.g. 3,224,224"
        )
    return shape


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="entropy-probe")
def main() -> None:
    """Entropy profiles of trained vision models.

    For every dense and convolutional layer, how much it changes the differential entropy of
    the data passing through it (ΔH = log|det W| per position for dense layers; the paper's
    (l−p+1)(w−q+1)·log|c11| generalised for convolutions; the exact circular-boundary value
    with --method spectral).

    \b
    Try:
      entropy-probe profile                      # the embedded default model
      entropy-probe profile timm:resnet18 --weights resnet18.safetensors
      entropy-probe profile model.onnx --json profile.json
    """


@main.command()
@click.argument("source", required=False, default="default")
@click.option(
    "--weights",
    type=click.Path(dir_okay=False),
    help="Local weights (.safetensors/.pt) for timm:/smp: sources.",
)
@click.option(
    "--input-shape",
    callback=_parse_shape,
    metavar="C,H,W",
    help="Per-sample input shape (default: the model's own).",
)
@click.option(
    "--method",
    type=click.Choice([m.value for m in ConvMethod]),
    default="paper",
    show_default=True,
    help="Conv formula: paper (first tap, fast), spectral (exact with circular boundary; "
    "slower: one SVD per frequency), or both.",
)
@click.option(
    "--device", default="auto", show_default=True, help="auto, cpu or cuda (batched math on GPU)."
)
@click.option(
    "--json",
    "json_path",
    metavar="PATH|-",
    help="Write the strict-JSON profile (schema entropy_probe.profile/1); - for stdout.",
)
@click.option(
    "--trust-pickle",
    is_flag=True,
    help="Allow unpickling a full-model .pt file. Runs its code: only for files you trust.",
)
@click.option(
    "--all-layers/--analysed-only",
    default=True,
    help="Show skipped and non-analytic layers in the table.",
)
@_friendly_errors
def profile(
    source: str,
    weights: str | None,
    input_shape: tuple[int, ...] | None,
    method: str,
    device: str,
    json_path: str | None,
    trust_pickle: bool,
    all_layers: bool,
) -> None:
    """Per-layer entropy change of SOURCE, from its weights.

    \b
    Columns: ΔH (nats, whole layer, paper method), ΔH/dim (mean log singular value,
    comparable across widths), shape (scale-free: 0 = isometry up to scale), ΔH spectral
    (exact with circular boundary). An eval BatchNorm right after a layer is folded into it.

    \b
    SOURCE is one of:
      (nothing)              the embedded default model (an MNIST-5k CNN)
      timm:NAME              a timm architecture, e.g. timm:resnet18 (+ --weights FILE)
      smp:ARCH/ENCODER       an SMP model, e.g. smp:Unet/resnet34 (+ --weights FILE)
      PATH.onnx              an ONNX model (weights read from the graph, no conversion)
      PATH.safetensors|.pt   a state dict (per-dimension values only: no architecture)
      DIRECTORY              a timm or SMP save_pretrained directory
    """
    from entropy_probe.api import profile as run_profile

    result = run_profile(
        source,
        weights=weights,
        input_shape=input_shape,
        method=method,
        device=device,
        trust_pickle=trust_pickle,
    )
    if json_path:
        text = json.dumps(result.to_dict(), indent=2, allow_nan=False)
        if json_path == "-":
            click.echo(text)
            return
        atomic_write_text(json_path, text + "\n")
    _print_profile(result, all_layers=all_layers)
    if json_path:
        click.echo(f"wrote {json_path}", err=True)


@main.command()
@click.argument("source", required=False, default="default")
@click.option(
    "-o",
    "--output",
    type=click.Path(),
    default="entropy_report.html",
    show_default=True,
    help="Where to write the HTML report (written atomically: never a partial file).",
)
@click.option(
    "--weights",
    type=click.Path(dir_okay=False),
    help="Local weights (.safetensors/.pt) for timm:/smp: sources.",
)
@click.option(
    "--input-shape",
    callback=_parse_shape,
    metavar="C,H,W",
    help="Per-sample input shape (default: the model's own).",
)
@click.option(
    "--method",
    type=click.Choice([m.value for m in ConvMethod]),
    default="both",
    show_default=True,
    help="Conv formula: paper (first tap, fast), spectral (exact with circular boundary; "
    "slower: one SVD per frequency), or both (plots paper vs spectral).",
)
@click.option(
    "--device", default="auto", show_default=True, help="auto, cpu or cuda (batched math on GPU)."
)
@click.option(
    "--trust-pickle",
    is_flag=True,
    help="Allow unpickling a full-model .pt file. Runs its code: only for files you trust.",
)
@_friendly_errors
def report(
    source: str,
    output: str,
    weights: str | None,
    input_shape: tuple[int, ...] | None,
    method: str,
    device: str,
    trust_pickle: bool,
) -> None:
    """Write a self-contained HTML entropy report of SOURCE.

    \b
    One file with the model summary, per-layer ΔH plots over depth (paper and spectral), the
    cumulative entropy curve, a sortable, filterable layer table and the formulas used.
    Scripts, styles and plots are inline: it opens offline and fetches nothing.
    SOURCE is given as for `entropy-probe profile` (nothing = the embedded default model).
    """
    from entropy_probe.api import profile as run_profile
    from entropy_probe.report import write_report

    target = Path(output)
    if target.is_dir():
        raise EntropyProbeError(f"-o {output}: is a directory; give a file such as report.html")
    result = run_profile(
        source,
        weights=weights,
        input_shape=input_shape,
        method=method,
        device=device,
        trust_pickle=trust_pickle,
    )
    try:
        write_report(result, target)
    except OSError as exc:
        raise EntropyProbeError(f"cannot write {output}: {exc.strerror or exc}") from None
    click.echo(f"wrote {output} ({target.stat().st_size / 1024:.0f} KiB)", err=True)


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "—"
    if math.isinf(value):
        return "−inf" if value < 0 else "inf"
    return f"{value:.{digits}f}" if abs(value) < 1e5 else f"{value:.4g}"


def _shape(shape: Sequence[int] | None) -> str:
    return "×".join(map(str, shape)) if shape else "—"


def _print_profile(result: Profile, *, all_layers: bool) -> None:
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    trained = "pretrained weights" if result.pretrained else "RANDOM weights"
    console.print(
        f"[bold]{result.source}[/bold]  format={result.format}  params={result.num_params:,}  "
        f"input={_shape(result.input_shape)}  {trained}  device={result.device}  "
        f"{result.elapsed_s:.2f}s"
    )
    for note in result.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    table = Table(show_lines=False, header_style="bold")
    for col, justify in (
        ("#", "right"),
        ("layer", "left"),
        ("kind", "left"),
        ("weight", "left"),
        ("out", "left"),
        ("pos", "right"),
        ("ΔH", "right"),
        ("ΔH/dim", "right"),
        ("shape", "right"),
        ("ΔH spectral", "right"),
        ("status", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    shown = 0
    for index, layer in enumerate(result.layers):
        if not all_layers and not layer.analysed:
            continue
        shown += 1
        status = str(layer.status)
        style = {Status.SINGULAR: "red", Status.SKIPPED: "dim", Status.NOT_ANALYTIC: "dim"}.get(
            layer.status, ""
        )
        if layer.folded_into:
            status = f"folded→{layer.folded_into}"
            style = "dim"
        elif layer.folded_batchnorm:
            status = "ok (+BN)"
        table.add_row(
            str(index),
            layer.name,
            layer.kind,
            _shape(layer.weight_shape),
            _shape(layer.out_shape),
            str(layer.positions) if layer.positions is not None else "—",
            _fmt(layer.delta_h, 1),
            _fmt(layer.delta_h_per_dim),
            _fmt(layer.spectral_shape),
            _fmt(layer.delta_h_spectral, 1),
            status,
            style=style,
        )
    console.print(table)
    counts: dict[str, int] = {}
    for layer in result.layers:
        counts[str(layer.status)] = counts.get(str(layer.status), 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    console.print(
        f"{len(result.layers)} layers ({summary}); "
        f"total ΔH = {_fmt(result.total_delta_h(), 1)} nats"
    )


@main.group(name="list")
def list_group() -> None:
    """List registered loaders, layer rules and built-in datasets."""


@list_group.command(name="loaders")
@_friendly_errors
def list_loaders() -> None:
    """Source schemes and the file types they read."""
    from entropy_probe.plugins import get_registry

    loaders = get_registry().loaders
    for name in loaders.names():
        loader = loaders.get(name)
        ext = f" [{', '.join(loader.extensions)}]" if loader.extensions else ""
        click.echo(f"{name:12s} {loader.description}{ext}  (from {loaders.owner(name)})")


@list_group.command(name="rules")
@_friendly_errors
def list_rules() -> None:
    """Layer kinds with a rule, and the module types mapped to them."""
    from entropy_probe.plugins import get_registry

    registry = get_registry()
    for kind in registry.rules.names():
        types = sorted(t.__name__ for t, k in registry.module_kinds.items() if k == kind)
        click.echo(
            f"{kind:18s} {', '.join(types) or '(ONNX / plugin only)'}"
            f"  (from {registry.rules.owner(kind)})"
        )


@main.command()
@_friendly_errors
def plugins() -> None:
    """Installed plugins and the distributions they come from."""
    from entropy_probe.plugins import get_registry

    for name, dist in sorted(get_registry().plugins.items()):
        click.echo(f"{name:16s} {dist}")


if __name__ == "__main__":  # pragma: no cover
    main()
