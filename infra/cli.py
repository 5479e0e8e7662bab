"""The `handover` command line.

handover check-config FILE [FILE ...]
handover snapshot [--site FILE] [--json]
handover lab up|down|status|fault|heal|score|load|exec ...
handover bench lab [--rounds N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from config.loader import SiteConfigError, load_site
from config.site import short_name as short
from infra.lab.faults import FAULT_KINDS

DEFAULT_SITE = Path(__file__).resolve().parent.parent / "config" / "sites" / "lab.yaml"

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def _site_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--site",
        default=os.environ.get("HANDOVER_SITE", str(DEFAULT_SITE)),
        help="site file (default: $HANDOVER_SITE or config/sites/lab.yaml)",
    )


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


# --- check-config -------------------------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate site files; print each problem with its field path and fix."""
    rc = 0
    for f in args.files:
        try:
            site = load_site(f)
        except SiteConfigError as exc:
            rc = 1
            err.print(f"[red]invalid[/red] {exc.source}: {len(exc.problems)} problem(s)")
            for p in exc.problems:
                err.print(f"  - [bold]{p.path}[/bold]: {p.message}\n      fix: {p.fix}")
            continue
        out.print(
            f"[green]ok[/green] {f}: site {site.site}, {len(site.hosts)} hosts, "
            f"{len(site.service.agents)} agents, {len(site.channels)} channels"
        )
    return rc


# --- snapshot -----------------------------------------------------------------------------------


def cmd_snapshot(args: argparse.Namespace) -> int:
    """Take a live snapshot of every host through the SSH layer."""
    from tasks.site_state import snapshot_site

    site = load_site(args.site)
    snap = snapshot_site(site)
    if args.json:
        print(snap.model_dump_json(indent=2))
        return 0 if all(h.reachable for h in snap.hosts) else 1
    table = Table(title=f"site {site.site}: live snapshot over SSH ({snap.taken_at:%H:%M:%S} UTC)")
    for col in ("host", "reachable", "agents running", "transfers", "disabled"):
        table.add_column(col)
    for h in snap.hosts:
        table.add_row(
            h.host,
            "yes" if h.reachable else f"[red]no[/red]: {h.error}",
            "\n".join(short(a.name) for a in h.agents) or "-",
            "\n".join(f"{c}: {n}" for c, n in h.transfers.items()) or "-",
            "\n".join(short(d) for d in h.disabled) or "-",
        )
    out.print(table)
    if snap.channels:
        out.print("channels: " + ", ".join(f"{c} {s}" for c, s in sorted(snap.channels.items())))
    return 0 if all(h.reachable for h in snap.hosts) else 1


# --- lab ----------------------------------------------------------------------------------------


def _lab(args: argparse.Namespace) -> Any:
    from infra.lab.lab import Lab

    return Lab.from_file(args.site)


def cmd_lab(args: argparse.Namespace) -> int:
    """`handover lab ...`."""
    from infra.lab.lab import LabError

    try:
        return _lab_dispatch(args)
    except LabError as exc:
        err.print(f"[red]lab:[/red] {exc}")
        return 1


