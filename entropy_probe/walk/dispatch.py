"""Choose the walker for a loaded model."""

from __future__ import annotations

from entropy_probe.loading._base import LoadedModel
from entropy_probe.plugins import PluginRegistry
from entropy_probe.walk.module_walker import walk_module
from entropy_probe.walk.records import Example, LayerRecord
from entropy_probe.walk.state_dict import walk_state_dict


def walk(
    loaded: LoadedModel, registry: PluginRegistry, *, example: Example | None = None
) -> list[LayerRecord]:
    """Records for every weighted layer of ``loaded``, whatever its format."""
    if loaded.module is not None:
        return walk_module(loaded.module, loaded.input_shape, registry, example=example)
    if loaded.onnx_model is not None:
        from entropy_probe.walk.onnx_graph import walk_onnx

        return walk_onnx(loaded.onnx_model, loaded.input_shape)
    assert loaded.state_dict is not None
    return walk_state_dict(loaded.state_dict)
