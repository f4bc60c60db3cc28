"""Property-based tests: every byte string gives a valid result or the documented error."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mnist_cnn import data
from mnist_cnn.checkpoints import CheckpointError, read_checkpoint
from mnist_cnn.errors import DataError

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
    handle = tempfile.NamedTemporaryFile(suffix=suffix, delete=False)
    handle.write(content)
    handle.close()
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
@given(st.binary(max_size=4096))
def test_random_bytes_as_npz(content: bytes) -> None:
    load_or_data_error(content)


@SETTINGS
@given(st.integers(min_value=0, max_value=len(VALID_NPZ) - 1))
def test_truncated_npz(cut: int) -> None:
    load_or_data_error(VALID_NPZ[:cut])


@SETTINGS
@given(st.integers(min_value=0, max_value=len(VALID_NPZ) - 1), st.integers(min_value=0, max_value=255))
def test_npz_with_one_corrupted_byte(position: int, value: int) -> None:
    corrupted = bytearray(VALID_NPZ)
    corrupted[position] = value
    load_or_data_error(bytes(corrupted))


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
    document = {"format": 1, "model": "Model_A", "state": {"epochs_done": 1, "history": [], "training_seconds": 1.0}}
    np.savez(buffer, weight_0=np.zeros((3, 3, 1, 2), np.float32), document=np.frombuffer(json.dumps(document).encode(), np.uint8))
    return buffer.getvalue()


VALID_CHECKPOINT = valid_checkpoint_bytes()


def read_or_checkpoint_error(content: bytes) -> None:
    path = write_temporary(content, ".npz")
    try:
        document, arrays = read_checkpoint(path)
        assert isinstance(document["state"], dict)
    except CheckpointError:
        pass
    finally:
        path.unlink()


@SETTINGS
@given(st.binary(max_size=4096))
def test_random_bytes_as_checkpoint(content: bytes) -> None:
    read_or_checkpoint_error(content)


@SETTINGS
@given(st.integers(min_value=0, max_value=len(VALID_CHECKPOINT) - 1))
def test_truncated_checkpoint(cut: int) -> None:
    read_or_checkpoint_error(VALID_CHECKPOINT[:cut])


@SETTINGS
@given(st.integers(min_value=0, max_value=len(VALID_CHECKPOINT) - 1), st.integers(min_value=0, max_value=255))
def test_checkpoint_with_one_corrupted_byte(position: int, value: int) -> None:
    corrupted = bytearray(VALID_CHECKPOINT)
    corrupted[position] = value
    read_or_checkpoint_error(bytes(corrupted))
