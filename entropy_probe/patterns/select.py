"""Pick a reference family for a profile, and resolve what ``--reference`` names.

``--reference`` accepts ``auto`` (the family is chosen from the architecture, and the choice is
said), a family name, the name of one reference (shipped or user), or a model source of a
well-trained checkpoint (profiled on the spot).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from entropy_probe.entropy.profile import Profile
from entropy_probe.errors import ArgumentError, UnknownNameError, enum_member, unknown_name
from entropy_probe.patterns.compare import Comparison, FamilyBand, compare_profile, family_band
from entropy_probe.patterns.pattern import (
    DEFAULT_QUANTITY,
    LayerGroup,
    Quantity,
    ReferencePattern,
    layer_group,
    profile_pattern,
)
from entropy_probe.patterns.reference import AUTO, NONE, ReferenceLibrary, load_library

__all__ = [
    "AUTO",
    "NONE",
    "Traits",
    "check_reference",
    "compare_with",
    "guess_family",
    "known_references",
    "resolve_band",
    "resolve_pattern",
]

CLASSIFIER, SEGMENTER = "classifier_cnn", "encoder_decoder"
DENSE_AE, CONV_AE = "dense_autoencoder", "conv_autoencoder"
DENSE_CLASSIFIER = "classifier_mlp"


@dataclass(frozen=True)
class Traits:
    """What the architecture looks like from its profile."""

    conv_layers: int
    dense_layers: int
    dense_prediction: bool  # the last analysed layer keeps a spatial map (segmenter, decoder)
    reconstructs: bool  # the last analysed layer's output has the input's size

    @classmethod
    def of(cls, profile: Profile) -> Traits:
        analysed = [x for x in profile.analysed if layer_group(x.kind) is not None]
        groups = [layer_group(x.kind) for x in analysed]
        last = analysed[-1] if analysed else None
        out = tuple(last.out_shape) if last is not None and last.out_shape else ()
        inp = tuple(profile.input_shape or ())
        spatial_in = math.prod(inp[1:]) if len(inp) > 1 else 0
        spatial_out = math.prod(out[1:]) if len(out) > 1 else 0
        return cls(
            conv_layers=groups.count(LayerGroup.CONV),
            dense_layers=groups.count(LayerGroup.DENSE),
            dense_prediction=bool(spatial_in and spatial_out * 16 >= spatial_in),
            reconstructs=bool(inp and out and math.prod(out) == math.prod(inp)),
        )


def guess_family(profile: Profile, families: list[str]) -> tuple[str, str]:
    """(family, why) for ``profile`` among the available ``families``."""
    traits = Traits.of(profile)
    if not families:
        raise UnknownNameError(
            "no reference families are installed: the shipped reference file is missing"
        )
    if traits.conv_layers == 0 and traits.dense_layers == 0:
        raise UnknownNameError(
            f"{profile.source}: no analysed dense or conv layer, so no family can be picked"
        )
    if traits.conv_layers == 0:
        wanted = DENSE_AE if traits.reconstructs else DENSE_CLASSIFIER
        why = (
            "dense layers only, output the size of the input"
            if traits.reconstructs
            else "dense layers only, output smaller than the input"
        )
    elif traits.dense_prediction:
        wanted = CONV_AE if traits.reconstructs and CONV_AE in families else SEGMENTER
        why = (
            "convolutional, reconstructs an input-sized output"
            if wanted == CONV_AE
            else "convolutional with a dense (per-pixel) output map"
        )
    else:
        wanted, why = CLASSIFIER, "convolutional with a non-spatial output (classifier head)"
    if wanted in families:
        return wanted, why
    fallback = DENSE_AE if traits.conv_layers == 0 and DENSE_AE in families else families[0]
    return fallback, f"{why}; no {wanted} family exists, nearest is {fallback}"


def known_references(library: ReferenceLibrary, keywords: Sequence[str] = (AUTO,)) -> list[str]:
    """Every name a ``--reference`` option accepts: its ``keywords`` (``auto``; ``report``'s
    also ``none``), the families and the references."""
    return sorted([*keywords, *library.families, *(r.name for r in library.references)])


def check_reference(
    reference: str, library: ReferenceLibrary, keywords: Sequence[str] = (AUTO,)
) -> None:
    """Refuse a ``--reference`` name that is none of ``keywords``, a family or a reference,
    listing exactly those; call it before loading the model (``report`` passes
    ``(AUTO, NONE)``)."""
    known = known_references(library, keywords)
    if reference not in known:
        raise unknown_name("reference", reference, known, listing="known")


def resolve_band(
    reference: str,
    profile: Profile,
    *,
    quantity: Quantity | str = DEFAULT_QUANTITY,
    library: ReferenceLibrary | None = None,
    exclude: tuple[str, ...] = (),
) -> tuple[FamilyBand, str]:
    """The band ``reference`` names for ``profile`` (``auto``, a family or a reference name),
    and a sentence saying how it was picked. ``exclude`` leaves references out (held-out
    evaluation: never compare a network with a band it helped build)."""
    library = library or load_library()
    families = list(library.families)
    if reference == AUTO:
        family, why = guess_family(profile, families)
        picked = f"picked automatically: {why}"
    elif reference in library.families:
        family, picked = reference, f"family {reference}"
    elif any(r.name == reference for r in library.references):
        single = library.get(reference)
        return family_band(single.name, [single], quantity), f"reference {single.name}"
    else:
        raise unknown_name("reference", reference, known_references(library), listing="known")
    members = library.family(family, exclude=exclude)
    return family_band(family, members, quantity), picked


def compare_with(
    profile: Profile,
    reference: str | None = AUTO,
    *,
    quantity: Quantity | str = DEFAULT_QUANTITY,
    library: ReferenceLibrary | None = None,
    exclude: tuple[str, ...] = (),
) -> Comparison:
    """``profile`` against the band ``reference`` names (``auto`` or None: picked from the
    architecture; a family; a reference), in ``quantity``."""
    if not isinstance(profile, Profile):
        raise ArgumentError(
            f"compare_with expects a Profile (from entropy_probe.profile), got "
            f"{type(profile).__name__}"
        )
    quantity = enum_member(Quantity, quantity, "quantity")
    band, picked = resolve_band(
        AUTO if reference is None else reference,
        profile,
        quantity=quantity,
        library=library,
        exclude=exclude,
    )
    return compare_profile(profile, band, picked=picked)


def resolve_pattern(
    reference: str | ReferencePattern,
    *,
    quantity: Quantity | str = DEFAULT_QUANTITY,
    profile: Profile | None = None,
    library: ReferenceLibrary | None = None,
    profile_source: Callable[[str], Profile] | None = None,
) -> ReferencePattern:
    """The target pattern for the fine-tuning losses.

    ``reference`` is a pattern already, ``auto`` (needs ``profile``: the model being tuned),
    a family name (its band's centre line), a reference name, or a model source of a
    well-trained checkpoint (profiled with ``profile_source``, default
    :func:`entropy_probe.api.profile`).
    """
    if isinstance(reference, ReferencePattern):
        return reference
    library = library or load_library()
    if reference == AUTO or reference in library.families:
        if reference == AUTO and profile is None:
            raise UnknownNameError("reference 'auto' needs the profile of the model being tuned")
        band, _ = resolve_band(reference, profile, quantity=quantity, library=library)  # type: ignore[arg-type]
        return band.pattern()
    if any(r.name == reference for r in library.references):
        return library.get(reference).pattern(quantity)
    if ":" not in reference and reference != "default" and not Path(reference).exists():
        raise unknown_name(
            "reference (family, reference name or checkpoint)",
            reference,
            known_references(library),
            listing="known",
        )
    if profile_source is None:
        from entropy_probe.api import profile as profile_source_default

        def profile_source(source: str) -> Profile:
            return profile_source_default(source, progress=False)

    return profile_pattern(profile_source(reference), quantity, label=reference)
