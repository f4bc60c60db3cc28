"""The ``mnist-cnn`` command line: parse flags, choose the backend, call the library.

Parsing and printing only: the work is done by the library's functions. Keras is imported
only after the flags are read, because the backend must be fixed first. Errors a user can fix
(``UserError``) print one line and exit 2 (--debug shows the traceback instead); anything
else is a bug and keeps its traceback (exit 1).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mnist_cnn.core.config import (
    BACKENDS,
    DEFAULT_BACKEND,
    DEFAULT_CPUS_PER_TRIAL,
    DEFAULT_TRACKING_EXPERIMENT,
    DEFAULT_TRACKING_URI,
    DEVICES,
    MODEL_VARIANTS,
    OPTIMIZERS,
    POLARITIES,
    SERVE_RUNTIMES,
    TRAINERS,
    Augmentation,
    BatchingSettings,
    ExperimentConfig,
    ServerSettings,
    SweepConfig,
    TrackingSettings,
    parse_seeds,
)
from mnist_cnn.core.errors import ConfigError, UserError
from mnist_cnn.core.variants import gather_variants
from mnist_cnn.core.version import version_text

EXIT_BUG = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
# A bare --track: resolved to $MLFLOW_TRACKING_URI or the SQLite default when the command runs.
TRACK_DEFAULT = object()


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag gives one line (not the whole usage) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# argparse only converts text to types; every rule on a value is checked once, by the config
# dataclass that holds it (core.config), whose ConfigError main() prints as one line.


def model_keys(text: str) -> tuple[str, ...]:
    """``A,b`` -> ("A", "B"): the keys as written (the config says which exist)."""
    return tuple(part.strip().upper() for part in text.split(","))


def add_models_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models",
        type=model_keys,
        default=ExperimentConfig().models,
        help=f"models to train, comma-separated: the built-in {', '.join(MODEL_VARIANTS)}, or variants defined with "
        "--variants FILE or --variant (mnist-cnn variants lists them) (default: A,B)",
    )


def add_training_flags(parser: argparse.ArgumentParser, sweep: bool = False) -> None:
    defaults = ExperimentConfig()
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="epochs per model (default: %(default)s)")
    parser.add_argument(
        "--batch-size", type=int, default=defaults.batch_size, help="mini-batch size (default: %(default)s)"
    )
    if sweep:
        parser.add_argument(
            "--out", type=Path, default=None, help="sweep folder to write (default: runs/compare-<timestamp>)"
        )
    else:
        parser.add_argument(
            "--device",
            choices=DEVICES,
            default="auto",
            help="where JAX trains: auto (a GPU when JAX sees one, else the CPU), cpu, or gpu (refused where "
            "JAX sees none) (default: %(default)s)",
        )
        parser.add_argument(
            "--seed",
            type=int,
            default=defaults.seed,
            help="random seed for weights and shuffling (default: %(default)s)",
        )
        parser.add_argument("--out", type=Path, default=None, help="run folder to write (default: runs/<timestamp>)")
    parser.add_argument(
        "--data",
        default=defaults.data,
        help="MNIST source: auto, keras, bundled, an .npz in the Keras layout, or a folder of IDX files "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="quick runs: keep only the first N training, N validation and N test images (default: all)",
    )
    parser.add_argument(
        "--optimizer", choices=OPTIMIZERS, default=defaults.optimizer, help="optimizer (default: %(default)s)"
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=defaults.learning_rate,
        help="learning rate (default: %(default)s)",
    )
    parser.add_argument(
        "--steps-per-execution",
        type=int,
        default=defaults.steps_per_execution,
        help="model.fit steps per compiled call; same results, less overhead (default: %(default)s)",
    )
    parser.add_argument(
        "--trainer",
        choices=TRAINERS,
        default=defaults.trainer,
        help="training path: fused (compiled JAX step, the fastest here), keras (model.fit), "
        "auto (fused on JAX, else keras) (default: %(default)s)",
    )
    parser.add_argument(
        "--augment",
        action="store_true",
        help="redraw every training image at random each epoch (rotation, scale, shift, slant, elastic "
        "distortion, stroke width, blur, contrast, noise): reads real handwriting better (default: off)",
    )
    add_variant_flags(parser)
    add_tracking_flags(parser)
    add_backend_flag(parser)


def add_variant_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--variants",
        dest="variant_files",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help='a TOML file of model variants, one table each ([F16] then filters = 16, or layers = ["conv 32 3", '
        '"pool 2", "flatten"]); repeatable (default: none)',
    )
    parser.add_argument(
        "--variant",
        dest="inline_variants",
        action="append",
        default=[],
        metavar="'KEY: field=value, ...'",
        help='one variant inline, e.g. \'D: filters=32, dropout=0.5\' or \'T: layers=["conv 16 5", "pool 2", '
        '"flatten"]\'; repeatable (default: none)',
    )


def add_tracking_flags(parser: argparse.ArgumentParser, required: bool = False) -> None:
    """--track [URI] and --track-experiment; ``required``: the track command, where --track only says where."""
    parser.add_argument(
        "--track",
        nargs="?",
        const=TRACK_DEFAULT,
        default=TRACK_DEFAULT if required else None,
        metavar="URI",
        help="also log into MLflow: sqlite:///PATH.db or http://HOST:PORT of a tracking server; a bare --track "
        f"means $MLFLOW_TRACKING_URI, else {DEFAULT_TRACKING_URI} (the file {TrackingSettings().sqlite_path()} in the "
        "current folder); the runs go into the MLflow experiment --track-experiment names, shown by "
        f"'mlflow ui --backend-store-uri URI' (default: {'that' if required else 'off'})",
    )
    parser.add_argument(
        "--track-experiment",
        default=DEFAULT_TRACKING_EXPERIMENT,
        metavar="NAME",
        help="the MLflow experiment the runs go in (default: %(default)s)",
    )


def tracking_from_args(args: argparse.Namespace) -> TrackingSettings | None:
    """The tracking settings, checked (URI, MLflow installed, a SQLite store writable, a server
    reachable) before anything is trained; None: off."""
    if getattr(args, "track", None) is None:
        return None
    from mnist_cnn.track.mlflow_tracking import require_mlflow, require_reachable_server, require_writable_store

    settings = TrackingSettings.chosen(None if args.track is TRACK_DEFAULT else args.track, args.track_experiment)
    require_mlflow()
    require_writable_store(settings)
    require_reachable_server(settings)
    return settings


def add_backend_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help=f"Keras backend (default: $KERAS_BACKEND, else {DEFAULT_BACKEND}, the fastest measured here)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="mnist-cnn", description="Train, compare and serve small CNNs for MNIST digits.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version_text()}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors (default: off)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)

    experiment = commands.add_parser(
        "experiment", help="the whole specification: train, evaluate, compare and predict with each model"
    )
    add_models_flag(experiment)
    experiment.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="continue an interrupted run with its own settings (other training flags are ignored) (default: off)",
    )
    add_training_flags(experiment)

    train = commands.add_parser("train", help="train one model into a run folder (experiment --models X)")
    train.add_argument(
        "--model",
        dest="models",
        type=model_keys,
        required=True,
        metavar="KEY",
        help=f"the model to train: the built-in {', '.join(MODEL_VARIANTS)}, or a variant defined with --variants FILE "
        "or --variant (mnist-cnn variants lists them)",
    )
    train.set_defaults(resume=None)
    add_training_flags(train)

    add_compare_parser(commands)

    variants = commands.add_parser(
        "variants", help="the model variants known: built in, and from --variants FILE or --variant"
    )
    add_variant_flags(variants)
    variants.set_defaults(backend=None)

    track = commands.add_parser(
        "track", help="log existing run or sweep folders into MLflow (again: nothing is logged twice)"
    )
    track.add_argument("paths", type=Path, nargs="+", metavar="PATH", help="run folders and sweep folders")
    add_tracking_flags(track, required=True)
    track.set_defaults(backend=None)

    publish = commands.add_parser(
        "publish",
        help="copy a compare sweep's results without its models (for a repository or a site; a copy resumes)",
    )
    publish.add_argument("sweep_dir", type=Path, help="a sweep folder written by compare")
    publish.add_argument("--out", type=Path, required=True, help="the folder to write (replaced if it is a copy)")
    publish.set_defaults(backend=None)

    report = commands.add_parser(
        "report", help="write the HTML report (one self-contained page) of a run folder or a compare sweep"
    )
    report.add_argument("path", type=Path, help="a run folder (experiment, train) or a sweep folder (compare)")
    add_backend_flag(report)

    evaluate = commands.add_parser("evaluate", help="evaluate a run's saved models on the test set")
    add_run_arguments(evaluate)
    evaluate.add_argument("--data", default=None, help="MNIST source (default: the one the run used)")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of text (default: off)")
    add_backend_flag(evaluate)

    predict = commands.add_parser(
        "predict", help="predict digits in image files, or test-set digits, with a run's saved models"
    )
    predict.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="image files (PNG, JPEG, BMP, GIF, WebP; - for standard input), after an optional run folder "
        "(a folder, or a missing path without a suffix) (default: none, use --index)",
    )
    add_run_arguments(predict, positional=False)
    predict.add_argument(
        "--index",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="test-set indices, when no image is given (default: 0 1 2)",
    )
    predict.add_argument(
        "--show-input",
        type=Path,
        default=None,
        metavar="DIR",
        help="save the 28x28 image each model saw into DIR (default: off)",
    )
    predict.add_argument(
        "--polarity",
        choices=POLARITIES,
        default="auto",
        help="which is the ink: guessed per image, or light-on-dark (a screen or chalkboard) or "
        "dark-on-light (pen on paper) when the guess is wrong, as for a digit whose stroke runs "
        "along a whole edge of the image (default: %(default)s)",
    )
    predict.add_argument("--data", default=None, help="MNIST source (default: the one the run used)")
    predict.add_argument("--json", action="store_true", help="print JSON instead of text (default: off)")
    add_backend_flag(predict)

    serve = commands.add_parser("serve", help="the draw-a-digit web page and JSON API for a run's models")
    add_run_arguments(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
    batching = BatchingSettings()
    serve.add_argument(
        "--max-batch",
        type=int,
        default=batching.max_batch,
        help="most requests answered in one forward pass; 1 turns batching off (default: %(default)s)",
    )
    serve.add_argument(
        "--batch-window-ms",
        type=float,
        default=batching.window_ms,
        help="how long a request waits for others to join its batch, in ms (default: %(default)s)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes on the one port, each with its own copy of the models (default: %(default)s)",
    )
    serve.add_argument(
        "--runtime",
        default=ServerSettings().runtime,
        metavar="{" + ",".join(SERVE_RUNTIMES) + "}",  # Listed as argparse lists choices; ServerSettings checks.
        help=f"what answers: {' or '.join(SERVE_RUNTIMES)} (onnxruntime on the run's exports, made by "
        "'mnist-cnn export RUN_DIR --format onnx') (default: %(default)s)",
    )
    serve.add_argument(
        "--queue-size",
        type=int,
        default=batching.queue_size,
        help="requests that may wait; more get 503 with Retry-After (default: %(default)s)",
    )
    add_backend_flag(serve)
    add_export_parser(commands)
    return parser


BUNDLED_RUN_TEXT = "the bundled run: Model_A and Model_B trained 60 epochs by the specification"


def add_run_arguments(parser: argparse.ArgumentParser, positional: bool = True) -> None:
    """The run whose models answer: RUN_DIR (or --run RUN_DIR), else the bundled run (resolve_run)."""
    if positional:
        parser.add_argument(
            "run_dir",
            type=Path,
            nargs="?",
            default=None,
            help=f"a run folder written by experiment or train (default: {BUNDLED_RUN_TEXT})",
        )
    parser.add_argument(
        "--run",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help=f"a run folder written by experiment or train (default: {BUNDLED_RUN_TEXT})",
    )


def names_a_run_folder(path: Path) -> bool:
    """predict's first path is the run folder when it is a folder, or when it is missing and has
    no suffix as image files do (a mistyped run folder is then said to be missing, at once)."""
    return path.is_dir() or (str(path) != "-" and not path.exists() and not path.suffix)


def resolve_run(args: argparse.Namespace) -> None:
    """evaluate, predict, serve and export: ``args.run_dir`` becomes the run folder to use, the one
    given (RUN_DIR or --run; for predict, a first path that is a folder) or else the bundled run,
    which nothing writes into: export then writes into ./exports/FORMAT."""
    from mnist_cnn.store.bundled import bundled_run
    from mnist_cnn.store.layout import EXPORTS_FOLDER, WEB_SITE_FOLDER

    if args.command == "predict":
        paths = list(args.paths)
        if args.run is None and paths and names_a_run_folder(Path(paths[0])):
            args.run = Path(paths.pop(0))
        args.images = paths
    elif args.run is not None and args.run_dir is not None:
        raise ConfigError(f"two run folders given ({args.run_dir} and --run {args.run}): give one")
    else:
        args.run = args.run if args.run is not None else args.run_dir
    args.bundled = args.run is None
    args.run_dir = bundled_run() if args.bundled else args.run
    if args.command == "export" and args.bundled and args.out is None:
        args.out = Path(EXPORTS_FOLDER) / (WEB_SITE_FOLDER if args.format == "web" else args.format)


def add_export_parser(commands: Any) -> None:
    from mnist_cnn.export.plan import FORMATS

    export = commands.add_parser(
        "export",
        help="a run's models as ONNX, TensorFlow SavedModel or LiteRT files, each checked against Keras on test "
        "images; or web: the draw-a-digit page with its models, for any static web host",
    )
    add_run_arguments(export)
    export.add_argument("--format", required=True, choices=[*FORMATS, "web"], help="the format to write")
    export.add_argument(
        "--models",
        type=model_keys,
        default=None,
        metavar="A,B",
        help="the run's models to export, comma-separated keys such as A,B (default: every trained model of the run)",
    )
    export.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder to write (default: RUN_DIR/exports/FORMAT; for the bundled run, exports/FORMAT here)",
    )


def seed_list(text: str) -> tuple[int, ...]:
    try:
        return parse_seeds(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_compare_parser(commands: Any) -> None:
    compare = commands.add_parser(
        "compare",
        help="is one model really better than another? the experiment over several seeds on Ray, paired statistics",
    )
    compare.add_argument(
        "--seeds",
        type=seed_list,
        default=tuple(range(5)),
        help="number of seeds (N means seeds 0..N-1) or a comma-separated list such as 3,7,11 (default: 5)",
    )
    add_models_flag(compare)
    compare.add_argument(
        "--baseline",
        default=None,
        metavar="KEY",
        help="the model every other is compared with, seed by seed (default: the first of --models)",
    )
    compare.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="SWEEP_DIR",
        help="continue an interrupted sweep with its own settings (other training flags are ignored) (default: off)",
    )
    compare.add_argument(
        "--ray-address",
        default=None,
        help="join a running Ray cluster: auto, or HOST:PORT of its head (default: a local Ray for this command)",
    )
    compare.add_argument(
        "--workers",
        type=int,
        default=None,
        help="at most this many trials at once (default: as many as the cluster's CPUs allow)",
    )
    compare.add_argument(
        "--cpus-per-trial",
        type=int,
        default=None,
        help=f"CPUs each trial reserves and uses; 1 runs single-threaded (default: auto, {DEFAULT_CPUS_PER_TRIAL} "
        "each while trials outnumber CPUs, measured fastest on a 2-core machine; idle CPUs go to the last trials)",
    )
    add_training_flags(compare, sweep=True)


def config_from_args(args: argparse.Namespace, backend: str | None) -> ExperimentConfig:
    variants = gather_variants(args.variant_files, args.inline_variants)
    return ExperimentConfig(
        variants=tuple(spec for spec in variants if spec.key in args.models),  # What the run uses, recorded whole.
        models=args.models,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=getattr(args, "seed", ExperimentConfig.seed),
        data=args.data,
        limit=args.limit,
        optimizer=args.optimizer,
        learning_rate=args.learning_rate,
        steps_per_execution=args.steps_per_execution,
        backend=backend,
        trainer=args.trainer,
        augmentation=Augmentation() if args.augment else None,
    )


def command_variants(args: argparse.Namespace, backend: str) -> int:
    """The variants known (built in, and those the flags define): key, name, parameters, what differs."""
    specs = [*MODEL_VARIANTS.values(), *gather_variants(args.variant_files, args.inline_variants)]
    rows = [(spec.key, spec.name, f"{spec.parameter_count():,}", spec.describe()) for spec in specs]
    widths = [max(len(row[column]) for row in [("key", "name", "parameters", ""), *rows]) for column in range(3)]
    print(
        f"{'key':<{widths[0]}}  {'name':<{widths[1]}}  {'parameters':>{widths[2]}}  network (what differs from Model_A)"
    )
    for key, name, parameters, description in rows:
        print(f"{key:<{widths[0]}}  {name:<{widths[1]}}  {parameters:>{widths[2]}}  {description}")
    return 0


def command_experiment(args: argparse.Namespace, backend: str) -> int:
    from mnist_cnn.experiment import run_experiment
    from mnist_cnn.store.runs import RunFolder

    if args.resume is not None:
        run = RunFolder.existing(args.resume)
        config = run.config()
    else:
        config = config_from_args(args, backend)
        run = RunFolder(args.out) if args.out is not None else RunFolder.new()
    tracking = tracking_from_args(args)
    try:
        run_experiment(config, run.path, tracking=tracking)
    except KeyboardInterrupt:
        print(
            f"mnist-cnn: interrupted; finished epochs are saved. Resume with: mnist-cnn experiment --resume {run.path}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    return 0


def sweep_config_from_args(args: argparse.Namespace, backend: str | None) -> SweepConfig:
    baseline = args.baseline.strip().upper() if args.baseline else None
    return SweepConfig(experiment=config_from_args(args, backend), seeds=args.seeds, baseline=baseline)


def check_compare_flags(args: argparse.Namespace) -> None:
    """Every value compare refuses, checked before Keras is imported and Ray started (seconds
    each, and processes to end) and before a folder is made: a bad one is one line at once."""
    from mnist_cnn.store.sweeps import SweepFolder
    from mnist_cnn.sweep.trials import check_sweep_options

    if args.resume is None:
        sweep_config_from_args(args, backend=None)
    else:
        SweepConfig.from_json(SweepFolder.existing(args.resume).read_settings())
    check_sweep_options(args.ray_address, args.workers, args.cpus_per_trial)
    tracking_from_args(args)


def command_compare(args: argparse.Namespace, backend: str) -> int:
    from mnist_cnn.store.sweeps import SweepFolder
    from mnist_cnn.sweep.compare import run_sweep

    if args.resume is not None:
        sweep = SweepFolder.existing(args.resume)
        sweep_config = SweepConfig.from_json(sweep.read_settings())
    else:
        sweep_config = sweep_config_from_args(args, backend)
        sweep = SweepFolder(args.out) if args.out is not None else SweepFolder.new()
    tracking = tracking_from_args(args)
    try:
        run_sweep(
            sweep_config,
            sweep.path,
            ray_address=args.ray_address,
            workers=args.workers,
            cpus_per_trial=args.cpus_per_trial,
            tracking=tracking,
        )
    except KeyboardInterrupt:
        if not sweep.is_sweep():  # Before its first trial: the sweep left nothing to resume.
            print("mnist-cnn: interrupted before the sweep began", file=sys.stderr)
            return EXIT_INTERRUPTED
        print(
            "mnist-cnn: interrupted; finished seeds and epochs are saved. "
            f"Resume with: mnist-cnn compare --resume {sweep.path}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    return 0


def command_track(args: argparse.Namespace, backend: str) -> int:
    """Back-fill: each folder's runs into the store, continuing those already there."""
    from mnist_cnn.track.mlflow_tracking import track_folders

    settings = tracking_from_args(args)
    summary = track_folders(args.paths, settings, sys.stdout)
    print(summary)
    return 0


