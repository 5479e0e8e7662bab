"""`handover install`: handover's processes as systemd services on this machine."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from infra.cli.common import error, say, sites_arg, sites_of


def cmd_install(args: argparse.Namespace) -> int:
    """Write (or with --dry-run print) the units of the roles asked, and say what to enable."""
    from config.loader import load_site
    from infra.install import (
        ONE_SITE_ROLES,
        ROLES,
        InstallError,
        Settings,
        balancer_config,
        units,
        write,
    )

    files = sites_of(args)
    named = [(Path(f).resolve(), load_site(f).site) for f in files]
    # with several sites, the roles that read one site are installed site by site
    roles = args.role or [r for r in ROLES if len(files) == 1 or r not in ONE_SITE_ROLES]
    s = Settings(
        site=named[0][0],
        site_name=named[0][1],
        more_sites=tuple(named[1:]),
        pool=args.pool,
        user=args.user,
        etc=Path(args.etc),
        state=Path(args.state),
        host=args.api_host,
        port=args.api_port,
        ha=args.ha,
        balancer=_host_port(args.balancer),
        api_servers=tuple(args.api_servers.split(",")),
        balancer_metrics=_host_port(args.balancer_metrics),
    )
    try:
        if args.dry_run:
            for name, text in units(roles, s).items():
                say(f"# {Path(args.unit_dir) / name}")
                say(text)
            if "balancer" in roles:
                say(f"# {Path(args.etc) / 'haproxy.cfg'}")
                say(balancer_config(s))
            return 0
        todo = write(roles, s, Path(args.unit_dir))
    except InstallError as exc:
        error("install:", str(exc))
        return 2
    left = [r for r in ONE_SITE_ROLES if r not in roles and len(files) > 1]
    if left:
        todo.append(
            f"the {', '.join(left)} unit reads one site: `handover install --role "
            f"{left[0]} --site SITE` for the site it is to read"
        )
    say(f"wrote the units of {', '.join(roles)} in {args.unit_dir}; now:")
    for step in todo:
        say(f"  {step}")
    return 0


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"handover install: {text!r} is not HOST:PORT")
    return host, int(port)


def register(sub: Any) -> None:
    """Add the commands of this module to the `handover` parser."""
    from infra.install import ROLES

    p = sub.add_parser("install", help="handover's processes as systemd services (units)")
    p.add_argument(
        "--role",
        action="append",
        choices=list(ROLES),
        help="the units of this role (repeatable; default: every role): server (the "
        "database's migration, the Prefect API and its background services), balancer "
        "(HAProxy in front of several API servers), serve, worker, gateway, exporter, hagd",
    )
    p.add_argument(
        "--ha",
        action="store_true",
        help="Prefect without a single server: the server processes share Redis (filled in "
        "prefect-server.env) and the clients use the balancer (--balancer)",
    )
    p.add_argument(
        "--balancer",
        default="127.0.0.1:4200",
        metavar="HOST:PORT",
        help="with --ha: the balancer's address, which clients use (default 127.0.0.1:4200)",
    )
    p.add_argument(
        "--api-servers",
        default="127.0.0.1:4201,127.0.0.1:4202",
        metavar="HOST:PORT,...",
        help="with --role balancer: the API servers it sends to",
    )
    p.add_argument(
        "--balancer-metrics",
        default="127.0.0.1:8405",
        metavar="HOST:PORT",
        help="with --role balancer: where its Prometheus metrics answer /metrics (each API "
        "server's state; default 127.0.0.1:8405)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the units, write nothing")
    p.add_argument("--pool", default="handover", help="the work pool a worker takes runs from")
    p.add_argument("--user", default="handover", help="the user the services run as")
    p.add_argument("--etc", default="/etc/handover", help="the configuration directory")
    p.add_argument("--state", default="/var/lib/handover", help="the state directory (0700)")
    p.add_argument("--api-host", default="127.0.0.1", help="the Prefect API's address")
    p.add_argument("--api-port", type=int, default=4200, help="the Prefect API's port")
    p.add_argument("--unit-dir", default="/etc/systemd/system", help="where the units are written")
    sites_arg(
        p,
        ": the serve, worker and gateway units serve every site given, the exporter's is "
        "installed site by site",
    )
    p.set_defaults(func=cmd_install)
