"""One writer per run folder: a PID lock file that notices when its owner has died."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mnist_cnn.core.errors import RunFolderError


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

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> RunLock:
        for _ in range(2):
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self.owner()
                if owner is not None and owner != os.getpid() and process_is_alive(owner):
                    raise RunFolderError(
                        f"{self.path.parent} is in use by process {owner}; "
                        "wait for it to finish or stop it, then resume"
                    ) from None
                self.path.unlink(missing_ok=True)  # Stale: its process is gone.
                continue
            except OSError as error:
                raise RunFolderError(
                    f"cannot lock {self.path.parent}: {error.strerror}; is the folder writable?"
                ) from None
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
