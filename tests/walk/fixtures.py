"""Tiny edge-case models for the walker (torchinfo's ``tests/fixtures/models.py`` style).

Each ``Case`` has a builder (a fresh, seeded model every call), a per-sample input shape and
what the walker must report: the qualified names of the records in execution order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn


def seeded(seed: int = 0) -> None:
    torch.manual_seed(seed)


def randomise_batchnorm(bn: nn.modules.batchnorm._BatchNorm, seed: int = 1) -> None:
    """Give a BatchNorm non-trivial running statistics and affine parameters."""
    gen = torch.Generator().manual_seed(seed)
    n = bn.num_features
    with torch.no_grad():
        assert bn.running_var is not None and bn.running_mean is not None
        bn.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
        bn.running_mean.copy_(torch.randn(n, generator=gen))
        if bn.weight is not None:
            bn.weight.copy_(torch.rand(n, generator=gen) + 0.5)
            bn.bias.copy_(torch.randn(n, generator=gen))


class SharedLinear(nn.Module):
    """One Linear applied twice (torchinfo's ReuseLinear)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.act(self.fc(x)))


class SharedInNestedList(nn.Module):
    """The same Linear registered under two names (torchinfo's SharedModuleInNestedList)."""

    def __init__(self) -> None:
        super().__init__()
        shared = nn.Linear(4, 4)
        self.blocks = nn.ModuleList([nn.Sequential(shared, nn.ReLU()), nn.Sequential(shared)])

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class TiedWeights(nn.Module):
    """Two Linear modules holding the same Parameter (torchinfo's TiedWeightsModel)."""

    def __init__(self) -> None:
        super().__init__()
        self.encode = nn.Linear(4, 4, bias=False)
        self.decode = nn.Linear(4, 4, bias=False)
        self.decode.weight = self.encode.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(torch.tanh(self.encode(x)))


class ListAndDict(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
        self.heads = nn.ModuleDict({"main": nn.Linear(4, 2), "aux": nn.Linear(4, 3)})

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x))
        return torch.cat([self.heads["main"](x), self.heads["aux"](x)], dim=-1)


class Reordered(nn.Module):
    """Registered b before a, executed a before b."""

    def __init__(self) -> None:
        super().__init__()
        self.b = nn.Linear(3, 2)
        self.a = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(self.a(x))


class WithUnused(nn.Module):
    """``spare`` has weights but the forward pass never calls it."""

    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(4, 4)
        self.spare = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.used(x)


class Raises(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        raise RuntimeError("this module always fails")


class RaisesAfterALayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(4, 4)
        self.bad = Raises()

    def forward(self, x: Tensor) -> Tensor:
        return self.bad(self.first(x))


class Scale(nn.Module):
    """A module with a direct parameter and no registered kind."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((4,), 2.0))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class SkipConnection(nn.Module):
    """BN reads the conv output, which also feeds a residual: still a direct successor."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return self.bn(y) + y


def square_linear() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 4))


def rectangular_linear() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 3), nn.ReLU(), nn.Linear(3, 5))


def one_channel_conv() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 1, 3))


def grouped_conv() -> nn.Module:
    return nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, stride=2, groups=2))


def conv_transpose() -> nn.Module:
    return nn.Sequential(nn.ConvTranspose2d(2, 3, 2, stride=2))


def nested_sequential() -> nn.Module:
    return nn.Sequential(
        nn.Sequential(nn.Linear(4, 4), nn.ReLU()),
        nn.Sequential(nn.Sequential(nn.Linear(4, 3)), nn.Identity()),
    )


def no_weights() -> nn.Module:
    return nn.Sequential(nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())


def conv_bn() -> nn.Module:
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    randomise_batchnorm(model[1])
    return model


def bn_first() -> nn.Module:
    """x → BN directly (no conv output to fold into), then a conv."""
    model = nn.Sequential(nn.BatchNorm2d(2), nn.Conv2d(2, 2, 1))
    randomise_batchnorm(model[0])
    return model


def conv_relu_bn() -> nn.Module:
    """A ReLU between conv and BN: the BN does not act on the conv's output."""
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.BatchNorm2d(4))
    randomise_batchnorm(model[2])
    return model


def conv_relu_inplace_bn() -> nn.Module:
    """As conv_relu_bn, but the in-place ReLU hands BN the very tensor object the conv
    returned (modified in place)."""
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(inplace=True), nn.BatchNorm2d(4))
    randomise_batchnorm(model[2])
    return model


def layer_norm() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))


def scale_module() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 4), Scale())


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    names: tuple[str, ...]  # record names, in order

    def model(self, seed: int = 0) -> nn.Module:
        seeded(seed)
        return self.build()


CASES: tuple[Case, ...] = (
    Case("square_linear", square_linear, (4,), ("0",)),
    Case("rectangular_linear", rectangular_linear, (6,), ("0", "2")),
    Case("one_channel_conv", one_channel_conv, (1, 8, 8), ("0",)),
    Case("grouped_conv", grouped_conv, (4, 8, 8), ("0",)),
    Case("conv_transpose", conv_transpose, (2, 5, 5), ("0",)),
    Case("shared_linear", SharedLinear, (4,), ("fc",)),
    Case("shared_in_nested_list", SharedInNestedList, (4,), ("blocks.0.0",)),
    Case("tied_weights", TiedWeights, (4,), ("encode", "decode")),
    Case(
        "list_and_dict",
        ListAndDict,
        (4,),
        ("layers.0", "layers.1", "heads.main", "heads.aux"),
    ),
    Case("nested_sequential", nested_sequential, (4,), ("0.0", "1.0.0")),
    Case("reordered", Reordered, (4,), ("a", "b")),
    Case("with_unused", WithUnused, (4,), ("used", "spare")),
    Case("no_weights", no_weights, (2, 4, 4), ()),
    Case("conv_bn", conv_bn, (2, 6, 6), ("0", "1")),
    Case("bn_first", bn_first, (2, 4, 4), ("0", "1")),
    Case("conv_relu_bn", conv_relu_bn, (2, 6, 6), ("0", "2")),
    Case("conv_relu_inplace_bn", conv_relu_inplace_bn, (2, 6, 6), ("0", "2")),
    Case("skip_connection", SkipConnection, (2, 5, 5), ("conv", "bn")),
    Case("layer_norm", layer_norm, (4,), ("0", "1")),
    Case("scale_module", scale_module, (4,), ("0", "1")),
)
CASES_BY_NAME = {case.name: case for case in CASES}

#: Models whose forward pass raises whatever the input.
RAISING: tuple[Callable[[], nn.Module], ...] = (Raises, RaisesAfterALayer)
