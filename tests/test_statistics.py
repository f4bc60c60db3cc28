"""A sweep's statistics as typed records: docs/compare (a real 5-seed sweep) reads back, writes
back byte for byte, is computed again from its seed folders, and is shown by one table of measures."""

from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path

import pytest

from mnist_cnn.core.config import ExperimentConfig, SweepConfig
from mnist_cnn.core.errors import ConfigError
from mnist_cnn.core.files import write_json
from mnist_cnn.core.sweep_results import PairedComparison, SweepStatistics
from mnist_cnn.report.measures import BY_FIELD, MEASURES, format_summary, format_value
from mnist_cnn.report.sweep import collect, compute_statistics, statistics_markdown, write_sweep_report
from mnist_cnn.store.runs import RunFolder
from mnist_cnn.store.sweeps import SweepFolder

from .conftest import cli

DOCS_COMPARE = Path(__file__).resolve().parent.parent / "docs" / "compare"


def read_docs_statistics() -> tuple[str, SweepStatistics]:
    text = (DOCS_COMPARE / "statistics.json").read_text(encoding="utf-8")
    return text, SweepStatistics.from_json(json.loads(text))


@pytest.fixture(scope="module")
def docs_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of docs/compare whose seeds count as finished.

    The stored seeds hold what statistics need (config.json, trial.json, each model's
    metrics.json and history.csv) but not the models (too large for the repository), which
    statistics do without; they were copied before ``mnist-cnn publish`` kept status.json,
    so that is stood in for.
    """
    sweep_dir = tmp_path_factory.mktemp("docs") / "compare"
    shutil.copytree(DOCS_COMPARE, sweep_dir)
    sweep = SweepFolder.existing(sweep_dir)
    for seed in sweep.seeds():
        sweep.seed_run(seed).write_status("finished")
    return sweep_dir


def test_statistics_json_reads_and_writes_back_byte_for_byte(tmp_path: Path) -> None:
    text, statistics = read_docs_statistics()
    write_json(tmp_path / "statistics.json", statistics.to_json())  # As a sweep writes it.
    assert (tmp_path / "statistics.json").read_text(encoding="utf-8") == text
    # The typed fields hold what the file holds.
    assert statistics.seeds_finished == (0, 1, 2, 3, 4) and statistics.experiment.epochs == 60
    assert statistics.model_names == ["Model_A", "Model_B"]
    assert statistics.models["Model_A"]["test_accuracy"].n == 5
    comparison = statistics.comparison
    assert comparison is not None and (comparison.first, comparison.second) == ("Model_A", "Model_B")
    assert comparison.seeds_needed == 18 and comparison.differences["test_accuracy"].summary.sd is not None
    assert statistics.trials[0].host == "vm" and statistics.trials[0].resumed


def as_plain_data(value: object) -> object:
    return json.loads(json.dumps(value))


def assert_same_document(ours: object, theirs: object, where: str = "") -> None:
    """The same JSON document, numbers equal to 1e-12 (relative, or absolute near zero)."""
    if isinstance(theirs, dict):
        assert isinstance(ours, dict) and list(ours) == list(theirs), where
        for key in theirs:
            assert_same_document(ours[key], theirs[key], f"{where}.{key}")
    elif isinstance(theirs, list):
        assert isinstance(ours, list) and len(ours) == len(theirs), where
        for position, (mine, other) in enumerate(zip(ours, theirs, strict=True)):
            assert_same_document(mine, other, f"{where}[{position}]")
    elif isinstance(theirs, float) and not isinstance(ours, bool):
        assert isinstance(ours, (int, float)) and math.isclose(ours, theirs, rel_tol=1e-12, abs_tol=1e-12), (
            where,
            ours,
            theirs,
        )
    else:
        assert ours == theirs and type(ours) is type(theirs), (where, ours, theirs)


def test_statistics_computed_again_from_the_seed_folders_are_the_stored_ones(docs_sweep: Path) -> None:
    sweep = SweepFolder.existing(docs_sweep)
    sweep_config = SweepConfig.from_json(sweep.read_settings())
    results = collect(sweep, sweep_config)
    assert [seed.seed for seed in results] == [0, 1, 2, 3, 4]
    statistics = compute_statistics(results, sweep_config)
    _, stored = read_docs_statistics()
    # The bootstrap intervals too: its generator is fixed.
    assert_same_document(as_plain_data(statistics.to_json()), as_plain_data(stored.to_json()))
    assert statistics.comparison is not None and statistics.comparison.verdict == stored.comparison.verdict


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda document: document.pop("trials"), "lacks"),
        (lambda document: document["models"]["Model_A"]["test_loss"].update(n=4), "n = 4"),
        (lambda document: document["comparison"]["differences"]["test_loss"].update(mean="x"), "a number"),
        (lambda document: document["experiment"].update(epochs=0), "epochs"),
    ],
)
def test_malformed_statistics_are_refused_with_a_value_error(change: object, message: str) -> None:
    document = json.loads((DOCS_COMPARE / "statistics.json").read_text())
    change(document)
    with pytest.raises(ValueError, match=message):
        SweepStatistics.from_json(document)


def test_one_precision_a_measure_and_never_scientific_notation() -> None:
    _, statistics = read_docs_statistics()
    seconds = BY_FIELD["training_seconds"]
    assert format_value(1077.505826762801, seconds) == "1077.5"
    assert format_summary(statistics.models["Model_A"]["training_seconds"], seconds) == (
        "1077.5 ± 317.4 [683.3, 1471.7]"
    )
    assert format_summary(statistics.models["Model_A"]["test_accuracy"], BY_FIELD["test_accuracy"]) == (
        "98.54 % ± 0.10 % [98.41 %, 98.66 %]"
    )
    assert format_value(2_185_150, BY_FIELD["parameters"]) == "2,185,150"
    assert format_value(None, BY_FIELD["test_loss"]) == "–"
    assert len({measure.field for measure in MEASURES}) == len(MEASURES)  # One entry a measure.


def test_statistics_markdown_keeps_its_text(docs_sweep: Path) -> None:
    _, statistics = read_docs_statistics()
    markdown = statistics_markdown(statistics, SweepFolder(docs_sweep))
    stored = (DOCS_COMPARE / "statistics.md").read_text(encoding="utf-8").splitlines()
    lines = markdown.splitlines()
    # Headings, settings, verdicts, power and the paired table read as they did.
    for line in stored[:12] + [line for line in stored if line.startswith(("| test ", "## ", "| ratio"))]:
        assert line in lines, line
    assert "| training time (s) | 1077.5 ± 317.4 [683.3, 1471.7] | 2287.6 ± 592.7 [1551.7, 3023.5] |" in lines
    assert "e+0" not in markdown


def test_sweep_report_speaks_of_the_sweeps_models_with_the_same_table(docs_sweep: Path) -> None:
    from .test_report import assert_offline, parse

    _, statistics = read_docs_statistics()
    report = write_sweep_report(docs_sweep, statistics)
    page = parse(report)
    assert_offline(report, page)
    text = " ".join(" ".join(page.text).split())
    assert "Is Model_B better than Model_A?" in text
    assert statistics.comparison is not None and statistics.comparison.verdict in text
    assert "1077.5 ± 317.4 [683.3, 1471.7]" in text and "e+0" not in text
    assert "needs about 18 seeds" in text


def test_a_one_model_sweep_shows_no_comparison(docs_sweep: Path, tmp_path: Path) -> None:
    _, statistics = read_docs_statistics()
    alone = SweepStatistics(
        seeds_requested=statistics.seeds_requested,
        seeds_finished=statistics.seeds_finished,
        experiment=ExperimentConfig(models=("B",), epochs=60, backend="jax"),
        models={"Model_B": statistics.models["Model_B"]},
        trials=statistics.trials,
    )
    assert SweepStatistics.from_json(json.loads(json.dumps(alone.to_json()))) == alone
    markdown = statistics_markdown(alone, SweepFolder(docs_sweep))
    assert markdown.startswith("# Model_B over seeds") and "Model_A" not in markdown and "Paired" not in markdown
    report = write_sweep_report(docs_sweep, alone)
    html = report.read_text(encoding="utf-8")
    assert "Model_B" in html and "Model_A" not in html and "Verdict" not in html and "paired" not in html


def test_paired_comparison_round_trips_on_its_own() -> None:
    _, statistics = read_docs_statistics()
    comparison = statistics.comparison
    assert comparison is not None
    assert PairedComparison.from_json(as_plain_data(comparison.to_json())) == comparison


def test_report_of_a_sweep_with_no_finished_seed_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    config = SweepConfig(experiment=ExperimentConfig(limit=300, epochs=1, backend="jax"), seeds=(0, 1))
    SweepFolder(sweep_dir).create().write_settings(config.to_json())
    RunFolder(sweep_dir / "seed-0").create()  # Begun, never finished.
    result = cli("report", sweep_dir)
    assert result.returncode == 2, result.stderr
    assert "no seed has finished" in result.stderr
    assert f"mnist-cnn compare --resume {sweep_dir}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# ---------------------------------------------------------------- publishing a sweep


def test_a_published_sweep_leaves_out_models_and_unfinished_seeds_and_resumes(docs_sweep: Path, tmp_path: Path) -> None:
    """publish copies results only; a copy of it resumes without training a finished seed."""
    from mnist_cnn.sweep.compare import run_sweep

    source = tmp_path / "sweep"
    shutil.copytree(docs_sweep, source)
    sweep = SweepFolder.existing(source)
    for folder in sweep.seed_run(0).model_folders():
        folder.model_path.write_bytes(b"a model")
        folder.checkpoint_path.write_bytes(b"a checkpoint")
    sweep.seed_run(4).write_status("running")  # Unfinished: not published.
    result = cli("publish", source, "--out", tmp_path / "published")
    assert result.returncode == 0, result.stderr
    assert "finished seeds: 0, 1, 2, 3;" in result.stdout
    published = SweepFolder.existing(tmp_path / "published")
    assert sorted(path.name for path in published.path.glob("seed-*") if path.is_dir()) == [
        f"seed-{n}" for n in range(4)
    ]
    assert not list(published.path.rglob("model.keras")) and not list(published.path.rglob("checkpoint.npz"))
    assert published.identity() == sweep.identity()
    assert (published.path / "statistics.json").read_bytes() == (source / "statistics.json").read_bytes()

    # A copy resumes: the four published seeds are kept (no Ray is started for them).
    sweep.seed_run(4).write_status("finished")
    cli("publish", source, "--out", tmp_path / "published")  # Again: replaced, now with seed 4.
    assert (published.path / "seed-4" / "Model_B" / "metrics.json").is_file()
    resumed = tmp_path / "resumed"
    shutil.copytree(published.path, resumed)
    out = io.StringIO()
    statistics = run_sweep(SweepConfig.from_json(published.read_settings()), resumed, stream=out)
    assert out.getvalue().count("already finished") == 5, out.getvalue()
    _, stored = read_docs_statistics()
    assert_same_document(as_plain_data(statistics.to_json()), as_plain_data(stored.to_json()))


def test_of_an_unfinished_seed_publish_keeps_the_finished_models_results_only(docs_sweep: Path, tmp_path: Path) -> None:
    """A seed longer than a session still gets somewhere: its finished models are published
    (results and predictions, no model file) and a resume keeps them (tests/test_resume.py)."""
    from mnist_cnn.core.results import Prediction, PredictionsOnTestImages

    source = tmp_path / "sweep"
    shutil.copytree(docs_sweep, source)
    run = SweepFolder.existing(source).seed_run(4)
    run.write_status("running")
    answer = Prediction.from_probabilities([0.0] * 7 + [1.0] + [0.0] * 2)
    finished, training = run.model("Model_A"), run.model("Model_B")
    finished.write_predictions(PredictionsOnTestImages([0], [7], {"Model_A": [answer]}))
    finished.model_path.write_bytes(b"a model")
    training.metrics_path.unlink()  # Model_B still training: its checkpoint, no metrics.
    training.checkpoint_path.write_bytes(b"a checkpoint")

    result = cli("publish", source, "--out", tmp_path / "published")
    assert result.returncode == 0, result.stderr
    assert "finished seeds: 0, 1, 2, 3; seed 4 unfinished, its 1 finished model(s) kept (Model_A);" in result.stdout
    copied = RunFolder(tmp_path / "published" / "seed-4")
    assert sorted(path.name for path in copied.path.iterdir() if path.is_dir()) == ["Model_A"]
    assert copied.model("Model_A").has_results() and not copied.model("Model_A").model_path.exists()
    assert copied.config() == run.config() and copied.read_status()["state"] == "running"
    assert not copied.has_results()


def test_publish_refuses_a_folder_that_is_not_a_copy_of_the_sweep(docs_sweep: Path, tmp_path: Path) -> None:
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me", encoding="utf-8")
    for destination, message in [(other, "holds something other than a copy"), (docs_sweep, "the sweep itself")]:
        result = cli("publish", docs_sweep, "--out", destination)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert (other / "todo.txt").read_text(encoding="utf-8") == "keep me"
    missing = cli("publish", tmp_path / "nothing", "--out", tmp_path / "x")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------- any number of variants


def test_holm_adjustment_by_hand() -> None:
    from mnist_cnn.core.stats import holm_adjust

    # Sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04, raised to 0.06 to keep the order.
    assert holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_adjust([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # Capped at 1.
    assert holm_adjust([0.2]) == [0.2]


STUDY_ACCURACIES = {  # Test accuracy of each model on seeds 0-3: F8 clearly worse, B the same as A.
    "Model_A": [0.9850, 0.9841, 0.9862, 0.9855],
    "Model_B": [0.9852, 0.9849, 0.9858, 0.9861],
    "Model_F8": [0.9801, 0.9795, 0.9810, 0.9798],
}


def study_results() -> tuple[list, SweepConfig]:
    from mnist_cnn.core.config import ModelSpec
    from mnist_cnn.core.results import ModelMetrics
    from mnist_cnn.report.sweep import SeedResults

    config = SweepConfig(
        experiment=ExperimentConfig(
            models=("A", "B", "F8"), variants=(ModelSpec(key="F8", name="Model_F8", filters=8),), epochs=2
        ),
        seeds=(0, 1, 2, 3),
    )
    speed = {"Model_A": 10.0, "Model_B": 21.0, "Model_F8": 4.0}
    results = []
    for seed in range(4):
        metrics = {}
        for name, accuracies in STUDY_ACCURACIES.items():
            seconds = speed[name] * (1 + 0.01 * seed)
            metrics[name] = ModelMetrics(
                model=name, parameters=1, test_loss=1 - accuracies[seed], test_accuracy=accuracies[seed],
                best_val_accuracy=accuracies[seed], best_val_epoch=2, epochs=2, training_seconds=2 * seconds,
                seconds_per_epoch=[seconds, seconds], seconds_per_epoch_median=seconds, first_epoch_seconds=seconds,
                resumed_from_epoch=None, inference_ms_per_image_batched=0.01 * speed[name],
                inference_ms_single_image=0.5,
            )  # fmt: skip
        history = [{"epoch": 1, "loss": 1.0, "accuracy": 0.9, "val_loss": 1.0, "val_accuracy": 0.9, "seconds": 1.0}]
        results.append(SeedResults(seed, metrics, dict.fromkeys(metrics, history), {}, {}))
    return results, config


def test_every_variant_is_paired_with_the_baseline_and_holm_adjusted_as_scipy_and_by_hand() -> None:
    from scipy import stats as scipy_stats

    from mnist_cnn.core.stats import holm_adjust

    results, config = study_results()
    statistics = compute_statistics(results, config)
    assert statistics.baseline == "Model_A" and statistics.comparison is None
    assert [comparison.second for comparison in statistics.comparisons] == ["Model_B", "Model_F8"]
    raw = []
    for comparison in statistics.comparisons:
        difference = comparison.differences["test_accuracy"]
        baseline, variant = STUDY_ACCURACIES["Model_A"], STUDY_ACCURACIES[comparison.second]
        assert difference.t_test_p == pytest.approx(scipy_stats.ttest_rel(variant, baseline).pvalue)
        assert difference.wilcoxon_p == pytest.approx(scipy_stats.wilcoxon(variant, baseline).pvalue)
        raw.append(difference.t_test_p)
    holm = [comparison.differences["test_accuracy"].holm_p for comparison in statistics.comparisons]
    assert holm == pytest.approx(holm_adjust(raw))
    b_verdict, f8_verdict = (comparison.verdict for comparison in statistics.comparisons)
    assert "no detectable difference" in b_verdict and "Holm-adjusted p" in b_verdict
    assert "points lower than Model_A's" in f8_verdict and "a detectable difference" in f8_verdict
    assert statistics.comparisons[1].ratios["training_seconds"].geometric_mean == pytest.approx(0.4)

    document = json.loads(json.dumps(statistics.to_json()))
    assert document["baseline"] == "Model_A" and len(document["comparisons"]) == 2 and "comparison" not in document
    assert SweepStatistics.from_json(document).to_json() == document

    markdown = statistics_markdown(statistics, SweepFolder("unused"))
    assert "## Against the baseline, Model_A, seed by seed" in markdown and "Holm-adjusted over the 2" in markdown
    ranking = markdown.split("## Ranking by mean test accuracy")[1]
    assert ranking.index("Model_B") < ranking.index("Model_A") < ranking.index("Model_F8")


def test_another_baseline_and_a_two_model_sweep_keeps_its_layout() -> None:
    results, config = study_results()
    by_b = compute_statistics(results, dataclasses_replace(config, baseline="B"))
    assert [(c.first, c.second) for c in by_b.comparisons] == [("Model_B", "Model_A"), ("Model_B", "Model_F8")]
    with pytest.raises(ConfigError, match="baseline 'C' is not one of the compared models"):
        SweepConfig(experiment=ExperimentConfig(), seeds=(0, 1), baseline="C")
    assert "baseline" not in SweepConfig(experiment=ExperimentConfig(), seeds=(0, 1)).to_json()
    pair = SweepConfig(experiment=ExperimentConfig(), seeds=(0, 1, 2, 3))
    document = compute_statistics(
        [seed_without(result, "Model_F8") for result in results], pair
    ).to_json()  # fmt: skip
    assert "comparison" in document and "comparisons" not in document
    assert "holm_p" not in json.dumps(document)  # One comparison: nothing adjusted, the old layout.


def dataclasses_replace(config: SweepConfig, **changes: object) -> SweepConfig:
    import dataclasses

    return dataclasses.replace(config, **changes)


def seed_without(result, name: str):
    import dataclasses

    return dataclasses.replace(
        result,
        metrics={key: value for key, value in result.metrics.items() if key != name},
        histories={key: value for key, value in result.histories.items() if key != name},
    )


def test_the_pareto_front_keeps_what_nothing_beats_on_both() -> None:
    from mnist_cnn.report.figures import pareto_front

    # (seconds per epoch, accuracy): A is beaten by nothing; B costs more for less; F8 is cheapest.
    assert pareto_front([(10.0, 0.985), (21.0, 0.984), (4.0, 0.980), (40.0, 0.986)]) == [0, 2, 3]


def test_parameter_counts_are_labelled_in_thousands_and_millions() -> None:
    from mnist_cnn.report.figures import count_label

    assert [count_label(value) for value in (800, 5000, 200_000, 1_000_000, 2_500_000)] == [
        "800", "5k", "200k", "1M", "2.5M",
    ]  # fmt: skip
