"""The shipped reference library: provenance, and that it matches a rebuild from scratch."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from entropy_probe.patterns.build import (
    ASSET_REFERENCES,
    BUILD_COMMAND,
    REFERENCE_SEEDS,
    asset_path,
    build_asset_reference,
    build_zoo_reference,
)
from entropy_probe.patterns.pattern import Quantity
from entropy_probe.patterns.reference import Reference, file_sha256, load_library
from entropy_probe.patterns.zoo import get_spec, list_members

pytestmark = pytest.mark.usefixtures("builtin_plugins_only")

FAMILIES = {"classifier_cnn", "encoder_decoder", "dense_autoencoder", "conv_autoencoder"}


@pytest.fixture(scope="module")
def shipped() -> dict[str, Reference]:
    return {r.name: r for r in load_library(Path("/nonexistent-user-dir")).references}


def assert_same_points(built: Reference, stored: Reference) -> None:
    for quantity in Quantity:
        a, b = built.points[quantity], stored.points[quantity]
        assert set(a) == set(b), (built.name, quantity)
        for group in a:
            assert len(a[group]) == len(b[group])
            for (d1, v1), (d2, v2) in zip(a[group], b[group], strict=True):
                assert d1 == pytest.approx(d2, abs=1e-6)
                assert v1 == pytest.approx(v2, rel=1e-6, abs=1e-8), (built.name, quantity, d1)


def test_every_family_and_member_is_shipped(shipped: dict[str, Reference]) -> None:
    assert {r.family for r in shipped.values()} >= FAMILIES
    expected = {e.name for e in ASSET_REFERENCES}
    expected |= {f"{m}_s{s}" for m in list_members() for s in REFERENCE_SEEDS}
    assert set(shipped) == expected


def test_provenance_is_complete_and_names_no_machine_path(shipped: dict[str, Reference]) -> None:
    for ref in shipped.values():
        prov = ref.provenance
        assert prov.command == BUILD_COMMAND
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", prov.date)
        assert re.fullmatch(r"[0-9a-f]{64}", prov.sha256), ref.name
        assert not re.search(r"(^|\s)/|\\|site-packages|/home/|/root/", prov.checkpoint)
        assert prov.data
        if ref.name.endswith(tuple(f"_s{s}" for s in REFERENCE_SEEDS)):
            spec = get_spec(ref.name.rsplit("_s", 1)[0])
            assert ref.family == spec.family
            assert prov.metric == f"held-out {spec.metric}" and prov.metric_value is not None


def test_the_library_file_is_strict_json() -> None:
    path = Path(__file__).parents[2] / "entropy_probe" / "patterns" / "data" / "references.json"

    def refuse(token: str) -> float:
        raise ValueError(token)

    document = json.loads(path.read_text(), parse_constant=refuse)
    assert document["schema"] == "entropy_probe.references/1"


@pytest.mark.assets
@pytest.mark.parametrize("entry", ASSET_REFERENCES, ids=lambda e: e.name)
def test_vendor_references_match_a_rebuild(entry: object, shipped: dict[str, Reference]) -> None:
    stored = shipped[entry.name]  # type: ignore[attr-defined]
    assert stored.provenance.sha256 == file_sha256(asset_path(entry))  # type: ignore[arg-type]
    assert_same_points(build_asset_reference(entry), stored)  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.parametrize("member", ["digits_dense_ae", "digits_mlp"])
def test_zoo_references_match_a_rebuild_from_scratch(
    member: str, shipped: dict[str, Reference], tmp_path: Path
) -> None:
    """Train the member from its seed in an empty directory, profile it, compare."""
    from entropy_probe.patterns.zoo_train import train_member

    seed = REFERENCE_SEEDS[0]
    train_member(member, seed, out_dir=tmp_path)
    rebuilt = build_zoo_reference(member, seed, tmp_path)
    stored = shipped[f"{member}_s{seed}"]
    assert rebuilt.provenance.metric_value == pytest.approx(
        stored.provenance.metric_value, abs=2e-3
    )
    assert_same_points(rebuilt, stored)
