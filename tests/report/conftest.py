"""Fixtures of the report tests: the built-in plugin only, and the real default profile."""

from __future__ import annotations

import pytest

from entropy_probe.entropy.profile import Profile
from entropy_probe.plugins import DISABLE_ENV, reset_registry


@pytest.fixture(autouse=True)
def _builtin_only(builtin_plugins_only: None) -> None:
    """Every report test runs with the built-in plugin only (tests/conftest.py)."""


@pytest.fixture(scope="session")
def default_profile() -> Profile:
    from entropy_probe import profile

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(DISABLE_ENV, "1")
        reset_registry()
        try:
            return profile("default", method="both", device="cpu")
        finally:
            reset_registry()
