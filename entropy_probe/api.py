"""The library entry points the CLI calls."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from entropy_probe.entropy.profile import Profile, compute_profile
from entropy_probe.enums import ConvMethod
from entropy_probe.loading import DEFAULT_SOURCE, LoadedModel, LoadOptions, load_model
from entropy_probe.plugins import get_registry
from entropy_probe.walk.dispatch import walk


def profile_loaded(
    loaded: LoadedModel,
    *,
    method: ConvMethod | str = ConvMethod.PAPER,
    device: str = "auto",
) -> Profile:
    """The entropy profile of an already loaded model."""
    registry = get_registry()
    records = walk(loaded, registry)
    return compute_profile(
        records,
        registry.rules,
        source=loaded.source,
        format=loaded.format,
        input_shape=loaded.input_shape,
        method=method,
        device=device,
        num_params=loaded.num_params,
        pretrained=loaded.pretrained,
        notes=loaded.notes,
    )


def profile(
    source: str = DEFAULT_SOURCE,
    *,
    weights: str | Path | None = None,
    input_shape: Sequence[int] | None = None,
    method: ConvMethod | str = ConvMethod.PAPER,
    device: str = "auto",
    trust_pickle: bool = False,
) -> Profile:
    """Load ``source`` and compute its entropy profile.

    >>> from entropy_probe import profile
    >>> p = profile("default")              # the embedded MNIST CNN
    >>> [layer.name for layer in p.analysed][:2]
    ['features.0', 'features.1']
    """
    options = LoadOptions(
        weights=Path(weights) if weights is not None else None,
        input_shape=tuple(int(s) for s in input_shape) if input_shape is not None else None,
        trust_pickle=trust_pickle,
    )
    return profile_loaded(load_model(source, options), method=method, device=device)
