"""torch state dicts and safetensors: safe loading, checkpoint unwrapping, refusals."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from entropy_probe.errors import SourceError
from entropy_probe.loading import load_model
from entropy_probe.loading._base import LoadedModel, LoadOptions
from entropy_probe.loading.torch_file import (
    SafetensorsLoader,
    StateDictLoader,
    load_into,
    read_torch_file,
    read_weights,
)
from entropy_probe.plugins import PluginRegistry, build_registry

MARKER = "pwned.txt"


class Payload:
    """Unpickling this creates ``self.path`` (a stand-in for arbitrary code)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    return build_registry(autoload=False)


@pytest.fixture
def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Conv1d(1, 2, 3))


def _assert_same_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        assert torch.equal(got[key], value), key


def _assert_bare(loaded: LoadedModel, source: str, fmt: str, want: dict[str, torch.Tensor]) -> None:
    assert isinstance(loaded, LoadedModel)
    assert loaded.source == source
    assert loaded.format == fmt
    assert loaded.module is None
    assert loaded.onnx_model is None
    assert loaded.state_dict is not None
    _assert_same_tensors(dict(loaded.state_dict), want)
    assert loaded.pretrained is True
    assert loaded.num_params == sum(t.numel() for t in want.values())
    assert len(loaded.notes) == 1
    assert "state dict has no architecture" in loaded.notes[0]
    assert "--weights FILE" in loaded.notes[0]
    assert loaded.meta == {}


# --------------------------------------------------------------------------- good files


def test_state_dict_pt_loads(tmp_path: Path, net: nn.Module) -> None:
    path = tmp_path / "sd.pt"
    state = net.state_dict()
    torch.save(state, path)
    loaded = StateDictLoader().load(str(path), LoadOptions())
    _assert_bare(loaded, str(path), "torch", state)
    assert loaded.input_shape is None
    assert all(t.device.type == "cpu" for t in loaded.state_dict.values())  # type: ignore[union-attr]


def test_input_shape_option_is_refused_without_an_architecture(
    tmp_path: Path, net: nn.Module
) -> None:
    # A bare state dict has no input sizes to apply it to: it used to be kept and never used.
    path = tmp_path / "sd.pth"
    torch.save(net.state_dict(), path)
    with pytest.raises(SourceError, match=r"--input-shape needs an architecture"):
        StateDictLoader().load(str(path), LoadOptions(input_shape=(1, 4)))


def test_load_model_dispatches_by_extension(
    tmp_path: Path, net: nn.Module, registry: PluginRegistry
) -> None:
    for name in ("w.pt", "w.pth", "w.bin", "w.ckpt"):
        torch.save(net.state_dict(), tmp_path / name)
        loaded = load_model(str(tmp_path / name), registry=registry)
        _assert_bare(loaded, str(tmp_path / name), "torch", net.state_dict())
    save_file(net.state_dict(), str(tmp_path / "w.safetensors"))
    loaded = load_model(str(tmp_path / "w.safetensors"), registry=registry)
    _assert_bare(loaded, str(tmp_path / "w.safetensors"), "safetensors", net.state_dict())


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"state_dict": sd, "epoch": 3, "optimizer": {"lr": 0.1}},
        lambda sd: {"model_state_dict": sd, "epoch": 3},
        lambda sd: {"model": sd},
        lambda sd: {"net": sd, "meta": {"acc": 0.9}},
        lambda sd: {"model": {"state_dict": sd}},
    ],
    ids=["state_dict", "model_state_dict", "model", "net", "nested"],
)
def test_checkpoint_dict_is_unwrapped(tmp_path: Path, net: nn.Module, wrap) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "ckpt.pt"
    torch.save(wrap(net.state_dict()), path)
    loaded = StateDictLoader().load(str(path), LoadOptions())
    _assert_bare(loaded, str(path), "torch", net.state_dict())


def test_mapping_without_tensors_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "nothing.pt"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(
        SourceError, match=r"holds no named tensors \(found dict\); expected a state_dict"
    ):
        read_torch_file(path)


def test_a_bare_tensor_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(SourceError, match=r"holds no named tensors \(found a single tensor\)"):
        read_torch_file(path)


def test_safetensors_loads(tmp_path: Path, net: nn.Module) -> None:
    path = tmp_path / "w.safetensors"
    save_file(net.state_dict(), str(path))
    loaded = SafetensorsLoader().load(str(path), LoadOptions())
    _assert_bare(loaded, str(path), "safetensors", net.state_dict())
    assert loaded.input_shape is None


