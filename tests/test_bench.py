"""The training benchmark's arithmetic: the FLOPs of an epoch and the CPU's peak it is shared of,
the networks it measures and the order, and the results file (no training here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mnist_cnn.core.config import MODEL_VARIANTS
from tests.conftest import bench_script

ROOT = Path(__file__).resolve().parent.parent

# /proc/cpuinfo "flags" lines, shortened: an AVX2 machine (AMD EPYC, Zen 2) and an AVX-512 one
# (Intel Xeon, Ice Lake).
AVX2_FLAGS = "fpu sse sse2 ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx f16c rdrand bmi1 avx2 bmi2 sha_ni"
AVX512_FLAGS = (
    "fpu sse sse2 ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx f16c rdrand bmi1 avx2 bmi2 "
    "avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni sha_ni"
)


@pytest.fixture(scope="module")
def train_speed():
    """bench/train_speed.py, imported by path (bench/ is not a package)."""
    return bench_script("train_speed")


@pytest.fixture(scope="module")
def specs(train_speed):
    """The built-in variants and the anchors of examples/anchors.toml, by key."""
    return train_speed.known_variants(train_speed.ANCHORS)


def test_the_flops_of_a_training_image_add_up(train_speed) -> None:
    """Model_A (32 filters): a 3x3 convolution to 26x26x32, 2x2 pooling to 13x13x32 = 5,408
    values, dense 200, 100, 10; 2 FLOP per multiply-add, and backward about twice forward."""
    convolution = 26 * 26 * 32 * 9 * 2  # 389,376
    dense = 5408 * 200 * 2 + 200 * 100 * 2 + 100 * 10 * 2  # 2,205,200
    assert train_speed.flops_per_image(MODEL_VARIANTS["A"].network()) == 3 * (convolution + dense) == 7_783_728
    assert train_speed.flops_per_image(MODEL_VARIANTS["B"].network()) == 15_441_456  # Model_B: 64 filters.


def test_the_flops_of_the_anchors_come_from_their_layers(train_speed, specs) -> None:
    """A convolution's multiply-adds are out_h x out_w x k x k x C_in x F, a Dense layer's in x out;
    pooling, BatchNorm, activations and dropout count nothing."""
    keras_io = 26 * 26 * 9 * 1 * 32 + 11 * 11 * 9 * 32 * 64 + 5 * 5 * 64 * 10  # pools: 13x13, then 5x5.
    pytorch = 26 * 26 * 9 * 32 + 24 * 24 * 9 * 32 * 64 + 12 * 12 * 64 * 128 + 128 * 10
    two_blocks = 26 * 26 * 9 * 32 + 11 * 11 * 9 * 32 * 64 + 1600 * 200 + 200 * 100 + 100 * 10
    expected = {"KERAS_IO": keras_io, "PYTORCH": pytorch, "A_CONV2": two_blocks, "A_BN": 1_297_288}
    for key, multiply_adds in expected.items():
        network = specs[key].network()
        assert train_speed.multiply_adds(network) == multiply_adds, key
        assert train_speed.flops_per_image(network) == 6 * multiply_adds, key
    assert train_speed.flops_per_image(specs["PYTORCH"].network()) == 71_954_688  # 9x Model_A's.


@pytest.mark.parametrize(
    ("flags", "per_cycle", "named"),
    [
        (AVX2_FLAGS, 32, "AVX2"),
        (AVX512_FLAGS, 64, "AVX-512"),
        ("fpu sse sse2 avx", 16, "AVX, no FMA"),
        ("fp asimd evtstrm aes pmull sha1 sha2 crc32", 16, "Arm NEON"),  # Arm's "Features" line.
        ("fpu sse sse2", 8, "SSE"),
    ],
)
def test_flop_per_cycle_come_from_the_widest_vector_flag(train_speed, flags, per_cycle, named) -> None:
    found, assumption = train_speed.flops_per_cycle(flags.split())
    assert found == per_cycle and assumption.startswith(named)


def test_the_issues_avx512_machine_is_at_about_45_percent_not_94(train_speed) -> None:
    """The issue: Model_A at 2.70 s/epoch printed 93.8 % of peak with AVX2's 32 FLOP/cycle; on
    that AVX-512 CPU (2 CPUs at 2.593 GHz: 93.8 % of 2 x 2.593 x 32 GFLOP/s is 54,000 images x
    7.78 MFLOP / 2.70 s) the peak is 64 FLOP/cycle, and the share half: 46.9 %."""
    work = 54_000 * 7_783_728 / 2.70  # FLOP/s: 155.7 G.
    avx2 = train_speed.peak(2, 2593.0, AVX2_FLAGS.split())
    avx512 = train_speed.peak(2, 2593.0, AVX512_FLAGS.split())
    assert avx2["peak_gflops"] == pytest.approx(2 * 2.593 * 32)  # 166 GFLOP/s
    assert avx512["peak_gflops"] == pytest.approx(2 * 2.593 * 64)  # 332 GFLOP/s
    assert train_speed.fraction_of_peak(2.70, 7_783_728, avx2["peak_gflops"]) == pytest.approx(0.938, abs=5e-4)
    assert train_speed.fraction_of_peak(2.70, 7_783_728, avx512["peak_gflops"]) == pytest.approx(0.469, abs=5e-4)
    assert work / (avx512["peak_gflops"] * 1e9) == pytest.approx(0.469, abs=5e-4)
    assert "64 FLOP/cycle" in avx512["assumption"] and "AVX-512" in avx512["assumption"]
    assert "half that on Zen 4" in avx512["assumption"]  # Where AVX-512 runs on 256-bit units.


def test_cpuinfo_is_read_for_flags_and_clock(train_speed, tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        f"processor\t: 0\nmodel name\t: Intel Xeon\ncpu MHz\t\t: 2593.906\nflags\t\t: {AVX512_FLAGS}\n\n"
        f"processor\t: 1\ncpu MHz\t\t: 3400.000\nflags\t\t: {AVX2_FLAGS}\n"
    )
    flags, megahertz = train_speed.cpu_flags_and_megahertz(str(cpuinfo))
    assert "avx512f" in flags and megahertz == pytest.approx(2593.906)  # The first processor's.
    assert train_speed.cpu_flags_and_megahertz(str(tmp_path / "missing")) == ([], None)
    assert train_speed.cpu_model_name(str(cpuinfo)) == "Intel Xeon"
    assert train_speed.cpu_model_name(str(tmp_path / "missing"))  # platform's answer, never empty.


def test_the_table_prints_the_assumption_beside_the_share_of_peak(train_speed, monkeypatch, capsys) -> None:
    monkeypatch.setattr(train_speed, "this_cpus_peak", lambda: train_speed.peak(2, 2593.0, AVX512_FLAGS.split()))
    runs = [
        {"path": path, "model": model, "seed": 0, "seconds": [9.0, seconds, seconds], "test_accuracy": 0.97}
        | {"peak_rss_mib": 1000.0}
        for path, model, seconds in [
            ("reference", "A", 5.4),
            ("project", "A", 2.70),
            ("reference", "B", 8.0),
            ("project", "B", 4.0),
        ]
    ]
    summary = train_speed.summarize(runs, epochs=3)
    assert summary["models"]["Model_A"]["project"]["fraction_of_peak"] == pytest.approx(0.469, abs=5e-4)
    assert summary["peak"]["flops_per_cycle_per_core"] == 64
    train_speed.print_summary(summary, rounds=1, epochs=3)
    printed = capsys.readouterr().out
    assert "peak 332 GFLOP/s = 2 CPUs x 2.59 GHz x 64 FLOP/cycle (AVX-512" in printed
    assert "% of peak (64 FLOP/cycle/core)" in printed
    assert "| Model_A | project | 2.70 | 9.00 | 20000 | 46.9 |" in printed


def fake_runs(timings: list[tuple[str, str, float]], **fields) -> list[dict]:
    """One child's record per (path, model, steady seconds): a 9 s first epoch and two timed ones."""
    return [
        {"path": path, "model": model, "seed": 0, "seconds": [9.0, seconds, seconds], "test_accuracy": 0.97}
        | {"peak_rss_mib": 1000.0, **fields}
        for path, model, seconds in timings
    ]


