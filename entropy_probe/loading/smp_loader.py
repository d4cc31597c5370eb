"""``smp:ARCH/ENCODER`` (+ ``--weights FILE``) and SMP ``save_pretrained`` directories."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

from entropy_probe.errors import SourceError, UnknownNameError
from entropy_probe.loading._base import LoadedModel, Loader, LoadOptions, seeded_init
from entropy_probe.loading.timm_loader import config_has_key, find_weight_file, read_config
from entropy_probe.loading.torch_file import load_into, read_weights

DEFAULT_SPATIAL = (256, 256)


def _smp() -> Any:
    try:
        import segmentation_models_pytorch as smp
    except ImportError as exc:  # pragma: no cover - a dependency
        raise SourceError(
            "segmentation-models-pytorch is not installed: pip install segmentation-models-pytorch"
        ) from exc
    return smp


def _closest(name: str, valid: list[str], what: str) -> UnknownNameError:
    close = difflib.get_close_matches(name.lower(), valid, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return UnknownNameError(f"unknown SMP {what} {name!r}.{hint} Valid: {', '.join(valid)}.")


def parse_smp_ident(smp: Any, ident: str) -> tuple[str, str]:
    if "/" not in ident:
        raise SourceError(
            f"SMP sources are smp:ARCH/ENCODER (e.g. smp:Unet/resnet34), got smp:{ident}"
        )
    arch, encoder = ident.split("/", 1)
    archs = sorted(smp.MODEL_ARCHITECTURES_MAPPING)
    if arch.lower() not in archs:
        raise _closest(arch, archs, "architecture")
    encoders = sorted(smp.encoders.get_encoder_names())
    if encoder.startswith("tu-"):  # SMP's timm-universal encoders: any timm model name
        import timm

        if not timm.is_model(encoder[3:]):
            raise UnknownNameError(f"unknown timm model {encoder[3:]!r} in SMP encoder {encoder!r}")
        return arch, encoder
    if encoder not in encoders:
        raise _closest(encoder, encoders, "encoder")
    return arch, encoder


class SmpLoader(Loader):
    scheme = "smp"
    accepts_weights = True
    description = "smp:ARCH/ENCODER (+ --weights FILE), or an SMP save_pretrained directory"

    def claims_directory(self, path: Path) -> bool:
        return config_has_key(path, "_model_class")

    def load(self, ident: str, options: LoadOptions) -> LoadedModel:
        smp = _smp()
        path = Path(ident).expanduser()
        if path.is_dir():
            return self._load_dir(smp, path, options)
        arch, encoder = parse_smp_ident(smp, ident)
        state = (
            read_weights(options.weights, trust_pickle=options.trust_pickle)
            if options.weights
            else None
        )
        kwargs: dict[str, Any] = {"encoder_weights": None}
        if state is not None:
            head = state.get("segmentation_head.0.weight")
            if head is not None:
                kwargs["classes"] = int(head.shape[0])
            stem = next(
                (v for k, v in state.items() if k.startswith("encoder.") and v.dim() == 4), None
            )
            if stem is not None:
                kwargs["in_channels"] = int(stem.shape[1])
        with seeded_init():
            model = smp.create_model(arch, encoder_name=encoder, **kwargs)
        notes = []
        if state is not None:
            load_into(model, state, f"smp:{ident}", strict=options.strict)
        else:
            notes.append(
                "no --weights given: RANDOM initial weights (an untrained network; seed 0, the "
                "same every run)"
            )
        in_ch = int(kwargs.get("in_channels", 3))
        return LoadedModel(
            source=f"smp:{ident}",
            format="smp",
            module=model.eval(),
            input_shape=options.input_shape or (in_ch, *DEFAULT_SPATIAL),
            pretrained=state is not None,
            notes=notes,
            meta={"architecture": arch, "encoder": encoder},
        )

    def _load_dir(self, smp: Any, path: Path, options: LoadOptions) -> LoadedModel:
        cfg = read_config(path)
        arch = cfg.get("_model_class")
        if not isinstance(arch, str):
            raise SourceError(f"{path}/config.json has no '_model_class': not an SMP directory")
        init = {k: v for k, v in cfg.items() if not k.startswith("_")}
        init["encoder_weights"] = None  # never fetch encoder weights
        if arch.lower() not in smp.MODEL_ARCHITECTURES_MAPPING:
            raise _closest(arch, sorted(smp.MODEL_ARCHITECTURES_MAPPING), "architecture")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            with seeded_init():
                model = smp.create_model(arch, **init)
        except (TypeError, KeyError, ValueError) as exc:
            raise SourceError(
                f"{path}/config.json does not describe a valid {arch}: {exc}"
            ) from exc
        weights = options.weights or find_weight_file(path)
        load_into(
            model,
            read_weights(weights, trust_pickle=options.trust_pickle),
            str(path),
            strict=options.strict,
        )
        in_ch = int(init.get("in_channels", 3))
        return LoadedModel(
            source=str(path),
            format="smp",
            module=model.eval(),
            input_shape=options.input_shape or (in_ch, *DEFAULT_SPATIAL),
            meta={
                "architecture": arch,
                "encoder": init.get("encoder_name"),
                "directory": str(path),
            },
        )
