"""The command line as a user runs it: the smoke experiment, evaluate, predict, bad input, bugs."""

import json
import os
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from mnist_cnn import cli as cli_module
from mnist_cnn.store.runs import RunFolder
from tests.conftest import SMOKE_EPOCHS, SMOKE_LIMIT, cli, drawn_seven_png, run_cli

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_experiment_writes_every_artifact(smoke_run: Path) -> None:
    config = json.loads((smoke_run / "config.json").read_text())
    assert config["config"]["epochs"] == SMOKE_EPOCHS and config["config"]["limit"] == SMOKE_LIMIT
    assert config["config"]["seed"] == 42 and config["config"]["backend"] == "jax"
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
        # Accuracy is a count of right answers over the 300 test images, not any number in [0, 1].
        correct = metrics["test_accuracy"] * SMOKE_LIMIT
        assert correct == pytest.approx(round(correct), abs=1e-3)
        assert len(metrics["seconds_per_epoch"]) == SMOKE_EPOCHS
        assert metrics["training_seconds"] >= sum(metrics["seconds_per_epoch"]) * 0.99
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
    assert json.loads((smoke_run / "status.json").read_text())["state"] == "finished"
    assert not list(smoke_run.rglob(".*"))  # No temporary files left behind.


def test_evaluate_reproduces_the_runs_own_test_metrics(smoke_run: Path) -> None:
    evaluated = cli("evaluate", smoke_run, "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    results = json.loads(evaluated.stdout)
    assert list(results) == ["Model_A", "Model_B"]
    for name, values in results.items():
        recorded = json.loads((smoke_run / name / "metrics.json").read_text())
        assert values["test_accuracy"] == recorded["test_accuracy"]
        assert values["test_loss"] == pytest.approx(recorded["test_loss"], rel=1e-6)
    text = cli("evaluate", smoke_run)
    assert f"Model_B: test accuracy {results['Model_B']['test_accuracy']:.4f}" in text.stdout
    assert f"({SMOKE_LIMIT} images)" in text.stdout


def test_predict_test_images_matches_what_the_run_wrote(smoke_run: Path) -> None:
    predicted = cli("predict", smoke_run, "--index", "0", "1", "2", "--json")
    assert predicted.returncode == 0, predicted.stderr
    assert json.loads(predicted.stdout) == json.loads((smoke_run / "predictions.json").read_text())
    text = cli("predict", smoke_run, "--index", "5000")  # Any test image, beyond the run's --limit too.
    assert text.returncode == 0, text.stderr
    assert "X_test[5000] true 3" in text.stdout and "Model_B:" in text.stdout and "top 3:" in text.stdout


def test_train_is_experiment_with_one_model(tmp_path: Path) -> None:
    result = cli("train", "--model", "B", "--limit", "64", "--epochs", "1", "--out", tmp_path / "b")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "b" / "Model_B" / "model.keras").is_file()
    assert not (tmp_path / "b" / "Model_A").exists()
    assert RunFolder(tmp_path / "b").config().models == ("B",)
    assert "Model_B epoch   1/1" in result.stdout


