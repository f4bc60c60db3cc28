"""A sweep's statistics as typed records: docs/compare (a real 5-seed sweep) reads back, writes
back byte for byte, is computed again from its seed folders, and is shown by one table of measures."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from mnist_cnn.core.config import ExperimentConfig, SweepConfig
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
    metrics.json and history.csv) but neither status.json nor the models (too large for
    the repository): both are stood in for, so ``collect`` reads the seeds as it would in a sweep.
    """
    sweep_dir = tmp_path_factory.mktemp("docs") / "compare"
    shutil.copytree(DOCS_COMPARE, sweep_dir)
    sweep = SweepFolder.existing(sweep_dir)
    for seed in SweepConfig.from_json(sweep.read_settings()).seeds:
        run = sweep.seed_run(seed)
        run.write_status("finished")
        for folder in run.model_folders():
            folder.model_path.write_bytes(b"")  # Only its presence counts here.
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
