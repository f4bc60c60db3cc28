"""mnist-cnn: train, compare and serve small convolutional networks for MNIST digits.

The package is laid out in story order:
config (what to run) -> data (MNIST, offline) -> models (one parametric CNN builder)
-> training (model.fit with timing, progress and checkpoints) -> evaluation
-> reporting (figures, comparison tables) -> experiment (ties it together) -> cli.
"""

__version__ = "0.1.0"
