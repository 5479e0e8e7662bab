"""`handover hagd ...`: the HA group daemon and its control commands."""

from __future__ import annotations

import argparse
import json
from typing import Any

from infra.cli.common import error, say


def _control(args: argparse.Namespace) -> str:
    if args.control:
        return str(args.control)
    if args.config:
        from infra.hagd.config import load_config

        return str(load_config(args.config).control)
    return "/run/hagd.sock"


def cmd_hagd(args: argparse.Namespace) -> int:
    """Run the daemon, or ask a running one."""
    from infra.hagd.config import HagdConfigError, load_config

    if args.hagd_what == "run":
        from infra.hagd.daemon import run_daemon

        try:
            cfg = load_config(args.config)
        except HagdConfigError as exc:
            error(exc)
            return 2
        return run_daemon(cfg)
    from infra.hagd.daemon import ask

    try:
        answer: dict[str, Any] = ask(
            _control(args), args.hagd_what, getattr(args, "group", "") or ""
        )
    except (OSError, ValueError, HagdConfigError) as exc:
        error(f"no daemon answers on {_control(args)}: {exc}")
        return 1
    if getattr(args, "json", False):
        print(json.dumps(answer, indent=2))
    elif args.hagd_what == "status" and answer.get("ok"):
        say(f"hagd {answer['id']} on {answer['address']}")
        for name, g in answer["groups"].items():
            if g["mode"] == "pool":
                say(
                    f"  {name}: pool (rank {g['rank']}), "
                    + ("serving" if g["serving"] else "not serving")
                    + f" at {g['address']}; {g['name']} -> {', '.join(g['records']) or 'nothing'}"
                    f" (kept by {g['keeper'] or 'nobody yet'})"
                    + (f"; DNS: {g['error']}" if g["error"] else "")
                )
                for mid, m in g["members"].items():
                    state = "alive" if m["alive"] else "dead"
                    serves = "serving" if m["serving"] else "not serving"
                    refused = "" if m["address_allowed"] else " (not allowed: not published)"
                    say(
                        f"    {mid}: rank {m['rank']}, {serves} at {m['address']}{refused}, "
                        f"heard {m['heard_s_ago']:.1f} s ago ({state})"
                    )
                continue
            say(
                f"  {name}: {g['mode']} for {g['for_s']:.1f} s (rank {g['rank']}), master "
                f"{g['master'] or 'unknown'}"
            )
            for mid, m in g["members"].items():
                state = "alive" if m["alive"] else "dead"
                say(
                    f"    {mid}: rank {m['rank']}, {m['mode']}, heard {m['heard_s_ago']:.1f} s "
                    f"ago ({state})"
                )
    else:
        say(answer.get("said") or answer.get("error") or answer)
    return 0 if answer.get("ok") else 1


def register(sub: Any) -> None:
    """Add the commands of this module to the `handover` parser."""
    p = sub.add_parser("hagd", help="the HA group daemon")
    hs = p.add_subparsers(dest="hagd_what", required=True)
    r = hs.add_parser("run", help="run the daemon (until SIGTERM)")
    r.add_argument("--config", required=True, help="the daemon's configuration file")
    for what, helptext in (
        ("status", "groups, members, ranks, modes, last heard, the master"),
        ("takeover", "take a group over here (the master gives up within dT2)"),
        ("giveup", "give a group up here (the next rank takes over)"),
        ("reset", "stand again in a group after a failed start"),
    ):
        c = hs.add_parser(what, help=helptext)
        if what != "status":
            c.add_argument("group", help="the HA group, as the configuration names it")
        c.add_argument("--control", help="the daemon's control socket (default: its config's)")
        c.add_argument("--config", help="the daemon's configuration file (for its socket)")
        c.add_argument("--json", action="store_true", help="print the answer as JSON")
    p.set_defaults(func=cmd_hagd)