def command_publish(args: argparse.Namespace, backend: str) -> int:
    from mnist_cnn.store.sweeps import SweepFolder

    published = SweepFolder.existing(args.sweep_dir).publish(args.out)
    print(f"published {args.sweep_dir} to {args.out} ({published.describe()}; models and checkpoints left out)")
    return 0


def command_report(args: argparse.Namespace, backend: str) -> int:
    from mnist_cnn.sweep.compare import write_report

    print(f"wrote {write_report(args.path)}")
    return 0


def command_evaluate(args: argparse.Namespace, backend: str) -> int:
    from mnist_cnn.experiment import evaluate_run

    evaluation = evaluate_run(args.run_dir, args.data)
    if args.json:
        print(json.dumps(evaluation.results, indent=2))
        return 0
    for name, values in evaluation.results.items():
        print(
            f"{name}: test accuracy {values['test_accuracy']:.4f}, test loss {values['test_loss']:.4f} "
            f"({evaluation.test_images} images)"
        )
    return 0


def command_predict(args: argparse.Namespace, backend: str) -> int:
    if args.images:
        return predict_image_files(args)
    from mnist_cnn.experiment import predict_run_test_images

    result = predict_run_test_images(args.run_dir, args.index, args.data)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return 0
    for position, index in enumerate(result.indices):
        print(f"X_test[{index}] true {result.true_labels[position]}")
        for name, answers in result.predictions.items():
            print(f"  {name}: {answers[position].describe()}")
    return 0


