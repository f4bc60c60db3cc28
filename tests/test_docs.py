"""The documentation site builds with warnings as errors, and what it generates is right.

The site (docs/site, `make docs`) is built once into a temporary folder with ``sphinx-build -W``:
a broken cross-reference, a missing image or a broken internal link fails the build. Then the
CLI reference, written from the argparse parser at build time, must list every command of
``mnist-cnn --help`` and, in each command's section, every option and positional argument of
``mnist-cnn COMMAND --help``; and the result tables must show the numbers of the published JSON
files they are written from.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from mnist_cnn.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    built = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "-n", "-E", "-q", "-b", "html", str(DOCS / "site"), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, f"sphinx-build -W failed:\n{built.stdout}\n{built.stderr}"
    return out


def help_output(*command: str) -> str:
    """What ``mnist-cnn COMMAND --help`` prints, from the same main() the console script runs."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    return printed.getvalue()


def commands_in(top_help: str) -> list[str]:
    """The subcommands argparse lists under COMMAND, one indented line each."""
    return re.findall(r"^ {4}([a-z][\w-]*)(?:\s|$)", top_help, flags=re.MULTILINE)


def arguments_in(command_help: str) -> set[str]:
    """Every option string (``-h``, ``--epochs``) and positional argument of one command's --help.

    argparse indents each argument's line by two spaces, and the continuation of a long help by
    many more, so a line with exactly two spaces starts an argument: its invocation runs to the
    first gap of two spaces."""
    found = set()
    for line in command_help.splitlines():
        match = re.match(r"^ {2}(?! )(\S.*?)(?: {2,}|$)", line)
        if not match:
            continue
        invocation = match.group(1)
        options = re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", invocation)
        found.update(options or [invocation.split()[0]])
    return found


class Sections(HTMLParser):
    """The text inside each <section id=...> of a page (nested sections count for their parents),
    without the text of <pre> blocks: a usage line names every option, the list must too."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.open: list[tuple[str, set[str]]] = []
        self.text: dict[str, list[str]] = {}
        self.in_pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.in_pre += tag == "pre"
        if tag == "section":
            ids = {value for name, value in attrs if name == "id" and value}
            self.open.append((tag, ids))
            for identifier in ids:
                self.text.setdefault(identifier, [])

    def handle_endtag(self, tag: str) -> None:
        self.in_pre -= tag == "pre"
        if tag == "section" and self.open:
            self.open.pop()

    def handle_data(self, data: str) -> None:
        if self.in_pre:
            return
        for _, ids in self.open:
            for identifier in ids:
                self.text[identifier].append(data)

    def section(self, identifier: str) -> str:
        return "".join(self.text[identifier])


def page_text(site: Path, page: str) -> str:
    sections = Sections()
    sections.feed((site / page).read_text(encoding="utf-8"))
    return " ".join(" ".join(parts) for parts in sections.text.values())


def test_cli_reference_lists_every_command_and_option_of_help(site: Path) -> None:
    commands = commands_in(help_output())
    assert {"experiment", "train", "compare", "predict", "serve", "export"} <= set(commands), commands
    sections = Sections()
    sections.feed((site / "cli.html").read_text(encoding="utf-8"))
    top = sections.section("command-line-reference")
    for option in arguments_in(help_output()):
        assert option in top, f"mnist-cnn {option} is missing from the CLI reference"
    for command in commands:
        assert f"cli-{command}" in sections.text, f"mnist-cnn {command} has no section in the CLI reference"
        text = sections.section(f"cli-{command}")
        assert f"mnist-cnn {command}" in text
        arguments = arguments_in(help_output(command))
        assert "--help" in arguments
        missing = sorted(argument for argument in arguments if argument not in text)
        assert not missing, f"mnist-cnn {command}: {missing} in --help but not in its section of the CLI reference"


def test_result_tables_show_the_published_numbers(site: Path) -> None:
    study = json.loads((DOCS / "study" / "statistics.json").read_text())
    dropout = next(c for c in study["comparisons"] if c["second"] == "Model_A_dropout")
    holm = f"{dropout['differences']['test_accuracy']['holm_p']:.3g}"
    assert holm in page_text(site, "comparing.html")

    bench = json.loads((DOCS / "bench-results.json").read_text())["summary"]
    assert f"{bench['experiment']['project_minutes_60_epochs']:.1f} min" in page_text(site, "performance.html")

    serve = json.loads((DOCS / "serve-bench.json").read_text())
    against = (serve.get("against") or {}).get("label") or "(no comparison checkout)"
    best = max(row["requests_per_second"] for row in serve["rows"] if not row["server"].endswith(against))
    assert f"{best:,.0f}" in page_text(site, "serving.html")


def test_site_links_the_published_reports(site: Path) -> None:
    for name in ("compare", "study", "full-run"):
        assert (site / "published" / name / "report.html").is_file()
    assert (site / "published" / "compare" / "seed-0" / "report.html").is_file()
