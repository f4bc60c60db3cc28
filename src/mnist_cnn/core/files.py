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
import hashlib
import io
import json
import os
import shutil
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


@contextlib.contextmanager
def staging_folder(parent: Path) -> Iterator[Path]:
    """Yield a fresh hidden folder inside ``parent`` to build files in, removed afterwards.

    What is built there is moved into ``parent`` with ``move_into_place`` (a rename on the
    same disk); whatever is left, after a failure too, is deleted with the folder.
    """
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".staging{TEMPORARY_MARK}", dir=parent))
    except OSError as error:
        raise _write_error(parent, error) from None
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def remove_stale_staging_folders(parent: Path) -> None:
    """Delete the staging folders a killed writer left in ``parent`` (never a finished file)."""
    for leftover in parent.glob(f".staging{TEMPORARY_MARK}*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)


def move_into_place(source: Path, target: Path) -> None:
    """Rename the finished file or folder ``source`` to ``target``, replacing what is there.

    A file replaces a file in one rename. A folder cannot be renamed over a full folder, so
    the old one is first renamed aside, then removed: ``target`` is always the old or the
    new one, whole.
    """
    try:
        if source.is_dir() and target.exists():
            aside = target.with_name(f".{target.name}{TEMPORARY_MARK}{os.getpid()}")
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(target, aside)
            os.replace(source, target)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(source, target)
    except OSError as error:
        raise _write_error(target, error) from None


def path_sha256(path: Path) -> str:
    """The sha256 of a file's bytes; of a folder, the sha256 of its ``sha256sum`` listing.

    The listing has one ``<hex digest>  <path relative to the folder>`` line per file, sorted
    by path (as ``find . -type f | sort | sha256sum`` would list them, without the ``./``).
    """
    if path.is_file():
        return file_sha256(path)
    return hashlib.sha256(sha256_listing(path).encode("utf-8")).hexdigest()


def sha256_listing(folder: Path, leave_out: str | None = None) -> str:
    """``sha256sum``'s listing of every file under ``folder`` (but one named ``leave_out``):
    ``<hex digest>  <relative POSIX path>`` lines, sorted by path."""
    relative = sorted(
        file.relative_to(folder).as_posix() for file in folder.rglob("*") if file.is_file() and file.name != leave_out
    )
    return "".join(f"{file_sha256(folder / name)}  {name}\n" for name in relative)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
