"""Which mnist-cnn ran: the installed package's version, and the git commit when run from a checkout.

The version alone names a release, not the code: an editable install reports the same version
for every commit. So a run records both (config.json, the report's environment), and a result
can be traced to the exact source that produced it.
"""

from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "mnist-cnn"
# src/mnist_cnn/core/version.py -> the repository root, when the package runs from a checkout.
CHECKOUT_ROOT = Path(__file__).resolve().parents[3]


@functools.cache
def package_version() -> str:
    """The version in the installed package's metadata (pyproject.toml's), or 0+unknown."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # Imported from a source tree that was never installed.
        return "0+unknown"


@functools.cache
def git_commit() -> str | None:
    """The checkout's commit (12 hex digits, ``-dirty`` with uncommitted changes); None outside one."""
    if not (CHECKOUT_ROOT / ".git").exists():
        return None
    try:
        commit = _git("rev-parse", "--short=12", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no", "--", "src")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def _git(*arguments: str) -> str:
    return subprocess.run(
        ["git", "-C", str(CHECKOUT_ROOT), *arguments], capture_output=True, text=True, timeout=5, check=True
    ).stdout.strip()


def version_text() -> str:
    """'0.3.0 (commit 1a2b3c4d5e6f)': what ``--version`` and the report print."""
    commit = git_commit()
    return f"{package_version()} (commit {commit})" if commit else package_version()
