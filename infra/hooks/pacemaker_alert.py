#!/usr/bin/env python3
"""Pacemaker alert agent: cluster events become signed alerts for the handover gateway.

Pacemaker runs an alert agent once per event and recipient, in parallel, as user ``hacluster``
with a minimal environment, so this file uses the Python standard library only and must run on
the cluster nodes' system ``python3`` (kept compatible with 3.9, the oldest one in use).

The event arrives in ``CRM_alert_*`` variables; the configuration in the alert's instance
attributes (plain environment variables), with ``HANDOVER_HOOK_CONFIG`` (default
``/etc/handover/hooks.env``, ``KEY=VALUE`` lines) as a fallback for what the environment lacks:

- ``HANDOVER_GATEWAY_URL``: the gateway (``http://127.0.0.1:8787``); without it, a recipient
  value that is an http(s) URL;
- ``HANDOVER_SITE``, ``HANDOVER_SERVICE``: what the alert is about;
- ``HANDOVER_WEBHOOK_SECRET_FILE`` (readable by ``hacluster``) or ``HANDOVER_WEBHOOK_SECRET``;
- ``HANDOVER_SPOOL_DIR`` (default ``/var/spool/handover-alerts``, writable by ``hacluster``);
- ``HANDOVER_TIMEOUT_S`` (default 3; from the environment, not the file, as the watchdog starts
  before any file is read): the process always exits 0 within this plus 2 seconds;
- ``HANDOVER_HOST_MAP``: ``node=host,node2=host2``, cluster node names to the site's host names.

The alert is sent to ``POST <gateway>/alerts/webhook`` signed with ``X-Handover-Timestamp`` and
``X-Handover-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">``. When the gateway
cannot take it (no answer, 5xx, 408, 429) the unsigned body is spooled and sent, oldest first
and signed afresh, by the next alert or by ``--flush``; an alert the gateway refuses (any other
4xx) is logged and dropped. While older alerts wait in the spool a new one queues behind them,
so the gateway always sees a node's events in the order they happened.

Configuration in the CIB, for example::

    pcs alert create id=handover path=/opt/handover/infra/hooks/pacemaker_alert.py \\
        options HANDOVER_GATEWAY_URL=http://127.0.0.1:8787 HANDOVER_SITE=cern-fts \\
        HANDOVER_SERVICE=fts HANDOVER_WEBHOOK_SECRET_FILE=/etc/handover/webhook.secret
    pcs alert recipient add handover value=gateway

Modes: no argument (Pacemaker), ``--flush [--budget S]`` (a timer sends the spool),
``--dry-run`` (prints the alert it would send), ``--send-json`` (sends the JSON alert read on
standard input, as the Heartbeat script does).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

if not __package__:  # run as a script (Pacemaker) or imported from its directory: find the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from infra.hooks.crm import (
    classify,
    describe,
    encode,
)
from infra.hooks.delivery import (
    deliver,
)
from infra.hooks.settings import (
    FLUSH_BUDGET_S,
    MAX_BODY_BYTES,
    MIN_SEND_S,
    WATCHDOG_MARGIN_S,
    WORK_MARGIN_S,
    Config,
    Log,
    load_config,
    log,
    parse_timeout,
)
from infra.hooks.spool import (
    flush,
    pending,
    spool,
)

# --- one alert, start to end --------------------------------------------------------------------


def submit(body: bytes, cfg: Config, *, deadline: float, log: Log = log) -> str:
    """Send one alert now, or spool it: the agent's whole job for one event; never raises.

    Behind older spooled alerts the new one is spooled and the spool flushed, oldest first.

    Args:
        body: the alert's JSON body (unsigned).
        cfg: the configuration.
        deadline: when the work must be over (`time.monotonic`).
        log: where the outcome lines go.

    Returns:
        ``delivered``, ``refused``, ``spooled``, ``lost`` (neither sent nor spooled), or when
        it was spooled behind older alerts ``flushed`` (left the spool with them: sent, or
        refused and dropped) or ``queued`` (still in the spool).
    """
    what = describe(body)

    def keep(reason: str) -> str:
        try:
            path = spool(cfg.spool_dir, body, log=log)
        except OSError as exc:
            log(f"{reason}; cannot spool {what} in {cfg.spool_dir}: {exc}: alert lost")
            return "lost"
        log(f"{reason}; spooled {what} as {path.name}")
        return "spooled"

    if cfg.url is None or cfg.secret is None:
        return keep("not configured (" + "; ".join(cfg.problems) + ")")
    older = pending(cfg.spool_dir)
    if older:
        try:
            path = spool(cfg.spool_dir, body, log=log)
        except OSError as exc:
            log(f"cannot spool behind {len(older)} older alert(s) ({exc}): sending directly")
        else:
            log(f"{what} queued behind {len(older)} spooled alert(s)")
            flush(
                cfg.spool_dir,
                cfg.url,
                cfg.secret,
                timeout=cfg.timeout_s,
                deadline=deadline,
                log=log,
            )
            return "queued" if path.exists() else "flushed"
    remaining = deadline - time.monotonic()
    d = deliver(cfg.url, cfg.secret, body, timeout=max(MIN_SEND_S, min(cfg.timeout_s, remaining)))
    if d.outcome == "delivered":
        log(f"delivered {what} ({d.status})")
        if pending(cfg.spool_dir):
            flush(
                cfg.spool_dir,
                cfg.url,
                cfg.secret,
                timeout=cfg.timeout_s,
                deadline=deadline,
                log=log,
            )
        return "delivered"
    if d.outcome == "refused":
        log(f"gateway refused {what} ({d.status} {d.detail}): dropped")
        return "refused"
    return keep(f"gateway unavailable ({d.status or d.detail})")


def start_watchdog(seconds: float, log: Log = log) -> None:
    """Exit 0 after `seconds` whatever the process is doing (Pacemaker waits for its agents)."""

    def fire() -> None:
        time.sleep(seconds)
        log(f"deadline of {seconds:g} s reached: exiting")
        os._exit(0)

    threading.Thread(target=fire, name="handover-watchdog", daemon=True).start()


USAGE = """usage: pacemaker_alert.py [--flush [--budget SECONDS] | --dry-run | --send-json]

  (no argument)  the Pacemaker alert agent: the event in CRM_alert_* variables
  --flush        send the spooled alerts (a timer's job), for at most --budget seconds (60)
  --dry-run      print the alert the event would become; send nothing
  --send-json    send (or spool) the JSON alert read on standard input
"""


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """The command line; always returns 0 (Pacemaker only logs an agent's failure).

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).
        env: the environment (default: ``os.environ``).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    environ: Mapping[str, str] = os.environ if env is None else env
    if "-h" in args or "--help" in args:
        print(USAGE, end="")
        return 0
    mode = "agent"
    budget = FLUSH_BUDGET_S
    while args:
        arg = args.pop(0)
        if arg in ("--flush", "--dry-run", "--send-json"):
            mode = arg[2:]
        elif arg == "--budget" and args:
            try:
                budget = max(float(args.pop(0)), 1.0)
            except ValueError:
                log("--budget: not a number; using the default")
        else:
            log(f"unknown argument {arg!r} ignored")

    started = time.monotonic()
    # the watchdog starts before any file is read (a config or secret file on a hung mount, or
    # a FIFO, must not keep Pacemaker waiting): its bound comes from the environment only
    timeout_s = parse_timeout(environ.get("HANDOVER_TIMEOUT_S"))[0]
    work_s = budget if mode == "flush" else timeout_s + WORK_MARGIN_S
    if mode != "dry-run":
        start_watchdog(work_s + WATCHDOG_MARGIN_S - WORK_MARGIN_S)
    deadline = started + work_s
    cfg = load_config(environ)

    if mode == "flush":
        if cfg.url is None or cfg.secret is None:
            log("cannot flush: " + "; ".join(cfg.problems))
            return 0
        result = flush(cfg.spool_dir, cfg.url, cfg.secret, timeout=cfg.timeout_s, deadline=deadline)
        log(f"flush: {result.sent} sent, {result.dropped} dropped, {result.left} left")
        return 0

    if mode == "send-json":
        try:
            body = sys.stdin.buffer.read(MAX_BODY_BYTES + 1)
            data = json.loads(body)
        except (OSError, ValueError) as exc:
            log(f"--send-json: standard input is not JSON ({exc}): nothing sent")
            return 0
        if not isinstance(data, dict) or len(body) > MAX_BODY_BYTES:
            log("--send-json: standard input is not a JSON object (up to 1 MB): nothing sent")
            return 0
        submit(body, cfg, deadline=deadline)
        return 0

    if cfg.site is None or cfg.service is None:
        log("cannot build the alert: " + "; ".join(p for p in cfg.problems if "HANDOVER_S" in p))
        return 0
    alert, reason = classify(
        environ,
        site=cfg.site,
        service=cfg.service,
        host_map=cfg.host_map,
        frontend_resources=cfg.frontend_resources,
    )
    if alert is None:
        log(reason)
        return 0
    body = encode(alert)
    if mode == "dry-run":
        print(body.decode())
        for problem in cfg.problems:
            log(f"warning: {problem}")
        return 0
    submit(body, cfg, deadline=deadline)
    return 0


def run() -> None:
    """The script's entry point: `main`, and exit 0 whatever happened."""
    try:
        main()
    except BaseException as exc:  # noqa: BLE001 - an alert agent must never fail Pacemaker
        if not isinstance(exc, SystemExit):
            log(f"internal error: {type(exc).__name__}: {exc}")
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    os._exit(0)


if __name__ == "__main__":
    run()
