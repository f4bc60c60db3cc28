"""How long ``mnist-cnn serve`` takes to be ready: ``make bench-serve-start``.

Starts ``mnist-cnn serve RUN_DIR`` twice on a free loopback port: once as on a fresh install
(numba's cache empty: NUMBA_CACHE_DIR is a new folder), once more on the cache the first start
left (every later start). For each, the seconds from the command to the announced address,
from the address to /readyz answering 200, and to the compiled image preparation being in use
(/readyz's "preparation"), and whether a digit posted at readiness is answered. The issue's
target: /readyz 200 within 5 s of the address on an idle 2-core machine; on a busy one read
the numbers as an upper bound.

    python bench/serve_start.py RUN_DIR [--workers 1,2] [--json docs/serve-start-bench.json]
    git worktree add /tmp/before COMMIT && python bench/serve_start.py RUN_DIR --source /tmp/before
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench_helpers import digit_png, free_port

LIMIT_S = 600.0  # A start that is not ready by then is reported as such.
POLL_S = 0.1


def lines_of(stream: io.TextIOBase, into: queue.Queue) -> None:
    for line in stream:
        into.put((time.monotonic(), line.rstrip("\n")))


def one_start(run_dir: Path, workers: int, numba_cache: Path, source: Path | None) -> dict[str, Any]:
    """One ``serve`` from launch to readiness (and to the compiled preparation), then SIGTERM."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "mnist_cnn.cli", "serve", str(run_dir), "--port", str(port)]
    command += ["--workers", str(workers)] if workers > 1 else []
    environment = {**os.environ, "NUMBA_CACHE_DIR": str(numba_cache), "PYTHONUNBUFFERED": "1"}
    if source is not None:
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source / "src"), os.environ.get("PYTHONPATH")]))
    started = time.monotonic()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment, start_new_session=True
    )
    output: queue.Queue = queue.Queue()
    threading.Thread(target=lines_of, args=(process.stdout, output), daemon=True).start()
    announced = ready = compiled = None
    printed: list[str] = []
    answer = None
    try:
        while time.monotonic() - started < LIMIT_S and (compiled is None or announced is None):
            while not output.empty():
                at, line = output.get()
                printed.append(f"{at - started:6.1f} s  {line}")
                if announced is None and "http://" in line:
                    announced = at - started
            if process.poll() is not None:
                break
            with contextlib.suppress(httpx.HTTPError):
                response = httpx.get(f"{url}/readyz", timeout=2)
                now = time.monotonic() - started
                if response.status_code == 200 and ready is None:
                    ready = now
                    posted = httpx.post(f"{url}/api/predict", content=digit_png(), timeout=30)
                    answer = posted.status_code
                # Before the preparation was compiled in the background, /readyz did not name it: it
                # was compiled once ready. "numpy": numba does not import, nothing to wait for.
                state = response.json().get("preparation", "compiled")
                if compiled is None and ready is not None and state in ("compiled", "numpy"):
                    compiled = now
            time.sleep(POLL_S)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    while not output.empty():
        at, line = output.get()
        printed.append(f"{at - started:6.1f} s  {line}")

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 1)

    return {
        "workers": workers,
        "to_address_s": rounded(announced),
        "to_ready_s": rounded(ready),
        "address_to_ready_s": rounded(ready - announced) if ready is not None and announced is not None else None,
        "to_compiled_preparation_s": rounded(compiled),
        "answer_at_ready": answer,
        "output": printed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--workers", default="1", help="comma-separated worker counts (default 1)")
    parser.add_argument("--source", type=Path, help="a checkout to measure instead of this one (its src/ first)")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)
    rows = []
    for workers in [int(count) for count in args.workers.split(",")]:
        with tempfile.TemporaryDirectory(prefix="mnist-cnn-numba-cache-") as cache:
            for case in ("first start (empty numba cache)", "later start (cache filled)"):
                row = {"case": case, **one_start(args.run_dir, workers, Path(cache), args.source)}
                rows.append(row)
                print(
                    f"{case}, --workers {workers}: address after {row['to_address_s']} s, /readyz 200 "
                    f"{row['address_to_ready_s']} s after it ({row['to_ready_s']} s in all), compiled preparation "
                    f"at {row['to_compiled_preparation_s']} s, a digit at readiness: {row['answer_at_ready']}",
                    flush=True,
                )
                if row["to_ready_s"] is None:
                    print("\n".join(row["output"]), file=sys.stderr)
    if args.json:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        args.json.write_text(json.dumps({"load_average_1min_at_end": load, "rows": rows}, indent=2) + "\n")
    return 0 if all(row["to_ready_s"] is not None and row["answer_at_ready"] == 200 for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