def _lab_dispatch(args: argparse.Namespace) -> int:
    lab = _lab(args)
    action = args.lab_action
    if action == "up":
        report = lab.up(hosts=args.hosts, progress=lambda m: err.print(f"[dim]{m}[/dim]"))
        if args.json:
            _print_json(report)
        else:
            s = report["seconds"]
            out.print(
                f"lab up: site {report['site']}, {len(report['hosts'])} hosts, "
                f"{report['agents']} agents serving, in {s['total']:.1f} s "
                f"(database {s['database']:.1f} s, hosts {s['hosts']:.1f} s, "
                f"agents {s['agents']:.1f} s)\nsite file: {report['site_file']}"
            )
        return 0
    if action == "down":
        report = lab.down()
        if args.purge and not report["leftovers"]:
            lab.remove_state()
            report["purged"] = str(lab.paths.root)
        if args.json:
            _print_json(report)
        else:
            out.print(
                f"lab down: {report['hosts_stopped']} hosts stopped in {report['seconds']:.1f} s; "
                + (
                    "nothing left running"
                    if not report["leftovers"]
                    else f"[red]left running: {report['leftovers']}[/red]"
                )
            )
        return 0 if not report["leftovers"] else 1
    if action == "status":
        st = lab.status()
        if args.json:
            print(st.model_dump_json(indent=2))
            return 0
        _print_status(st)
        return 0
    if action == "score":
        score = lab.score(reset=args.reset)
        if args.json:
            print(score.model_dump_json(indent=2))
        else:
            out.print(
                f"since {score.since}: {score.jobs_done} jobs done, {score.jobs_lost} lost; "
                f"downtime total {score.downtime_total_s:.1f} s, max {score.downtime_max_s:.1f} s; "
                f"agents serving twice: {len(score.agents_running_twice)}; "
                f"alive on two hosts: {len(score.agents_alive_on_two_hosts)}"
            )
        return 0
    if action == "fault":
        out.print(lab.fault(args.host, args.kind))
        return 0
    if action == "heal":
        out.print(lab.heal(args.host))
        return 0
    if action == "load":
        lab.set_load(on=args.state == "on", rate=args.rate)
        out.print(
            f"load {args.state}" + (f" at {args.rate} jobs/s per channel" if args.rate else "")
        )
        return 0
    if action == "exec":
        argv = [a for a in args.argv if a != "--"]
        res = lab.exec(args.host, argv)
        sys.stdout.write(res.stdout)
        sys.stderr.write(res.stderr)
        return int(res.returncode)
    raise AssertionError(action)


def _print_status(st: Any) -> None:
    out.print(
        f"lab {'[green]up[/green]' if st.up else '[red]down[/red]'} (site {st.site}); "
        f"database {st.database}; lab daemon {'running' if st.labd else 'stopped'}"
    )
    table = Table()
    for col in ("host", "address", "state", "agents (as edguser)", "transfers", "disabled"):
        table.add_column(col)
    for h in st.hosts:
        state = "up" if h.up else "down"
        if h.fault:
            state += f" [red]({h.fault})[/red]"
        if h.up and not h.sshd:
            state += " no sshd"
        table.add_row(
            h.name,
            f"{h.address}:{h.port}",
            state,
            "\n".join(
                f"{short(a.name)} {a.state}" + ("" if a.user == "edguser" else f" (as {a.user})")
                for a in h.agents
            )
            or "-",
            "\n".join(f"{c}: {n}" for c, n in h.transfers.items()) or "-",
            "\n".join(short(d) for d in h.disabled) or "-",
        )
    out.print(table)
    out.print("[dim]agents are shown by channel (channel agents) or VO (VO agents)[/dim]")
    if st.channels:
        ch = Table()
        for col in ("channel", "state", "pending", "active"):
            ch.add_column(col)
        for name, c in st.channels.items():
            ch.add_row(name, c.state, str(c.pending), str(c.active))
        out.print(ch)


# --- procedures ---------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    """`handover run clean-move ...`."""
    from infra.run import protect_terminal, run_procedure

    protect_terminal()

    load_site(args.site)  # a malformed site file is reported before anything starts
    if args.procedure in ("emergency-move", "fence-host"):
        if not args.host:
            err.print(f"[red]{args.procedure} needs --host[/red]")
            return 2
        hp: dict[str, Any] = {"site_file": str(Path(args.site).resolve()), "host": args.host}
        if args.yes and args.procedure == "emergency-move":
            hp["pause_for_approval"] = False
        return run_procedure(args.procedure, hp, as_json=args.json)
    if not (args.from_host and args.to_host):
        err.print("[red]clean-move needs --from and --to[/red]")
        return 2
    params: dict[str, Any] = {
        "site_file": str(Path(args.site).resolve()),
        "from_host": args.from_host,
        "to_host": args.to_host,
        "mode": args.mode,
        "dry_run": args.dry_run,
        "force_after_drain_timeout": args.force,
    }
    if args.agents:
        params["agents"] = [a.strip() for a in args.agents.split(",") if a.strip()]
    if args.drain_timeout:
        params["drain_timeout_s"] = args.drain_timeout
    if args.poll_interval:
        params["poll_interval_s"] = args.poll_interval
    if args.yes:
        params["pause_for_approval"] = False
    return run_procedure(args.procedure, params, as_json=args.json)