@pytest.mark.slow
def test_the_model_fit_path_on_tensorflow_runs_and_stays_quiet(tmp_path: Path) -> None:
    """Another backend needs another process. TF_ENABLE_ONEDNN_OPTS=1 makes TensorFlow log on
    import on any CPU (as it does by itself on AVX-512 ones): none of it may reach the user."""
    run_dir = tmp_path / "tf"
    arguments = (
        "train",
        "--model",
        "A",
        "--backend",
        "tensorflow",
        "--limit",
        "128",
        "--epochs",
        "2",
        "--out",
        run_dir,
    )
    result = run_cli(*arguments, env={"TF_ENABLE_ONEDNN_OPTS": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    config = json.loads((run_dir / "config.json").read_text())
    assert config["environment"]["backend"] == "tensorflow" and config["trainer_used"] == "keras"
    assert len((run_dir / "Model_A" / "history.csv").read_text().splitlines()) == 3


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
    damaged_metrics = tmp_path / "damaged-metrics"
    (damaged_metrics / "Model_A").mkdir(parents=True)
    (damaged_metrics / "config.json").write_text((smoke_run / "config.json").read_text())
    for name in ("model.keras", "history.csv"):
        (damaged_metrics / "Model_A" / name).write_bytes((smoke_run / "Model_A" / name).read_bytes())
    (damaged_metrics / "Model_A" / "metrics.json").write_text('{"model": "Model_A"}')
    return [
        (["experiment", "--epochs", "0"], "epochs must be a whole number of at least 1, got 0"),
        (["experiment", "--batch-size", "-4"], "batch size must be a whole number of at least 1"),
        (["experiment", "--epochs", "2.5"], "invalid int value"),
        (["experiment", "--models", "A,,B"], "unknown model ''"),
        (["experiment", "--learning-rate", "-1"], "learning rate must be positive"),
        (["experiment", "--models", "A,C"], "choose from A, B"),
        (["experiment", "--colour", "red"], "unrecognized arguments"),
        (["experiment", "--limit", "50", "--batch-size", "64", "--out", tmp_path / "small"], "larger than the 50"),
        (["experiment", "--resume", not_a_run], "not a run folder"),
        (["experiment", "--data", tmp_path / "nope.npz", "--out", tmp_path / "r"], "does not exist"),
        (["experiment", "--out", smoke_run / "Model_A" / "model.keras"], "cannot create run folder"),
        (["experiment", "--limit", "300", "--epochs", "2", "--out", damaged_metrics], "not a valid mnist-cnn record"),
        (["evaluate", tmp_path / "missing-run"], "does not exist"),
        (["evaluate", not_a_run], "not a run folder"),
        (["predict", corrupt], "not a readable .keras model"),
        (["predict", newer], "newer mnist-cnn"),
        (["predict", smoke_run, "--index", "99999"], "out of range"),
        (["predict", smoke_run, "seven.png", "--show-input", smoke_run / "config.json"], "a file stands where"),
        (["serve", tmp_path / "missing-run"], "does not exist"),
        (["serve", smoke_run, "--max-batch", "0"], "max batch must be a whole number of at least 1"),
        (["serve", smoke_run, "--port", "70000"], "port must be a whole number from 1 to 65535"),
        (["serve", smoke_run, "--workers", "0"], "workers must be a whole number of at least 1"),
        (["serve", smoke_run, "--batch-window-ms", "-1"], "batch window must be 0 ms or more"),
        (["predict", smoke_run, "--index", "-1"], "test index -1 is out of range"),
    ]


def test_bad_input_gives_one_line_and_exit_code_2(tmp_path: Path, smoke_run: Path) -> None:
    (tmp_path / "seven.png").write_bytes(drawn_seven_png())
    for arguments, message in bad_input_cases(tmp_path, smoke_run):
        arguments = [str(tmp_path / "seven.png") if argument == "seven.png" else argument for argument in arguments]
        result = cli(*arguments)
        assert result.returncode == 2, (arguments, result.stderr)
        assert message in result.stderr, (arguments, result.stderr)
        assert "Traceback" not in result.stderr, arguments
        assert len(result.stderr.strip().splitlines()) == 1, (arguments, result.stderr)


FOLDER = "FOLDER"  # Stands for the path under test in each command below.
COMMANDS_OPENING_A_FOLDER = [
    ["evaluate", FOLDER],
    ["predict", "--run", FOLDER],
    ["report", FOLDER],
    ["serve", FOLDER],
    ["export", FOLDER, "--format", "onnx"],
    ["experiment", "--resume", FOLDER],
    ["compare", "--resume", FOLDER],
    ["publish", FOLDER, "--out", "COPY"],
    ["track", FOLDER, "--track", "sqlite:///STORE"],
]


@pytest.mark.parametrize("command", COMMANDS_OPENING_A_FOLDER, ids=lambda command: " ".join(command[:2]))
def test_a_file_where_a_folder_is_wanted_is_not_a_folder_and_a_missing_one_does_not_exist(
    tmp_path: Path, command: list[str]
) -> None:
    """``mnist-cnn evaluate /etc/passwd``: the path is there, it is not a folder; each message says which."""
    notes = tmp_path / "notes.txt"
    notes.write_text("not a run")
    for path, message, not_said in ((tmp_path / "missing", "does not exist", "not a folder"),
                                    (notes, f"{notes} is not a folder", "does not exist")):  # fmt: skip
        replaced = {FOLDER: path, "COPY": tmp_path / "copy", "sqlite:///STORE": f"sqlite:///{tmp_path / 'm.db'}"}
        result = cli(*[replaced.get(argument, argument) for argument in command])
        assert result.returncode == 2, (path, result.stderr)
        assert message in result.stderr and not_said not in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["predict", FOLDER],
        ["predict", FOLDER, "seven.png"],
        ["serve", FOLDER],
        ["evaluate", FOLDER],
        ["export", FOLDER, "--format", "onnx"],
        ["export", FOLDER, "--format", "web"],
    ],
    ids=lambda command: " ".join(command[:1] + command[2:]),
)
def test_a_sweep_folder_where_a_run_is_wanted_names_a_seed_run_to_give(tmp_path: Path, command: list[str]) -> None:
    """A compare sweep holds one run per seed (seed-N/): the line says so and names one, the first
    with a trained model (published sweeps leave the models out: then the first seed)."""
    sweep = tmp_path / "sweep"
    for seed in (0, 1, 10, 2):
        (sweep / f"seed-{seed}").mkdir(parents=True)
        (sweep / f"seed-{seed}" / "config.json").write_text("{}")
    (sweep / "sweep.json").write_text("{}")
    for trained in (10, 2):
        (sweep / f"seed-{trained}" / "Model_A").mkdir()
        (sweep / f"seed-{trained}" / "Model_A" / "model.keras").write_bytes(b"")
    (tmp_path / "seven.png").write_bytes(drawn_seven_png())
    for path, suggested in ((sweep, sweep / "seed-2"), (DOCS / "compare", DOCS / "compare" / "seed-0")):
        replaced = {FOLDER: path, "seven.png": tmp_path / "seven.png"}
        result = cli(*[replaced.get(argument, argument) for argument in command])
        assert result.returncode == 2, result.stderr
        assert f"{path} is a sweep folder" in result.stderr and f"such as {suggested}\n" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_publishing_into_a_file_is_refused_as_not_a_folder(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "sweep.json").write_text("{}")  # Enough to be taken for a sweep: the destination is checked first.
    (tmp_path / "notes.txt").write_text("mine")
    result = cli("publish", sweep, "--out", tmp_path / "notes.txt")
    assert result.returncode == 2, result.stderr
    assert f"{tmp_path / 'notes.txt'} is not a folder" in result.stderr and result.stderr.count("\n") == 1
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_failed_start_leaves_no_run_folder_behind(tmp_path: Path) -> None:
    """Data that cannot be used is refused before the run folder exists: no empty 'failed' run."""
    (tmp_path / "notes.txt").write_text("my notes")
    for arguments in (["--limit", "5"], ["--data", tmp_path / "notes.txt"], ["--data", tmp_path / "nowhere.npz"]):
        result = cli("experiment", *arguments, "--epochs", "1", "--out", tmp_path / "run")
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert not (tmp_path / "run").exists(), arguments


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_a_bad_input_in_a_real_process_prints_only_its_one_line(backend: str, tmp_path: Path) -> None:
    """What the user sees in a terminal: the one line, and no TensorFlow log lines before it
    (TF_ENABLE_ONEDNN_OPTS=1 makes TensorFlow log on import on any CPU, as AVX-512 ones do)."""
    quiet = {"TF_ENABLE_ONEDNN_OPTS": "1"}
    result = run_cli("evaluate", tmp_path / "missing-run", "--backend", backend, env=quiet)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"mnist-cnn: error: run folder {tmp_path / 'missing-run'} does not exist; "
        "pass a folder written by 'mnist-cnn experiment'"
    ]
    if backend == "tensorflow":  # The in-process tests run JAX: another backend needs its own process.
        result = run_cli("experiment", "--backend", backend, "--trainer", "fused", env=quiet)
        assert result.returncode == 2
        assert result.stderr.splitlines() == [
            "mnist-cnn: error: Model_A: the fused trainer needs the JAX backend, not tensorflow; "
            "use --trainer keras or --trainer auto"
        ]


