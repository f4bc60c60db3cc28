"""Run folders: every file is written atomically, so a killed run never leaves half a file."""

from __future__ import annotations

import contextlib
import csv
import datetime
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from mnist_cnn.errors import RunFolderError

CONFIG_FILE = "config.json"


def new_run_dir(root: str | Path = "runs") -> Path:
    """A fresh ``runs/<timestamp>`` folder (with a suffix if two runs start in the same second)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / stamp
    candidate, suffix = base, 1
    while candidate.exists():
        suffix += 1
        candidate = base.with_name(f"{stamp}-{suffix}")
    return candidate


def prepare_run_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunFolderError(f"cannot create run folder {path}: {error.strerror}; choose another --out") from None
    if not os.access(path, os.W_OK):
        raise RunFolderError(f"run folder {path} is not writable; choose another --out")
    return path


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix or ".tmp", dir=path.parent)
    os.close(handle)
    temporary_path = Path(temporary)
    try:
        yield temporary_path
        with open(temporary_path, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary_path, path)
    except BaseException:
        temporary_path.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunFolderError(f"{path} is missing; is {path.parent} a run folder made by mnist-cnn?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunFolderError(f"{path} is unreadable or corrupt ({error}); the run folder is damaged") from None


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    write_text(path, buffer.getvalue())


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def require_run_dir(path: str | Path) -> Path:
    """Check that ``path`` is a run folder (it has a config.json) before anything reads it."""
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise RunFolderError(f"run folder {run_dir} does not exist; pass a folder written by 'mnist-cnn experiment'")
    if not (run_dir / CONFIG_FILE).is_file():
        raise RunFolderError(f"{run_dir} is not a run folder (no {CONFIG_FILE}); pass a folder written by 'mnist-cnn experiment'")
    return run_dir
