"""`handover lab ...`: the simulated site."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table
from rich.text import Text

from config.site import short_name as short
from infra.cli.common import (
    DEFAULT_SITE,
    err,
    error,
    note,
    out,
    print_json,
    say,
    site_arg,
    site_path,
    twin_args,
)
from infra.lab.faults import DB_FAULT_KINDS, FAULT_KINDS

#: the geo lab's own site file (`handover lab up --geo`)
GEO_SITE = DEFAULT_SITE.parent / "geo-lab.yaml"
GEO_FAULTS = ("kill-site", "restore-site", "stop-master", "start-master")


def _lab(args: argparse.Namespace) -> Any:
    from infra.lab.lab import Lab

    return Lab.from_file(args.site)


def cmd_lab(args: argparse.Namespace) -> int:
    """`handover lab ...`."""
    from infra.lab.lab import LabError

    try:
        return _lab_dispatch(args)
    except LabError as exc:
        error("lab:", exc)
        return 1


def _geo_lab(args: argparse.Namespace, *, default: bool) -> Any:
    """The geo lab the command means: --site when it is a geo site file; else, when `default`,
    the one of config/sites/geo-lab.yaml (unless --site named another site); else None."""
    from config.loader import load_site
    from infra.lab.geo.lab import GeoLab
    from infra.lab.lab import LabError

    site = load_site(args.site)
    if site.geo is not None:
        return GeoLab(site)
    if not default:
        return None
    if not _default_site(args):
        raise LabError(f"--site {args.site} has no `geo:` section: give a geo site file")
    return GeoLab.from_file(GEO_SITE)


def _default_site(args: argparse.Namespace) -> bool:
    """Whether --site is the default one (not given, nor $HANDOVER_SITE set to another)."""
    default = site_path(os.environ.get("HANDOVER_SITE", str(DEFAULT_SITE)))
    return Path(args.site).resolve() == Path(default).resolve()


def _geo_dispatch(geo: Any, args: argparse.Namespace) -> int:
    from infra.lab.geo.views import status_lines

    action = args.lab_action
    if action == "up":
        report = geo.up(progress=note)
        if args.json:
            print_json(report)
            return 0
        s = report["seconds"]
        say(
            f"geo lab up: site {report['site']} in {s['total']:.1f} s (databases "
            f"{s['databases']:.1f} s, dns {s['dns']:.1f} s, tools {s['tools']:.1f} s)"
        )
        for tool, urls in report["tools"].items():
            say(f"{tool}: " + ", ".join(f"{site} {url}" for site, url in urls.items()))
        say(f"site file: {report['site_file']}")
        return 0
    if action == "geo-fault":
        do = {
            "kill-site": geo.kill_site,
            "restore-site": geo.restore_site,
            "stop-master": geo.stop_master,
            "start-master": geo.start_master,
        }[args.action]
        say(do(args.geo_site))
        return 0
    if action == "down":
        report = geo.down()
        if args.purge and not report["leftovers"]:
            geo.remove_state()
            report["purged"] = str(geo.paths.root)
        if args.json:
            print_json(report)
        else:
            left = report["leftovers"]
            say(
                f"geo lab down: {report['stopped']} processes stopped in {report['seconds']:.1f}"
                " s; " + (f"left running: {left}" if left else "nothing left running"),
                "red" if left else "",
            )
        return 0 if not report["leftovers"] else 1
    st = geo.status()
    if args.json:
        print(st.model_dump_json(indent=2))
    else:
        for line in status_lines(st):
            say(line)
    return 0


def _lab_dispatch(args: argparse.Namespace) -> int:
    action = args.lab_action
    if action in ("up", "down", "status", "geo-fault"):
        geo = _geo_lab(args, default=getattr(args, "geo", False) or action == "geo-fault")
        if geo is not None:
            return _geo_dispatch(geo, args)
    if action == "twin":
        return _twin(args)
    lab = _lab(args)
    if action == "up":
        report = lab.up(
            hosts=args.hosts,
            hagd=args.hagd,
            monitoring=args.monitoring,
            progress=note,
        )
        if args.json:
            print_json(report)
        else:
            s = report["seconds"]
            say(
                f"lab up: site {report['site']}, {len(report['hosts'])} hosts, "
                f"{report['agents']} agents serving, in {s['total']:.1f} s "
                f"(database {s['database']:.1f} s, hosts {s['hosts']:.1f} s, "
                f"agents {s['agents']:.1f} s)\nsite file: {report['site_file']}"
            )
            for host, control in report["hagd"].items():
                say(f"HA group daemon on {host}: handover hagd status --control {control}")
        return 0
    if action == "monitoring-to":
        say(lab.monitoring_to(args.gateway, Path(args.token_file)))
        return 0
    if action == "report-to":
        say(lab.report_to(args.gateway, Path(args.secret_file)))
        return 0
    if action == "down":
        report = lab.down()
        if args.purge and not report["leftovers"]:
            lab.remove_state()
            report["purged"] = str(lab.paths.root)
        geo = _running_geo(args)
        if geo is not None:  # the geo lab of geo-lab.yaml runs too: stopped with it
            report["geo"] = geo.down()
            report["leftovers"] += report["geo"]["leftovers"]
        if args.json:
            print_json(report)
        else:
            out.print(
                Text.assemble(
                    f"lab down: {report['hosts_stopped']} hosts stopped in "
                    f"{report['seconds']:.1f} s; ",
                    ("nothing left running", "")
                    if not report["leftovers"]
                    else (f"left running: {report['leftovers']}", "red"),
                )
            )
            if geo is not None:
                say(f"geo lab down: {report['geo']['stopped']} processes stopped")
        return 0 if not report["leftovers"] else 1
    if action == "status":
        st = lab.status()
        if args.json:
            print(st.model_dump_json(indent=2))
            return 0
        _print_status(st)
        geo = _running_geo(args)
        if geo is not None:
            return _geo_dispatch(geo, args)
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
            c = score.clients
            if c is not None:
                out.print(
                    f"clients: {c.accepted} submissions accepted, {c.refused} refused, "
                    f"{c.failed} failed, {c.waiting} waiting, {c.lost} lost; {c.outages} "
                    f"outage(s), longest {c.outage_max_s:.2f} s; writes by a fenced master: "
                    f"{c.writes_by_fenced_master}; epoch {c.epoch} ({c.epoch_holder})"
                )
        return 0
    if action == "fault":
        say(lab.fault(args.host, args.kind))
        return 0
    if action == "heal":
        say(lab.heal(args.host))
        return 0
    if action == "db-fault":
        say(lab.fault_database(args.kind))
        return 0
    if action == "db-heal":
        say(lab.heal_database())
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


def _running_geo(args: argparse.Namespace) -> Any:
    """For `down` and `status` of the default lab: the geo lab of config/sites/geo-lab.yaml
    when it has a record (it runs, or did not stop cleanly); else (or with --site) None."""
    from infra.lab.geo.lab import GeoLab

    if not _default_site(args):
        return None
    geo = GeoLab.from_file(GEO_SITE)
    return geo if geo.record() else None


def _print_status(st: Any) -> None:
    db_fault = f" [red]({escape(st.database_fault)})[/red]" if st.database_fault else ""
    out.print(
        f"lab {'[green]up[/green]' if st.up else '[red]down[/red]'} (site {st.site}); "
        f"database {escape(st.database)}{db_fault}; lab daemon "
        f"{'running' if st.labd else 'stopped'}"
    )
    for d in st.dns:
        answer = (
            f"[red]{escape(d.error)}[/red]"
            if d.error
            else f"alias at {', '.join(d.addresses) or 'nothing'}, epoch {d.epoch}, "
            f"serial {d.serial}"
        )
        out.print(f"dns {d.role} {escape(d.server)}: {answer}")
    for f in st.frontends:
        run = "running" if f.running else "[red]not running[/red]"
        epoch = f" with epoch {f.epoch}" if f.epoch is not None else ""
        out.print(f"front end {f.host}: {f.role}{epoch}, {run}")
    table = Table()
    for col in ("host", "address", "state", "agents (as edguser)", "transfers", "disabled"):
        table.add_column(col)
    for h in st.hosts:
        state = "up" if h.up else "down"
        if h.fault:
            state += f" [red]({escape(h.fault)})[/red]"
        if h.up and not h.sshd:
            state += " no sshd"
        table.add_row(
            h.name,
            f"{h.address}:{h.port}",
            state,
            "\n".join(
                f"{short(a.name)} {a.state}"
                + (f" v{a.version}" if a.version else "")
                + ("" if a.user == "edguser" else f" (as {a.user})")
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


def _twin(args: argparse.Namespace) -> int:
    """Write the twin's lab site file of --site, then bring the twin up (`infra.lab.twin`)."""
    from config.loader import load_site
    from infra.lab.lab import Lab
    from infra.lab.twin import TwinRefused, write_twin

    site = load_site(args.site)
    target = Path(args.out or f"/var/tmp/handover-lab/{site.site}-twin.yaml")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        twin = write_twin(
            Path(args.site),
            octet=args.octet,
            out=target,
            snapshot_file=Path(args.snapshot) if args.snapshot else None,
            state_dir=Path(args.state_dir) if args.state_dir else None,
        )
    except TwinRefused as exc:
        error("refused", f"{exc.source}: the lab cannot mirror it")
        for p in exc.problems:
            err.print(f"  - {p.path}: {p.message}\n      fix: {p.fix}")
        return 2
    except ValueError as exc:  # a snapshot file that is not one
        error("refused", f"--snapshot {args.snapshot}: {exc}")
        return 2
    say(f"the twin's site file: {twin}")
    if args.snapshot:
        from infra.lab.twin import read_snapshot, twin_load

        say(twin_load(read_snapshot(Path(args.snapshot))[0]).sentence())
    if args.no_up:
        return 0
    report = Lab.from_file(twin).up(progress=note)
    if args.json:
        print_json(report)
        return 0
    say(
        f"twin of {site.site} up: site {report['site']}, {len(report['hosts'])} hosts "
        f"({', '.join(report['hosts'])}), {report['agents']} agents serving, in "
        f"{report['seconds']['total']:.1f} s; `handover lab status --site {twin}`, "
        f"`handover lab down --site {twin}`"
    )
    return 0


