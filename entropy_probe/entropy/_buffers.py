"""Reusable scratch memory for analyses: large blocks allocated once and reused.

Fresh large CPU allocations are mapped on allocation and unmapped on free by glibc, so every
batch of a profile page-faulted its float64 matrices, Gram matrices and Cholesky factors in
again: on the shared 2-core machine, 37,000 page faults per ResNet-50 paper profile; with the
blocks kept, a repeated profile's math took 0.38 s and 13 faults instead of 0.47 s and 24,700
(blocks reused only within one profile). Each thread has a ``BufferPool`` that keeps one
block per purpose, grown to the largest request; activated (``with pool.active():``), the
log-volume routine takes its Gram matrices and factors from it. Between analyses a thread
keeps at most ``RETAINED_BYTES`` of CPU blocks (ResNet-50's paper profile: 96.5 MiB) and nothing on
a GPU, whose allocator caches by itself; :func:`release_scratch_memory` frees the calling
thread's blocks.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

_current = threading.local()  # the pool ``scratch`` takes from, while one is active
_per_thread = threading.local()  # each thread's own pool, kept between analyses
RETAINED_BYTES = 256 * 2**20


class BufferPool:
    """Named flat buffers, one per (name, dtype, device), each grown to its largest request.

    A tensor taken under a name is valid until the next ``take`` under the same name."""

    def __init__(self) -> None:
        self._sizes: dict[tuple[str, torch.dtype, torch.device], int] = {}
        self._buffers: dict[tuple[str, torch.dtype, torch.device], Tensor] = {}

    def reserve(
        self, name: str, shape: Sequence[int], dtype: torch.dtype, device: torch.device
    ) -> None:
        """Make the first ``take`` under ``name`` allocate at least ``shape``'s size."""
        key = (name, dtype, torch.device(device))
        self._sizes[key] = max(self._sizes.get(key, 0), math.prod(shape))

    def take(
        self, name: str, shape: Sequence[int], dtype: torch.dtype, device: torch.device
    ) -> Tensor:
        """A contiguous tensor of ``shape`` (uninitialised) in the buffer for ``name``."""
        key = (name, dtype, torch.device(device))
        size = math.prod(shape)
        buffer = self._buffers.get(key)
        # a block made under torch.inference_mode cannot be written outside it: a new one
        if (
            buffer is None
            or buffer.numel() < size
            or buffer.is_inference() != torch.is_inference_mode_enabled()
        ):
            size_wanted = max(size, self._sizes.get(key, 0))
            buffer = self._buffers[key] = torch.empty(size_wanted, dtype=dtype, device=device)
        return buffer[:size].view(*shape)

    def nbytes(self, device_type: str | None = None) -> int:
        """Bytes held (on devices of ``device_type`` only, when given)."""
        return sum(
            buffer.numel() * buffer.element_size()
            for (_, _, device), buffer in self._buffers.items()
            if device_type is None or device.type == device_type
        )

    def trim(self, retained_bytes: int | None = None) -> None:
        """Drop the reservations, every block off the CPU, and all blocks when the CPU ones
        hold more than ``retained_bytes`` (default ``RETAINED_BYTES``)."""
        self._sizes.clear()
        limit = RETAINED_BYTES if retained_bytes is None else retained_bytes
        keep = self.nbytes("cpu") <= limit
        self._buffers = {
            key: buffer for key, buffer in self._buffers.items() if keep and key[2].type == "cpu"
        }

    @contextmanager
    def active(self) -> Iterator[BufferPool]:
        """Within the block, :func:`scratch` on this thread takes from this pool; on leaving
        it, the pool is trimmed to what may be kept between analyses."""
        previous = getattr(_current, "pool", None)
        _current.pool = self
        try:
            yield self
        finally:
            _current.pool = previous
            if previous is not self:
                self.trim()


def scratch(name: str, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A tensor of ``shape``: from the active pool (valid until its next ``take`` under
    ``name``), or freshly allocated when no pool is active."""
    pool: BufferPool | None = getattr(_current, "pool", None)
    if pool is None:
        return torch.empty(tuple(shape), dtype=dtype, device=device)
    return pool.take(name, shape, dtype, device)


def thread_pool() -> BufferPool:
    """The calling thread's pool (threads never share one: its blocks are overwritten)."""
    pool: BufferPool | None = getattr(_per_thread, "pool", None)
    if pool is None:
        pool = _per_thread.pool = BufferPool()
    return pool


def release_scratch_memory() -> int:
    """Free the scratch blocks the calling thread keeps between analyses; returns the bytes
    released."""
    pool: BufferPool | None = getattr(_per_thread, "pool", None)
    if pool is None:
        return 0
    released = pool.nbytes()
    pool.trim(retained_bytes=-1)
    return released
