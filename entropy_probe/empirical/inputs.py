"""``--data NAME_OR_PATH``: real inputs for the empirical profile, in the model's input space.

Accepted forms, checked in this order:

* an existing **folder** of images (searched recursively, files in sorted order, hidden files
  and folders skipped): every file read must be an image PIL can open, otherwise SourceError
  names the file. Each image is converted to grey or RGB to match the model's channels,
  resized so it covers the model's H×W (aspect kept) and centre-cropped, scaled to [0, 1] and
  normalised (below).
* an existing **.npy** file shaped ``(N, *input_shape)``, read with ``allow_pickle=False``
  and used as given (it is assumed to be preprocessed already).
* Of a folder or array with more than ``samples`` items, a seeded random subset of
  ``samples`` is read (in file/row order): folders and arrays are often sorted by class, and
  their first N items would all be one class.
* a **built-in dataset** name (``mnist5k``, ``digits``, ``nuclei``; entropy_probe.datasets):
  ``samples`` samples drawn with a fixed seed, channels converted (grey → RGB by repetition,
  RGB → grey by ITU-R 601 luma) and resized (bilinear, antialiased) to the model's H×W, then
  normalised. ``nuclei`` is one 512×512 image: its samples are seeded random crops of the
  model's H×W at native resolution (the image is scaled up first if the model wants more).
* a tensor or array (library use) shaped ``(N, *input_shape)``, used as given.

Normalisation of images and built-in datasets: ``(x − mean)/std`` per channel with mean/std from
the model's timm ``pretrained_cfg`` (``LoadedModel.meta["pretrained_cfg"]`` or the module's
own attribute) when present, else the ImageNet statistics for 3-channel models, else none
(inputs stay in [0, 1]).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from entropy_probe.datasets import list_datasets, load_dataset
from entropy_probe.errors import EntropyProbeError, SourceError
from entropy_probe.loading._base import LoadedModel

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "InputData", "load_inputs", "normalisation"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_LUMA = (0.299, 0.587, 0.114)
_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


@dataclass(frozen=True)
class InputData:
    """Model-ready inputs: float32 ``(N, *input_shape)`` on the CPU, and where they came from."""

    inputs: Tensor
    description: str

    def __len__(self) -> int:
        return int(self.inputs.shape[0])


def normalisation(
    loaded: LoadedModel | None, channels: int
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) per channel for ``loaded``'s inputs, or None to keep [0, 1]."""
    cfg: Any = None
    if loaded is not None:
        cfg = loaded.meta.get("pretrained_cfg")
        if cfg is None and loaded.module is not None:
            cfg = getattr(loaded.module, "pretrained_cfg", None)
    if isinstance(cfg, dict):
        mean, std = cfg.get("mean"), cfg.get("std")
        if (
            isinstance(mean, Sequence)
            and isinstance(std, Sequence)
            and len(mean) == len(std) == channels
            and all(float(s) > 0 for s in std)
        ):
            return tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return None


def load_inputs(
    data: str | Path | Tensor | np.ndarray,
    loaded: LoadedModel | None = None,
    *,
    input_shape: Sequence[int] | None = None,
    samples: int = 256,
    seed: int = 0,
) -> InputData:
    """Resolve ``data`` (see the module docstring) to at most ``samples`` model inputs.

    ``input_shape`` (per sample) defaults to ``loaded.input_shape``. Every problem with the
    data is a :class:`SourceError` that says what was expected.
    """
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise EntropyProbeError(f"--samples must be a positive integer, got {samples!r}")
    shape = _input_shape(loaded, input_shape)
    if isinstance(data, Tensor | np.ndarray):
        arr = torch.as_tensor(np.asarray(data)) if isinstance(data, np.ndarray) else data
        _check_array_shape(tuple(arr.shape), shape, "the data")
        picked = _subset(len(arr), samples, seed)
        inputs = arr[torch.as_tensor(picked)].detach().to("cpu", torch.float32)
        return InputData(_usable(inputs, "the data"), f"{len(inputs)} given samples")
    if not str(data).strip():
        raise SourceError(
            "--data is empty: give a built-in dataset (mnist5k, digits, nuclei), an image "
            "folder or a .npy file"
        )
    path = Path(data).expanduser()
    if path.is_dir():
        return _image_folder(path, shape, loaded, samples, seed)
    if path.is_file():
        if path.suffix.lower() == ".npy":
            return _npy(path, shape, samples, seed)
        raise SourceError(
            f"--data {path}: a file must be a .npy array shaped (N, {_fmt(shape)}); "
            "for images, give a folder of them"
        )
    if str(data) in list_datasets():
        return _builtin(str(data), shape, loaded, samples, seed)
    raise SourceError(
        f"--data {data}: no such file or folder, and not a built-in dataset "
        f"({', '.join(list_datasets())})"
    )