def cmd_serve(args: argparse.Namespace) -> int:
    """`handover serve`: serve every deployment from one process."""
    from infra.run import configure_api
    from infra.serve import serve_all

    load_site(args.site)
    configure_api(err)
    serve_all(args.site, poll_s=args.poll_interval, limit=args.limit, start=args.start)
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    """`handover deploy`: register the deployments and their automations (idempotent)."""
    from infra.run import configure_api
    from infra.serve import DeploymentsError, deploy_all

    load_site(args.site)
    configure_api(err)
    try:
        for line in deploy_all(args.site):
            out.print(line)
    except DeploymentsError as exc:
        err.print(f"[red]{exc}[/red]")
        return 2
    return 0


def cmd_alert(args: argparse.Namespace) -> int:
    """`handover alert`: send one signed alert to the gateway."""
    from config.site import SecretError
    from infra.send_alert import alert_body, post_alert

    site = load_site(args.site)
    if site.alerts is None:
        err.print(f"[red]site {site.site} has no alerts section[/red]")
        return 2
    try:
        secret = site.alerts.webhook_secret.resolve().get_secret_value().encode()
    except SecretError as exc:
        err.print(f"[red]alerts.webhook_secret: {exc}[/red]")
        return 2
    body = alert_body(
        site.site, args.host, site.service.name, args.kind, summary=args.summary or ""
    )
    try:
        status, answer = post_alert(args.gateway, secret, body)
    except OSError as exc:
        err.print(f"[red]the gateway at {args.gateway} did not answer: {exc}[/red]")
        return 1
    _print_json({"status": status, **answer})
    return 0 if 200 <= status < 300 else 1


# --- gateway ------------------------------------------------------------------------------------


def cmd_gateway(args: argparse.Namespace) -> int:
    """`handover gateway`: Slack interactions in, decisions applied to paused runs."""
    from infra.gateway.server import GatewayError, serve_http, serve_socket_mode
    from infra.run import configure_api

    configure_api(err)
    try:
        if args.socket_mode:
            serve_socket_mode(args.site)
        else:
            err.print(
                f"gateway for {args.site} on http://{args.host}:{args.port} "
                "(POST /slack/interactions, /alerts/webhook, /alerts/alertmanager; GET /healthz)"
            )
            serve_http(args.site, args.host, args.port)
    except GatewayError as exc:
        err.print(f"[red]gateway:[/red] {exc}")
        return 1
    return 0


def cmd_fake_slack(args: argparse.Namespace) -> int:
    """`handover fake-slack`: the fake Slack Web API, for rehearsals without Slack."""
    import threading

    from infra.fakeslack import FakeSlack

    token = os.environ.get("HANDOVER_SLACK_BOT_TOKEN")
    if not token:
        err.print("[red]fake-slack:[/red] export HANDOVER_SLACK_BOT_TOKEN (any xoxb- value) first")
        return 1
    fake = FakeSlack(tokens={token}).start(args.host, args.port)
    out.print(
        f"fake Slack Web API at {fake.base_url}\n"
        f"  export HANDOVER_SLACK_API_URL={fake.base_url}\n"
        f"  what it received: GET {fake.base_url.removesuffix('/api/')}/_fake/record"
    )
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        fake.stop()
    return 0


