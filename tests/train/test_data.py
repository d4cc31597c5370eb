"""Training data from folders and built-in datasets: layouts, splits, clear one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from entropy_probe.errors import SourceError
from entropy_probe.train import load_task_data, match_input


def _png(path: Path, value: int, size: tuple[int, int] = (12, 10), mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0]), value, dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path)


def _image_folder(root: Path) -> Path:
    for i in range(4):
        _png(root / "cat" / f"c{i}.png", 10 * i, size=(12 + i, 10))
        _png(root / "dog" / f"d{i}.png", 200, mode="RGB")
    (root / "dog" / ".DS_Store").write_bytes(b"hidden files are skipped")
    return root


def test_image_folder_classes_split_and_shape(tmp_path: Path):
    data = load_task_data(_image_folder(tmp_path), "classify", image_shape=(1, 8, 8))
    assert data.num_classes == 2
    assert data.train_x.shape[1:] == (1, 8, 8) and len(data.train_x) + len(data.val_x) == 8
    assert data.train_y is not None and data.val_y is not None
    assert sorted(torch.cat([data.train_y, data.val_y]).tolist()) == [0] * 4 + [1] * 4
    assert "20% held-out split" in data.description


def test_a_non_image_file_is_named(tmp_path: Path):
    root = _image_folder(tmp_path)
    (root / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(SourceError, match=r"cat/notes.txt is not an image PIL can read"):
        load_task_data(root, "classify")


def test_flat_folder_is_not_a_classification_folder_but_autoencodes(tmp_path: Path):
    for i in range(3):
        _png(tmp_path / f"{i}.png", 50 * i)
    with pytest.raises(SourceError, match="one sub-folder per class"):
        load_task_data(tmp_path, "classify")
    data = load_task_data(tmp_path, "autoencode")
    assert data.train_y is None and data.train_x.shape[1:] == (1, 10, 12)


def test_train_and_val_folders_are_the_split(tmp_path: Path):
    _image_folder(tmp_path / "train")
    _image_folder(tmp_path / "val")
    data = load_task_data(tmp_path, "classify", image_shape=(3, 8, 8))
    assert len(data.train_x) == len(data.val_x) == 8
    assert "its train/ and val/ folders" in data.description


def _seg_folder(root: Path, n: int = 3) -> Path:
    (root / "masks").mkdir(parents=True)
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[4:12, 4:12] = 255  # a 0/255 mask: binary
    for i in range(n):
        _png(root / "images" / f"s{i}.png", 100 + i, size=(16, 16))
        Image.fromarray(mask).save(root / "masks" / f"s{i}.png")
    return root


def test_segmentation_folder_binary_masks(tmp_path: Path):
    data = load_task_data(_seg_folder(tmp_path), "segment", image_shape=(1, 8, 8))
    assert data.num_classes == 2
    assert data.train_y is not None and data.train_y.dtype == torch.int64
    assert data.train_y.shape[1:] == (8, 8) and set(data.train_y.unique().tolist()) == {0, 1}
    assert int(data.train_y[0].sum()) == 16  # the 8x8 square of 16x16, halved


def test_segmentation_mismatches_are_one_line_errors(tmp_path: Path):
    root = _seg_folder(tmp_path)
    (root / "masks" / "s2.png").unlink()
    with pytest.raises(SourceError, match=r"image s2\.png has no mask in masks/"):
        load_task_data(root, "segment")
    _png(root / "masks" / "s2.png", 0, size=(8, 8))
    with pytest.raises(SourceError, match=r"mask s2\.png is 8x8 but its image is 16x16"):
        load_task_data(root, "segment")
    _png(root / "masks" / "s2.png", 0, size=(16, 16), mode="RGB")
    with pytest.raises(SourceError, match="masks must be single-channel"):
        load_task_data(root, "segment")


def test_builtin_datasets_and_their_tasks():
    nuclei = load_task_data("nuclei", "segment")
    assert nuclei.train_y is not None and nuclei.train_y.shape[1:] == (128, 128)
    assert nuclei.train_y.dtype == torch.int64 and nuclei.num_classes == 2
    with pytest.raises(SourceError, match="dataset 'digits' is for task classify, not segment"):
        load_task_data("digits", "segment")
    with pytest.raises(SourceError, match="neither a built-in dataset"):
        load_task_data("mnist6k", "classify")


def test_match_input_converts_and_says_so():
    digits = load_task_data("digits", "classify")
    rgb = match_input(digits, 3, (16, 16))
    assert rgb.train_x.shape[1:] == (3, 16, 16)
    assert torch.equal(rgb.train_x[:, 0], rgb.train_x[:, 2])
    assert any("repeated 3 times" in n for n in rgb.notes)
    assert any("8x8 images are resized to the model's 16x16" in n for n in rgb.notes)
    assert match_input(digits, 1, (8, 8)).notes == ()


def test_a_classification_folder_needs_two_classes_with_images(tmp_path: Path):
    """One class folder would train a 1-output head that scores accuracy 1.0; an empty class
    folder would get an output no sample ever trains: both are refused, naming the folder."""
    one = tmp_path / "one"
    for i in range(4):
        _png(one / "cat" / f"c{i}.png", 10 * i)
    with pytest.raises(SourceError, match=r"at least 2 classes.*1 class folder \(cat/\)"):
        load_task_data(one, "classify")
    empty = _image_folder(tmp_path / "empty")
    (empty / "eel").mkdir()
    (empty / "eel" / ".hidden").write_bytes(b"hidden files do not count")
    with pytest.raises(SourceError, match=r"class folder eel/ holds no images") as info:
        load_task_data(empty, "classify")
    assert "\n" not in str(info.value)
    assert load_task_data(empty, "autoencode").train_y is None  # no classes there: accepted


def test_an_empty_class_folder_in_val_is_named(tmp_path: Path):
    _image_folder(tmp_path / "train")
    _image_folder(tmp_path / "val")
    for file in (tmp_path / "val" / "dog").glob("*.png"):
        file.unlink()
    with pytest.raises(SourceError, match=r"val: class folder dog/ holds no images"):
        load_task_data(tmp_path, "classify")