def predict_image_files(args: argparse.Namespace) -> int:
    """Each file's answers; a bad file gets its own error line, the others are still printed."""
    from mnist_cnn.predict.files import predict_files
    from mnist_cnn.store.runs import RunFolder

    models = RunFolder.existing(args.run_dir).load_models()
    results = predict_files(models, args.images, sys.stdin.buffer.read, args.show_input, args.polarity)
    for failed in (result for result in results if result.error is not None):
        print(f"mnist-cnn: error: {failed.error}", file=sys.stderr)
    answered = [result for result in results if result.predictions is not None]
    if args.json:
        print(json.dumps([result.to_json() for result in answered], indent=2))
    else:
        for result in answered:
            print(result.source)
            for name, answer in result.predictions.items():
                print(f"  {name}: {answer.describe()}")
    return EXIT_USER_ERROR if len(answered) < len(results) else 0


def command_export(args: argparse.Namespace) -> int:
    """Export on Keras's TensorFlow backend (plan.EXPORT_BACKEND says why), in this process when
    Keras is not loaded yet, else in a new one: the backend cannot change once Keras is imported."""
    from mnist_cnn.core.environment import select_backend
    from mnist_cnn.export.plan import EXPORT_BACKEND, plan_export

    if args.format == "web":
        return command_export_web(args)
    plan = plan_export(args.run_dir, args.format, args.models, args.out)  # Every check before Keras loads.
    if "keras" in sys.modules and sys.modules["keras"].backend.backend() != EXPORT_BACKEND:
        return export_in_new_process(args, EXPORT_BACKEND)
    select_backend(EXPORT_BACKEND)
    from mnist_cnn.export.exporter import export_run

    result = export_run(plan)
    for model in result.models:
        artifact = result.destination.artifact_path(model.name)
        print(f"{model.name}: {artifact} ({args.format}), {model.parity.describe()}")
    print(f"wrote {result.destination.manifest_path}")
    return 0


