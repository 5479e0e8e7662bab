"""The long-running parts: `serve`, `deploy`, `worker`, `gateway`, `alert`, `fake-slack`,
`server`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, get_args

from config.loader import load_site
from config.site import AlertKind
from infra.cli.common import err, error, print_json, say, site_arg, sites_arg, sites_of


def cmd_serve(args: argparse.Namespace) -> int:
    """`handover serve`: serve every deployment of every site given from one process."""
    from infra.run import configure_api
    from infra.serve import DeploymentsError, serve_all

    sites = sites_of(args)
    for f in sites:
        load_site(f)
    configure_api(err)
    try:
        serve_all(sites, poll_s=args.poll_interval, limit=args.limit, start=args.start)
    except DeploymentsError as exc:
        error(exc)
        return 2
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    """`handover deploy`: register the deployments of every site given and their automations
    (idempotent)."""
    from infra.run import configure_api
    from infra.serve import DeploymentsError, deploy_all, distinct_sites

    sites = sites_of(args)
    configure_api(err)
    try:
        distinct_sites(sites)  # two files of one site and service: refused before anything
        for f in sites:
            for line in deploy_all(f, pool=args.pool):
                say(line)
    except DeploymentsError as exc:
        error(exc)
        return 2
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """`handover worker --pool NAME`: take the pool's runs, started from a fork server."""
    from infra.run import configure_api
    from infra.serve import DeploymentsError
    from infra.worker import run_worker

    sites = sites_of(args)
    for f in sites:
        load_site(f)
    configure_api(err)
    try:
        run_worker(
            sites,
            args.pool,
            name=args.name,
            limit=args.limit,
            poll_s=args.poll_interval,
            start=args.start,
        )
    except DeploymentsError as exc:
        error(exc)
        return 2
    return 0


def cmd_alert(args: argparse.Namespace) -> int:
    """`handover alert`: send one signed alert to the gateway."""
    from config.site import SecretError
    from infra.send_alert import alert_body, post_alert

    site = load_site(args.site)
    if site.alerts is None:
        error(f"site {site.site} has no alerts section")
        return 2
    try:
        secret = site.alerts.webhook_secret.resolve().get_secret_value().encode()
    except SecretError as exc:
        error(f"alerts.webhook_secret: {exc}")
        return 2
    body = alert_body(
        site.site,
        args.host or "",
        site.service.name,
        args.kind,
        summary=args.summary or "",
        geo_site=args.geo_site or "",
    )
    try:
        status, answer = post_alert(args.gateway, secret, body)
    except OSError as exc:
        error(f"the gateway at {args.gateway} did not answer: {exc}")
        return 1
    print_json({"status": status, **answer})
    return 0 if 200 <= status < 300 else 1


def cmd_gateway(args: argparse.Namespace) -> int:
    """`handover gateway`: Slack interactions in, decisions applied to paused runs."""
    from infra.gateway.server import GatewayError, serve_http, serve_socket_mode
    from infra.run import configure_api

    sites = sites_of(args)
    configure_api(err)
    try:
        if args.socket_mode:
            if len(sites) > 1:
                raise GatewayError("Socket Mode serves one site: give one --site")
            serve_socket_mode(sites[0])
        else:
            err.print(
                f"gateway for {', '.join(sites)} on http://{args.host}:{args.port} "
                "(POST /slack/interactions, /alerts/webhook, /alerts/alertmanager; GET /healthz)"
            )
            serve_http(sites, args.host, args.port, args.runs_from)
    except GatewayError as exc:
        error("gateway:", exc)
        return 1
    return 0


def cmd_fake_slack(args: argparse.Namespace) -> int:
    """`handover fake-slack`: the fake Slack Web API, for rehearsals without Slack."""
    import threading

    from infra.fakeslack import FakeSlack

    token = os.environ.get("HANDOVER_SLACK_BOT_TOKEN")
    if not token:
        error("fake-slack:", "export HANDOVER_SLACK_BOT_TOKEN (any xoxb- value) first")
        return 1
    fake = FakeSlack(tokens={token}).start(args.host, args.port)
    say(
        f"fake Slack Web API at {fake.base_url}\n"
        f"  export HANDOVER_SLACK_API_URL={fake.base_url}\n"
        f"  what it received: GET {fake.base_url.removesuffix('/api/')}/_fake/record"
    )
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        fake.stop()
    return 0


