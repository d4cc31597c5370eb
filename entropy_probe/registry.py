"""A small typed registry: named entries, duplicate registration is an error, unknown names
get the valid names and close matches in the message (timm-style query API, pluggy-style
strictness)."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from entropy_probe.errors import DuplicateNameError, UnknownNameError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered object and who registered it (a module or distribution name)."""

    name: str
    obj: T
    owner: str


class Registry(Generic[T]):
    """Name → object mapping for one extension kind (loaders, rules, datasets, ...)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, obj: T, *, owner: str = "") -> T:
        """Add ``obj`` under ``name``; a second registration of the same name raises."""
        if not name or name != name.strip():
            raise ValueError(f"invalid {self.what} name {name!r}")
        if name in self._entries:
            first = self._entries[name].owner or "unknown"
            raise DuplicateNameError(
                f"{self.what} {name!r} is registered twice: by {first} and by {owner or 'unknown'}"
            )
        self._entries[name] = Entry(name, obj, owner)
        return obj

    def decorator(self, name: str, *, owner: str = "") -> Callable[[T], T]:
        """``@registry.decorator("name")`` form of :meth:`register`."""

        def wrap(obj: T) -> T:
            return self.register(name, obj, owner=owner)

        return wrap

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        """The object registered as ``name``; unknown names raise with suggestions."""
        try:
            return self._entries[name].obj
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        valid = sorted(self._entries)
        close = difflib.get_close_matches(name, valid, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        return f"unknown {self.what} {name!r}.{hint} Valid: {', '.join(valid) or '(none)'}."

    def owner(self, name: str) -> str:
        return self._entries[name].owner

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching an fnmatch ``pattern``, sorted."""
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
