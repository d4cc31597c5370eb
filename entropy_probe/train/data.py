"""Training data for :func:`entropy_probe.train.fit`: in-memory tensors with a held-out split.

``load_task_data(data, task)`` accepts:

* a **built-in dataset** name (``mnist5k``, ``digits``, ``nuclei``; :mod:`entropy_probe.datasets`),
  split with :func:`~entropy_probe.datasets.train_val_split`;
* for ``classify`` (and ``autoencode``), an **ImageFolder-style directory**: one sub-folder per
  class, holding images (class ids follow the sorted folder names; ``classify`` refuses fewer
  than 2 class folders and names a class folder without images);
* for ``segment``, a directory with ``images/`` and ``masks/`` holding files with the same stems;
  a mask is a single-channel image of class ids (0 = background; a 0/255 mask counts as binary);
* for ``autoencode``, also any folder of images (searched recursively).

A directory with ``train/`` and ``val/`` sub-folders of that layout uses them as the split;
otherwise a seeded random ``val_fraction`` of it is held out. Every image is read into memory
(these are fine-tuning sets, not ImageNet), converted to the wanted channels, cover-resized and
centre-cropped to the wanted size. Hidden files are skipped; any other file that is not an image
is a one-line :class:`~entropy_probe.errors.SourceError` naming it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from entropy_probe.datasets import Dataset, list_datasets, load_dataset, train_val_split
from entropy_probe.errors import ShapeError, SourceError
from entropy_probe.train.tasks import Task, get_task

__all__ = ["TaskData", "as_task_data", "load_task_data", "match_input"]

_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True, eq=False)
class TaskData:
    """Train and held-out tensors for one task.

    Inputs are float32 ``(N, C, H, W)`` (or any ``(N, ...)`` for models built in code).
    Targets: int64 ``(N,)`` class ids (classify), int64 ``(N, H, W)`` class-id masks (segment),
    or ``None`` (autoencode: the target is the input).
    """

    train_x: Tensor
    train_y: Tensor | None
    val_x: Tensor
    val_y: Tensor | None
    num_classes: int
    description: str
    notes: tuple[str, ...] = ()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.train_x.shape[1:])

    def fingerprint(self) -> str:
        """sha256 of every tensor's shape, dtype and bytes (to refuse a resume on other data)."""
        digest = hashlib.sha256()
        for t in (self.train_x, self.train_y, self.val_x, self.val_y):
            if t is None:
                digest.update(b"none")
                continue
            c = t.detach().to("cpu").contiguous()
            digest.update(f"{tuple(c.shape)}{c.dtype}".encode())
            digest.update(c.reshape(-1).view(torch.uint8).numpy().tobytes() if c.numel() else b"")
        return digest.hexdigest()


def as_task_data(
    data: TaskData | Dataset | str | Path | Sequence[Tensor],
    task: str | Task,
    *,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    image_shape: Sequence[int | None] | None = None,
) -> TaskData:
    """Anything ``fit`` accepts as data → :class:`TaskData`.

    Besides names and folders (:func:`load_task_data`) and :class:`TaskData` itself: a built-in
    :class:`~entropy_probe.datasets.Dataset`, ``(x, y)`` tensors (split here), or
    ``(train_x, train_y, val_x, val_y)`` (``y`` may be ``None`` for autoencode).
    """
    if isinstance(data, TaskData):
        return data
    the_task = get_task(task)
    if isinstance(data, Dataset):
        return _from_dataset(data, the_task, val_fraction, split_seed)
    if isinstance(data, str | Path):
        return load_task_data(
            data,
            the_task,
            val_fraction=val_fraction,
            split_seed=split_seed,
            image_shape=image_shape,
        )
    parts = list(data)
    if len(parts) == 2:
        x, y = parts
        train, val = train_val_split(int(x.shape[0]), val_fraction, split_seed)
        parts = [x[train], None if y is None else y[train], x[val], None if y is None else y[val]]
    if len(parts) != 4:
        raise TypeError("data must be (x, y) or (train_x, train_y, val_x, val_y) tensors")
    tx, ty, vx, vy = parts
    return TaskData(
        tx, ty, vx, vy, _num_classes(the_task, ty, vy), f"{len(tx)}+{len(vx)} given samples"
    )


