"""The profiling commands keep freed memory in the process (glibc mallopt), and only they."""

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

# In a fresh interpreter: set the thresholds, then malloc 200 MiB and report whether glibc
# served it from the heap (mallinfo2's mmapped bytes, hblkhd, did not grow) or by mmap.
PROBE = """
import ctypes
from entropy_probe._allocator import keep_freed_memory

class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
set_ = keep_freed_memory()
before = libc.mallinfo2().hblkhd
block = libc.malloc(200 << 20)
print(set_, libc.mallinfo2().hblkhd > before)
libc.free(ctypes.c_void_p(block))
"""


def _run(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    clean.pop("GLIBC_TUNABLES", None)
    result = subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _glibc() -> bool:
    return sys.platform.startswith("linux") and bool(
        os.confstr("CS_GNU_LIBC_VERSION") if hasattr(os, "confstr") else None
    )


@pytest.mark.skipif(not _glibc(), reason="glibc malloc only")
def test_large_blocks_come_from_the_heap_once_set() -> None:
    assert _run(PROBE) == "True False"  # set; a 200 MiB block was not mmapped


@pytest.mark.skipif(not _glibc(), reason="glibc malloc only")
@pytest.mark.parametrize(
    "env",
    [{"MALLOC_ARENA_MAX": "2"}, {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"}],
    ids=["MALLOC_", "GLIBC_TUNABLES"],
)
def test_a_users_malloc_settings_are_left_alone(env: dict[str, str]) -> None:
    set_, mmapped = _run(PROBE, **env).split()
    assert set_ == "False" and mmapped == "True"


def test_the_profiling_commands_call_it_and_the_python_api_does_not(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Process-wide: only a short-lived profiling command may retune its process's allocator.
    calls: list[int] = []
    monkeypatch.setattr(_allocator, "keep_freed_memory", lambda: bool(calls.append(1)))
    model = nn.Sequential(nn.Linear(4, 4))
    entropy_probe.profile(model, input_shape=(4,))
    assert calls == []
    result = CliRunner().invoke(main, ["profile", "--json", str(tmp_path / "p.json")])
    assert result.exit_code == 0, result.output
    assert calls == [1]
    CliRunner().invoke(main, ["finetune", "--help"])
    assert calls == [1]
