"""Load benchmark of the draw-a-digit server: throughput and latency under concurrent clients.

Starts ``mnist-cnn serve RUN_DIR`` (or uses --url), then for each number of concurrent
clients sends real digit images (MNIST test digits, upscaled, PNG and JPEG, both
polarities) for a fixed time, and reports requests/s, p50/p99 latency and every non-200
status. The runtimes (JAX and onnxruntime, one and two processes; batching off for
reference) are measured side by side in one run, on the same machine, and each runtime's
memory is read after start-up and after 10,000 more requests. Then the overload case: 256
connections on a server with ``--queue-size 8``: how many are shed with 503, and how fast
the answered ones are. ``--runtime onnx`` needs the run's exports (``mnist-cnn export RUN_DIR
--format onnx``); the forward passes' time with 1 and 2 onnxruntime threads is printed too.

    python bench/serve_load.py RUN_DIR                 # make bench-serve
    python bench/serve_load.py RUN_DIR --variants jax,onnx --seconds 3
    python bench/serve_load.py --url http://127.0.0.1:8000 --label before
    python bench/serve_load.py --url http://127.0.0.1:8000 --label before --overload
    git worktree add /tmp/before COMMIT && python bench/serve_load.py RUN_DIR --against /tmp/before

Both sides share the machine's cores with this client, as a classroom's browsers would not:
read the numbers as a lower bound of what the server does alone.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
from PIL import Image

from bench_helpers import free_port
from mnist_cnn.core.environment import cpu_description

CLIENT_LEVELS = (1, 4, 16, 64)
# key: (label in the table, serve options). The two runtimes, one process and two.
SERVER_VARIANTS = {
    "unbatched": ("JAX, batching off (--max-batch 1)", ["--max-batch", "1"]),
    "jax": ("JAX (default)", []),
    "jax-2": ("JAX, --workers 2", ["--workers", "2"]),
    "onnx": ("onnxruntime (--runtime onnx)", ["--runtime", "onnx"]),
    "onnx-2": ("onnxruntime, --workers 2", ["--runtime", "onnx", "--workers", "2"]),
}
OVERLOAD_CONNECTIONS = 256
OVERLOAD_QUEUE = 8


def digit_bodies(count: int = 64) -> list[tuple[bytes, str]]:
    """Real digits as users send them: MNIST test images upscaled to 112 px, PNG and JPEG,
    light-on-dark and dark-on-light."""
    from mnist_cnn.data.mnist import load_raw

    _, (images, _), _ = load_raw("bundled")
    bodies = []
    for index in range(count):
        pixels = images[index] if index % 2 == 0 else 255 - images[index]
        image = Image.fromarray(pixels).resize((112, 112), Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        kind = "png" if index % 4 < 2 else "jpeg"
        image.save(buffer, format=kind.upper())
        bodies.append((buffer.getvalue(), f"image/{kind}"))
    return bodies


def start_server(run_dir: Path, options: list[str], source: Path | None = None) -> tuple[subprocess.Popen, str]:
    """``mnist-cnn serve RUN_DIR OPTIONS`` on a free port; from the checkout at ``source``
    (its ``src`` first on the path) instead of this one's, for a before/after comparison."""
    port = free_port()
    command = [sys.executable, "-m", "mnist_cnn.cli", "serve", str(run_dir), "--port", str(port), *options]
    environment = dict(os.environ)
    if source is not None:
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source / "src"), os.environ.get("PYTHONPATH")]))
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=environment)
    url = f"http://127.0.0.1:{port}"
    wait_until_up(url, process)
    return process, url


def wait_until_up(url: str, process: subprocess.Popen | None = None, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"the server stopped: {process.stderr.read()}")
        try:
            ready = httpx.get(f"{url}/readyz", timeout=2)
            # Measured with the compiled preparation: a server answers with NumPy's until it is
            # loaded (a server from before that did not name it had compiled it first).
            if ready.status_code == 200 and ready.json().get("preparation") != "compiling":
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not come up in {timeout:.0f} s")


