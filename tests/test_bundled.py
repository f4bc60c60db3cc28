"""The bundled run: the trained Model_A and Model_B inside the package, intact and as good as
recorded; predict, serve and export use it when no run folder is given, and write nothing into it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mnist_cnn.store import bundled
from mnist_cnn.store.bundled import BUNDLED_RUN, bundle_run, checksum_problems
from mnist_cnn.store.runs import RunFolder
from tests.conftest import cli, drawn_seven_png

SPECIFICATION = {"epochs": 60, "batch_size": 32, "optimizer": "sgd", "learning_rate": 0.01, "validation_size": 6000}


def test_the_bundled_run_is_intact_and_trained_by_the_specification() -> None:
    assert checksum_problems(BUNDLED_RUN) == []
    run = RunFolder.existing(BUNDLED_RUN)
    config = run.config()
    assert [spec.name for spec in config.model_specs()] == ["Model_A", "Model_B"]
    assert {name: getattr(config, name) for name in SPECIFICATION} == SPECIFICATION
    assert config.limit is None and config.augmentation is None
    assert run.read_status()["state"] == "finished"
    assert run.export_state("onnx").complete
    assert [folder.read_metrics().parameters for folder in run.trained_model_folders()] == [1_103_230, 2_185_150]


def test_the_bundled_models_score_the_test_accuracy_they_record() -> None:
    from mnist_cnn.experiment import evaluate_run

    evaluation = evaluate_run(BUNDLED_RUN)
    assert evaluation.test_images == 10_000
    for folder in RunFolder(BUNDLED_RUN).trained_model_folders():
        recorded = folder.read_metrics()
        # Another CPU's kernels round differently: at most a near-tie image or two may change its digit.
        assert evaluation.results[folder.name]["test_accuracy"] == pytest.approx(recorded.test_accuracy, abs=2e-4)
        assert recorded.test_accuracy > 0.98


def test_a_bundled_copy_lists_every_file_and_notices_a_change(onnx_run: Path, tmp_path: Path) -> None:
    destination = tmp_path / "bundled"
    listing = bundle_run(onnx_run, destination)
    names = listing.read_text().splitlines()
    assert any(line.endswith("  Model_A/model.keras") for line in names)
    assert any(line.endswith("  exports/onnx/Model_B.onnx") for line in names)
    assert not list(destination.rglob("checkpoint.npz")) and not (destination / "run.lock").exists()
    assert checksum_problems(destination) == []

    model = destination / "Model_A" / "model.keras"
    model.write_bytes(model.read_bytes() + b"\0")
    (destination / "extra.txt").write_text("x")
    (destination / "Model_B" / "metrics.json").unlink()
    assert sorted(checksum_problems(destination)) == [
        "Model_A/model.keras: its sha256 differs from SHA256SUMS",
        "Model_B/metrics.json: listed in SHA256SUMS but missing",
        "extra.txt: not listed in SHA256SUMS",
    ]


def test_a_run_without_onnx_exports_is_not_bundled(smoke_run: Path, tmp_path: Path) -> None:
    with pytest.raises(Exception, match="--format onnx"):
        bundle_run(smoke_run, tmp_path / "bundled")
    assert not (tmp_path / "bundled").exists()


def test_an_installation_without_the_bundled_run_says_what_to_pass(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(bundled, "BUNDLED_RUN", tmp_path / "empty")
    result = cli("predict", "--index", "0")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "no bundled models" in result.stderr and "pass a run folder written by" in result.stderr


def test_predict_answers_with_the_bundled_models_when_no_run_is_given() -> None:
    result = cli("predict", "--index", "0", "1", "2")
    assert result.returncode == 0, result.stderr
    assert "using the bundled run" in result.stderr
    lines = result.stdout.splitlines()
    truths = [line for line in lines if line.startswith("X_test")]
    assert truths == ["X_test[0] true 7", "X_test[1] true 2", "X_test[2] true 1"]
    assert sum(line.strip().startswith(("Model_A: 7", "Model_B: 7")) for line in lines) == 2


def test_predict_reads_a_first_path_that_is_a_file_as_an_image(tmp_path: Path) -> None:
    image = tmp_path / "seven.jpg"
    image.write_bytes(drawn_seven_png())
    result = cli("predict", image, "--json")
    assert result.returncode == 0, result.stderr
    assert "using the bundled run" in result.stderr and str(image) in result.stdout


def test_two_run_folders_are_refused_in_one_line(smoke_run: Path) -> None:
    result = cli("serve", smoke_run, "--run", smoke_run)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "two run folders given" in result.stderr


def test_export_of_the_bundled_run_writes_here_not_into_the_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    result = cli("export", "--format", "web")
    assert result.returncode == 0, result.stderr
    site = tmp_path / "exports" / "web"
    assert (site / "index.html").is_file() and (site / "models" / "Model_B.onnx").is_file()
    assert checksum_problems(BUNDLED_RUN) == []


def test_a_copy_of_the_bundled_run_is_an_ordinary_run(tmp_path: Path) -> None:
    shutil.copytree(BUNDLED_RUN, tmp_path / "run")
    result = cli("predict", "--run", tmp_path / "run", "--index", "0")
    assert result.returncode == 0, result.stderr
    assert "bundled" not in result.stderr