def export_in_new_process(args: argparse.Namespace, backend: str) -> int:
    """The same export command in a new Python with KERAS_BACKEND=backend; its output passed on."""
    import os
    import subprocess

    command = [sys.executable, "-m", "mnist_cnn.cli", *(["--debug"] if args.debug else []), "export"]
    command += [str(args.run_dir), "--format", args.format]
    command += ["--models", ",".join(args.models)] if args.models else []
    command += ["--out", str(args.out)] if args.out is not None else []
    finished = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "KERAS_BACKEND": backend})
    sys.stdout.write(finished.stdout)
    sys.stderr.write(finished.stderr)
    return finished.returncode


def resumed_backend(args: argparse.Namespace) -> str | None:
    """A resumed run continues on the backend it started on, unless --backend says otherwise."""
    if getattr(args, "resume", None) is None:
        return None
    from mnist_cnn.store.runs import RunFolder
    from mnist_cnn.store.sweeps import SweepFolder

    if args.command == "compare":
        return SweepFolder.existing(args.resume).read_settings()["experiment"].get("backend")
    return RunFolder.existing(args.resume).config().backend


def stop_on_sigterm(signum: int, frame: Any) -> None:
    """`kill` (SIGTERM) stops like Ctrl-C: the run is marked interrupted and can be resumed."""
    raise KeyboardInterrupt


