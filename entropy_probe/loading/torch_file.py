"""torch state dicts (``.pt/.pth/.bin``, read with ``weights_only=True``) and safetensors."""

from __future__ import annotations

import pickle
import struct
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from entropy_probe.errors import SourceError, first_line
from entropy_probe.loading._base import LoadedModel, Loader, LoadOptions

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
FORMAT_NAMES = {
    "torch": "a torch checkpoint",
    "safetensors": "safetensors",
    "onnx": "an ONNX model",
}
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "weights")


def existing_file(path: str | Path) -> Path:
    """``path`` as a Path, or a SourceError saying it is missing or not a file."""
    p = Path(path).expanduser()
    if not p.exists():
        raise SourceError(f"file not found: {p}")
    if not p.is_file():
        raise SourceError(f"not a file: {p}")
    if p.stat().st_size == 0:
        raise SourceError(f"{p} is empty (0 bytes)")
    return p


def sniff_format(path: Path) -> str | None:
    """The loader scheme a file's first bytes point to (``torch``, ``safetensors``, ``onnx``),
    or None. Only for messages: a file is read by its extension or an explicit prefix."""
    try:
        with path.open("rb") as handle:
            head = handle.read(16)
        size = path.stat().st_size
    except OSError:
        return None
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # zip or legacy pickle
        return "torch"
    if len(head) > 9 and 2 <= struct.unpack("<Q", head[:8])[0] < size and head[8:9] == b"{":
        return "safetensors"
    if head[:1] == b"\x08":  # ONNX ModelProto starts with ir_version (field 1, varint)
        import onnx

        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception:
            return None
        return "onnx" if len(model.graph.node) else None
    return None


def wrong_format_hint(path: Path, expected: str) -> str | None:
    """ "It looks like ...: give it as SCHEME:PATH" when the content is another format."""
    actual = sniff_format(path)
    if actual is None or actual == expected:
        return None
    return f"It looks like {FORMAT_NAMES[actual]}: give it as {actual}:{path} (or fix its name)"


def _corrupt(path: Path, scheme: str, detail: str) -> SourceError:
    """The one message for a file that is not a readable ``scheme`` file, and what to do."""
    hint = wrong_format_hint(path, scheme) or (
        "The file is corrupt, truncated or of another format: re-save the weights "
        "(torch.save(model.state_dict(), PATH) or safetensors' save_file)"
    )
    return SourceError(
        f"cannot read {path} as {FORMAT_NAMES[scheme]}: {detail.rstrip('.')}. {hint}"
    )


def _unwrap(obj: Any, path: Path) -> dict[str, Tensor]:
    """A flat name → tensor dict from a state dict or a common training checkpoint."""
    if isinstance(obj, Mapping):
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
        if tensors and all(k.startswith("module.") for k in tensors):  # saved from DDP
            tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
        if tensors:
            return tensors
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                return _unwrap(obj[key], path)
    found = "a single tensor" if isinstance(obj, Tensor) else type(obj).__name__
    raise SourceError(
        f"{path} holds no named tensors (found {found}); expected a state_dict "
        "(a mapping of parameter names to tensors, e.g. torch.save(model.state_dict(), PATH))"
    )


def _torch_load(path: Path, *, weights_only: bool) -> Any:
    """``torch.load`` from an open file: given a path ending in ``.safetensors`` torch would
    read it as safetensors instead, whatever ``torch:`` said."""
    with path.open("rb") as handle:
        return torch.load(handle, map_location="cpu", weights_only=weights_only)


