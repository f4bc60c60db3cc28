"""ONNX exports of a run for the serving, page and export tests: the real `mnist-cnn export` command."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Result, cli


def export_onnx(run_dir: Path) -> Result:
    """``mnist-cnn export RUN_DIR --format onnx`` into ``RUN_DIR/exports/onnx``; what it answered."""
    result = cli("export", run_dir, "--format", "onnx")
    assert result.returncode == 0, result.stderr
    return result