# Commands that use one run's trained models: the one given, else the bundled run (resolve_run).
COMMANDS_WITH_A_RUN = ("evaluate", "predict", "serve", "export")

# Commands that load no Keras model: no backend to choose, and no Keras, JAX or TensorFlow imported.
COMMANDS_WITHOUT_KERAS = ("variants", "publish")


def runs_without_keras(args: argparse.Namespace) -> bool:
    """Commands that read only files (variants, publish), and ``serve --runtime onnx``, load no
    Keras model: no backend to choose, and no TensorFlow imported (hundreds of MiB the ONNX server
    would carry for nothing)."""
    return args.command in COMMANDS_WITHOUT_KERAS or (args.command == "serve" and args.runtime == "onnx")


def server_settings_from_args(args: argparse.Namespace) -> tuple[ServerSettings, BatchingSettings]:
    server = ServerSettings(host=args.host, port=args.port, workers=args.workers, runtime=args.runtime)
    settings = BatchingSettings(max_batch=args.max_batch, window_ms=args.batch_window_ms, queue_size=args.queue_size)
    return server, settings


def command_serve(args: argparse.Namespace, backend: str | None) -> int:
    from mnist_cnn.serve.process import serve

    server, settings = server_settings_from_args(args)
    serve(args.run_dir, server, settings)
    return 0