def test_read_weights_reads_both_formats(tmp_path: Path, net: nn.Module) -> None:
    torch.save({"state_dict": net.state_dict()}, tmp_path / "w.pt")
    save_file(net.state_dict(), str(tmp_path / "w.safetensors"))
    _assert_same_tensors(read_weights(tmp_path / "w.pt"), net.state_dict())
    _assert_same_tensors(read_weights(tmp_path / "w.safetensors"), net.state_dict())


# --------------------------------------------------------------------------- pickles


def test_full_pickled_module_is_refused(tmp_path: Path, net: nn.Module) -> None:
    path = tmp_path / "full.pt"
    torch.save(net, path)
    with pytest.raises(SourceError, match=r"contains pickled Python objects") as info:
        StateDictLoader().load(str(path), LoadOptions())
    message = str(info.value)
    assert "state_dict" in message
    assert "safetensors" in message
    assert "--trust-pickle" in message
    assert isinstance(info.value.__cause__, pickle.UnpicklingError)


@pytest.mark.parametrize("how", ["torch.save", "raw pickle"])
def test_malicious_pickle_is_never_executed(tmp_path: Path, how: str) -> None:
    path = tmp_path / "evil.pt"
    marker = tmp_path / MARKER
    if how == "torch.save":
        torch.save({"weight": torch.zeros(2, 2), "x": Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(Payload(marker)))
    assert not marker.exists()
    with pytest.raises(SourceError, match=r"evil\.pt") as info:
        StateDictLoader().load(str(path), LoadOptions())
    assert not marker.exists()
    if how == "torch.save":  # a real object graph: the message explains the refusal
        assert "was not loaded" in str(info.value)
        assert "--trust-pickle" in str(info.value)
    with pytest.raises(SourceError):
        read_weights(path)
    assert not marker.exists()


def test_trusted_full_module_loads_with_a_warning(tmp_path: Path, net: nn.Module) -> None:
    path = tmp_path / "full.pt"
    net.train()
    torch.save(net, path)
    with pytest.warns(
        UserWarning, match=r"--trust-pickle: unpickling .*full\.pt; this runs any code"
    ):
        loaded = StateDictLoader().load(
            str(path), LoadOptions(trust_pickle=True, input_shape=(1, 4))
        )
    assert loaded.format == "torch"
    assert loaded.source == str(path)
    assert loaded.state_dict is None
    assert isinstance(loaded.module, nn.Sequential)
    assert loaded.module.training is False
    assert loaded.input_shape == (1, 4)
    assert loaded.num_params == sum(p.numel() for p in net.parameters())
    _assert_same_tensors(loaded.module.state_dict(), net.state_dict())


def test_trusted_full_module_as_weights_gives_its_state_dict(
    tmp_path: Path, net: nn.Module
) -> None:
    path = tmp_path / "full.pt"
    torch.save(net, path)
    with pytest.warns(UserWarning, match="--trust-pickle"):
        state = read_weights(path, trust_pickle=True)
    _assert_same_tensors(state, net.state_dict())


def test_trust_pickle_does_not_warn_for_a_plain_state_dict(tmp_path: Path, net: nn.Module) -> None:
    path = tmp_path / "sd.pt"
    torch.save(net.state_dict(), path)
    StateDictLoader().load(str(path), LoadOptions(trust_pickle=True))  # filterwarnings=error


# --------------------------------------------------------------------------- broken files


def test_missing_file(tmp_path: Path, registry: PluginRegistry) -> None:
    with pytest.raises(SourceError, match=r"^file not found: .*missing\.pt$"):
        load_model(str(tmp_path / "missing.pt"), registry=registry)
    with pytest.raises(SourceError, match=r"^file not found: .*missing\.safetensors$"):
        load_model(str(tmp_path / "missing.safetensors"), registry=registry)


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    (tmp_path / "d.pt").mkdir()
    with pytest.raises(SourceError, match=r"^not a file: .*d\.pt$"):
        StateDictLoader().load(str(tmp_path / "d.pt"), LoadOptions())


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_empty_file(tmp_path: Path, registry: PluginRegistry, suffix: str) -> None:
    path = tmp_path / f"empty{suffix}"
    path.touch()
    with pytest.raises(SourceError, match=r"is empty \(0 bytes\)"):
        load_model(str(path), registry=registry)


def test_truncated_file(tmp_path: Path, net: nn.Module) -> None:
    good = tmp_path / "good.pt"
    torch.save(net.state_dict(), good)
    data = good.read_bytes()
    for cut in (len(data) // 2, len(data) - 30, 10):
        path = tmp_path / f"cut{cut}.pt"
        path.write_bytes(data[:cut])
        with pytest.raises(SourceError, match=r"cannot read .* as a torch checkpoint: "):
            StateDictLoader().load(str(path), LoadOptions())


def _random_bytes(seed: int, n: int = 512) -> bytes:
    gen = torch.Generator().manual_seed(seed)
    return bytes(torch.randint(0, 256, (n,), generator=gen, dtype=torch.uint8).tolist())


RANDOM_PAYLOADS = {
    **{f"random-seed{seed}": _random_bytes(seed) for seed in range(6)},
    "text": b"hello world, this is not a checkpoint\n",
    "json": b'{"weight": [1, 2, 3]}',
}


@pytest.mark.parametrize("payload", RANDOM_PAYLOADS.values(), ids=RANDOM_PAYLOADS.keys())
def test_garbage_bytes_give_a_source_error(tmp_path: Path, payload: bytes) -> None:
    """Whatever torch's unpickler raises on garbage (UnpicklingError, KeyError,
    UnicodeDecodeError, ...) must surface as a SourceError, never as a traceback."""
    path = tmp_path / "garbage.pt"
    path.write_bytes(payload)
    with pytest.raises(SourceError, match=r"garbage\.pt"):
        StateDictLoader().load(str(path), LoadOptions())


@pytest.mark.parametrize(
    "payload", [RANDOM_PAYLOADS["random-seed0"], RANDOM_PAYLOADS["json"]], ids=["random", "json"]
)
def test_garbage_bytes_are_not_called_a_pickled_model(tmp_path: Path, payload: bytes) -> None:
    """A corrupt file is not 'a whole model': telling the user to pass --trust-pickle would
    make them unpickle garbage with the unsafe loader."""
    path = tmp_path / "garbage.pt"
    path.write_bytes(payload)
    with pytest.raises(SourceError) as info:
        StateDictLoader().load(str(path), LoadOptions())
    assert "--trust-pickle" not in str(info.value)
    assert "cannot read" in str(info.value)


@pytest.mark.parametrize(
    "payload",
    [
        _random_bytes(0, 100),
        b'\x08\x00\x00\x00\x00\x00\x00\x00{"a":1}',  # a header that is not a tensor table
        (2**40).to_bytes(8, "little") + b"{}",  # a header length beyond the file
    ],
    ids=["random", "bad-header", "huge-header"],
)
def test_corrupt_safetensors(tmp_path: Path, registry: PluginRegistry, payload: bytes) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(payload)
    with pytest.raises(SourceError, match=r"^cannot read .*bad\.safetensors as safetensors: "):
        load_model(str(path), registry=registry)


def test_truncated_safetensors(tmp_path: Path, net: nn.Module) -> None:
    path = tmp_path / "w.safetensors"
    save_file(net.state_dict(), str(path))
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(SourceError, match=r"as safetensors: "):
        SafetensorsLoader().load(str(path), LoadOptions())


# --------------------------------------------------------------------------- load_into


def test_load_into_reports_shape_mismatch() -> None:
    module = nn.Linear(3, 2)
    state = {"weight": torch.zeros(2, 4), "bias": torch.zeros(2)}
    with pytest.raises(
        SourceError,
        match=r"do not fit m: 1 shape mismatch\(es\), e\.g\. weight \(2, 4\) vs \(2, 3\)",
    ):
        load_into(module, state, "m", strict=True)


def test_load_into_reports_missing_and_unexpected_keys() -> None:
    module = nn.Linear(3, 2)
    state = {"weight": torch.zeros(2, 3), "extra": torch.zeros(1)}
    with pytest.raises(
        SourceError,
        match=r"1 missing key\(s\), e\.g\. 'bias'; 1 unexpected key\(s\), e\.g\. 'extra'",
    ):
        load_into(module, state, "m", strict=True)
    before = module.bias.detach().clone()
    load_into(module, {"weight": torch.ones(2, 3)}, "m", strict=False)
    assert torch.equal(module.weight, torch.ones(2, 3))
    assert torch.equal(module.bias, before)
