"""The alerts-and-events reference page: the kinds of alert, what each starts, and the Prefect
events handover emits and listens for, from the code (`config.site.alerts`,
`infra.gateway.alerts`, `flows.drift_watch`) and the deployments' triggers
(`deployments/prefect.yaml`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import yaml

from config.site.alerts import (
    ALERT_KIND_MEANING,
    DEFAULT_ALERT_PROCEDURES,
    DEFAULT_AM_KINDS,
    AlertKind,
)
from flows.drift_watch import EVENT as DRIFT_EVENT
from infra.gateway.alerts import ATTACHED_EVENT

DEPLOYMENTS = Path(__file__).resolve().parents[2] / "deployments" / "prefect.yaml"


def _triggers() -> dict[str, list[str]]:
    """Each event a deployment's trigger expects, and the deployments it starts."""
    spec: dict[str, Any] = yaml.safe_load(DEPLOYMENTS.read_text())
    starts: dict[str, list[str]] = {}
    for d in spec["deployments"]:
        for t in d.get("triggers") or []:
            for event in t.get("expect") or []:
                starts.setdefault(event, []).append(d["name"])
    return starts


def page() -> str:
    """The alerts and events reference, as markdown."""
    by_alertname: dict[str, list[str]] = {}
    for alertname, kind in DEFAULT_AM_KINDS.items():
        by_alertname.setdefault(kind, []).append(alertname)
    starts = _triggers()
    out = [
        "# Alerts and events",
        "",
        "Generated from the code by `python -m infra.docs`. An alert reaches the gateway "
        "(`handover gateway`) signed, from a monitor, Alertmanager's webhook, Pacemaker's alert "
        "agent or Heartbeat's script; the gateway checks it, opens (or joins) the host's "
        "incident and sends Prefect one event, whose deployment trigger starts the procedure.",
        "",
        "## Kinds of alert",
        "",
        "A site's `alerts.procedures` may change what a kind starts; these are the defaults.",
        "",
        "| kind | what it says | starts by default | Alertmanager alert names |",
        "|---|---|---|---|",
    ]
    for kind in get_args(AlertKind):
        proc = DEFAULT_ALERT_PROCEDURES.get(kind)
        names = ", ".join(f"`{n}`" for n in by_alertname.get(kind, [])) or "-"
        out.append(
            f"| `{kind}` | {ALERT_KIND_MEANING[kind]} | {f'`{proc}`' if proc else 'nothing'} "
            f"| {names} |"
        )
    out += [
        "",
        "## Events",
        "",
        "| event | sent when | starts (deployment triggers) |",
        "|---|---|---|",
    ]
    events = [
        (
            f"handover.alert.{kind}",
            f"an alert of kind `{kind}` opens "
            + ("a geo site's incident" if kind == "site_down" else "a host's incident"),
        )
        for kind in get_args(AlertKind)
        if kind in DEFAULT_ALERT_PROCEDURES
    ]
    events += [
        (
            ATTACHED_EVENT,
            "an alert joins a host's open incident, or is noted on it (a kind that starts "
            "nothing never opens one); kept in the event feed",
        ),
        (
            "handover.gateway.<kind>",
            "the gateway created the incident's runs itself (no trigger expects it)",
        ),
        (DRIFT_EVENT, "the drift watch finds a DNS server answering another address"),
    ]
    for event, when in events:
        started = ", ".join(f"`{d}`" for d in starts.get(event, [])) or "-"
        out.append(f"| `{event}` | {when} | {started} |")
    return "\n".join(out) + "\n"
