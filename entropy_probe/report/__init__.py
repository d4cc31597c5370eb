"""The self-contained HTML entropy report.

>>> from entropy_probe import profile
>>> from entropy_probe.report import write_report
>>> write_report(profile("default", method="both"), "entropy_report.html")  # doctest: +SKIP

The report sees only the :class:`~entropy_probe.entropy.profile.Profile` records (and an
optional comparison result), never the model. Styles, scripts and plots (inline SVG) are all
inside the one file: it opens offline and fetches nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from entropy_probe._io import atomic_write_text
from entropy_probe.entropy.profile import Profile
from entropy_probe.report.html import render_html

__all__ = ["render_report", "write_report"]


def render_report(
    profile: Profile,
    *,
    comparison: Any | None = None,
    meta: Mapping[str, Any] | None = None,
) -> str:
    """The report of ``profile`` as one HTML document.

    ``comparison`` is any object (or mapping) with ``score`` (in [0, 1]), ``reference`` (a name,
    or an object with ``.name``) and ``layers`` (items with ``name``, ``deviation`` in band
    widths, ``in_band``), and optionally ``not_compared`` / ``not_defined`` (layer names, or
    ``{name, reason}``: listed with a reason, found from the profile where none is given);
    ``meta`` adds rows to the summary's details (e.g. ``{"samples": 512}``).
    """
    if not isinstance(profile, Profile):
        raise TypeError(f"render_report expects a Profile, got {type(profile).__name__}")
    return render_html(profile, comparison=comparison, meta=meta)


def write_report(
    profile: Profile,
    path: str | Path,
    *,
    comparison: Any | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Render and write the report atomically: ``path`` holds the old file or the whole new
    one, never a partial page."""
    html = render_report(profile, comparison=comparison, meta=meta)
    return atomic_write_text(path, html)
