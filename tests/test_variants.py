"""Model variants as data: a TOML file or --variant, checked before anything runs, recorded whole."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from mnist_cnn.core.config import MODEL_VARIANTS, ExperimentConfig, ModelSpec
from mnist_cnn.core.variants import parse_inline_variant, read_variants_file
from mnist_cnn.train.models import build_variant
from mnist_cnn.train.trainers import plan_trainers
from tests.conftest import cli

STUDY = """\
# How many filters does this CNN need?
[F8]
filters = 8

[F16]
filters = 16

[AD]
name = "Model_A_dropout"
dropout = 0.5
"""


def write(tmp_path: Path, text: str, name: str = "variants.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_variants_file_states_only_what_differs_from_model_a(tmp_path: Path) -> None:
    f8, f16, dropout = read_variants_file(write(tmp_path, STUDY))
    assert (f8.key, f8.name, f8.filters, f8.kernel_size, f8.dense_units) == ("F8", "Model_F8", 8, 3, (200, 100))
    assert f16.filters == 16 and f16.describe() == "filters=16"
    assert (dropout.name, dropout.filters, dropout.dropout) == ("Model_A_dropout", 32, 0.5)
    inline = parse_inline_variant("k5: kernel_size=5, dense_units=[64, 32], optimizer=adam, learning_rate=0.001")
    assert (inline.key, inline.kernel_size, inline.dense_units, inline.optimizer) == ("K5", 5, (64, 32), "adam")


@pytest.mark.parametrize(
    "spec",
    [
        *MODEL_VARIANTS.values(),
        ModelSpec(key="F8", name="Model_F8", filters=8),
        ModelSpec(key="K5", name="Model_K5", filters=12, kernel_size=5, dense_units=(64,)),
        ModelSpec(key="AD", name="Model_AD", filters=32, dropout=0.5),
        ModelSpec(key="D0", name="Model_D0", filters=4, kernel_size=2, dense_units=()),
    ],
    ids=lambda spec: spec.key,
)
def test_the_parameter_count_from_the_spec_is_keras_own(spec: ModelSpec) -> None:
    assert spec.parameter_count() == build_variant(spec).count_params()


def test_dropout_layers_follow_the_pooling_and_each_hidden_layer() -> None:
    model = build_variant(ModelSpec(key="AD", name="Model_AD", filters=32, dropout=0.5))
    kinds = [layer.__class__.__name__ for layer in model.layers]
    assert kinds == ["Conv2D", "MaxPooling2D", "Dropout", "Flatten", "Dense", "Dropout", "Dense", "Dropout", "Dense"]
    assert all(layer.rate == 0.5 for layer in model.layers if hasattr(layer, "rate"))


@dataclasses.dataclass(frozen=True)
class SpecWithSmoothing(ModelSpec):
    """A spec with a field the fused trainer does not read (as a new ModelSpec field would be)."""

    label_smoothing: float = 0.0


def test_a_spec_the_fused_trainer_does_not_compute_falls_back_to_model_fit() -> None:
    dropout = ModelSpec(key="AD", name="Model_AD", filters=32, dropout=0.5)
    own_optimizer = ModelSpec(key="AO", name="Model_AO", filters=32, optimizer="adam", learning_rate=0.001)
    normed = SpecWithSmoothing(key="AN", name="Model_AN", filters=32, label_smoothing=0.1)
    choices = plan_trainers(ExperimentConfig(models=("A", "AD", "AO", "AN"), variants=(dropout, own_optimizer, normed)))
    assert [(choice.model, choice.trainer) for choice in choices] == [
        ("Model_A", "fused"),
        ("Model_AD", "fused"),  # The fused step computes Keras's dropout (its own masks).
        ("Model_AO", "fused"),  # The fused step applies the model's own compiled optimizer.
        ("Model_AN", "keras"),
    ]
    assert choices[3].reason == "the fused trainer does not compute label_smoothing"


def test_a_config_with_variants_round_trips_and_one_without_keeps_its_old_layout() -> None:
    variant = ModelSpec(key="F8", name="Model_F8", filters=8)
    listed = ModelSpec(
        key="T", name="Model_T", layers=("conv 16 5 same", "batchnorm", "pool 2", "globalpool"), augment=True
    )
    config = ExperimentConfig(models=("A", "F8", "T"), variants=(variant, listed))
    document = json.loads(json.dumps(config.to_dict()))
    assert ExperimentConfig.from_dict(document) == config
    # A family variant keeps the fields it always had; a listed one records its layers as written.
    assert document["variants"][0] == {
        "key": "F8", "name": "Model_F8", "filters": 8, "kernel_size": 3, "dense_units": [200, 100],
        "dropout": 0.0, "optimizer": None, "learning_rate": None,
    }  # fmt: skip
    assert document["variants"][1] == {
        "key": "T", "name": "Model_T", "optimizer": None, "learning_rate": None,
        "layers": ["conv 16 5 same", "batchnorm", "pool 2", "globalpool"], "augment": True,
    }  # fmt: skip
    assert "variants" not in ExperimentConfig().to_dict()
    assert [spec.name for spec in config.model_specs()] == ["Model_A", "Model_F8", "Model_T"]


BAD_FILES = [
    ("[X]\nfiltres = 16\n", "variants.toml:2: variant X: unknown variant field 'filtres'"),
    ('[X]\nfilters = "16"\n', "variants.toml:2: variant X: Model_X: filters must be a whole number"),
    ("[X]\nfilters = 8\nkernel_size = 28\n", "variants.toml:3: variant X: Model_X: kernel_size must be a whole number"),
    ("[X]\ndropout = 1.0\n", "variants.toml:2: variant X: Model_X: dropout must be a rate"),
    ("[X]\ndense_units = 200\n", "variants.toml:2: variant X: dense_units must be a list"),
    ('[X]\noptimizer = "lbfgs"\n', "variants.toml:2: variant X: Model_X: optimizer must be one of"),
    ("[X]\nfilters = 8\n[X]\nfilters = 9\n", "not valid TOML"),
    ("[A]\nfilters = 8\n", "variants.toml:1: variant 'A' clashes with the built-in Model_A"),
    # Layer lists: the line of the layer's own string.
    (
        '[X]\nlayers = [\n  "conv 8 3",\n  "conv2d 8",\n]\n',
        "variants.toml:4: variant X: layer 2 'conv2d 8': unknown layer",
    ),
    (
        '[X]\nlayers = ["conv 0 3", "flatten"]\n',
        "variants.toml:2: variant X: layer 1 'conv 0 3': number of filters must",
    ),
    ('[X]\nlayers = ["conv 8 3", "dropout 1.5", "flatten"]\n', "layer 2 'dropout 1.5': the dropout rate must be"),
    (
        '[X]\nname = "x"\nlayers = [\n "conv 8 3",\n "pool 30",\n "flatten"]\n',
        "variants.toml:5: variant X: layer 2 'pool 30': leaves nothing",
    ),
    ('[X]\nlayers = ["conv 8 3", "dense 10", "flatten"]\n', "layer 2 'dense 10': a Dense layer needs flat input"),
    ('[X]\nlayers = ["flatten", "conv 8 3"]\n', "layer 2 'conv 8 3': comes after the features are flat"),
    ('[X]\nlayers = ["conv 8 3", "pool 2"]\n', "the network ends with 13x13x8 feature maps"),
    ('[X]\nlayers = ["conv 8 3 samee", "flatten"]\n', "layer 1 'conv 8 3 samee': unexpected 'samee'"),
    ('[X]\nfilters = 8\nlayers = ["flatten"]\n', "variants.toml:2: variant X: Model_X: filters and layers both state"),
    ('[X]\nlayers = "conv 8 3"\n', "variants.toml:2: variant X: layers must be a list"),
    (
        '[X]\nlayers = ["flatten"]\naugment = "yes"\n',
        "variants.toml:3: variant X: Model_X: augment must be true or false",
    ),
    ('[X]\nname = "my model"\nfilters = 8\n', "variants.toml:2: variant X: variant name 'my model' must be"),
    ("filters = 8\n", "variants.toml:1: filters is not a variant table"),
    ("[X\nfilters = 8\n", "not valid TOML"),
    ("", "defines no variant"),
]


@pytest.mark.parametrize(("text", "message"), BAD_FILES)
def test_a_bad_variants_file_is_one_line_naming_file_line_and_field(tmp_path: Path, text: str, message: str) -> None:
    variants = write(tmp_path, text)
    result = cli("experiment", "--variants", variants, "--models", "A", "--epochs", "1", "--out", tmp_path / "run")
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--variant", "X filters=8"], "write KEY: field=value"),
        (["--variant", "X: filters"], "'filters' is not field=value"),
        (["--variant", "X: colour=red"], "--variant X: unknown variant field 'colour'"),
        (["--variant", "X: filters=8", "--variant", "X: filters=9"], "variant 'X' is defined twice"),
        (["--models", "A,Z"], "unknown model 'Z'"),
        (["--variants", "nowhere.toml"], "variants file nowhere.toml does not exist"),
    ],
)
def test_bad_inline_variants_and_models_are_one_line(tmp_path: Path, arguments: list[str], message: str) -> None:
    result = cli("experiment", *arguments, "--epochs", "1", "--out", tmp_path / "run")
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "run").exists()


def test_the_family_fields_expand_to_the_specifications_list() -> None:
    """Model_A is the list the specification states; the short fields write the same network."""
    assert MODEL_VARIANTS["A"].layer_list() == ("conv 32 3", "pool 2", "flatten", "dense 200", "dense 100")
    written = ModelSpec(key="L", name="Model_L", layers=MODEL_VARIANTS["A"].layer_list())
    assert written.network().layers == MODEL_VARIANTS["A"].network().layers
    assert written.parameter_count() == 1_103_230
    dropout = ModelSpec(key="AD", name="Model_AD", filters=16, kernel_size=5, dense_units=(64,), dropout=0.25)
    assert dropout.layer_list() == ("conv 16 5", "pool 2", "dropout 0.25", "flatten", "dense 64", "dropout 0.25")
    assert dropout.network().names() == (
        "conv",
        "pool",
        "pool_dropout",
        "flatten",
        "dense_1",
        "dense_1_dropout",
        "digit",
    )


@pytest.mark.parametrize("sweep", ["compare", "study"])
def test_the_published_sweeps_load_unchanged(sweep: str) -> None:
    """Every config.json of docs/compare and docs/study reads back to the same document, with the
    parameter counts its statistics list."""
    folder = Path(__file__).resolve().parent.parent / "docs" / sweep
    statistics = (folder / "statistics.md").read_text(encoding="utf-8")
    for path in sorted(folder.glob("seed-*/config.json")):
        stored = json.loads(path.read_text(encoding="utf-8"))["config"]
        config = ExperimentConfig.from_dict(stored)
        assert config.to_dict() == stored, path
        for spec in config.model_specs():
            assert spec.name in statistics
            if sweep == "study":  # Its ranking names each model's parameters.
                assert (
                    f"test accuracy, {spec.parameter_count():,} parameters"
                    in statistics.split(f"{spec.name}: ")[1].split("\n")[0]
                )


def test_the_variants_command_lists_built_ins_and_the_files(tmp_path: Path) -> None:
    result = cli("variants", "--variants", write(tmp_path, STUDY), "--variant", "K5: kernel_size=5")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["key", "name", "parameters"]
    assert [line.split()[0] for line in lines[1:]] == ["A", "B", "F8", "F16", "AD", "K5"]
    assert "1,103,230" in lines[1] and "2,185,150" in lines[2] and "filters=64" in lines[2]
    assert "Model_A_dropout" in lines[5] and "dropout=0.5" in lines[5]


@pytest.mark.slow
def test_a_run_of_file_variants_lives_without_the_file(tmp_path: Path) -> None:
    """config.json keeps each variant whole: evaluate, predict, report and serve need no file."""
    variants = write(tmp_path, STUDY)
    run_dir = tmp_path / "run"
    result = cli(
        "experiment", "--variants", variants, "--models", "F8,AD", "--limit", "300", "--epochs", "1", "--out", run_dir
    )
    assert result.returncode == 0, result.stderr
    assert "Model_F8: trained by fused JAX step" in result.stdout
    assert "Model_A_dropout: trained by fused JAX step" in result.stdout
    variants.unlink()
    record = json.loads((run_dir / "config.json").read_text())
    assert [spec["key"] for spec in record["config"]["variants"]] == ["F8", "AD"]
    assert record["config"]["variants"][1]["dropout"] == 0.5
    assert record["trainers"]["Model_A_dropout"]["trainer"] == "fused"
    for command in (["evaluate", run_dir], ["predict", run_dir, "--index", "0"], ["report", run_dir]):
        answered = cli(*command)
        assert answered.returncode == 0, (command, answered.stderr)
        assert "Model_F8" in answered.stdout or command[0] == "report"
    report = (run_dir / "report.html").read_text()
    assert "Model_F8" in report and "Model_A_dropout" in report and "Model_B" not in report

    from fastapi.testclient import TestClient

    from mnist_cnn.serve.app import create_app

    with TestClient(create_app(run_dir)) as client:
        names = [model["name"] for model in client.get("/api/models").json()["models"]]
    assert names == ["Model_F8", "Model_A_dropout"]


EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "study.toml"


@pytest.mark.parametrize("key", [spec.key for spec in read_variants_file(EXAMPLES)])
def test_every_example_variant_trains_the_same_with_both_trainers(key: str) -> None:
    """examples/study.toml, one epoch on 576 images with each trainer: the same weights (dropout
    draws its masks from each trainer's own generator: there the first epoch's loss agrees within noise)."""
    import keras
    import numpy as np

    from mnist_cnn.data.mnist import load_mnist
    from mnist_cnn.train.loop import train_model
    from mnist_cnn.train.models import seeded_model

    spec = next(spec for spec in read_variants_file(EXAMPLES) if spec.key == key)
    splits = load_mnist("bundled", limit=640)
    trained = {}
    for trainer in ("fused", "keras"):
        config = ExperimentConfig(
            models=(key,), variants=(spec,), epochs=1, seed=5, limit=640, steps_per_execution=8, trainer=trainer
        ).for_backend(keras.backend.backend())
        assert plan_trainers(config)[0].trainer == trainer
        model = seeded_model(spec, config)
        initial = model.get_weights()
        loss = train_model(model, splits, config).history[0]["loss"]
        trained[trainer] = (model.get_weights(), loss)  # The weights after training, not the initial ones.
        after = trained[trainer][0]
        assert not all(np.array_equal(a, b) for a, b in zip(initial, after, strict=True))  # It trained.
    (fused_weights, fused_loss), (keras_weights, keras_loss) = trained["fused"], trained["keras"]
    if spec.dropout:
        assert fused_loss == pytest.approx(keras_loss, rel=0.05)
        return
    for got, want in zip(fused_weights, keras_weights, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert fused_loss == pytest.approx(keras_loss, rel=1e-4)
