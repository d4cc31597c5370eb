"""The Jinja2 environment of the report: package templates, autoescape on for HTML.

Every ``*.html.j2`` template is autoescaped (``select_autoescape`` would not match the ``.j2``
suffix by default, so it is named here); ``style.css`` and ``report.js`` are static and
included verbatim. Untrusted text (layer names, reasons, notes) reaches the page only through
autoescaped expressions, and the embedded data only through ``|tojson``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import math
from collections.abc import Mapping
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from entropy_probe.entropy.profile import Profile
from entropy_probe.report._view import build_view, fmt_num, fmt_shape, sort_key

__all__ = ["AUTOESCAPE_EXTENSIONS", "environment", "render_html", "static_asset"]

AUTOESCAPE_EXTENSIONS = ("html", "htm", "xml", "svg", "j2")
TEMPLATE = "report.html.j2"


@functools.lru_cache(maxsize=1)
def environment() -> Environment:
    """The report's template environment (cached: templates are package data)."""
    env = Environment(
        loader=PackageLoader("entropy_probe", "report/templates"),
        autoescape=select_autoescape(
            enabled_extensions=AUTOESCAPE_EXTENSIONS,
            disabled_extensions=("css", "js"),
            default_for_string=True,
            default=True,
        ),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["num"] = fmt_num
    env.filters["shape"] = fmt_shape
    env.filters["sortkey"] = sort_key
    env.tests["neginf"] = _is_neginf
    return env


def _is_neginf(value: Any) -> bool:
    return isinstance(value, float) and math.isinf(value) and value < 0


@functools.cache
def static_asset(name: str) -> tuple[Markup, str]:
    """A static template file (``style.css``, ``report.js``) and its CSP hash source.

    Inlined verbatim; the page's Content-Security-Policy allows exactly these hashes, so no
    other inline script or style (e.g. one smuggled in through a layer name) could run.
    """
    env = environment()
    if env.loader is None:  # pragma: no cover - environment() always sets one
        raise RuntimeError("the report environment has no template loader")
    text, _, _ = env.loader.get_source(env, name)
    if "</" in text:  # would end the <style>/<script> element early
        raise RuntimeError(f"report/templates/{name} must not contain '</'")
    digest = base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")
    return Markup(text), f"sha256-{digest}"


def render_html(
    profile: Profile,
    *,
    comparison: Any | None = None,
    meta: Mapping[str, Any] | None = None,
) -> str:
    from entropy_probe import __version__

    view = build_view(profile, comparison=comparison, meta=meta, version=__version__)
    style, style_hash = static_asset("style.css")
    script, script_hash = static_asset("report.js")
    return (
        environment()
        .get_template(TEMPLATE)
        .render(
            view=view,
            version=__version__,
            style=style,
            style_hash=style_hash,
            script=script,
            script_hash=script_hash,
        )
    )
