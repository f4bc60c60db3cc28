"""Files written atomically: to a temporary name beside the target, then renamed.

A killed process never leaves half a file: the target is either the old one or the new one.
A temporary that a killed writer left behind carries ``TEMPORARY_MARK`` in its name, so the
next run in the folder can find and remove it. Reading helpers turn damage into one-line
``RunFolderError``s that name the file.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from mnist_cnn.core.errors import RunFolderError

# Names of files being written start with "." and hold this mark.
TEMPORARY_MARK = ".partial-"

Record = TypeVar("Record")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    A failing write (a full disk, a read-only folder) removes the temporary file and
    becomes a RunFolderError naming ``path``.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            prefix=f".{path.name}{TEMPORARY_MARK}", suffix=path.suffix or ".tmp", dir=path.parent
        )
        os.close(handle)
    except OSError as error:
        raise _write_error(path, error) from None
    temporary_path = Path(temporary)
    try:
        yield temporary_path
        with open(temporary_path, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary_path, path)
    except OSError as error:
        temporary_path.unlink(missing_ok=True)
        raise _write_error(path, error) from None
    except BaseException:
        temporary_path.unlink(missing_ok=True)
        raise


def _write_error(path: Path, error: OSError) -> RunFolderError:
    return RunFolderError(
        f"cannot write {path}: {error.strerror or error}; free some space or choose a writable folder"
    )


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_bytes(path: Path, content: bytes) -> None:
    with atomic_path(path) as temporary:
        temporary.write_bytes(content)


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunFolderError(f"{path} is missing; is {path.parent} a run folder made by mnist-cnn?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunFolderError(f"{path} is unreadable or corrupt ({error}); the run folder is damaged") from None


def read_record(path: Path, parse: Callable[[Any], Record]) -> Record:
    """Read a JSON file and parse it into a typed record; a malformed one names the file."""
    try:
        return parse(read_json(path))
    except ValueError as error:
        raise RunFolderError(f"{path} is not a valid mnist-cnn record ({error}); the run folder is damaged") from None


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    write_text(path, buffer.getvalue())


def read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            return list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise RunFolderError(f"{path} is unreadable ({error}); the run folder is damaged") from None
