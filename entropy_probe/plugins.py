"""Extension points, filled through the ``entropy_probe.plugins`` entry-point group.

A plugin is a module (or object) with a ``register(registrar: PluginRegistrar) -> None``
function. The built-ins register through the same group (``builtin``); if the package is run
from a source tree without its metadata, they are registered directly. Set
``ENTROPY_PROBE_DISABLE_PLUGIN_AUTOLOAD=1`` to load only the built-ins.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from entropy_probe.entropy.rules import LayerRule
from entropy_probe.errors import DuplicateNameError, PluginError
from entropy_probe.loading._base import Loader
from entropy_probe.registry import Registry

ENTRY_POINT_GROUP = "entropy_probe.plugins"
DISABLE_ENV = "ENTROPY_PROBE_DISABLE_PLUGIN_AUTOLOAD"
BUILTIN_NAME = "builtin"
#: What a layer kind looks like (rules and module kinds): a lower-case identifier.
KIND_PATTERN = re.compile(r"[a-z][a-z0-9_]*")


def check_kind(kind: object, *, plugin: str, where: str) -> str:
    """``kind`` if it is a valid layer kind (:data:`KIND_PATTERN`), else a PluginError naming
    the plugin and suggesting the nearest valid spelling."""
    if isinstance(kind, str) and KIND_PATTERN.fullmatch(kind):
        return kind
    fixed = re.sub(r"[^a-z0-9_]+", "_", str(kind).strip().lower()).strip("_")
    fixed = fixed if KIND_PATTERN.fullmatch(fixed) else ""
    hint = f", e.g. {fixed!r}" if fixed and isinstance(kind, str) else ""
    raise PluginError(
        f"{where}: {kind!r} is not a valid layer kind: it needs a lower-case kind, an "
        f"identifier of letters, digits and underscores starting with a letter "
        f"({KIND_PATTERN.pattern}){hint}",
        plugin=plugin,
    )


@dataclass
class PluginRegistry:
    """Everything plugins can add to."""

    loaders: Registry[Loader] = field(default_factory=lambda: Registry("loader scheme"))
    rules: Registry[LayerRule] = field(default_factory=lambda: Registry("layer rule"))
    module_kinds: dict[type, str] = field(default_factory=dict)
    module_kind_owners: dict[type, str] = field(default_factory=dict)  # type -> plugin
    plugins: dict[str, str] = field(default_factory=dict)  # name -> distribution

    def kind_of(self, module: nn.Module) -> str | None:
        """The layer kind of ``module``, resolved along its type's MRO (so subclasses such as
        timm's Conv2dSame resolve to their base's kind)."""
        for klass in type(module).__mro__:
            if klass in self.module_kinds:
                return self.module_kinds[klass]
        return None

    def rule_for(self, kind: str) -> LayerRule:
        return self.rules.get(kind)


class PluginRegistrar:
    """What a plugin's ``register`` function receives; records the owner of each entry."""

    def __init__(self, registry: PluginRegistry, owner: str) -> None:
        self._registry = registry
        self.owner = owner

    def add_loader(self, loader: Loader) -> None:
        if not isinstance(loader, Loader) or not loader.scheme:
            raise PluginError("add_loader needs a Loader instance with a scheme", plugin=self.owner)
        self._registry.loaders.register(loader.scheme, loader, owner=self.owner)

    def add_rule(self, rule: LayerRule) -> None:
        """Register ``rule`` for its ``kind`` (a lower-case identifier). Its ``group``
        (``"dense"``, ``"conv"`` or None) decides whether its layers are compared with the
        reference bands and get fine-tuning loss terms."""
        from entropy_probe.patterns.pattern import LayerGroup

        if not isinstance(rule, LayerRule):
            raise PluginError(
                "add_rule needs a LayerRule instance with a lower-case kind", plugin=self.owner
            )
        where = f"add_rule({type(rule).__name__})"
        raw = str(rule.kind) if isinstance(rule.kind, str) else rule.kind  # a StrEnum: its value
        kind = check_kind(raw, plugin=self.owner, where=where)
        if rule.group is not None and rule.group not in {g.value for g in LayerGroup}:
            raise PluginError(
                f"{where}: rule {kind!r} declares group {rule.group!r}; a layer group is one of "
                f"{', '.join(repr(g.value) for g in LayerGroup)}, or None for none",
                plugin=self.owner,
            )
        self._registry.rules.register(kind, rule, owner=self.owner)

    def add_module_kind(self, module_type: type, kind: str) -> None:
        """Map an ``nn.Module`` subclass to a layer kind (subclasses inherit it along the MRO).

        A kind with no registered rule is allowed (another plugin may provide it), but its
        layers are profiled as ``skipped`` with the reason ``unknown layer rule ...``."""
        if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
            raise PluginError(f"{module_type!r} is not an nn.Module subclass", plugin=self.owner)
        name = module_type.__qualname__
        kind = check_kind(kind, plugin=self.owner, where=f"add_module_kind({name})")
        registry = self._registry
        if module_type in registry.module_kinds:
            first = registry.module_kind_owners.get(module_type) or "unknown"
            existing = str(registry.module_kinds[module_type])
            raise DuplicateNameError(
                f"module type {name} ({module_type.__module__}.{name}) is mapped to a kind "
                f"twice: to {existing!r} by {first} and to {kind!r} by {self.owner or 'unknown'}"
            )
        registry.module_kinds[module_type] = kind
        registry.module_kind_owners[module_type] = self.owner


