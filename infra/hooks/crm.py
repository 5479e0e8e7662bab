"""Pacemaker's ``CRM_alert_*`` events to handover alerts (pure)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

PREFIX = "CRM_alert_"
#: the execution statuses of a resource operation (Pacemaker's PCMK_EXEC_*) that matter here
EXEC_DONE = 0
EXEC_CANCELLED = 1
#: resource operations whose failure means the service is not (or not surely) served there
FAILURE_TASKS = frozenset({"monitor", "start", "promote", "stop", "demote"})
#: resource operations whose success means it is served there again
RECOVERY_TASKS = frozenset({"monitor", "start", "promote"})
#: a monitor's OCF codes that only report a state (running, not running, promoted)
PROBE_STATES = frozenset({0, 7, 8})


def _int(env: Mapping[str, str], name: str) -> int | None:
    try:
        return int(env.get(PREFIX + name, "").strip())
    except ValueError:
        return None


def _event_time(env: Mapping[str, str], now: dt.datetime | None) -> str:
    epoch = _int(env, "timestamp_epoch")
    if epoch is not None:
        usec = _int(env, "timestamp_usec") or 0
        # dt.timezone.utc rather than dt.UTC: the system python3 of a cluster node may be 3.9
        try:
            when = dt.datetime.fromtimestamp(epoch, dt.timezone.utc)  # noqa: UP017
            return (when + dt.timedelta(microseconds=usec)).isoformat()
        except (OverflowError, OSError, ValueError):
            pass  # a time no clock can show: the alert is timed now rather than lost
    return (now or dt.datetime.now(dt.timezone.utc)).isoformat()  # noqa: UP017


#: the longest text of an alert's summary or of one Pacemaker variable (the gateway takes 2000)
MAX_TEXT = 1000


def _clip(text: str) -> str:
    """A long text cut to `MAX_TEXT` characters (a long description must not lose the alert)."""
    cut = " ... (truncated)"
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - len(cut)] + cut


def crm_variables(env: Mapping[str, str]) -> dict[str, str]:
    """The ``CRM_alert_*`` variables, keys lower-cased without the prefix."""
    return {k[len(PREFIX) :].lower(): v for k, v in env.items() if k.startswith(PREFIX)}


def classify(
    env: Mapping[str, str],
    *,
    site: str,
    service: str,
    host_map: Mapping[str, str] | None = None,
    now: dt.datetime | None = None,
    frontend_resources: frozenset[str] = frozenset({"fts-frontend"}),
) -> tuple[dict[str, Any] | None, str]:
    """The alert for a Pacemaker event, or None and why it is not worth sending.

    Args:
        env: the agent's environment (the ``CRM_alert_*`` variables).
        site: the site the cluster serves.
        service: the service the cluster runs.
        host_map: cluster node names to the site's host names (default: the same names).
        now: the alert's time when the event has no ``CRM_alert_timestamp_epoch``.
        frontend_resources: the resources that are the service's web front end (their
            failure is ``frontend_down``: the switch).

    Returns:
        ``(alert, "")`` or ``(None, reason)``.
    """
    kind = env.get(PREFIX + "kind", "")
    node = env.get(PREFIX + "node", "")
    desc = env.get(PREFIX + "desc", "")
    rsc = env.get(PREFIX + "rsc", "")
    task = env.get(PREFIX + "task", "")
    rc = _int(env, "rc")
    if kind == "attribute":
        return None, f"attribute event ({env.get(PREFIX + 'attribute_name', '?')}) ignored"
    if kind not in ("node", "fencing", "resource"):
        return None, f"unknown event kind {kind!r} ignored"
    if not node:
        return None, f"{kind} event without CRM_alert_node ignored"
    host = (host_map or {}).get(node, node)

    extra: dict[str, Any] = {}
    if kind == "node":
        if desc == "lost":
            alert_kind, severity, summary = "host_down", "critical", f"cluster node {node} lost"
        elif desc == "member":
            alert_kind, severity = "recovered", "info"
            summary = f"cluster node {node} is a cluster member again"
        else:
            return None, f"node {node} state {desc!r} ignored"
    elif kind == "fencing":
        alert_kind, severity = "host_down", "critical"
        if rc == 0:
            summary = f"node {node} fenced: {desc}"
        else:
            summary = f"fencing of {node} failed (rc {rc if rc is not None else '?'}): {desc}"
    else:
        status = _int(env, "status")
        target_rc = _int(env, "target_rc")
        interval = _int(env, "interval") or 0
        op = f"{task} ({interval} ms)" if interval else task
        if status == EXEC_CANCELLED or desc == "Cancelled":
            return None, f"{rsc} {op} on {node} cancelled: ignored"
        if not rsc:
            return None, f"resource event on {node} without CRM_alert_rsc ignored"
        done = status in (None, EXEC_DONE)
        succeeded = done and rc is not None and rc == target_rc
        if task == "monitor" and interval == 0 and done and rc in PROBE_STATES:
            # a probe reports where a resource runs; Pacemaker acts on it, it is not a failure
            return None, f"{rsc} probe on {node}: {desc} (rc {rc}) ignored"
        if not succeeded and task in FAILURE_TASKS:
            alert_kind = "frontend_down" if rsc in frontend_resources else "resource_failed"
            severity = "critical"
            expected = target_rc if target_rc is not None else "?"
            summary = f"{rsc} {op} on {node} failed: {desc} (rc {rc}, expected {expected})"
        elif succeeded and task in RECOVERY_TASKS:
            alert_kind, severity = "recovered", "info"
            summary = f"{rsc} {op} on {node} succeeded: {desc}"
        else:
            outcome = "succeeded" if succeeded else "failed"
            return None, f"{rsc} {op} on {node} {outcome} ({desc}): not an alert"
        extra["resource"] = rsc

    # the node's sequence starts again with Pacemaker: with the event's own time, a failure
    # after a restart is never taken for a repeat of an earlier one (a retry of the same
    # alert has both the same)
    stamp = env.get(PREFIX + "timestamp_epoch", "") + "." + env.get(PREFIX + "timestamp_usec", "")
    sequence = "@".join(x for x in (env.get(PREFIX + "node_sequence", ""), stamp) if x != ".")
    alert: dict[str, Any] = {
        "site": site,
        "host": host,
        "service": service,
        "kind": alert_kind,
        "severity": severity,
        "time": _event_time(env, now),
        "summary": _clip(summary),
        "source": "pacemaker",
        "dedup_key": f"pacemaker:{sequence}:{alert_kind}:{node}:{rsc}",
        "pacemaker": {k: _clip(v) for k, v in crm_variables(env).items()},
    }
    alert.update(extra)
    return alert, ""


def alert_from_crm(
    env: Mapping[str, str],
    *,
    site: str,
    service: str,
    host_map: Mapping[str, str] | None = None,
    now: dt.datetime | None = None,
) -> dict[str, Any] | None:
    """The generic alert for a Pacemaker event, or None when it is not worth sending.

    ==========================================  ===============  =========  ==================
    event                                       kind             severity   host
    ==========================================  ===============  =========  ==================
    node, desc ``lost``                         host_down        critical   the node
    node, desc ``member``                       recovered        info       the node
    fencing, rc 0 (fenced)                      host_down        critical   the fenced node
    fencing, rc not 0 (fencing failed)          host_down        critical   the target node
    resource monitor/start/promote/stop/demote  resource_failed  critical   the node (resource)
    failed (rc != target_rc or status != 0)     (frontend_down for a front-end resource)
    resource monitor/start/promote succeeded    recovered        info       the node (resource)
    probe results, cancellations, other tasks,  (nothing)
    attribute and unknown events
    ==========================================  ===============  =========  ==================

    Args:
        env: the agent's environment (the ``CRM_alert_*`` variables).
        site: the site the cluster serves.
        service: the service the cluster runs.
        host_map: cluster node names to the site's host names (default: the same names).
        now: the alert's time when the event has no ``CRM_alert_timestamp_epoch``.
    """
    return classify(env, site=site, service=service, host_map=host_map, now=now)[0]


def encode(alert: Mapping[str, Any]) -> bytes:
    """The body sent (and spooled) for an alert."""
    return json.dumps(alert, separators=(",", ":"), sort_keys=True).encode()


def describe(body: bytes) -> str:
    """``host_down fts101`` for a body, for log lines."""
    try:
        data = json.loads(body)
        return f"{data.get('kind', '?')} {data.get('host', '?')} ({data.get('dedup_key', '')})"
    except (ValueError, AttributeError):
        return "an unreadable alert"
