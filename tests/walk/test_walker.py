"""``walk_module``: names, order, shared/tied modules, BatchNorm folding, no mutation."""

from __future__ import annotations

import io
import math
import weakref

import pytest
import torch
from torch import nn

from entropy_probe.entropy.profile import Profile, compute_profile
from entropy_probe.enums import Status
from entropy_probe.errors import ShapeError, SourceError
from entropy_probe.plugins import PluginRegistry, build_registry
from entropy_probe.walk.module_walker import _ConsumerCounter, walk_module
from entropy_probe.walk.records import LayerRecord

from .fixtures import CASES, CASES_BY_NAME, RAISING, Case

NOT_EXECUTED = "not executed by the traced forward pass: positions unknown"


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    return build_registry(autoload=False)


def walk(case: Case, registry: PluginRegistry) -> tuple[nn.Module, list[LayerRecord]]:
    model = case.model().eval()
    return model, walk_module(model, case.input_shape, registry)


def profile_of(records: list[LayerRecord], registry: PluginRegistry, case: Case) -> Profile:
    return compute_profile(
        records,
        registry.rules,
        source=case.name,
        format="test",
        input_shape=case.input_shape,
        device="cpu",
    )


def by_name(records: list[LayerRecord]) -> dict[str, LayerRecord]:
    return {r.name: r for r in records}


def state_bytes(model: nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def hook_counts(model: nn.Module) -> dict[str, int]:
    return {
        name: len(m._forward_hooks) + len(m._forward_pre_hooks) for name, m in model.named_modules()
    }


# --------------------------------------------------------------------------- names and order


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_qualified_names_in_execution_order(case: Case, registry: PluginRegistry) -> None:
    _, records = walk(case, registry)
    assert tuple(r.name for r in records) == case.names


def test_execution_order_not_registration_order(registry: PluginRegistry) -> None:
    model, records = walk(CASES_BY_NAME["reordered"], registry)
    assert [name for name, _ in model.named_children()] == ["b", "a"]
    assert [r.name for r in records] == ["a", "b"]
    a, b = records
    assert (a.in_shape, a.out_shape) == ((4,), (3,))
    assert (b.in_shape, b.out_shape) == ((3,), (2,))


def test_record_fields_of_a_conv(registry: PluginRegistry) -> None:
    model, records = walk(CASES_BY_NAME["grouped_conv"], registry)
    (record,) = records
    conv = model[0]
    assert record.kind == "conv2d"
    assert record.op_type == "Conv2d"
    assert record.weight_shape == (8, 2, 3, 3)
    assert torch.equal(record.weight, conv.weight)
    assert not record.weight.requires_grad  # detached
    assert record.in_shape == (4, 8, 8)
    assert record.out_shape == (8, 4, 4)
    assert record.stride == (2, 2)
    assert record.padding == (1, 1)
    assert record.dilation == (1, 1)
    assert record.groups == 2
    assert record.calls == 1
    assert record.status is None
    assert record.reason == ""


def test_conv_transpose_record(registry: PluginRegistry) -> None:
    _, (record,) = walk(CASES_BY_NAME["conv_transpose"], registry)
    assert record.kind == "conv_transpose2d"
    assert record.weight_shape == (2, 3, 2, 2)  # torch's (C_in, C_out/g, k, k) layout
    assert (record.in_shape, record.out_shape) == ((2, 5, 5), (3, 10, 10))


def test_container_names(registry: PluginRegistry) -> None:
    _, records = walk(CASES_BY_NAME["list_and_dict"], registry)
    shapes = {r.name: r.out_shape for r in records}
    assert shapes == {"layers.0": (4,), "layers.1": (4,), "heads.main": (2,), "heads.aux": (3,)}


def test_model_without_weights_has_no_records(registry: PluginRegistry) -> None:
    case = CASES_BY_NAME["no_weights"]
    _, records = walk(case, registry)
    assert records == []
    profile = profile_of(records, registry, case)
    assert profile.layers == ()
    assert profile.total_delta_h() is None


# --------------------------------------------------------------------------- shared and tied


def test_shared_module_counted_once_with_two_calls(registry: PluginRegistry) -> None:
    case = CASES_BY_NAME["shared_linear"]
    model, records = walk(case, registry)
    (record,) = records
    assert record.name == "fc"
    assert record.calls == 2
    profile = profile_of(records, registry, case)
    (layer,) = profile.layers
    assert layer.calls == 2
    assert layer.positions == 2  # one position per call on a flat vector
    log_det = torch.linalg.slogdet(model.fc.weight.double())[1].item()
    assert layer.delta_h == pytest.approx(2 * log_det, rel=1e-9)
    assert layer.delta_h_per_dim == pytest.approx(log_det / 4, rel=1e-9)


def test_shared_module_under_two_names(registry: PluginRegistry) -> None:
    case = CASES_BY_NAME["shared_in_nested_list"]
    _, (record,) = walk(case, registry)
    assert record.name == "blocks.0.0"  # its first name
    assert record.calls == 2
    (layer,) = profile_of([record], registry, case).layers
    assert layer.positions == 2


def test_tied_weights_are_two_layers_sharing_storage(registry: PluginRegistry) -> None:
    case = CASES_BY_NAME["tied_weights"]
    model, records = walk(case, registry)
    encode, decode = records
    assert (encode.calls, decode.calls) == (1, 1)
    assert encode.weight.data_ptr() == decode.weight.data_ptr() == model.encode.weight.data_ptr()
    profile = profile_of(records, registry, case)
    assert profile.layers[0].delta_h == pytest.approx(profile.layers[1].delta_h)
    assert profile.total_delta_h() == pytest.approx(2 * profile.layers[0].delta_h)


# --------------------------------------------------------------------------- BatchNorm folding


def test_conv_followed_by_bn_is_folded(registry: PluginRegistry) -> None:
    _, records = walk(CASES_BY_NAME["conv_bn"], registry)
    conv, bn = records
    assert conv.folded_batchnorm == "1"
    assert conv.folded_into is None
    assert bn.kind == "batchnorm"
    assert bn.folded_into == "0"
    assert bn.folded_batchnorm is None
    assert bn.batchnorm is not None
    assert bn.in_shape == (4, 4, 4)


@pytest.mark.parametrize("name", ["bn_first", "conv_relu_bn"])
def test_bn_not_after_a_conv_output_is_not_folded(name: str, registry: PluginRegistry) -> None:
    _, records = walk(CASES_BY_NAME[name], registry)
    assert all(r.folded_batchnorm is None and r.folded_into is None for r in records)


def test_bn_after_an_inplace_activation_is_not_folded(registry: PluginRegistry) -> None:
    """conv → ReLU(inplace=True) → BN: BN receives the conv's output *object*, but its values
    went through the ReLU, so folding BN into the conv would profile the wrong map."""
    _, records = walk(CASES_BY_NAME["conv_relu_inplace_bn"], registry)
    conv, bn = records
    assert conv.folded_batchnorm is None
    assert bn.folded_into is None


def test_the_pass_does_not_keep_layer_outputs_alive(registry: PluginRegistry) -> None:
    """Watched conv outputs are freed as in a plain forward (holding them all alive made the
    pass page-fault fresh memory for every activation), and the fold is still decided."""
    first_output: list[weakref.ref[torch.Tensor]] = []
    alive_at_the_end: list[bool] = []

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            alive_at_the_end.append(first_output[0]() is not None)
            return x

    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 3, 1), Probe()
    ).eval()
    model[0].register_forward_hook(lambda _m, _i, out: first_output.append(weakref.ref(out)))
    records = walk_module(model, (2, 5, 5), registry)
    assert alive_at_the_end == [False]
    assert records[0].folded_batchnorm == "1"


