"""Sending one signed alert to the gateway, and what became of it."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, NamedTuple


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