_lock = threading.RLock()
_registry: PluginRegistry | None = None
_building = False


def _call_register(obj: Any, registrar: PluginRegistrar, dist: str) -> None:
    register: Callable[[PluginRegistrar], None] | None = getattr(obj, "register", None)
    if not callable(register):
        raise PluginError(
            "plugin has no register(registrar) function", plugin=registrar.owner, distribution=dist
        )
    try:
        register(registrar)
    except PluginError:
        raise
    except Exception as exc:  # a third-party failure: say whose
        raise PluginError(
            f"plugin failed while registering: {exc}", plugin=registrar.owner, distribution=dist
        ) from exc


def build_registry(*, autoload: bool | None = None) -> PluginRegistry:
    """A fresh registry with the built-ins and (unless disabled) every installed plugin."""
    from entropy_probe import _builtin_plugins

    if autoload is None:
        autoload = os.environ.get(DISABLE_ENV, "").strip().lower() not in {"1", "true", "yes"}
    registry = PluginRegistry()
    _call_register(_builtin_plugins, PluginRegistrar(registry, BUILTIN_NAME), "entropy-probe")
    registry.plugins[BUILTIN_NAME] = "entropy-probe"
    if not autoload:
        return registry
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == BUILTIN_NAME or ep.name in registry.plugins:
            continue
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else "unknown"
        try:
            obj = ep.load()
        except Exception as exc:
            raise PluginError(
                f"cannot import plugin: {exc}", plugin=ep.name, distribution=dist
            ) from exc
        _call_register(obj, PluginRegistrar(registry, ep.name), dist)
        registry.plugins[ep.name] = dist
    return registry


def get_registry() -> PluginRegistry:
    """The process-wide registry, built on first use."""
    global _registry, _building
    with _lock:
        if _registry is None:
            if _building:
                raise PluginError(
                    "a plugin called get_registry() while registering; use only the registrar "
                    "passed to its register() function"
                )
            _building = True
            try:
                _registry = build_registry()
            finally:
                _building = False
        return _registry


def reset_registry() -> None:
    """Forget the process-wide registry (tests; after installing a plugin)."""
    global _registry
    with _lock:
        _registry = None


def get_loader(scheme: str) -> Loader:
    return get_registry().loaders.get(scheme)


def get_rule(kind: str) -> LayerRule:
    return get_registry().rules.get(kind)
