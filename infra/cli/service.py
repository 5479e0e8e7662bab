"""`handover service start|stop|status|monitor`: the FTS agents of one host, with OCF's codes."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.text import Text

from config.loader import load_site
from infra.cli.common import error, out, say, site_arg


def cmd_service(args: argparse.Namespace) -> int:
    """One action on one host's agents; the exit code is OCF's (`flows.plans.service_status`)."""
    from flows.plans.service_status import OCF_ERR_ARGS, AgentVerdict, overall
    from tasks.remote import SiteShell
    from tasks.service import service_start, service_status, service_stop

    site = load_site(args.site)
    if args.host not in {h.name for h in site.hosts}:
        error(
            f"{args.host}: not a host of {site.site}",
            "(hosts: " + ", ".join(h.name for h in site.hosts) + ")",
        )
        return OCF_ERR_ARGS
    agents = args.agent or [a.name for a in site.agents_configured_on(args.host)]
    if not agents:
        error(f"{args.host}: the site configures no agent there")
        return OCF_ERR_ARGS
    said = ""
    with SiteShell(site) as shell:
        verdicts: list[AgentVerdict]
        if args.action == "start":
            code, said, verdicts = service_start(shell, args.host, agents)
        elif args.action == "stop":
            code, said, verdicts = service_stop(shell, args.host, agents)
        else:
            verdicts = service_status(shell, args.host, agents, deep=args.action == "monitor")
            code = overall(verdicts)
    if args.json:
        answer: dict[str, Any] = {
            "host": args.host,
            "action": args.action,
            "code": code,
            "agents": [v.model_dump() for v in verdicts],
        }
        if said:
            answer["said"] = said
        print(json.dumps(answer, indent=2))
        return code
    if said:
        say(said)
    for v in verdicts:
        colour = "green" if v.code == 0 else "yellow" if v.code == 7 else "red"
        out.print(Text.assemble((v.word, colour), f" {v.agent} on {v.host}: {v.why}"))
    return code


def cmd_ocf(args: argparse.Namespace) -> int:
    """`handover ocf install`: put the resource agents where Pacemaker finds them."""
    from infra.ocf import PROVIDER, install

    try:
        placed = install(Path(args.ocf_root))
    except OSError as exc:
        error(f"cannot install the resource agents: {exc}", "(run as root)")
        return 1
    for where in placed:
        say(f"installed {where}: Pacemaker runs it as ocf:{PROVIDER}:{where.name}")
    return 0


def _runs(flag: str) -> bool:
    """``--runs auto``: when the process has a Prefect API to ask."""
    if flag != "auto":
        return flag == "on"
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def cmd_exporter(args: argparse.Namespace) -> int:
    """`handover exporter`: the sensors as Prometheus metrics, until interrupted."""
    import logging

    from infra.exporter import ExporterError, exporter_token, serve_exporter

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    site = load_site(args.site)
    try:
        token = exporter_token(args.address, Path(args.token_file) if args.token_file else None)
    except ExporterError as exc:
        error("handover exporter does not start:", exc)
        return 2
    try:
        serve_exporter(
            site,
            args.address,
            args.port,
            args.interval,
            args.timeout,
            runs=_runs(args.runs),
            token=token,
        )
    except OSError as exc:
        error(f"cannot serve on {args.address}:{args.port}: {exc}")
        return 1
    return 0


def cmd_rules(args: argparse.Namespace) -> int:
    """`handover rules`: the shipped Prometheus rules with the site's `for:` bounds."""
    from infra.rules import RulesError, rules_text

    site = load_site(args.site)
    try:
        text = rules_text(site)
    except RulesError as exc:
        error(str(exc))
        return 2
    if args.out:
        Path(args.out).write_text(text)
        say(f"wrote {args.out}: load it in Prometheus' rule_files (`promtool check rules` first)")
    else:
        sys.stdout.write(text)
    return 0


def register(sub: Any) -> None:
    """Add `handover service`, `handover ocf` and `handover exporter` to the parser."""
    p = sub.add_parser(
        "service",
        help="start, stop, status or monitor one host's FTS agents (OCF exit codes)",
        description="The agents' start/stop/status procedure over SSH. Exit codes are OCF's: 0 "
        "running (monitor: serving), 7 cleanly stopped, 1 failed or the host cannot be asked, "
        "5 not installed, 6 not configured there, 2 bad arguments.",
    )
    p.add_argument(
        "action", choices=["start", "stop", "status", "monitor"], help="what to do (OCF exit codes)"
    )
    p.add_argument("--host", required=True, help="the host whose agents these are")
    p.add_argument(
        "--agent", action="append", help="an agent (repeatable; default: every one of the host)"
    )
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    site_arg(p)
    p.set_defaults(func=cmd_service)
    p = sub.add_parser("ocf", help="the OCF resource agents for Pacemaker (install)")
    p.add_argument("ocf_action", choices=["install"], help="install the agents for Pacemaker")
    p.add_argument("--ocf-root", default="/usr/lib/ocf", help="OCF_ROOT (default /usr/lib/ocf)")
    p.set_defaults(func=cmd_ocf)
    p = sub.add_parser("exporter", help="the service's sensors as Prometheus metrics (/metrics)")
    p.add_argument(
        "--address",
        default="127.0.0.1",
        help="the address to listen on (default 127.0.0.1; any other needs --token-file)",
    )
    p.add_argument("--port", type=int, default=9480, help="the port /metrics listens on")
    p.add_argument(
        "--token-file",
        help="a file (mode 0600, the exporter's user's) holding the bearer token every request "
        "must carry: Prometheus' authorization.credentials_file holds the same",
    )
    p.add_argument("--interval", type=float, default=15.0, help="seconds between readings")
    p.add_argument("--timeout", type=float, default=20.0, help="bound of one reading")
    p.add_argument(
        "--runs",
        choices=["auto", "on", "off"],
        default="auto",
        help="publish the procedures' runs and approvals waiting from the Prefect API "
        "(auto: when PREFECT_API_URL is set)",
    )
    site_arg(p)
    p.set_defaults(func=cmd_exporter)
    p = sub.add_parser(
        "rules",
        help="the shipped Prometheus alert rules with the site's `for:` (alerts.rule_for_s)",
    )
    site_arg(p)
    p.add_argument("--out", help="write the rules to this file (default: standard output)")
    p.set_defaults(func=cmd_rules)
