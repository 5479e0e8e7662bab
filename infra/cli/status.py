"""`handover status`: every site and service at once, read live, nothing changed: an FTS site's
hosts, agents and channels from one sensor reading, a site of replicated tools' status (where
each is active, its replicas' lag, each master's answer, each site's health page)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from infra.cli.common import error, print_json, site_path


def cmd_status(args: argparse.Namespace) -> int:
    """`handover status [--site S]... [--service T] [--json]`: 0 nothing wrong, 1 something is,
    2 cannot say (a site not read, or no such service)."""
    from rich.console import Console

    from infra.site_status import exit_code, read_statuses, services_of, site_files, wanted

    files = [Path(f) for f in args.site] if args.site else site_files()
    if not files:
        error("no site file in the site directories", "give --site FILE")
        return 2
    kept = [f for f in files if wanted(f, args.service)]
    if not kept:
        known = sorted({n for f in files for n in services_of(f)})
        error(
            f"no service or replicated tool {args.service!r} in "
            + (", ".join(args.site) if args.site else "the site directories"),
            f"services and tools: {', '.join(known)}",
        )
        return 2
    files = kept
    statuses = read_statuses(files, args.service, args.timeout)
    if args.json:
        print_json({"sites": [st.model_dump(mode="json") for st in statuses]})
        return exit_code(statuses)
    out = Console(highlight=False, soft_wrap=True)
    for i, st in enumerate(statuses):
        if i:
            out.print()
        _print_block(out, st)
    return exit_code(statuses)


def _print_block(out: Any, st: Any) -> None:
    """One site and service: its heading, then its FTS summary or tools, then what is wrong."""
    from rich.markup import escape

    if st.site is None:
        out.print(f"[bold]{escape(st.file)}[/]")
    else:
        out.print(
            f"[bold]{escape(st.site)}[/] (service {escape(st.service or '')}, "
            f"{escape(st.kind or '')})  [dim]{escape(st.file)}, read in {st.took_s:g} s[/]"
        )
    if st.error:
        out.print(f"  [yellow]? {escape(st.error)}[/]")
        return
    if st.fts is not None:
        for line in fts_lines(st.fts):
            out.print("  " + escape(line))
    for tool in st.tools:
        _print_tool(out, tool)
    problems = [*(st.fts.problems if st.fts else []), *(p for t in st.tools for p in t.problems)]
    for p in problems or ["nothing wrong"]:
        out.print(("  [yellow]! " if problems else "  [green]") + escape(p) + "[/]")


def fts_lines(fts: Any) -> list[str]:
    """An FTS summary in a few lines: hosts, where the agents serve, the channels."""
    up = [h for h in fts.hosts if h not in fts.down]
    agents = sum(len(a) for a in fts.serving.values())
    where = ", ".join(f"{h} {len(a)}" for h, a in fts.serving.items() if a) or "no host"
    states: dict[str, list[str]] = {}
    for channel, state in sorted(fts.channels.items()):
        states.setdefault(state, []).append(channel)
    channels = "; ".join(
        f"{len(cs)} {state}" + ("" if state == "Active" else f" ({', '.join(cs)})")
        for state, cs in sorted(states.items())
    )
    unread = f"; {len(fts.channels_unread)} not read this time" if fts.channels_unread else ""
    return [
        f"hosts: {len(up)} of {len(fts.hosts)} up" + (f" ({', '.join(up)})" if up else ""),
        f"agents serving: {agents} ({where})",
        f"channels: {channels or 'none read'}{unread}",
    ]


def _print_tool(out: Any, st: Any) -> None:
    """A replicated tool's table, each master's answer (the status of before)."""
    from rich.markup import escape
    from rich.table import Table

    from flows.plans.geo_status import status_rows

    t = Table(
        title=f"{st.tool}: active at {st.active_site or '?'}, epoch {st.epoch}",
        title_justify="left",
    )
    out.soft_wrap = False  # a table fits the terminal's width
    for col in ("site", "role", "database", "replication", "lag", "health"):
        t.add_column(col)
    for row in status_rows(st):
        t.add_row(*[escape(c) for c in row])
    out.print(t)
    out.soft_wrap = True
    for a in st.snapshot.names:
        answer = a.error[:80] if a.error else f"{', '.join(a.addresses)} epoch {a.epoch}"
        out.print(
            f"  {escape(a.site)} master {escape(a.master)} {escape(a.name)}: {escape(answer)}"
        )


def register(sub: Any) -> None:
    """Add the commands of this module to the `handover` parser."""
    p = sub.add_parser(
        "status",
        help="every site and service: an FTS site's hosts, agents and channels, the "
        "replicated tools' status (where each is active, lag, DNS)",
    )
    p.add_argument(
        "--site",
        type=site_path,
        action="append",
        default=None,
        help="site file, or a site's name in the site directories; repeatable (default: every "
        "site file of the site directories)",
    )
    p.add_argument(
        "--service",
        help="one service (a site's service.name) or replicated tool (a name under geo.tools); "
        "default: every one",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=20.0,
        metavar="S",
        help="seconds a site's reading may take before it is said not to answer (default 20)",
    )
    p.add_argument("--json", action="store_true", help="print every site's status as JSON")
    p.set_defaults(func=cmd_status)
