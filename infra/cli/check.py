"""`handover check remap`: whether a geo tool's names can be remapped without leaving clients
behind (absolute links and redirects to other hosts, certificates that miss a name)."""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table
from rich.text import Text

from config.loader import load_site
from infra.cli.common import error, out, say, site_arg

#: the exit codes of `handover check remap`
READY, NOT_READY, CANNOT_CHECK = 0, 1, 2


def cmd_check_remap(args: argparse.Namespace) -> int:
    """Crawl the tool through its names, read each site's certificate, print the findings.

    Returns:
        0 when the tool is ready to remap, 1 with findings, 2 when it could not be checked (a
        site without ``geo:``, an unknown tool, an unreadable CA file, no page answering).
    """
    from tasks.remap import RemapCheckRefused, check_remap

    site = load_site(args.site)
    try:
        report = check_remap(site, args.service, timeout_s=args.timeout, max_pages=args.max_pages)
    except RemapCheckRefused as exc:
        error("cannot check remap:", exc)
        return CANNOT_CHECK
    code = READY if report.ready else (NOT_READY if report.checked else CANNOT_CHECK)
    if args.json:
        print(report.model_dump_json(indent=2))
        return code
    if report.findings:
        table = Table(title=Text(f"{report.tool}: not ready to remap"), title_justify="left")
        for col in ("kind", "target", "found on", "what to do"):
            table.add_column(col, overflow="fold")
        for f in report.findings:
            # the first page only (the JSON lists a few): the table stays short
            where = f.found_on[0] + (f" (+{f.pages - 1} more)" if f.pages > 1 else "")
            table.add_row(Text(f.kind), Text(f.target), Text(where), Text(f.fix))
        out.print(table)
    for n in report.notes:
        say(n, style="dim")
    style = "green" if report.ready else ("red" if report.checked else "yellow")
    say(report.summary, style=style)
    return code


def _positive(text: str) -> int:
    """A --max-pages value: a whole number of at least 1.

    Raises:
        argparse.ArgumentTypeError: it is not one.
    """
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of at least 1")
    return value


def _seconds(text: str) -> float:
    """A --timeout value: seconds, more than 0 and at most 120.

    Raises:
        argparse.ArgumentTypeError: it is not one.
    """
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 120:
        raise argparse.ArgumentTypeError(f"{text!r}: give seconds, more than 0 and at most 120")
    return value


def register(sub: Any) -> None:
    """Add the commands of this module to the `handover` parser."""
    p = sub.add_parser("check", help="checks that change nothing (remap readiness)")
    checks = p.add_subparsers(dest="check", required=True)
    r = checks.add_parser(
        "remap",
        help="can a geo tool's names be remapped to another site without leaving clients "
        "behind (links, redirects, certificates)?",
        description="Crawl a geo tool through its names and read each site's certificate: "
        "absolute links and redirects to another host, and certificates that do not cover "
        "every name, are findings. Exit 0: ready; 1: findings; 2: could not check.",
    )
    r.add_argument("--service", required=True, help="the tool (a name of geo.tools)")
    site_arg(r)
    r.add_argument("--json", action="store_true", help="print the report as JSON")
    r.add_argument(
        "--max-pages",
        type=_positive,
        default=None,
        help="crawl at most this many pages (default: the tool's crawl_pages)",
    )
    r.add_argument(
        "--timeout", type=_seconds, default=5.0, help="the bound of each request, in seconds"
    )
    r.set_defaults(func=cmd_check_remap)
