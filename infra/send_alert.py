"""`handover alert`: send one signed generic alert to a gateway (what a monitor's command does)."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import time
import urllib.error
import urllib.request
from typing import Any

from infra.gateway.alerts import sign


def alert_body(
    site: str,
    host: str,
    service: str,
    kind: str,
    *,
    summary: str = "",
    severity: str = "critical",
    source: str = "handover-cli",
    when: dt.datetime | None = None,
    geo_site: str = "",
    **extra: Any,
) -> bytes:
    """A generic alert body (the `/alerts/webhook` interface): about `host`, or about the geo
    site `geo_site` (a ``site_down``; `host` is then left out)."""
    about = {"geo_site": geo_site} if geo_site else {"host": host}
    body = {
        "site": site,
        **about,
        "service": service,
        "kind": kind,
        "severity": severity,
        "time": (when or dt.datetime.now(dt.UTC)).isoformat(),
        "summary": summary or f"{geo_site or host}: {kind.replace('_', ' ')}",
        "source": source,
        **extra,
    }
    return json.dumps(body, separators=(",", ":")).encode()


def post_alert(
    url: str, secret: bytes, body: bytes, *, timeout_s: float = 5.0, timestamp: int | None = None
) -> tuple[int, dict[str, Any]]:
    """POST a signed alert; returns the HTTP status and the gateway's JSON answer.

    Raises:
        OSError: the gateway did not answer, or its answer was cut off (it died while sending
            it): the alert counts as not answered, and may be sent again, to it or another.
    """
    ts = int(time.time()) if timestamp is None else timestamp
    req = urllib.request.Request(  # noqa: S310 - the operator's gateway URL
        url.rstrip("/") + "/alerts/webhook",
        data=body,
        headers={
            "Content-Type": "application/json",
            "X-Handover-Timestamp": str(ts),
            "X-Handover-Signature": sign(secret, ts, body),
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310
            try:
                return resp.status, json.loads(resp.read() or b"{}")
            except http.client.HTTPException as exc:  # IncompleteRead: the body was cut off
                raise ConnectionError(f"the gateway's answer was cut off: {exc!r}") from exc
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {"error": exc.reason}
