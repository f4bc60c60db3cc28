"""The trained run that ships inside the package, so predict, serve and export answer at once.

``mnist_cnn/bundled/`` is an ordinary run folder: ``mnist-cnn experiment`` by the specification's
protocol (Model_A and Model_B, 60 epochs, batch 32, SGD 0.01, the default seed), then
``mnist-cnn export --format onnx``. ``make bundle`` copies such a run in (models, histories,
metrics, figures, report and ONNX exports; no checkpoint or lock) and lists the sha256 of every
file in SHA256SUMS, in ``sha256sum -c`` form. Nothing writes into it: predict and serve only read
it, and export writes into ``./exports/`` of the current folder.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from mnist_cnn.core.errors import RunFolderError
from mnist_cnn.core.files import sha256_listing
from mnist_cnn.store.layout import (
    CHECKPOINT_FILE,
    CHECKSUMS_FILE,
    CONFIG_FILE,
    EXPORTS_FOLDER,
    LOCK_FILE,
)
from mnist_cnn.store.runs import RunFolder

BUNDLED_RUN = Path(__file__).resolve().parents[1] / "bundled"
# The one export format the bundled run carries: what the page runs in the browser and what
# `serve --runtime onnx` answers with.
BUNDLED_EXPORT_FORMAT = "onnx"


def has_bundled_run() -> bool:
    return (BUNDLED_RUN / CONFIG_FILE).is_file()


def bundled_run() -> Path:
    """The bundled run's folder; one line saying what to pass instead when this installation has none."""
    if not has_bundled_run():
        raise RunFolderError(
            f"this installation has no bundled models ({BUNDLED_RUN} is empty); pass a run folder "
            "written by 'mnist-cnn experiment' (make bundle puts one in a checkout)"
        )
    return BUNDLED_RUN


def write_checksums(folder: Path) -> Path:
    """SHA256SUMS: ``<sha256>  <relative path>`` for each file, as ``sha256sum`` writes it."""
    path = folder / CHECKSUMS_FILE
    path.write_text(sha256_listing(folder, leave_out=CHECKSUMS_FILE), encoding="utf-8")
    return path


def parsed_listing(text: str) -> dict[str, str]:
    """A ``sha256sum`` listing as {relative path: digest}."""
    return {name: digest for digest, _, name in (line.partition("  ") for line in text.splitlines())}


def checksum_problems(folder: Path) -> list[str]:
    """What differs from SHA256SUMS: a changed, missing or unlisted file, one line each (none: intact)."""
    listing = folder / CHECKSUMS_FILE
    if not listing.is_file():
        return [f"{listing} is missing"]
    expected = parsed_listing(listing.read_text(encoding="utf-8"))
    actual = parsed_listing(sha256_listing(folder, leave_out=CHECKSUMS_FILE))
    problems = [f"{name}: listed in {CHECKSUMS_FILE} but missing" for name in expected if name not in actual]
    problems += [
        f"{name}: its sha256 differs from {CHECKSUMS_FILE}"
        for name, digest in expected.items()
        if name in actual and actual[name] != digest
    ]
    problems += [f"{name}: not listed in {CHECKSUMS_FILE}" for name in actual if name not in expected]
    return problems


def bundled_file(relative: Path) -> bool:
    """What a bundled run keeps: everything but checkpoints, locks, half-written files and other exports."""
    parts = relative.parts
    if relative.name in (CHECKPOINT_FILE, LOCK_FILE) or relative.name.startswith("."):
        return False
    return not (parts[0] == EXPORTS_FOLDER and (len(parts) < 3 or parts[1] != BUNDLED_EXPORT_FORMAT))


def bundle_run(source: Path, destination: Path = BUNDLED_RUN) -> Path:
    """Copy a finished, ONNX-exported run into ``destination`` (replacing what was there) with its SHA256SUMS."""
    run = RunFolder.existing(source)
    if run.read_status().get("state") != "finished":
        raise RunFolderError(f"{source} has not finished; finish or resume it before bundling it")
    state = run.export_state(BUNDLED_EXPORT_FORMAT)
    if not state.complete:
        raise RunFolderError(state.problem(run.path))
    if destination.exists():
        shutil.rmtree(destination)
    for path in sorted(run.path.rglob("*")):
        relative = path.relative_to(run.path)
        if path.is_file() and bundled_file(relative):
            (destination / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination / relative)
    return write_checksums(destination)


def main(argv: list[str] | None = None) -> int:
    """``python -m mnist_cnn.store.bundled RUN_DIR``: what ``make bundle`` runs."""
    parser = argparse.ArgumentParser(description="copy a finished, ONNX-exported run into the package")
    parser.add_argument("run_dir", type=Path, help="the run folder to bundle")
    parser.add_argument("--out", type=Path, default=BUNDLED_RUN, help="where to put it (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        listing = bundle_run(args.run_dir, args.out)
    except RunFolderError as error:
        print(f"mnist-cnn: error: {error}", file=sys.stderr)
        return 2
    size = sum(path.stat().st_size for path in args.out.rglob("*") if path.is_file())
    print(f"bundled {args.run_dir} into {args.out} ({size / 2**20:.1f} MiB); checksums in {listing}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
