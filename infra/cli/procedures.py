"""`handover run ...`: a procedure run from the terminal, with its progress and report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from config.loader import load_site
from infra.cli.common import error, site_arg, twin_args


def cmd_run(args: argparse.Namespace) -> int:
    """`handover run clean-move ...`."""
    from infra.run import protect_terminal, run_procedure

    protect_terminal()

    load_site(args.site)  # a malformed site file is reported before anything starts
    if args.procedure == "rolling-upgrade":
        up: dict[str, Any] = {
            "site_file": str(Path(args.site).resolve()),
            "version": args.version,
            "config_only": args.config_only,
            "dry_run": args.dry_run,
            "force_window": args.force_window or "",
        }
        if args.version and args.config_only:
            error("--version and --config-only exclude each other")
            return 2
        if args.hosts:
            up["hosts"] = [h.strip() for h in args.hosts.split(",") if h.strip()]
        for key in ("batch", "max_failures", "canary"):
            if getattr(args, key) is not None:
                up[key] = getattr(args, key)
        if args.yes:
            up["pause_for_approval"] = False
        return run_procedure("rolling-upgrade", up, as_json=args.json)
    if args.procedure in ("geo-failover", "geo-failback"):
        return _geo(args)
    if args.procedure == "switch":
        sp: dict[str, Any] = {
            "site_file": str(Path(args.site).resolve()),
            "to": args.to_host,
            "reason": args.reason,
            "dry_run": args.dry_run,
        }
        if args.failover:
            sp["mode"] = "failover"
        if args.yes:
            sp["pause_for_approval"] = False
        return run_procedure("switch", sp, as_json=args.json)
    if args.procedure in ("emergency-move", "fence-host", "drop-db-lock"):
        if not args.host:
            error(f"{args.procedure} needs --host HOST (the site's name of the machine)")
            return 2
        hp: dict[str, Any] = {"site_file": str(Path(args.site).resolve()), "host": args.host}
        if args.procedure == "drop-db-lock":
            hp.update(agent=args.agent, dry_run=args.dry_run)
        if args.yes:
            hp["pause_for_approval"] = False
        return run_procedure(args.procedure, hp, as_json=args.json)
    if not (args.from_host and args.to_host):
        error("clean-move needs --from and --to")
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
    if args.cutover_window is not None:
        params["cutover_window_s"] = args.cutover_window
    if args.hot_standby is not None:
        params["hot_standby"] = args.hot_standby
    if args.yes:
        params["pause_for_approval"] = False
    return run_procedure(args.procedure, params, as_json=args.json)


def _geo(args: argparse.Namespace) -> int:
    """`handover run geo-failover|geo-failback --service T --to SITE`."""
    from infra.run import run_procedure

    if not (args.service and args.to_host):
        error(f"{args.procedure} needs --service TOOL and --to SITE (a site of the tool)")
        return 2
    gp: dict[str, Any] = {
        "site_file": str(Path(args.site).resolve()),
        "service": args.service,
        "to": args.to_host,
        "reason": args.reason,
        "dry_run": args.dry_run,
    }
    if args.procedure == "geo-failover":
        if args.failover and args.planned:
            error("--planned and --failover exclude each other")
            return 2
        if args.failover or args.planned:
            gp["mode"] = "failover" if args.failover else "planned"
        if args.max_lag is not None:
            gp["max_lag_s"] = args.max_lag
    elif args.keep_dir:
        gp["keep_dir"] = args.keep_dir
    if args.yes:
        gp["pause_for_approval"] = False
    return run_procedure(args.procedure, gp, as_json=args.json)


def register(sub: Any) -> None:
    """Add the commands of this module to the `handover` parser."""
    p = sub.add_parser("run", help="run a procedure and print its report")
    p.add_argument(
        "procedure",
        choices=[
            "clean-move",
            "emergency-move",
            "fence-host",
            "drop-db-lock",
            "switch",
            "rolling-upgrade",
            "geo-failover",
            "geo-failback",
        ],
        help="the procedure to run",
    )
    site_arg(p)
    p.add_argument("--from", dest="from_host", help="clean-move: host the agents leave")
    p.add_argument(
        "--to",
        dest="to_host",
        help="clean-move: host they go to; switch: the new master; geo-failover, geo-failback: "
        "the site the tool moves to",
    )
    p.add_argument("--reason", default="", help="switch: why (for the thread and the report)")
    p.add_argument(
        "--failover",
        action="store_true",
        help="switch: fence the master (kill its DB sessions, raise the epoch) instead of a "
        "planned handover (default: planned when the master answers as the master); "
        "geo-failover: promote the target without the active site (it does not answer)",
    )
    p.add_argument(
        "--host",
        help="emergency-move, fence-host: the failed (or returning) host; drop-db-lock: the "
        "machine whose DB sessions go",
    )
    p.add_argument("--agent", help="drop-db-lock: only this agent's sessions")
    p.add_argument(
        "--mode",
        choices=["pipelined", "full", "staged"],
        default="pipelined",
        help="how the clean move goes: channel by channel, all at once, or in stages",
    )
    p.add_argument("--agents", help="comma-separated agent names (default: all on the host)")
    p.add_argument("--drain-timeout", type=float, help="seconds (default: the site's policy)")
    p.add_argument("--poll-interval", type=float, help="seconds (default: the site's policy)")
    p.add_argument(
        "--cutover-window",
        type=float,
        metavar="S",
        help="clean-move, pipelined: let each channel go Inactive up to S seconds later, when its "
        "running transfers are about to end (default: the site's policy; 0: all at once)",
    )
    p.add_argument(
        "--hot-standby",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="clean-move, pipelined: start each agent on the target before stopping it on the "
        "source (default: the site's policy)",
    )
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
    g = p.add_argument_group("geo-failover, geo-failback")
    g.add_argument("--service", help="the replicated tool (a name under geo.tools)")
    g.add_argument(
        "--planned",
        action="store_true",
        help="geo-failover: the active site answers; it stops writing, the target catches up "
        "(default when the active site's database answers as the primary)",
    )
    g.add_argument(
        "--max-lag",
        type=float,
        metavar="S",
        help="geo-failover: the loss window accepted without asking, in seconds (default: the "
        "tool's max_lag_s); beyond it a human approves the stated window",
    )
    g.add_argument(
        "--keep-dir",
        metavar="DIR",
        help="geo-failback: where the rebuilt database's old content is kept",
    )
    g = p.add_argument_group("rolling-upgrade")
    g.add_argument("--version", help="the version to install (default: upgrade.target_version)")
    g.add_argument(
        "--config-only", action="store_true", help="re-render the configuration and restart"
    )
    g.add_argument("--hosts", help="comma-separated hosts, in order (default: all, file order)")
    g.add_argument("--batch", type=int, help="hosts at a time (default: upgrade.batch)")
    g.add_argument(
        "--max-failures", type=int, help="failed hosts tolerated before halting (default: 0)"
    )
    g.add_argument("--canary", help="a host upgraded first, alone")
    g.add_argument(
        "--force-window",
        metavar="REASON",
        help="run outside the maintenance window (or in a blackout); the reason is recorded",
    )
    p.add_argument("--json", action="store_true", help="print the typed result as JSON")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "rehearse",
        help="plan a procedure for the real site, run it on the site's twin, compare and score",
    )
    p.add_argument(
        "procedure", choices=["clean-move", "rolling-upgrade"], help="the procedure to rehearse"
    )
    site_arg(p)
    g = p.add_argument_group("clean-move")
    g.add_argument("--from", dest="from_host", help="the host to move from")
    g.add_argument("--to", dest="to_host", help="the host to move to")
    g.add_argument("--mode", choices=["pipelined", "full", "staged"], default="pipelined")
    g = p.add_argument_group("rolling-upgrade")
    g.add_argument("--version", help="the version to install (default: upgrade.target_version)")
    g.add_argument("--hosts", help="only these hosts, in this order (comma-separated)")
    p.add_argument(
        "--snapshot",
        help="a recorded snapshot of the real site (`handover snapshot --json`) instead of "
        "reading it over SSH",
    )
    twin_args(p)
    p.add_argument("--keep", action="store_true", help="leave the twin up afterwards")
    p.add_argument("--json", action="store_true", help="print the rehearsal as JSON")
    p.set_defaults(func=cmd_rehearse)


def cmd_rehearse(args: argparse.Namespace) -> int:
    """`handover rehearse clean-move|rolling-upgrade ...`: 0 when the rehearsal passed, 1 when
    it did not."""
    from rich.console import Console

    from infra.cli.common import exit_on_sigterm, note, say
    from infra.run import configure_api

    load_site(args.site)  # a malformed site file is reported before anything starts
    exit_on_sigterm()  # a rehearsal stopped with SIGTERM takes its twin down (unless --keep)
    # before Prefect is imported: its settings are read once, at its import
    configure_api(Console(stderr=True, highlight=False))
    from infra.rehearse import (
        as_json,
        clean_move_rehearsal,
        publish,
        rehearse,
        upgrade_rehearsal,
    )

    if args.procedure == "clean-move":
        if not (args.from_host and args.to_host):
            error("rehearse clean-move needs --from and --to")
            return 2
        proc = clean_move_rehearsal(args.from_host, args.to_host, args.mode)
    else:
        hosts = [h.strip() for h in (args.hosts or "").split(",") if h.strip()]
        proc = upgrade_rehearsal(args.version, hosts or None)

    r = rehearse(
        Path(args.site),
        proc,
        snapshot_file=Path(args.snapshot) if args.snapshot else None,
        octet=args.octet,
        state_dir=Path(args.state_dir) if args.state_dir else None,
        keep=args.keep,
        progress=note,
    )
    record = publish(r)
    if args.json:
        print(as_json(r))
    else:
        print(r.markdown)
        say(record.sentence(), "green" if record.passed else "red")
    return 0 if record.passed else 1