# --- server -------------------------------------------------------------------------------------


def cmd_server(args: argparse.Namespace) -> int:
    """`handover server start|stop|status`: a local Prefect server on SQLite."""
    from infra import prefect_server as ps

    url = ps.api_url(args.host, args.port)
    if args.server_action == "start":
        url, started = ps.ensure_server(args.host, args.port)
        out.print(
            f"Prefect server {'started' if started else 'already running'} at {url}; "
            f"export PREFECT_API_URL={url}"
        )
        return 0
    if args.server_action == "stop":
        out.print(
            "Prefect server stopped"
            if ps.stop_server()
            else "no Prefect server started by handover is running"
        )
        return 0
    up = ps.healthy(url)
    out.print(f"Prefect server at {url}: {'healthy' if up else 'not answering'}")
    return 0 if up else 1


# --- bench --------------------------------------------------------------------------------------


def cmd_bench(args: argparse.Namespace) -> int:
    """`handover bench lab`: lab up/down times (medians) and memory."""

    def say(m: str) -> None:
        err.print(f"[dim]{m}[/dim]")

    if args.bench_what == "alert":
        from infra.bench.alert import bench_alert

        backends = ("postgresql", "sqlite") if args.prefect_db == "both" else (args.prefect_db,)
        starts = ("forkserver", "spawn") if args.start == "both" else (args.start,)
        result = bench_alert(rounds=args.rounds, backends=backends, starts=starts, progress=say)
    elif args.bench_what == "clean-move":
        from infra.bench.clean_move import bench_clean_move

        result = bench_clean_move(rounds=args.rounds, warmup_s=args.warmup, progress=say)
    else:
        from infra.bench.lab import bench_lab

        result = bench_lab(args.site, rounds=args.rounds, hosts=args.hosts, progress=say)
    if args.json:
        _print_json(result)
    else:
        for line in result["summary"]:
            out.print(line)
    return 0 if result["ok"] else 1


