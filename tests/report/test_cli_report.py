"""``entropy-probe report``: writes one file, and on a bad input writes nothing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from entropy_probe.cli import main

from ._html import parse


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=True)


def assert_one_line_error(result: Result, pattern: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ") and re.search(pattern, lines[0]), lines[0]


def test_report_writes_the_default_model_report(tmp_path: Path) -> None:
    target = tmp_path / "out" / "report.html"
    result = invoke("report", "-o", str(target), "--device", "cpu")
    assert result.exit_code == 0, result.output
    first, verdict = result.stderr.strip().splitlines()
    assert re.fullmatch(rf"wrote {re.escape(str(target))} \(\d+ KiB\)", first)
    assert verdict.startswith("agreement ") and "classifier_cnn" in verdict
    tree = parse(target.read_text(encoding="utf-8"))
    names = [td.text() for td in tree.find_all("td") if "name" in td.classes()]
    assert names[:2] == ["features.0", "features.1"]
    assert "Whole-layer ΔH: paper vs spectral" in tree.text()  # --method both by default
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.html"]


def test_report_default_output_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke("report", "--method", "paper")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "entropy_report.html").is_file()
    assert "Whole-layer ΔH (paper)" in (tmp_path / "entropy_report.html").read_text("utf-8")


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (("missing.onnx",), r"not found"),
        (("timm:resnet18", "--weights", "nope.safetensors"), r"nope\.safetensors"),
        (("--device", "tpu"), r"unknown device"),
        (("--reference", "nosuch"), r"unknown reference 'nosuch' \(known: auto, .*none"),
    ],
    ids=["missing-source", "missing-weights", "bad-device", "unknown-reference"],
)
def test_bad_input_is_one_line_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...], pattern: str
) -> None:
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "report.html"
    assert_one_line_error(invoke("report", *args, "-o", str(target)), pattern)
    assert [p.name for p in tmp_path.iterdir()] == []


def test_failed_run_keeps_an_existing_report(tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    target.write_text("old report", encoding="utf-8")
    assert_one_line_error(invoke("report", "missing.onnx", "-o", str(target)), "not found")
    assert target.read_text(encoding="utf-8") == "old report"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_output_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    assert_one_line_error(invoke("report", "-o", str(tmp_path)), "is a directory")
    assert [p.name for p in tmp_path.iterdir()] == []


def test_unwritable_output_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    result = invoke("report", "--method", "paper", "-o", str(blocker / "report.html"))
    assert_one_line_error(result, r"cannot write .*report\.html")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_report_help_lists_the_options() -> None:
    result = invoke("report", "--help")
    assert result.exit_code == 0
    for option in ("-o, --output", "--weights", "--input-shape", "--method", "--device"):
        assert option in result.output
    assert "--trust-pickle" in result.output and "[default: both]" in result.output
