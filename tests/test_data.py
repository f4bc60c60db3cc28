import gzip
from pathlib import Path

import numpy as np
import pytest

from mnist_cnn.core.errors import DataError
from mnist_cnn.data import mnist as data


def test_bundled_mnist_is_split_as_the_specification_says() -> None:
    splits = data.load_mnist("bundled")
    assert splits.X_train.shape == (54000, 28, 28, 1)
    assert splits.X_valid.shape == (6000, 28, 28, 1)
    assert splits.X_test.shape == (10000, 28, 28, 1)
    assert splits.X_train.dtype == np.float32
    for images in (splits.X_train, splits.X_valid, splits.X_test):
        assert images.min() == 0.0 and images.max() == 1.0
    # Validation is the *first* 6,000 training images (labels from PROVENANCE.md).
    assert splits.y_valid[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert splits.y_test[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    counts = np.bincount(np.concatenate([splits.y_valid, splits.y_train]), minlength=10)
    assert counts.tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def test_auto_uses_the_bundled_copy_when_the_keras_cache_is_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert not data.keras_cache_is_genuine()
    assert data.load_mnist("auto", limit=10).source.startswith("bundled")


def test_auto_uses_keras_when_its_cache_holds_the_genuine_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_arrays
) -> None:
    cache = tmp_path / "datasets" / "mnist.npz"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"stand-in for the genuine file")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(data, "KERAS_MNIST_SHA256", data.file_sha256(cache))
    import keras

    monkeypatch.setattr(keras.datasets.mnist, "load_data", lambda: small_arrays)
    splits = data.load_mnist("auto")
    assert splits.source.startswith("keras")
    assert len(splits.X_train) == 1000 and len(splits.X_valid) == 6000


def test_keras_source_failing_offline_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import keras

    def offline() -> None:
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3]")

    monkeypatch.setattr(keras.datasets.mnist, "load_data", offline)
    with pytest.raises(DataError, match="--data bundled"):
        data.load_mnist("keras")


def save_npz(path: Path, arrays, **overrides) -> Path:
    (x_train, y_train), (x_test, y_test) = arrays
    content = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test, **overrides}
    np.savez(path, **content)
    return path


def test_an_npz_in_the_keras_layout_loads(tmp_path: Path, small_arrays) -> None:
    splits = data.load_mnist(str(save_npz(tmp_path / "mine.npz", small_arrays)))
    assert splits.sizes() == {"train": 1000, "valid": 6000, "test": 50}
    np.testing.assert_array_equal(splits.X_test[..., 0], (small_arrays[1][0] / 255.0).astype(np.float32))


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(size).to_bytes(4, "big") for size in array.shape)
    content = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(content))
    else:
        path.write_bytes(content)


@pytest.mark.parametrize("compress", [False, True])
def test_a_folder_of_idx_files_loads(tmp_path: Path, small_arrays, compress: bool) -> None:
    (x_train, y_train), (x_test, y_test) = small_arrays
    for name, array in zip(data.IDX_FILES.values(), (x_train, y_train, x_test, y_test), strict=True):
        write_idx(tmp_path / name, array, compress)
    splits = data.load_mnist(str(tmp_path))
    np.testing.assert_array_equal(splits.y_train, y_train[6000:])
    np.testing.assert_array_equal(splits.X_valid[..., 0], (x_train[:6000] / 255.0).astype(np.float32))


def test_limit_keeps_the_first_images(small_arrays, tmp_path: Path) -> None:
    splits = data.load_mnist(str(save_npz(tmp_path / "m.npz", small_arrays)), limit=20)
    assert splits.sizes() == {"train": 20, "valid": 20, "test": 20}
    np.testing.assert_array_equal(splits.y_train, small_arrays[0][1][6000:6020])


def corrupt_cases(small_arrays):
    (x_train, y_train), (x_test, y_test) = small_arrays
    return {
        "wrong shape": ({"x_train": x_train.reshape(7000, 784)}, "shape"),
        "wrong dtype": ({"x_test": x_test.astype(np.float32)}, "dtype"),
        "label out of range": ({"y_train": (y_train + 5).astype(np.uint8)}, "outside 0-9"),
        "label count mismatch": ({"y_test": y_test[:10]}, "match x_test"),
        "too few to split": ({"x_train": x_train[:100], "y_train": y_train[:100]}, "none after holding out"),
    }


@pytest.mark.parametrize(
    "case", ["wrong shape", "wrong dtype", "label out of range", "label count mismatch", "too few to split"]
)
def test_malformed_arrays_are_refused_with_the_file_named(tmp_path: Path, small_arrays, case: str) -> None:
    overrides, message = corrupt_cases(small_arrays)[case]
    path = save_npz(tmp_path / "bad.npz", small_arrays, **overrides)
    with pytest.raises(DataError, match=message) as raised:
        data.load_mnist(str(path))
    assert str(path) in str(raised.value)


def test_missing_arrays_truncated_and_non_npz_files_are_refused(tmp_path: Path, small_arrays) -> None:
    (x_train, y_train), _ = small_arrays
    missing = tmp_path / "missing.npz"
    np.savez(missing, x_train=x_train, y_train=y_train)
    with pytest.raises(DataError, match="missing"):
        data.load_mnist(str(missing))
    full = save_npz(tmp_path / "full.npz", small_arrays)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        data.load_mnist(str(truncated))
    text = tmp_path / "notes.npz"
    text.write_text("not an archive")
    with pytest.raises(
        DataError, match="notes.npz: cannot read it as an .npz file \\(it is not an .npz archive\\)"
    ) as refused:
        data.load_mnist(str(text))
    assert "pickle" not in str(refused.value)  # NumPy's advice about trusting pickles means nothing here.
    with pytest.raises(DataError, match="does not exist"):
        data.load_mnist(str(tmp_path / "nowhere.npz"))


def test_bad_idx_files_are_refused(tmp_path: Path, small_arrays) -> None:
    (x_train, y_train), (x_test, y_test) = small_arrays
    for name, array in zip(data.IDX_FILES.values(), (x_train, y_train, x_test, y_test), strict=True):
        write_idx(tmp_path / name, array, compress=False)
    labels = tmp_path / data.IDX_FILES["y_test"]
    labels.write_bytes(labels.read_bytes()[:-3])
    with pytest.raises(DataError, match="truncated"):
        data.load_mnist(str(tmp_path))
    labels.write_bytes(b"\x12\x34\x56\x78")
    with pytest.raises(DataError, match="magic"):
        data.load_mnist(str(tmp_path))
    labels.unlink()
    with pytest.raises(DataError, match="missing t10k-labels"):
        data.load_mnist(str(tmp_path))


def test_bundled_copy_is_checked_against_its_checksums(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with np.load(data.bundled_path()) as archive:
        arrays = {name: archive[name].copy() for name in data.ARRAY_NAMES}
    arrays["x_test"][0, 0, 0] ^= 1  # One flipped bit in one pixel.
    tampered = tmp_path / "mnist.npz"
    np.savez(tampered, **arrays)
    monkeypatch.setattr(data, "bundled_path", lambda: tampered)
    with pytest.raises(DataError, match="x_test does not match its published checksum"):
        data.load_mnist("bundled")
