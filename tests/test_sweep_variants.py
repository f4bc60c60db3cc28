"""A real sweep of three variants on a local Ray: each paired with the baseline, Holm-adjusted.

Its own file, so the parallel suite (make test: one file per process) runs it beside the other sweeps.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mnist_cnn.core import stats
from mnist_cnn.core.sweep_results import SweepStatistics
from mnist_cnn.store.runs import RunFolder
from mnist_cnn.store.sweeps import SweepFolder

from .conftest import cli


@pytest.mark.slow
def test_a_sweep_of_three_variants_pairs_each_with_the_baseline(tmp_path: Path) -> None:
    """3 variants (two of them defined inline) x 2 seeds x 2 epochs on a local Ray: every variant
    paired with the baseline, Holm-adjusted, equal to the statistics recomputed from the seeds."""
    sweep_dir = tmp_path / "study"
    result = cli(
        "compare", "--seeds", "2", "--models", "A,F8,AD", "--variant", "F8: filters=8", "--variant", "AD: dropout=0.5",
        "--epochs", "2", "--limit", "300", "--batch-size", "64", "--out", sweep_dir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    sweep = SweepFolder.existing(sweep_dir)
    statistics = SweepStatistics.from_json(sweep.read_statistics())
    assert statistics.model_names == ["Model_A", "Model_F8", "Model_AD"]
    assert [(c.first, c.second) for c in statistics.comparisons] == [("Model_A", "Model_F8"), ("Model_A", "Model_AD")]
    accuracy = {
        name: [RunFolder(sweep_dir / f"seed-{seed}").model(name).read_metrics().test_accuracy for seed in range(2)]
        for name in statistics.model_names
    }
    p_values = []
    for comparison in statistics.comparisons:
        expected = stats.paired_difference("test_accuracy", accuracy["Model_A"], accuracy[comparison.second])
        difference = comparison.differences["test_accuracy"]
        assert difference.differences == pytest.approx(expected.differences, abs=1e-12)
        assert difference.t_test_p == pytest.approx(expected.t_test_p)
        p_values.append(expected.t_test_p)
    holm = [comparison.differences["test_accuracy"].holm_p for comparison in statistics.comparisons]
    assert holm == pytest.approx(stats.holm_adjust(p_values))
    report = sweep.report_path.read_text()
    for name in statistics.model_names:
        assert report.count(name) >= 3, name
    assert "Against the baseline, Model_A" in report and "Ranking by mean test accuracy" in report
    assert sweep.figure_path("cost").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = RunFolder(sweep_dir / "seed-0").config()
    assert [spec.key for spec in config.variants] == ["F8", "AD"]  # Each seed's run rebuilds without flags.
