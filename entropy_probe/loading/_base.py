"""The loader contract and the normalised result every loader returns."""

from __future__ import annotations

import contextlib
import math
import numbers
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from entropy_probe.errors import ArgumentError, SourceError

Shape = tuple[int, ...]


_SHAPE_SEPARATORS = re.compile(r"[,x×]")
MAX_INPUT_DIMS = 4


def input_shape_from(value: object, what: str = "input_shape") -> Shape | None:
    """A per-sample input shape from ``None``, a sequence of positive integers (a tuple,
    ``torch.Size``, numpy integers) or a string such as ``"3,224,224"``; anything else is an
    :class:`ArgumentError` saying what was expected."""
    if value is None:
        return None
    example = "3,224,224" if what.startswith("--") else "(3, 224, 224)"
    expected = f"{what} must be the per-sample shape as positive integers, e.g. {example}"
    dims: list[object]
    if isinstance(value, str):
        try:
            dims = [int(v) for v in _SHAPE_SEPARATORS.split(value.strip())]
        except ValueError:
            raise ArgumentError(f"{expected}; got {value!r}") from None
    elif isinstance(value, Sequence):
        dims = list(value)
    else:
        raise ArgumentError(f"{expected}; got {type(value).__name__} {value!r}")
    if not dims or not all(_positive_int(d) for d in dims):
        raise ArgumentError(f"{expected}; got {value!r}")
    if len(dims) > MAX_INPUT_DIMS:
        raise ArgumentError(
            f"{what} {value!r} has {len(dims)} dims: give the per-sample shape without the "
            f"batch, e.g. {example}"
        )
    return tuple(int(d) for d in dims if isinstance(d, numbers.Integral))


def _positive_int(value: object) -> bool:
    """An integer (numpy's too) above 0; ``True`` is not one."""
    if isinstance(value, bool):
        return False
    return isinstance(value, numbers.Integral) and int(value) > 0


@dataclass(frozen=True)
class LoadOptions:
    """What the user told us beside the source string."""

    weights: Path | None = None
    input_shape: Shape | None = None  # per sample, e.g. (3, 224, 224)
    trust_pickle: bool = False
    strict: bool = True  # weights must match the architecture exactly


@dataclass
class LoadedModel:
    """A model as the walkers see it. Exactly one of ``module``, ``onnx_model`` and
    ``state_dict`` is set.

    ``module`` is a torch model (timm, SMP, default, converted); ``onnx_model`` an
    ``onnx.ModelProto`` profiled without conversion; ``state_dict`` bare weights without an
    architecture. ``input_shape`` is per sample (no batch dim); ``pretrained`` is False when the
    architecture was built with random weights.
    """

    source: str
    format: str
    module: nn.Module | None = None
    onnx_model: Any = None
    state_dict: Mapping[str, Tensor] | None = None
    input_shape: Shape | None = None
    pretrained: bool = True
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        given = [x is not None for x in (self.module, self.onnx_model, self.state_dict)]
        if sum(given) != 1:
            raise ValueError("LoadedModel needs exactly one of module, onnx_model, state_dict")

    @property
    def num_params(self) -> int:
        if self.module is not None:
            return sum(p.numel() for p in self.module.parameters())
        if self.state_dict is not None:
            return sum(t.numel() for t in self.state_dict.values())
        # From the declared dims: converting every initializer just to count it doubled the
        # walker's own conversion of the weights. Constant nodes hold weights too (PP-OCRv4
        # det keeps all of them there).
        graph = self.onnx_model.graph
        constants = [
            attr.t
            for node in graph.node
            if node.op_type == "Constant"
            for attr in node.attribute
            if attr.name == "value"
        ]
        return sum(math.prod(t.dims) for t in (*graph.initializer, *constants))


class Loader(ABC):
    """One source kind. Registered under ``scheme`` (``timm``, ``onnx``, ...).

    ``extensions`` are the file suffixes it reads; ``claims_directory`` lets a loader take a
    directory by looking at its content (e.g. a ``config.json`` it understands).
    """

    scheme: str = ""
    extensions: tuple[str, ...] = ()
    description: str = ""
    #: whether ``--weights FILE`` means something for this loader (an architecture to fill)
    accepts_weights: bool = False

    def claims_directory(self, path: Path) -> bool:
        """True when ``path`` is a directory this loader understands (by its content)."""
        return False

    @abstractmethod
    def load(self, ident: str, options: LoadOptions) -> LoadedModel:
        """Load ``ident`` (the part after ``scheme:``, or a path) into a :class:`LoadedModel`."""


def check_module(module: nn.Module, source: str) -> None:
    """Refuse a module that cannot be walked: TorchScript (no Python forward hooks) or one
    whose weights were never materialised (the meta device)."""
    if isinstance(module, torch.jit.ScriptModule):
        raise SourceError(
            f"{source} is a TorchScript module (torch.jit.script/trace): it runs without Python "
            "forward hooks, so its layers cannot be traced. Profile the original nn.Module, or "
            "export it to ONNX and profile that"
        )
    meta = next(
        (n for n, t in (*module.named_parameters(), *module.named_buffers()) if t.is_meta), None
    )
    if meta is not None:
        raise SourceError(
            f"{source}: {meta!r} is on the meta device (its values were never materialised): "
            "load real weights first, e.g. model.to_empty(device='cpu') then load_state_dict"
        )


def module_source(module: nn.Module, options: LoadOptions) -> LoadedModel:
    """An in-memory ``nn.Module`` as a source, profiled as it is (weights, dtype, device)."""
    source = f"<{type(module).__name__} in memory>"
    check_module(module, source)
    if options.weights is not None:
        raise SourceError(
            "weights= applies to sources that name an architecture (timm:NAME, smp:ARCH/ENC); "
            "load them into the module yourself (module.load_state_dict)"
        )
    return LoadedModel(
        source=source,
        format="torch",
        module=module,
        input_shape=options.input_shape,
        notes=["an nn.Module given in memory: profiled with the weights it holds"],
        meta={"architecture": type(module).__name__},
    )


RANDOM_INIT_SEED = 0


@contextlib.contextmanager
def seeded_init(seed: int = RANDOM_INIT_SEED) -> Iterator[None]:
    """Build a model under a fixed seed (the caller's RNG state restored afterwards), so a
    random-init architecture profiles the same way every run."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
