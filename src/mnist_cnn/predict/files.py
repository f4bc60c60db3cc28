"""Digits in image files (``mnist-cnn predict RUN IMAGE...``): each file read, prepared and answered.

A file that cannot be used (not an image, empty, blank, too large) gets its own error and the
others are still answered: one bad photo in a folder does not cost the rest.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnist_cnn.core.errors import ImageInputError
from mnist_cnn.core.results import Prediction
from mnist_cnn.predict.inference import predict_digit, save_model_input
from mnist_cnn.predict.preprocess import prepare_digit, read_image_bytes, read_image_file

if TYPE_CHECKING:
    import keras

STANDARD_INPUT = "-"  # The source name that reads the image from standard input.


@dataclasses.dataclass(frozen=True)
class FilePrediction:
    """Every model's answer for one file, or why the file could not be used."""

    source: str
    predictions: dict[str, Prediction] | None = None
    error: str | None = None
    model_input: Path | None = None  # The 28x28 image the models saw, when asked to keep it.

    def to_json(self) -> dict[str, Any]:
        """The JSON ``predict --json`` prints for a file that was answered (top 3, not all ten)."""
        document: dict[str, Any] = {
            "image": self.source,
            "predictions": {
                name: {key: value for key, value in answer.to_json().items() if key != "probabilities"}
                for name, answer in (self.predictions or {}).items()
            },
        }
        if self.model_input is not None:
            document["model_input"] = str(self.model_input)
        return document


def predict_files(
    models: dict[str, keras.Model],
    sources: Sequence[str],
    read_standard_input: Callable[[], bytes],
    show_input: Path | None = None,
    polarity: str = "auto",
) -> list[FilePrediction]:
    """Answer each file of ``sources`` (``-`` reads ``read_standard_input()``) with every model.

    With ``show_input``, the 28x28 image each file became is saved there as a PNG (one file
    per input, numbered when base names repeat); ``polarity``
    is prepare_digit's (guessed per image by default).
    """
    results = []
    saved_names: set[str] = set()  # So that two inputs with one base name keep both images.
    for source in sources:
        try:
            if source == STANDARD_INPUT:
                image = read_image_bytes(read_standard_input(), "standard input")
            else:
                image = read_image_file(Path(source))
            digit = prepare_digit(image, source, polarity)
        except ImageInputError as error:
            results.append(FilePrediction(source, error=str(error)))
            continue
        saved = save_model_input(digit, source, show_input, saved_names) if show_input is not None else None
        results.append(FilePrediction(source, predictions=predict_digit(models, digit), model_input=saved))
    return results
