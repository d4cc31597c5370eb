"""``entropy-probe compare`` and ``entropy-probe reference list|show|add``."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from entropy_probe.cli import (
    _SOURCES,
    _model_options,
    _run_profile,
    check_output_path,
    write_json_option,
)
from entropy_probe.cli_errors import friendly_errors as _friendly_errors
from entropy_probe.errors import unknown_name
from entropy_probe.patterns.compare import Comparison, family_band
from entropy_probe.patterns.pattern import DEFAULT_QUANTITY, RELATIVE_EXCESS_FLOOR, Quantity
from entropy_probe.patterns.reference import (
    Provenance,
    Reference,
    check_new_reference,
    load_library,
    reference_from_profile,
    save_user_reference,
    today,
    user_reference_dir,
)

__all__ = ["compare", "reference"]

F = TypeVar("F", bound=Callable[..., Any])

_QUANTITY_HELP = (
    "Per-layer quantity compared: shape_excess (scale-free spectral shape minus its random-init "
    "value; default), relative_excess (shape_excess over |random-init value|; not compared "
    f"where that value is below {RELATIVE_EXCESS_FLOOR}, e.g. a head with a few outputs from "
    "many inputs), spectral_shape, or delta_h_per_dim (raw, tracks weight scale)."
)


def _quantity_option(func: F) -> F:
    return click.option(
        "--quantity",
        type=click.Choice([q.value for q in Quantity]),
        default=DEFAULT_QUANTITY.value,
        show_default=True,
        help=_QUANTITY_HELP,
    )(func)


def _check_json_path(json_path: str | None, opts: dict[str, Any] | None = None) -> None:
    """Before any work: ``--json ""`` would write nothing and succeed, and ``--json`` naming
    an input of the run (SOURCE, --weights) would destroy it."""
    if json_path is not None:
        check_output_path("--json", json_path, opts or {})


def _console() -> Console:
    return Console(highlight=False, width=None if sys.stdout.isatty() else 140)


def print_comparison(result: Comparison) -> None:
    console = _console()
    console.print(f"[bold]{result.source}[/bold]  vs  {result.picked or result.reference}")
    console.print(
        f"quantity {result.quantity}; band = 25–75% of the family's layers within ±0.125 "
        f"relative depth; members: {', '.join(result.band.members)}"
    )
    table = Table(show_edge=False, pad_edge=False)
    for col in ("layer", "kind", "depth", "value", "band", "deviation", ""):
        table.add_column(col, justify="left" if col in ("layer", "kind", "") else "right")
    for layer in result.layers:
        table.add_row(
            layer.name,
            layer.kind,
            f"{layer.depth:.2f}",
            f"{layer.value:.3f}",
            f"{layer.lower:.2f} … {layer.upper:.2f}",
            f"{layer.deviation:+.2f}",
            "" if layer.in_band else "[red]out of band[/red]",
        )
    console.print(table)
    if result.not_compared:
        console.print(
            "not compared (singular, a single singular value, or no band for their layer "
            f"group): {', '.join(result.not_compared)}"
        )
    for note in result.notes():
        console.print(f"note: {escape(note)}")
    console.print(f"[bold]{result.verdict()}[/bold]")


@click.command(
    help="""Compare SOURCE's entropy pattern with well-trained networks of its family.

    \b
    For every analysed dense/conv layer: its deviation from the family band at the same
    relative depth (in half band widths; |deviation| <= 1 is inside), the layers outside
    the band, and one agreement score in [0, 1]: the mean layer credit, 1 inside the band;
    beyond it toward the random-init value the credit falls linearly to 0 one half band
    width further; beyond it on the other side (more structure than the references) the
    layer is flagged but keeps its credit (with delta_h_per_dim, which has no random-init
    value, both sides lose credit). --reference auto picks the family from the
    architecture and says which; see `entropy-probe reference list`.
    """
    + _SOURCES
)
@_model_options("paper", measure=False)
@click.option(
    "--reference",
    "reference_name",
    default="auto",
    show_default=True,
    metavar="auto|FAMILY|NAME",
    help="Family to compare with (auto: chosen from the architecture), or one reference.",
)
@_quantity_option
@click.option(
    "--json",
    "json_path",
    metavar="PATH|-",
    help="Write the comparison as strict JSON (schema entropy_probe.comparison/1); - for stdout.",
)
@_friendly_errors
def compare(reference_name: str, quantity: str, json_path: str | None, **opts: Any) -> None:
    from entropy_probe.patterns.select import check_reference, compare_with

    _check_json_path(json_path, opts)
    library = load_library()  # fail on a broken user reference before the model loads
    check_reference(reference_name, library)  # and on an unknown name
    result = compare_with(_run_profile(opts), reference_name, quantity=quantity, library=library)
    if json_path:
        write_json_option(result.to_dict(), json_path)
        if json_path == "-":
            return
    print_comparison(result)


@click.group(name="reference")
def reference() -> None:
    """The reference library: well-trained networks whose patterns `compare` uses.

    \b
    Shipped references are built by `python scripts/build_references.py`; your own go to
    $ENTROPY_PROBE_REFERENCE_DIR (default ~/.local/share/entropy_probe/references).
    """


@reference.command(name="list")
@_friendly_errors
def reference_list() -> None:
    """Every reference, grouped by family, with its provenance."""
    library = load_library()
    table = Table(show_edge=False, pad_edge=False)
    for col in ("family", "name", "layers", "metric", "checkpoint", "origin"):
        table.add_column(col)
    for family, members in library.families.items():
        for ref in members:
            table.add_row(
                family,
                ref.name,
                str(ref.layers),
                _metric_label(ref),
                ref.provenance.checkpoint,
                _origin(ref),
            )
    console = _console()
    console.print(table)
    console.print(f"user references: {user_reference_dir()}")


def _metric_label(ref: Reference) -> str:
    """The metric reached; for a shipped network without one, that the vendor trained it (it
    publishes no metric we can check); for a user reference without one, that none was given."""
    prov = ref.provenance
    if prov.untrained:
        return "untrained (random init)"
    if prov.metric_value is not None:
        return f"{prov.metric} {prov.metric_value:.4g}"
    if prov.metric:
        return prov.metric
    return "— (no --metric given)" if ref.user else "vendor-trained"


def _origin(ref: Reference) -> str:
    return "user-added" if ref.user else "shipped"


def _show_reference(ref: Reference, quantity: Quantity) -> dict[str, Any]:
    return {**ref.to_dict(), "pattern": ref.pattern(quantity).to_dict()}


@reference.command(name="show")
@click.argument("name")
@_quantity_option
@click.option("--json", "json_path", metavar="PATH|-", help="Write it as JSON; - for stdout.")
@_friendly_errors
def reference_show(name: str, quantity: str, json_path: str | None) -> None:
    """One reference (NAME) or a whole family's band (FAMILY)."""
    _check_json_path(json_path)
    library = load_library()
    q = Quantity(quantity)
    known = sorted([*library.families, *(r.name for r in library.references)])
    if name not in known:
        raise unknown_name("reference or family", name, known, listing="known")
    if name in library.families:
        band = family_band(name, library.family(name), q)
        data: dict[str, Any] = band.to_dict()
        if json_path:
            write_json_option(data, json_path)
            return
        console = _console()
        console.print(f"[bold]family {name}[/bold]: {', '.join(band.members)}  ({q})")
        table = Table(show_edge=False, pad_edge=False)
        for col in ("group", "depth", "lower", "center", "upper"):
            table.add_column(col, justify="right")
        for group, band_points in band.points.items():
            for p in band_points[::2]:
                table.add_row(
                    str(group),
                    f"{p.depth:.2f}",
                    f"{p.lower:.3f}",
                    f"{p.center:.3f}",
                    f"{p.upper:.3f}",
                )
        console.print(table)
        return
    ref = library.get(name)
    data = _show_reference(ref, q)
    if json_path:
        write_json_option(data, json_path)
        return
    console = _console()
    prov = ref.provenance
    console.print(
        f"[bold]{ref.name}[/bold]  family {ref.family}  ({ref.architecture})  {_origin(ref)}"
    )
    console.print(f"checkpoint: {prov.checkpoint}  sha256 {prov.sha256[:12] or '—'}")
    console.print(f"data: {prov.data}")
    metric = (
        f"{prov.metric} = {prov.metric_value}"
        if prov.metric_value is not None
        else _metric_label(ref)
    )
    console.print(f"metric: {metric}   built {prov.date} by {prov.command or '—'}")
    table = Table(show_edge=False, pad_edge=False)
    for col in ("group", "depth", str(q)):
        table.add_column(col, justify="right")
    for group, points in ref.points.get(q, {}).items():
        for depth, value in points:
            table.add_row(str(group), f"{depth:.2f}", f"{value:.3f}")
    console.print(table)


