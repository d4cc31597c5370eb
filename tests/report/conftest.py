"""Fixtures of the report tests: the built-in plugin only, the real default profile and a
random-init resnet's report."""

from __future__ import annotations

import pytest

from entropy_probe.entropy.profile import Profile
from entropy_probe.plugins import DISABLE_ENV, reset_registry

from ._html import Node, parse


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


@pytest.fixture(scope="session")
def random_resnet_report(tmp_path_factory: pytest.TempPathFactory) -> Node:
    """``entropy-probe report timm:test_resnet --method paper`` at random init (seed 0), parsed:
    its zero-γ BatchNorms make 4 convolutions singular after folding."""
    from click.testing import CliRunner

    from entropy_probe.cli import main

    target = tmp_path_factory.mktemp("report") / "r.html"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(DISABLE_ENV, "1")
        reset_registry()
        try:
            result = CliRunner().invoke(
                main,
                [
                    "report",
                    "timm:test_resnet",
                    "--method",
                    "paper",
                    "--device",
                    "cpu",
                    "-o",
                    str(target),
                ],
            )
        finally:
            reset_registry()
    assert result.exit_code == 0, result.output
    return parse(target.read_text(encoding="utf-8"))