def load_task_data(
    data: str | Path,
    task: str | Task,
    *,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    image_shape: Sequence[int | None] | None = None,
) -> TaskData:
    """A built-in dataset name or a directory → :class:`TaskData` (see the module docstring).

    ``image_shape`` ``(C, H, W)`` is what folder images are read as; a ``None`` entry (or no
    ``image_shape``) takes the first image's channels (grey: 1, else 3) or size. Built-in
    datasets keep their own shape: see :func:`match_input`.
    """
    the_task = get_task(task)
    path = Path(data).expanduser()
    if not path.exists() and str(data) in list_datasets():
        return _from_dataset(load_dataset(str(data)), the_task, val_fraction, split_seed)
    if not path.is_dir():
        raise SourceError(
            f"--data {data}: neither a built-in dataset ({', '.join(list_datasets())}) nor a "
            "directory"
        )
    if (path / "train").is_dir() and (path / "val").is_dir():
        train = _read_dir(path / "train", the_task, image_shape)
        shape = tuple(int(s) for s in train[0].shape[1:])
        val = _read_dir(path / "val", the_task, shape, classes=train[2])
        tx, ty, classes = train
        vx, vy, _ = val
        split = "its train/ and val/ folders"
    else:
        x, y, classes = _read_dir(path, the_task, image_shape)
        if len(x) < 2:
            raise SourceError(f"--data {path}: needs at least 2 images, found {len(x)}")
        tr, va = train_val_split(len(x), val_fraction, split_seed)
        tx, vx = x[tr], x[va]
        ty, vy = (None, None) if y is None else (y[tr], y[va])
        split = f"a seeded {val_fraction:.0%} held-out split (seed {split_seed})"
    num = len(classes) if the_task.name == "classify" else _num_classes(the_task, ty, vy)
    return TaskData(
        tx,
        ty,
        vx,
        vy,
        num,
        f"{len(tx)} train + {len(vx)} held-out images from {path} ({split})",
    )


def _from_dataset(ds: Dataset, task: Task, val_fraction: float, seed: int) -> TaskData:
    if task.name != "autoencode" and ds.task != task.name:
        raise SourceError(
            f"dataset {ds.name!r} is for task {ds.task}, not {task.name} "
            f"(autoencode takes any dataset)"
        )
    train, val = train_val_split(len(ds), val_fraction, seed)
    y: Tensor | None = None
    if task.name == "classify":
        y = ds.targets
    elif task.name == "segment" and ds.targets is not None:
        y = (ds.targets[:, 0] > 0.5).long() if ds.targets.dim() == 4 else ds.targets.long()
    return TaskData(
        ds.inputs[train],
        None if y is None else y[train],
        ds.inputs[val],
        None if y is None else y[val],
        ds.num_classes,
        f"{ds.description}: {len(train)} train + {len(val)} held-out (seed {seed})",
    )


def _num_classes(task: Task, *targets: Tensor | None) -> int:
    if task.name == "autoencode":
        return 0
    tops = [int(t.max()) for t in targets if t is not None and t.numel()]
    return max(max(tops, default=0) + 1, 2)


# --------------------------------------------------------------------------------------------
# folders


