"""The command line keeps freed memory in the process (glibc mallopt), and only there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from torch import nn

import entropy_probe
from entropy_probe import _allocator
from entropy_probe.cli import main

PROBE = "from entropy_probe._allocator import keep_freed_memory; print(keep_freed_memory())"


def _run(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    result = subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_thresholds_are_set_on_glibc() -> None:
    libc = os.confstr("CS_GNU_LIBC_VERSION") if hasattr(os, "confstr") else None
    if not libc:
        pytest.skip("not glibc")
    assert _run(PROBE) == "True"


def test_a_users_malloc_settings_are_left_alone() -> None:
    assert _run(PROBE, MALLOC_ARENA_MAX="2") == "False"


def test_the_command_line_calls_it_and_the_python_api_does_not(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Process-wide: only the command line may retune its process's allocator.
    calls: list[int] = []
    monkeypatch.setattr(_allocator, "keep_freed_memory", lambda: bool(calls.append(1)))
    model = nn.Sequential(nn.Linear(4, 4))
    entropy_probe.profile(model, input_shape=(4,))
    assert calls == []
    result = CliRunner().invoke(main, ["profile", "--json", str(tmp_path / "p.json")])
    assert result.exit_code == 0, result.output
    assert calls == [1]