def command_export_web(args: argparse.Namespace) -> int:
    """The static site: the page, the ONNX models and onnxruntime-web, in one folder."""
    from mnist_cnn.serve.site import write_site
    from mnist_cnn.store.runs import RunFolder

    run = RunFolder.existing(args.run_dir)
    if not run.export_state("onnx").complete:  # The site's models: the ONNX exports, made (again) now.
        code = command_export(argparse.Namespace(**{**vars(args), "format": "onnx", "models": None, "out": None}))
        if code:
            return code
    out = write_site(run.path, args.out if args.out is not None else run.site_folder())
    print(f"mnist-cnn: wrote the page and its models to {out}")
    print(f"Try it: python -m http.server --directory {out} --bind 127.0.0.1 8000, then open http://127.0.0.1:8000/")
    return 0


# ---------------------------------------------------------------- checked before the backend
# Each command's flags, paths, files and port, checked before select_backend imports Keras, JAX
# and TensorFlow (and before Ray or numba load, or anything is written): a typo is one line in
# about a second, not after 15 to 90 s of imports. The rules themselves live once, in the config
# dataclasses (core.config) and the folders' own checks (store): these functions only build them.


def check_experiment_flags(args: argparse.Namespace) -> None:
    from mnist_cnn.core.environment import check_device
    from mnist_cnn.store.runs import RunFolder

    check_device(args.device, args.backend)
    if args.resume is not None:
        RunFolder.existing(args.resume).config()
    else:
        config_from_args(args, backend=None)
    tracking_from_args(args)


