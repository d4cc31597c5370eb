"""Checkpoints, RNG state and the run lock of a fine-tuning output directory.

A checkpoint file is ``MAGIC + sha256(payload) + payload`` where the payload is a
``torch.save``d dict of tensors and plain values (read back with ``weights_only=True``). The
digest catches truncated or bit-flipped files, so resuming falls back to the previous
checkpoint instead of loading garbage. Files are written atomically (temp file, fsync, rename)
and the last :data:`KEEP` are kept. Every path is a fixed name inside the output directory.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import random
import re
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from entropy_probe._io import atomic_write_bytes
from entropy_probe.errors import EntropyProbeError

__all__ = [
    "KEEP",
    "CheckpointError",
    "LockError",
    "RunLock",
    "get_rng_state",
    "list_checkpoints",
    "load_latest",
    "safe_path",
    "save_checkpoint",
    "set_rng_state",
]

MAGIC = b"ENTROPY-PROBE-CKPT/1\n"
KEEP = 2
_NAME = re.compile(r"^checkpoint-e(\d{4,})\.pt$")
LOCK_NAME = ".lock"


class CheckpointError(EntropyProbeError, RuntimeError):
    """A checkpoint cannot be written, or no checkpoint in a directory can be read."""


class LockError(EntropyProbeError, RuntimeError):
    """Another run holds the output directory."""


def safe_path(out_dir: Path, name: str) -> Path:
    """``out_dir / name`` for a plain file name, refused if it would land outside ``out_dir``
    (separators, ``..``, or a symlink pointing elsewhere)."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise CheckpointError(f"refusing output file name {name!r}: not a plain file name")
    path = out_dir / name
    root = out_dir.resolve()
    if not path.resolve().is_relative_to(root):
        raise CheckpointError(f"refusing to write {path}: it resolves outside --out {out_dir}")
    return path


def checkpoint_name(epoch: int) -> str:
    return f"checkpoint-e{epoch:04d}.pt"


def list_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of the checkpoint files in ``out_dir``, newest first."""
    if not out_dir.is_dir():
        return []
    found = []
    for p in out_dir.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def save_checkpoint(out_dir: Path, epoch: int, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as epoch ``epoch``'s checkpoint, then drop all but the last
    :data:`KEEP`. On a write error nothing older is touched and a one-line
    :class:`CheckpointError` says so."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getvalue()
    path = safe_path(out_dir, checkpoint_name(epoch))
    try:
        atomic_write_bytes(path, MAGIC + hashlib.sha256(body).digest() + body)
    except OSError as exc:
        previous = [p.name for e, p in list_checkpoints(out_dir) if e < epoch]
        kept = f"; the previous checkpoint {previous[0]} is intact" if previous else ""
        reason = "no space left on device" if exc.errno == errno.ENOSPC else exc.strerror or exc
        raise CheckpointError(f"cannot write checkpoint {path}: {reason}{kept}") from None
    for old_epoch, old in list_checkpoints(out_dir)[KEEP:]:
        if old_epoch < epoch:
            with contextlib.suppress(OSError):
                old.unlink()
    return path


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The payload of one checkpoint file; :class:`CheckpointError` if it is damaged."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
    head = len(MAGIC) + 32
    if len(raw) < head or not raw.startswith(MAGIC):
        raise CheckpointError(f"{path} is not an entropy-probe checkpoint or is truncated")
    body = raw[head:]
    if hashlib.sha256(body).digest() != raw[len(MAGIC) : head]:
        raise CheckpointError(f"{path} is damaged (checksum mismatch: truncated or corrupted)")
    try:
        payload = torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    except Exception as exc:  # a valid digest over an unreadable payload: still damaged
        raise CheckpointError(f"{path} cannot be read back: {type(exc).__name__}") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} does not hold a checkpoint dict")
    return payload


@dataclass(frozen=True)
class Loaded:
    payload: dict[str, Any]
    path: Path
    warnings: tuple[str, ...]


def load_latest(out_dir: Path) -> Loaded | None:
    """The newest readable checkpoint in ``out_dir`` (``None`` if there is none at all).

    A damaged newer file is skipped with a warning (returned, and issued as a
    ``UserWarning``); if every file is damaged, :class:`CheckpointError`.
    """
    found = list_checkpoints(out_dir)
    if not found:
        return None
    notes: list[str] = []
    for _, path in found:
        try:
            payload = read_checkpoint(path)
        except CheckpointError as exc:
            notes.append(f"{exc}; falling back to the previous checkpoint")
            warnings.warn(notes[-1], stacklevel=2)
            continue
        return Loaded(payload, path, tuple(notes))
    raise CheckpointError(
        f"no readable checkpoint in {out_dir}: {'; '.join(n.split(';')[0] for n in notes)}"
    )


# --------------------------------------------------------------------------------------------
# RNG state


def get_rng_state() -> dict[str, Any]:
    """Python, numpy, torch CPU and CUDA generator states as checkpoint-safe values."""
    version, state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    out: dict[str, Any] = {
        "python": {"version": int(version), "state": list(state), "gauss": gauss},
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],  # type: ignore[no-untyped-call]
    }
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        (
            npy["name"],
            npy["keys"].numpy().astype(np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["gauss"],
        )
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------
# run lock


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:  # pragma: no cover - e.g. an invalid pid value
        return False
    return True


class RunLock:
    """``OUT/.lock`` holding the pid and host of the run that writes ``OUT``.

    A second run on the same directory gets a :class:`LockError`. A lock left by a dead process
    on this host (e.g. after SIGKILL) is taken over, and :attr:`note` says so. A lock from
    another host cannot be checked: the error says to delete it if that run is gone. A lock
    this process already holds is re-entered (``finetune`` locks, then calls ``fit``).
    """

    def __init__(self, out_dir: Path) -> None:
        self.path = safe_path(out_dir, LOCK_NAME)
        self.note: str | None = None
        self._held = False
        self._nested = False

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                if self._check_owner():
                    self._nested = True
                    return self
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(mine, handle)
            self._held = True
            return self
        raise LockError(f"{self.path}: another run took the lock at the same time; try again")

    def _check_owner(self) -> bool:
        """True if this process holds the lock already. Raise if another live run owns it;
        remove a stale one (and set :attr:`note`)."""
        try:
            owner = json.loads(self.path.read_text(encoding="utf-8"))
            pid, host = int(owner["pid"]), str(owner["host"])
        except FileNotFoundError:
            return False
        except (OSError, ValueError, KeyError, TypeError):
            pid, host = -1, socket.gethostname()  # unreadable: written by a run killed mid-write
        here = socket.gethostname()
        if host != here:
            raise LockError(
                f"{self.path.parent} is in use by pid {pid} on host {host} (lock file "
                f"{self.path}); if that run is gone, delete the lock file"
            )
        if pid == os.getpid():
            return True
        if pid > 0 and _pid_alive(pid):
            raise LockError(
                f"{self.path.parent} is in use by another run (pid {pid} on {host}); wait for "
                "it to finish or choose another --out"
            )
        self.note = f"took over a stale lock of dead pid {pid} on {host} ({self.path})"
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        return False

    def release(self) -> None:
        if self._held:
            with contextlib.suppress(OSError):
                self.path.unlink()
            self._held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