def server_db_url(args: argparse.Namespace) -> str | None:
    """The database URL `server start` was given: `--db-url` (without a password: a command
    line is readable by every user of the machine) or `--db-url-file` (a private file).

    Raises:
        infra.prefect_db.ServerDbError: a password on the command line, both options, or a
            file that is not private (the message names the fix).
    """
    from urllib.parse import urlsplit

    from config.private_files import SecretError, read_secret_file
    from infra.prefect_db import ServerDbError

    if args.db_url is not None and args.db_url_file is not None:
        raise ServerDbError("give --db-url or --db-url-file, not both")
    if args.db_url is not None:
        try:
            password = urlsplit(args.db_url).password
        except ValueError:
            password = None  # check_url says what is wrong with it
        if password is not None:
            raise ServerDbError(
                "--db-url carries a password, which every user of this machine can read on "
                "the command line (ps, /proc/PID/cmdline), and your shell keeps in its "
                "history; nothing was started. Put the URL in a file only you can read "
                "(`install -m 600 /dev/null FILE`, then write the URL into it) and give "
                "--db-url-file FILE instead"
            )
        return str(args.db_url)
    if args.db_url_file is not None:
        if args.db != "postgresql":
            raise ServerDbError("--db-url-file goes with --db postgresql")
        path = Path(args.db_url_file)
        try:
            return read_secret_file(path, f"--db-url-file {path}")
        except SecretError as exc:
            raise ServerDbError(str(exc)) from exc
    return None


def cmd_server(args: argparse.Namespace) -> int:
    """`handover server start|stop|status`: a local Prefect server, on its embedded SQLite or on
    PostgreSQL (one it starts, or one named by URL)."""
    from config.private_files import UnsafePathError
    from infra import prefect_server as ps
    from infra.prefect_db import ServerDbError

    home = Path(args.home) if args.home else ps.HOME
    url = ps.api_url(args.host, args.port)
    try:
        return _server_action(args, ps, home, url)
    except UnsafePathError as exc:
        say(f"handover server: refused: {exc}")
        return 2
    except ServerDbError as exc:
        say(f"handover server: {exc}")
        return 2


def _server_action(args: argparse.Namespace, ps: Any, home: Path, url: str) -> int:
    from infra.control_plane import ControlPlane, ControlPlaneError
    from infra.prefect_db import ServerDbError

    plane = ControlPlane.of_home(home)
    if args.server_action == "start" and args.ha:
        try:
            return _start_plane(args, home, plane)
        except ControlPlaneError as exc:
            say(f"handover server: {exc}")
            return 1
    if args.db is None:
        args.db = "sqlite"
    if args.server_action == "start" and plane is not None and any(plane.running().values()):
        say(
            f"handover server: a control plane without a single server runs from {home} "
            f"({plane.url}): `handover server start --ha` keeps it, `handover server stop` "
            "stops it first"
        )
        return 1
    if args.server_action == "start":
        try:
            url, started = ps.ensure_server(
                args.host,
                args.port,
                home=home,
                db=args.db,
                db_url=server_db_url(args),
                pg_port=args.pg_port,
                pg_dir=Path(args.pg_dir) if args.pg_dir else None,
            )
        except ServerDbError:
            raise
        except RuntimeError as exc:
            say(f"handover server: {exc}")
            return 1
        database = ps.database_of(home) or "unknown database"
        if not started and not database.startswith(args.db):
            say(
                f"Prefect server already running at {url} on {database}, not {args.db}: "
                "`handover server stop` first to change its database"
            )
            return 1
        say(
            f"Prefect server {'started' if started else 'already running'} at {url} "
            f"({database}); export PREFECT_API_URL={url}"
        )
        return 0
    if args.server_action == "stop":
        if plane is not None:
            parts = plane.stop()
            say(
                "control plane stopped: " + ", ".join(parts) + " (data kept)"
                if parts
                else f"no part of the control plane of {home} is running"
            )
            return 0
        stopped = ps.stop_server(home)
        db_stopped = ps.stop_database(home)
        say(
            (
                "Prefect server stopped"
                if stopped
                else "no Prefect server started by handover is running"
            )
            + ("; its PostgreSQL stopped (data kept)" if db_stopped else "")
        )
        return 0
    if plane is not None:
        say(f"control plane of {home}, clients use {plane.url}:")
        for line in plane.status():
            say("  " + line)
        running = plane.running()
        return 0 if all(running.values()) and ps.healthy(plane.url) else 1
    up = ps.healthy(url)
    recorded = ps.database_of(home)
    say(
        f"Prefect server at {url}: {'healthy' if up else 'not answering'}"
        + (f"; database {recorded}" if recorded else "")
    )
    return 0 if up else 1