async def load(url: str, clients: int, seconds: float, bodies: list[tuple[bytes, str]], requests: int | None = None):
    """``clients`` concurrent clients, each sending one request after the other, for ``seconds``
    (or ``requests`` in all). Returns latencies of 200s (s), status counts, wall time."""
    latencies: list[float] = []
    statuses: Counter = Counter()
    sent = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(number: int, http: httpx.AsyncClient) -> None:
        nonlocal sent
        index = number
        while time.perf_counter() < deadline and (requests is None or sent < requests):
            sent += 1
            body, kind = bodies[index % len(bodies)]
            index += clients
            start = time.perf_counter()
            try:
                response = await http.post(f"{url}/api/predict", content=body, headers={"Content-Type": kind})
                status = response.status_code
            except httpx.HTTPError as error:
                status = error.__class__.__name__
            if status == 200:
                latencies.append(time.perf_counter() - start)
            statuses[status] += 1

    async with httpx.AsyncClient(limits=limits, timeout=60) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(number, http) for number in range(clients)))
        wall = time.perf_counter() - started
    return latencies, statuses, wall


WRK_SCRIPT = """
local bodies, types = {}, {}
for line in io.lines("%(folder)s/index.txt") do
  local name, kind = line:match("(%%S+) (%%S+)")
  local file = io.open("%(folder)s/" .. name, "rb")
  bodies[#bodies + 1] = file:read("*a"); file:close()
  types[#types + 1] = kind
end
local n = 0
request = function()
  n = n %% #bodies + 1
  return wrk.format("POST", "/api/predict", {["Content-Type"] = types[n]}, bodies[n])
end
"""


def wrk_load(url: str, clients: int, seconds: float, bodies, folder: Path) -> dict:
    """wrk (C, one thread) as the load: it costs the shared cores far less than a Python client."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for index, (body, kind) in enumerate(bodies):
        (folder / f"{index}.img").write_bytes(body)
        lines.append(f"{index}.img {kind}")
    (folder / "index.txt").write_text("\n".join(lines) + "\n")
    (folder / "post.lua").write_text(WRK_SCRIPT % {"folder": folder})
    command = ["wrk", "-t1", f"-c{clients}", f"-d{seconds:g}s", "--latency", "-s", str(folder / "post.lua"), url]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return parse_wrk(output)


def parse_wrk(output: str) -> dict:
    def number_after(label: str, default: float = 0.0) -> float:
        match = re.search(rf"{re.escape(label)}\s+([\d.]+)(us|ms|s)?", output)
        if not match:
            return default
        value = float(match.group(1))
        return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}.get(match.group(2) or "", 1.0)

    total = int(re.search(r"(\d+) requests in", output).group(1))
    non_2xx = int(number_after("Non-2xx or 3xx responses:"))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    socket_errors = sum(int(value) for value in errors.groups()) if errors else 0
    return {
        "requests": total,
        "ok": total - non_2xx,
        "errors": {key: value for key, value in (("non-2xx", non_2xx), ("socket", socket_errors)) if value},
        "requests_per_second": number_after("Requests/sec:") * (total - non_2xx) / max(total, 1),
        "p50_ms": number_after("50%"),
        "p99_ms": number_after("99%"),
    }


def resident_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="utf-8") as handle:
        line = next(line for line in handle if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def process_tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and every process below it (the workers of
    ``serve --workers N`` are children of the one started): what the server spent, whoever ran it."""
    ticks = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # Gone since the listing.
            continue
        # After "pid (comm)": state, ppid, ... utime and stime are fields 14 and 15 of stat(5).
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / ticks
    total, waiting = 0.0, [pid]
    while waiting:
        current = waiting.pop()
        total += times.get(current, 0.0)
        waiting += children.get(current, [])
    return total


