"""The CLI reference page, generated from the argparse parser that ``mnist-cnn`` itself runs.

``mnist_cnn.cli.build_parser()`` builds the parser without importing Keras, JAX or Ray, so the
page is written from it each time the site builds: every command, its usage line and each of its
arguments with the help that ``mnist-cnn COMMAND --help`` prints. Nothing in it is written by
hand, so it cannot drift from ``--help``.

In a page, a line holding only ``% mnist-cnn-cli-reference`` (a MyST comment) is replaced by the
generated Markdown when Sphinx reads the page; the page is read again on every build.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from sphinx.application import Sphinx

MARKER = "% mnist-cnn-cli-reference"
# Characters Markdown (and MyST's roles, HTML and tables) would read as syntax; escaped in help text.
SPECIAL = re.compile(r"([\\`*_\[\]<>|{}$~#])")


def escape(text: str) -> str:
    return SPECIAL.sub(r"\\\1", text)


def code(text: str) -> str:
    fence = "``" if "`" in text else "`"
    return f"{fence}{text}{fence}"


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each subcommand, in the parser's order."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, subparser in action.choices.items():
                found.append((name, helps.get(name, ""), subparser))
    return found


def help_text(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The action's help as --help prints it, %(default)s and the like filled in."""
    if not action.help:
        return ""
    return " ".join(parser._get_formatter()._expand_help(action).split())


def invocation(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """``--epochs EPOCHS``, ``-h, --help`` or ``run_dir``: the action as --help names it."""
    return parser._get_formatter()._format_action_invocation(action)


def argument_lines(parser: argparse.ArgumentParser) -> list[str]:
    lines: list[str] = []
    for group in parser._action_groups:
        actions = [
            action
            for action in group._group_actions
            if action.help is not argparse.SUPPRESS and not isinstance(action, argparse._SubParsersAction)
        ]
        if not actions:
            continue
        lines += [f"**{escape(group.title.capitalize())}**", ""]
        for action in actions:
            described = help_text(parser, action)
            lines.append(f"- {code(invocation(parser, action))}" + (f": {escape(described)}" if described else ""))
        lines.append("")
    return lines


def usage(parser: argparse.ArgumentParser) -> list[str]:
    return ["```text", parser.format_usage().strip(), "```", ""]


def label(prog: str, name: str) -> str:
    """The target other pages link to: ``cli-serve`` for ``mnist-cnn serve``, ``cli-a-b`` below it."""
    return "-".join(["cli", *prog.split()[1:], name])


def command_section(prog: str, name: str, summary: str, parser: argparse.ArgumentParser, level: int) -> list[str]:
    lines = [f"({label(prog, name)})=", f"{'#' * level} {prog} {name}", ""]
    if summary:
        lines += [escape(summary[0].upper() + summary[1:]) + ".", ""]
    lines += usage(parser) + argument_lines(parser)
    for sub_name, sub_summary, subparser in subcommands(parser):
        lines += command_section(f"{prog} {name}", sub_name, sub_summary, subparser, level + 1)
    return lines


def reference(parser: argparse.ArgumentParser, exit_codes: str) -> str:
    """The whole reference as MyST Markdown: the global options, a table of commands, a section each."""
    prog = parser.prog
    commands = subcommands(parser)
    lines = [escape(parser.description or ""), "", *usage(parser), *argument_lines(parser)]
    if exit_codes:
        lines += [f"Exit codes: {escape(exit_codes)}", ""]
    lines += ["| command | what it does |", "|---|---|"]
    for name, summary, _ in commands:
        lines.append(f"| [{code(prog + ' ' + name)}](#{label(prog, name)}) | {escape(summary)} |")
    lines.append("")
    for name, summary, subparser in commands:
        lines += command_section(prog, name, summary, subparser, level=2)
    return "\n".join(lines)


def generated_reference() -> str:
    from mnist_cnn import cli

    # main()'s docstring states the exit codes: "Run one command; return its exit code (0 ok, ...)."
    match = re.search(r"\(([^()]*)\)", (cli.main.__doc__ or "").split("\n")[0])
    return reference(cli.build_parser(), match.group(1) if match else "")


def insert_reference(app: Sphinx, docname: str, source: list[str]) -> None:
    if MARKER in source[0]:
        source[0] = source[0].replace(MARKER, generated_reference(), 1)


def always_reread(app: Sphinx, env: Any, added: set[str], changed: set[str], removed: set[str]) -> list[str]:
    """The pages holding the marker are read again on every build: the parser may have changed."""
    pages = []
    for docname in env.found_docs:
        path = env.doc2path(docname)
        if MARKER in path.read_text(encoding="utf-8"):
            pages.append(docname)
    return pages


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("source-read", insert_reference)
    app.connect("env-get-outdated", always_reread)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
