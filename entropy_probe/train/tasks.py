"""Task definitions for fine-tuning: loss, held-out metric, output check and head adaptation.

Three tasks, reusable from Python (``get_task("classify")``) and from the CLI:

============  ==========================  ==================================  ================
task          targets                     loss                                metric (val)
============  ==========================  ==================================  ================
classify      int64 ``(N,)`` class ids    cross-entropy on ``(N, C)`` logits  accuracy ↑
segment       int64 ``(N, H, W)`` ids     BCE-with-logits (1 output channel,  Dice ↑
                                          binary masks) or cross-entropy
autoencode    the inputs themselves       mean squared error                  MSE ↓
============  ==========================  ==================================  ================

Dice is the foreground Dice over the whole held-out split (binary masks), or the mean over the
foreground classes 1..C-1 for multi-class masks; a class absent from both prediction and truth
counts as 1.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from entropy_probe.errors import EntropyProbeError, unknown_name

__all__ = [
    "Autoencode",
    "Classify",
    "HeadChange",
    "MetricState",
    "Segment",
    "Task",
    "TaskError",
    "adapt_head",
    "current_outputs",
    "get_task",
    "output_channels_for",
    "task_names",
]


class TaskError(EntropyProbeError, ValueError):
    """A task that does not fit the model or the data."""


@dataclass
class MetricState:
    """Running sums for a metric over several batches (kept as float64 tensors on the CPU)."""

    sums: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + float(value)


class Task(ABC):
    """One fine-tuning task: how to score the model's output against the targets.

    ``probabilities`` is set by :meth:`check_output` when the model ends in a softmax/sigmoid
    (as exported ONNX classifiers and detectors do): the loss then takes the log of the
    probabilities instead of treating them as logits, and :attr:`note` says so.
    """

    name: str = ""
    metric_name: str = ""
    higher_is_better: bool = True

    def __init__(self) -> None:
        self.probabilities = False
        self.note: str | None = None

    @abstractmethod
    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        """The scalar training loss of one batch."""

    @abstractmethod
    def update(self, state: MetricState, output: Tensor, target: Tensor) -> None:
        """Add one held-out batch to the running metric sums."""

    @abstractmethod
    def compute(self, state: MetricState) -> float:
        """The metric over every batch added to ``state``."""

    @abstractmethod
    def check_output(self, output: Tensor, target: Tensor, num_classes: int) -> None:
        """Raise :class:`TaskError` saying what is wrong when ``output`` (of a few samples)
        cannot be scored against ``target`` for data with ``num_classes`` classes."""

    def target_for(self, inputs: Tensor, target: Tensor | None) -> Tensor:
        """The tensor the output is compared with (the stored target by default)."""
        if target is None:
            raise TaskError(f"task {self.name!r} needs targets, and the data has none")
        return target

    def best(self, a: float, b: float) -> float:
        return max(a, b) if self.higher_is_better else min(a, b)


class Classify(Task):
    name = "classify"
    metric_name = "accuracy"
    higher_is_better = True

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        if self.probabilities:
            return F.nll_loss(torch.log(output.float().clamp_min(1e-12)), target)
        return F.cross_entropy(output.float(), target)

    def update(self, state: MetricState, output: Tensor, target: Tensor) -> None:
        state.add("correct", float((output.argmax(dim=1) == target).sum()))
        state.add("total", float(target.numel()))

    def compute(self, state: MetricState) -> float:
        return state.sums.get("correct", 0.0) / max(state.sums.get("total", 0.0), 1.0)

    def check_output(self, output: Tensor, target: Tensor, num_classes: int) -> None:
        if output.dim() != 2:
            raise TaskError(
                f"task classify needs (N, classes) logits, but the model outputs "
                f"{_shape(output)}: is it a segmentation or feature model? Use --task segment "
                "or a classifier"
            )
        if output.shape[1] < num_classes:
            raise TaskError(
                f"the model outputs {output.shape[1]} class scores, but the data has "
                f"{num_classes} classes: the classification head needs {num_classes} outputs "
                "(adapt it with entropy_probe.train.adapt_head)"
            )
        self.probabilities = _sums_to_one(output, dim=1)
        if self.probabilities:
            self.note = "the model outputs probabilities (a final softmax): loss = NLL of their log"


class Segment(Task):
    name = "segment"
    metric_name = "dice"
    higher_is_better = True

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        out = output.float()
        if output.shape[1] == 1:
            fg = (target > 0).to(torch.float32)
            if self.probabilities:
                return F.binary_cross_entropy(out[:, 0].clamp(1e-7, 1 - 1e-7), fg)
            return F.binary_cross_entropy_with_logits(out[:, 0], fg)
        if self.probabilities:
            return F.nll_loss(torch.log(out.clamp_min(1e-12)), target)
        return F.cross_entropy(out, target)

    def update(self, state: MetricState, output: Tensor, target: Tensor) -> None:
        classes = max(int(output.shape[1]), 2)
        threshold = 0.5 if self.probabilities else 0.0
        single = output.shape[1] == 1
        pred = (output[:, 0] > threshold).long() if single else output.argmax(dim=1)
        for c in range(1, classes):
            p, t = pred == c, target == c
            state.add(f"inter{c}", float((p & t).sum()))
            state.add(f"size{c}", float(p.sum() + t.sum()))

    def compute(self, state: MetricState) -> float:
        classes = sorted({int(k[4:]) for k in state.sums if k.startswith("size")})
        if not classes:
            return 0.0
        scores = []
        for c in classes:
            size = state.sums[f"size{c}"]
            scores.append(1.0 if size == 0 else 2.0 * state.sums[f"inter{c}"] / size)
        return sum(scores) / len(scores)

    def check_output(self, output: Tensor, target: Tensor, num_classes: int) -> None:
        if output.dim() != 4:
            raise TaskError(
                f"task segment needs a (N, classes, H, W) map, but the model outputs "
                f"{_shape(output)}: is it a classifier? Use --task classify or a segmentation "
                "model (e.g. smp:Unet/resnet18)"
            )
        if tuple(output.shape[-2:]) != tuple(target.shape[-2:]):
            raise TaskError(
                f"the model's output map is {output.shape[-2]}x{output.shape[-1]} but the masks "
                f"are {target.shape[-2]}x{target.shape[-1]}: the model must output a map of "
                "its input's size"
            )
        if output.shape[1] == 1 and num_classes > 2:
            raise TaskError(
                f"the model outputs 1 channel (binary) but the masks hold {num_classes} classes"
            )
        if output.shape[1] > 1 and output.shape[1] < num_classes:
            raise TaskError(
                f"the model outputs {output.shape[1]} channels, but the masks hold "
                f"{num_classes} classes"
            )
        if output.shape[1] == 1:
            self.probabilities = bool(((output >= 0) & (output <= 1)).all())
        else:
            self.probabilities = _sums_to_one(output, dim=1)
        if self.probabilities:
            self.note = (
                "the model outputs probabilities (a final sigmoid/softmax): the loss takes "
                "their log, and the Dice threshold is 0.5"
            )


class Autoencode(Task):
    name = "autoencode"
    metric_name = "mse"
    higher_is_better = False

    def target_for(self, inputs: Tensor, target: Tensor | None) -> Tensor:
        return inputs

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(output.float(), target.float())

    def update(self, state: MetricState, output: Tensor, target: Tensor) -> None:
        state.add("sse", float(((output.float() - target.float()) ** 2).sum()))
        state.add("n", float(target.numel()))

    def compute(self, state: MetricState) -> float:
        return state.sums.get("sse", 0.0) / max(state.sums.get("n", 0.0), 1.0)

    def check_output(self, output: Tensor, target: Tensor, num_classes: int) -> None:
        if tuple(output.shape) != tuple(target.shape):
            raise TaskError(
                f"task autoencode needs an output shaped like the input {_shape(target)}, "
                f"but the model outputs {_shape(output)}"
            )


_TASKS: dict[str, type[Task]] = {"classify": Classify, "segment": Segment, "autoencode": Autoencode}


def task_names() -> list[str]:
    return sorted(_TASKS)


def get_task(task: str | Task) -> Task:
    """A :class:`Task` by name (``classify``, ``segment``, ``autoencode``), or ``task`` itself."""
    if isinstance(task, Task):
        return task
    try:
        return _TASKS[task]()
    except (KeyError, TypeError):
        raise unknown_name("task", task, task_names()) from None


def _sums_to_one(output: Tensor, dim: int) -> bool:
    """True when ``output`` is non-negative and sums to 1 along ``dim`` (softmax output)."""
    out = output.float()
    return bool((out >= 0).all()) and bool(
        torch.allclose(out.sum(dim=dim), torch.ones((), device=out.device), atol=1e-4)
    )


def _shape(t: Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


# --------------------------------------------------------------------------------------------
# head adaptation


@dataclass(frozen=True)
class HeadChange:
    """What :func:`adapt_head` replaced (``None`` from it when nothing needed changing)."""

    module: str  # qualified name of the replaced module
    old_outputs: int
    new_outputs: int
    how: str

    def describe(self) -> str:
        return (
            f"head {self.module} adapted from {self.old_outputs} to {self.new_outputs} outputs "
            f"({self.how}; the new head starts from a fresh random init)"
        )


def adapt_head(model: nn.Module, task: str | Task, num_outputs: int) -> HeadChange | None:
    """Give ``model`` a head with ``num_outputs`` outputs for ``task``; ``None`` if it had one.

    timm models: ``reset_classifier``. SMP models: a new first conv in ``segmentation_head``.
    Anything else: the last ``nn.Linear`` (classify) or the last ``nn.Conv2d`` (segment), found
    in module order, is replaced by a fresh one of the same kind; a converted ONNX classifier
    without a Linear gets its last MatMul head (weight and bias initializers) resized. The new
    weights come from torch's default init, so they depend on the global RNG (seed it first).
    ``autoencode`` never changes heads.
    """
    name = get_task(task).name
    if name == "autoencode":
        return None
    timm_classes = getattr(model, "num_classes", None)
    reset = getattr(model, "reset_classifier", None)
    if name == "classify" and callable(reset) and isinstance(timm_classes, int):
        if timm_classes == num_outputs:
            return None
        reset(num_outputs)
        return HeadChange("classifier", timm_classes, num_outputs, "timm reset_classifier")
    head = getattr(model, "segmentation_head", None)
    if name == "segment" and isinstance(head, nn.Sequential):
        conv = head[0]
        if isinstance(conv, nn.Conv2d):
            if conv.out_channels == num_outputs:
                return None
            head[0] = _fresh_conv(conv, num_outputs)
            return HeadChange(
                "segmentation_head.0", conv.out_channels, num_outputs, "SMP segmentation head"
            )
    kind: type[nn.Module] = nn.Linear if name == "classify" else nn.Conv2d
    last = [(n, m) for n, m in model.named_modules() if isinstance(m, kind)]
    if name == "classify" and not last:
        from entropy_probe.train.onnx_head import replace_matmul_head

        replaced = replace_matmul_head(model, num_outputs)  # a converted ONNX MatMul head
        if replaced is not None:
            weight, old_outputs = replaced
            if old_outputs == num_outputs:
                return None
            return HeadChange(weight, old_outputs, num_outputs, "ONNX MatMul head replaced")
    if not last:
        raise TaskError(
            f"cannot adapt the head for task {name}: the model has no {kind.__name__} layer to "
            f"replace; give it {num_outputs} outputs yourself"
        )
    qual, module = last[-1]
    old = _outputs(module)
    if old == num_outputs:
        return None
    new: nn.Module
    if isinstance(module, nn.Linear):
        new = nn.Linear(module.in_features, num_outputs, bias=module.bias is not None)
        new = new.to(module.weight.device, module.weight.dtype)
    elif isinstance(module, nn.Conv2d):
        new = _fresh_conv(module, num_outputs)
    else:  # pragma: no cover - the filter above only yields these two kinds
        raise TypeError(type(module).__name__)
    parent_name, _, child = qual.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
    return HeadChange(qual, int(old), num_outputs, f"last {kind.__name__} replaced")


def _fresh_conv(conv: nn.Conv2d, out_channels: int) -> nn.Conv2d:
    if conv.groups != 1:
        raise TaskError(f"cannot adapt a grouped final conv (groups={conv.groups})")
    new = nn.Conv2d(
        conv.in_channels,
        out_channels,
        kernel_size=conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        dilation=conv.dilation,  # type: ignore[arg-type]
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    return new.to(conv.weight.device, conv.weight.dtype)


def output_channels_for(task: Task, num_classes: int, current: int | None) -> int:
    """How many outputs the head needs: classes, or 1 or 2 channels for binary segmentation."""
    if task.name == "segment" and num_classes == 2 and current in (1, 2):
        return int(current)
    if task.name == "segment" and num_classes == 2:
        return 1
    return num_classes


def current_outputs(model: nn.Module, task: Task) -> int | None:
    """The head's output count as the adaptation rules above see it (``None`` if unknown)."""
    timm_classes = getattr(model, "num_classes", None)
    if task.name == "classify" and isinstance(timm_classes, int):
        return timm_classes
    head = getattr(model, "segmentation_head", None)
    first = head[0] if isinstance(head, nn.Sequential) and len(head) else None
    if task.name == "segment" and isinstance(first, nn.Conv2d):
        return int(first.out_channels)
    kind: type[nn.Module] = nn.Linear if task.name == "classify" else nn.Conv2d
    last = [m for m in model.modules() if isinstance(m, kind)]
    return _outputs(last[-1]) if last else None


def _outputs(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return int(module.out_features)
    if isinstance(module, nn.Conv2d):
        return int(module.out_channels)
    raise TypeError(type(module).__name__)  # pragma: no cover - callers filter the kinds
