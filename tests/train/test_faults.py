"""Faults around the output directory: locks, damaged checkpoints, a full disk, path escapes."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from torch import nn

from entropy_probe.errors import EntropyProbeError
from entropy_probe.train import checkpoint as ckpt
from entropy_probe.train import fit
from entropy_probe.train.checkpoint import CheckpointError, LockError, RunLock, safe_path

from .helpers import CONFIG, digits_data, tiny_mlp, weights_equal

TWO = replace(CONFIG, epochs=2)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_run_on_the_same_directory_is_refused(tmp_path: Path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"pid": holder.pid, "host": socket.gethostname()}
        (tmp_path / ".lock").write_text(json.dumps(lock))
        with pytest.raises(LockError, match=rf"another run \(pid {holder.pid} "):
            fit(tiny_mlp(), "classify", digits_data(64, 32), TWO, out_dir=tmp_path)
        assert json.loads((tmp_path / ".lock").read_text()) == lock  # left alone
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_is_reentrant_within_one_process_and_released(tmp_path: Path):
    with RunLock(tmp_path):
        fit(tiny_mlp(), "classify", digits_data(64, 32), TWO, out_dir=tmp_path)
        assert (tmp_path / ".lock").exists()  # the inner release leaves the outer lock
    assert not (tmp_path / ".lock").exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_note(tmp_path: Path):
    lock = tmp_path / ".lock"
    lock.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname()}))
    result = fit(tiny_mlp(), "classify", digits_data(64, 32), TWO, out_dir=tmp_path)
    assert any("took over a stale lock of dead pid" in n for n in result.notes)
    assert not lock.exists()


def test_a_lock_from_another_host_names_it(tmp_path: Path):
    (tmp_path / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(LockError, match=r"pid 1 on host elsewhere.*delete the lock file"):
        RunLock(tmp_path).acquire()


@pytest.fixture(scope="module")
def two_epochs_done(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    """A 3-epoch run stopped in epoch 3 (checkpoints 1 and 2), and the uninterrupted result."""
    reference = tiny_mlp()
    fit(reference, "classify", digits_data(), CONFIG)
    out = tmp_path_factory.mktemp("stopped")

    def stop(epoch: int, step: int) -> None:
        if epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(tiny_mlp(), "classify", digits_data(), CONFIG, out_dir=out, on_step=stop)
    return out, reference


@pytest.mark.parametrize("damage", ["truncate", "bitflip", "empty"])
def test_a_damaged_last_checkpoint_falls_back_to_the_previous_one(
    tmp_path: Path, two_epochs_done: tuple[Path, nn.Module], damage: str
):
    stopped, reference = two_epochs_done
    shutil.copytree(stopped, tmp_path, dirs_exist_ok=True)
    last = tmp_path / "checkpoint-e0002.pt"
    raw = bytearray(last.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "bitflip":
        raw[len(raw) // 2] ^= 0x10
    else:
        raw = bytearray()
    last.write_bytes(bytes(raw))
    resumed = tiny_mlp()
    with pytest.warns(UserWarning, match=r"checkpoint-e0002\.pt is .*falling back"):
        result = fit(resumed, "classify", digits_data(), CONFIG, out_dir=tmp_path, resume=True)
    assert result.resumed_from == 1
    assert weights_equal(reference, resumed)  # epochs 2 and 3 redone from epoch 1's state


def test_no_readable_checkpoint_at_all_is_one_clear_error(tmp_path: Path):
    fit(tiny_mlp(), "classify", digits_data(64, 32), replace(TWO, epochs=1), out_dir=tmp_path)
    (tmp_path / "checkpoint-e0001.pt").write_bytes(b"garbage")
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match="no readable checkpoint"):
        fit(tiny_mlp(), "classify", digits_data(64, 32), TWO, out_dir=tmp_path, resume=True)


def test_a_full_disk_is_a_one_line_error_and_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    real = ckpt.atomic_write_bytes
    calls = {"n": 0}

    def full_disk(path: Path, data: bytes) -> Path:
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, data)

    monkeypatch.setattr(ckpt, "atomic_write_bytes", full_disk)
    with pytest.raises(CheckpointError) as info:
        fit(tiny_mlp(), "classify", digits_data(64, 32), TWO, out_dir=tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert "checkpoint-e0002.pt: no space left on device" in message
    assert "the previous checkpoint checkpoint-e0001.pt is intact" in message
    assert [p.name for _, p in ckpt.list_checkpoints(tmp_path)] == ["checkpoint-e0001.pt"]
    assert ckpt.read_checkpoint(tmp_path / "checkpoint-e0001.pt")["epoch"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert not (tmp_path / ".lock").exists()


def test_output_paths_never_escape_the_output_directory(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("../x", "a/b", "..", ""):
        with pytest.raises(CheckpointError, match="not a plain file name"):
            safe_path(out, name)
    (out / "metrics.jsonl").symlink_to(tmp_path / "elsewhere.jsonl")
    with pytest.raises(CheckpointError, match="resolves outside"):
        safe_path(out, "metrics.jsonl")
    with pytest.raises(EntropyProbeError, match="resolves outside"):
        fit(tiny_mlp(), "classify", digits_data(64, 32), replace(TWO, epochs=1), out_dir=out)
    assert not (tmp_path / "elsewhere.jsonl").exists()


def test_a_diverging_loss_stops_with_the_step_and_a_hint(tmp_path: Path):
    """An absurd learning rate makes the loss non-finite: one clear error naming where it
    happened and what to try; the last complete checkpoint (none here) is not replaced."""
    config = replace(CONFIG, lr=1e30, optimizer="sgd", momentum=0.0)
    with pytest.raises(
        EntropyProbeError, match=r"the loss became .* at epoch 1, step \d+ .*lower --lr"
    ):
        fit(tiny_mlp(), "classify", digits_data(64, 32), config, out_dir=tmp_path / "run")
    assert not list((tmp_path / "run").glob("checkpoint-*.pt"))