# --------------------------------------------------------------------------------------------


def _fmt(shape: Sequence[int]) -> str:
    return ", ".join(str(s) for s in shape)


def _input_shape(loaded: LoadedModel | None, given: Sequence[int] | None) -> tuple[int, ...]:
    shape = given if given is not None else (loaded.input_shape if loaded is not None else None)
    if shape is None:
        raise SourceError(
            "the model's input shape is unknown: pass --input-shape C,H,W (e.g. 3,224,224)"
        )
    return tuple(int(s) for s in shape)


def _check_array_shape(got: tuple[int, ...], want: tuple[int, ...], what: str) -> None:
    if len(got) != len(want) + 1 or got[1:] != want:
        raise SourceError(
            f"{what}: expected an array shaped (N, {_fmt(want)}) for this model, got ({_fmt(got)})"
        )
    if got[0] < 1:
        raise SourceError(f"{what}: holds no samples (shape ({_fmt(got)}))")


def _usable(inputs: Tensor, what: str) -> Tensor:
    """``inputs`` unless they hold NaN/Inf, or are all the same sample (zero variance: every
    entropy would be −inf and every ΔH undefined)."""
    if not bool(torch.isfinite(inputs).all()):
        raise SourceError(f"{what}: contains NaN or infinite values")
    if len(inputs) > 1 and bool((inputs == inputs[:1]).all()):
        raise SourceError(
            f"{what}: all {len(inputs)} samples are identical, so their entropy is −inf and "
            "nothing can be measured; give real, varying inputs"
        )
    return inputs


def _subset(available: int, samples: int, seed: int) -> list[int]:
    """Indices of the items to read: all of them, or a seeded random ``samples`` in order."""
    if available <= samples:
        return list(range(available))
    gen = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(available, generator=gen)[:samples].tolist())


def _npy(path: Path, shape: tuple[int, ...], samples: int, seed: int) -> InputData:
    try:
        with path.open("rb") as handle:
            magic = handle.read(6)
    except OSError as exc:
        raise SourceError(f"--data {path}: cannot read it: {exc.strerror or exc}") from None
    if magic != b"\x93NUMPY":  # np.load would take anything else for a pickle
        raise SourceError(
            f"--data {path}: not a readable .npy array: it has no NumPy header (save arrays "
            "with np.save)"
        )
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        if "object" in str(exc).lower() or "pickle" in str(exc).lower():
            raise SourceError(
                f"--data {path}: not a readable .npy array: it holds pickled Python objects, never "
                "loaded (unpickling can run code): save a numeric array, e.g. np.save(PATH, "
                "x.astype(np.float32))"
            ) from None
        raise SourceError(f"--data {path}: not a readable .npy array: {exc}") from None
    except (OSError, EOFError) as exc:
        raise SourceError(f"--data {path}: not a readable .npy array: {exc}") from None
    if not isinstance(arr, np.ndarray):
        raise SourceError(f"--data {path}: not a single .npy array")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise SourceError(f"--data {path}: dtype {arr.dtype} is not numeric")
    _check_array_shape(tuple(int(s) for s in arr.shape), shape, f"--data {path}")
    picked = _subset(len(arr), samples, seed)
    inputs = torch.from_numpy(np.array(arr[picked], dtype=np.float32))
    return InputData(
        _usable(inputs, f"--data {path}"),
        f"{len(inputs)} samples from {path}{_of(len(inputs), len(arr), 'rows')}",
    )


def _of(read: int, available: int, unit: str) -> str:
    return f" (a seeded random {read} of {available} {unit})" if read < available else ""


def _image_shape(shape: tuple[int, ...], what: str) -> tuple[int, int, int]:
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise SourceError(
            f"{what} feeds images to 1- or 3-channel models shaped (C, H, W); this model's "
            f"input is ({_fmt(shape)}): give a .npy array shaped (N, {_fmt(shape)}) instead"
        )
    return shape[0], shape[1], shape[2]


