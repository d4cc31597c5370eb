"""Multi-process training through torchrun (DDP): gloo on CPU, NCCL on CUDA.

``torchrun --nproc_per_node N -m entropy_probe finetune ...`` (or any script that calls
:func:`~entropy_probe.train.fit`) sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; :func:`setup`
reads them, initialises the process group once, and picks ``cuda:LOCAL_RANK`` on GPUs.
Without those variables everything is a single process and no group is created.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from entropy_probe.errors import EntropyProbeError

__all__ = ["DistInfo", "all_gather_objects", "all_reduce_sum", "setup", "shard"]


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None: single process

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_train_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto`` → ``cuda:LOCAL_RANK`` when CUDA is present, else CPU; ``cuda`` likewise."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise EntropyProbeError(f"--device {device!r}: fine-tuning runs on auto, cpu or cuda[:N]")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise EntropyProbeError(
                f"--device {device}: no CUDA device is available here: use --device cpu (or auto)"
            )
        if ":" not in device:  # plain "cuda": this process's local rank
            dev = torch.device("cuda", local_rank)
    return dev


@contextmanager
def setup(device: str) -> Iterator[DistInfo]:
    """The process's rank and device; a process group for the duration when run by torchrun.

    A group that already exists (the caller made it) is used and left alone.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if world <= 1 and not (dist.is_available() and dist.is_initialized()):
        yield DistInfo(0, 1, 0, resolve_train_device(device), None)
        return
    dev = resolve_train_device(device, local)
    created = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend)
        created = True
    info = DistInfo(dist.get_rank(), dist.get_world_size(), local, dev, dist.get_backend())
    try:
        yield info
        if created:
            # Every rank done with its collectives before any tears the group down: a rank
            # destroying its gloo group while rank 0 still writes the last checkpoint made
            # the other abort now and then ("terminate called without an active exception",
            # SIGABRT; 1 run in about 12 of the 2-process test). Not on an error: the other
            # ranks may never arrive, and torchrun stops them anyway.
            dist.barrier()
    finally:
        if created:
            dist.destroy_process_group()


def shard(order: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """This rank's part of a permutation, DistributedSampler-style: padded by wrapping to a
    multiple of the world size, then every ``world_size``-th index from ``rank``."""
    if not info.distributed:
        return order
    n = int(order.numel())
    total = -(-n // info.world_size) * info.world_size
    if total > n:
        order = torch.cat([order, order[: total - n]])
    return order[info.rank : total : info.world_size]


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum over ranks (a copy; unchanged in a single process)."""
    if not info.distributed:
        return values
    out = values.detach().clone().to(info.device if info.backend == "nccl" else "cpu")
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.cpu()


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` (a list with one item in a single process)."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
