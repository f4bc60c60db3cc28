"""mnist-cnn export: ONNX, SavedModel and LiteRT files that their own runtimes run as Keras does.

The suite runs the CLI in-process on JAX, so each export here goes the way it must from such a
process: a new Python on the TensorFlow backend. Every exported file is run in this test by its
runtime, independently of the exporter's own parity check, and compared with the Keras model
(here on JAX: another backend than the one that converted it).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mnist_cnn.core import environment
from mnist_cnn.core.errors import ExportError
from mnist_cnn.data.mnist import load_mnist
from mnist_cnn.store.runs import ExportFolder, RunFolder
from tests.conftest import SMOKE_LIMIT, Result, cli

MODELS = ("Model_A", "Model_B")
ARTIFACTS = {"onnx": "{}.onnx", "saved_model": "{}_saved_model", "litert": "{}.tflite"}
PARITY_LINE = re.compile(
    r"^(?P<model>Model_\w+): (?P<path>\S+) \((?P<format>\w+)\), (?P<same>\d+)/(?P<images>\d+) test images with "
    r"Keras's top digit, max probability difference (?P<difference>\S+)$"
)
# Each format's export test; only ONNX's runs in `make test-fast` (each starts a TensorFlow process).
FORMATS = [
    "onnx",
    pytest.param("saved_model", marks=pytest.mark.slow),
    pytest.param("litert", marks=pytest.mark.slow),
]


@pytest.fixture(scope="module")
def run_copy(smoke_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke run, copied: exports write into the run folder, which other test files read."""
    copy = tmp_path_factory.mktemp("export") / "run"
    shutil.copytree(smoke_run, copy)
    return copy


@pytest.fixture(scope="module")
def exports(run_copy: Path, onnx_run: Path, onnx_export: Result) -> Callable[[str], tuple[Path, Result]]:
    """``mnist-cnn export RUN --format F``, run once per format for the tests that read it: the run
    folder exported and what the command answered. ONNX's is the session's onnx_run (a copy of the
    smoke run, exported by the same command), which the serving tests need anyway; the other
    formats are written into a copy of the smoke run of this file's own."""
    done: dict[str, tuple[Path, Result]] = {"onnx": (onnx_run, onnx_export)}

    def export(export_format: str) -> tuple[Path, Result]:
        if export_format not in done:
            done[export_format] = (run_copy, cli("export", run_copy, "--format", export_format))
        return done[export_format]

    return export


def runtime_view(export_format: str, path: Path) -> tuple[list[dict], list[dict], Callable[[np.ndarray], np.ndarray]]:
    """What the format's own runtime reports for the file (inputs, outputs) and its predict."""
    if export_format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        types = {"tensor(float)": "float32"}

        def onnx_tensor(node: object) -> dict:
            shape = [dimension if isinstance(dimension, int) else None for dimension in node.shape]
            return {"name": node.name, "shape": shape, "dtype": types[node.type]}

        inputs = [onnx_tensor(node) for node in session.get_inputs()]
        outputs = [onnx_tensor(node) for node in session.get_outputs()]
        return inputs, outputs, lambda images: session.run(None, {inputs[0]["name"]: images})[0]
    if export_format == "saved_model":
        import tensorflow as tf

        signature = tf.saved_model.load(str(path)).signatures["serving_default"]

        def tensorflow_tensor(name: str, spec: object) -> dict:
            return {"name": name, "shape": spec.shape.as_list(), "dtype": spec.dtype.name}

        inputs = [tensorflow_tensor(*item) for item in signature.structured_input_signature[1].items()]
        outputs = [tensorflow_tensor(*item) for item in signature.structured_outputs.items()]
        return (
            inputs,
            outputs,
            lambda images: signature(**{inputs[0]["name"]: tf.constant(images)})[outputs[0]["name"]].numpy(),
        )
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))

    def litert_tensor(detail: dict) -> dict:
        shape = [None if dimension == -1 else int(dimension) for dimension in detail["shape_signature"]]
        return {"name": detail["name"], "shape": shape, "dtype": np.dtype(detail["dtype"]).name}

    def predict(images: np.ndarray) -> np.ndarray:
        index = interpreter.get_input_details()[0]["index"]
        interpreter.resize_tensor_input(index, list(images.shape))
        interpreter.allocate_tensors()
        interpreter.set_tensor(index, images)
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])

    inputs = [litert_tensor(detail) for detail in interpreter.get_input_details()]
    outputs = [litert_tensor(detail) for detail in interpreter.get_output_details()]
    return inputs, outputs, predict


