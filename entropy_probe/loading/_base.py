"""The loader contract and the normalised result every loader returns."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

Shape = tuple[int, ...]


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