def test_each_network_gets_a_row_with_fused_model_fit_and_the_ratio(train_speed, specs, monkeypatch, capsys) -> None:
    monkeypatch.setattr(train_speed, "this_cpus_peak", lambda: train_speed.peak(2, 2593.0, AVX2_FLAGS.split()))
    runs = fake_runs([("reference", "A", 5.4), ("project", "A", 2.7), ("reference", "B", 8.0), ("project", "B", 4.0)])
    runs += fake_runs([("reference", "KERAS_IO", 36.0), ("project", "KERAS_IO", 12.0)], optimizer="Adam(0.001)")
    runs += fake_runs([("reference", "PYTORCH", 90.0), ("project", "PYTORCH", 30.0)], trainer="fused")
    summary = train_speed.summarize(runs, epochs=3, specs=specs)
    assert list(summary["models"]) == ["Model_A", "Model_B", "keras_io_convnet", "pytorch_mnist"]
    keras_io = summary["models"]["keras_io_convnet"]
    assert keras_io["ratio_reference_over_project"] == pytest.approx(3.0)
    assert keras_io["reference"]["optimizer"] == "Adam(0.001)"
    assert keras_io["network"] | {"describe": None} == {
        "key": "KERAS_IO",
        "layers": ["conv 32 3", "pool 2", "conv 64 3", "pool 2", "flatten", "dropout 0.5"],
        "describe": None,
        "parameters": 34_826,
        "flops_per_image": 14_645_760,
    }
    assert summary["models"]["Model_A"]["network"]["layers"] == [
        "conv 32 3",
        "pool 2",
        "flatten",
        "dense 200",
        "dense 100",
    ]
    # The whole experiment stays Model_A and Model_B's, as before the anchors: 2 x 60 epochs.
    assert summary["experiment"]["reference_minutes_60_epochs"] == pytest.approx((5.4 + 8.0) * 60 / 60)
    assert summary["experiment"]["ratio_reference_over_project"] == pytest.approx(13.4 / 6.7)
    train_speed.print_summary(summary, rounds=1, epochs=3)
    printed = capsys.readouterr().out
    assert "| fused s/epoch | model.fit (TF) s/epoch | speed-up |" in printed
    # 54,000 x 14.6 MFLOP / 12 s = 66 GFLOP/s of a 166 GFLOP/s peak: 39.7 %; model.fit's 36 s: 13.2 %.
    assert (
        "| keras_io_convnet | KERAS_IO | Adam(0.001) | 34,826 | 14.6 | 12.00 | 36.00 | 3.00x | 39.7 / 13.2 |" in printed
    )
    assert "| pytorch_mnist | PYTORCH |  | 1,199,882 | 72.0 | 30.00 | 90.00 | 3.00x |" in printed
    assert "Whole experiment (2 x 60 epochs of Model_A and Model_B" in printed