# --- main ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    ap = argparse.ArgumentParser(prog="handover", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check-config", help="validate site files")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("snapshot", help="live snapshot of a site over SSH")
    _site_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_snapshot)

    lab = sub.add_parser("lab", help="the simulated site")
    lsub = lab.add_subparsers(dest="lab_action", required=True)
    p = lsub.add_parser("up", help="start the lab")
    p.add_argument("--hosts", type=int, help="a generated lab of N hosts (scale runs)")
    p.add_argument("--json", action="store_true")
    _site_arg(p)
    for name, helptext in (
        ("down", "stop everything the lab started"),
        ("status", "hosts, agents, channels"),
    ):
        p = lsub.add_parser(name, help=helptext)
        p.add_argument("--json", action="store_true")
        _site_arg(p)
        if name == "down":
            p.add_argument(
                "--purge",
                action="store_true",
                help="also delete the state directory (database, host roots, logs)",
            )
    p = lsub.add_parser("score", help="jobs done/lost, downtime, agents running twice")
    p.add_argument("--json", action="store_true")
    p.add_argument("--reset", action="store_true", help="start counting again from now")
    _site_arg(p)
    p = lsub.add_parser("fault", help="inject a fault into a host")
    p.add_argument("host")
    p.add_argument("kind", choices=FAULT_KINDS)
    _site_arg(p)
    p = lsub.add_parser("heal", help="undo a host's fault (a crashed host reboots)")
    p.add_argument("host")
    _site_arg(p)
    p = lsub.add_parser("load", help="switch the load generator on or off")
    p.add_argument("state", choices=["on", "off"])
    p.add_argument("--rate", type=float, help="jobs per second per channel")
    _site_arg(p)
    p = lsub.add_parser("exec", help="run a command inside a host (not over SSH)")
    p.add_argument("host")
    p.add_argument("argv", nargs=argparse.REMAINDER)
    _site_arg(p)
    lab.set_defaults(func=cmd_lab)

    p = sub.add_parser("run", help="run a procedure and print its report")
    p.add_argument("procedure", choices=["clean-move", "emergency-move", "fence-host"])
    _site_arg(p)
    p.add_argument("--from", dest="from_host", help="clean-move: host the agents leave")
    p.add_argument("--to", dest="to_host", help="clean-move: host they go to")
    p.add_argument("--host", help="emergency-move, fence-host: the failed (or returning) host")
    p.add_argument("--mode", choices=["pipelined", "full", "staged"], default="pipelined")
    p.add_argument("--agents", help="comma-separated agent names (default: all on the host)")
    p.add_argument("--drain-timeout", type=float, help="seconds (default: the site's policy)")
    p.add_argument("--poll-interval", type=float, help="seconds (default: the site's policy)")
    p.add_argument("--dry-run", action="store_true", help="show the plan, change nothing")
    p.add_argument(
        "--yes",
        action="store_true",
        help="approve up front (no pause for approval; recorded as yours)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="after the drain timeout, move anyway: running transfers lose their state",
    )
    p.add_argument("--json", action="store_true", help="print the typed result as JSON")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("serve", help="serve the deployments of deployments/prefect.yaml")
    _site_arg(p)
    p.add_argument(
        "--poll-interval",
        type=float,
        default=1.0,
        help="seconds between checks for runs to start (default 1)",
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

    p = sub.add_parser("alert", help="send one signed alert to the gateway")
    _site_arg(p)
    p.add_argument("--host", required=True)
    p.add_argument(
        "--kind",
        default="host_down",
        choices=["host_down", "service_down", "resource_failed", "recovered"],
    )
    p.add_argument("--summary")
    p.add_argument("--gateway", default="http://127.0.0.1:8787")
    p.set_defaults(func=cmd_alert)

    p = sub.add_parser(
        "deploy", help="register the deployments and their automations with the Prefect API"
    )
    _site_arg(p)
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("gateway", help="Slack approvals and alerts in (HTTP or Socket Mode)")
    _site_arg(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8787)
    p.add_argument(
        "--socket-mode",
        action="store_true",
        help="receive interactions over Slack's Socket Mode instead of HTTP",
    )
    p.set_defaults(func=cmd_gateway)

    p = sub.add_parser("fake-slack", help="a fake Slack Web API on loopback (rehearsals, tests)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8788)
    p.set_defaults(func=cmd_fake_slack)

    srv = sub.add_parser("server", help="a local Prefect server (embedded SQLite)")
    srv.add_argument("server_action", choices=["start", "stop", "status"])
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=4200)
    srv.set_defaults(func=cmd_server)

    bench = sub.add_parser("bench", help="benchmarks")
    bsub = bench.add_subparsers(dest="bench_what", required=True)
    p = bsub.add_parser("lab", help="lab up/down time (medians) and memory")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--hosts", type=int, help="also measure a generated lab of N hosts")
    p.add_argument("--json", action="store_true")
    _site_arg(p)
    p = bsub.add_parser("clean-move", help="full vs pipelined clean move: downtime, overhead")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=float, default=6.0, help="seconds of load before each move")
    p.add_argument("--json", action="store_true")
    p = bsub.add_parser("alert", help="alert -> flow start -> first agent serving (p50, p95)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument(
        "--prefect-db",
        choices=["both", "postgresql", "sqlite"],
        default="both",
        help="the temporary Prefect server's database (default: both, side by side)",
    )
    p.add_argument(
        "--start",
        choices=["both", "forkserver", "spawn"],
        default="both",
        help="handover serve's start method for runs (default: both, side by side)",
    )
    p.add_argument("--json", action="store_true")
    bench.set_defaults(func=cmd_bench)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `handover` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SiteConfigError as exc:
        err.print(f"[red]invalid site file[/red] {exc}")
        return 2
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
