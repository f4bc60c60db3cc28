"""Every file name of a run folder and a sweep folder: the one place that knows the layout.

A run folder holds everything needed to reproduce and read a run::

    config.json  status.json  run.lock (while in use)
    comparison.md  comparison.json  comparison.png  predictions.json  predictions.png  report.html
    Model_A/  model.keras  history.csv  metrics.json  loss.png  accuracy.png  checkpoint.npz (while training)
    exports/onnx/  Model_A.onnx  manifest.json        (mnist-cnn export --format onnx; saved_model, litert)

A sweep folder (``compare``) holds ordinary run folders ``seed-<n>/`` (each with trial.json and
train.log) beside sweep.json, statistics.json/.md, its figures and report.html.

The rest of the package asks ``RunFolder``, ``ModelFolder`` and ``SweepFolder`` for paths and
records; a test checks that no other module spells one of these names.
"""

CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
LOCK_FILE = "run.lock"
COMPARISON_JSON = "comparison.json"
COMPARISON_MARKDOWN = "comparison.md"
COMPARISON_FIGURE = "comparison.png"
PREDICTIONS_JSON = "predictions.json"
PREDICTIONS_FIGURE = "predictions.png"
REPORT_FILE = "report.html"
MODEL_FILE = "model.keras"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
CHECKPOINT_FILE = "checkpoint.npz"
# A run trained as one trial of a sweep: where it ran, and its training log.
TRIAL_FILE = "trial.json"
LOG_FILE = "train.log"
# The root of a `compare --seeds` sweep.
SWEEP_FILE = "sweep.json"
STATISTICS_JSON = "statistics.json"
STATISTICS_MARKDOWN = "statistics.md"
SWEEP_FIGURES = {
    "test_accuracy": "seed-accuracy.png",
    "curves": "mean-curves.png",
    "epoch_times": "epoch-times.png",
    "cost": "accuracy-cost.png",
}
SEED_FOLDER_PREFIX = "seed-"
# The bundled run (store/bundled.py): the sha256 of each of its files, as `sha256sum` lists them.
CHECKSUMS_FILE = "SHA256SUMS"
# `mnist-cnn export`: exports/<format>/ holds one artifact per model, named after the model
# (Model_A.onnx, Model_A_saved_model/, Model_A.tflite), and manifest.json, written last;
# exports/web/ the draw-a-digit page as a static site (export --format web).
EXPORTS_FOLDER = "exports"
EXPORT_MANIFEST_JSON = "manifest.json"
EXPORT_ARTIFACT_SUFFIXES = {"onnx": ".onnx", "saved_model": "_saved_model", "litert": ".tflite"}
WEB_SITE_FOLDER = "web"
