"""ONNX exports of a run for the serving and page tests: the real `mnist-cnn export` command."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import cli


def export_onnx(run_dir: Path) -> Path:
    """``mnist-cnn export RUN_DIR --format onnx``; return ``RUN_DIR/exports/onnx``."""
    result = cli("export", run_dir, "--format", "onnx")
    assert result.returncode == 0, result.stderr
    return run_dir / "exports" / "onnx"