def test_a_network_the_fused_trainer_cannot_train_says_so(train_speed, specs, monkeypatch, capsys) -> None:
    """Without Model_B there is no whole experiment; a model.fit fallback is not called fused."""
    monkeypatch.setattr(train_speed, "this_cpus_peak", lambda: train_speed.peak(2, 2593.0, AVX2_FLAGS.split()))
    runs = fake_runs([("reference", "A_BN", 6.0)], trainer="model.fit")
    runs += fake_runs([("project", "A_BN", 5.0)], trainer="model.fit")
    summary = train_speed.summarize(runs, epochs=3, specs=specs)
    assert "experiment" not in summary
    train_speed.print_summary(summary, rounds=1, epochs=3)
    printed = capsys.readouterr().out
    assert "| 5.00 (model.fit on JAX: no fused trainer) | 6.00 | 1.20x |" in printed
    assert "Whole experiment" not in printed


def test_models_are_read_from_the_flag_and_checked(train_speed, specs) -> None:
    assert train_speed.DEFAULT_MODELS == ("A", "B", "KERAS_IO", "PYTORCH", "A_BN", "A_CONV2")
    assert all(key in specs for key in train_speed.DEFAULT_MODELS)  # examples/anchors.toml has the four.
    assert train_speed.parse_models("a, B,keras_io", specs) == ["A", "B", "KERAS_IO"]
    with pytest.raises(ValueError, match="unknown model 'C'"):
        train_speed.parse_models("A,C", specs)
    with pytest.raises(ValueError, match="named twice"):
        train_speed.parse_models("A,A", specs)
    with pytest.raises(ValueError, match="names no model"):
        train_speed.parse_models(" , ", specs)


