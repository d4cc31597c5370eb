"""Run the CLI in-process and check the bad-input contract of issue 8.

A refused input gives exit code 1, exactly one ``Error: ...`` line on stderr naming the
problem, no traceback, nothing on stdout, and no output file (nor a temp file) left behind.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

from click.testing import CliRunner, Result

from entropy_probe.cli import main


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)


def profile_json(source: str | Path, out: Path, *args: str | Path) -> Result:
    """``entropy-probe profile SOURCE --json OUT --device cpu ARGS``."""
    return run("profile", source, "--json", out, "--device", "cpu", *args)


def files_under(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*")}


def assert_refused(
    result: Result,
    pattern: str,
    *,
    absent: Iterable[Path] = (),
    directory: Path | None = None,
    before: set[Path] | None = None,
) -> str:
    """The one-line refusal; ``absent`` paths were not written; ``directory`` holds exactly
    the files it held ``before`` (no partial output, no temp file). Returns the message."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines[0]
    assert re.search(pattern, lines[0]), lines[0]
    assert result.stdout == ""
    for path in absent:
        assert not path.exists(), f"{path} was left behind"
    if directory is not None:
        assert files_under(directory) == (before or set()), "files were left behind"
    return lines[0].removeprefix("Error: ")


def assert_profiled(result: Result, out: Path) -> dict:  # type: ignore[type-arg]
    """Exit 0 and a complete strict-JSON profile at ``out``."""
    assert result.exit_code == 0, (result.output, result.exception)
    assert "Traceback" not in result.output
    data = json.loads(out.read_text(encoding="utf-8"), parse_constant=_no_constant)
    assert data["schema"].startswith("entropy_probe.profile/")
    assert isinstance(data["layers"], list)
    return data  # type: ignore[no-any-return]


def _no_constant(token: str) -> float:
    raise ValueError(f"non-strict JSON constant {token}")


def statuses(data: dict) -> dict[str, str]:  # type: ignore[type-arg]
    return {layer["name"]: layer["status"] for layer in data["layers"]}
