"""Walkers: turn a loaded model into a list of :class:`LayerRecord`."""

from entropy_probe.walk.records import BatchNormParams as BatchNormParams
from entropy_probe.walk.records import LayerRecord as LayerRecord

__all__ = ["BatchNormParams", "LayerRecord"]
