"""Fixtures shared by several test packages."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from entropy_probe.plugins import DISABLE_ENV, reset_registry


@pytest.fixture
def builtin_plugins_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Only the built-in plugin, and a fresh process-wide registry before and after."""
    monkeypatch.setenv(DISABLE_ENV, "1")
    reset_registry()
    yield
    reset_registry()


@pytest.fixture(autouse=True)
def _keep_the_test_process_allocator(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process command-line tests must not retune pytest's own allocator (the profiling
    commands call ``keep_freed_memory``); tests/test_allocator.py checks it in subprocesses."""
    from entropy_probe import _allocator

    monkeypatch.setattr(_allocator, "keep_freed_memory", lambda: False)