def test_model_a_and_b_are_measured_in_the_order_they_always_were(train_speed) -> None:
    """Round 1: ref A, project A, ref B, project B (then the anchors, pair by pair); round 2 swaps each pair."""
    order = train_speed.measurement_order(["A", "B", "KERAS_IO"], rounds=2)
    assert order[:4] == [(0, "reference", "A"), (0, "project", "A"), (0, "reference", "B"), (0, "project", "B")]
    assert order[4:6] == [(0, "reference", "KERAS_IO"), (0, "project", "KERAS_IO")]
    assert order[6:8] == [(1, "project", "A"), (1, "reference", "A")]
    assert len(order) == 12


def test_a_child_is_told_the_variants_file_only_for_a_variant_of_it(train_speed) -> None:
    anchors = train_speed.ANCHORS
    assert train_speed.child_command("project", "A", 3, 1, anchors)[2:] == ["--child", "project", "A", "3", "1"]
    assert train_speed.child_command("reference", "PYTORCH", 2, 0, anchors)[2:] == [
        "--child", "reference", "PYTORCH", "2", "0", str(anchors)
    ]  # fmt: skip


def test_the_child_builds_every_network_with_the_projects_builder(train_speed) -> None:
    """No second copy of a network: the script builds through build_variant / seeded_model and
    compiles the variant's optimizer through make_optimizer on both sides."""
    source = Path(train_speed.__file__).read_text()
    assert "build_variant(spec)" in source and "seeded_model(spec, config)" in source
    assert "make_optimizer(config, spec)" in source
    for keras_layer in ("Conv2D", "Dense(", "MaxPooling2D", "BatchNormalization", "keras.layers", "Sequential"):
        assert keras_layer not in source


def test_a_measurement_is_added_to_the_results_file_keeping_the_rest(train_speed, tmp_path: Path) -> None:
    results = tmp_path / "bench-results.json"
    results.write_text(json.dumps({"summary": {"models": {}}, "runs": [1]}))
    train_speed.add_measurement(results, {"measured": {"date": "2026-12-04"}, "summary": {}, "runs": []})
    train_speed.add_measurement(results, {"measured": {"date": "2026-12-05"}, "summary": {}, "runs": []})
    document = json.loads(results.read_text())
    assert document["summary"] == {"models": {}} and document["runs"] == [1]
    assert [m["measured"]["date"] for m in document["measurements"]] == ["2026-12-04", "2026-12-05"]
    fresh = tmp_path / "new.json"
    train_speed.add_measurement(fresh, {"measured": {}})
    assert json.loads(fresh.read_text()) == {"measurements": [{"measured": {}}]}


def test_the_published_results_say_when_where_and_how_they_were_measured() -> None:
    """docs/bench-results.json: the published Model_A/Model_B measurement the docs' table reads, and
    each later measurement with its date, CPU, command and what else ran."""
    document = json.loads((ROOT / "docs" / "bench-results.json").read_text())
    assert {"Model_A", "Model_B"} <= set(document["summary"]["models"]) and "experiment" in document["summary"]
    for measurement in document.get("measurements", []):
        assert {"date", "cpu", "command", "note"} <= set(measurement["measured"])
        assert measurement["measured"]["command"].startswith("python bench/train_speed.py")
        for row in measurement["summary"]["models"].values():
            assert row["ratio_reference_over_project"] == pytest.approx(
                row["reference"]["seconds_per_epoch_median"] / row["project"]["seconds_per_epoch_median"]
            )
