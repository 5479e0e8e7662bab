"""`handover check-config` and `handover snapshot`: a site file, and the site it describes."""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table
from rich.text import Text

from config.loader import SiteConfigError, load_site
from config.site import short_name as short
from infra.cli.common import err, error, out, say, site_arg


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate site files; print each problem with its field path and fix. With `--secrets`,
    read every secret reference too (never printing a value)."""
    rc = 0
    for f in args.files:
        try:
            site = load_site(f)
        except SiteConfigError as exc:
            rc = 1
            error("invalid", f"{exc.source}: {len(exc.problems)} problem(s)")
            for p in exc.problems:
                err.print(
                    Text.assemble("  - ", (p.path, "bold"), f": {p.message}\n      fix: {p.fix}")
                )
            continue
        out.print(
            Text.assemble(
                ("ok", "green"),
                f" {f}: site {site.site}, {len(site.hosts)} hosts, "
                f"{len(site.service.agents)} agents, {len(site.channels)} channels",
            )
        )
        if args.secrets and not _check_secrets(site):
            rc = 1
    return rc


def _check_secrets(site: Any) -> bool:
    """Read each secret reference of `site` now, as a run would; say which can be read."""
    from config.site import SecretError
    from config.site.secrets import secret_refs

    ok = True
    for path, ref in secret_refs(site):
        try:
            ref.resolve()
        except SecretError as exc:
            ok = False
            err.print(Text.assemble("  - ", (path, "bold"), f" ({ref.describe()}): {exc}"))
        else:
            out.print(Text.assemble("  ", ("ok", "green"), f" {path} ({ref.describe()}) reads"))
    return ok


def cmd_snapshot(args: argparse.Namespace) -> int:
    """Take a live snapshot of every host through the SSH layer."""
    from tasks.remote import SiteShell
    from tasks.site_state import snapshot_site

    site = load_site(args.site)
    with SiteShell(site) as shell:
        snap = snapshot_site(shell)
    if args.json:
        print(snap.model_dump_json(indent=2))
        return 0 if all(h.reachable for h in snap.hosts) else 1
    table = Table(title=f"site {site.site}: live snapshot over SSH ({snap.taken_at:%H:%M:%S} UTC)")
    for col in ("host", "reachable", "agents running", "transfers", "disabled"):
        table.add_column(col)
    for h in snap.hosts:
        table.add_row(
            h.host,
            "yes" if h.reachable else Text.assemble(("no", "red"), f": {h.error}"),
            "\n".join(short(a.name) for a in h.agents) or "-",
            "\n".join(f"{c}: {n}" for c, n in h.transfers.items()) or "-",
            "\n".join(short(d) for d in h.disabled) or "-",
        )
    out.print(table)
    if snap.channels:
        say("channels: " + ", ".join(f"{c} {s}" for c, s in sorted(snap.channels.items())))
    return 0 if all(h.reachable for h in snap.hosts) else 1


def register(sub: Any) -> None:
    """Add the commands of this module to the `handover` parser."""
    p = sub.add_parser("check-config", help="validate site files")
    p.add_argument("files", nargs="+", help="the site files to check")
    p.add_argument(
        "--secrets",
        action="store_true",
        help="also read every secret reference, as the user running this, as a run would "
        "(values are never printed)",
    )
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("snapshot", help="live snapshot of a site over SSH")
    site_arg(p)
    p.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    p.set_defaults(func=cmd_snapshot)
