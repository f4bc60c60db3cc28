"""The package's shape: no import circle, a light server, one home for the run-folder format.

Also: run folders written by earlier versions (docs/full-run) still load, and every typed
result writes back exactly the JSON it read.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_cnn.core.results import Comparison, ModelMetrics, PredictionsOnTestImages
from mnist_cnn.store import layout, runs

PACKAGE = Path(runs.__file__).parent.parent
FULL_RUN = PACKAGE.parent.parent / "docs" / "full-run"

# The floors of the package, bottom to top (mnist_cnn/__init__.py draws them): a unit imports
# only units on lower floors, never one beside or above it.
FLOORS = {
    "core": 1,
    "predict": 2,
    "data": 3,
    "store": 4,
    "train": 4,
    "report": 5,
    "serve": 5,
    "experiment": 6,
    "sweep": 7,
    "track": 5,
    "export": 5,
    "cli": 8,
}


def package_modules() -> dict[str, ast.Module]:
    """Every module of the package by dotted name below mnist_cnn (``core.config``, ``cli``)."""
    return {
        ".".join(path.relative_to(PACKAGE).with_suffix("").parts): ast.parse(path.read_text(encoding="utf-8"))
        for path in sorted(PACKAGE.rglob("*.py"))
    }


def imported_package_modules(tree: ast.Module) -> set[str]:
    """Every ``mnist_cnn.X.Y`` this module imports (as ``X.Y``), at the top or inside a function."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("mnist_cnn."):
                module = node.module.removeprefix("mnist_cnn.")
                found.add(module)
                # ``from mnist_cnn.train import fused`` imports the module train.fused.
                found.update(f"{module}.{alias.name}" for alias in node.names)
            elif node.module == "mnist_cnn":
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(
                alias.name.removeprefix("mnist_cnn.") for alias in node.names if alias.name.startswith("mnist_cnn.")
            )
    return found


def unit_of(module: str) -> str:
    """The unit a module belongs to: its subpackage, or the module itself at the top."""
    return module.split(".")[0]


def test_no_import_circle_in_the_package() -> None:
    modules = package_modules()
    graph = {name: imported_package_modules(tree) & set(modules) - {name} for name, tree in modules.items()}
    assert graph["train.loop"] and graph["cli"]  # The walk sees imports, including those inside functions.
    assert "train.fused" in graph["train.loop"]  # ...and modules imported from a subpackage by name.
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in visiting:
            pytest.fail("import circle: " + " -> ".join([*visiting[visiting.index(name) :], name]))
        if name in done:
            return
        visiting.append(name)
        for imported in sorted(graph[name]):
            visit(imported)
        visiting.pop()
        done.add(name)

    for name in graph:
        visit(name)


def test_every_unit_of_the_package_has_a_floor() -> None:
    units = {unit_of(name) for name in package_modules() if name != "__init__"}
    assert units == set(FLOORS)


def layering_violations(modules: dict[str, ast.Module]) -> list[str]:
    violations = set()
    for name, tree in modules.items():
        unit = unit_of(name)
        if unit not in FLOORS:
            continue
        for imported in imported_package_modules(tree):
            other = unit_of(imported)
            if other in FLOORS and other != unit and FLOORS[other] >= FLOORS[unit]:
                violations.add(f"{name} (floor {FLOORS[unit]}) imports {imported} (floor {FLOORS[other]})")
    return sorted(violations)


def test_subpackages_import_only_the_floors_below_them() -> None:
    violations = layering_violations(package_modules())
    assert not violations, "imports that go up or sideways:\n" + "\n".join(violations)


def test_the_layering_test_sees_upward_and_sideways_imports() -> None:
    upward = ast.parse("def f():\n    from mnist_cnn.report.html import write_run_report\n")
    sideways = ast.parse("from mnist_cnn.store import runs\n")
    violations = layering_violations({"train.loop": upward, "train.models": sideways})
    assert "train.loop (floor 4) imports report.html (floor 5)" in violations
    assert "train.models (floor 4) imports store.runs (floor 4)" in violations


def test_importing_the_server_loads_neither_matplotlib_nor_the_trainers() -> None:
    code = (
        "import sys, mnist_cnn.serve.app; "
        "print(','.join(sorted(m for m in sys.modules if m == 'matplotlib' or m.startswith("
        "('mnist_cnn.train', 'mnist_cnn.experiment', 'mnist_cnn.report', 'mnist_cnn.store.checkpoints')))))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == ""


RUN_FILE_NAMES = [
    value for name, value in vars(layout).items() if name.endswith(("_FILE", "_JSON", "_MARKDOWN", "_FIGURE"))
]


def string_constants(tree: ast.Module) -> list[str]:
    """String literals of a module, docstrings left out (they may name files to explain them)."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def test_no_run_folder_file_name_outside_the_run_folder_module() -> None:
    assert {"config.json", "model.keras", "metrics.json", "history.csv", "checkpoint.npz"} <= set(RUN_FILE_NAMES)
    curve_figures = ("loss.png", "accuracy.png")
    for name, tree in package_modules().items():
        if name == "store.layout":
            continue
        for text in string_constants(tree):
            for file_name in (*RUN_FILE_NAMES, *curve_figures):
                assert file_name not in text, (
                    f"{name} names {file_name!r}: ask the store (RunFolder, SweepFolder) for it"
                )


def test_a_run_folder_of_an_earlier_version_still_loads() -> None:
    run = runs.RunFolder.existing(FULL_RUN)
    config = run.config()
    assert config.epochs == 60 and config.backend == "jax" and config.models == ("A", "B")
    for folder in run.model_folders():
        metrics = folder.read_metrics()
        assert metrics.epochs == 60 and len(folder.read_history()) == 60
    comparison = run.read_comparison()
    assert comparison.second_vs_first is not None and comparison.second_vs_first.parameter_ratio == pytest.approx(
        1.98, abs=0.01
    )
    assert run.read_predictions().true_labels == [7, 2, 1]


@pytest.mark.parametrize(
    ("relative_path", "record"),
    [
        ("Model_A/metrics.json", ModelMetrics),
        ("Model_B/metrics.json", ModelMetrics),
        ("comparison.json", Comparison),
        ("predictions.json", PredictionsOnTestImages),
    ],
)
def test_typed_results_write_back_the_json_they_read(relative_path: str, record: type) -> None:
    document = json.loads((FULL_RUN / relative_path).read_text())
    assert without_new_empty_fields(record.from_json(document).to_json(), document) == document


def without_new_empty_fields(written: object, read: object) -> object:
    """``written`` less the fields a newer version adds as null (resumed_from_epoch, in runs
    older than resuming): everything the old file held must come back the same."""
    if isinstance(written, dict) and isinstance(read, dict):
        return {
            key: without_new_empty_fields(value, read.get(key))
            for key, value in written.items()
            if key in read or value is not None
        }
    return written


@pytest.mark.parametrize(
    ("record", "document", "message"),
    [
        (ModelMetrics, {"model": "Model_A"}, "lacks"),
        (ModelMetrics, [], "expected a JSON object"),
        (Comparison, {"models": 3}, "map model names"),
        (PredictionsOnTestImages, {"indices": [0], "true_labels": [7], "predictions": {"A": [{"digit": 1}]}}, "lacks"),
    ],
)
def test_malformed_results_are_refused_with_a_value_error(record: type, document: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        record.from_json(document)