def children_cpu_seconds() -> float:
    """CPU seconds of this process's finished children (wrk): what the load itself cost."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def raw_load(url: str, clients: int, seconds: float, bodies: list[tuple[bytes, str]], retry_after: bool):
    """``load`` on bare asyncio streams (HTTP/1.1 keep-alive, requests written as bytes): at
    hundreds of connections httpx's own work would be much of what is timed. A client refused
    with 503 sends again at once, or (``retry_after``) after the Retry-After seconds, as a
    polite client does. Returns the latencies of 200s (s), status counts, wall time."""
    address = urlsplit(url)
    requests = [
        f"POST /api/predict HTTP/1.1\r\nHost: {address.netloc}\r\nContent-Type: {kind}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode("ascii")
        + body
        for body, kind in bodies
    ]
    latencies: list[float] = []
    statuses: Counter = Counter()
    deadline = time.perf_counter() + seconds

    async def client(number: int) -> None:
        reader, writer = await asyncio.open_connection(address.hostname, address.port)
        index = number
        try:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                writer.write(requests[index % len(requests)])
                index += clients
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                await reader.readexactly(int(re.search(rb"(?i)content-length: *(\d+)", head).group(1)))
                if status == 200:
                    latencies.append(time.perf_counter() - start)
                statuses[status] += 1
                wait = re.search(rb"(?i)retry-after: *(\d+)", head)
                if retry_after and status == 503 and wait:
                    await asyncio.sleep(min(int(wait.group(1)), max(deadline - time.perf_counter(), 0)))
        except (OSError, asyncio.IncompleteReadError) as error:
            statuses[error.__class__.__name__] += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(number) for number in range(clients)))
    return latencies, statuses, time.perf_counter() - started


def measure_overload(url: str, label: str, seconds: float, bodies, retry_after: bool) -> dict:
    """``OVERLOAD_CONNECTIONS`` clients at once on a server with a small queue: how many are
    shed (503) and the latency of the answered ones. Not wrk: its percentiles mix the quick
    503s in, and what matters is how long the answered ones waited. Refused clients send again
    at once (the worst case) or after Retry-After (``retry_after``)."""
    latencies, statuses, wall = asyncio.run(raw_load(url, OVERLOAD_CONNECTIONS, seconds, bodies, retry_after))
    row = {
        "server": label,
        "refused_clients": "wait Retry-After" if retry_after else "resend at once",
        "connections": OVERLOAD_CONNECTIONS,
        "requests": sum(statuses.values()),
        "ok": statuses.get(200, 0),
        "shed_503": statuses.get(503, 0),
        "errors": {str(status): count for status, count in statuses.items() if status not in (200, 503)},
        "requests_per_second": statuses.get(200, 0) / wall,
        "p50_ms": statistics.median(latencies) * 1000 if latencies else None,
        "p99_ms": float(np.percentile(latencies, 99)) * 1000 if latencies else None,
    }
    print(format_overload(row), flush=True)
    return row


def format_overload(row: dict) -> str:
    p50 = f"{row['p50_ms']:.1f}" if row["p50_ms"] is not None else "-"
    p99 = f"{row['p99_ms']:.1f}" if row["p99_ms"] is not None else "-"
    errors = ", ".join(f"{count} x {status}" for status, count in row["errors"].items()) or "none"
    return (
        f"| {row['server']} | {row['refused_clients']} | {row['ok']}/{row['requests']} | {row['shed_503']} "
        f"| {row['requests_per_second']:.0f} | {p50} | {p99} | {errors} |"
    )


def onnx_thread_timings(run_dir: Path, repeats: int = 20) -> list[dict]:
    """Both models' forward pass through onnxruntime with 1 and 2 intra-op threads, the
    server's batch sizes (median ms): what ONNX_INTRA_OP_THREADS was chosen from."""
    from mnist_cnn.predict.inference import onnx_forward
    from mnist_cnn.store.runs import RunFolder

    exports = RunFolder(run_dir).onnx_exports()
    rows = []
    for threads in (1, 2):
        forwards = [onnx_forward(model_file, intra_op_threads=threads) for model_file in exports.values()]
        for batch in (1, 16, 64):
            images = np.random.default_rng(0).random((batch, 28, 28, 1), dtype=np.float32)
            for forward in forwards:
                forward(images)  # Warm-up.
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                for forward in forwards:
                    forward(images)
                times.append((time.perf_counter() - start) * 1000)
            rows.append({"intra_op_threads": threads, "batch": batch, "median_ms": statistics.median(times)})
            print(f"| {threads} | {batch} | {statistics.median(times):.2f} |", flush=True)
    return rows


