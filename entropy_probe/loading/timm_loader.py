"""``timm:NAME`` (+ ``--weights FILE``) and directories written by timm's ``save_for_hf``."""

from __future__ import annotations

import difflib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from entropy_probe.errors import SourceError, UnknownNameError, first_line
from entropy_probe.loading._base import LoadedModel, Loader, LoadOptions, seeded_init
from entropy_probe.loading.torch_file import load_into, read_weights

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pt", "model.pth")


def _timm() -> Any:
    try:
        import timm
    except ImportError as exc:  # pragma: no cover - timm is a dependency
        raise SourceError("timm is not installed: pip install timm") from exc
    return timm


def _check_name(timm: Any, name: str) -> None:
    if timm.is_model(name):
        return
    base = name.split(".")[0]
    close = difflib.get_close_matches(base, timm.list_models(), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UnknownNameError(
        f"unknown timm model {name!r}.{hint} "
        "`python -c \"import timm; print(timm.list_models('*res*'))\"` lists names."
    )


def _input_shape(model: nn.Module, options: LoadOptions) -> tuple[int, ...]:
    if options.input_shape is not None:
        return options.input_shape
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = tuple(int(s) for s in cfg.get("input_size") or (3, 224, 224))
    # The config keeps the pretrained channel count; a model built with in_chans (read off
    # fine-tuned weights or a saved config) says its own in its stem.
    first = cfg.get("first_conv")
    try:
        stem = model.get_submodule(first) if isinstance(first, str) else None
    except AttributeError:
        stem = None
    channels = getattr(stem, "in_channels", None)
    return (int(channels), *size[1:]) if isinstance(channels, int) else size


def find_weight_file(directory: Path) -> Path:
    for name in _WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    raise SourceError(
        f"{directory} has a config.json but no weights file ({', '.join(_WEIGHT_FILES)})"
    )


def read_config(directory: Path) -> dict[str, Any]:
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise SourceError(
            f"{directory} has no config.json: it is not a save_pretrained directory. "
            "Point at the weights file instead, or give the architecture "
            "(timm:NAME --weights FILE)."
        )
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SourceError(f"{cfg_path} is not valid JSON: {exc}") from exc
    if not isinstance(cfg, dict):
        raise SourceError(f"{cfg_path} must hold a JSON object")
    return cfg


def config_has_key(directory: Path, key: str) -> bool:
    """True when ``directory/config.json`` is a JSON object with ``key`` (loader sniffing)."""
    try:
        return key in read_config(directory)
    except SourceError:
        return False


class TimmLoader(Loader):
    scheme = "timm"
    accepts_weights = True
    description = "timm:NAME architecture (+ --weights FILE), or a timm save_for_hf directory"

    def claims_directory(self, path: Path) -> bool:
        return config_has_key(path, "architecture")

    def load(self, ident: str, options: LoadOptions) -> LoadedModel:
        timm = _timm()
        path = Path(ident).expanduser()
        if path.is_dir():
            return self._load_dir(timm, path, options)
        _check_name(timm, ident)
        state = (
            read_weights(options.weights, trust_pickle=options.trust_pickle)
            if options.weights
            else None
        )
        kwargs: dict[str, Any] = {}
        if state is not None:
            kwargs = _head_kwargs(timm, ident, state)
        with seeded_init():
            model = timm.create_model(ident, pretrained=False, **kwargs)
        notes = []
        if state is not None:
            load_into(model, state, f"timm:{ident}", strict=options.strict)
        else:
            notes.append(
                "no --weights given: the architecture has RANDOM initial weights (seed 0, the "
                "same every run), so this profile describes an untrained network"
            )
        return LoadedModel(
            source=f"timm:{ident}",
            format="timm",
            module=model.eval(),
            input_shape=_input_shape(model, options),
            pretrained=state is not None,
            notes=notes,
            meta={"architecture": ident},
        )

    def _load_dir(self, timm: Any, path: Path, options: LoadOptions) -> LoadedModel:
        cfg = read_config(path)
        arch = cfg.get("architecture")
        if arch is None:
            raise SourceError(f"{path}/config.json has no 'architecture': not a timm directory")
        if not isinstance(arch, str) or not arch:
            raise SourceError(
                f"{path}/config.json: 'architecture' must be a timm model name such as "
                f'"resnet18", got {json.dumps(arch)}'
            )
        _check_name(timm, arch)
        raw_args = cfg.get("model_args")
        model_args: dict[str, Any] = raw_args if isinstance(raw_args, dict) else {}
        kwargs: dict[str, Any] = dict(model_args)
        kwargs.update({k: cfg[k] for k in ("num_classes", "in_chans") if k in cfg})
        try:
            with seeded_init():
                model = timm.create_model(arch, pretrained=False, **kwargs)
        except (TypeError, ValueError, KeyError, AssertionError, RuntimeError) as exc:
            raise SourceError(
                f"{path}/config.json does not describe a valid {arch}: {first_line(exc)}"
            ) from exc
        saved_cfg = cfg.get("pretrained_cfg")
        saved_size = saved_cfg.get("input_size") if isinstance(saved_cfg, dict) else None
        img_size = model_args.get("img_size")
        if options.input_shape is None and img_size is not None:
            hw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
            chans = int(kwargs.get("in_chans", saved_size[0] if saved_size else 3))
            options = replace(options, input_shape=(chans, *(int(v) for v in hw)))
        elif options.input_shape is None and saved_size:
            options = replace(options, input_shape=tuple(int(s) for s in saved_size))
        weights = options.weights or find_weight_file(path)
        load_into(
            model,
            read_weights(weights, trust_pickle=options.trust_pickle),
            str(path),
            strict=options.strict,
        )
        return LoadedModel(
            source=str(path),
            format="timm",
            module=model.eval(),
            input_shape=_input_shape(model, options),
            meta={"architecture": arch, "directory": str(path)},
        )


def _head_kwargs(timm: Any, name: str, state: dict[str, Any]) -> dict[str, Any]:
    """num_classes / in_chans read off the weights, so fine-tuned heads load without flags.

    The classifier / stem names and defaults come from the registered pretrained config, so no
    throw-away model is built; only a model without one is built to be asked.
    """
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is not None:
        classifier, first, default_classes = cfg.classifier, cfg.first_conv, cfg.num_classes
        default_chans = (cfg.input_size or (3,))[0]
    else:
        with seeded_init():
            probe = timm.create_model(name, pretrained=False)
        defaults = getattr(probe, "default_cfg", {}) or {}
        classifier, first = defaults.get("classifier"), defaults.get("first_conv")
        default_classes = probe.num_classes
        default_chans = defaults.get("input_size", (3,))[0]
    kwargs: dict[str, Any] = {}
    head = state.get(f"{classifier}.weight") if isinstance(classifier, str) else None
    if head is not None and head.dim() >= 1 and head.shape[0] != default_classes:
        kwargs["num_classes"] = int(head.shape[0])
    stem = state.get(f"{first}.weight") if isinstance(first, str) else None
    if stem is not None and stem.dim() >= 2 and stem.shape[1] != default_chans:
        kwargs["in_chans"] = int(stem.shape[1])
    return kwargs