def test_a_bug_keeps_its_traceback_and_exits_1(smoke_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(args, backend):
        return {}["no such key"]

    monkeypatch.setitem(cli_module.COMMANDS, "evaluate", broken)
    result = cli("evaluate", smoke_run)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "KeyError: 'no such key'" in result.stderr
    assert "this is a bug in mnist-cnn" in result.stderr.splitlines()[-1]


def test_predict_image_files_processes_the_good_ones_and_reports_the_bad(smoke_run: Path, tmp_path: Path) -> None:
    good = tmp_path / "seven.jpg"
    good.write_bytes(drawn_seven_png())
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    blank = tmp_path / "blank.gif"
    Image.new("L", (40, 40), 255).save(blank)
    shown = tmp_path / "seen"
    missing = tmp_path / "missing.webp"
    result = cli("predict", smoke_run, good, not_image, blank, missing, "--json", "--show-input", shown)
    assert result.returncode == 2
    answers = json.loads(result.stdout)
    assert [entry["image"] for entry in answers] == [str(good)]
    assert set(answers[0]["predictions"]) == {"Model_A", "Model_B"}
    assert len(answers[0]["predictions"]["Model_A"]["top"]) == 3
    assert Image.open(shown / "seven-28x28.png").size == (28, 28)
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 3 and "Traceback" not in result.stderr
    assert "notes.png: not a readable image" in errors[0]
    assert "blank.gif: the image is blank" in errors[1]
    assert "missing.webp: no such file" in errors[2]
    piped = cli("predict", smoke_run, "-", stdin=good.read_bytes())
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.startswith("-\n") and "Model_A:" in piped.stdout and "top 3:" in piped.stdout
    # The same image gives the same answer whichever way it comes in.
    by_file = cli("predict", smoke_run, good)
    assert by_file.stdout.splitlines()[1:] == piped.stdout.splitlines()[1:]


def test_predict_takes_the_polarity_it_is_told(smoke_run: Path, tmp_path: Path) -> None:
    """A drawing whose ink runs along an edge, which the guess inverts: --polarity light-on-dark
    prepares it as prepare_digit is told to; an unknown polarity is refused before anything loads."""
    import numpy as np

    from mnist_cnn.predict.preprocess import prepare_digit
    from tests.test_preprocess import seven_along_the_top_edge

    drawing = tmp_path / "edge.png"
    seven_along_the_top_edge().save(drawing)
    for polarity in ("auto", "light-on-dark"):
        result = cli("predict", smoke_run, drawing, "--polarity", polarity, "--show-input", tmp_path / polarity)
        assert result.returncode == 0, result.stderr
        shown = np.asarray(Image.open(tmp_path / polarity / "edge-28x28.png"), dtype=np.float32) / 255
        expected = prepare_digit(seven_along_the_top_edge(), polarity=polarity)
        np.testing.assert_allclose(shown, expected, atol=1 / 255)
    assert not np.array_equal(
        *(np.asarray(Image.open(tmp_path / p / "edge-28x28.png")) for p in ("auto", "light-on-dark"))
    )
    refused = cli("predict", smoke_run, drawing, "--polarity", "white")
    assert refused.returncode == 2 and "invalid choice: 'white'" in refused.stderr


def test_predict_show_input_keeps_one_image_per_input_when_base_names_repeat(smoke_run: Path, tmp_path: Path) -> None:
    """a/seven.gif and b/seven.webp both become 'seven': the second gets a numbered name, not the first's."""
    import numpy as np

    from tests.test_preprocess import seven_along_the_top_edge

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = tmp_path / "a" / "seven.gif", tmp_path / "b" / "seven.webp"
    first.write_bytes(drawn_seven_png())
    seven_along_the_top_edge().save(second, format="WEBP", lossless=True)
    shown = tmp_path / "seen"
    result = cli("predict", smoke_run, first, second, "--json", "--show-input", shown)
    assert result.returncode == 0, result.stderr
    saved = [Path(entry["model_input"]) for entry in json.loads(result.stdout)]
    assert [path.name for path in saved] == ["seven-28x28.png", "seven-2-28x28.png"]
    assert sorted(path.name for path in shown.iterdir()) == sorted(path.name for path in saved)
    images = [np.asarray(Image.open(path)) for path in saved]
    assert not np.array_equal(*images)


def flag_help(monkeypatch: pytest.MonkeyPatch, command: str, flag: str) -> str:
    """What ``mnist-cnn COMMAND --help`` says of ``flag``, on one line (a wide terminal: no wrapping)."""
    monkeypatch.setenv("COLUMNS", "1000")
    text = cli(command, "--help").stdout
    start = text.index(f"\n  {flag} ")
    return " ".join(text[start : text.find("\n  -", start + 1)].split())


def test_the_help_of_model_flags_says_variants_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    for command, flag in (("train", "--model"), ("experiment", "--models"), ("compare", "--models")):
        said = flag_help(monkeypatch, command, flag)
        assert "one of" not in said and "A, B" in said and "--variants FILE or --variant" in said, (command, said)


def test_the_serve_help_lists_the_runtimes(monkeypatch: pytest.MonkeyPatch) -> None:
    from mnist_cnn.core.config import SERVE_RUNTIMES

    assert flag_help(monkeypatch, "serve", "--runtime").startswith("--runtime {" + ",".join(SERVE_RUNTIMES) + "}")


def test_the_track_help_says_where_it_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    for command in ("experiment", "compare", "track"):
        said = flag_help(monkeypatch, command, "--track")
        assert "mlflow.db in the current folder" in said and "mlflow ui --backend-store-uri" in said, said


def test_a_damaged_run_config_names_its_file_once(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{not json")
    for arguments in (["evaluate", run], ["experiment", "--resume", run]):
        result = cli(*arguments)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.count(str(run / "config.json")) == 1, result.stderr


def test_a_gpu_jax_cannot_see_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """JAX's CUDA plugin installed, but no GPU to use (a driver missing, a CPU machine): after the
    backend loads, one line and exit 2, and no run folder."""
    import jax

    from mnist_cnn.core import environment

    jax.devices()  # This process's JAX started on the CPU before --device gpu sets $JAX_PLATFORMS.
    monkeypatch.setattr(environment, "package_installed", lambda name: True)
    monkeypatch.setenv("JAX_PLATFORMS", "")  # Recorded, so what --device sets is undone after the test.
    result = cli("experiment", "--device", "gpu", "--limit", "300", "--epochs", "1", "--out", tmp_path / "run")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "--device gpu: JAX sees no GPU on this machine (its driver or CUDA); use --device cpu" in result.stderr
    assert not (tmp_path / "run").exists()


def test_the_device_that_trained_is_recorded_and_reported(smoke_run: Path) -> None:
    record = json.loads((smoke_run / "config.json").read_text())
    assert record["environment"]["device"] == "cpu"  # This machine has no GPU (CI's neither).
    assert "<tr><td>trained on</td><td>cpu</td></tr>" in (smoke_run / "report.html").read_text()


def test_device_cpu_keeps_jax_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from mnist_cnn.core.environment import select_device

    monkeypatch.setenv("JAX_PLATFORMS", "")  # Recorded, so the test's changes are undone after it.
    select_device("auto")
    assert os.environ["JAX_PLATFORMS"] == ""  # Left alone: JAX chooses, a GPU when it sees one.
    select_device("cpu")
    assert os.environ["JAX_PLATFORMS"] == "cpu"
    select_device("gpu")
    assert os.environ["JAX_PLATFORMS"] == "cuda"
