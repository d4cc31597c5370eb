"""Reference patterns of well-trained networks and the comparison against them.

>>> from entropy_probe import profile
>>> from entropy_probe.patterns import compare_with
>>> compare_with(profile("default"), "auto").verdict()  # doctest: +SKIP
'agreement 0.96 with the classifier_cnn family: ...'
"""

from entropy_probe.patterns.compare import COMPARISON_SCHEMA, Comparison, FamilyBand, family_band
from entropy_probe.patterns.pattern import (
    DEFAULT_QUANTITY,
    DepthCurve,
    LayerGroup,
    Quantity,
    ReferencePattern,
    layer_value,
    profile_pattern,
)
from entropy_probe.patterns.reference import Reference, ReferenceLibrary, load_library
from entropy_probe.patterns.select import AUTO, compare_with, guess_family, resolve_pattern

__all__ = [
    "AUTO",
    "COMPARISON_SCHEMA",
    "DEFAULT_QUANTITY",
    "Comparison",
    "DepthCurve",
    "FamilyBand",
    "LayerGroup",
    "Quantity",
    "Reference",
    "ReferenceLibrary",
    "ReferencePattern",
    "compare_with",
    "family_band",
    "guess_family",
    "layer_value",
    "load_library",
    "profile_pattern",
    "resolve_pattern",
]