def read_torch_file(
    path: str | Path, *, trust_pickle: bool = False
) -> dict[str, Tensor] | nn.Module:
    """Read a torch checkpoint safely; a full pickled model is refused unless trusted."""
    p = existing_file(path)
    try:
        obj = _torch_load(p, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc) and "unsupported global" not in str(exc).lower():
            raise _corrupt(p, "torch", "its pickle data is invalid") from exc
        if not trust_pickle:
            raise SourceError(
                f"{p} contains pickled Python objects (e.g. a whole model), and unpickling can run "
                "arbitrary code, so it was not loaded. Save `model.state_dict()` with "
                "torch.save or "
                "safetensors instead, or pass --trust-pickle if you trust its author."
            ) from exc
        warnings.warn(
            f"--trust-pickle: unpickling {p}; this runs any code the file contains",
            stacklevel=2,
        )
        try:
            obj = _torch_load(p, weights_only=False)
        except Exception as inner:  # the pickle names code that is not importable here
            raise SourceError(
                f"--trust-pickle: unpickling {p} failed: {first_line(inner)}. The "
                "pickle needs the Python classes it was saved from; save a state_dict instead."
            ) from inner
    except (
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        OSError,
        ValueError,
        KeyError,
        IndexError,
        TypeError,
        AttributeError,
        AssertionError,  # e.g. "saved_id must be a tuple, got int" from a flipped bit
        struct.error,
    ) as exc:  # torch's weights-only unpickler raises all of these on garbage bytes
        detail = first_line(exc, 160)
        if len(detail) < 12:  # a bare KeyError(101) (the byte 'e') tells a user nothing
            detail = f"not a pickle or zip checkpoint ({type(exc).__name__}: {detail})"
        raise _corrupt(p, "torch", detail) from exc
    if isinstance(obj, nn.Module):
        return obj
    return _unwrap(obj, p)


def read_safetensors(path: str | Path) -> dict[str, Tensor]:
    p = existing_file(path)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state: dict[str, Tensor] = load_file(str(p), device="cpu")
        return state
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _corrupt(p, "safetensors", first_line(exc, 160)) from exc


def read_weights(path: str | Path, *, trust_pickle: bool = False) -> dict[str, Tensor]:
    """A state dict from a ``.safetensors`` or torch file (for ``--weights``)."""
    p = Path(path)
    if p.suffix.lower() == ".safetensors":
        return read_safetensors(p)
    obj = read_torch_file(p, trust_pickle=trust_pickle)
    if isinstance(obj, nn.Module):
        return {k: v.detach() for k, v in obj.state_dict().items()}
    return obj


def load_into(module: nn.Module, state: Mapping[str, Tensor], source: str, *, strict: bool) -> None:
    """``module.load_state_dict(state)`` with a readable error on mismatch."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if wrong or (strict and (missing or unexpected)):
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} shape mismatch(es), e.g. {wrong[0]}")
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[0]!r}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]!r}")
        raise SourceError(
            f"the weights do not fit {source}: {'; '.join(parts)}. "
            "Check the architecture name (and classes/in_channels) the weights were saved from."
        )
    module.load_state_dict(state, strict=strict)


class StateDictLoader(Loader):
    scheme = "torch"
    extensions = TORCH_SUFFIXES
    description = "torch state dict (.pt/.pth/.bin), read with weights_only=True"

    def load(self, ident: str, options: LoadOptions) -> LoadedModel:
        obj = read_torch_file(ident, trust_pickle=options.trust_pickle)
        if isinstance(obj, nn.Module):
            return LoadedModel(
                source=ident, format="torch", module=obj.eval(), input_shape=options.input_shape
            )
        return _bare(ident, "torch", obj, options)


class SafetensorsLoader(Loader):
    scheme = "safetensors"
    extensions = (".safetensors",)
    description = "safetensors state dict"

    def load(self, ident: str, options: LoadOptions) -> LoadedModel:
        return _bare(ident, "safetensors", read_safetensors(ident), options)


def _bare(ident: str, fmt: str, state: dict[str, Tensor], options: LoadOptions) -> LoadedModel:
    if options.input_shape is not None:
        raise SourceError(
            f"--input-shape needs an architecture, and {ident} is a bare state dict (weights "
            "only: no layer order, no input sizes). Give the architecture, e.g. "
            "`entropy-probe profile timm:resnet18 --weights FILE --input-shape 3,224,224`"
        )
    return LoadedModel(
        source=ident,
        format=fmt,
        state_dict=state,
        input_shape=None,
        notes=[
            "a state dict has no architecture: per-dimension values only; positions, "
            "whole-layer ΔH and spectral values unknown (null). Give the architecture to get "
            "them, e.g. "
            "`entropy-probe profile timm:resnet18 --weights FILE` "
            "or `smp:Unet/resnet34 --weights FILE`."
        ],
    )