def preprocess_module(source: Path | None):
    """This checkout's ``mnist_cnn.predict.preprocess``, or the one of the checkout at
    ``source``, loaded under another name beside it (it imports only what both share)."""
    import importlib.util

    from mnist_cnn.predict import preprocess

    if source is None:
        return preprocess
    path = source / "src" / "mnist_cnn" / "predict" / "preprocess.py"
    spec = importlib.util.spec_from_file_location("preprocess_against", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def preparation_timings(bodies, sources: dict[str, Path | None], repeats: int = 5) -> dict[str, dict[str, float]]:
    """The server's per-request work outside the models, one thread, median ms per image over
    the bodies: decoding, preparing (polarity guessed, and said), the 28x28 PNG it sends back.
    One set of timings per source (label -> checkout, None for this one), the sources taking
    turns image by image: a shared machine's drift falls on all of them alike."""
    import base64

    modules = {label: preprocess_module(source) for label, source in sources.items()}
    said = ["light-on-dark" if index % 2 == 0 else "dark-on-light" for index in range(len(bodies))]
    timings = {}
    for label, module in modules.items():
        if hasattr(module, "use_compiled_preparation"):
            module.use_compiled_preparation()  # As the server prepares (numba, when it imports).
        images = [module.read_image_bytes(body) for body, _ in bodies]
        digits = [module.prepare_digit(image) for image in images]
        timings[label] = {
            "decode": lambda index, m=module: m.read_image_bytes(bodies[index][0]),
            "prepare, polarity guessed": lambda index, m=module, i=images: m.prepare_digit(i[index]),
            "prepare, polarity said": lambda index, m=module, i=images: m.prepare_digit(i[index], polarity=said[index]),
            "28x28 PNG, base64": lambda index, m=module, d=digits: base64.b64encode(m.digit_png(d[index])),
        }
    results: dict[str, dict[str, float]] = {label: {} for label in modules}
    for step in next(iter(timings.values())):
        times: dict[str, list[float]] = {label: [] for label in modules}
        for _ in range(repeats):
            for index in range(len(bodies)):
                for label in modules:
                    start = time.perf_counter()
                    timings[label][step](index)
                    times[label].append((time.perf_counter() - start) * 1000)
        for label in modules:
            results[label][step] = statistics.median(times[label])
    return results


def print_timings(args, bodies, results: dict) -> None:
    """The per-request steps of this checkout, beside --against's, measured in turns."""
    sources = {"here": None, **({args.against_label: args.against} if args.against else {})}
    timings = preparation_timings(bodies, sources)
    results["preparation"] = timings["here"]
    if args.against:
        there = results["preparation_" + args.against_label] = timings[args.against_label]
        print(f"| step | ms | ms, {args.against_label} | {args.against_label} / now |\n|---|---:|---:|---:|")
    else:
        there = None
        print("| step | ms |\n|---|---:|")
    for step, milliseconds in timings["here"].items():
        extra = f" {there[step]:.3f} | {there[step] / milliseconds:.2f}x |" if there else ""
        print(f"| {step} | {milliseconds:.3f} |{extra}", flush=True)


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def measure(
    url: str,
    label: str,
    seconds: float,
    bodies,
    client: str,
    levels=CLIENT_LEVELS,
    pid: int | None = None,
    warm_up: bool = True,
) -> list[dict]:
    """Every client level against ``url``; with the server's ``pid``, its CPU time per answered
    request too (and wrk's): how much of the two cores one answer costs, whatever the load."""
    rows = []
    if warm_up:
        asyncio.run(load(url, 4, 2.0, bodies))  # Warm-up: connections, caches, any late compilation.
    for clients in levels:
        server_before = process_tree_cpu_seconds(pid) if pid else None
        client_before = children_cpu_seconds()
        if client == "wrk":
            with tempfile.TemporaryDirectory() as folder:
                row = {"server": label, "clients": clients, **wrk_load(url, clients, seconds, bodies, Path(folder))}
        else:
            latencies, statuses, wall = asyncio.run(load(url, clients, seconds, bodies))
            row = {
                "server": label,
                "clients": clients,
                "requests": sum(statuses.values()),
                "ok": statuses.get(200, 0),
                "errors": {str(status): count for status, count in statuses.items() if status != 200},
                "requests_per_second": statuses.get(200, 0) / wall,
                "p50_ms": statistics.median(latencies) * 1000 if latencies else None,
                "p99_ms": float(np.percentile(latencies, 99)) * 1000 if latencies else None,
            }
        answered = max(row["ok"], 1)
        row["server_cpu_ms_per_request"] = (
            (process_tree_cpu_seconds(pid) - server_before) * 1000 / answered if pid else None
        )
        row["client_cpu_ms_per_request"] = (
            (children_cpu_seconds() - client_before) * 1000 / answered if client == "wrk" else None
        )
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


def print_level_header() -> None:
    print(
        "| server | clients | requests/s | p50 ms | p99 ms | answered | non-200 "
        "| server CPU ms/request | wrk CPU ms/request |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|")


def format_row(row: dict) -> str:
    p50 = f"{row['p50_ms']:.1f}" if row["p50_ms"] is not None else "-"
    p99 = f"{row['p99_ms']:.1f}" if row["p99_ms"] is not None else "-"
    errors = ", ".join(f"{count} x {status}" for status, count in row["errors"].items()) or "none"
    cpu = [row.get(key) for key in ("server_cpu_ms_per_request", "client_cpu_ms_per_request")]
    server_cpu, client_cpu = (f"{value:.2f}" if value is not None else "-" for value in cpu)
    return (
        f"| {row['server']} | {row['clients']} | {row['requests_per_second']:.0f} | {p50} | {p99} "
        f"| {row['ok']}/{row['requests']} | {errors} | {server_cpu} | {client_cpu} |"
    )


def memory_growth(process: subprocess.Popen, url: str, bodies, requests: int) -> dict:
    asyncio.run(load(url, 16, 3600, bodies, requests=500))
    before = resident_mib(process.pid)
    asyncio.run(load(url, 16, 3600, bodies, requests=requests))
    after = resident_mib(process.pid)
    return {"requests": requests, "rss_mib_after_start": before, "rss_mib_after": after, "growth_mib": after - before}


def sides(args, label: str) -> list[tuple[str, Path | None]]:
    """This checkout's server, and with --against the other checkout's, by their labels."""
    return [(label, None)] + ([(f"{label}, {args.against_label}", args.against)] if args.against else [])


def start_sides(args, label: str, options: list[str]) -> list[tuple[str, subprocess.Popen, str]]:
    started = []
    try:
        for name, source in sides(args, label):
            started.append((name, *start_server(args.run_dir, options, source)))
    except BaseException:
        stop_all(started)
        raise
    return started


def stop_all(started: list[tuple[str, subprocess.Popen, str]]) -> None:
    for _, process, _ in started:
        process.terminate()
        process.wait(timeout=30)


def measure_variants(args, bodies, results: dict) -> None:
    """Each chosen server variant started in turn, measured at every client level; the memory
    of each runtime's one-process server. With --against, that checkout's server of the same
    variant runs beside it, and the two are measured alternately, level by level: a shared
    machine's drift then falls on both sides alike."""
    for key in args.variants:
        label, options = SERVER_VARIANTS[key]
        started = start_sides(args, label, options)
        try:
            for _, _, url in started:
                asyncio.run(load(url, 4, 2.0, bodies))  # Warm-up: connections, caches, late compilation.
            for clients in CLIENT_LEVELS:
                for name, process, url in started:
                    results["rows"] += measure(
                        url, name, args.seconds, bodies, args.client, (clients,), process.pid, warm_up=False
                    )
            if key in ("jax", "onnx") and args.memory_requests:
                name, process, url = started[0]
                results["memory"][key] = memory_growth(process, url, bodies, args.memory_requests)
        finally:
            stop_all(started)


def measure_overloads(args, bodies, results: dict) -> None:
    print(
        f"\nOverload: {OVERLOAD_CONNECTIONS} connections, --queue-size {OVERLOAD_QUEUE}, "
        f"{args.seconds:g} s, asyncio client (p50/p99 of the answered requests)"
    )
    print("| server | refused clients | answered | shed (503) | answered/s | p50 ms | p99 ms | other non-200 |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for key in args.variants:
        if key not in ("jax", "onnx"):
            continue
        label, options = SERVER_VARIANTS[key]
        started = start_sides(args, label, [*options, "--queue-size", str(OVERLOAD_QUEUE)])
        try:
            for _, _, url in started:
                asyncio.run(load(url, 4, 2.0, bodies))  # Warm-up.
            for retry_after in (False, True):
                for name, _, url in started:
                    results["overload"].append(measure_overload(url, name, args.seconds, bodies, retry_after))
        finally:
            stop_all(started)


def print_memory(memory: dict) -> None:
    for key, growth in memory.items():
        print(
            f"Memory ({SERVER_VARIANTS[key][0]}): {growth['rss_mib_after_start']:.0f} MiB after start-up and 500 "
            f"requests, {growth['rss_mib_after']:.0f} MiB after {growth['requests']:,} more: "
            f"{growth['growth_mib']:+.1f} MiB"
        )


def variant_list(text: str) -> list[str]:
    keys = [key.strip() for key in text.split(",") if key.strip()]
    unknown = [key for key in keys if key not in SERVER_VARIANTS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown variant {unknown[0]!r}: choose from {', '.join(SERVER_VARIANTS)}")
    return keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, nargs="?", help="a run folder to serve (default: none, use --url)")
    parser.add_argument("--url", help="measure a server that is already running instead (default: start one)")
    parser.add_argument(
        "--label", default="external", help="the server's name in the table, with --url (default: %(default)s)"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="time per client level (default: %(default)s)")
    parser.add_argument(
        "--memory-requests", type=int, default=10_000, help="requests for the memory check (default: %(default)s)"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here (default: none)")
    parser.add_argument(
        "--variants",
        type=variant_list,
        default=list(SERVER_VARIANTS),
        help=f"comma-separated servers to start: {', '.join(SERVER_VARIANTS)} (default: all)",
    )
    parser.add_argument(
        "--overload",
        action="store_true",
        help=f"with --url: only the overload case ({OVERLOAD_CONNECTIONS} connections; start the server with "
        f"--queue-size {OVERLOAD_QUEUE}) (default: off)",
    )
    parser.add_argument(
        "--against",
        type=Path,
        default=None,
        help="also serve each variant from this checkout (its src/), side by side: e.g. a `git worktree add "
        "/tmp/before COMMIT` (default: none)",
    )
    parser.add_argument(
        "--against-label",
        default="before",
        help="what --against's rows are called in the tables (default: %(default)s)",
    )
    parser.add_argument(
        "--client",
        choices=("wrk", "python"),
        default="wrk" if shutil.which("wrk") else "python",
        help="load generator: wrk (Debian's wrk; lighter) or python (httpx) (default: wrk when installed)",
    )
    args = parser.parse_args()
    if not args.url and args.run_dir is None:
        parser.error("give a RUN_DIR to serve, or --url of a running server")
    if args.against is not None and not (args.against / "src" / "mnist_cnn" / "cli.py").is_file():
        parser.error(f"--against {args.against}: not a checkout of mnist-cnn (no src/mnist_cnn/cli.py there)")
    bodies = digit_bodies()
    # The machine may be shared (a training job, other work): its load says how noisy this run is.
    print(
        f"CPU: {cpu_description()}; {load_average()}; client {args.client}; {args.seconds:g} s per level; "
        f"{len(bodies)} distinct images (PNG and JPEG)"
    )
    results: dict = {
        "cpu": cpu_description(),
        "load_average_before": os.getloadavg(),
        "seconds_per_level": args.seconds,
        "client": args.client,
        "against": {"label": args.against_label, "source": str(args.against)} if args.against else None,
        "rows": [],
        "memory": {},
        "overload": [],
    }
    if args.url and args.overload:
        wait_until_up(args.url)
        print("| server | refused clients | answered | shed (503) | answered/s | p50 ms | p99 ms | other non-200 |")
        print("|---|---:|---:|---:|---:|---:|---:|---|")
        for retry_after in (False, True):
            results["overload"].append(measure_overload(args.url, args.label, args.seconds, bodies, retry_after))
    elif args.url:
        wait_until_up(args.url)
        print_level_header()
        results["rows"] += measure(args.url, args.label, args.seconds, bodies, args.client)
    else:
        print("\nPer request, outside the models (one thread, median ms per image):")
        print_timings(args, bodies, results)
        if any(key.startswith("onnx") for key in args.variants):
            print("\nonnxruntime forward passes, both models (median ms):\n| intra-op threads | batch | ms |")
            print("|---:|---:|---:|")
            results["onnx_threads"] = onnx_thread_timings(args.run_dir)
        print()
        print_level_header()
        measure_variants(args, bodies, results)
        print()
        print_memory(results["memory"])
        measure_overloads(args, bodies, results)
    results["load_average_after"] = os.getloadavg()
    print(f"\nAfter: {load_average()}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