def sha256_of(path: Path) -> str:
    """A file's sha256; a folder's: the sha256 of its `sha256sum` listing, as the manifest says."""
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    lines = sorted(
        (file.relative_to(path).as_posix(), hashlib.sha256(file.read_bytes()).hexdigest())
        for file in path.rglob("*")
        if file.is_file()
    )
    return hashlib.sha256("".join(f"{digest}  {name}\n" for name, digest in lines).encode()).hexdigest()


@pytest.mark.parametrize("export_format", FORMATS)
def test_export_writes_each_model_and_a_manifest_the_runtime_confirms(
    exports: Callable[[str], tuple[Path, Result]], export_format: str
) -> None:
    run_dir, result = exports(export_format)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # Not a line of TensorFlow's or LiteRT's start-up logging.
    folder = run_dir / "exports" / export_format
    assert folder == RunFolder(run_dir).export_folder(export_format)
    expected_files = {ARTIFACTS[export_format].format(name) for name in MODELS}
    assert {path.name for path in folder.iterdir()} == {*expected_files, "manifest.json"}  # No staging left.
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format"] == export_format
    assert manifest["run_id"] == json.loads((run_dir / "config.json").read_text())["run_id"]
    assert manifest["keras_backend"] == "tensorflow"
    assert manifest["input_contract"]["shape"] == [None, 28, 28, 1] and manifest["input_contract"]["range"] == [0, 1]
    assert manifest["output"]["shape"] == [None, 10]
    assert {"keras", "tensorflow"} <= set(manifest["libraries"])
    assert set(manifest["models"]) == set(MODELS)
    for name, entry in manifest["models"].items():
        path = folder / entry["file"]
        assert entry["file"] == ARTIFACTS[export_format].format(name)
        assert entry["sha256"] == sha256_of(path)
        inputs, outputs, _ = runtime_view(export_format, path)
        assert entry["inputs"] == inputs and entry["outputs"] == outputs
        assert inputs[0]["shape"] == [None, 28, 28, 1] and inputs[0]["dtype"] == "float32"
        assert outputs[0]["shape"] == [None, 10] and outputs[0]["dtype"] == "float32"


@pytest.mark.parametrize("export_format", FORMATS)
def test_export_prints_parity_on_the_runs_test_set_and_records_it(
    exports: Callable[[str], tuple[Path, Result]], export_format: str
) -> None:
    run_dir, result = exports(export_format)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    folder = run_dir / "exports" / export_format
    assert lines[-1] == f"wrote {folder / 'manifest.json'}"
    printed = [PARITY_LINE.match(line) for line in lines[:-1]]
    assert all(printed), result.stdout
    assert [match["model"] for match in printed] == list(MODELS)
    manifest = json.loads((folder / "manifest.json").read_text())
    for match in printed:
        assert match["format"] == export_format
        assert Path(match["path"]) == folder / manifest["models"][match["model"]]["file"]
        assert int(match["images"]) == SMOKE_LIMIT  # The run's --limit, as evaluate uses it.
        assert match["same"] == match["images"] and float(match["difference"]) <= 1e-5
        parity = manifest["models"][match["model"]]["parity"]
        assert parity["test_images"] == SMOKE_LIMIT and parity["same_top_digit"] == SMOKE_LIMIT
        assert parity["max_abs_difference"] <= 1e-5 and parity["passed"] is True
        assert float(match["difference"]) == pytest.approx(parity["max_abs_difference"], rel=0.1)


@pytest.mark.parametrize("export_format", FORMATS)
def test_the_exported_files_answer_as_the_keras_models_do_here(
    exports: Callable[[str], tuple[Path, Result]], export_format: str
) -> None:
    """Checked here, not by the exporter: this process's Keras (JAX) against the runtime."""
    run_dir, result = exports(export_format)
    assert result.returncode == 0
    images = load_mnist("bundled", limit=64).X_test
    models = RunFolder(run_dir).load_models()
    for name, model in models.items():
        _, _, predict = runtime_view(
            export_format, run_dir / "exports" / export_format / ARTIFACTS[export_format].format(name)
        )
        answered = predict(images)
        expected = model.predict(images, verbose=0)
        assert answered.shape == (64, 10)
        np.testing.assert_allclose(answered, expected, atol=1e-5)
        assert (answered.argmax(axis=1) == expected.argmax(axis=1)).all()


