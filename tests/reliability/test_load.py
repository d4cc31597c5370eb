"""Many profiles in one process: no model is kept alive, RSS stays bounded, and no hook or
mode change is left on a module that is profiled again. (The large-model figures come from
``tests/bench/bench_load.py``.)"""

from __future__ import annotations

import gc
import os
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from entropy_probe import profile_loaded
from entropy_probe.errors import ShapeError
from entropy_probe.loading import LoadedModel, load_model
from entropy_probe.loading._base import LoadOptions

ROUNDS = 3
MAX_GROWTH_MIB = 48.0


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread: on a shared 2-core machine spinning workers cost 10× wall time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rss_mib() -> float:
    """This process's resident set size now (Linux /proc)."""
    with Path("/proc/self/statm").open(encoding="ascii") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _sources(tiny_onnx: Path) -> list[str]:
    return [
        "default",
        "timm:test_resnet",
        "timm:test_vit",
        "timm:test_efficientnet",
        str(tiny_onnx),
    ]


def _profile_once(source: str, data: str | None) -> weakref.ref:  # type: ignore[type-arg]
    loaded = load_model(source)
    held = loaded.module if loaded.module is not None else loaded.onnx_model
    ref = weakref.ref(held) if loaded.module is not None else weakref.ref(loaded)
    result = profile_loaded(loaded, device="cpu", data=data, samples=16, progress=False)
    assert result.analysed
    return ref


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_profiles_in_one_process_free_their_models(tiny_onnx: Path) -> None:
    """3 rounds over 4 small models (12 profiles; the default model's with --data): every
    model is freed after its profile, and RSS grows by less than 48 MiB after the first
    (warm-up: imports, dataset cache, allocator pools) round."""
    torch.manual_seed(0)
    after_round = []
    for _ in range(ROUNDS):
        for source in _sources(tiny_onnx):
            ref = _profile_once(source, "digits" if source == "default" else None)
            gc.collect()
            assert ref() is None, f"{source}: the model outlived its profile"
        after_round.append(rss_mib())
    growth = after_round[-1] - after_round[0]
    assert growth < MAX_GROWTH_MIB, f"RSS grew {growth:.1f} MiB: {after_round}"


def _hook_counts(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


def _global_hooks() -> int:
    from torch.nn.modules import module

    return len(module._global_forward_hooks) + len(module._global_forward_pre_hooks)


def test_reused_module_keeps_no_hooks_and_its_mode() -> None:
    """The same module profiled 4 times (with and without --data, and once failing): no
    forward hook remains and its train/eval flags are what they were."""
    loaded = load_model("default")
    assert loaded.module is not None
    module = loaded.module
    module.train()
    module.features[1].eval()  # a mixed state, to be restored exactly
    before = {name: m.training for name, m in module.named_modules()}
    assert _hook_counts(module) == 0 and _global_hooks() == 0
    for data in (None, "digits", "digits"):
        profile_loaded(loaded, device="cpu", data=data, samples=16, progress=False)
        assert _hook_counts(module) == 0
        assert _global_hooks() == 0
        assert {name: m.training for name, m in module.named_modules()} == before
    wrong = LoadedModel(source="default", format="default", module=module, input_shape=(3, 5, 5))
    with pytest.raises(ShapeError):
        profile_loaded(wrong, device="cpu", progress=False)
    assert _hook_counts(module) == 0
    assert {name: m.training for name, m in module.named_modules()} == before


def test_failed_loads_keep_nothing_alive(tmp_path: Path) -> None:
    """Refused inputs in a loop (a corrupt file, a bad shape) do not accumulate memory."""
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10" + bytes(100))
    start = rss_mib() if Path("/proc/self/statm").exists() else 0.0
    for _ in range(50):
        with pytest.raises(Exception, match="cannot read"):
            load_model(str(bad))
        loaded = load_model("default", LoadOptions(input_shape=(1, 9, 9)))
        with pytest.raises(ShapeError):
            profile_loaded(loaded, device="cpu", progress=False)
        del loaded
    gc.collect()
    if Path("/proc/self/statm").exists():
        assert rss_mib() - start < MAX_GROWTH_MIB
