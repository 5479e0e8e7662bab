"""`handover bench ...`: benchmarks that print figures and ratios measured side by side."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from infra.cli.common import exit_on_sigterm, note, print_json, say, site_arg


def cmd_bench(args: argparse.Namespace) -> int:
    """`handover bench lab`: lab up/down times (medians) and memory."""
    exit_on_sigterm()  # a bench stopped with SIGTERM takes its lab down
    if args.record:
        from infra.bench.record import checked_out

        # the commit measured: the one checked out when the bench starts
        args.commit = checked_out()

    if args.bench_what == "alert":
        from infra.bench.alert import bench_alert

        if args.storm:
            from infra.bench.storm import bench_storm

            result = bench_storm(alerts=args.storm, gateways=args.gateways, progress=note)
            return _print(args, result)
        backends = ("postgresql", "sqlite") if args.prefect_db == "both" else (args.prefect_db,)
        starts = ("forkserver", "spawn") if args.start == "both" else (args.start,)
        runs_froms = ("gateway", "automations") if args.runs_from == "both" else (args.runs_from,)
        result = bench_alert(
            rounds=args.rounds,
            backends=backends,
            starts=starts,
            runs_froms=runs_froms,
            progress=note,
        )
    elif args.bench_what == "faults":
        from infra.bench.faults import bench_faults

        result = bench_faults(
            procedures=args.procedure,
            kinds=args.kind,
            wheres=args.where,
            afters=args.after,
            warmup_s=args.warmup,
            octet=args.octet,
            progress=note,
        )
    elif args.bench_what == "switch":
        from infra.bench.switch import bench_switch

        result = bench_switch(
            rounds=args.rounds,
            ttls=tuple(args.ttl or (5, 60)),
            flood_threads=args.flood_threads,
            progress=note,
        )
    elif args.bench_what == "rolling-upgrade":
        from infra.bench.rolling_upgrade import bench_rolling_upgrade

        result = bench_rolling_upgrade(
            hosts=tuple(args.hosts or (10, 50)), rounds=args.rounds, load=args.load, progress=note
        )
    elif args.bench_what == "detect":
        from infra.bench.detect import PATHS, bench_detect

        result = bench_detect(rounds=args.rounds, paths=tuple(args.path or PATHS), progress=note)
    elif args.bench_what == "hagd":
        from infra.bench.hagd import bench_hagd

        result = bench_hagd(
            rounds=args.rounds, providers=args.providers, lab=not args.no_lab, progress=note
        )
    elif args.bench_what == "scale":
        from infra.bench.scale import bench_scale

        result = bench_scale(
            rounds=args.rounds,
            sizes=(None, args.hosts),
            services=args.services,
            solo=args.solo,
            progress=note,
        )
    elif args.bench_what == "control-plane":
        from infra.bench.control_plane import PARTS, bench_control_plane

        result = bench_control_plane(parts=tuple(args.part or PARTS), progress=note)
    elif args.bench_what == "geo":
        from infra.bench.geo import bench_geo
        from infra.bench.geo_figures import ROWS

        result = bench_geo(rounds=args.rounds, parts=tuple(args.part or ROWS), progress=note)
    elif args.bench_what == "clean-move":
        from infra.bench.clean_move import bench_clean_move

        result = bench_clean_move(
            rounds=args.rounds,
            warmup_s=args.warmup,
            eta_errors=tuple(args.eta_error or ()),
            progress=note,
        )
    else:
        from infra.bench.lab import bench_lab

        result = bench_lab(args.site, rounds=args.rounds, hosts=args.hosts, progress=note)
    return _print(args, result)


def _print(args: argparse.Namespace, result: dict[str, Any]) -> int:
    if args.record:
        from infra.bench.record import record

        name = args.bench_what + ("-storm" if getattr(args, "storm", 0) else "")
        where = record(name, sys.argv[1:], result, commit=args.commit)
        note(f"recorded in {where} (python -m infra.docs renders it into the benchmarks page)")
    if args.json:
        print_json(result)
    elif getattr(args, "markdown", False):
        for line in result["table"]:
            print(line)
    else:
        for line in result["summary"]:
            say(line)
    return 0 if result["ok"] else 1


def _output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument(
        "--record",
        action="store_true",
        help="also keep the figures, with the date, commit and machine, in "
        "docs/benchmarks/NAME.json (the documentation's benchmarks page)",
    )


def _positive(text: str) -> int:
    """A count of 1 or more (an argparse type)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of 1 or more")
    return n