@pytest.mark.slow
def test_export_of_one_model_into_another_folder(smoke_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "deploy"
    result = cli("export", smoke_run, "--format", "onnx", "--models", "b", "--out", out)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert sorted(path.name for path in out.iterdir()) == ["Model_B.onnx", "manifest.json"]
    assert list(ExportFolder(out, "onnx").read_manifest()["models"]) == ["Model_B"]
    assert result.stdout.splitlines()[0].startswith(f"Model_B: {out / 'Model_B.onnx'} (onnx), ")
    assert not (smoke_run / "exports").exists()  # --out instead of the run's own folder.


def assert_refused(result: Result, *fragments: str) -> None:
    """One line on stderr naming the problem, exit 2, nothing on stdout, no traceback."""
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_a_bad_run_folder_is_refused_in_one_line(tmp_path: Path) -> None:
    assert_refused(cli("export", tmp_path / "missing", "--format", "onnx"), "does not exist")
    assert_refused(cli("export", tmp_path, "--format", "onnx"), "is not a run folder")
    assert list(tmp_path.iterdir()) == []


def test_a_bad_format_or_model_is_refused_in_one_line(smoke_run: Path, tmp_path: Path) -> None:
    assert_refused(cli("export", smoke_run, "--format", "tflite"), "invalid choice", "tflite")
    assert_refused(cli("export", smoke_run), "--format")
    assert_refused(
        cli("export", smoke_run, "--format", "onnx", "--models", "A,C", "--out", tmp_path / "out"),
        "has no model C",
        "A, B",
    )
    assert not (tmp_path / "out").exists() and not (smoke_run / "exports").exists()


@pytest.mark.parametrize(
    ("export_format", "module", "distribution"),
    [
        ("onnx", "onnxruntime", "onnxruntime"),
        ("onnx", "tf2onnx", "tf2onnx"),
        ("litert", "ai_edge_litert", "ai-edge-litert"),
    ],
)
def test_a_missing_export_package_is_named_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch, smoke_run: Path, tmp_path: Path, export_format: str, module: str, distribution: str
) -> None:
    installed = environment.package_installed
    monkeypatch.setattr(environment, "package_installed", lambda name: name != module and installed(name))
    result = cli("export", smoke_run, "--format", export_format, "--out", tmp_path / "out")
    assert_refused(result, f"exporting to {export_format} needs {distribution}, which is not installed")
    assert result.stderr.rstrip().endswith("pip install -e '.[export]'")
    assert not (tmp_path / "out").exists()


def test_an_export_that_disagrees_with_keras_is_refused() -> None:
    from mnist_cnn.export.exporter import PARITY_TOLERANCE, ExportedModel, measure_parity, refuse_disagreements
    from mnist_cnn.export.plan import FORMATS as EXPORT_FORMATS

    expected = np.array([[0.75, 0.25], [0.25, 0.75], [0.625, 0.375]], dtype=np.float32)
    nudge = 2.0**-20  # About 1e-6, and exact in float32 beside these values.
    same = measure_parity(expected, expected + np.float32(nudge))
    assert (same.test_images, same.same_top_digit, same.passed) == (3, 3, True)
    assert same.max_abs_difference == nudge
    flipped = measure_parity(expected, expected[:, ::-1])
    assert (flipped.same_top_digit, flipped.passed) == (0, False)
    drifted = measure_parity(expected, expected + 2 * PARITY_TOLERANCE)
    assert drifted.same_top_digit == 3 and not drifted.passed
    models = [ExportedModel("Model_A", "A", same, {}), ExportedModel("Model_B", "B", drifted, {})]
    with pytest.raises(
        ExportError, match=r"onnx export does not match Keras.*Model_B: 3/3 .*nothing was written"
    ) as raised:
        refuse_disagreements(models, EXPORT_FORMATS["onnx"])
    assert "Model_A" not in str(raised.value) and "\n" not in str(raised.value)
    with pytest.raises(ExportError, match="shape"):
        measure_parity(expected, expected[:2])


def test_a_finished_folder_replaces_the_old_one_whole(tmp_path: Path) -> None:
    from mnist_cnn.core.files import move_into_place, path_sha256, staging_folder

    target = tmp_path / "Model_A_saved_model"
    (target / "variables").mkdir(parents=True)
    (target / "variables" / "old.data").write_bytes(b"old")
    with staging_folder(tmp_path) as staging:
        built = staging / target.name
        (built / "variables").mkdir(parents=True)
        (built / "saved_model.pb").write_bytes(b"graph")
        (built / "variables" / "variables.data").write_bytes(b"weights")
        move_into_place(built, target)
    assert sorted(path.relative_to(target).as_posix() for path in target.rglob("*")) == [
        "saved_model.pb",
        "variables",
        "variables/variables.data",
    ]
    assert [path.name for path in tmp_path.iterdir()] == [target.name]  # Neither the staging nor the old one left.
    listing = "".join(
        f"{hashlib.sha256(content).hexdigest()}  {name}\n"
        for name, content in [("saved_model.pb", b"graph"), ("variables/variables.data", b"weights")]
    )
    assert path_sha256(target) == hashlib.sha256(listing.encode()).hexdigest() == sha256_of(target)
