"""report.html: one self-contained page per run, checked as HTML, for its content, offline, and in Chromium."""

from __future__ import annotations

import base64
import html.parser
import io
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnist_cnn.core.config import MODEL_VARIANTS, ExperimentConfig, ModelSpec
from mnist_cnn.core.errors import RunFolderError
from mnist_cnn.core.results import Comparison, ModelMetrics
from mnist_cnn.report.figures import comparison_markdown
from mnist_cnn.report.html import (
    architecture_sentences,
    comparison_rows,
    comparison_waiting,
    confusion_matrix,
    per_digit_scores,
    write_run_report,
)
from mnist_cnn.report.measures import BY_FIELD, MEASURES, format_value
from mnist_cnn.store.runs import RunFolder

from .conftest import SMOKE_LIMIT, cli

CHROMIUM = "/usr/bin/chromium"
RUN_SECTIONS = ("data", "models", "training", "evaluation", "comparison", "mistakes", "predictions", "environment")
VOID_ELEMENTS = {"meta", "img", "br", "hr", "link", "input", "source", "col", "area", "base", "wbr"}


class Page(html.parser.HTMLParser):
    """Collects ids, image sources and links, and checks that every element is closed in order."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.ids: set[str] = set()
        self.images: list[str] = []
        self.links: list[str] = []
        self.problems: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(values["id"])
        if tag == "img":
            self.images.append(values.get("src") or "")
        if tag == "a":
            self.links.append(values.get("href") or "")
        if tag not in VOID_ELEMENTS:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.open[-1:] or 'nothing'}")
            return
        self.open.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    assert not page.problems and not page.open, (page.problems, page.open)
    return page


def decoded_images(page: Page) -> list[Image.Image]:
    images = []
    for source in page.images:
        assert source.startswith("data:image/png;base64,"), source[:60]
        image = Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1])))
        image.load()
        assert image.width > 50 and image.height > 50
        images.append(image)
    return images


def assert_offline(path: Path, page: Page) -> None:
    """Nothing in the page reaches outside the file: every image inline, every link an anchor or relative."""
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", text, flags=re.IGNORECASE)
    assert not re.search(r"<(script|link|iframe)\b", text)
    for link in page.links:
        assert link.startswith("#") or not re.match(r"^[a-z]+:", link), link


def test_the_experiment_writes_a_complete_self_contained_report(smoke_run: Path) -> None:
    report = RunFolder(smoke_run).report_path
    page = parse(report)
    assert set(RUN_SECTIONS) <= page.ids
    assert_offline(report, page)
    # Samples, the overlay's two panels, each model's two curves, confusion matrix and mistakes, X_test[0..2].
    assert len(decoded_images(page)) == 1 + 2 + 2 * 2 + 2 + 2 + 3
    text = " ".join(" ".join(page.text).split())
    for name in ("Model_A", "Model_B"):
        metrics = RunFolder(smoke_run).model(name).read_metrics()
        wrong = round((1 - metrics.test_accuracy) * SMOKE_LIMIT)
        assert f"{wrong} of {SMOKE_LIMIT} test images misread" in text  # The same test set as metrics.json.
        assert format_value(metrics.test_accuracy, BY_FIELD["test_accuracy"]) in text
    for index in (0, 1, 2):
        assert re.search(rf"X_test\[{index}\] ?, true digit \d: Model_A reads \d", text)
    assert "Missing" not in text


def test_the_report_of_a_finished_run_says_finished(smoke_run: Path) -> None:
    """report.html is written once status.json says finished, so its header says so too."""
    run = RunFolder(smoke_run)
    assert run.read_status()["state"] == "finished"
    header = run.report_path.read_text(encoding="utf-8").split("</header>")[0]
    assert re.search(r"</code>: finished\.", header), header[-600:]
    assert "running" not in header


def test_a_report_that_cannot_be_written_leaves_the_run_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mnist_cnn import experiment

    def broken(*arguments: object, **keywords: object) -> Path:
        raise RunFolderError("cannot write report.html: No space left on device")

    monkeypatch.setattr(experiment, "write_run_report", broken)
    stream = io.StringIO()
    config = ExperimentConfig(models=("A",), limit=64, epochs=1, backend="jax")
    metrics = experiment.run_experiment(config, tmp_path / "run", stream=stream)
    run = RunFolder(tmp_path / "run")
    assert set(metrics) == {"Model_A"} and run.is_finished() and not run.report_path.exists()
    assert f"the run is finished: write its report with 'mnist-cnn report {run.path}'" in stream.getvalue()


def test_a_one_model_run_speaks_only_of_its_model(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = cli("train", "--model", "B", "--limit", "300", "--epochs", "1", "--out", run_dir)
    assert result.returncode == 0, result.stderr
    run = RunFolder(run_dir)
    page = parse(run.report_path)
    for text in (run.report_path.read_text(encoding="utf-8"), (run_dir / "comparison.md").read_text()):
        assert "Model_B" in text
        for other in ("Model_A", "A vs B", "Both models must finish", "/Model_"):
            assert other not in text, other
    for text in (" ".join(page.text), (run_dir / "comparison.md").read_text()):
        assert not re.search(r"\bratios?\b", text, flags=re.IGNORECASE)
    assert "comparison" not in page.ids and set(RUN_SECTIONS) - {"comparison"} <= page.ids
    headings = re.findall(r"<h2>(\d+)\. ", run.report_path.read_text(encoding="utf-8"))
    assert headings == [str(number) for number in range(1, 8)]  # Numbered without a gap.
    assert "Model_B has 64 filters." in " ".join(" ".join(page.text).split())


def fake_metrics(name: str, accuracy: float) -> ModelMetrics:
    return ModelMetrics(
        model=name,
        parameters=1000,
        test_loss=0.1,
        test_accuracy=accuracy,
        best_val_accuracy=accuracy,
        best_val_epoch=1,
        epochs=1,
        training_seconds=12.25,
        seconds_per_epoch=[12.25],
        seconds_per_epoch_median=12.25,
        first_epoch_seconds=12.25,
        resumed_from_epoch=None,
        inference_ms_per_image_batched=0.05,
        inference_ms_single_image=0.5,
    )


def test_tables_and_texts_take_any_number_of_models() -> None:
    metrics = {name: fake_metrics(name, 0.9 + index / 100) for index, name in enumerate(("M1", "M2", "M3"))}
    comparison = Comparison.of(metrics)
    markdown = comparison_markdown(comparison)
    assert markdown.startswith("| | M1 | M2 | M3 |\n|---|---:|---:|---:|\n")
    assert "| Test accuracy | 90.00 % | 91.00 % | 92.00 % |" in markdown and "ratio" not in markdown
    rows = comparison_rows(comparison)
    assert [row.label for row in rows] == [measure.title for measure in MEASURES]
    assert all(len(row.cells) == 3 for row in rows)
    specs = [ModelSpec("X", "M1", 8), ModelSpec("Y", "M2", 16), ModelSpec("Z", "M3", 24, kernel_size=5)]
    assert architecture_sentences(specs[:2])[1] == "M1 has 8 filters, M2 16."
    assert architecture_sentences(specs[:2])[0] == (
        "One network: Conv2D(filters) 3×3 → MaxPooling 2×2 → Flatten → Dense 200 → Dense 100 → Dense 10 (softmax)."
    )
    assert architecture_sentences(specs)[0].endswith(
        "M3: Conv2D 24 5×5 → MaxPooling 2×2 → Flatten → Dense 200 → Dense 100 → Dense 10 (softmax)."
    )
    assert comparison_waiting(["M1", "M2", "M3"], ["M1"]) == (
        "M2, M3 have not finished: the comparison needs every model of the run."
    )
    assert comparison_waiting(["M1"], []) is None


def test_a_run_of_three_models_renders_them_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(MODEL_VARIANTS, "C", ModelSpec(key="C", name="Model_C", filters=16))
    config = ExperimentConfig(models=("A", "B", "C"), epochs=1, limit=SMOKE_LIMIT, backend="jax")
    run = RunFolder(tmp_path / "three").create()
    run.write_record(config, {})
    run.write_status("finished")
    history = [{"epoch": 1, "loss": 0.5, "accuracy": 0.8, "val_loss": 0.6, "val_accuracy": 0.75, "seconds": 12.25}]
    for index, spec in enumerate(config.model_specs()):
        run.model(spec.name).write_metrics(fake_metrics(spec.name, 0.9 + index / 100))
        run.model(spec.name).write_history(history)
    page = parse(write_run_report(run.path))
    text = " ".join(" ".join(page.text).split())
    assert "Model_A vs Model_B vs Model_C on MNIST" in text
    assert "Model_A has 32 filters, Model_B 64, Model_C 16." in text
    assert "Test accuracy 90.00 % 91.00 % 92.00 %" in text
    assert "this run has 3" in text and "not finished" not in text


def test_confusion_matrix_and_per_digit_scores_by_hand() -> None:
    true = np.array([0, 0, 1, 1, 1, 2])
    predicted = np.array([0, 1, 1, 1, 2, 2])
    counts = confusion_matrix(true, predicted)
    assert counts[0].tolist()[:3] == [1, 1, 0] and counts[1].tolist()[:3] == [0, 2, 1] and counts[2, 2] == 1
    assert counts.sum() == 6
    scores = per_digit_scores(counts)
    assert scores[1] == {"digit": 1, "images": 3, "precision": 2 / 3, "recall": 2 / 3}
    assert scores[0]["precision"] == 1.0 and scores[0]["recall"] == 0.5
    assert scores[5] == {"digit": 5, "images": 0, "precision": None, "recall": None}


def test_a_folder_without_its_models_gets_a_report_of_what_it_has(smoke_run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "no-models"
    shutil.copytree(smoke_run, copy)
    for model_file in copy.glob("*/model.keras"):
        model_file.unlink()
    (copy / "report.html").unlink()
    result = cli("report", copy)
    assert result.returncode == 0, result.stderr
    page = parse(copy / "report.html")
    text = " ".join(page.text)
    assert text.count("Missing: model.keras") == 2
    assert "Needs the trained model" in text
    assert "top 3 digits only" in text  # X_test[0..2] from the predictions the run saved.
    # Samples, the overlay's and each model's two curve panels, X_test[0..2]: what the folder still has.
    assert len(decoded_images(page)) == 1 + 2 + 2 * 2 + 3


def test_report_of_a_missing_folder_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    result = cli("report", tmp_path / "nothing-here")
    assert result.returncode == 2
    assert "does not exist" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.parametrize("width", [390, 1280])
def test_chromium_shows_every_image_without_errors_and_fits_a_phone(smoke_run: Path, width: int) -> None:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": width, "height": 900})
        errors: list[str] = []
        requests: list[str] = []
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("request", lambda request: requests.append(request.url))
        page.goto(RunFolder(smoke_run).report_path.resolve().as_uri())
        page.wait_for_load_state("load")
        broken = page.evaluate("[...document.images].filter(i => !i.complete || i.naturalWidth === 0).length")
        count = page.evaluate("document.images.length")
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        # Tables scroll rather than overflow the page; on a phone none should need to.
        cut_tables = page.evaluate(
            "[...document.querySelectorAll('.scroll')].filter(box => box.scrollWidth > box.clientWidth + 1).length"
        )
        curve_widths = page.evaluate(
            "[...document.querySelectorAll('#training img')].map(image => image.getBoundingClientRect().width)"
        )
        browser.close()
    assert errors == []
    # Samples, 2 curve panels for all models and 2 for each model, 2 x (confusion, mistakes), 3 predictions.
    assert count == 14 and broken == 0
    assert cut_tables == 0, f"{cut_tables} table(s) wider than a {width}px screen"
    assert len(curve_widths) == 6 and min(curve_widths) >= (330 if width < 600 else 400), curve_widths
    assert all(url.startswith(("file:", "data:")) for url in requests), requests
    assert overflow <= 1, f"the page is {overflow}px wider than a {width}px screen"