def _normalise(x: Tensor, loaded: LoadedModel | None) -> Tensor:
    norm = normalisation(loaded, x.shape[1])
    if norm is None:
        return x
    mean = torch.tensor(norm[0], dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(norm[1], dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean) / std


def _image_folder(
    root: Path, shape: tuple[int, ...], loaded: LoadedModel | None, samples: int, seed: int
) -> InputData:
    from PIL import Image, UnidentifiedImageError

    channels, height, width = _image_shape(shape, f"--data {root} (an image folder)")
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise SourceError(f"--data {root}: the folder holds no files")
    arrays: list[np.ndarray] = []
    for file in (files[i] for i in _subset(len(files), samples, seed)):
        try:
            with Image.open(file) as img:
                img.load()
                arrays.append(_pil_to_array(img, channels, height, width))
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise SourceError(
                f"--data {root}: {file} is not an image PIL can read ({type(exc).__name__}); "
                "every file in a --data folder must be an image"
            ) from None
    x = torch.from_numpy(np.stack(arrays))
    return InputData(
        _normalise(x, loaded),
        f"{len(arrays)} images from {root}{_of(len(arrays), len(files), 'files')}",
    )


def _pil_to_array(img: Any, channels: int, height: int, width: int) -> np.ndarray:
    """One PIL image → float32 (C, H, W) in [0, 1]: grey/RGB conversion, cover-resize, crop."""
    from PIL import Image

    if img.mode in _HIGH_BIT_MODES:  # 16/32-bit grey: scale to [0, 1] in float
        arr = np.asarray(img, dtype=np.float32)
        if img.mode.startswith("I;16"):
            arr = arr / np.float32(65535.0)
        else:
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - np.float32(lo)) / np.float32(max(hi - lo, 1e-12))
        img = Image.fromarray(arr, mode="F")
        scale = 1.0
    else:
        img = img.convert("L" if channels == 1 else "RGB")
        scale = 1.0 / 255.0
    w0, h0 = img.size
    factor = max(height / h0, width / w0)
    new_w, new_h = max(width, round(w0 * factor)), max(height, round(h0 * factor))
    img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - width) // 2, (new_h - height) // 2
    img = img.crop((left, top, left + width, top + height))
    arr = np.asarray(img, dtype=np.float32) * np.float32(scale)
    if arr.ndim == 2:
        arr = arr[None]
        if channels == 3:
            arr = np.repeat(arr, 3, axis=0)
    else:
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr, dtype=np.float32)


def _convert_channels(x: Tensor, channels: int, what: str) -> Tensor:
    have = x.shape[1]
    if have == channels:
        return x
    if have == 1:
        return x.expand(-1, channels, -1, -1).contiguous()
    if have == 3 and channels == 1:
        luma = torch.tensor(_LUMA, dtype=x.dtype).view(1, 3, 1, 1)
        return (x * luma).sum(dim=1, keepdim=True)
    raise SourceError(f"{what} has {have} channels; the model wants {channels}")


def _builtin(
    name: str,
    shape: tuple[int, ...],
    loaded: LoadedModel | None,
    samples: int,
    seed: int,
) -> InputData:
    gen = torch.Generator().manual_seed(seed)
    if name == "nuclei":
        channels, height, width = _image_shape(shape, "--data nuclei")
        ds = load_dataset("nuclei", tile=512)
        image = ds.inputs[:1]  # (1, 1, 512, 512)
        size = image.shape[-1]
        factor = max(1.0, height / size, width / size)
        if factor > 1.0:
            side = math.ceil(size * factor)
            image = F.interpolate(image, size=(side, side), mode="bilinear", align_corners=False)
        side_h, side_w = image.shape[-2], image.shape[-1]
        tops = torch.randint(0, side_h - height + 1, (samples,), generator=gen).tolist()
        lefts = torch.randint(0, side_w - width + 1, (samples,), generator=gen).tolist()
        crops = torch.cat(
            [image[:, :, t : t + height, s : s + width] for t, s in zip(tops, lefts, strict=True)]
        )
        x = _convert_channels(crops, channels, "nuclei")
        described = (
            f"{samples} seeded {height}x{width} crops of the stardist 512x512 fluorescence "
            "nuclei image (percentile-normalised)"
        )
        return InputData(_normalise(x, loaded), described)
    ds = load_dataset(name)
    order = torch.randperm(len(ds), generator=gen)[:samples]
    x = ds.inputs[order]
    if len(shape) != 3:
        if math.prod(x.shape[1:]) != math.prod(shape):
            raise SourceError(
                f"--data {name}: samples shaped ({_fmt(x.shape[1:])}) do not fit this model's "
                f"input ({_fmt(shape)})"
            )
        return InputData(x.reshape(len(x), *shape), f"{len(x)} samples of {ds.description}")
    channels, height, width = shape
    x = _convert_channels(x, channels, f"--data {name}")
    described = f"{len(x)} samples of {ds.description}"
    if tuple(x.shape[-2:]) != (height, width):
        x = F.interpolate(
            x, size=(height, width), mode="bilinear", align_corners=False, antialias=True
        )
        described += f", resized to {height}x{width}"
    if channels != ds.inputs.shape[1]:
        described += f", as {channels} channels"
    return InputData(_normalise(x, loaded), described)
