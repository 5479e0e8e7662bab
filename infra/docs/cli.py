"""The command line's reference page, from `infra.cli.build_parser()`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from infra.cli import build_parser

#: the repository, as a default path shows it (relative: the page is the same on every machine)
ROOT = Path(__file__).resolve().parents[2]


def _subparsers(p: argparse.ArgumentParser) -> argparse._SubParsersAction | None:  # type: ignore[type-arg]
    return next((a for a in p._actions if isinstance(a, argparse._SubParsersAction)), None)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _option_rows(p: argparse.ArgumentParser) -> list[str]:
    rows = []
    for a in p._actions:
        if isinstance(a, argparse._HelpAction | argparse._SubParsersAction):
            continue
        if a.option_strings:
            name = ", ".join(f"`{o}`" for o in a.option_strings)
            if a.nargs != 0:
                name += f" `{a.metavar or a.dest.upper()}`"
        else:
            name = f"`{a.metavar or a.dest}`"
        choices = f" One of: {', '.join(f'`{c}`' for c in a.choices)}." if a.choices else ""
        shown = str(a.default).replace(f"{ROOT}/", "")
        default = (
            f"`{shown}`"
            if a.default not in (None, argparse.SUPPRESS, False) and a.nargs != 0
            else ""
        )
        helptext = a.help if a.help and a.help != argparse.SUPPRESS else ""
        if helptext and "%(default)" in helptext:
            helptext = helptext % {"default": a.default}
        rows.append(f"| {name} | {_cell(helptext)}{choices} | {default} |")
    return rows


def _command(p: argparse.ArgumentParser, path: str, summary: str, out: list[str]) -> None:
    level = "#" * min(1 + path.count(" "), 4)
    out += [f"{level} `{path}`", ""]
    if summary:
        out += [summary[0].upper() + summary[1:] + ("" if summary.endswith(".") else "."), ""]
    if p.description and p.description != summary:
        out += [" ".join(p.description.split()), ""]
    usage = " ".join(p.format_usage().removeprefix("usage: ").split()).replace(f"{ROOT}/", "")
    out += ["```", usage, "```", ""]
    rows = _option_rows(p)
    if rows:
        out += ["| argument | what it does | default |", "|---|---|---|", *rows, ""]
    sub = _subparsers(p)
    if sub is None:
        return
    helps = {c.dest: c.help or "" for c in sub._choices_actions}
    for name, child in sub.choices.items():
        _command(child, f"{path} {name}", helps.get(name, ""), out)


def page() -> str:
    """The command line's reference, as markdown."""
    # a default read from the environment ($HANDOVER_SITE) is shown as the code's own
    saved = os.environ.pop("HANDOVER_SITE", None)
    try:
        parser = build_parser()
    finally:
        if saved is not None:
            os.environ["HANDOVER_SITE"] = saved
    out = [
        "# Command line",
        "",
        "Generated from the argument parser (`infra/cli/`) by `python -m infra.docs`; "
        "`handover COMMAND --help` prints the same.",
        "",
    ]
    sub = _subparsers(parser)
    assert sub is not None
    helps = {c.dest: c.help or "" for c in sub._choices_actions}
    for name, child in sub.choices.items():
        _command(child, f"handover {name}", helps.get(name, ""), out)
    return "\n".join(out).rstrip() + "\n"
