"""MNIST, loaded the Keras way, offline when it has to be.

The specification loads the data with ``digit_mnist = keras.datasets.mnist``. That loader
downloads from the web unless the genuine file is in the Keras cache, so the package also
ships the real MNIST (``data/mnist.npz``, provenance in ``data/PROVENANCE.md``) and checks
it against published checksums before use.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import struct
import zipfile
import zlib
from importlib import resources
from pathlib import Path

import numpy as np

from mnist_cnn.core.errors import DataError
from mnist_cnn.core.files import file_sha256

BUNDLED_FILE = "mnist.npz"
# sha256 of each array's C-contiguous bytes (from data/PROVENANCE.md).
BUNDLED_ARRAY_SHA256 = {
    "x_train": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
    "y_train": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
    "x_test": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
    "y_test": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
}
# The file keras.datasets.mnist.load_data() downloads and accepts from its cache.
KERAS_MNIST_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"
ARRAY_NAMES = ("x_train", "y_train", "x_test", "y_test")
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}

RawArrays = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

# What a damaged zip archive (an .npz) can raise while being read: zipfile's own errors
# (BadZipFile, NotImplementedError for a corrupted compression method, zlib.error,
# struct.error, EOFError, KeyError for a vanished member), OSError, and NumPy's header
# parser (ValueError, UnicodeDecodeError, and TypeError for a dtype descriptor it does
# not know, e.g. '<v1' after a flipped byte).
ARCHIVE_ERRORS = (
    OSError,
    ValueError,
    KeyError,
    EOFError,
    TypeError,
    NotImplementedError,
    zipfile.BadZipFile,
    zlib.error,
    struct.error,
)


@dataclasses.dataclass(frozen=True)
class MnistSplits:
    """The specification's split: validation = first 6,000 training images, train = the rest."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_valid: np.ndarray
    y_valid: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    source: str

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.X_train), "valid": len(self.X_valid), "test": len(self.X_test)}

    def describe_sizes(self) -> str:
        """'54000 training, 6000 validation, 10000 test images': how the run's output and reports say it."""
        sizes = self.sizes()
        return f"{sizes['train']} training, {sizes['valid']} validation, {sizes['test']} test images"


def load_mnist(source: str = "auto", validation_size: int = 6000, limit: int | None = None) -> MnistSplits:
    """Load MNIST from ``source``, reshape to (N, 28, 28, 1), scale to [0, 1], split.

    ``source`` is ``auto``, ``keras``, ``bundled``, or a path to an ``.npz`` in the Keras
    layout or to a folder of the four IDX files. ``limit`` keeps only the first ``limit``
    training images (and at most ``limit`` validation and test images) for quick runs.
    """
    (X_train_full, y_train_full), (X_test, y_test), described = load_raw(source)
    if len(X_train_full) <= validation_size:
        raise DataError(
            f"{described}: {len(X_train_full)} training images leave none after holding out "
            f"{validation_size} for validation; use the full MNIST or a smaller validation size"
        )
    X_train_full = to_model_input(X_train_full)
    X_test = to_model_input(X_test)
    X_valid, X_train = X_train_full[:validation_size], X_train_full[validation_size:]
    y_valid, y_train = y_train_full[:validation_size], y_train_full[validation_size:]
    if limit is not None:
        X_train, y_train = X_train[:limit], y_train[:limit]
        X_valid, y_valid = X_valid[:limit], y_valid[:limit]
        X_test, y_test = X_test[: max(limit, 3)], y_test[: max(limit, 3)]
    return MnistSplits(
        X_train=X_train,
        y_train=y_train.astype("int64"),
        X_valid=X_valid,
        y_valid=y_valid.astype("int64"),
        X_test=X_test,
        y_test=y_test.astype("int64"),
        source=described,
    )


def epoch_order(seed: int, epoch: int, count: int) -> np.ndarray:
    """The shuffled order of the training images in epoch ``epoch`` (0-based).

    A function of the seed and the epoch only (not of any generator's state), so a run that
    resumes after an interruption visits the very batches it would have visited had it run
    straight through. Both trainers use it.
    """
    return np.random.default_rng([seed, epoch]).permutation(count)


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 (N, 28, 28, 1) in [0, 1]."""
    return (images.reshape(-1, 28, 28, 1) / 255.0).astype("float32")


def load_raw(source: str) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], str]:
    """Return ``(X_train_full, y_train_full), (X_test, y_test)`` as uint8 plus a description."""
    if source == "auto":
        source = "keras" if keras_cache_is_genuine() else "bundled"
    if source == "keras":
        arrays = load_with_keras()
        described = "keras (keras.datasets.mnist.load_data)"
    elif source == "bundled":
        path = bundled_path()
        arrays = read_npz(path, expected_sha256=BUNDLED_ARRAY_SHA256)
        described = "bundled (mnist_cnn/data/mnist.npz, checksums verified)"
    else:
        path = Path(source)
        if not path.exists():
            raise DataError(
                f"data source {source!r} does not exist: give auto, keras, bundled, "
                "an .npz file in the Keras layout, or a folder of the four MNIST IDX files"
            )
        arrays = read_idx_folder(path) if path.is_dir() else read_npz(path)
        described = str(path)
    validate_arrays(arrays, described)
    return arrays[0], arrays[1], described


def load_with_keras() -> RawArrays:
    """The specification's loading code, verbatim in spirit: keras.datasets.mnist."""
    import keras  # Deferred: importing keras fixes the backend, which the CLI chooses first.

    digit_mnist = keras.datasets.mnist
    try:
        (X_train_full, y_train_full), (X_test, y_test) = digit_mnist.load_data()
    except Exception as error:  # Keras raises plain Exceptions for network failures.
        raise DataError(
            f"keras.datasets.mnist could not load MNIST ({error.__class__.__name__}: {error}); "
            "without a network use --data bundled"
        ) from None
    return (X_train_full, y_train_full), (X_test, y_test)


