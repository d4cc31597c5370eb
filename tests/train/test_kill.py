"""A real SIGKILL mid-run, then ``resume``: bitwise the same weights as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from entropy_probe.train import fit
from entropy_probe.train.checkpoint import list_checkpoints

from .helpers import CONFIG, digits_data, tiny_mlp, weights_equal

TESTS = Path(__file__).resolve().parents[1]

# Runs fit in a child process that SIGKILLs itself at a chosen point: after optimizer step
# KILL_STEP, or (KILL_STEP < 0) in the middle of writing checkpoint number -KILL_STEP, after
# the temp file holds half the bytes and before the rename.
SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    sys.path.insert(0, sys.argv[1])
    from train.helpers import CONFIG, digits_data, tiny_mlp
    from entropy_probe.train import fit
    from entropy_probe.train import checkpoint as ckpt

    kill_step = int(sys.argv[3])

    def on_step(epoch, step):
        if step == kill_step:
            os.kill(os.getpid(), signal.SIGKILL)

    if kill_step < 0:
        written = {"n": 0}

        def torn_write(path, data):
            written["n"] += 1
            if written["n"] == -kill_step:
                tmp = path.parent / f".{path.name}.torn.tmp"
                with open(tmp, "wb") as handle:
                    handle.write(data[: len(data) // 2])
                    handle.flush()
                    os.fsync(handle.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
            return real(path, data)

        real = ckpt.atomic_write_bytes
        ckpt.atomic_write_bytes = torn_write
    fit(tiny_mlp(), "classify", digits_data(), CONFIG, out_dir=sys.argv[2], on_step=on_step)
    """
)


def _killed_run(out: Path, kill_step: int) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(TESTS), str(out), str(kill_step)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


def _resume_matches_reference(out: Path, reference: torch.nn.Module) -> None:
    assert (out / ".lock").exists()  # SIGKILL left the lock behind
    resumed = tiny_mlp()
    result = fit(resumed, "classify", digits_data(), CONFIG, out_dir=out, resume=True)
    assert any("took over a stale lock" in n for n in result.notes)
    assert weights_equal(reference, resumed)
    assert [r.epoch for r in result.history] == [1, 2, 3]
    assert [e for e, _ in list_checkpoints(out)] == [3, 2]


@pytest.fixture(scope="module")
def reference() -> torch.nn.Module:
    model = tiny_mlp()
    fit(model, "classify", digits_data(), CONFIG)
    return model


def test_sigkill_mid_epoch_then_resume(tmp_path: Path, reference: torch.nn.Module):
    _killed_run(tmp_path, kill_step=13)  # epoch 2 of 3, 8 steps per epoch
    assert [e for e, _ in list_checkpoints(tmp_path)] == [1]
    _resume_matches_reference(tmp_path, reference)


@pytest.mark.slow
@pytest.mark.parametrize("kill_step", [1, 8, 9, 16, 23, -2, -3])
def test_sigkill_at_many_points_then_resume(
    tmp_path: Path, reference: torch.nn.Module, kill_step: int
):
    """Steps 8 and 16 end an epoch (killed before its checkpoint); -2/-3: killed while the
    2nd/3rd checkpoint is half written (a torn temp file, never renamed)."""
    _killed_run(tmp_path, kill_step)
    if kill_step == -3:
        assert any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    _resume_matches_reference(tmp_path, reference)


@pytest.mark.slow
def test_sigkill_of_the_cli_from_outside_then_resume(tmp_path: Path):
    """The real command, killed by another process once its first checkpoint exists."""
    args = [
        sys.executable, "-m", "entropy_probe", "finetune", "--task", "classify",
        "--data", "digits", "--epochs", "3", "--batch-size", "128", "--device", "cpu",
        "--no-entropy-log", "--schedule", "cosine", "--lr", "0.003",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole = tmp_path / "whole"
    subprocess.run([*args, "--out", str(whole)], check=True, env=env, capture_output=True)
    cut = tmp_path / "cut"
    proc = subprocess.Popen([*args, "--out", str(cut)], env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (cut / "checkpoint-e0001.pt").exists() and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (cut / "model.safetensors").exists()
    subprocess.run([*args, "--out", str(cut), "--resume"], check=True, env=env, capture_output=True)
    assert (whole / "model.safetensors").read_bytes() == (cut / "model.safetensors").read_bytes()
