"""Files written atomically: to a temporary name beside the target, then renamed.

A killed process never leaves half a file: the target is either the old one or the new one.
A temporary that a killed writer left behind carries ``TEMPORARY_MARK`` in its name, so the
next run in the folder can find and remove it. Reading helpers turn damage into one-line
``RunFolderError``s that name the file.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from mnist_cnn.core.errors import RunFolderError

# What a new file's mode is before the umask takes its bits away (as open() and touch do).
NEW_FILE_MODE = 0o666
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
        # mkstemp makes the file private (0600); the finished file gets the mode any new file
        # would get, so a report can be shared through a web server or with another user.
        os.chmod(temporary_path, NEW_FILE_MODE & ~current_umask())
        os.replace(temporary_path, path)
    except OSError as error:
        temporary_path.unlink(missing_ok=True)
        raise _write_error(path, error) from None
    except BaseException:
        temporary_path.unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process's umask (reading it means setting it: set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_error(path: Path, error: OSError) -> RunFolderError:
    """One line: what could not be written, why, and what to do about that cause."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        advice = "free some space or choose a folder on another disk"
    elif error.errno in (errno.EEXIST, errno.ENOTDIR):
        advice = f"a file stands where a folder is needed in {path.parent}: choose a folder"
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        advice = "choose a folder you can write to"
    else:
        advice = "check the folder, or choose another one"
    return RunFolderError(f"cannot write {path}: {error.strerror or error}; {advice}")


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