def keras_cache_path() -> Path:
    """Where keras.datasets.mnist keeps mnist.npz (``$KERAS_HOME`` or ``~/.keras``)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "datasets" / "mnist.npz"


def keras_cache_is_genuine() -> bool:
    """True when Keras's loader would use its cache instead of downloading."""
    path = keras_cache_path()
    return path.is_file() and file_sha256(path) == KERAS_MNIST_SHA256


def bundled_path() -> Path:
    return Path(str(resources.files("mnist_cnn.data") / BUNDLED_FILE))


def read_npz(path: Path, expected_sha256: dict[str, str] | None = None) -> RawArrays:
    """Read a Keras-layout ``.npz``; every failure becomes a DataError naming the file."""
    arrays: dict[str, np.ndarray] = {}
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [name for name in ARRAY_NAMES if name not in archive.files]
            if missing:
                raise DataError(
                    f"{path}: not an MNIST file in the Keras layout, arrays {missing} are missing "
                    f"(expected {', '.join(ARRAY_NAMES)})"
                )
            for name in ARRAY_NAMES:
                arrays[name] = archive[name]
    except DataError:
        raise
    except ARCHIVE_ERRORS as error:
        raise DataError(
            f"{path}: cannot read it as an .npz file ({npz_problem(error)}); give an MNIST .npz in the Keras "
            "layout, a folder of the four IDX files, or --data bundled"
        ) from None
    if expected_sha256 is not None:
        for name, expected in expected_sha256.items():
            actual = hashlib.sha256(np.ascontiguousarray(arrays[name]).tobytes()).hexdigest()
            if actual != expected:
                raise DataError(
                    f"{path}: array {name} does not match its published checksum; "
                    "the bundled data is corrupt: reinstall mnist-cnn"
                )
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


def npz_problem(error: BaseException) -> str:
    """What is wrong with a file NumPy could not read as an .npz, in words for people.

    NumPy reads any file that is neither a zip archive nor an array file as a pickle, which
    ``allow_pickle=False`` refuses with a message about trusting pickles: for a user it means
    "this is not an .npz file".
    """
    if "pickled" in str(error):
        return "it is not an .npz archive"
    return f"{error.__class__.__name__}: it may be truncated or corrupt"


def read_idx_folder(folder: Path) -> RawArrays:
    """Read the four original IDX files (optionally gzipped) from ``folder``."""
    arrays = {}
    for name, stem in IDX_FILES.items():
        candidates = [folder / stem, folder / f"{stem}.gz"]
        found = next((path for path in candidates if path.is_file()), None)
        if found is None:
            raise DataError(f"{folder}: missing {stem} (or {stem}.gz); a folder source needs all four MNIST IDX files")
        arrays[name] = read_idx(found)
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file of unsigned bytes (magic 0x00000801 labels, 0x00000803 images)."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            content = handle.read()
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: cannot read it ({error}); the file may be truncated or corrupt") from None
    if len(content) < 4 or content[0:2] != b"\x00\x00" or content[2] != 0x08 or content[3] not in (1, 3):
        raise DataError(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
    dimensions = content[3]
    header_size = 4 + 4 * dimensions
    if len(content) < header_size:
        raise DataError(f"{path}: IDX header is truncated")
    shape = tuple(int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(dimensions))
    expected = int(np.prod(shape))
    if len(content) - header_size != expected:
        raise DataError(
            f"{path}: holds {len(content) - header_size} data bytes but its header promises {expected} "
            f"(shape {shape}); the file is truncated or corrupt"
        )
    return np.frombuffer(content, dtype=np.uint8, offset=header_size).reshape(shape)


def validate_arrays(arrays: RawArrays, described: str) -> None:
    """Check shapes, dtypes and labels; raise a DataError that names the source and the problem."""
    (x_train, y_train), (x_test, y_test) = arrays
    for name, images, labels in (("train", x_train, y_train), ("test", x_test, y_test)):
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise DataError(f"{described}: x_{name} has shape {images.shape}, expected (N, 28, 28)")
        if images.dtype != np.uint8:
            raise DataError(f"{described}: x_{name} has dtype {images.dtype}, expected uint8 pixels 0-255")
        if labels.ndim != 1 or len(labels) != len(images):
            raise DataError(
                f"{described}: y_{name} has shape {labels.shape}, expected ({len(images)},) to match x_{name}"
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{described}: y_{name} has dtype {labels.dtype}, expected integer labels")
        if len(labels) and (labels.min() < 0 or labels.max() > 9):
            raise DataError(f"{described}: y_{name} has labels outside 0-9 (min {labels.min()}, max {labels.max()})")
        if len(images) == 0:
            raise DataError(f"{described}: x_{name} is empty")
    if len(x_train) < 2:
        raise DataError(f"{described}: x_train has {len(x_train)} images, too few to split off a validation set")
