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
- ``HANDOVER_TIMEOUT_S`` (default 3): the process always exits 0 within this plus 2 seconds;
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

import datetime as dt
import fcntl
import hashlib
import hmac
import http.client
import json
import os
import secrets
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

PREFIX = "CRM_alert_"
DEFAULT_SPOOL_DIR = "/var/spool/handover-alerts"
DEFAULT_CONFIG_FILE = "/etc/handover/hooks.env"
DEFAULT_TIMEOUT_S = 3.0
#: the watchdog's margin beyond the timeout; Pacemaker's own alert timeout is far above it
WATCHDOG_MARGIN_S = 1.5
#: the work (sends, lock waits) stops this long before the watchdog would fire
WORK_MARGIN_S = 1.0
#: a send with less time than this left is not started
MIN_SEND_S = 0.2
MAX_SPOOL_FILES = 1000
MAX_BODY_BYTES = 1_000_000
FLUSH_BUDGET_S = 60.0
#: the execution statuses of a resource operation (Pacemaker's PCMK_EXEC_*) that matter here
EXEC_DONE = 0
EXEC_CANCELLED = 1
#: resource operations whose failure means the service is not (or not surely) served there
FAILURE_TASKS = frozenset({"monitor", "start", "promote", "stop", "demote"})
#: resource operations whose success means it is served there again
RECOVERY_TASKS = frozenset({"monitor", "start", "promote"})
#: a monitor's OCF codes that only report a state (running, not running, promoted)
PROBE_STATES = frozenset({0, 7, 8})

Log = Callable[[str], None]


