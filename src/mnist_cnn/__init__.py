"""mnist-cnn: train, compare and serve small convolutional networks for MNIST digits.

One subpackage per role. Each imports only the floors below it (tests/test_architecture.py
holds the rule), so the story reads bottom to top:

    cli.py        8  the mnist-cnn command: parse flags, print, exit codes
    sweep/        7  compare: one trial per seed as Ray tasks, CPUs shared out, resumable
    experiment.py 6  run_experiment(config, run_dir): the specification end to end; evaluate_run
    track/        5  every run and sweep also in MLflow, from its folders (--track, mnist-cnn track)
    report/       5  figures, the one table of measures, report.html per run and per sweep
    serve/        5  the draw-a-digit web app, its JSON API and batching inference worker
    export/       5  ONNX, SavedModel and LiteRT files of a run's models, checked against Keras
    train/        4  the Keras builder of a layer list, both trainers (fused, model.fit), evaluation
    store/        4  run and sweep folders: every file name, records, checkpoints, the lock
    data/         3  MNIST the Keras way (offline when it must), augmentation, robustness sets
    predict/      2  any image of a digit -> the 28x28 input -> every model's answer
    core/         1  the network as a list of layers, settings and variants, typed results and
                     statistics, errors, atomic files
"""

from mnist_cnn.core.version import package_version

__version__ = package_version()
