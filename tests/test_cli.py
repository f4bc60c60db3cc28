"""The real entry point, as a user runs it: the smoke experiment, evaluate, predict, bad input."""

import json
import zipfile
from pathlib import Path

import pytest

from tests.conftest import SMOKE_EPOCHS, SMOKE_LIMIT, run_cli


def test_experiment_writes_every_artifact(smoke_run: Path) -> None:
    config = json.loads((smoke_run / "config.json").read_text())
    assert config["config"]["epochs"] == SMOKE_EPOCHS and config["config"]["limit"] == SMOKE_LIMIT
    assert config["config"]["seed"] == 42
    assert config["environment"]["backend"] == "jax" and config["trainer_used"] == "fused"
    assert config["environment"]["libraries"]["keras"].startswith("3.")
    assert config["environment"]["cpu_count"] >= 1
    for name, parameters in (("Model_A", 1_103_230), ("Model_B", 2_185_150)):
        folder = smoke_run / name
        for artifact in ("model.keras", "history.csv", "metrics.json", "loss.png", "accuracy.png"):
            assert (folder / artifact).stat().st_size > 0, artifact
        assert zipfile.is_zipfile(folder / "model.keras")
        history = (folder / "history.csv").read_text().splitlines()
        assert history[0] == "epoch,loss,accuracy,val_loss,val_accuracy,seconds"
        assert len(history) == 1 + SMOKE_EPOCHS
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["parameters"] == parameters
        assert 0.0 <= metrics["test_accuracy"] <= 1.0
        assert len(metrics["seconds_per_epoch"]) == SMOKE_EPOCHS
        assert metrics["inference_ms_per_image_batched"] > 0
    for figure in ("comparison.png", "predictions.png", *(f"Model_{k}/loss.png" for k in "AB")):
        assert (smoke_run / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    comparison = json.loads((smoke_run / "comparison.json").read_text())
    assert set(comparison["models"]) == {"Model_A", "Model_B"}
    assert comparison["second_vs_first"]["parameter_ratio"] == pytest.approx(2_185_150 / 1_103_230)
    assert "| Test accuracy |" in (smoke_run / "comparison.md").read_text()
    predictions = json.loads((smoke_run / "predictions.json").read_text())
    assert predictions["indices"] == [0, 1, 2] and predictions["true_labels"] == [7, 2, 1]
    for answers in predictions["predictions"].values():
        assert len(answers) == 3 and all(0 <= answer["digit"] <= 9 for answer in answers)
    assert not list(smoke_run.rglob(".*"))  # No temporary files left behind.


def test_evaluate_and_predict_reuse_the_saved_models(smoke_run: Path) -> None:
    metrics = json.loads((smoke_run / "Model_A" / "metrics.json").read_text())
    evaluated = run_cli("evaluate", str(smoke_run), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    results = json.loads(evaluated.stdout)
    assert set(results) == {"Model_A", "Model_B"}
    assert 0.0 <= results["Model_A"]["test_accuracy"] <= 1.0
    predicted = run_cli("predict", str(smoke_run), "--index", "0", "1", "2", "--json")
    assert predicted.returncode == 0, predicted.stderr
    assert json.loads(predicted.stdout) == json.loads((smoke_run / "predictions.json").read_text())
    text = run_cli("predict", str(smoke_run), "--index", "5")
    assert "X_test[5] true 1" in text.stdout and "Model_B:" in text.stdout
    assert metrics["epochs"] == SMOKE_EPOCHS


def test_train_writes_one_model(tmp_path: Path) -> None:
    result = run_cli("train", "--model", "B", "--limit", "64", "--epochs", "1", "--out", str(tmp_path / "b"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "b" / "Model_B" / "model.keras").is_file()
    assert not (tmp_path / "b" / "Model_A").exists()


def test_the_model_fit_path_on_tensorflow_also_runs(tmp_path: Path) -> None:
    run_dir = tmp_path / "tf"
    result = run_cli("train", "--model", "A", "--backend", "tensorflow", "--limit", "128", "--epochs", "2", "--out", str(run_dir))
    assert result.returncode == 0, result.stderr
    config = json.loads((run_dir / "config.json").read_text())
    assert config["environment"]["backend"] == "tensorflow" and config["trainer_used"] == "keras"
    history = (run_dir / "Model_A" / "history.csv").read_text().splitlines()
    assert len(history) == 3


def bad_input_cases(tmp_path: Path, smoke_run: Path) -> list[tuple[list[str], str]]:
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    corrupt = tmp_path / "corrupt-run"
    (corrupt / "Model_A").mkdir(parents=True)
    (corrupt / "config.json").write_text((smoke_run / "config.json").read_text())
    (corrupt / "Model_A" / "model.keras").write_bytes(b"PK\x03\x04 broken")
    newer = tmp_path / "newer-run"
    newer.mkdir()
    newer_config = json.loads((smoke_run / "config.json").read_text())
    newer_config["config"]["future_setting"] = 1
    (newer / "config.json").write_text(json.dumps(newer_config))
    return [
        (["experiment", "--epochs", "0"], "must be at least 1"),
        (["experiment", "--batch-size", "-4"], "must be at least 1"),
        (["experiment", "--models", "A,C"], "choose from A, B"),
        (["experiment", "--colour", "red"], "unrecognized arguments"),
        (["experiment", "--backend", "tensorflow", "--trainer", "fused"], "needs the JAX backend"),
        (["experiment", "--limit", "50", "--batch-size", "64", "--out", str(tmp_path / "small")], "larger than the 50 training images"),
        (["experiment", "--resume", str(not_a_run)], "not a run folder"),
        (["experiment", "--data", str(tmp_path / "nope.npz"), "--out", str(tmp_path / "r")], "does not exist"),
        (["evaluate", str(tmp_path / "missing-run")], "does not exist"),
        (["evaluate", str(not_a_run)], "not a run folder"),
        (["predict", str(corrupt)], "not a readable .keras model"),
        (["predict", str(newer)], "newer mnist-cnn"),
        (["predict", str(smoke_run), "--index", "99999"], "out of range"),
    ]


def test_bad_input_gives_one_line_and_exit_code_2(tmp_path: Path, smoke_run: Path) -> None:
    for arguments, message in bad_input_cases(tmp_path, smoke_run):
        result = run_cli(*arguments)
        assert result.returncode == 2, (arguments, result.stderr)
        assert message in result.stderr, (arguments, result.stderr)
        assert "Traceback" not in result.stderr, arguments
        assert len(result.stderr.strip().splitlines()) == 1, (arguments, result.stderr)


def test_predict_image_files_processes_the_good_ones_and_reports_the_bad(smoke_run: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    from PIL import Image, ImageDraw

    good = tmp_path / "seven.jpg"
    image = Image.new("RGB", (300, 200), "white")
    ImageDraw.Draw(image).line([(120, 40), (200, 40), (140, 170)], fill="black", width=16)
    image.save(good)
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    blank = tmp_path / "blank.gif"
    Image.new("L", (40, 40), 255).save(blank)
    shown = tmp_path / "seen"
    result = run_cli("predict", str(smoke_run), str(good), str(not_image), str(blank), str(tmp_path / "missing.webp"),
                     "--json", "--show-input", str(shown))
    assert result.returncode == 2
    answers = json.loads(result.stdout)
    assert [entry["image"] for entry in answers] == [str(good)]
    assert set(answers[0]["predictions"]) == {"Model_A", "Model_B"}
    assert len(answers[0]["predictions"]["Model_A"]["top"]) == 3
    assert (shown / "seven-28x28.png").is_file()
    assert Image.open(shown / "seven-28x28.png").size == (28, 28)
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 3 and "Traceback" not in result.stderr
    assert "notes.png: not a readable image" in errors[0]
    assert "blank.gif: the image is blank" in errors[1]
    assert "missing.webp: no such file" in errors[2]
    piped = subprocess.run(
        [sys.executable, "-m", "mnist_cnn.cli", "predict", str(smoke_run), "-"],
        input=good.read_bytes(), capture_output=True, timeout=300,
    )
    assert piped.returncode == 0, piped.stderr
    assert b"Model_A:" in piped.stdout and b"top 3:" in piped.stdout
