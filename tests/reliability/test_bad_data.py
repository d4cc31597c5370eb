"""Bad ``--data`` inputs (the empirical input loader): refused in one line, nothing written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from entropy_probe.empirical.inputs import load_inputs
from entropy_probe.errors import SourceError
from entropy_probe.loading import load_model

from ._cli import assert_profiled, assert_refused, files_under, profile_json, run


def _images(folder: Path, n: int = 6, size: int = 28) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(
            folder / f"{i}.png"
        )
    return folder


def _refused_data(tmp_path: Path, data: Path | str, pattern: str, *args: str) -> str:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    before = files_under(tmp_path)
    message = assert_refused(
        profile_json("default", out / "p.json", "--data", data, *args),
        pattern,
        directory=tmp_path,
        before=before,
    )
    result = run("report", "-o", out / "r.html", "--method", "paper", "--data", data, *args)
    assert_refused(result, pattern, directory=tmp_path, before=before)
    return message


def test_image_folder_profiles(tmp_path: Path) -> None:
    folder = _images(tmp_path / "imgs")
    (folder / ".hidden").write_text("ignored", encoding="utf-8")  # hidden files are skipped
    out = tmp_path / "p.json"
    data = assert_profiled(profile_json("default", out, "--data", folder, "--samples", "6"), out)
    assert any(layer.get("empirical") for layer in data["layers"])


def test_non_image_file_in_the_folder_is_named(tmp_path: Path) -> None:
    folder = _images(tmp_path / "imgs")
    (folder / "notes.txt").write_text("not an image", encoding="utf-8")
    message = _refused_data(tmp_path, folder, r"notes\.txt is not an image PIL can read")
    assert "every file in a --data folder must be an image" in message


def test_truncated_image_is_named(tmp_path: Path) -> None:
    folder = _images(tmp_path / "imgs")
    png = (folder / "0.png").read_bytes()
    (folder / "0.png").write_bytes(png[: len(png) // 2])
    _refused_data(tmp_path, folder, r"0\.png is not an image PIL can read")


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    _refused_data(tmp_path, tmp_path / "empty", r"the folder holds no files")


def test_folder_for_a_model_that_does_not_take_images(tmp_path: Path) -> None:
    folder = _images(tmp_path / "imgs")
    _refused_data(
        tmp_path, folder, r"feeds images to 1- or 3-channel models", "--input-shape", "5,28,28"
    )


def test_single_file_that_is_not_npy(tmp_path: Path) -> None:
    folder = _images(tmp_path / "imgs")
    _refused_data(tmp_path, folder / "0.png", r"a file must be a \.npy array")


def test_npy_without_a_numpy_header(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    path.write_bytes(b"garbage bytes, not numpy")
    _refused_data(tmp_path, path, r"not a readable \.npy array: it has no NumPy header")


def test_truncated_npy(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((8, 1, 28, 28), np.float32))
    path.write_bytes(path.read_bytes()[:200])
    _refused_data(tmp_path, path, r"not a readable \.npy array")


def test_npy_of_the_wrong_shape(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((8, 3, 28, 28), np.float32))
    _refused_data(tmp_path, path, r"expected an array shaped \(N, 1, 28, 28\)")


def test_npy_with_nan(tmp_path: Path) -> None:
    arr = np.zeros((8, 1, 28, 28), np.float32)
    arr[3, 0, 5, 5] = np.nan
    path = tmp_path / "x.npy"
    np.save(path, arr)
    _refused_data(tmp_path, path, r"contains NaN or infinite values")


def test_too_few_samples(tmp_path: Path) -> None:
    folder = _images(tmp_path / "imgs", n=2)
    _refused_data(tmp_path, folder, r"gives 2 samples; the gaussian estimator needs at least 4")


def test_data_for_a_state_dict(tmp_path: Path, tiny_safetensors: Path) -> None:
    before = files_under(tmp_path)
    result = profile_json(tiny_safetensors, tmp_path / "p.json", "--data", "digits")
    assert_refused(result, r"--data needs a model that can run", directory=tmp_path, before=before)


def test_unknown_dataset_name(tmp_path: Path) -> None:
    _refused_data(tmp_path, "imagenet", r"not a built-in dataset")


def test_library_error_type() -> None:
    with pytest.raises(SourceError, match="no such file or folder"):
        load_inputs("no/such/folder", load_model("default"))


def test_empty_data_argument_is_refused(tmp_path: Path) -> None:
    """``--data ''`` used to read the current directory."""
    _refused_data(tmp_path, "", r"--data is empty")


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--estimator", "knn"), "--estimator only applies"),
        (("--k", "5", "--samples", "64"), "--samples, --k only apply"),
        (("--batch-size", "8"), "--batch-size only applies"),
    ],
)
def test_measuring_options_without_data_are_refused(
    tmp_path: Path, args: tuple[str, ...], named: str
) -> None:
    """They were ignored without a word."""
    before = files_under(tmp_path)
    message = assert_refused(
        profile_json("default", tmp_path / "p.json", *args),
        named,
        directory=tmp_path,
        before=before,
    )
    assert "--data" in message


def test_npy_of_identical_samples_is_refused(tmp_path: Path) -> None:
    """All-zero data gave a column of −inf entropies and no explanation."""
    path = tmp_path / "const.npy"
    np.save(path, np.zeros((16, 1, 28, 28), dtype=np.float32))
    _refused_data(tmp_path, path, r"all 16 samples are identical, so their entropy is −inf")
