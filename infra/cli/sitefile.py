"""`handover check-config`, `handover init` and `handover snapshot`: a site file, and the site it
describes."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
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


def _host_spec(spec: str, port: int) -> tuple[str, str, int]:
    """``NAME``, ``NAME=ADDRESS`` or ``NAME=ADDRESS:PORT`` -> (name, address, port)."""
    name, _, where = spec.partition("=")
    address, _, p = where.rpartition(":") if where.count(":") == 1 else (where, "", "")
    if not name or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", name):
        raise ValueError(f"--hosts: {spec!r}: give NAME, NAME=ADDRESS or NAME=ADDRESS:PORT")
    if p and not p.isdigit():
        raise ValueError(f"--hosts: {spec!r}: the port {p!r} is not a number")
    return name, address or name, int(p) if p else port


def cmd_init(args: argparse.Namespace) -> int:
    """Read the hosts over SSH (read-only) and write a site file draft."""
    from flows.plans.site_draft import DraftOptions, draft_site
    from tasks.discover import provisional_site, read_hosts

    try:
        hosts = [_host_spec(h.strip(), args.port) for h in args.hosts.split(",") if h.strip()]
    except ValueError as exc:
        error("refused", str(exc))
        return 2
    if not hosts or len({n for n, _, _ in hosts}) != len(hosts):
        error("refused", "--hosts: give each host once (NAME[=ADDRESS[:PORT]],...)")
        return 2
    out_file = Path(args.out) if args.out else None
    if out_file is not None and out_file.exists() and not args.force:
        error("refused", f"--out {out_file} exists; choose another file, or --force")
        return 2
    key = Path(args.key).expanduser() if args.key else _default_key()
    known = Path(args.known_hosts).expanduser()
    for what, f in (("--key", key), ("--known-hosts", known)):
        if f is None or not f.is_file():
            error(
                "refused",
                f"{what} {f}: no such file (the host keys must already be known: "
                "ssh-keyscan HOST >> FILE after checking them)",
            )
            return 2
    assert key is not None
    site = provisional_site(
        hosts, user=args.user, key_file=key, known_hosts=known, timeout_s=args.timeout
    )
    readings = read_hosts(site, progress=say)
    text = draft_site(
        readings,
        DraftOptions(
            site=args.name or "",
            service=args.service or "",
            user=args.user,
            key_file=str(key),
            known_hosts=str(known),
            connect_timeout_s=args.timeout,
            db=args.db or "",
        ),
    )
    if out_file is None:
        print(text, end="")
    else:
        tmp = out_file.with_name(f".{out_file.name}.tmp")
        tmp.write_text(text)
        tmp.replace(out_file)
        todos = sum(
            1 for line in text.splitlines() if "TODO" in line and not line.lstrip().startswith("#")
        )
        say(
            f"wrote {out_file}: {todos} TODO(s) to fill in, then `handover check-config {out_file}`"
        )
    silent = [r.name for r in readings if not r.reachable]
    if silent:
        error("not read", ", ".join(silent) + " (see the draft's comments)")
        return 1
    return 0


def _default_key() -> Path | None:
    """The user's usual SSH key, when there is one."""
    for name in ("id_ed25519", "id_ecdsa", "id_rsa"):
        f = Path.home() / ".ssh" / name
        if f.is_file():
            return f
    return None


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

    p = sub.add_parser(
        "init", help="read hosts over SSH (read-only) and draft a site file with TODOs"
    )
    p.add_argument(
        "--hosts",
        required=True,
        help="NAME[=ADDRESS[:PORT]],... (default address: the name; port: --port)",
    )
    p.add_argument("--port", type=int, default=22, help="the SSH port (default 22)")
    p.add_argument("--user", default="root", help="the SSH user (default root)")
    p.add_argument("--key", help="the private key (default ~/.ssh/id_ed25519, id_ecdsa, id_rsa)")
    p.add_argument(
        "--known-hosts",
        default="~/.ssh/known_hosts",
        help="the known_hosts file: every host's key must be in it (default ~/.ssh/known_hosts)",
    )
    p.add_argument("--db", help="the database, postgresql://USER@HOST:PORT/NAME (no password)")
    p.add_argument("--name", help="the site's short name (else a TODO)")
    p.add_argument("--service", help="the service's name (else a TODO)")
    p.add_argument(
        "--timeout", type=float, default=5.0, help="seconds a host may take to answer (default 5)"
    )
    p.add_argument("--out", help="write the draft here (default: print it)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("snapshot", help="live snapshot of a site over SSH")
    site_arg(p)
    p.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    p.set_defaults(func=cmd_snapshot)
