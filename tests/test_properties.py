"""Property-based tests: every byte string gives a valid result or the documented error."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mnist_cnn.core.errors import CheckpointError, DataError
from mnist_cnn.data import mnist as data
from mnist_cnn.store.checkpoints import read_checkpoint_state

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def valid_npz_bytes() -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        x_train=rng.integers(0, 256, (8, 28, 28), dtype=np.uint8),
        y_train=rng.integers(0, 10, 8).astype(np.uint8),
        x_test=rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        y_test=rng.integers(0, 10, 3).astype(np.uint8),
    )
    return buffer.getvalue()


VALID_NPZ = valid_npz_bytes()


def write_temporary(content: bytes, suffix: str) -> Path:
    with tempfile.NamedTemporaryFile(suffix=suffix, delete=False) as handle:
        handle.write(content)
    return Path(handle.name)


def load_or_data_error(content: bytes) -> None:
    path = write_temporary(content, ".npz")
    try:
        arrays = data.read_npz(path)
        data.validate_arrays(arrays, str(path))
    except DataError:
        pass
    finally:
        path.unlink()


@SETTINGS
@given(st.binary(max_size=2048))
def test_random_bytes_as_idx(content: bytes) -> None:
    path = write_temporary(content, "")
    try:
        array = data.read_idx(path)
        assert array.dtype == np.uint8
    except DataError:
        pass
    finally:
        path.unlink()


def valid_checkpoint_bytes() -> bytes:
    import json

    buffer = io.BytesIO()
    row = {"epoch": 1, "loss": 2.3, "accuracy": 0.1, "val_loss": 2.2, "val_accuracy": 0.2, "seconds": 1.0}
    state = {"epochs_done": 1, "history": [row], "training_seconds": 1.0, "seed": 42}
    document = {"format": 1, "model": "Model_A", "state": state}
    np.savez(
        buffer,
        weight_0=np.zeros((3, 3, 1, 2), np.float32),
        document=np.frombuffer(json.dumps(document).encode(), np.uint8),
    )
    return buffer.getvalue()


VALID_CHECKPOINT = valid_checkpoint_bytes()


def read_or_checkpoint_error(content: bytes) -> None:
    path = write_temporary(content, ".npz")
    try:
        state = read_checkpoint_state(path)
        assert state.epochs_done == len(state.history)
    except CheckpointError:
        pass
    finally:
        path.unlink()


READERS = {
    "npz": (VALID_NPZ, load_or_data_error),
    "checkpoint": (VALID_CHECKPOINT, read_or_checkpoint_error),
}
reader_names = pytest.mark.parametrize("reader", list(READERS))


@reader_names
@SETTINGS
@given(content=st.binary(max_size=4096))
def test_random_bytes(reader: str, content: bytes) -> None:
    READERS[reader][1](content)


@reader_names
@SETTINGS
@given(fraction=st.floats(min_value=0.0, max_value=1.0, exclude_max=True))
def test_truncated_file(reader: str, fraction: float) -> None:
    valid, read = READERS[reader]
    read(valid[: int(len(valid) * fraction)])


@reader_names
@SETTINGS
@given(
    fraction=st.floats(min_value=0.0, max_value=1.0, exclude_max=True), value=st.integers(min_value=0, max_value=255)
)
def test_one_corrupted_byte(reader: str, fraction: float, value: int) -> None:
    valid, read = READERS[reader]
    corrupted = bytearray(valid)
    corrupted[int(len(valid) * fraction)] = value
    read(bytes(corrupted))
