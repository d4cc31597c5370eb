"""``parse_source``: table-driven, like timm's ``tests/test_factory.py``.

Every case uses a registry with only the built-ins, so installed plugins cannot change it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from entropy_probe.errors import SourceError
from entropy_probe.loading import DEFAULT_SOURCE, parse_source
from entropy_probe.loading._base import LoadedModel, Loader, LoadOptions
from entropy_probe.plugins import PluginRegistrar, PluginRegistry, build_registry

SCHEMES = ["default", "onnx", "safetensors", "smp", "timm", "torch"]


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    return build_registry(autoload=False)


# --------------------------------------------------------------------------- explicit schemes


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("timm:resnet18", ("timm", "resnet18")),
        ("timm:resnet18.a1_in1k", ("timm", "resnet18.a1_in1k")),
        ("smp:Unet/resnet34", ("smp", "Unet/resnet34")),
        ("onnx:x.onnx", ("onnx", "x.onnx")),
        ("onnx:dir/sub/model.onnx", ("onnx", "dir/sub/model.onnx")),
        ("torch:ckpt.pt", ("torch", "ckpt.pt")),
        ("torch:weights.weird", ("torch", "weights.weird")),  # the prefix overrides the suffix
        ("safetensors:w.safetensors", ("safetensors", "w.safetensors")),
        ("TIMM:resnet18", ("timm", "resnet18")),  # the scheme is case-insensitive
        ("Smp:Unet/resnet34", ("smp", "Unet/resnet34")),
        ("timm:ResNet18", ("timm", "ResNet18")),  # ... the identifier is kept as given
        ("  timm:resnet18  ", ("timm", "resnet18")),  # surrounding whitespace
        ("onnx:C:/models/x.onnx", ("onnx", "C:/models/x.onnx")),  # a colon inside the ident
        ("default", (DEFAULT_SOURCE, "")),
        (" default ", (DEFAULT_SOURCE, "")),
        ("default:anything", ("default", "anything")),
    ],
)
def test_explicit_scheme(registry: PluginRegistry, source: str, expected: tuple[str, str]) -> None:
    assert parse_source(source, registry) == expected


# --------------------------------------------------------------------------- bare paths


@pytest.mark.parametrize(
    ("filename", "scheme"),
    [
        ("model.onnx", "onnx"),
        ("weights.safetensors", "safetensors"),
        ("ckpt.pt", "torch"),
        ("ckpt.pth", "torch"),
        ("pytorch_model.bin", "torch"),
        ("last.ckpt", "torch"),
        ("MODEL.ONNX", "onnx"),  # extensions are matched case-insensitively
        ("Ckpt.PT", "torch"),
        ("archive.tar.onnx", "onnx"),  # only the last suffix counts
    ],
)
def test_existing_file_by_extension(
    registry: PluginRegistry, tmp_path: Path, filename: str, scheme: str
) -> None:
    path = tmp_path / filename
    path.write_bytes(b"\x00")
    assert parse_source(str(path), registry) == (scheme, str(path))


def test_missing_file_with_known_extension_is_claimed(registry: PluginRegistry) -> None:
    """The loader reports the missing file (with its own message), not the parser."""
    assert parse_source("nowhere/model.onnx", registry) == ("onnx", "nowhere/model.onnx")


def test_windows_drive_letter_is_not_a_scheme(registry: PluginRegistry) -> None:
    assert parse_source("C:/models/x.pt", registry) == ("torch", "C:/models/x.pt")


def test_existing_file_whose_name_looks_like_a_scheme(
    registry: PluginRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("foo:bar.pt").write_bytes(b"\x00")
    assert parse_source("foo:bar.pt", registry) == ("torch", "foo:bar.pt")


def test_tilde_is_expanded(
    registry: PluginRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "config.json").write_text('{"architecture": "resnet18"}')
    assert parse_source("~/saved", registry) == ("timm", str(tmp_path / "saved"))


def _save_dir(tmp_path: Path, name: str, config: object) -> Path:
    directory = tmp_path / name
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


@pytest.mark.parametrize(
    ("config", "scheme"),
    [
        ({"architecture": "resnet18", "num_classes": 10, "pretrained_cfg": {}}, "timm"),
        ({"architecture": "vit_tiny_patch16_224"}, "timm"),
        ({"_model_class": "Unet", "encoder_name": "resnet34", "classes": 2}, "smp"),
        ({"_model_class": "FPN"}, "smp"),
    ],
    ids=["timm", "timm-minimal", "smp", "smp-minimal"],
)
def test_save_pretrained_directory_by_config_content(
    registry: PluginRegistry, tmp_path: Path, config: dict[str, object], scheme: str
) -> None:
    directory = _save_dir(tmp_path, "saved", config)
    assert parse_source(str(directory), registry) == (scheme, str(directory))
    # a trailing slash changes nothing
    assert parse_source(f"{directory}/", registry) == (scheme, str(directory))


def test_prefix_wins_over_directory_content(registry: PluginRegistry, tmp_path: Path) -> None:
    directory = _save_dir(tmp_path, "saved", {"architecture": "resnet18"})
    assert parse_source(f"smp:{directory}", registry) == ("smp", str(directory))


def test_plugin_loader_claims_its_extension(tmp_path: Path) -> None:
    class NpzLoader(Loader):
        scheme = "npz"
        extensions = (".npz",)

        def load(self, ident: str, options: LoadOptions) -> LoadedModel:
            raise NotImplementedError

    registry = build_registry(autoload=False)
    PluginRegistrar(registry, "test").add_loader(NpzLoader())
    path = tmp_path / "w.npz"
    path.write_bytes(b"\x00")
    assert parse_source(str(path), registry) == ("npz", str(path))
    assert parse_source("NPZ:w.npz", registry) == ("npz", "w.npz")


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("source", ["", "   ", "\n"])
def test_empty_source(registry: PluginRegistry, source: str) -> None:
    with pytest.raises(SourceError, match=r"empty model source: give a path or scheme:name"):
        parse_source(source, registry)


def test_unknown_scheme_lists_the_valid_ones(registry: PluginRegistry) -> None:
    with pytest.raises(SourceError, match=r"^unknown source scheme 'foo'\.") as info:
        parse_source("foo:bar", registry)
    assert "Valid: default, onnx, safetensors, smp, timm, torch, zoo." in str(info.value)
    assert "loader scheme" not in str(info.value)


@pytest.mark.parametrize(
    ("source", "suggestion"),
    [("tim:resnet18", "timm"), ("onx:model.onnx", "onnx"), ("smpp:Unet/resnet34", "smp")],
)
def test_misspelt_scheme_suggests_the_close_one(
    registry: PluginRegistry, source: str, suggestion: str
) -> None:
    with pytest.raises(SourceError, match=rf"Did you mean '{suggestion}'"):
        parse_source(source, registry)


@pytest.mark.parametrize("source", ["timm:", "TIMM:", "smp:", "onnx:", "torch:"])
def test_nothing_after_the_colon(registry: PluginRegistry, source: str) -> None:
    scheme = source[:-1].lower()
    with pytest.raises(SourceError, match=rf"^{scheme}: needs a name or path after the colon$"):
        parse_source(source, registry)


@pytest.mark.parametrize("source", ["nowhere/model", "resnet18", "does_not_exist.xyz"])
def test_missing_file_lists_the_forms(registry: PluginRegistry, source: str) -> None:
    with pytest.raises(
        SourceError,
        match=rf"^'{re.escape(source)}' is neither an existing file nor a known source",
    ) as info:
        parse_source(source, registry)
    message = str(info.value)
    assert ".onnx/.safetensors/.pt" in message
    assert "save_pretrained directory" in message
    assert all(f"{scheme}:" in message for scheme in SCHEMES)


@pytest.mark.parametrize(("filename", "suffix"), [("weights.xyz", ".xyz"), ("weights", "(none)")])
def test_existing_file_with_unknown_extension_suggests_a_prefix(
    registry: PluginRegistry, tmp_path: Path, filename: str, suffix: str
) -> None:
    path = tmp_path / filename
    path.write_bytes(b"\x00")
    with pytest.raises(
        SourceError,
        match=rf"cannot tell the format of .*{re.escape(filename)} from its extension "
        rf"{re.escape(suffix)}: prefix it with its format, e.g\. onnx:.* or torch:",
    ):
        parse_source(str(path), registry)


@pytest.mark.parametrize(
    "config",
    [None, {"num_classes": 10}, "not json {", ["architecture"]],
    ids=["no-config", "unknown-keys", "invalid-json", "json-list"],
)
def test_directory_that_no_loader_claims(
    registry: PluginRegistry, tmp_path: Path, config: object
) -> None:
    directory = tmp_path / "plain"
    directory.mkdir()
    if isinstance(config, str):
        (directory / "config.json").write_text(config, encoding="utf-8")
    elif config is not None:
        (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(
        SourceError,
        match=r"is a directory but not a timm or SMP save_pretrained directory "
        r"\(no config\.json with 'architecture' or '_model_class'\)",
    ):
        parse_source(str(directory), registry)


def test_directory_claimed_by_two_loaders_asks_for_a_prefix(
    registry: PluginRegistry, tmp_path: Path
) -> None:
    directory = _save_dir(tmp_path, "both", {"architecture": "resnet18", "_model_class": "Unet"})
    with pytest.raises(SourceError, match=r"could be read by smp, timm: prefix it, e\.g\. smp:"):
        parse_source(str(directory), registry)
