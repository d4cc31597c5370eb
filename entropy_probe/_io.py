"""Safe output files: atomic writes (a temp file in the same directory, then ``os.replace``)
that respect what the path already is, and a guard against writing over an input."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path

from entropy_probe.errors import EntropyProbeError


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one.

    A symlink is followed: its target is replaced and the link stays. A path that exists and
    is not a regular file (``/dev/null``, a FIFO) is written to directly, as a shell
    redirection would, never replaced by a file. Missing parent directories are created.
    The temp file is created with mode 0666 minus the umask (as a plain ``open`` would), in the
    target's directory so the final rename cannot cross file systems.
    """
    target = Path(os.path.realpath(path))
    with contextlib.suppress(FileNotFoundError):
        mode = target.stat().st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(21, "is a directory", str(path))
        if not stat.S_ISREG(mode):
            with target.open("wb") as handle:
                handle.write(data)
            return Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


_MODEL_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".onnx", ".npy"}


def refuse_overwriting_inputs(
    option: str, output: str | Path, inputs: Iterable[tuple[str, str | Path | None]]
) -> None:
    """Refuse an output path that is (or links to) one of the run's input files.

    ``inputs`` are (what it is, path) pairs, e.g. ``("SOURCE", "model.onnx")``; ``None`` and
    non-file inputs (``timm:NAME``, built-in dataset names) are ignored. For a directory input
    (a ``save_pretrained`` export) the weights and config files in it count as inputs.
    """
    try:
        out_stat = Path(output).stat()
    except OSError:
        return  # does not exist yet (or cannot be read): nothing to overwrite
    if not stat.S_ISREG(out_stat.st_mode):
        return
    for label, given in inputs:
        if given is None or str(given) in ("", "-"):
            continue
        try:
            in_stat = Path(given).stat()
        except OSError:
            continue
        what = f"the {label} file itself"
        same = (in_stat.st_dev, in_stat.st_ino) == (out_stat.st_dev, out_stat.st_ino)
        if stat.S_ISDIR(in_stat.st_mode):
            what = f"a weights or config file of the {label} folder"
            resolved = Path(os.path.realpath(output))
            same = resolved.parent == Path(os.path.realpath(given)) and (
                resolved.suffix.lower() in _MODEL_SUFFIXES or resolved.name == "config.json"
            )
        if same:
            raise EntropyProbeError(
                f"{option} {output} is {what}: writing it would destroy the input; choose "
                "another output path"
            )
