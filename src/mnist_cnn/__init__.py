"""mnist-cnn: train, compare and serve small convolutional networks for MNIST digits.

The modules, in story order (each imports only modules above it; no import circle):

- errors       every error a user can cause (UserError and its kinds)
- config       what to run: the specification's defaults, Model_A/Model_B as named variants
- results      typed results (metrics, predictions, comparison, checkpoint state) and their JSON
- runs         the run folder: every file name, atomic writes, status, lock, model save/load
- data         MNIST the Keras way, offline when it has to be; the split; the epoch order
- environment  choosing the Keras backend (quietly) and describing the machine
- models       one parametric CNN builder
- augment      --augment: each training image redrawn at random, seeded (JAX)
- training     the epoch loop, both trainers, progress and ETA
- fused        the fast trainer: the same model as one compiled JAX step
- checkpoints  per-epoch checkpoints
- preprocess   any photo or drawing of a digit -> the 28x28 image the models expect
- inference    a prepared digit -> every model's answer (used by predict and serve)
- evaluation   test metrics, inference timing, predictions for test images
- robustness   held-out digits drawn unlike MNIST's, to measure what --augment buys
- reporting    figures and the comparison table
- report       report.html: one self-contained page per run and per sweep (Jinja2)
- experiment   run_experiment(config, run_dir): the whole specification, resumable
- stats        paired statistics over seeds: t and bootstrap intervals, tests, power
- sweep        compare --seeds: one trial per seed as a Ray task, CPUs shared out
- sweep_report a sweep's statistics.json/.md and figures, read back from its run folders
- compare      run_sweep(config, sweep_dir): trials, statistics and reports, resumable
- batching     the server's inference worker: dynamic batching, bounded queue
- serve        the draw-a-digit web app and JSON API
- cli          the mnist-cnn command: parsing and printing only
"""

__version__ = "0.1.0"
