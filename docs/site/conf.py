"""Sphinx configuration of the mnist-cnn documentation site (``make docs``).

Markdown pages (MyST) with the furo theme. Three extensions of this folder's ``_ext/``:
``cli_reference`` writes the CLI reference from the argparse parser, ``result_tables`` writes
the result tables from the JSON files under ``docs/``, and ``site_check`` copies the published
sweep folders into the site and checks every internal link and image of the output.
"""

from __future__ import annotations

import sys
from pathlib import Path

import tomllib

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE / "_ext"), str(ROOT / "src")]  # This checkout's mnist_cnn, installed or not.

version = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
project = "mnist-cnn"
author = "the mnist-cnn authors"
copyright = "the mnist-cnn authors, MIT license"
release = version

extensions = ["myst_parser", "cli_reference", "result_tables", "site_check"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
root_doc = "index"

# MyST: headings get anchors that links can name (page.md#the-heading), ::: fences for admonitions.
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence", "deflist"]

html_theme = "furo"
html_title = f"mnist-cnn {version}"
html_static_path = ["_static"]
html_css_files = ["result-tables.css"]
html_show_sourcelink = False
html_copy_source = False

# site_check: copied under published/ in the output, linked from the pages.
published_folders = ["compare", "study", "full-run"]

# Text as written: "--workers 2" keeps its two hyphens and the CLI reference reads as --help prints.
smartquotes = False

# Warnings are errors (-W): a broken cross-reference or a missing image fails the build.
nitpicky = True
