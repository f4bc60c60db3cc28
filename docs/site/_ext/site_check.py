"""The published result folders copied into the site, and every internal link and image checked.

After an HTML build, the folders named in ``published_folders`` (``docs/compare``,
``docs/study``, ``docs/full-run``: the sweeps' and the run's own pages, figures and statistics,
without models) are copied to ``published/<name>/`` in the output, so the site links to
``report.html`` of each and those pages' own links work.

Then every ``href`` and ``src`` in every HTML file of the output that is not an external URL is
checked: the file it names must exist, and a ``#fragment`` into one of Sphinx's own pages must be
an ``id`` in that page. A missing one is a warning, so ``sphinx-build -W`` fails on it. Sphinx
and MyST already warn about a missing image or a cross-reference they cannot resolve; this check
also covers raw links, the theme's own files and the copied reports.
"""

from __future__ import annotations

import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)

# Left in the source folders, not copied: nothing a reader of the site opens.
IGNORED = shutil.ignore_patterns("*.keras", "*.npz", "checkpoint*", "*.lock")


class Links(HTMLParser):
    """The ids of a page and the local URLs it links to or loads."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("id", "name") and value:
                self.ids.add(value)
            if name in ("href", "src") and value and not (tag == "link" and ("rel", "canonical") in attrs):
                self.urls.append(value)


def local(url: str) -> bool:
    parts = urlsplit(url)
    return not (parts.scheme or parts.netloc or url.startswith(("mailto:", "data:", "javascript:")))


def copy_published(app: Sphinx, outdir: Path) -> None:
    docs = Path(app.confdir).parent
    for name in app.config.published_folders:
        target = outdir / "published" / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(docs / name, target, ignore=IGNORED)


def broken_links(outdir: Path, skip_fragments_under: Path) -> list[str]:
    pages: dict[Path, Links] = {}
    for page in outdir.rglob("*.html"):
        parser = Links()
        parser.feed(page.read_text(encoding="utf-8", errors="replace"))
        pages[page.resolve()] = parser
    broken = []
    for page, links in sorted(pages.items()):
        for url in links.urls:
            if not local(url):
                continue
            parts = urlsplit(url)
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if target.is_dir():
                target = target / "index.html"
            where = page.relative_to(outdir.resolve())
            if not target.exists():
                broken.append(f"{where}: {url}: no such file")
            elif (
                parts.fragment
                and target in pages
                and skip_fragments_under not in target.parents
                and unquote(parts.fragment) not in pages[target].ids
            ):
                broken.append(f"{where}: {url}: no such anchor")
    return broken


def check_site(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    outdir = Path(app.outdir)
    copy_published(app, outdir)
    # The copied reports are checked for files, not for anchors: their ids are not Sphinx's.
    for problem in broken_links(outdir, skip_fragments_under=(outdir / "published").resolve()):
        logger.warning("broken internal link: %s", problem, type="site_check", subtype="link")


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_config_value("published_folders", [], "html")
    app.connect("build-finished", check_site)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
