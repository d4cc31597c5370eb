"""Source strings → :class:`LoadedModel`. The loader is chosen by an explicit ``scheme:`` or
by the file itself (extension, then content for directories), never from class names."""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path

from torch import nn

from entropy_probe.errors import ArgumentError, SourceError
from entropy_probe.loading._base import LoadedModel as LoadedModel
from entropy_probe.loading._base import Loader as Loader
from entropy_probe.loading._base import LoadOptions as LoadOptions
from entropy_probe.loading._base import input_shape_from, module_source
from entropy_probe.plugins import PluginRegistry, get_registry

__all__ = ["LoadOptions", "LoadedModel", "Loader", "load_model", "parse_source"]

DEFAULT_SOURCE = "default"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9_+-]*):(.*)$")


def parse_source(source: str, registry: PluginRegistry | None = None) -> tuple[str, str]:
    """Split ``source`` into (scheme, identifier).

    ``timm:resnet18``, ``smp:Unet/resnet34``, ``onnx:model.onnx`` name their loader. A bare path
    is claimed by extension (``.onnx``, ``.safetensors``, ``.pt``...) or, for a directory, by
    the loader that understands its ``config.json``. Anything else is refused with the options.
    """
    registry = registry or get_registry()
    loaders = registry.loaders
    source = source.strip()
    if not source:
        raise SourceError("empty model source: give a path or scheme:name (e.g. timm:resnet18)")
    if source == DEFAULT_SOURCE:
        return DEFAULT_SOURCE, ""
    match = _SCHEME.match(source)
    if match and len(match.group(1)) > 1:  # one letter would be a Windows drive
        scheme, ident = match.group(1).lower(), match.group(2)
        if scheme in loaders:
            if not ident:
                raise SourceError(f"{scheme}: needs a name or path after the colon")
            return scheme, ident
        if not Path(source).exists():
            raise SourceError(
                loaders.unknown_message(scheme).replace("loader scheme", "source scheme")
            )
    path = Path(source).expanduser()
    if path.is_dir():
        claimants = [n for n in loaders.names() if loaders.get(n).claims_directory(path)]
        if len(claimants) == 1:
            return claimants[0], str(path)
        if claimants:
            raise SourceError(
                f"{path} could be read by {', '.join(claimants)}: "
                f"prefix it, e.g. {claimants[0]}:{path}"
            )
        raise SourceError(
            f"{path} is a directory but not a timm or SMP save_pretrained directory "
            "(no config.json with 'architecture' or '_model_class')"
        )
    suffix = path.suffix.lower()
    by_ext = [n for n in loaders.names() if suffix and suffix in loaders.get(n).extensions]
    if len(by_ext) == 1:
        return by_ext[0], str(path)
    if not path.exists():
        raise SourceError(
            f"{source!r} is neither an existing file nor a known source. Use a path to "
            ".onnx/.safetensors/.pt/.pth/.bin, a save_pretrained directory, or one of: "
            + ", ".join(f"{n}:" for n in loaders.names())
        )
    raise SourceError(
        f"cannot tell the format of {path} from its extension {suffix or '(none)'}: prefix it "
        f"with its format, e.g. onnx:{path} or torch:{path}"
    )


def load_model(
    source: str | os.PathLike[str] | nn.Module = DEFAULT_SOURCE,
    options: LoadOptions | None = None,
    registry: PluginRegistry | None = None,
) -> LoadedModel:
    """Load any supported source with the registered loaders: a source string or path, or an
    ``nn.Module`` already in memory (profiled as it is; give ``input_shape``)."""
    options = options or LoadOptions()
    options = replace(options, input_shape=input_shape_from(options.input_shape))
    if isinstance(source, nn.Module):
        return module_source(source, options)
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str):
        raise ArgumentError(
            "source must be a source string (timm:NAME, a path, ...), a path or an nn.Module; "
            f"got {type(source).__name__}"
        )
    registry = registry or get_registry()
    scheme, ident = parse_source(source, registry)
    loader = registry.loaders.get(scheme)
    if options.weights is not None and not loader.accepts_weights:
        raise SourceError(
            f"--weights applies to sources that name an architecture (timm:NAME, smp:ARCH/ENC); "
            f"a {scheme} source carries its own weights"
        )
    return loader.load(ident, options)