def _parse_metric(text: str | None) -> tuple[str, float | None]:
    if not text:
        return "", None
    label, sep, value = text.rpartition("=")
    if not sep or not label.strip():
        raise click.BadParameter(f"{text!r}: expected LABEL=VALUE, e.g. 'val accuracy=0.973'")
    try:
        return label.strip(), float(value)
    except ValueError:
        raise click.BadParameter(f"{text!r}: the value after '=' must be a number") from None


@reference.command(name="add", epilog=_SOURCES)
@_model_options("paper", measure=False, source_required=True)
@click.option("--name", required=True, help="Name of the new reference (letters, digits, _-.).")
@click.option(
    "--family",
    required=True,
    help="Family it belongs to: an existing one (see `reference list`) or a new name.",
)
@click.option(
    "--metric",
    metavar="LABEL=VALUE",
    help="The metric it reached, e.g. 'held-out accuracy=0.973' (recorded as provenance).",
)
@click.option("--trained-on", "trained_on", default="", help="What it was trained on (provenance).")
@click.option(
    "--allow-untrained",
    is_flag=True,
    help="Add it even though the loader reports random initial weights (e.g. zoo:NAME or "
    "timm:NAME without --weights); marked untrained. Only for deliberate controls: untrained "
    "members widen the family band toward random init and raise every agreement score.",
)
@_friendly_errors
def reference_add(
    name: str,
    family: str,
    metric: str | None,
    trained_on: str,
    allow_untrained: bool,
    **opts: Any,
) -> None:
    """Add a well-trained checkpoint SOURCE of yours as a reference.

    It is profiled now and stored as NAME.json in $ENTROPY_PROBE_REFERENCE_DIR (default
    ~/.local/share/entropy_probe/references; never inside the installed package). Refused:
    a NAME already used (shipped or yours), a NAME that is a family name or a FAMILY that is
    a reference name (`--reference` could not tell them apart), the keywords auto, default
    and none, and a SOURCE with random initial weights (unless --allow-untrained). `compare`
    and `report` then include it in the band of FAMILY (with --reference FAMILY, or with
    auto when auto picks that family). A bare state dict is refused: it has no layer order;
    give the architecture.
    """
    label, value = _parse_metric(metric)
    # a broken user directory or a name --reference could not reach fails before the model
    # loads
    check_new_reference(name, family, load_library())
    result = _run_profile(opts)
    source = str(opts["source"])
    provenance = Provenance(
        checkpoint=Path(source).name if Path(source).exists() else source,
        sha256=_sha_of(opts),
        data=trained_on,
        metric=label,
        metric_value=value,
        date=today(),
        command="entropy-probe reference add",
    )
    ref = reference_from_profile(
        result,
        name=name,
        family=family,
        architecture=result.format,
        provenance=provenance,
        allow_untrained=allow_untrained,
    )
    path = save_user_reference(ref)
    untrained = ", UNTRAINED: random init" if ref.provenance.untrained else ""
    click.echo(f"added reference {name} (family {family}, {ref.layers} layers{untrained}) → {path}")


def _sha_of(opts: dict[str, Any]) -> str:
    from entropy_probe.patterns.reference import file_sha256

    for candidate in (opts.get("weights"), opts.get("source")):
        if candidate and Path(candidate).is_file():
            return file_sha256(candidate)
    return ""