def test_a_reused_id_is_not_counted_for_a_freed_output() -> None:
    """CPython reuses a freed tensor's id at once: reads of the new tensor must not count as
    reads of the freed one (the count would then block a valid fold, or allow a wrong one)."""
    counter = _ConsumerCounter()
    first = torch.ones(3)
    freed_id = id(first)
    uses = counter.watch(first)
    del first
    newcomers = [torch.zeros(3) for _ in range(64)]
    assert any(id(t) == freed_id for t in newcomers)  # the id really was reused
    with counter:
        for t in newcomers:
            torch.add(t, 1)
    assert uses == [0]


def test_bn_without_running_stats_is_skipped(registry: PluginRegistry) -> None:
    model = nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2, track_running_stats=False))
    records = walk_module(model, (2, 3, 3), registry)
    assert records[1].status is Status.SKIPPED
    assert "running statistics" in records[1].reason


# ---------------------------------------------------------------------- what cannot be analysed


def test_unexecuted_module_is_listed_with_a_reason(registry: PluginRegistry) -> None:
    case = CASES_BY_NAME["with_unused"]
    _, records = walk(case, registry)
    spare = by_name(records)["spare"]
    assert spare.reason == NOT_EXECUTED
    assert spare.in_shape is None and spare.out_shape is None
    assert spare.weight is not None
    layer = {layer.name: layer for layer in profile_of(records, registry, case).layers}["spare"]
    assert layer.positions is None
    assert layer.delta_h is None
    assert layer.delta_h_per_dim is not None and math.isfinite(layer.delta_h_per_dim)
    assert layer.reason == NOT_EXECUTED


