"""`handover status`: the replicated tools' status (where each is active, its replicas' lag,
each master's answer, each site's health page), read live, nothing changed."""

from __future__ import annotations

import argparse
from typing import Any

from config.loader import load_site
from infra.cli.common import error, print_json, site_arg


def cmd_status(args: argparse.Namespace) -> int:
    """`handover status [--service T]`: 0 nothing wrong, 1 something is, 2 cannot say."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from flows.plans.geo_status import status_rows
    from tasks.geo import read_geo_status

    site = load_site(args.site)
    if site.geo is None:
        error(
            f"site {site.site} has no replicated tools (`geo:`)",
            "`handover snapshot` shows its hosts, agents and channels",
        )
        return 2
    known = [t.name for t in site.geo.tools]
    if args.service and args.service not in known:
        error(f"no tool {args.service!r} in site {site.site}", f"tools: {', '.join(known)}")
        return 2
    statuses = [st for st in read_geo_status(site) if not args.service or st.tool == args.service]
    if args.json:
        print_json([st.model_dump(mode="json") for st in statuses])
        return 0 if all(st.ok for st in statuses) else 1
    out = Console(highlight=False)
    for st in statuses:
        t = Table(
            title=f"{st.tool}: active at {st.active_site or '?'}, epoch {st.epoch}",
            title_justify="left",
        )
        for col in ("site", "role", "database", "replication", "lag", "health"):
            t.add_column(col)
        for row in status_rows(st):
            t.add_row(*[escape(c) for c in row])
        out.print(t)
        for a in st.snapshot.names:
            answer = a.error[:80] if a.error else f"{', '.join(a.addresses)} epoch {a.epoch}"
            out.print(
                f"  {escape(a.site)} master {escape(a.master)} {escape(a.name)}: {escape(answer)}"
            )
        for p in st.problems or ["nothing wrong"]:
            out.print(("  [yellow]! " if st.problems else "  [green]") + escape(p) + "[/]")
    return 0 if all(st.ok for st in statuses) else 1


def register(sub: Any) -> None:
    """Add the commands of this module to the `handover` parser."""
    p = sub.add_parser(
        "status", help="the replicated tools: where each is active, its replicas' lag, DNS"
    )
    site_arg(p)
    p.add_argument("--service", help="one tool (a name under geo.tools; default: every tool)")
    p.add_argument("--json", action="store_true", help="print the statuses as JSON")
    p.set_defaults(func=cmd_status)