def register(sub: Any) -> None:
    """Add the commands of this module to the `handover` parser."""
    lab = sub.add_parser("lab", help="the simulated site")
    lsub = lab.add_subparsers(dest="lab_action", required=True)
    p = lsub.add_parser("up", help="start the lab")
    p.add_argument("--hosts", type=int, help="a generated lab of N hosts (scale runs)")
    p.add_argument(
        "--hagd",
        action="store_true",
        help="run the HA group daemon on the front-end hosts (their front end its service)",
    )
    p.add_argument(
        "--monitoring",
        action="store_true",
        help="run handover's exporter, Prometheus and Alertmanager on the lab",
    )
    p.add_argument(
        "--geo",
        action="store_true",
        help="the geo lab instead: two sites sharing a replicated tool (config/sites/"
        "geo-lab.yaml, or --site FILE of a geo site)",
    )
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    site_arg(p)
    for name, helptext in (
        ("down", "stop everything the lab started"),
        ("status", "hosts, agents, channels"),
    ):
        p = lsub.add_parser(name, help=helptext)
        p.add_argument("--json", action="store_true", help="print the answer as JSON")
        p.add_argument("--geo", action="store_true", help="the geo lab only (lab up --geo)")
        site_arg(p)
        if name == "down":
            p.add_argument(
                "--purge",
                action="store_true",
                help="also delete the state directory (database, host roots, logs)",
            )
    p = lsub.add_parser(
        "twin", help="a lab that mirrors a real site (its hosts, agents, front end, alias)"
    )
    site_arg(p)
    p.add_argument(
        "--snapshot",
        help="the real site's snapshot (`handover snapshot --json`): the twin's load per "
        "channel is shaped like its running transfers",
    )
    twin_args(p)
    p.add_argument(
        "--out", help="the twin's site file (default /var/tmp/handover-lab/SITE-twin.yaml)"
    )
    p.add_argument("--no-up", action="store_true", help="write the twin's site file only")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    p = lsub.add_parser("geo-fault", help="inject a fault into the geo lab (lab up --geo)")
    p.add_argument(
        "action", choices=GEO_FAULTS, help="lose or restore a site, stop or start its masters"
    )
    p.add_argument("geo_site", metavar="SITE", help="the geo site (e.g. site-a)")
    site_arg(p)
    p = lsub.add_parser("score", help="jobs done/lost, downtime, agents running twice")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    p.add_argument("--reset", action="store_true", help="start counting again from now")
    site_arg(p)
    p = lsub.add_parser("fault", help="inject a fault into a host")
    p.add_argument("host", help="the lab host (e.g. fts101)")
    p.add_argument("kind", choices=FAULT_KINDS, help="the fault")
    site_arg(p)
    p = lsub.add_parser(
        "report-to", help="make the lab's HA group daemons report to a gateway (signed alerts)"
    )
    p.add_argument("--gateway", required=True, help="the gateway's URL")
    p.add_argument("--secret-file", required=True, help="a file holding the webhook secret")
    site_arg(p)
    p = lsub.add_parser(
        "monitoring-to", help="route the lab's Alertmanager to a gateway (its bearer token)"
    )
    p.add_argument("--gateway", required=True, help="the gateway's URL")
    p.add_argument("--token-file", required=True, help="a file holding the Alertmanager token")
    site_arg(p)
    p = lsub.add_parser("heal", help="undo a host's fault (a crashed host reboots)")
    p.add_argument("host", help="the lab host (e.g. fts101)")
    site_arg(p)
    p = lsub.add_parser("db-fault", help="inject a fault into the database server")
    p.add_argument("kind", choices=DB_FAULT_KINDS, help="the fault")
    site_arg(p)
    p = lsub.add_parser("db-heal", help="undo the database's fault (after a crash it starts)")
    site_arg(p)
    p = lsub.add_parser("load", help="switch the load generator on or off")
    p.add_argument("state", choices=["on", "off"], help="the load generator on or off")
    p.add_argument("--rate", type=float, help="jobs per second per channel")
    site_arg(p)
    p = lsub.add_parser("exec", help="run a command inside a host (not over SSH)")
    p.add_argument("host", help="the lab host (e.g. fts101)")
    p.add_argument("argv", nargs=argparse.REMAINDER, help="the command and its arguments")
    site_arg(p)
    lab.set_defaults(func=cmd_lab)
