"""The built-in plugin: entropy_probe's own loaders, rules and module kinds.

Registered through the ``entropy_probe.plugins`` entry point like any third-party plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from entropy_probe.entropy.rules import builtin_rules
from entropy_probe.enums import LayerKind

if TYPE_CHECKING:
    from entropy_probe.plugins import PluginRegistrar

MODULE_KINDS: dict[type[nn.Module], str] = {
    nn.Linear: LayerKind.LINEAR,
    nn.Conv1d: LayerKind.CONV1D,
    nn.Conv2d: LayerKind.CONV2D,
    nn.Conv3d: LayerKind.CONV3D,
    nn.ConvTranspose1d: LayerKind.CONV_TRANSPOSE1D,
    nn.ConvTranspose2d: LayerKind.CONV_TRANSPOSE2D,
    nn.ConvTranspose3d: LayerKind.CONV_TRANSPOSE3D,
    nn.modules.batchnorm._BatchNorm: LayerKind.BATCHNORM,
}


def register(registrar: PluginRegistrar) -> None:
    from entropy_probe.loading.default_loader import DefaultLoader
    from entropy_probe.loading.onnx_loader import OnnxLoader
    from entropy_probe.loading.smp_loader import SmpLoader
    from entropy_probe.loading.timm_loader import TimmLoader
    from entropy_probe.loading.torch_file import SafetensorsLoader, StateDictLoader
    from entropy_probe.loading.zoo_loader import ZooLoader

    for loader in (
        DefaultLoader(),
        TimmLoader(),
        SmpLoader(),
        OnnxLoader(),
        StateDictLoader(),
        SafetensorsLoader(),
        ZooLoader(),
    ):
        registrar.add_loader(loader)
    for rule in builtin_rules():
        registrar.add_rule(rule)
    for module_type, kind in MODULE_KINDS.items():
        registrar.add_module_kind(module_type, kind)
