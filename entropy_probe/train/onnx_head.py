"""Make an onnx2torch-converted graph trainable, and replace its MatMul classifier head.

onnx2torch turns ``Conv``/``Gemm`` into torch modules with parameters, but a ``MatMul`` on an
initializer (and the ``Add`` of its bias) reads the tensors from *buffers* of the
``initializers`` submodule: training would never update them. :func:`make_matmul_weights_trainable`
turns exactly those (floating-point initializers read by a ``MatMul``, and the initializer added
right after it) into parameters; shape constants, scalars and BatchNorm statistics stay buffers.
:func:`replace_matmul_head` gives the last such MatMul (+ bias) ``num_outputs`` outputs.
"""

from __future__ import annotations

import math

import torch
from torch import fx, nn

__all__ = ["make_matmul_weights_trainable", "matmul_head", "replace_matmul_head"]


def _is_matmul(graph_module: fx.GraphModule, node: fx.Node) -> bool:
    if node.op != "call_module" or not isinstance(node.target, str):
        return False
    return type(graph_module.get_submodule(node.target)).__name__ == "OnnxMatMul"


def _is_add(graph_module: fx.GraphModule, node: fx.Node) -> bool:
    if node.op != "call_module" or not isinstance(node.target, str):
        return False
    module = graph_module.get_submodule(node.target)
    return getattr(module, "math_op_function", None) is torch.add


def _float_attr(graph_module: fx.GraphModule, node: object) -> str | None:
    """The qualified name of a floating-point initializer read by ``node``, else None."""
    if not isinstance(node, fx.Node) or node.op != "get_attr" or not isinstance(node.target, str):
        return None
    owner_name, _, attr = node.target.rpartition(".")
    owner = graph_module.get_submodule(owner_name) if owner_name else graph_module
    tensor = getattr(owner, attr, None)
    if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
        return node.target
    return None


def _to_parameter(graph_module: fx.GraphModule, qualified: str) -> nn.Parameter:
    owner_name, _, attr = qualified.rpartition(".")
    owner = graph_module.get_submodule(owner_name) if owner_name else graph_module
    tensor = getattr(owner, attr)
    if isinstance(tensor, nn.Parameter):
        return tensor
    param = nn.Parameter(tensor.detach().clone())
    delattr(owner, attr)  # a buffer: registered anew as a parameter under the same name
    owner.register_parameter(attr, param)
    return param


def _matmuls(graph_module: fx.GraphModule) -> list[tuple[list[str], list[list[str]]]]:
    """For every MatMul, in graph order: the float initializers it reads, and those read by
    each ``Add`` that consumes its output (its bias)."""
    out = []
    for node in graph_module.graph.nodes:
        if not _is_matmul(graph_module, node):
            continue
        weights = [w for w in (_float_attr(graph_module, a) for a in node.args) if w]
        adds = [
            [b for b in (_float_attr(graph_module, a) for a in user.args) if b]
            for user in node.users
            if _is_add(graph_module, user)
        ]
        out.append((weights, adds))
    return out


def matmul_head(graph_module: fx.GraphModule) -> tuple[str, str | None] | None:
    """(weight, bias) names of the last MatMul on an initializer (bias: an initializer added to
    its output right after), or None when the graph has no such MatMul."""
    heads = [(weights, adds) for weights, adds in _matmuls(graph_module) if weights]
    if not heads:
        return None
    weights, adds = heads[-1]
    return weights[0], (adds[-1][0] if adds and adds[-1] else None)


def make_matmul_weights_trainable(module: nn.Module) -> int:
    """Turn every MatMul weight initializer (and its bias) into a parameter; the count."""
    if not isinstance(module, fx.GraphModule):
        return 0
    count = 0
    for weights, adds in _matmuls(module):
        for name in [*weights, *(b for bias in adds for b in bias)]:
            _to_parameter(module, name)
            count += 1
    return count


def replace_matmul_head(module: nn.Module, num_outputs: int) -> tuple[str, int] | None:
    """Give the last MatMul head ``num_outputs`` outputs (fresh weights as ``nn.Linear`` draws
    them, from the global RNG; zero bias). (weight name, old outputs), or None if none."""
    if not isinstance(module, fx.GraphModule):
        return None
    head = matmul_head(module)
    if head is None:
        return None
    weight_name, bias_name = head
    weight = _to_parameter(module, weight_name)
    if weight.dim() != 2:
        return None
    fan_in, old = int(weight.shape[0]), int(weight.shape[1])
    if old == num_outputs:
        return weight_name, old
    bound = 1.0 / math.sqrt(fan_in)
    fresh = torch.empty(fan_in, num_outputs, dtype=weight.dtype, device=weight.device)
    nn.init.uniform_(fresh, -bound, bound)
    weight.data = fresh
    if bias_name is not None:
        bias = _to_parameter(module, bias_name)
        if bias.numel() == old:
            shape = (*bias.shape[:-1], num_outputs)
            bias.data = torch.zeros(shape, dtype=bias.dtype, device=bias.device)
    return weight_name, old
