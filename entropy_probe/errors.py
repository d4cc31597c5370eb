"""Exception types. Every user mistake surfaces as an ``EntropyProbeError`` subclass.

The CLI turns these into a one-line message and a non-zero exit code; anything else is a bug.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from enum import Enum
from typing import Any

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first non-blank line of an exception's message (at most ``limit`` characters), or
    its type name when the message is empty: what a one-line error quotes of a library's."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:limit] if limit is not None else line


def one_line(message: str) -> str:
    """A message as one line: control characters (from names inside a damaged or hostile
    file, say) are shown escaped, as ``\\n`` or ``\\x07``."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], message)


class EntropyProbeError(Exception):
    """Base class for every error entropy_probe raises on purpose."""


class UnknownNameError(EntropyProbeError, KeyError):
    """A name (loader scheme, rule, model, reference) is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DuplicateNameError(EntropyProbeError, ValueError):
    """Two registrations under the same name."""


class SourceError(EntropyProbeError, ValueError):
    """A model source cannot be read: missing, corrupt, unsafe or ambiguous."""


class UnsupportedLayerError(EntropyProbeError, TypeError):
    """A layer has no rule or does not fit its rule's contract."""


class ShapeError(EntropyProbeError, ValueError):
    """Shapes that do not fit together (weights, input shape, grid)."""


class ArgumentError(EntropyProbeError, TypeError, ValueError):
    """A Python API argument of the wrong type or value (the CLI's options are checked by
    click): a ``TypeError`` and a ``ValueError`` too, so idiomatic handlers catch it."""


class PluginError(EntropyProbeError, RuntimeError):
    """A plugin failed to load or registered something invalid."""

    def __init__(self, message: str, *, plugin: str = "", distribution: str = "") -> None:
        where = ", ".join(p for p in (plugin and f"plugin {plugin!r}", distribution) if p)
        super().__init__(f"{message} ({where})" if where else message)
        self.plugin = plugin
        self.distribution = distribution


def unknown_name(
    what: str, name: object, valid: Sequence[str], *, listing: str = "valid"
) -> UnknownNameError:
    """The error for a name that is not one of ``valid``: the closest valid name as a
    suggestion, then the whole list (``(listing: a, b)``)."""
    close = difflib.get_close_matches(str(name), list(valid), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    names = ", ".join(valid) or "none"
    return UnknownNameError(f"unknown {what} {name!r}{hint} ({listing}: {names})")


def enum_member(enum: type[Enum], value: object, what: str) -> Any:
    """``value`` as a member of the string-valued enum ``enum``, or the :func:`unknown_name` error
    naming ``what`` and listing the members."""
    valid = [str(member.value) for member in enum]
    if isinstance(value, str) and value in valid:
        return enum(value)
    raise unknown_name(what, value, valid)