def check_variants_flags(args: argparse.Namespace) -> None:
    gather_variants(args.variant_files, args.inline_variants)


def check_track_flags(args: argparse.Namespace) -> None:
    from mnist_cnn.store.sweeps import existing_run_or_sweep

    for path in args.paths:
        existing_run_or_sweep(path)
    tracking_from_args(args)


def check_publish_flags(args: argparse.Namespace) -> None:
    from mnist_cnn.store.sweeps import SweepFolder

    SweepFolder.existing(args.sweep_dir)


def check_report_flags(args: argparse.Namespace) -> None:
    from mnist_cnn.store.sweeps import existing_run_or_sweep

    existing_run_or_sweep(args.path)


def check_run_with_models(args: argparse.Namespace) -> None:
    """evaluate and predict: a run folder with at least one trained model."""
    from mnist_cnn.store.runs import RunFolder

    RunFolder.existing(args.run_dir).trained_model_folders()


def check_serve_flags(args: argparse.Namespace) -> None:
    from mnist_cnn.serve.preflight import check_serve

    server, _ = server_settings_from_args(args)
    check_serve(args.run_dir, server)


def check_export_flags(args: argparse.Namespace) -> None:
    from mnist_cnn.export.plan import plan_export
    from mnist_cnn.store.runs import RunFolder

    if args.format == "web":
        RunFolder.existing(args.run_dir).trained_model_folders()
    else:
        plan_export(args.run_dir, args.format, args.models, args.out)


