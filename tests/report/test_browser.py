"""The report in a real browser: headless Chromium opens it from file://, the page's script
runs without a console error or a CSP violation, sorting / filtering / tooltips work, and the
screenshot is not blank.

Needs the Debian package ``chromium`` on PATH (CI installs it); skipped otherwise.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from entropy_probe.entropy.profile import Profile
from entropy_probe.report import write_report

from ._profiles import EVIL, FakeComparison, hostile_profile

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None and os.environ.get("CI"):
    # .ci/run installs chromium: in CI a missing browser is a failure, never a silent skip.
    raise RuntimeError("CI=true but `chromium` is not on PATH: .ci/run should have installed it")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless browser test needs `chromium` on PATH (Debian: apt-get install chromium)",
)

# Runs before the page's own script (it is inserted ahead of the CSP <meta>): records every
# error, rejected promise, console.error and CSP violation, then drives the page's controls
# on `load` and writes what it saw into the DOM for --dump-dom.
PROBE = """
(function () {
  var seen = [];
  window.addEventListener("error", function (e) {
    seen.push("error: " + (e.message || (e.target && e.target.outerHTML)));
  }, true);
  window.addEventListener("unhandledrejection", function (e) {
    seen.push("rejection: " + e.reason);
  });
  document.addEventListener("securitypolicyviolation", function (e) {
    seen.push("csp: " + e.violatedDirective + " " + e.blockedURI);
  });
  var consoleError = console.error;
  console.error = function () {
    seen.push("console.error: " + Array.prototype.join.call(arguments, " "));
    consoleError.apply(console, arguments);
  };
  window.addEventListener("load", function () {
    var out = { js: document.documentElement.getAttribute("data-js") };
    try {
      var table = document.getElementById("layer-table");
      var rows = function () { return Array.prototype.slice.call(table.tBodies[0].rows); };
      var visible = function () {
        return rows().filter(function (r) { return !r.hidden; }).length;
      };
      var header = function (label) {
        return Array.prototype.filter.call(table.tHead.rows[0].cells, function (th) {
          return th.textContent.trim() === label;
        })[0].querySelector("button");
      };
      out.rows = rows().length;
      header("#").click(); header("#").click();
      out.desc_first = rows()[0].cells[0].textContent.trim();
      header("ΔH/dim").click();
      out.asc_by_per_dim = rows().map(function (r) { return r.cells[0].textContent.trim(); });
      var text = document.getElementById("filter-text");
      text.value = "FEATURES"; text.dispatchEvent(new Event("input"));
      out.filtered = visible();
      out.count = document.getElementById("filter-count").textContent;
      text.value = ""; text.dispatchEvent(new Event("input"));
      var status = document.getElementById("filter-status");
      status.value = "singular"; status.dispatchEvent(new Event("change"));
      out.singular = visible();
      status.value = ""; status.dispatchEvent(new Event("change"));
      var mark = document.querySelector('svg.chart .mk[data-ref="layer-2"]');
      mark.dispatchEvent(new MouseEvent("mouseenter"));
      var tip = document.querySelector(".tooltip");
      out.tooltip = tip.textContent;
      out.tooltip_shown = tip.style.display;
      out.tooltip_children = tip.children.length;
      out.titles_left = document.querySelectorAll("svg.chart title").length;
    } catch (err) {
      seen.push("probe: " + err);
    }
    // CSP violation events are queued as tasks: report a little after load.
    setTimeout(function () {
      out.errors = seen;
      var pre = document.createElement("pre");
      pre.id = "probe-results";
      pre.textContent = JSON.stringify(out);
      document.body.appendChild(pre);
    }, 200);
  });
}());
"""


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--enable-logging=stderr",
        "--v=0",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def _console_errors(stderr: str) -> list[str]:
    """Console messages Chromium logs to stderr that signal a broken page."""
    return [
        line
        for line in stderr.splitlines()
        if "CONSOLE" in line and re.search(r"Uncaught|Refused|Error|error", line)
    ]


def _instrument(page: str) -> str:
    """The probe goes right after <head>, ahead of the page's CSP <meta>, so the policy
    (which applies from that element on) does not block it but still guards the page."""
    head = page.index("<head>") + len("<head>")
    return page[:head] + f"\n<script>{PROBE}</script>" + page[head:]


def _probe(tmp_path: Path, page: Path) -> dict[str, Any]:
    probed = page.with_name("probed-" + page.name)
    probed.write_text(_instrument(page.read_text(encoding="utf-8")), encoding="utf-8")
    result = _chromium(tmp_path, "--virtual-time-budget=3000", "--dump-dom", probed.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    match = re.search(r'<pre id="probe-results">(.*?)</pre>', result.stdout, re.S)
    assert match, f"the probe did not run; DOM tail: {result.stdout[-1500:]}"
    data: dict[str, Any] = json.loads(html.unescape(match.group(1)))
    data["console"] = _console_errors(result.stderr)
    return data


def _assert_not_blank(png: Path) -> None:
    from PIL import Image, ImageStat

    with Image.open(png) as image:
        assert image.size == (1280, 2000)
        gray = image.convert("L")
        stat = ImageStat.Stat(gray)
        assert stat.stddev[0] > 20, f"screenshot looks blank (pixel std {stat.stddev[0]:.1f})"
        histogram = gray.histogram()
        assert max(histogram) / sum(histogram) < 0.9, "one grey level covers >90% of the page"
        # the plots are drawn: some saturated (series-coloured) pixels exist
        hsv = image.convert("HSV")
        saturated = sum(hsv.getchannel("S").histogram()[100:])
        assert saturated > 500, "no coloured plot marks on the page"


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory, default_profile: Profile) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("browser")
    return {
        "default": write_report(default_profile, root / "default.html"),
        "hostile": write_report(
            hostile_profile(), root / "hostile.html", comparison=FakeComparison()
        ),
    }


def test_default_report_runs_without_errors(tmp_path: Path, pages: dict[str, Path]) -> None:
    seen = _probe(tmp_path, pages["default"])
    assert seen["errors"] == [] and seen["console"] == []
    assert seen["js"] == "ready"
    assert seen["rows"] == 6
    assert seen["desc_first"] == "5"  # "#" clicked twice: descending
    per_dim = seen["asc_by_per_dim"]
    assert len(per_dim) == 6 and per_dim[0] == "2"  # features.4 has the lowest ΔH/dim
    assert seen["filtered"] == 4 and seen["count"] == "showing 4 of 6 layers"
    assert seen["singular"] == 0
    assert seen["tooltip_shown"] == "block"
    assert seen["tooltip"].startswith("#2 features.4 (conv2d)") and "ΔH/dim" in seen["tooltip"]
    assert seen["titles_left"] == 0  # moved into the styled tooltip


def test_hostile_report_runs_without_errors(tmp_path: Path, pages: dict[str, Path]) -> None:
    seen = _probe(tmp_path, pages["hostile"])
    assert seen["errors"] == [] and seen["console"] == []  # no alert(), no CSP violation
    assert seen["js"] == "ready"
    assert seen["singular"] == 1
    # −inf sorts first ascending, rows without a value (skipped, not analytic) last
    assert seen["asc_by_per_dim"] == ["3", "6", "0", "1", "2", "4", "5"]
    assert seen["tooltip"].startswith(f"#2 {EVIL} (conv2d)")
    assert seen["tooltip_children"] == 0  # text, never parsed markup


def test_the_probe_sees_errors_and_blocked_content(tmp_path: Path, pages: dict[str, Path]) -> None:
    """The checks above are not vacuous: a script error, an injected inline script and an
    external image are all reported (the last two blocked by the page's CSP)."""
    page = pages["hostile"].read_text(encoding="utf-8")
    code = re.search(r"<script>(.*?)</script>", page, re.S)
    assert code is not None
    broken = code.group(1).replace('"ready");', '"ready"); notDefined();')

    def digest(text: str) -> str:
        return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()

    page = page.replace(code.group(1), broken).replace(digest(code.group(1)), digest(broken))
    page = page.replace(
        '<main class="wrap">',
        '<main class="wrap"><script>window.injected = 1;</script>'
        '<img src="http://example.invalid/x.png" alt="">',
    )
    bad = tmp_path / "bad.html"
    bad.write_text(page, encoding="utf-8")
    errors = " | ".join(_probe(tmp_path, bad)["errors"])
    assert "notDefined is not defined" in errors
    assert "csp: script-src" in errors and "csp: img-src http://example.invalid" in errors


def test_screenshot_is_not_blank(tmp_path: Path, pages: dict[str, Path]) -> None:
    png = tmp_path / "report.png"
    result = _chromium(
        tmp_path,
        f"--screenshot={png}",
        "--window-size=1280,2000",
        "--virtual-time-budget=3000",
        pages["default"].as_uri(),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert _console_errors(result.stderr) == []
    _assert_not_blank(png)
