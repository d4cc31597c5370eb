"""How every command reports: user mistakes as one line and exit code 1, never a traceback;
warnings as one ``warning: ...`` line."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from entropy_probe.errors import EntropyProbeError, PluginError, one_line
from entropy_probe.plugins import DISABLE_ENV

__all__ = ["friendly_errors"]

F = TypeVar("F", bound=Callable[..., Any])


def _one_line_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """A warning (e.g. --trust-pickle's) as one ``warning: ...`` line, without source lines."""
    click.echo(f"warning: {message}", err=True)


def friendly_errors(func: F) -> F:
    """User mistakes become one line on stderr and exit code 1, never a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _one_line_warning
                return func(*args, **kwargs)
        except PluginError as exc:
            raise click.ClickException(
                one_line(
                    f"{exc}. Fix or uninstall that plugin's distribution, or set "
                    f"{DISABLE_ENV}=1 to run without third-party plugins"
                )
            ) from None
        except EntropyProbeError as exc:
            raise click.ClickException(one_line(str(exc))) from None
        except KeyboardInterrupt:
            click.echo("interrupted: nothing was written", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]