def log(message: str) -> None:
    """One line on standard error (Pacemaker records the agent's output)."""
    try:
        print(f"handover-alert: {message}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


# --- configuration ------------------------------------------------------------------------------


class Config(NamedTuple):
    """The hook's configuration; `problems` says what is missing or wrong, one line each."""

    url: str | None
    site: str | None
    service: str | None
    secret: bytes | None
    spool_dir: Path
    timeout_s: float
    host_map: dict[str, str]
    problems: tuple[str, ...]


def read_config_file(path: str) -> dict[str, str]:
    """``KEY=VALUE`` lines (``#`` comments, optional quotes, optional ``export``); {} if absent."""
    values: dict[str, str] = {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return values
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip()
        if key.startswith("export "):
            key = key[len("export ") :].strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


def parse_host_map(text: str) -> dict[str, str]:
    """``"node1=fts101, node2=fts102"`` as a dict; malformed items are skipped."""
    result: dict[str, str] = {}
    for item in text.split(","):
        node, sep, host = item.partition("=")
        if sep and node.strip() and host.strip():
            result[node.strip()] = host.strip()
    return result


def webhook_url(base: str) -> str:
    """The webhook's URL for a gateway's base URL (a full webhook URL is kept as it is)."""
    base = base.strip()
    if base.rstrip("/").endswith("/alerts/webhook"):
        return base.rstrip("/")
    return base.rstrip("/") + "/alerts/webhook"


def load_config(env: Mapping[str, str]) -> Config:
    """The configuration from `env`, completed by the config file; never raises."""
    problems: list[str] = []
    merged = dict(read_config_file(env.get("HANDOVER_HOOK_CONFIG", DEFAULT_CONFIG_FILE)))
    merged.update({k: v for k, v in env.items() if v != ""})

    base = merged.get("HANDOVER_GATEWAY_URL", "")
    recipient = merged.get(PREFIX + "recipient", "")
    if not base and recipient.startswith(("http://", "https://")):
        base = recipient
    if base and not base.startswith(("http://", "https://")):
        problems.append(f"HANDOVER_GATEWAY_URL {base!r} is not an http(s) URL")
        base = ""
    elif not base:
        problems.append("no gateway: set HANDOVER_GATEWAY_URL (or an http(s) recipient value)")

    secret: bytes | None = None
    secret_file = merged.get("HANDOVER_WEBHOOK_SECRET_FILE", "")
    if secret_file:
        try:
            secret = Path(secret_file).read_bytes().strip() or None
        except OSError as exc:
            problems.append(f"cannot read HANDOVER_WEBHOOK_SECRET_FILE {secret_file}: {exc}")
        else:
            if secret is None:
                problems.append(f"HANDOVER_WEBHOOK_SECRET_FILE {secret_file} is empty")
    elif merged.get("HANDOVER_WEBHOOK_SECRET"):
        secret = merged["HANDOVER_WEBHOOK_SECRET"].encode()
    else:
        problems.append("no secret: set HANDOVER_WEBHOOK_SECRET_FILE or HANDOVER_WEBHOOK_SECRET")

    timeout_s = DEFAULT_TIMEOUT_S
    if "HANDOVER_TIMEOUT_S" in merged:
        try:
            timeout_s = min(max(float(merged["HANDOVER_TIMEOUT_S"]), 0.2), 120.0)
        except ValueError:
            problems.append(f"HANDOVER_TIMEOUT_S {merged['HANDOVER_TIMEOUT_S']!r} is not a number")
    for key in ("HANDOVER_SITE", "HANDOVER_SERVICE"):
        if not merged.get(key):
            problems.append(f"{key} is not set")
    return Config(
        url=webhook_url(base) if base else None,
        site=merged.get("HANDOVER_SITE") or None,
        service=merged.get("HANDOVER_SERVICE") or None,
        secret=secret,
        spool_dir=Path(merged.get("HANDOVER_SPOOL_DIR") or DEFAULT_SPOOL_DIR),
        timeout_s=timeout_s,
        host_map=parse_host_map(merged.get("HANDOVER_HOST_MAP", "")),
        problems=tuple(problems),
    )


# --- Pacemaker events to alerts (pure) ----------------------------------------------------------


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
        when = dt.datetime.fromtimestamp(epoch, dt.timezone.utc)  # noqa: UP017
        return (when + dt.timedelta(microseconds=usec)).isoformat()
    return (now or dt.datetime.now(dt.timezone.utc)).isoformat()  # noqa: UP017


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
) -> tuple[dict[str, Any] | None, str]:
    """The alert for a Pacemaker event, or None and why it is not worth sending.

    Args:
        env: the agent's environment (the ``CRM_alert_*`` variables).
        site: the site the cluster serves.
        service: the service the cluster runs.
        host_map: cluster node names to the site's host names (default: the same names).
        now: the alert's time when the event has no ``CRM_alert_timestamp_epoch``.

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
            alert_kind, severity = "resource_failed", "critical"
            expected = target_rc if target_rc is not None else "?"
            summary = f"{rsc} {op} on {node} failed: {desc} (rc {rc}, expected {expected})"
        elif succeeded and task in RECOVERY_TASKS:
            alert_kind, severity = "recovered", "info"
            summary = f"{rsc} {op} on {node} succeeded: {desc}"
        else:
            outcome = "succeeded" if succeeded else "failed"
            return None, f"{rsc} {op} on {node} {outcome} ({desc}): not an alert"
        extra["resource"] = rsc

    sequence = env.get(PREFIX + "node_sequence", "") or (
        env.get(PREFIX + "timestamp_epoch", "") + "." + env.get(PREFIX + "timestamp_usec", "")
    )
    alert: dict[str, Any] = {
        "site": site,
        "host": host,
        "service": service,
        "kind": alert_kind,
        "severity": severity,
        "time": _event_time(env, now),
        "summary": summary,
        "source": "pacemaker",
        "dedup_key": f"pacemaker:{sequence}:{alert_kind}:{node}:{rsc}",
        "pacemaker": crm_variables(env),
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
    failed (rc != target_rc or status != 0)
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


# --- sending ------------------------------------------------------------------------------------


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``X-Handover-Signature`` value: ``sha256=<hex HMAC-SHA256 of "<ts>.<body>">``."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class Delivery(NamedTuple):
    """What became of one send: ``delivered``, ``refused`` (do not retry) or ``retry``."""

    outcome: str
    status: int | None
    detail: str


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # urllib would turn a redirected POST into a GET without the body
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


# no proxies from the environment: the gateway is on the site's own network
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def classify_status(status: int) -> str:
    """``delivered`` for 2xx; ``refused`` for a 4xx other than 408 and 429; else ``retry``."""
    if 200 <= status < 300:
        return "delivered"
    if 400 <= status < 500 and status not in (408, 429):
        return "refused"
    return "retry"


def deliver(
    url: str,
    secret: bytes,
    body: bytes,
    *,
    timeout: float,
    clock: Callable[[], float] = time.time,
) -> Delivery:
    """POST a body to the webhook, signed now, within `timeout` seconds overall; never raises.

    The request runs in a daemon thread so that a gateway that trickles its answer cannot hold
    the caller past `timeout` (the socket timeout alone bounds each read, not the whole).
    """
    if not url.startswith(("http://", "https://")):
        return Delivery("retry", None, f"not an http(s) URL: {url!r}")
    timestamp = int(clock())
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked just above
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "X-Handover-Timestamp": str(timestamp),
            "X-Handover-Signature": sign(secret, timestamp, body),
            "User-Agent": "handover-hook/1",
        },
    )
    result: list[Delivery] = []

    def post() -> None:
        try:
            with _OPENER.open(request, timeout=timeout) as response:
                answer = response.read(2000).decode("utf-8", "replace")
                status = int(response.status)
            result.append(Delivery(classify_status(status), status, answer.strip()))
        except urllib.error.HTTPError as exc:
            try:
                answer = exc.read(2000).decode("utf-8", "replace").strip()
            except (OSError, http.client.HTTPException):
                answer = ""
            result.append(Delivery(classify_status(exc.code), exc.code, answer or str(exc.reason)))
        except (OSError, http.client.HTTPException, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            result.append(Delivery("retry", None, f"{type(exc).__name__}: {reason}"))

    worker = threading.Thread(target=post, name="handover-post", daemon=True)
    worker.start()
    worker.join(timeout)
    if not result:
        return Delivery("retry", None, f"no answer within {timeout:g} s")
    return result[0]


# --- the spool ----------------------------------------------------------------------------------


def pending(spool_dir: Path) -> list[Path]:
    """The spooled alerts, oldest first ([] when the directory cannot be read)."""
    try:
        return sorted(p for p in spool_dir.iterdir() if p.suffix == ".json" and p.name[0] != ".")
    except OSError:
        return []


def spool(
    spool_dir: Path,
    body: bytes,
    *,
    max_files: int = MAX_SPOOL_FILES,
    log: Log = log,
) -> Path:
    """Write an (unsigned) body to the spool atomically, mode 0600; drop the oldest beyond
    `max_files`.

    Returns:
        The spooled file; its name sorts by the time it was spooled.

    Raises:
        OSError: the spool directory cannot be created or written.
    """
    spool_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    name = f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}.json"
    tmp = spool_dir / f".tmp-{name}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        final = spool_dir / name
        os.rename(tmp, final)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    files = pending(spool_dir)
    for old in files[: max(0, len(files) - max_files)]:
        try:
            old.unlink()
            log(f"spool full ({len(files)} > {max_files}): dropped the oldest alert {old.name}")
        except OSError:
            pass
    return final


def _lock(spool_dir: Path, deadline: float) -> int | None:
    """The spool's flush lock (one sender at a time keeps the order), waited for until
    `deadline` (monotonic); None when it cannot be had."""
    try:
        fd = os.open(spool_dir / ".flush.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return None
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() + 0.05 >= deadline:
                os.close(fd)
                return None
            time.sleep(0.05)
        except OSError:
            os.close(fd)
            return None


def _clean_tmp(spool_dir: Path, older_than_s: float = 3600.0) -> None:
    """Temporary files left by a process killed while spooling."""
    try:
        for p in spool_dir.glob(".tmp-*"):
            if time.time() - p.stat().st_mtime > older_than_s:
                p.unlink()
    except OSError:
        pass


class FlushResult(NamedTuple):
    """What a flush did: alerts sent, alerts dropped (refused or unreadable), alerts left."""

    sent: int
    dropped: int
    left: int


def flush(
    spool_dir: Path,
    url: str,
    secret: bytes,
    *,
    timeout: float,
    deadline: float,
    log: Log = log,
) -> FlushResult:
    """Send the spooled alerts oldest first, each signed at send time; stop at the first one the
    gateway cannot take now (the order is kept) or when `deadline` (monotonic) is near.

    Delivered and refused alerts leave the spool. Alerts spooled meanwhile by parallel agents
    are sent in the same pass. Never raises.
    """
    sent = dropped = 0
    fd = _lock(spool_dir, deadline - MIN_SEND_S)
    if fd is None:
        left = len(pending(spool_dir))
        if left:
            log(f"{left} spooled alert(s) wait: the spool lock is held or cannot be taken")
        return FlushResult(0, 0, left)
    skipped: set[Path] = set()
    try:
        _clean_tmp(spool_dir)
        while True:
            files = [p for p in pending(spool_dir) if p not in skipped]
            if not files:
                break
            for path in files:
                remaining = deadline - time.monotonic()
                if remaining < MIN_SEND_S:
                    left = len(pending(spool_dir))
                    log(f"out of time: {left} alert(s) stay spooled")
                    return FlushResult(sent, dropped, left)
                try:
                    body = path.read_bytes()
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    skipped.add(path)
                    log(f"cannot read spooled file {path.name} ({exc}): left in the spool")
                    continue
                try:
                    json_ok = isinstance(json.loads(body), dict)
                except ValueError:
                    json_ok = False
                if not json_ok:
                    _unlink(path)
                    dropped += 1
                    log(f"dropped spooled file {path.name}: not a JSON alert")
                    continue
                d = deliver(url, secret, body, timeout=min(timeout, remaining))
                if d.outcome == "delivered":
                    _unlink(path)
                    sent += 1
                    log(f"delivered spooled {describe(body)} ({d.status})")
                elif d.outcome == "refused":
                    _unlink(path)
                    dropped += 1
                    log(
                        f"gateway refused spooled {describe(body)} ({d.status} {d.detail}): dropped"
                    )
                else:
                    left = len(pending(spool_dir))
                    log(f"gateway unavailable ({d.status or d.detail}): {left} alert(s) spooled")
                    return FlushResult(sent, dropped, left)
    finally:
        os.close(fd)
    return FlushResult(sent, dropped, len(skipped))


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


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
    cfg = load_config(environ)
    work_s = budget if mode == "flush" else cfg.timeout_s + WORK_MARGIN_S
    if mode != "dry-run":
        start_watchdog(work_s + WATCHDOG_MARGIN_S - WORK_MARGIN_S)
    deadline = started + work_s

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
    alert, reason = classify(environ, site=cfg.site, service=cfg.service, host_map=cfg.host_map)
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
