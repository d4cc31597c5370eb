"""Security: pickles never run by default, --trust-pickle warns, the report escapes everything a
model file can put in it, and nothing is written outside the requested output path."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from safetensors.torch import save_file

from ._cli import assert_profiled, assert_refused, files_under, profile_json, run
from .conftest import tiny_net

MARKER = "pwned.txt"


class Payload:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.marker,))


def _evil_files(root: Path) -> dict[str, Path]:
    marker = root / MARKER
    files = {
        "torch.save dict": root / "dict.pt",
        "torch.save legacy format": root / "legacy.pt",
        "raw pickle": root / "raw.pt",
    }
    torch.save({"w.weight": torch.eye(3), "x": Payload(marker)}, files["torch.save dict"])
    torch.save(
        {"w.weight": torch.eye(3), "x": Payload(marker)},
        files["torch.save legacy format"],
        _use_new_zipfile_serialization=False,
    )
    files["raw pickle"].write_bytes(pickle.dumps(Payload(marker)))
    return files


@pytest.mark.parametrize("how", ["torch.save dict", "torch.save legacy format", "raw pickle"])
@pytest.mark.parametrize("role", ["source", "--weights", "save_pretrained dir"])
def test_pickle_payload_never_runs_by_default(tmp_path: Path, how: str, role: str) -> None:
    path = _evil_files(tmp_path)[how]
    marker = tmp_path / MARKER
    if role == "source":
        args: list[str | Path] = ["profile", path]
    elif role == "--weights":
        args = ["profile", "timm:test_resnet", "--weights", path]
    else:
        folder = tmp_path / "saved"
        folder.mkdir()
        (folder / "config.json").write_text(
            json.dumps({"architecture": "test_resnet"}), encoding="utf-8"
        )
        path.rename(folder / "pytorch_model.bin")
        args = ["profile", folder]
    before = files_under(tmp_path)
    assert_refused(
        run(*args, "--json", tmp_path / "p.json"), r"\S", directory=tmp_path, before=before
    )
    assert not marker.exists()


def test_refusal_names_the_opt_in(tmp_path: Path) -> None:
    path = _evil_files(tmp_path)["torch.save dict"]
    message = assert_refused(run("profile", path), r"contains pickled Python objects")
    assert "--trust-pickle" in message and "state_dict" in message
    assert not (tmp_path / MARKER).exists()


def test_object_npy_payload_never_runs(tmp_path: Path) -> None:
    path = tmp_path / "data.npy"
    np.save(path, np.array([Payload(tmp_path / MARKER)] * 4, dtype=object), allow_pickle=True)
    assert_refused(run("profile", "--data", path), r"pickled Python objects, never loaded")
    assert not (tmp_path / MARKER).exists()


@pytest.mark.filterwarnings("always::UserWarning")
def test_trust_pickle_loads_a_full_module_with_a_one_line_warning(tmp_path: Path) -> None:
    path = tmp_path / "full.pt"
    torch.save(tiny_net(), path)
    out = tmp_path / "p.json"
    result = run("profile", path, "--trust-pickle", "--input-shape", "3,8,8", "--json", out)
    data = assert_profiled(result, out)
    assert [layer["status"] for layer in data["layers"]] == ["ok", "ok"]
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warning == [
        f"warning: --trust-pickle: unpickling {path}; this runs any code the file contains"
    ]
    assert "UserWarning" not in result.stderr  # one line, not Python's two-line format


@pytest.mark.filterwarnings("always::UserWarning")
def test_trust_pickle_really_runs_code_which_is_why_it_warns(tmp_path: Path) -> None:
    path = _evil_files(tmp_path)["torch.save dict"]
    result = run("profile", path, "--trust-pickle")
    assert (tmp_path / MARKER).exists()
    assert "warning: --trust-pickle: unpickling" in result.stderr


# --------------------------------------------------------------------------------------------
# the report: everything a model file can put in it is escaped

SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(2)>"
HOSTILE = f"{SCRIPT}{IMG}&amp;\"'../../escaped"


def _hostile_onnx(path: Path) -> Path:
    weight = numpy_helper.from_array(np.eye(4, dtype=np.float32) * 2, name=f"w{HOSTILE}")
    node = helper.make_node(
        "MatMul", ["x", weight.name], [f"y{HOSTILE}"], name=f"mm{HOSTILE}", doc_string=HOSTILE
    )
    relu = helper.make_node("Relu", [f"y{HOSTILE}"], ["out"], name=HOSTILE)
    graph = helper.make_graph(
        [node, relu],
        f"graph{HOSTILE}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])],
        initializer=[weight],
        doc_string=HOSTILE,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17)],
        producer_name=HOSTILE,
        producer_version=SCRIPT,
        doc_string=HOSTILE,
        domain=IMG,
    )
    helper.set_model_props(model, {HOSTILE: HOSTILE, "k": IMG})
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def test_report_escapes_names_metadata_and_path(tmp_path: Path) -> None:
    source = _hostile_onnx(tmp_path / f"dir{IMG}" / "m.onnx")
    target = tmp_path / "out" / "report.html"
    before = files_under(tmp_path)
    result = run("report", source, "-o", target, "--device", "cpu")
    assert result.exit_code == 0, result.output
    html = target.read_text(encoding="utf-8")
    # no markup from the file survives: only the report's own two script elements, no <img>
    assert re.findall(r"<script\b[^>]*>", html, re.IGNORECASE) == [
        '<script type="application/json" id="report-data">',
        "<script>",
    ]
    assert len(re.findall(r"</script", html, re.IGNORECASE)) == 2
    assert "<img" not in html.lower()
    assert SCRIPT not in html and IMG not in html
    # ... yet the names are shown, as text
    assert "mm&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "dir&lt;img src=x onerror=alert(2)&gt;/m.onnx" in html
    # exactly one new file, where it was asked for
    assert files_under(tmp_path) - before == {Path("out"), Path("out/report.html")}
    assert not (tmp_path.parent / "escaped").exists()


def test_report_embedded_json_keeps_the_names(tmp_path: Path) -> None:
    """The JSON island holds the hostile names intact (``<`` escaped as ``\\u003c``)."""
    source = _hostile_onnx(tmp_path / "m.onnx")
    target = tmp_path / "report.html"
    assert run("report", source, "-o", target, "--method", "paper").exit_code == 0
    html = target.read_text(encoding="utf-8")
    island = html.split('<script type="application/json" id="report-data">', 1)[1]
    data = json.loads(island.split("</script>", 1)[0])
    assert data["profile"]["layers"][0]["name"] == f"mm{HOSTILE}"


@pytest.mark.parametrize("command", ["profile", "report"])
def test_outputs_stay_where_they_were_asked_for(tmp_path: Path, command: str) -> None:
    """Layer names with ``../`` never become paths; the temp file lives beside the target and
    is gone afterwards."""
    source = _hostile_onnx(tmp_path / "m.onnx")
    target = tmp_path / "sub" / ("p.json" if command == "profile" else "r.html")
    flag = "--json" if command == "profile" else "-o"
    before = files_under(tmp_path)
    result = run(command, source, flag, target, "--method", "paper")
    assert result.exit_code == 0, result.output
    assert files_under(tmp_path) - before == {Path("sub"), target.relative_to(tmp_path)}
    assert not (tmp_path.parent / "escaped").exists()


def test_json_to_a_directory_is_refused_and_leaves_no_temp_file(tmp_path: Path) -> None:
    (tmp_path / "out.json").mkdir()
    before = files_under(tmp_path)
    result = profile_json("default", tmp_path / "out.json")
    assert_refused(result, r"cannot write --json", directory=tmp_path, before=before)


@pytest.mark.parametrize("flag", ["--json", "-o"])
@pytest.mark.parametrize("which", ["SOURCE", "--weights", "--data"])
def test_an_output_that_is_an_input_is_refused(tmp_path: Path, flag: str, which: str) -> None:
    """``report model.onnx -o model.onnx`` used to replace the model with HTML."""
    net = tiny_net()
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).standard_normal((8, 1, 28, 28)).astype(np.float32))
    source: str | Path = weights if which == "SOURCE" else "default"
    args: list[str | Path] = ["--data", data] if which == "--data" else []
    if which == "--weights":
        source, args = "timm:test_resnet", ["--weights", weights]
    target = {"SOURCE": weights, "--weights": weights, "--data": data}[which]
    before = {p: p.read_bytes() for p in (weights, data)}
    command = "profile" if flag == "--json" else "report"
    result = run(command, source, flag, target, "--device", "cpu", *args)
    message = assert_refused(result, rf"is the {which} file itself")
    assert "choose another output path" in message
    assert {p: p.read_bytes() for p in (weights, data)} == before


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_an_output_onto_a_source_folders_weights_or_config_is_refused(
    tmp_path: Path, name: str
) -> None:
    import timm

    folder = tmp_path / "export"
    folder.mkdir()
    model = timm.create_model("test_resnet", pretrained=False)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text('{"architecture": "test_resnet"}', encoding="utf-8")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    result = run("report", folder, "-o", folder / name, "--device", "cpu")
    assert_refused(result, r"is a weights or config file of the SOURCE folder")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


@pytest.mark.parametrize(("command", "flag"), [("profile", "--json"), ("report", "-o")])
def test_an_empty_output_path_is_refused(tmp_path: Path, command: str, flag: str) -> None:
    """``--json ''`` used to write nothing and exit 0."""
    before = files_under(tmp_path)
    result = run(command, "default", flag, "", "--device", "cpu")
    assert_refused(result, rf"{flag} needs a file name", directory=tmp_path, before=before)


def test_an_output_symlink_is_followed_not_replaced(tmp_path: Path) -> None:
    target = tmp_path / "real.json"
    target.write_text("{}", encoding="utf-8")
    link = tmp_path / "link.json"
    link.symlink_to(target.name)
    assert_profiled(profile_json("default", link), link)
    assert link.is_symlink() and json.loads(target.read_text(encoding="utf-8"))["layers"]


def test_an_output_fifo_is_written_to_not_replaced(tmp_path: Path) -> None:
    """``-o /dev/null`` used to replace the device with a regular file (as root); a FIFO
    stands in for any non-regular file here."""
    import os
    import stat
    import threading

    fifo = tmp_path / "pipe.html"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    result = run("report", "default", "-o", fifo, "--reference", "none", "--device", "cpu")
    reader.join(timeout=60)
    assert result.exit_code == 0, result.output
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert received and received[0].startswith(b"<!DOCTYPE html>")
    assert "not a file" in result.stderr


def test_report_to_stdout(tmp_path: Path) -> None:
    before = files_under(tmp_path)
    result = run("report", "default", "-o", "-", "--reference", "none", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("<!DOCTYPE html>") and result.stdout.rstrip().endswith(
        "</html>"
    )
    assert files_under(tmp_path) == before and not Path("-").exists()