def _start_plane(args: argparse.Namespace, home: Path, plane: Any) -> int:
    """`server start --ha`: start the parts of the plane recorded in `home` that are not
    running, or a new plane as the options say."""
    from infra.control_plane import ControlPlane, ControlPlaneError

    if args.db == "sqlite":
        raise ControlPlaneError(
            "--ha needs PostgreSQL (several API servers share one database; SQLite cannot be "
            "shared): leave out --db, or give --db postgresql"
        )
    args.db = "postgresql"
    if plane is None:
        ports = [int(p) for p in args.api_ports.split(",")] if args.api_ports else None
        if ports is None:
            ports = [args.port + i for i in range(1, args.api_servers + 1)]
        plane = ControlPlane.create(
            home,
            host=args.host,
            port=args.port,
            api_servers=args.api_servers,
            api_ports=ports,
            redis_port=args.redis_port,
            db_url=server_db_url(args),
            pg_port=args.pg_port,
            pg_dir=Path(args.pg_dir) if args.pg_dir else None,
        )
        reused = False
    else:
        reused = True
    say(f"starting the control plane from {home}: " + ", ".join(plane.part_names))
    url = plane.start()
    say(
        f"control plane {'running again' if reused else 'started'}: "
        f"{len(plane.api_names)} API servers behind {url}; export PREFECT_API_URL={url}"
    )
    if reused:
        say("  (as recorded in its home; `handover server stop` first to change its layout)")
    return 0


