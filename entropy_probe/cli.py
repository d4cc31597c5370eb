"""The ``entropy-probe`` command line: a thin click layer over :mod:`entropy_probe.api`."""

from __future__ import annotations

import json
import math
import stat
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from entropy_probe import __version__
from entropy_probe._io import atomic_write_text, refuse_overwriting_inputs
from entropy_probe.cli_errors import friendly_errors as _friendly_errors
from entropy_probe.entropy.profile import LayerEntropy, Profile
from entropy_probe.enums import ConvMethod, Status
from entropy_probe.errors import EntropyProbeError

F = TypeVar("F", bound=Callable[..., Any])


def _parse_shape(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> tuple[int, ...] | None:
    from entropy_probe.errors import ArgumentError
    from entropy_probe.loading._base import input_shape_from

    try:
        return input_shape_from(value, "--input-shape")
    except ArgumentError as exc:
        raise click.BadParameter(str(exc).removeprefix("--input-shape ")) from None


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


_SOURCES: str = """
    \b
    SOURCE is one of:
      (nothing)              the embedded default model (an MNIST-5k CNN)
      timm:NAME              a timm architecture, e.g. timm:resnet18 (+ --weights FILE)
      smp:ARCH/ENCODER       an SMP model, e.g. smp:Unet/resnet34 (+ --weights FILE)
      zoo:NAME               one of the project's own trained networks (+ --weights FILE)
      PATH.onnx              an ONNX model (weights read from the graph, no conversion)
      PATH.safetensors|.pt   a state dict (per-dimension values only: no architecture)
      DIRECTORY              a timm or SMP save_pretrained directory
"""
_SOURCE_HELP: str = (
    _SOURCES
    + """
    \b
    --data measures entropy from real activations (see README): a built-in dataset
    (mnist5k, digits, nuclei), an image folder (resized and normalised to the model's input)
    or a .npy array shaped (N, *input_shape).
"""
)


def _model_options(
    method_default: str, *, measure: bool = True, source_required: bool = False
) -> Callable[[F], F]:
    """The options every command that loads and profiles a model shares; ``measure=False``
    leaves out the conv method and the --data options (commands whose result ignores them)."""
    from entropy_probe.empirical.estimators import estimator_names

    source = (
        click.argument("source")
        if source_required
        else click.argument("source", required=False, default="default")
    )
    loading = [
        click.option(
            "--weights",
            type=click.Path(dir_okay=False),
            help="Local weights (.safetensors/.pt) for timm:/smp: sources.",
        ),
        click.option(
            "--input-shape",
            callback=_parse_shape,
            metavar="C,H,W",
            help="Per-sample input shape (default: the model's own).",
        ),
    ]
    method = click.option(
        "--method",
        type=click.Choice([m.value for m in ConvMethod]),
        default=method_default,
        show_default=True,
        help="Conv formula: paper (first tap, fast), spectral (exact with circular "
        "boundary; slower: one SVD per frequency), or both.",
    )
    running = [
        click.option(
            "--device",
            default="auto",
            show_default=True,
            help="auto, cpu or cuda (batched math and activations on GPU).",
        ),
        click.option(
            "--trust-pickle",
            is_flag=True,
            help="Allow unpickling a full-model .pt file. Runs its code: only for files you trust.",
        ),
    ]
    measuring = [
        click.option(
            "--data",
            metavar="NAME|DIR|FILE.npy",
            help="Real inputs for the empirical entropy: mnist5k, digits, nuclei, an image "
            "folder or a .npy array.",
        ),
        click.option(
            "--samples",
            type=click.IntRange(min=4),
            default=256,
            show_default=True,
            help="How many inputs of --data to use (a seeded random subset when a folder or "
            "array holds more).",
        ),
        click.option(
            "--batch-size",
            type=click.IntRange(min=1),
            default=32,
            show_default=True,
            help="Forward batch size for --data.",
        ),
        click.option(
            "--estimator",
            type=click.Choice(estimator_names()),
            default="gaussian",
            show_default=True,
            help="Entropy estimator for --data (gaussian: shrinkage log-det; knn: "
            "Kozachenko–Leonenko).",
        ),
        click.option(
            "--k", type=click.IntRange(min=1), default=3, show_default=True, help="k of knn."
        ),
    ]
    if measure:
        options = [source, *loading, method, *running, *measuring]
    else:
        options = [source, *loading, *running]

    def apply(func: F) -> F:
        for option in reversed(options):
            func = option(func)
        return func

    return apply


_NEEDS_DATA = ("samples", "batch_size", "estimator", "k")


def _run_profile(opts: dict[str, Any]) -> Profile:
    from entropy_probe._allocator import keep_freed_memory
    from entropy_probe.api import profile as run_profile

    if opts.get("data") is None:
        ctx = click.get_current_context(silent=True)
        given = [
            name
            for name in _NEEDS_DATA
            if ctx is not None
            and name in opts
            and ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
        ]
        if given:
            shown = ", ".join("--" + name.replace("_", "-") for name in given)
            raise EntropyProbeError(
                f"{shown} only appl{'ies' if len(given) == 1 else 'y'} to measured entropy: "
                "add --data NAME|DIR|FILE.npy "
                "(e.g. --data nuclei), or leave them out"
            )
    keep_freed_memory()  # a short-lived process doing large batched float64 work
    return run_profile(
        opts["source"],
        weights=opts["weights"],
        input_shape=opts["input_shape"],
        method=opts.get("method", "paper"),
        device=opts["device"],
        trust_pickle=opts["trust_pickle"],
        data=opts.get("data"),
        samples=opts.get("samples", 256),
        batch_size=opts.get("batch_size", 32),
        estimator=opts.get("estimator", "gaussian"),
        k=opts.get("k", 3),
        progress=sys.stderr.isatty(),
    )


@main.command(
    help="""Per-layer entropy change of SOURCE, from its weights (and activations).

    \b
    Columns: ΔH (nats, whole layer, paper method), ΔH/dim (mean log singular value,
    comparable across widths), shape (scale-free: 0 = isometry up to scale), ΔH spectral
    (exact with circular boundary); with --data, the measured output entropy per dimension
    and ΔH per dimension. An eval BatchNorm right after a layer is folded into it.
    """
    + _SOURCE_HELP
)
@_model_options("paper")
@click.option(
    "--json",
    "json_path",
    metavar="PATH|-",
    help="Write the strict-JSON profile (schema entropy_probe.profile/1); - for stdout.",
)
@click.option(
    "--all-layers/--analysed-only",
    default=True,
    help="Show skipped and non-analytic layers in the table.",
)
@_friendly_errors
def profile(json_path: str | None, all_layers: bool, **opts: Any) -> None:
    if json_path is not None:
        check_output_path("--json", json_path, opts)
    result = _run_profile(opts)
    if json_path:
        write_json_option(result.to_dict(), json_path, announce=False)
        if json_path == "-":
            return
    _print_profile(result, all_layers=all_layers)
    if json_path:
        click.echo(f"wrote {json_path}", err=True)


def check_output_path(option: str, path: str, opts: dict[str, Any]) -> None:
    """Before any work: refuse an empty output path, or one that is an input of this run
    (SOURCE, --weights or --data: writing it would destroy the input)."""
    if not path.strip():
        raise EntropyProbeError(
            f"{option} needs a file name (got an empty one); - writes to stdout"
        )
    if path != "-":
        inputs = [(label, opts.get(key)) for label, key in _INPUT_OPTIONS]
        refuse_overwriting_inputs(option, path, inputs)


_INPUT_OPTIONS = (("SOURCE", "source"), ("--weights", "weights"), ("--data", "data"))


def write_json_option(data: dict[str, Any], json_path: str, *, announce: bool = True) -> None:
    """``--json PATH|-``: strict JSON to stdout, or atomically to PATH (one-line error)."""
    text = json.dumps(data, indent=2, allow_nan=False)
    if json_path == "-":
        click.echo(text)
        return
    try:
        atomic_write_text(json_path, text + "\n")
    except OSError as exc:
        raise EntropyProbeError(f"cannot write --json {json_path}: {exc.strerror or exc}") from None
    if announce:
        click.echo(f"wrote {json_path}", err=True)


@main.command(
    help="""Write a self-contained HTML entropy report of SOURCE.

    \b
    One file with the model summary, the comparison with the well-trained family band
    (agreement score, out-of-band layers, each layer's shape excess over depth against the
    band; --reference none leaves it out), per-layer ΔH plots over depth (paper and
    spectral), the cumulative entropy curve, analytic vs empirical entropy (with --data), a
    sortable, filterable layer table and the formulas used. Scripts, styles and plots are inline: it
    opens offline and fetches nothing.
    """
    + _SOURCE_HELP
)
@_model_options("both")
@click.option(
    "-o",
    "--output",
    type=click.Path(),
    default="entropy_report.html",
    show_default=True,
    help="Where to write the HTML report (written atomically: never a partial file); - for stdout.",
)
@click.option(
    "--reference",
    "reference_name",
    default="auto",
    show_default=True,
    metavar="auto|FAMILY|NAME|none",
    help="Compare with the well-trained family band (auto: chosen from the architecture); "
    "none leaves the comparison out.",
)
@_friendly_errors
def report(output: str, reference_name: str, **opts: Any) -> None:
    from entropy_probe.report import render_report, write_report

    check_output_path("-o", output, opts)
    target = Path(output)
    if target.is_dir():
        raise EntropyProbeError(f"-o {output}: is a directory; give a file such as report.html")
    comparison = None
    if reference_name != "none":
        from entropy_probe.patterns.reference import NONE, load_library
        from entropy_probe.patterns.select import AUTO, check_reference

        library = load_library()  # a broken reference file fails before the model loads
        check_reference(reference_name, library, (AUTO, NONE))
    result = _run_profile(opts)
    if reference_name != "none":
        from entropy_probe.patterns.select import AUTO, compare_with

        try:
            comparison = compare_with(result, reference_name, library=library)
        except EntropyProbeError as exc:
            if reference_name != AUTO:
                raise
            click.echo(f"note: no comparison in the report: {exc}", err=True)
    if output == "-":
        click.echo(render_report(result, comparison=comparison), nl=False)
    else:
        try:
            write_report(result, target, comparison=comparison)
        except OSError as exc:
            raise EntropyProbeError(f"cannot write {output}: {exc.strerror or exc}") from None
        click.echo(f"wrote {output} ({_size_kib(target)})", err=True)
    if comparison is not None:
        click.echo(f"{comparison.verdict()} ({comparison.picked})", err=True)


def _size_kib(path: Path) -> str:
    """The size of a written file, or what it is when it has none (``-o /dev/null``)."""
    info = path.stat()
    return f"{info.st_size / 1024:.0f} KiB" if stat.S_ISREG(info.st_mode) else "not a file"


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "—"
    if math.isinf(value):
        return "−inf" if value < 0 else "inf"
    return f"{value:.{digits}f}" if abs(value) < 1e5 else f"{value:.4g}"


def _empirical_cells(layer: LayerEntropy) -> tuple[str, str]:
    emp = layer.empirical or {}
    return _fmt(emp.get("h_out_per_dim")), _fmt(emp.get("delta_h_per_dim"))


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
    measured = any(layer.empirical for layer in result.layers)
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
        *((("H out/dim emp", "right"), ("ΔH/dim emp", "right")) if measured else ()),
        ("status", "left"),
    ):
        table.add_column(col, justify=justify)
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
            *(_empirical_cells(layer) if measured else ()),
            status,
            style=style,
        )
    console.print(table)
    counts: dict[str, int] = {}
    folded = 0
    for layer in result.layers:
        if layer.folded_into is not None:  # counted in the layer it is folded into
            folded += 1
            continue
        counts[str(layer.status)] = counts.get(str(layer.status), 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    rows = len(result.layers) - folded
    and_folded = f" + {folded} BatchNorms folded into them" if folded else ""
    console.print(
        f"{rows} layers{and_folded} ({summary}); total ΔH = {_fmt(result.total_delta_h(), 1)} nats"
    )


@main.group(name="list")
def list_group() -> None:
    """List registered loaders and layer rules."""


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


from entropy_probe.cli_patterns import compare, reference  # noqa: E402

main.add_command(compare)
main.add_command(reference)

if __name__ == "__main__":  # pragma: no cover
    main()

from entropy_probe.cli_finetune import finetune  # noqa: E402

main.add_command(finetune)
