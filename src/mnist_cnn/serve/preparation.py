"""The server's image preparation: the NumPy reference from the first request, numba's compiled
kernels (predict.kernels) as soon as they are ready, never a start that waits for them.

Why: compiling the kernels takes about 20 s of a core, and a minute or two on a busy 2-core
machine; a server that compiled them before answering announced its address and then said
nothing for that long (130 s to /readyz on a fresh install). The two preparations give the same
28x28 digits to 1e-6 (tests/test_preprocess.py), so the server answers with the reference while
the kernels compile, and switches to them once they are there; /readyz waits for the models only.

The compiling is done by a short-lived process of its own (``OwnProcessCompile``), at a lower
priority, which leaves the machine code in numba's on-disk cache: a server that compiled in its
own process would hold its GIL for long stretches and answer slowly meanwhile. The server then
loads the kernels from that cache, in under a second, in a background thread. Every later start
finds the cache filled, and the process only loads it too. With ``--workers N`` the supervisor
runs that process once, and each worker waits for its word (``CompiledBySupervisor``), so that N
workers do not compile N times, and a replacement worker loads the kernels at once.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Protocol

import mnist_cnn
from mnist_cnn.predict.preprocess import compiled_preparation_in_use, use_compiled_preparation

# The compile says so once it has taken this long (loading the kernels from the cache takes
# well under a second), and says when it is done.
COMPILE_NOTICE_AFTER_S = 5.0
NO_NUMBA = 3  # The exit status of ``python -m mnist_cnn.serve.preparation`` where numba does not import.
COMPILED_MARK = "compiled"  # What the supervisor writes to the word file when the cache is filled.
WORD_FILE = "preparation"  # In serve --workers N's folder: the supervisor's word on the compiled kernels.
WORD_POLL_S = 0.25
SWITCHING = threading.Lock()
logger = logging.getLogger("mnist_cnn.serve")


class Source(Protocol):
    """Where the compiled kernels come from: ``wait`` returns once they are in numba's cache
    (True) or will not be (False: the server keeps the NumPy preparation); ``stop`` gives up."""

    def wait(self) -> bool: ...

    def stop(self) -> None: ...


class OwnProcessCompile:
    """numba's cache filled by ``python -m mnist_cnn.serve.preparation`` (``fill_numba_cache``)."""

    def __init__(self, word_file: Path | None = None) -> None:
        self.word_file = word_file  # Where to say it is done, for the workers (CompiledBySupervisor).
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._stopped = False

    def wait(self) -> bool:
        with self._lock:
            if self._stopped:
                return False
            # The same mnist_cnn as this process's, whatever its sys.path: numba's cache is keyed
            # by the kernels' file, and another copy's would be of no use here.
            package_root = str(Path(mnist_cnn.__file__).resolve().parent.parent)
            path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
            self._process = subprocess.Popen(
                [sys.executable, "-m", "mnist_cnn.serve.preparation"], env={**os.environ, "PYTHONPATH": path}
            )
        status = self._process.wait()
        compiled = status == 0
        if not compiled and not self._stopped and status != NO_NUMBA:
            print(
                f"mnist-cnn: the image preparation could not be compiled (its process exited with status {status}); "
                "the server prepares images with NumPy",
                flush=True,
            )
        if self.word_file is not None:
            self.word_file.write_text(COMPILED_MARK if compiled else "numpy", encoding="utf-8")
        return compiled

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            if self._process is not None and self._process.poll() is None:
                self._process.terminate()


class CompiledBySupervisor:
    """A worker of ``serve --workers N``: the kernels are in numba's cache once the supervisor's
    OwnProcessCompile has written its word file (at once, for a worker started after that)."""

    def __init__(self, word_file: Path) -> None:
        self.word_file = word_file
        self._stopped = threading.Event()

    def wait(self) -> bool:
        while not self._stopped.is_set():
            try:
                return self.word_file.read_text(encoding="utf-8") == COMPILED_MARK
            except FileNotFoundError:
                self._stopped.wait(WORD_POLL_S)
        return False

    def stop(self) -> None:
        self._stopped.set()


class Preparation:
    """The app's image preparation: NumPy's from the start; predict.kernels once ``source`` has
    them in numba's cache and this process has loaded them (in a background thread). ``source``
    None: no switch (the NumPy preparation, unless this process already uses the kernels)."""

    def __init__(self, source: Source | None) -> None:
        self.source = source
        self.done = threading.Event()  # Set once the switch is made, or will not be.
        self._thread = threading.Thread(target=self._switch, name="mnist-cnn-preparation", daemon=True)

    def start(self) -> Preparation:
        if self.source is None:
            self.done.set()
        else:
            self._thread.start()
        return self

    def stop(self) -> None:
        if self.source is not None:
            self.source.stop()

    @property
    def state(self) -> str:
        """compiled (the kernels prepare), compiling (NumPy prepares meanwhile), or numpy (for good)."""
        if compiled_preparation_in_use():
            return "compiled"
        return "numpy" if self.done.is_set() else "compiling"

    def _switch(self) -> None:
        try:
            # One switch at a time in a process (apps made one after another, as the tests do): a
            # second app finds the kernels in use and starts no process of its own.
            with SWITCHING:
                if not compiled_preparation_in_use() and self.source.wait() and not use_compiled_preparation():
                    logger.warning("numba does not import here: the server prepares images with NumPy")
        except Exception as error:  # Whatever broke, the NumPy preparation answers on: one line.
            print(f"mnist-cnn: the image preparation could not be compiled ({error}); it stays NumPy's", flush=True)
        finally:
            self.done.set()


def fill_numba_cache() -> int:
    """Compile predict.kernels into numba's cache (or load them from it): the exit status of the
    process OwnProcessCompile starts, NO_NUMBA where numba does not import. A compile that takes
    a while (a first start on a machine) says so, and says when it is done; a load from the
    cache says nothing."""
    compiling = threading.Event()

    def notice() -> None:
        compiling.set()
        print(
            "mnist-cnn: compiling the image preparation for this machine in the background (once: about a minute "
            "on 2 cores); the server answers meanwhile with the NumPy preparation",
            flush=True,
        )

    try:
        importlib.import_module("mnist_cnn.predict.kernels")  # numba, imported before the clock starts.
    except ImportError:
        return NO_NUMBA
    timer = threading.Timer(COMPILE_NOTICE_AFTER_S, notice)
    timer.daemon = True
    timer.start()
    try:
        compiled = use_compiled_preparation()
    finally:
        timer.cancel()
    if compiling.is_set():
        print("mnist-cnn: the image preparation is compiled; the server prepares with it from now on", flush=True)
    return 0 if compiled else NO_NUMBA


if __name__ == "__main__":
    # A lower priority than the server it works for, and deaf to a terminal's Ctrl-C: the server
    # stops it (SIGTERM), without a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(os, "nice"):
        os.nice(10)
    sys.exit(fill_numba_cache())