def register(sub: Any) -> None:
    """Add the commands of this module to the `handover` parser."""
    p = sub.add_parser("serve", help="serve the deployments of deployments/prefect.yaml")
    sites_arg(p, ": each site's deployments are its own, PROCEDURE@SITE:SERVICE")
    p.add_argument(
        "--poll-interval",
        type=float,
        default=0.5,
        help="seconds between checks for runs to start (default 0.5: an alert's run waits "
        "for the next check)",
    )
    p.add_argument("--limit", type=int, default=None, help="at most this many runs at once")
    p.add_argument(
        "--start",
        choices=["forkserver", "spawn"],
        default="forkserver",
        help="how a run's process starts: from a fork server that has imported Prefect and the "
        "flows (default), or spawned fresh as Prefect does",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "deploy", help="register the deployments and their automations with the Prefect API"
    )
    sites_arg(p, ": each site's deployments are its own, PROCEDURE@SITE:SERVICE")
    p.add_argument(
        "--pool",
        default=None,
        help="put every deployment in this work pool (default: each one's work_pool in "
        "deployments/prefect.yaml); created if missing",
    )
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser(
        "worker", help="a Prefect worker of the procedures' work pool (several machines)"
    )
    sites_arg(p, ": it runs the deployments of these sites only")
    p.add_argument("--pool", default="handover", help="the work pool (default handover)")
    p.add_argument("--name", default=None, help="the worker's name (default handover-HOST-PID)")
    p.add_argument("--limit", type=int, default=None, help="at most this many runs at once")
    p.add_argument(
        "--poll-interval",
        type=float,
        default=0.5,
        help="seconds between asking the pool for runs (default 0.5)",
    )
    p.add_argument(
        "--start",
        choices=["forkserver", "spawn"],
        default="forkserver",
        help="how a run's process starts (as for serve)",
    )
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("alert", help="send one signed alert to the gateway")
    site_arg(p)
    about = p.add_mutually_exclusive_group(required=True)
    about.add_argument("--host", help="the host the alert is about")
    about.add_argument("--geo-site", help="the geo site a site_down alert is about")
    p.add_argument(
        "--kind",
        default="host_down",
        choices=list(get_args(AlertKind)),
        help="what the alert says happened (each kind starts its procedure)",
    )
    p.add_argument("--summary", help="the alert's summary line")
    p.add_argument("--gateway", default="http://127.0.0.1:8787", help="the gateway's base URL")
    p.set_defaults(func=cmd_alert)

    p = sub.add_parser("gateway", help="Slack approvals and alerts in (HTTP or Socket Mode)")
    sites_arg(p, ": an alert goes to the site its labels name (site, service)")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    p.add_argument("--port", type=int, default=8787, help="the port to listen on")
    p.add_argument(
        "--socket-mode",
        action="store_true",
        help="receive interactions over Slack's Socket Mode instead of HTTP",
    )
    p.add_argument(
        "--runs-from",
        choices=["gateway", "automations"],
        default="gateway",
        help="who creates an incident's runs: the gateway itself (default, faster), or "
        "Prefect's automations from the incident's event",
    )
    p.set_defaults(func=cmd_gateway)

    p = sub.add_parser("fake-slack", help="a fake Slack Web API on loopback (rehearsals, tests)")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    p.add_argument("--port", type=int, default=8788, help="the port to listen on")
    p.set_defaults(func=cmd_fake_slack)

    srv = sub.add_parser(
        "server", help="a local Prefect server (embedded SQLite, or PostgreSQL for production)"
    )
    srv.add_argument(
        "server_action", choices=["start", "stop", "status"], help="what to do with the server"
    )
    srv.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    srv.add_argument("--port", type=int, default=4200, help="the port to listen on")
    srv.add_argument(
        "--db",
        choices=["sqlite", "postgresql"],
        default=None,
        help="the server's database: sqlite (embedded, the default: demo, one machine) or "
        "postgresql (a PostgreSQL that handover starts, see --pg-dir, or --db-url; the only "
        "one with --ha)",
    )
    srv.add_argument(
        "--ha",
        action="store_true",
        help="with start: no single server: several API servers and the background services "
        "on PostgreSQL and Redis, behind HAProxy at --host:--port (needs redis-server and "
        "haproxy)",
    )
    srv.add_argument(
        "--api-servers",
        type=int,
        default=2,
        help="with --ha: how many API servers (default 2)",
    )
    srv.add_argument(
        "--api-ports",
        default=None,
        metavar="PORT,PORT",
        help="with --ha: the API servers' ports on 127.0.0.1 (default: the ports after --port)",
    )
    srv.add_argument(
        "--redis-port",
        type=int,
        default=None,
        help="with --ha: Redis's port on 127.0.0.1 (default: a free one, recorded)",
    )
    srv.add_argument(
        "--db-url",
        help="with --db postgresql: a database run elsewhere, postgresql://USER@HOST:PORT/DB "
        "(a URL with a password is refused: use --db-url-file)",
    )
    srv.add_argument(
        "--db-url-file",
        metavar="FILE",
        help="with --db postgresql: a file holding postgresql://USER:PASSWORD@HOST:PORT/DB, "
        "yours (or root's) and mode 0600",
    )
    srv.add_argument(
        "--pg-port",
        type=int,
        default=None,
        help="with --db postgresql and no --db-url: the port of handover's PostgreSQL "
        "(default 5442, on 127.0.0.1)",
    )
    srv.add_argument(
        "--pg-dir",
        default=None,
        help="with --db postgresql and no --db-url: the directory of handover's PostgreSQL, "
        "which the postgres user must reach (default /var/lib/postgresql/handover-prefect)",
    )
    srv.add_argument(
        "--home",
        default=None,
        help="the server's private home (0700): state, log, auth string, SQLite database "
        "(default $HANDOVER_PREFECT_HOME, else /var/lib/handover/prefect for root, "
        "~/.local/state/handover/prefect for another user)",
    )
    srv.set_defaults(func=cmd_server)
