"""The plugin registry: built-ins, MRO kind lookup and entry-point loading.

Entry points are faked by monkeypatching ``importlib.metadata.entry_points`` (pluggy's
``testing/test_pluginmanager.py::test_load_setuptools_instantiation`` style), so no
distribution has to be installed.
"""

from __future__ import annotations

import importlib.metadata
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import scaled_dense_plugin
import torch
from scaled_dense_plugin import ScaledDense, UngroupedDense, plugin_mlp
from torch import nn

from entropy_probe import plugins
from entropy_probe.entropy.rules import DenseRule, LayerRule
from entropy_probe.errors import DuplicateNameError, PluginError
from entropy_probe.loading._base import LoadedModel, Loader, LoadOptions
from entropy_probe.plugins import (
    BUILTIN_NAME,
    DISABLE_ENV,
    ENTRY_POINT_GROUP,
    PluginRegistrar,
    PluginRegistry,
    build_registry,
    get_registry,
    get_rule,
    reset_registry,
)

BUILTIN_LOADERS = ["default", "onnx", "safetensors", "smp", "timm", "torch", "zoo"]
BUILTIN_RULES = [
    "batchnorm",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "linear",
]


@pytest.fixture(autouse=True)
def _fresh_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts and ends with no process-wide registry and autoload enabled."""
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    reset_registry()
    yield
    reset_registry()


# --------------------------------------------------------------------------- fakes


@dataclass
class FakeDist:
    name: str = "entropy-probe-fake"
    version: str = "1.2.3"


class FakeEntryPoint:
    """What ``importlib.metadata.entry_points(group=...)`` yields: name, value, dist, load()."""

    group = ENTRY_POINT_GROUP

    def __init__(self, name: str, loader: Callable[[], Any], dist: FakeDist | None = None) -> None:
        self.name = name
        self.value = f"fake_{name}"
        self.dist = dist if dist is not None else FakeDist()
        self._loader = loader
        self.loaded = 0

    def load(self) -> Any:
        self.loaded += 1
        return self._loader()


def install_entry_points(monkeypatch: pytest.MonkeyPatch, *eps: FakeEntryPoint) -> list[str]:
    """Make ``entry_points(group=ENTRY_POINT_GROUP)`` return ``eps``; returns the groups asked."""
    asked: list[str] = []

    def fake_entry_points(**kwargs: Any) -> list[FakeEntryPoint]:
        group = kwargs.get("group", "")
        asked.append(group)
        return list(eps) if group == ENTRY_POINT_GROUP else []

    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points)
    return asked


class Doubler(nn.Module):
    """A custom module a plugin teaches entropy_probe about: y = x Wᵀ (a dense map)."""

    def __init__(self, n: int = 3) -> None:
        super().__init__()
        self.weight = nn.Parameter(2 * torch.eye(n))

    def forward(self, x: Any) -> Any:
        return x @ self.weight.T


class FakeDenseRule(DenseRule):
    kind = "fake_dense"


class FakeLoader(Loader):
    scheme = "fake"
    description = "a fake loader"

    def load(self, ident: str, options: LoadOptions) -> LoadedModel:
        return LoadedModel(source=ident, format="fake", module=nn.Linear(2, 2))


def good_plugin() -> types.ModuleType:
    module = types.ModuleType("fake_good_plugin")

    def register(registrar: PluginRegistrar) -> None:
        registrar.add_rule(FakeDenseRule())
        registrar.add_module_kind(Doubler, "fake_dense")
        registrar.add_loader(FakeLoader())

    module.register = register  # type: ignore[attr-defined]
    return module


# --------------------------------------------------------------------------- built-ins


def test_builtin_loaders_and_rules() -> None:
    registry = build_registry(autoload=False)
    assert registry.loaders.names() == BUILTIN_LOADERS
    assert registry.rules.names() == BUILTIN_RULES
    assert registry.plugins == {BUILTIN_NAME: "entropy-probe"}
    for name in BUILTIN_LOADERS:
        assert registry.loaders.owner(name) == BUILTIN_NAME
        assert isinstance(registry.loaders.get(name), Loader)
        assert registry.loaders.get(name).scheme == name
    for kind in BUILTIN_RULES:
        rule = registry.rule_for(kind)
        assert isinstance(rule, LayerRule)
        assert rule.kind == kind
        assert registry.rules.owner(kind) == BUILTIN_NAME


def test_builtin_is_declared_in_the_entry_point_group() -> None:
    """The package's own metadata registers the built-ins through the same group."""
    eps = {ep.name: ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    assert eps.get(BUILTIN_NAME) == "entropy_probe._builtin_plugins"


def test_builtin_entry_point_is_not_registered_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    from entropy_probe import _builtin_plugins

    ep = FakeEntryPoint(BUILTIN_NAME, lambda: _builtin_plugins, FakeDist("entropy-probe", "0.1.0"))
    install_entry_points(monkeypatch, ep)
    registry = build_registry()
    assert registry.loaders.names() == BUILTIN_LOADERS
    assert ep.loaded == 0


class MyConv(nn.Conv2d):
    pass


class MyConvChild(MyConv):
    pass


@pytest.mark.parametrize(
    ("module", "kind"),
    [
        (nn.Linear(2, 3), "linear"),
        (nn.Conv1d(1, 1, 1), "conv1d"),
        (nn.Conv2d(1, 1, 1), "conv2d"),
        (nn.Conv3d(1, 1, 1), "conv3d"),
        (nn.ConvTranspose1d(1, 1, 1), "conv_transpose1d"),
        (nn.ConvTranspose2d(1, 1, 1), "conv_transpose2d"),
        (nn.ConvTranspose3d(1, 1, 1), "conv_transpose3d"),
        (nn.BatchNorm1d(2), "batchnorm"),
        (nn.BatchNorm2d(2), "batchnorm"),
        (nn.BatchNorm3d(2), "batchnorm"),
        (nn.SyncBatchNorm(2), "batchnorm"),
        (MyConv(1, 1, 3), "conv2d"),
        (MyConvChild(1, 1, 3), "conv2d"),
        (nn.ReLU(), None),
        (nn.LayerNorm(4), None),
        (nn.Sequential(nn.Linear(2, 2)), None),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else str(v),
)
def test_kind_of_resolves_along_the_mro(module: nn.Module, kind: str | None) -> None:
    assert build_registry(autoload=False).kind_of(module) == kind


def test_kind_of_timm_conv2d_same() -> None:
    layers = pytest.importorskip("timm.layers")
    conv = layers.Conv2dSame(3, 4, 3, stride=2)
    assert type(conv) is not nn.Conv2d
    assert build_registry(autoload=False).kind_of(conv) == "conv2d"


def test_kind_of_prefers_the_most_specific_type() -> None:
    registry = build_registry(autoload=False)
    PluginRegistrar(registry, "test").add_module_kind(MyConv, "my_conv")
    assert registry.kind_of(MyConvChild(1, 1, 1)) == "my_conv"
    assert registry.kind_of(nn.Conv2d(1, 1, 1)) == "conv2d"


# --------------------------------------------------------------------------- entry points


def test_good_plugin_adds_a_rule_a_kind_and_a_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    ep = FakeEntryPoint("fake", good_plugin)
    asked = install_entry_points(monkeypatch, ep)
    registry = build_registry()
    assert asked == [ENTRY_POINT_GROUP]
    assert ep.loaded == 1
    assert "fake_dense" in registry.rules.names()
    assert registry.rules.owner("fake_dense") == "fake"
    assert registry.kind_of(Doubler()) == "fake_dense"
    assert registry.loaders.get("fake").scheme == "fake"
    assert registry.loaders.owner("fake") == "fake"
    assert registry.plugins == {BUILTIN_NAME: "entropy-probe", "fake": "entropy-probe-fake 1.2.3"}
    # built-ins are still all there
    assert set(BUILTIN_RULES) <= set(registry.rules.names())


def test_get_registry_uses_entry_points_and_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    ep = FakeEntryPoint("fake", good_plugin)
    install_entry_points(monkeypatch, ep)
    first = get_registry()
    assert first is get_registry()
    assert ep.loaded == 1
    assert get_rule("fake_dense").kind == "fake_dense"
    reset_registry()
    assert get_registry() is not first
    assert ep.loaded == 2


def test_plugin_whose_import_fails_names_plugin_and_distribution(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def boom() -> Any:
        raise ImportError("No module named 'fake_missing_dep'")

    install_entry_points(
        monkeypatch, FakeEntryPoint("broken", boom, FakeDist("broken-dist", "0.0.7"))
    )
    with pytest.raises(
        PluginError, match=r"cannot import plugin: No module named 'fake_missing_dep'"
    ) as info:
        build_registry()
    assert "plugin 'broken'" in str(info.value)
    assert "broken-dist 0.0.7" in str(info.value)
    assert info.value.plugin == "broken"
    assert info.value.distribution == "broken-dist 0.0.7"
    assert isinstance(info.value.__cause__, ImportError)


def test_plugin_without_distribution_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    ep = FakeEntryPoint("orphan", lambda: object())
    ep.dist = None  # type: ignore[assignment]
    install_entry_points(monkeypatch, ep)
    with pytest.raises(
        PluginError, match=r"no register\(registrar\) function \(plugin 'orphan', unknown\)"
    ):
        build_registry()


def test_plugin_without_register_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    install_entry_points(monkeypatch, FakeEntryPoint("noreg", lambda: types.ModuleType("noreg")))
    with pytest.raises(
        PluginError,
        match=r"plugin has no register\(registrar\) function "
        r"\(plugin 'noreg', entropy-probe-fake 1\.2\.3\)",
    ):
        build_registry()


def test_plugin_with_non_callable_register_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    install_entry_points(
        monkeypatch, FakeEntryPoint("attr", lambda: types.SimpleNamespace(register=3))
    )
    with pytest.raises(PluginError, match=r"no register\(registrar\) function \(plugin 'attr'"):
        build_registry()


def test_plugin_registering_a_duplicate_loader_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    class TorchAgain(FakeLoader):
        scheme = "torch"

    def dup() -> Any:
        return types.SimpleNamespace(register=lambda r: r.add_loader(TorchAgain()))

    install_entry_points(monkeypatch, FakeEntryPoint("dup", dup))
    with pytest.raises(
        PluginError,
        match=r"loader scheme 'torch' is registered twice: by builtin and by dup.*plugin 'dup'",
    ) as info:
        build_registry()
    assert isinstance(info.value.__cause__, DuplicateNameError)


def test_two_plugins_registering_the_same_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    install_entry_points(
        monkeypatch,
        FakeEntryPoint("first", good_plugin),
        FakeEntryPoint(
            "second", lambda: types.SimpleNamespace(register=lambda r: r.add_rule(FakeDenseRule()))
        ),
    )
    with pytest.raises(
        PluginError, match=r"layer rule 'fake_dense' is registered twice: by first and by second"
    ):
        build_registry()


def test_plugin_raising_inside_register(monkeypatch: pytest.MonkeyPatch) -> None:
    def register(registrar: PluginRegistrar) -> None:
        raise ZeroDivisionError("oops")

    install_entry_points(
        monkeypatch, FakeEntryPoint("raiser", lambda: types.SimpleNamespace(register=register))
    )
    with pytest.raises(
        PluginError, match=r"plugin failed while registering: oops \(plugin 'raiser'"
    ):
        build_registry()


@pytest.mark.parametrize("value", ["1", "true", "YES", " 1 "])
def test_disable_autoload_env(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    ep = FakeEntryPoint("fake", good_plugin)
    install_entry_points(monkeypatch, ep)
    monkeypatch.setenv(DISABLE_ENV, value)
    registry = build_registry()
    assert registry.plugins == {BUILTIN_NAME: "entropy-probe"}
    assert registry.rules.names() == BUILTIN_RULES
    assert registry.loaders.names() == BUILTIN_LOADERS
    assert ep.loaded == 0
    assert get_registry().plugins == {BUILTIN_NAME: "entropy-probe"}


@pytest.mark.parametrize("value", ["", "0", "no"])
def test_autoload_stays_on_for_other_values(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    install_entry_points(monkeypatch, FakeEntryPoint("fake", good_plugin))
    monkeypatch.setenv(DISABLE_ENV, value)
    assert "fake" in build_registry().plugins


def test_explicit_autoload_argument_wins_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    install_entry_points(monkeypatch, FakeEntryPoint("fake", good_plugin))
    monkeypatch.setenv(DISABLE_ENV, "1")
    assert "fake" in build_registry(autoload=True).plugins
    monkeypatch.delenv(DISABLE_ENV)
    assert "fake" not in build_registry(autoload=False).plugins


# --------------------------------------------------------------------------- registrar checks


@pytest.fixture
def registrar() -> PluginRegistrar:
    return PluginRegistrar(PluginRegistry(), "checker")


def test_add_rule_needs_a_layer_rule(registrar: PluginRegistrar) -> None:
    with pytest.raises(
        PluginError, match=r"add_rule needs a LayerRule instance .*\(plugin 'checker'\)"
    ):
        registrar.add_rule(object())  # type: ignore[arg-type]


def test_builtin_rules_declare_their_layer_group() -> None:
    registry = build_registry(autoload=False)
    groups = {kind: registry.rule_for(kind).group for kind in BUILTIN_RULES}
    assert groups == {
        "batchnorm": None,
        "conv1d": "conv",
        "conv2d": "conv",
        "conv3d": "conv",
        "conv_transpose1d": "conv",
        "conv_transpose2d": "conv",
        "conv_transpose3d": "conv",
        "linear": "dense",
    }
    assert LayerRule.group is None  # a plugin rule belongs to no group unless it says so


@pytest.mark.parametrize("group", ["Dense", "linear", "", 1])
def test_add_rule_needs_a_known_group(registrar: PluginRegistrar, group: Any) -> None:
    class Grouped(DenseRule):
        kind = "grouped"

    Grouped.group = group
    with pytest.raises(
        PluginError,
        match=rf"add_rule\(Grouped\): rule 'grouped' declares group {group!r}; a layer group is "
        r"one of 'dense', 'conv', or None for none \(plugin 'checker'\)",
    ):
        registrar.add_rule(Grouped())


def test_add_rule_needs_a_lower_case_kind(registrar: PluginRegistrar) -> None:
    class Upper(DenseRule):
        kind = "Dense"

    class Empty(DenseRule):
        kind = ""

    for rule in (Upper(), Empty()):
        with pytest.raises(PluginError, match="lower-case kind"):
            registrar.add_rule(rule)


def test_add_loader_needs_a_scheme(registrar: PluginRegistrar) -> None:
    class NoScheme(FakeLoader):
        scheme = ""

    with pytest.raises(PluginError, match="add_loader needs a Loader instance with a scheme"):
        registrar.add_loader(NoScheme())
    with pytest.raises(PluginError, match="add_loader needs a Loader"):
        registrar.add_loader("torch")  # type: ignore[arg-type]


def test_add_module_kind_needs_a_module_type(registrar: PluginRegistrar) -> None:
    with pytest.raises(PluginError, match=r"is not an nn.Module subclass \(plugin 'checker'\)"):
        registrar.add_module_kind(int, "x")
    with pytest.raises(PluginError, match=r"is not an nn\.Module subclass"):
        registrar.add_module_kind(nn.Linear(1, 1), "x")  # type: ignore[arg-type]


def test_add_module_kind_twice_is_an_error(registrar: PluginRegistrar) -> None:
    registrar.add_module_kind(Doubler, "fake_dense")
    with pytest.raises(
        DuplicateNameError,
        match=r"module type Doubler \(test_plugins\.Doubler\) is mapped to a kind twice: "
        r"to 'fake_dense' by checker and to 'other' by checker",
    ):
        registrar.add_module_kind(Doubler, "other")
    assert registrar._registry.module_kinds[Doubler] == "fake_dense"  # the first one stays


def test_plugin_mapping_a_builtin_module_type_names_both_owners(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def mine() -> Any:
        return types.SimpleNamespace(register=lambda r: r.add_module_kind(nn.Linear, "my_dense"))

    install_entry_points(monkeypatch, FakeEntryPoint("mine", mine, FakeDist("mine-dist", "2")))
    with pytest.raises(PluginError) as info:
        build_registry()
    assert str(info.value) == (
        "plugin failed while registering: module type Linear (torch.nn.modules.linear.Linear) "
        "is mapped to a kind twice: to 'linear' by builtin and to 'my_dense' by mine "
        "(plugin 'mine', mine-dist 2)"
    )
    assert isinstance(info.value.__cause__, DuplicateNameError)


def test_two_plugins_mapping_the_same_module_type_name_both(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    install_entry_points(
        monkeypatch,
        FakeEntryPoint("first", good_plugin),
        FakeEntryPoint(
            "second",
            lambda: types.SimpleNamespace(register=lambda r: r.add_module_kind(Doubler, "twice")),
        ),
    )
    with pytest.raises(
        PluginError,
        match=r"module type Doubler .* to 'fake_dense' by first and to 'twice' by second "
        r"\(plugin 'second'",
    ):
        build_registry()


def test_a_subclass_of_a_mapped_type_may_get_its_own_kind(registrar: PluginRegistrar) -> None:
    registrar.add_module_kind(nn.Conv2d, "conv2d")
    registrar.add_module_kind(MyConv, "my_conv")  # more specific: not a duplicate
    assert registrar._registry.module_kind_owners == {nn.Conv2d: "checker", MyConv: "checker"}


@pytest.mark.parametrize(
    ("kind", "hint"),
    [
        ("Other Kind", "e.g. 'other_kind'"),
        ("Dense", "e.g. 'dense'"),
        ("my kind", "e.g. 'my_kind'"),
        ("my-conv", "e.g. 'my_conv'"),
        ("2d", None),
        ("_hidden", "e.g. 'hidden'"),
        ("", None),
        (None, None),
        (3, None),
    ],
)
def test_add_module_kind_needs_a_lower_case_identifier(
    registrar: PluginRegistrar, kind: Any, hint: str | None
) -> None:
    with pytest.raises(PluginError) as info:
        registrar.add_module_kind(Doubler, kind)
    message = str(info.value)
    assert message.startswith(f"add_module_kind(Doubler): {kind!r} is not a valid layer kind")
    assert "lower-case kind" in message and "[a-z][a-z0-9_]*" in message
    assert message.endswith("(plugin 'checker')")
    assert (hint in message) if hint else "e.g." not in message
    assert Doubler not in registrar._registry.module_kinds


@pytest.mark.parametrize("kind", ["my kind", "Other", "conv-2d", "2d"])
def test_add_rule_needs_an_identifier_kind(registrar: PluginRegistrar, kind: str) -> None:
    class Bad(DenseRule):
        pass

    Bad.kind = kind
    with pytest.raises(PluginError, match=r"add_rule\(Bad\): .* lower-case kind.*'checker'"):
        registrar.add_rule(Bad())
    assert kind not in registrar._registry.rules


def test_module_kind_without_a_rule_is_profiled_as_skipped_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A kind may come from another plugin's rule, so mapping one without a rule is allowed;
    its layers are listed as skipped, with the reason, and the rest is analysed."""
    from entropy_probe import LoadedModel, Status, profile_loaded

    def orphan() -> Any:
        return types.SimpleNamespace(register=lambda r: r.add_module_kind(Doubler, "orphan"))

    install_entry_points(monkeypatch, FakeEntryPoint("orphan", orphan))
    model = nn.Sequential(Doubler(3), nn.Linear(3, 3)).eval()
    profile = profile_loaded(
        LoadedModel(source="m", format="torch", module=model, input_shape=(3,)), device="cpu"
    )
    doubler, linear = profile.layers
    assert (doubler.kind, doubler.status) == ("orphan", Status.SKIPPED)
    assert "unknown layer rule 'orphan'" in doubler.reason
    assert linear.status is Status.OK


def test_plugin_module_is_importable_like_a_real_plugin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real module on sys.path, loaded by a real ``importlib.metadata.EntryPoint``."""
    (tmp_path / "ep_tmp_plugin.py").write_text(
        "from entropy_probe.entropy.rules import DenseRule\n"
        "class R(DenseRule):\n"
        "    kind = 'tmp_dense'\n"
        "def register(registrar):\n"
        "    registrar.add_rule(R())\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = importlib.metadata.EntryPoint(name="tmp", value="ep_tmp_plugin", group=ENTRY_POINT_GROUP)
    install_entry_points(monkeypatch, ep)  # type: ignore[arg-type]
    try:
        registry = build_registry()
    finally:
        sys.modules.pop("ep_tmp_plugin", None)
    assert registry.rules.owner("tmp_dense") == "tmp"
    assert registry.plugins["tmp"] == "unknown"  # an EntryPoint built by hand has no dist


def test_module_level_helpers_use_the_global_registry() -> None:
    assert plugins.get_loader("torch").scheme == "torch"
    assert get_rule("linear").kind == "linear"


def test_cli_names_the_way_out_of_a_broken_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from entropy_probe.cli import main

    def boom() -> Any:
        raise ImportError("No module named 'fake_missing_dep'")

    install_entry_points(monkeypatch, FakeEntryPoint("broken", boom, FakeDist("broken-dist", "1")))
    reset_registry()
    result = CliRunner().invoke(main, ["list", "loaders"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "broken-dist 1" in result.output
    assert "ENTROPY_PROBE_DISABLE_PLUGIN_AUTOLOAD=1" in result.output


# --------------------------------------------------------------------------- layer groups


def grouping_plugin() -> types.ModuleType:
    module = types.ModuleType("fake_grouping_plugin")
    module.register = scaled_dense_plugin.register  # type: ignore[attr-defined]
    return module


NO_GROUP = (
    "kind 'ungrouped_dense' belongs to no layer group: its rule declares none "
    "(LayerRule.group, plugin 'grp')"
)


def test_layer_group_is_what_the_rule_declares(monkeypatch: pytest.MonkeyPatch) -> None:
    from entropy_probe.patterns.pattern import LayerGroup, layer_group, no_group_reason

    install_entry_points(monkeypatch, FakeEntryPoint("grp", grouping_plugin))
    assert layer_group("scaled_dense") is LayerGroup.DENSE
    assert layer_group("ungrouped_dense") is None
    assert no_group_reason("ungrouped_dense") == NO_GROUP
    assert no_group_reason("scaled_dense") == ""
    assert layer_group("linear") is LayerGroup.DENSE
    assert layer_group("conv_transpose2d") is LayerGroup.CONV


def test_plugin_layers_of_a_group_are_compared_and_get_loss_terms(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The reviewer's case: Sequential(ScaledDense, ReLU, ScaledDense, ReLU, Linear) with a
    plugin rule declaring ``group = "dense"``: all three layers are compared with the dense
    band and get the dense loss term, with the profile's own values."""
    from entropy_probe import LoadedModel, profile_loaded
    from entropy_probe.patterns.pattern import Quantity, layer_value
    from entropy_probe.patterns.select import Traits, compare_with
    from entropy_probe.train.losses import build_entropy_loss

    install_entry_points(monkeypatch, FakeEntryPoint("grp", grouping_plugin))
    model = plugin_mlp(ScaledDense)
    profile = profile_loaded(
        LoadedModel(source="m", format="torch", module=model, input_shape=(16,)), device="cpu"
    )
    assert [x.kind for x in profile.layers] == ["scaled_dense", "scaled_dense", "linear"]
    assert Traits.of(profile).dense_layers == 3
    comparison = compare_with(profile, "auto")
    assert [x.name for x in comparison.layers] == ["0", "2", "4"]
    assert [x.group for x in comparison.layers] == ["dense"] * 3
    assert comparison.not_compared == () and comparison.notes() == []

    loss = build_entropy_loss(
        model,
        lambda_dense=1.0,
        lambda_conv=0.0,
        example_input=torch.randn(1, 16),
        every=1,
        amortise="scale",
    )
    assert [x.name for x in loss.layers] == ["0", "2", "4"]
    expected = {x.name: layer_value(x, Quantity.SHAPE_EXCESS) for x in profile.layers}
    assert loss.layer_values(model) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    sum(loss(model, 0).values()).backward()  # type: ignore[union-attr]
    for i in (0, 2):
        grad = model[i].weight_unscaled.grad
        assert grad is not None and float(grad.abs().sum()) > 0


def test_plugin_layers_of_no_group_are_listed_and_get_no_term(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rule declaring no group: its layers are still profiled, listed as not compared with
    the reason, and the loss warns that they get no term."""
    from entropy_probe import LoadedModel, profile_loaded
    from entropy_probe.patterns.select import compare_with
    from entropy_probe.train._loss_layers import NoLossTermWarning
    from entropy_probe.train.losses import build_entropy_loss

    install_entry_points(monkeypatch, FakeEntryPoint("grp", grouping_plugin))
    model = plugin_mlp(UngroupedDense)
    profile = profile_loaded(
        LoadedModel(source="m", format="torch", module=model, input_shape=(16,)), device="cpu"
    )
    assert [x.analysed for x in profile.layers] == [True, True, True]
    comparison = compare_with(profile, "auto")
    assert [x.name for x in comparison.layers] == ["4"]
    assert comparison.not_compared == ("0", "2")
    assert comparison.no_group == (("0", NO_GROUP), ("2", NO_GROUP))
    assert comparison.notes() == [f"{NO_GROUP}; not compared: 0, 2"]
    data = comparison.to_dict()
    assert data["not_compared"] == ["0", "2"] and data["notes"] == comparison.notes()

    with pytest.warns(NoLossTermWarning) as caught:
        loss = build_entropy_loss(
            model, lambda_dense=1.0, lambda_conv=0.0, example_input=torch.randn(1, 16)
        )
    assert [str(w.message) for w in caught] == [
        f"the entropy loss gives layers '0', '2' no term: {NO_GROUP}"
    ]
    assert caught[0].filename == __file__  # points at the caller of build_entropy_loss
    assert [x.name for x in loss.layers] == ["4"]
