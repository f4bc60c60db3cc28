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

from mnist_cnn.config import ExperimentConfig
from mnist_cnn.errors import RunFolderError

CONFIG_FILE = "config.json"
# Names of files being written start with "." and hold this mark; a process killed
# mid-write leaves one behind, and the next run in the folder removes it.
TEMPORARY_MARK = ".partial-"


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
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}{TEMPORARY_MARK}", suffix=path.suffix or ".tmp", dir=path.parent)
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


def remove_partial_files(run_dir: Path) -> list[Path]:
    """Delete what killed writers left behind (never a finished file)."""
    leftovers = [path for path in run_dir.rglob(f".*{TEMPORARY_MARK}*") if path.is_file()]
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers


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


STATUS_FILE = "status.json"
LOCK_FILE = "run.lock"


def write_status(run_dir: Path, state: str, **details: Any) -> None:
    """Record the run's state: running, interrupted, finished or failed."""
    record = {"state": state, "updated": datetime.datetime.now().isoformat(timespec="seconds"), "pid": os.getpid(), **details}
    write_json(run_dir / STATUS_FILE, record)


def read_status(run_dir: Path) -> dict[str, Any]:
    path = run_dir / STATUS_FILE
    return read_json(path) if path.is_file() else {}


def process_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # Alive, but someone else's.
        return True
    return True


class RunLock:
    """Refuses a second process writing into the same run folder; notices a stale lock.

    The lock file holds the owner's pid. It is created with O_EXCL, so two processes
    cannot both take it; a lock whose process has died (killed, power cut) is taken over.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_FILE

    def __enter__(self) -> "RunLock":
        for _ in range(2):
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self.owner()
                if owner is not None and owner != os.getpid() and process_is_alive(owner):
                    raise RunFolderError(
                        f"{self.path.parent} is in use by process {owner}; wait for it to finish or stop it, then resume"
                    ) from None
                self.path.unlink(missing_ok=True)  # Stale: its process is gone.
                continue
            except OSError as error:
                raise RunFolderError(f"cannot lock {self.path.parent}: {error.strerror}; is the folder writable?") from None
            with os.fdopen(handle, "w") as lock:
                lock.write(str(os.getpid()))
            return self
        raise RunFolderError(f"could not lock {self.path.parent}; another process keeps taking it")

    def owner(self) -> int | None:
        try:
            return int(self.path.read_text().strip())
        except (OSError, ValueError):
            return None

    def __exit__(self, *exc_info: Any) -> None:
        if self.owner() == os.getpid():
            self.path.unlink(missing_ok=True)


def stored_config(run_dir: str | Path) -> ExperimentConfig:
    """The config a run folder was made with (a clear error if it is not a run)."""
    run_dir = require_run_dir(run_dir)
    record = read_json(run_dir / CONFIG_FILE)
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise RunFolderError(f"{run_dir / CONFIG_FILE} is not an mnist-cnn run config; the run folder is damaged")
    try:
        return ExperimentConfig.from_dict(record["config"])
    except (TypeError, ValueError) as error:
        raise RunFolderError(f"{run_dir / CONFIG_FILE}: {error}") from None