PRECHECKS: dict[str, Any] = {
    "experiment": check_experiment_flags,
    "train": check_experiment_flags,
    "compare": check_compare_flags,
    "track": check_track_flags,
    "publish": check_publish_flags,
    "report": check_report_flags,
    "variants": check_variants_flags,
    "evaluate": check_run_with_models,
    "predict": check_run_with_models,
    "serve": check_serve_flags,
    "export": check_export_flags,
}


COMMANDS: dict[str, Any] = {
    "experiment": command_experiment,
    "train": command_experiment,
    "compare": command_compare,
    "track": command_track,
    "publish": command_publish,
    "report": command_report,
    "variants": command_variants,
    "evaluate": command_evaluate,
    "predict": command_predict,
    "serve": command_serve,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code (0 ok, 1 a bug, 2 a user error, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    previous_handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        from mnist_cnn.core.environment import require_device, select_backend, select_device

        # Ctrl-C and `kill` stop a run cleanly, even when started from a shell that
        # ignores SIGINT for background jobs (the handler would otherwise be inherited off).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, stop_on_sigterm)
        if args.command in COMMANDS_WITH_A_RUN:
            resolve_run(args)
        PRECHECKS[args.command](args)  # Every value, path and port: one line now, not after Keras loads.
        if getattr(args, "bundled", False):  # Said once the command is known to go ahead.
            print(f"mnist-cnn: using {BUNDLED_RUN_TEXT} (--run RUN_DIR for your own)", file=sys.stderr, flush=True)
        if args.command == "export":  # It chooses its own backend: TensorFlow, the one that exports well.
            return command_export(args)
        device = getattr(args, "device", "auto")
        select_device(device)
        backend = None if runs_without_keras(args) else select_backend(args.backend or resumed_backend(args))
        require_device(device)
        return COMMANDS[args.command](args, backend)
    except KeyboardInterrupt:
        print("mnist-cnn: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except UserError as error:
        if args.debug:
            raise
        print(f"mnist-cnn: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception:
        # Not something the user did: a bug. Keep the traceback, it is what a report needs.
        traceback.print_exc()
        print(
            f"mnist-cnn: this is a bug in mnist-cnn {version_text()}; please report it with the traceback above",
            file=sys.stderr,
        )
        return EXIT_BUG
    finally:
        signal.signal(signal.SIGINT, previous_handlers[0])
        signal.signal(signal.SIGTERM, previous_handlers[1])


if __name__ == "__main__":
    sys.exit(main())
