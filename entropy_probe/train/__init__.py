"""Fine-tuning: tasks, data, the ``fit`` loop with checkpoints/resume/DDP, and ``finetune``.

>>> from entropy_probe.train import FitConfig, fit
>>> from entropy_probe.default_model import build_default_model
>>> model = build_default_model()
>>> result = fit(model, "classify", "mnist5k", FitConfig(epochs=1))  # doctest: +SKIP
"""

from __future__ import annotations

from entropy_probe.train.data import TaskData as TaskData
from entropy_probe.train.data import as_task_data as as_task_data
from entropy_probe.train.data import load_task_data as load_task_data
from entropy_probe.train.data import match_input as match_input
from entropy_probe.train.loop import AuxLossFn as AuxLossFn
from entropy_probe.train.loop import EpochRecord as EpochRecord
from entropy_probe.train.loop import FitConfig as FitConfig
from entropy_probe.train.loop import FitResult as FitResult
from entropy_probe.train.loop import fit as fit
from entropy_probe.train.tasks import Task as Task
from entropy_probe.train.tasks import adapt_head as adapt_head
from entropy_probe.train.tasks import get_task as get_task

__all__ = [
    "AuxLossFn",
    "EpochRecord",
    "FitConfig",
    "FitResult",
    "Task",
    "TaskData",
    "adapt_head",
    "as_task_data",
    "fit",
    "get_task",
    "load_task_data",
    "match_input",
]
