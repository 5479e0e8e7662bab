"""The hooks' settings: constants, the log line, and the configuration read from the environment and
``/etc/handover/hooks.env`` (standard library only, like every hook module)."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

from infra.hooks.crm import PREFIX

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

Log = Callable[[str], None]


def log(message: str) -> None:
    """One line on standard error (Pacemaker records the agent's output)."""
    try:
        print(f"handover-alert: {message}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


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
    #: Pacemaker resources that are the service's web front end: their failure is a
    #: ``frontend_down`` alert (the switch), not a ``resource_failed`` one
    frontend_resources: frozenset[str] = frozenset({"fts-frontend"})


def read_config_file(path: str) -> dict[str, str]:
    """``KEY=VALUE`` lines (``#`` comments, optional quotes, optional ``export``); {} if absent."""
    values: dict[str, str] = {}
    try:
        if not Path(path).is_file():  # a FIFO or a device would block the read
            return values
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


def parse_timeout(text: str | None) -> tuple[float, str]:
    """``HANDOVER_TIMEOUT_S`` as seconds within 0.2-120 (the default when absent or not a finite
    number), and what was wrong with it."""
    if text is None or text == "":
        return DEFAULT_TIMEOUT_S, ""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        return DEFAULT_TIMEOUT_S, f"HANDOVER_TIMEOUT_S {text!r} is not a number of seconds"
    return min(max(value, 0.2), 120.0), ""


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

    timeout_s, problem = parse_timeout(merged.get("HANDOVER_TIMEOUT_S"))
    if problem:
        problems.append(problem)
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
        frontend_resources=frozenset(
            r.strip()
            for r in merged.get("HANDOVER_FRONTEND_RESOURCES", "fts-frontend").split(",")
            if r.strip()
        ),
    )