def register(sub: Any) -> None:
    """Add the commands of this module to the `handover` parser."""
    bench = sub.add_parser("bench", help="benchmarks")
    bsub = bench.add_subparsers(dest="bench_what", required=True)
    p = bsub.add_parser("lab", help="lab up/down time (medians) and memory")
    p.add_argument("--rounds", type=int, default=5, help="rounds to measure (medians)")
    p.add_argument("--hosts", type=int, help="also measure a generated lab of N hosts")
    _output_args(p)
    site_arg(p)
    p = bsub.add_parser("clean-move", help="full vs pipelined clean move: downtime, overhead")
    p.add_argument("--rounds", type=int, default=3, help="rounds to measure (medians)")
    p.add_argument("--warmup", type=float, default=6.0, help="seconds of load before each move")
    p.add_argument(
        "--eta-error",
        type=float,
        action="append",
        help="also run the pipelined move with each transfer's estimated end off by up to "
        "this fraction of its duration (repeatable, e.g. 0.3 and 0.6; the lab's "
        "transfers.eta_error)",
    )
    _output_args(p)
    p = bsub.add_parser(
        "control-plane",
        help="kill each part of the control plane in turn mid-move and mid-alerts: lose nothing",
    )
    p.add_argument(
        "--part",
        action="append",
        choices=["api", "services", "worker", "gateway", "redis", "postgresql"],
        help="the rows to run (repeatable; default: every part, in this order)",
    )
    _output_args(p)
    p = bsub.add_parser("alert", help="alert -> flow start -> first agent serving (p50, p95)")
    p.add_argument("--rounds", type=int, default=10, help="rounds to measure (medians)")
    p.add_argument(
        "--storm",
        type=int,
        default=0,
        metavar="N",
        help="instead: N identical alerts in 10 s over the gateways (runs, latency, memory)",
    )
    p.add_argument(
        "--gateways",
        type=int,
        default=2,
        help="with --storm: gateways sharing one book (default 2)",
    )
    p.add_argument(
        "--prefect-db",
        choices=["both", "postgresql", "sqlite"],
        default="both",
        help="the temporary Prefect server's database (default: both, side by side)",
    )
    p.add_argument(
        "--start",
        choices=["both", "forkserver", "spawn"],
        default="forkserver",
        help="handover serve's start method for runs (default forkserver; both: side by side)",
    )
    p.add_argument(
        "--runs-from",
        choices=["both", "gateway", "automations"],
        default="both",
        help="who creates the run: the gateway, Prefect's automations (default: both, side "
        "by side)",
    )
    _output_args(p)
    p = bsub.add_parser(
        "switch", help="planned and failover switches under load: client outage, alert -> alias"
    )
    p.add_argument("--rounds", type=int, default=3, help="planned and failover rounds per TTL")
    p.add_argument(
        "--ttl",
        type=int,
        action="append",
        help="the alias TTL in seconds (repeatable; default: the lab's 5 and the production 60)",
    )
    p.add_argument(
        "--flood-threads",
        type=int,
        default=8,
        help="resolvers querying during one switch (0: none)",
    )
    _output_args(p)
    p = bsub.add_parser(
        "geo",
        help="geo failover of a replicated tool under load: outage, writes lost, fenced "
        "accepts, resolver flood",
    )
    p.add_argument(
        "--rounds",
        type=_positive,
        help="rounds per row (default 3, and 2 for the 60 s TTL row: a round takes over a minute)",
    )
    p.add_argument(
        "--part",
        action="append",
        choices=["planned", "killed-ttl5", "killed-ttl60", "master-down", "flood"],
        help="the rows to run (repeatable; default: every row, in this order)",
    )
    _output_args(p)
    p = bsub.add_parser(
        "rolling-upgrade",
        help="rolling upgrades of generated labs: time per host, overhead, agents' time down",
    )
    p.add_argument(
        "--hosts",
        type=int,
        action="append",
        help="a lab size (repeatable; default 10 and 50; 10 is always run for the ratio)",
    )
    p.add_argument("--rounds", type=int, default=3, help="upgrades per size")
    p.add_argument(
        "--load", type=float, default=10.0, help="jobs/s submitted in total, whatever the size"
    )
    _output_args(p)
    p = bsub.add_parser(
        "hagd", help="HA group daemon: failover vs dT1 + dT2, manual takeover gap, heartbeat cost"
    )
    p.add_argument("--rounds", type=int, default=5, help="failovers and takeovers per setting")
    p.add_argument("--providers", type=int, default=50, help="daemons for the heartbeat cost")
    p.add_argument(
        "--no-lab", action="store_true", help="skip the rounds on the lab (crash, takeover back)"
    )
    _output_args(p)
    p = bsub.add_parser(
        "scale", help="reading the site (snapshot, sensors) at 4 hosts and at 50, side by side"
    )
    p.add_argument("--rounds", type=int, default=5, help="rounds to measure (medians)")
    p.add_argument("--hosts", type=int, default=50, help="the large lab's hosts (default 50)")
    p.add_argument(
        "--services",
        type=int,
        default=10,
        help="on the large lab, this many services, one emergency move each, all at once over "
        "two workers (default 10; 0: no moves)",
    )
    p.add_argument("--solo", type=int, default=3, help="moves timed alone first (default 3)")
    _output_args(p)
    p = bsub.add_parser("detect", help="a crash to the service restored, by each detection path")
    p.add_argument("--rounds", type=int, default=5, help="rounds per path (medians)")
    p.add_argument(
        "--path",
        action="append",
        choices=("exporter", "hagd", "pacemaker"),
        help="only this detection path (repeatable; default: every path this machine can run)",
    )
    _output_args(p)
    p = bsub.add_parser(
        "faults", help="every procedure under faults at its steps: end state, convergence"
    )
    p.add_argument(
        "--procedure",
        action="append",
        help="only rows of this procedure (clean-move, clean-move/pipelined, emergency-move, ...)",
    )
    p.add_argument(
        "--kind",
        action="append",
        help="only this fault (sshd-down, crash, kill-9, prefect-restart, ...)",
    )
    p.add_argument(
        "--where",
        action="append",
        choices=["source", "target", "database", "run"],
        help="only faults at this place (repeatable)",
    )
    p.add_argument("--after", action="append", help="only faults injected after this step verb")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of load before each run")
    p.add_argument(
        "--octet",
        type=int,
        default=248,
        choices=range(200, 255),
        metavar="200-254",
        help="the bench lab's addresses 127.OCTET.0.0/16 (two benches side by side)",
    )
    p.add_argument("--markdown", action="store_true", help="print the rows as a markdown table")
    _output_args(p)
    bench.set_defaults(func=cmd_bench)