def _visible_files(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def _read_dir(
    root: Path,
    task: Task,
    image_shape: Sequence[int | None] | None,
    classes: list[str] | None = None,
) -> tuple[Tensor, Tensor | None, list[str]]:
    if task.name == "segment":
        x, y = _read_segmentation(root, image_shape)
        return x, y, []
    subdirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if task.name == "autoencode" and not subdirs:
        return _read_images(root, _visible_files(root), image_shape), None, []
    if not subdirs:
        raise SourceError(
            f"--data {root}: an image-classification folder needs one sub-folder per class "
            "(ImageFolder layout: ROOT/CLASS/IMAGE)"
        )
    if classes is not None and subdirs != classes:
        raise SourceError(
            f"--data {root}: its class folders {subdirs} differ from the train folders {classes}"
        )
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(subdirs):
        found = _visible_files(root / name)
        if not found and task.name == "classify":
            raise SourceError(
                f"--data {root}: class folder {name}/ holds no images: add images of that "
                "class, or remove the folder"
            )
        files += found
        labels += [label] * len(found)
    if not files:
        raise SourceError(f"--data {root}: the class folders hold no images")
    if task.name == "classify" and len(subdirs) < 2:
        raise SourceError(
            f"--data {root}: classification needs at least 2 classes, and it has 1 class "
            f"folder ({subdirs[0]}/): add a sub-folder of images per class"
        )
    x = _read_images(root, files, image_shape)
    ids = torch.tensor(labels, dtype=torch.int64) if task.name == "classify" else None
    return x, ids, subdirs


def _open(root: Path, file: Path) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(file)
        img.load()
        return img
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise SourceError(
            f"--data {root}: {file} is not an image PIL can read ({type(exc).__name__}); "
            "every (non-hidden) file in a data folder must be an image"
        ) from None


def _read_images(root: Path, files: list[Path], image_shape: Sequence[int | None] | None) -> Tensor:
    from entropy_probe.empirical.inputs import _pil_to_array

    if not files:
        raise SourceError(f"--data {root}: holds no images")
    want = list(image_shape) if image_shape is not None else [None, None, None]
    shape: tuple[int, ...] | None = None
    arrays = []
    for file in files:
        with _open(root, file) as img:
            if shape is None:
                grey = img.mode in ("L", "1", "I;16", "I", "F")
                shape = (want[0] or (1 if grey else 3), want[1] or img.height, want[2] or img.width)
            if len(shape) != 3 or shape[0] not in (1, 3):
                raise ShapeError(f"images are read as 1 or 3 channels (C, H, W), not {shape}")
            arrays.append(_pil_to_array(img, shape[0], shape[1], shape[2]))
    return torch.from_numpy(np.stack(arrays))


def _read_segmentation(
    root: Path, image_shape: Sequence[int | None] | None
) -> tuple[Tensor, Tensor]:
    images_dir, masks_dir = root / "images", root / "masks"
    if not images_dir.is_dir() or not masks_dir.is_dir():
        raise SourceError(
            f"--data {root}: a segmentation folder needs images/ and masks/ sub-folders with "
            "files of the same names (stems)"
        )
    images = {p.stem: p for p in _visible_files(images_dir)}
    masks = {p.stem: p for p in _visible_files(masks_dir)}
    missing = sorted(set(images) - set(masks))
    extra = sorted(set(masks) - set(images))
    if missing:
        raise SourceError(f"--data {root}: image {images[missing[0]].name} has no mask in masks/")
    if extra:
        raise SourceError(f"--data {root}: mask {masks[extra[0]].name} has no image in images/")
    if not images:
        raise SourceError(f"--data {root}: images/ holds no files")
    stems = sorted(images)
    x = _read_images(root, [images[s] for s in stems], image_shape)
    height, width = int(x.shape[-2]), int(x.shape[-1])
    ys = []
    for stem in stems:
        with _open(root, images[stem]) as img:
            size = img.size
        with _open(root, masks[stem]) as mask:
            if mask.size != size:
                raise SourceError(
                    f"--data {root}: mask {masks[stem].name} is {mask.width}x{mask.height} but "
                    f"its image is {size[0]}x{size[1]}"
                )
            ys.append(_mask_array(root, masks[stem], mask, height, width))
    return x, torch.from_numpy(np.stack(ys))


def _mask_array(root: Path, path: Path, mask: Any, height: int, width: int) -> np.ndarray:
    """A class-id mask, cover-resized (nearest) and centre-cropped like its image."""
    from PIL import Image

    if mask.mode not in ("L", "P", "1", "I", "I;16"):
        raise SourceError(
            f"--data {root}: mask {path.name} has mode {mask.mode}; masks must be "
            "single-channel images of class ids"
        )
    arr = np.asarray(mask).astype(np.int64)
    if set(np.unique(arr).tolist()) <= {0, 255}:
        arr = (arr > 0).astype(np.int64)
    w0, h0 = mask.size
    factor = max(height / h0, width / w0)
    new_w, new_h = max(width, round(w0 * factor)), max(height, round(h0 * factor))
    if (new_w, new_h) != (w0, h0):
        resized = Image.fromarray(arr.astype(np.int32), mode="I").resize(
            (new_w, new_h), Image.Resampling.NEAREST
        )
        arr = np.asarray(resized).astype(np.int64)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return np.ascontiguousarray(arr[top : top + height, left : left + width])


# --------------------------------------------------------------------------------------------
# fitting data to a model's input


def match_input(
    data: TaskData,
    channels: int | None,
    size: tuple[int, int] | None,
    normalise: tuple[Sequence[float], Sequence[float]] | None = None,
) -> TaskData:
    """Convert ``data`` to ``channels`` and spatial ``size`` (``None`` keeps them), then
    normalise; each change is recorded in ``notes`` so the user is told.

    Grey → RGB repeats the channel; RGB → grey takes the ITU-R 601 luma. Images resize with
    bilinear antialiasing; segmentation masks with nearest neighbour.
    """
    notes = list(data.notes)
    tx, vx, ty, vy = data.train_x, data.val_x, data.train_y, data.val_y
    if tx.dim() != 4:
        return data
    have = int(tx.shape[1])
    if channels is not None and channels != have:
        if have == 1:
            tx, vx = (t.expand(-1, channels, -1, -1).contiguous() for t in (tx, vx))
            notes.append(
                f"the data has 1 channel and the model wants {channels}: the grey channel is "
                f"repeated {channels} times"
            )
        elif have == 3 and channels == 1:
            luma = torch.tensor(_LUMA, dtype=tx.dtype).view(1, 3, 1, 1)
            tx, vx = ((t * luma).sum(dim=1, keepdim=True) for t in (tx, vx))
            notes.append("the data is RGB and the model wants 1 channel: converted to luma")
        else:
            raise ShapeError(
                f"the data has {have} channels and the model wants {channels}: no conversion "
                "between these (only grey → RGB and RGB → grey)"
            )
    if size is not None and tuple(tx.shape[-2:]) != tuple(size):
        old = f"{tx.shape[-2]}x{tx.shape[-1]}"
        tx, vx = (
            F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)
            for t in (tx, vx)
        )
        if ty is not None and ty.dim() == 3:
            ty = _resize_mask(ty, size)
        if vy is not None and vy.dim() == 3:
            vy = _resize_mask(vy, size)
        notes.append(f"the data's {old} images are resized to the model's {size[0]}x{size[1]}")
    if normalise is not None:
        mean = torch.tensor(list(normalise[0]), dtype=tx.dtype).view(1, -1, 1, 1)
        std = torch.tensor(list(normalise[1]), dtype=tx.dtype).view(1, -1, 1, 1)
        tx, vx = ((t - mean) / std for t in (tx, vx))
        notes.append(
            "inputs are normalised with the model's mean/std "
            f"({', '.join(f'{m:.3f}' for m in normalise[0])} / "
            f"{', '.join(f'{s:.3f}' for s in normalise[1])})"
        )
    return replace(data, train_x=tx, val_x=vx, train_y=ty, val_y=vy, notes=tuple(notes))


def _resize_mask(mask: Tensor, size: tuple[int, int]) -> Tensor:
    out = F.interpolate(mask[:, None].float(), size=size, mode="nearest")
    return out[:, 0].long()
