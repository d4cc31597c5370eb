"""Reference networks: the per-layer pattern of one well-trained checkpoint, with provenance,
and where references live (the shipped library and the user's own directory).

A reference stores its layers' raw (depth, value) points for every quantity, so bands can be
rebuilt with any grid or quantity later. The shipped library is package data
(``entropy_probe/patterns/data/references.json``, rebuilt by ``scripts/build_references.py``);
user references are one JSON file each under :func:`user_reference_dir`, never inside the
installed package.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from entropy_probe._io import atomic_write_text
from entropy_probe.entropy.profile import Profile
from entropy_probe.errors import DuplicateNameError, EntropyProbeError, SourceError, unknown_name
from entropy_probe.patterns.pattern import (
    DepthCurve,
    LayerGroup,
    Quantity,
    ReferencePattern,
    pattern_points,
    relative_excess_defined,
)

__all__ = [
    "AUTO",
    "NONE",
    "REFERENCE_SCHEMA",
    "RESERVED_NAMES",
    "USER_DIR_ENV",
    "Provenance",
    "Reference",
    "ReferenceLibrary",
    "check_new_reference",
    "file_sha256",
    "load_library",
    "reference_from_profile",
    "user_reference_dir",
]

REFERENCE_SCHEMA = "entropy_probe.references/1"
USER_DIR_ENV = "ENTROPY_PROBE_REFERENCE_DIR"
_SHIPPED = "references.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# Words ``--reference`` reads before any family or reference name: ``auto`` (family from the
# architecture), ``none`` (``report``: no comparison) and ``default`` (``finetune``: the
# embedded default model as a checkpoint). No family or reference may be named like them.
AUTO, NONE, DEFAULT_SOURCE = "auto", "none", "default"
RESERVED_NAMES = (AUTO, DEFAULT_SOURCE, NONE)

Points = tuple[tuple[float, float], ...]
_RelativeLayer = tuple[float, float, float | None]  # depth, relative_excess, |E[s]|


@dataclass(frozen=True)
class Provenance:
    """Where a reference came from: enough to rebuild it and to judge it."""

    checkpoint: str  # what was profiled, by package/repo-relative name (never a machine path)
    sha256: str  # of the checkpoint file ("" when it is built in code)
    data: str  # what it was trained on
    metric: str = ""  # e.g. "held-out accuracy"; "" when the vendor publishes none we can check
    metric_value: float | None = None
    date: str = ""  # ISO date the reference was built
    command: str = ""  # the command that built it
    untrained: bool = False  # random-init weights, added on purpose (--allow-untrained)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "checkpoint": self.checkpoint,
            "sha256": self.sha256,
            "data": self.data,
            "metric": self.metric,
            "metric_value": self.metric_value,
            "date": self.date,
            "command": self.command,
        }
        if self.untrained:  # written only when set: trained references keep their old form
            out["untrained"] = True
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Provenance:
        value = data.get("metric_value")
        return cls(
            checkpoint=str(data.get("checkpoint", "")),
            sha256=str(data.get("sha256", "")),
            data=str(data.get("data", "")),
            metric=str(data.get("metric", "")),
            metric_value=None if value is None else float(value),
            date=str(data.get("date", "")),
            command=str(data.get("command", "")),
            untrained=bool(data.get("untrained", False)),
        )


@dataclass(frozen=True)
class Reference:
    """One well-trained network's pattern: per quantity and layer group, its layers' (relative
    depth, value) points."""

    name: str
    family: str
    architecture: str
    provenance: Provenance
    points: Mapping[Quantity, Mapping[LayerGroup, Points]]
    layers: int = 0  # analysed dense/conv layers
    user: bool = field(default=False, compare=False)  # from the user directory

    def _relative_layers(self, group: LayerGroup) -> tuple[_RelativeLayer, ...]:
        """(depth, relative_excess, |E[s]|) of every stored ``group`` layer. E[s] is not
        stored, but relative_excess = shape_excess / |E[s]| for each layer, so |E[s]| is the
        ratio of the layer's two stored values (None where both are 0)."""
        points = self.points.get(Quantity.RELATIVE_EXCESS, {}).get(group, ())
        partner = self.points.get(Quantity.SHAPE_EXCESS, {}).get(group, ())
        if len(partner) != len(points) or any(
            abs(d1 - d2) > 1e-9 for (d1, _), (d2, _) in zip(points, partner, strict=True)
        ):
            raise SourceError(
                f"reference {self.name!r}: its {group} relative_excess and shape_excess points "
                "are not the same layers; remove it and add it again (reference add)"
            )
        return tuple(
            (d, rel, ex / rel if rel != 0.0 else None)
            for (d, rel), (_, ex) in zip(points, partner, strict=True)
        )

    def _compared_relative(self, group: LayerGroup) -> tuple[_RelativeLayer, ...]:
        return tuple(
            x for x in self._relative_layers(group) if x[2] is None or relative_excess_defined(x[2])
        )

    def comparable_points(self, quantity: Quantity | str) -> dict[LayerGroup, Points]:
        """The points comparisons and patterns use: all stored ones, except that
        ``relative_excess`` leaves out the layers where it is not defined (a random init of
        their shape has |E[s]| below ``RELATIVE_EXCESS_FLOOR``)."""
        quantity = Quantity(quantity)
        groups = self.points.get(quantity, {})
        if quantity is not Quantity.RELATIVE_EXCESS:
            return {g: p for g, p in groups.items() if p}
        out = {}
        for group in groups:
            kept = tuple((d, v) for d, v, _ in self._compared_relative(group))
            if kept:
                out[group] = kept
        return out

    def relative_baselines(self, group: LayerGroup | str) -> tuple[float | None, ...]:
        """|E[s]| of each layer of ``comparable_points(relative_excess)[group]``, in order
        (None where it cannot be recovered: shape_excess exactly 0)."""
        return tuple(base for _, _, base in self._compared_relative(LayerGroup(group)))

    def pattern(self, quantity: Quantity | str) -> ReferencePattern:
        quantity = Quantity(quantity)
        groups = self.comparable_points(quantity)
        curves = {g: DepthCurve.from_points(p) for g, p in groups.items()}
        if not curves:
            raise EntropyProbeError(f"reference {self.name!r} has no {quantity} values")
        return ReferencePattern(quantity, curves, self.name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "architecture": self.architecture,
            "layers": self.layers,
            "provenance": self.provenance.to_dict(),
            "points": {
                str(q): {str(g): [[round(d, 6), v] for d, v in pts] for g, pts in groups.items()}
                for q, groups in self.points.items()
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, user: bool = False) -> Reference:
        try:
            points = {
                Quantity(q): {
                    LayerGroup(g): tuple((float(d), float(v)) for d, v in pts)
                    for g, pts in groups.items()
                }
                for q, groups in data["points"].items()
            }
            return cls(
                name=str(data["name"]),
                family=str(data["family"]),
                architecture=str(data.get("architecture", "")),
                provenance=Provenance.from_dict(data.get("provenance", {})),
                points=points,
                layers=int(data.get("layers", 0)),
                user=user,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SourceError(f"malformed reference record: {exc}") from None


def reference_from_profile(
    profile: Profile,
    *,
    name: str,
    family: str,
    architecture: str,
    provenance: Provenance,
    allow_untrained: bool = False,
) -> Reference:
    """Turn a well-trained network's profile into a reference (all quantities kept).

    A profile of random-init weights (``profile.pretrained`` False: no trained weights were
    loaded) is refused unless ``allow_untrained``; it is then marked untrained in the
    provenance."""
    _check_name(name, "reference name")
    _check_name(family, "family name")
    if not profile.pretrained:
        if not allow_untrained:
            raise EntropyProbeError(
                f"{profile.source} has random initial weights (no trained weights were given, "
                "or they are a random-init snapshot), so it is refused as a reference: a "
                "reference pattern should come "
                "from a well-trained network, and an untrained member widens its family's "
                "band toward the random-init value, raising every comparison's agreement; "
                "give the trained weights (--weights FILE), or pass --allow-untrained to add "
                "it anyway (e.g. as a deliberate random-init control)"
            )
        provenance = dataclasses.replace(provenance, untrained=True)
    points: dict[Quantity, dict[LayerGroup, Points]] = {}
    layers = 0
    for quantity in Quantity:
        groups: dict[LayerGroup, list[tuple[float, float]]] = {}
        for layer, group, value in pattern_points(profile, quantity):
            assert layer.depth is not None  # pattern_points keeps layers with a depth only
            groups.setdefault(group, []).append((round(layer.depth, 6), value))
        points[quantity] = {g: tuple(p) for g, p in groups.items()}
        layers = max(layers, sum(len(p) for p in groups.values()))
    if not layers:
        raise EntropyProbeError(
            f"{profile.source}: no analysed dense or conv layer, so it cannot be a reference"
        )
    return Reference(name, family, architecture, provenance, points, layers)


def _check_name(name: str, what: str) -> None:
    if not _NAME.match(name):
        raise EntropyProbeError(
            f"{what} {name!r} is not allowed: use 1–64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def today() -> str:
    return dt.date.today().isoformat()


# --------------------------------------------------------------------------------------------
# storage


def user_reference_dir() -> Path:
    """Where ``reference add`` stores user references: ``$ENTROPY_PROBE_REFERENCE_DIR``, else
    ``$XDG_DATA_HOME/entropy_probe/references`` (default ``~/.local/share/...``)."""
    explicit = os.environ.get(USER_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser() / "entropy_probe" / "references"


def library_document(references: Iterable[Reference]) -> dict[str, Any]:
    """The shipped file's JSON document (references sorted by family, then name)."""
    ordered = sorted(references, key=lambda r: (r.family, r.name))
    return {"schema": REFERENCE_SCHEMA, "references": [r.to_dict() for r in ordered]}


def _read_document(text: str, where: str, *, user: bool) -> list[Reference]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SourceError(f"{where} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(document, dict) or document.get("schema") != REFERENCE_SCHEMA:
        found = document.get("schema") if isinstance(document, dict) else type(document).__name__
        raise SourceError(
            f"{where} has schema {found!r}, expected {REFERENCE_SCHEMA!r}: not a reference file "
            "written by this version of entropy-probe"
        )
    try:
        return [Reference.from_dict(r, user=user) for r in document["references"]]
    except SourceError as exc:
        raise SourceError(f"{where}: {exc}") from None


def shipped_references() -> list[Reference]:
    resource = resources.files("entropy_probe.patterns") / "data" / _SHIPPED
    if not resource.is_file():
        return []
    return _read_document(resource.read_text(encoding="utf-8"), _SHIPPED, user=False)


def user_references(directory: Path | None = None) -> list[Reference]:
    directory = directory or user_reference_dir()
    if not directory.is_dir():
        return []
    out = []
    for path in sorted(directory.glob("*.json")):
        out.extend(_read_document(path.read_text(encoding="utf-8"), str(path), user=True))
    return out


@dataclass(frozen=True)
class ReferenceLibrary:
    """The shipped references plus the user's, by name and by family."""

    references: tuple[Reference, ...]

    @property
    def families(self) -> dict[str, list[Reference]]:
        out: dict[str, list[Reference]] = {}
        for ref in self.references:
            out.setdefault(ref.family, []).append(ref)
        return dict(sorted(out.items()))

    def get(self, name: str) -> Reference:
        for ref in self.references:
            if ref.name == name:
                return ref
        raise unknown_name(
            "reference", name, sorted(r.name for r in self.references), listing="known"
        )

    def family(self, family: str, *, exclude: Iterable[str] = ()) -> list[Reference]:
        members = [r for r in self.families.get(family, []) if r.name not in set(exclude)]
        if family not in self.families:
            raise unknown_name("reference family", family, list(self.families), listing="known")
        return members


def _reserved(what: str, name: str) -> str:
    return (
        f"{what} {name!r} is reserved: --reference {name} means "
        + {
            AUTO: "'pick the family from the architecture'",
            NONE: "'no comparison' (report)",
            DEFAULT_SOURCE: "'the embedded default model' (finetune)",
        }[name]
    )


def _unreachable(name: str, family: str, others: Iterable[Reference]) -> tuple[str, str] | None:
    """Why ``--reference`` could not tell a reference ``name`` of ``family`` apart once it
    joins ``others`` (a
    name or family that is a keyword, or that another reference or family already answers
    to), and the option to change (``--name`` or ``--family``); None when it fits.
    ``--reference X`` reads keywords first, then families, then reference names, so a
    reference named like a family could never be selected, and a family named like a
    reference would hide that reference."""
    others = list(others)
    names = {r.name for r in others}
    families = {r.family for r in others}
    if name in RESERVED_NAMES:
        return _reserved("reference name", name), "--name"
    if family in RESERVED_NAMES:
        return _reserved("family name", family), "--family"
    if name in families or name == family:
        return (
            f"reference name {name!r} is also a family name: --reference {name} selects the "
            "family, never this reference"
        ), "--name"
    if family in names:
        return (
            f"family name {family!r} is also a reference name: --reference {family} would "
            f"select the family and no longer reach the reference {family}"
        ), "--family"
    return None


def load_library(user_dir: Path | None = None) -> ReferenceLibrary:
    """Shipped plus user references; a user reference may not reuse a shipped name, a family
    name or a keyword of ``--reference`` (nor a name another user reference has)."""
    directory = user_dir or user_reference_dir()
    shipped = shipped_references()
    names = {r.name for r in shipped}
    user = user_references(user_dir)
    clash = [r.name for r in user if r.name in names]
    if clash:
        raise SourceError(
            f"user reference(s) {', '.join(clash)} reuse shipped names: rename or remove them "
            f"in {directory}"
        )
    seen: set[str] = set()
    for ref in user:
        if ref.name in seen:
            raise SourceError(
                f"two user reference files in {directory} are both named {ref.name!r}: "
                "remove one of them"
            )
        seen.add(ref.name)
    everything = shipped + user
    for ref in user:
        problem = _unreachable(ref.name, ref.family, [r for r in everything if r is not ref])
        if problem:
            raise SourceError(
                f"user reference {ref.name!r} in {directory}: {problem[0]}; remove its file "
                f"and add it again with another {problem[1]}"
            )
    return ReferenceLibrary(tuple(everything))


def check_new_reference(
    name: str, family: str, library: ReferenceLibrary, directory: Path | None = None
) -> None:
    """Refuse a new user reference ``name`` of ``family`` that ``--reference`` could not
    reach, or that would hide an existing one: a taken name, a family name used as a
    reference name or the reverse, a keyword (auto, default, none). ``reference add`` calls
    it before the model loads, and :func:`save_user_reference` again before writing."""
    _check_name(name, "reference name")
    _check_name(family, "family name")
    clash = next((r for r in library.references if r.name == name), None)
    if clash is not None:
        where = (
            f"your reference directory {directory or user_reference_dir()} holds it: delete "
            "its file first, or choose another --name"
            if clash.user
            else "it is a shipped reference: choose another --name"
        )
        raise DuplicateNameError(f"a reference named {name!r} exists already; {where}")
    problem = _unreachable(name, family, library.references)
    if problem:
        raise DuplicateNameError(f"{problem[0]}; choose another {problem[1]}")


def save_user_reference(reference: Reference, directory: Path | None = None) -> Path:
    """Write one user reference atomically as ``<name>.json``; refuses to overwrite, and
    refuses a name ``--reference`` could not reach (see :func:`check_new_reference`)."""
    directory = directory or user_reference_dir()
    check_new_reference(reference.name, reference.family, load_library(directory), directory)
    path = directory / f"{reference.name}.json"
    if path.exists():
        raise DuplicateNameError(
            f"{path} exists already (it holds another reference): delete it first, or choose "
            "another --name"
        )
    text = json.dumps(library_document([reference]), indent=1, allow_nan=False)
    return atomic_write_text(path, text + "\n")
