"""What a front end answers on ``GET /ready`` (standard library only: the lab's in-host command
uses it too)."""

from __future__ import annotations

import http.client
import json
from typing import Any


def ask_ready(address: str, port: int, timeout_s: float = 3.0) -> tuple[int, dict[str, Any]] | None:
    """``(HTTP status, JSON body)`` of ``GET /ready`` at `address`:`port`, or None when nothing
    answers within `timeout_s` (or the answer is not JSON)."""
    try:
        conn = http.client.HTTPConnection(address, port, timeout=timeout_s)
        try:
            conn.request("GET", "/ready")
            r = conn.getresponse()
            body = json.loads(r.read() or b"{}")
            return r.status, body if isinstance(body, dict) else {}
        finally:
            conn.close()
    except (OSError, ValueError, http.client.HTTPException):
        return None