def test_layer_norm_is_not_analytic(registry: PluginRegistry) -> None:
    _, records = walk(CASES_BY_NAME["layer_norm"], registry)
    norm = records[1]
    assert norm.status is Status.NOT_ANALYTIC
    assert norm.kind == "layernorm"
    assert "depends on the data" in norm.reason


def test_module_without_rule_is_skipped_with_its_parameters(registry: PluginRegistry) -> None:
    _, records = walk(CASES_BY_NAME["scale_module"], registry)
    scale = records[1]
    assert scale.status is Status.SKIPPED
    assert scale.op_type == "Scale"
    assert scale.reason == "no rule for Scale (parameters: scale); a plugin can add one"


def test_embedding_is_skipped(registry: PluginRegistry) -> None:
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4))
    records = walk_module(model, None, registry, example=torch.tensor([[1, 2, 3]]))
    assert records[0].status is Status.SKIPPED
    assert "lookup table" in records[0].reason
    assert records[1].in_shape == (3, 4)


def test_unknown_input_shape_asks_for_it(registry: PluginRegistry) -> None:
    with pytest.raises(SourceError, match=r"input shape is unknown: pass --input-shape C,H,W"):
        walk_module(nn.Linear(2, 2), None, registry)


def test_wrong_input_shape(registry: PluginRegistry) -> None:
    with pytest.raises(ShapeError, match=r"input shape \(5,\) failed.*Check --input-shape C,H,W"):
        walk_module(nn.Sequential(nn.Linear(4, 4)), (5,), registry)


# --------------------------------------------------------------------------- no mutation


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_model_is_not_mutated(case: Case, train: bool, registry: PluginRegistry) -> None:
    model = case.model()
    model.train(train)
    modules = list(model.modules())
    if len(modules) > 1:
        modules[-1].train(not train)  # mixed flags must come back as they were
    flags = {name: m.training for name, m in model.named_modules()}
    before = state_bytes(model)
    params = dict(model.named_parameters())
    hooks = hook_counts(model)
    walk_module(model, case.input_shape, registry)
    assert state_bytes(model) == before  # BatchNorm running stats included
    assert {name: m.training for name, m in model.named_modules()} == flags
    assert hook_counts(model) == hooks == dict.fromkeys(hooks, 0)
    assert dict(model.named_parameters()) == params  # same Parameter objects
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("build", RAISING, ids=lambda b: b.__name__)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_model_is_restored_when_forward_raises(
    build, train: bool, registry: PluginRegistry
) -> None:  # type: ignore[no-untyped-def]
    model = build().train(train)
    before = state_bytes(model)
    with pytest.raises(ShapeError, match=r"this module always fails\. Check --input-shape") as info:
        walk_module(model, (4,), registry)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert all(m.training is train for m in model.modules())
    assert set(hook_counts(model).values()) == {0}
    assert state_bytes(model) == before


def test_error_names_the_last_layer_that_ran(registry: PluginRegistry) -> None:
    with pytest.raises(ShapeError, match=r"failed after layer 'first'"):
        walk_module(RAISING[1](), (4,), registry)


def test_user_hooks_are_kept(registry: PluginRegistry) -> None:
    model = nn.Sequential(nn.Linear(4, 4))
    seen: list[tuple[int, ...]] = []
    handle = model[0].register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    walk_module(model, (4,), registry)
    assert seen == [(1, 4)]  # the user's hook ran with ours
    assert len(model[0]._forward_hooks) == 1
    model(torch.zeros(2, 4))
    assert seen == [(1, 4), (2, 4)]
    handle.remove()


def test_walk_is_deterministic(registry: PluginRegistry) -> None:
    case = CASES_BY_NAME["conv_bn"]
    model = case.model()
    first = walk_module(model, case.input_shape, registry)
    second = walk_module(model, case.input_shape, registry)
    assert first == second


def test_an_unexecuted_module_without_a_rule_keeps_both_reasons() -> None:
    """A parameter holder the forward pass never runs (onnx2torch keeps initializers in one)
    used to pass `reason` twice and crash the walk."""
    from entropy_probe.api import profile_loaded
    from entropy_probe.loading import LoadedModel

    class Holder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = nn.Parameter(torch.ones(3, 3))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)
            self.unused = Holder()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    result = profile_loaded(
        LoadedModel(source="t", format="torch", module=Net(), input_shape=(4,)), progress=False
    )
    row = next(layer for layer in result.layers if layer.name == "unused")
    assert "no rule for Holder" in row.reason and "not executed" in row.reason
