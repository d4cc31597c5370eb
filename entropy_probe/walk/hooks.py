"""One context manager for forward hooks: always removed, model state always restored."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle

Hook = Callable[[nn.Module, tuple[Any, ...], Any], None]


@contextmanager
def forward_hooks(
    model: nn.Module, hooks: dict[str, Hook], *, eval_mode: bool = True
) -> Iterator[None]:
    """Attach ``hooks`` (qualified module name → forward hook) for the duration of the block.

    On exit, whatever happened inside, every hook is removed and each module's ``training``
    flag is restored. With ``eval_mode`` the model runs in eval mode inside the block.
    """
    modules = dict(model.named_modules())
    missing = sorted(set(hooks) - set(modules))
    if missing:
        raise KeyError(f"no module named {missing[0]!r} in the model")
    training = {name: m.training for name, m in modules.items()}
    handles: list[RemovableHandle] = []
    try:
        if eval_mode:
            model.eval()
        for name, hook in hooks.items():
            handles.append(modules[name].register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()
        for name, module in modules.items():
            module.training = training[name]
