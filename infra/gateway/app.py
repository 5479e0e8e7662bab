"""The handover gateway (HTTP): Slack interactions in, decisions applied to paused runs.

``POST /slack/interactions`` verifies Slack's request signature with the signing secret
(slack_sdk's verifier: HMAC-SHA256 over ``v0:timestamp:body``, 5-minute window against replay),
parses the interaction, and hands it to the `Decider`; it answers Slack at once (Slack wants an
answer within 3 s) and tells a refused user why in an ephemeral reply on the interaction's
``response_url``. ``GET /healthz`` says whether it runs and for which site.

A request with a bad signature or a stale timestamp gets 401, a malformed one 400; neither reaches
Prefect. Secrets come from the site file's references and are never logged.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.parse
import urllib.request
from typing import Any

from fastapi import BackgroundTasks, FastAPI, Request
from fastapi.responses import JSONResponse
from slack_sdk.signature import SignatureVerifier
from starlette.concurrency import run_in_threadpool

from config.site import Site
from infra.gateway.decide import Decider

log = logging.getLogger("handover.gateway")
WINDOW_S = 300
MAX_BODY = 64 * 1024


def reply_ephemeral(response_url: str, text: str) -> None:
    """Tell the clicking user something only they see (best effort, bounded)."""
    if not response_url.startswith(("https://", "http://")):
        return
    body = json.dumps(
        {"response_type": "ephemeral", "replace_original": False, "text": text}
    ).encode()
    req = urllib.request.Request(  # noqa: S310 - http(s) only, checked above
        response_url, data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=3):  # noqa: S310 - a URL from a verified request
            pass
    except OSError as exc:
        log.warning("could not reply on the response URL: %s", exc)


def parse_interaction(body: bytes) -> dict[str, Any]:
    """The interaction payload of a Slack request body (``payload=<json>``).

    Raises:
        ValueError: the body is not a Slack interaction, with what is wrong.
    """
    form = urllib.parse.parse_qs(body.decode("utf-8", errors="strict"), strict_parsing=True)
    raw = form.get("payload")
    if not raw or len(raw) != 1:
        raise ValueError("no payload field")
    payload = json.loads(raw[0])
    if not isinstance(payload, dict):
        raise ValueError("payload is not an object")
    if payload.get("type") != "block_actions":
        raise ValueError(f"unsupported interaction type {payload.get('type')!r}")
    actions = payload.get("actions")
    user = payload.get("user")
    if not isinstance(actions, list) or len(actions) != 1 or not isinstance(actions[0], dict):
        raise ValueError("expected exactly one action")
    if not isinstance(user, dict) or not isinstance(user.get("id"), str):
        raise ValueError("no user id")
    return payload


def create_app(site: Site, signing_secret: str, decider: Decider) -> FastAPI:
    """The gateway's FastAPI application for one site."""
    app = FastAPI(title="handover gateway", docs_url=None, redoc_url=None)
    verifier = SignatureVerifier(signing_secret)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"ok": True, "site": site.site}

    @app.post("/slack/interactions")
    async def interactions(request: Request, background: BackgroundTasks) -> JSONResponse:
        body = await request.body()
        ts = request.headers.get("X-Slack-Request-Timestamp", "")
        sig = request.headers.get("X-Slack-Signature", "")
        peer = request.client.host if request.client else "?"

        def refuse(status: int, reason: str) -> JSONResponse:
            decider.record(source="Slack", peer=peer, result="refused", reason=reason)
            return JSONResponse({"ok": False, "error": reason}, status_code=status)

        if len(body) > MAX_BODY:
            return refuse(413, "body too large")
        try:
            age = abs(time.time() - int(ts))
        except ValueError:
            return refuse(401, "missing or malformed X-Slack-Request-Timestamp")
        if age > WINDOW_S:
            return refuse(401, f"stale request: timestamp {int(age)} s away (replay?)")
        if not verifier.is_valid(body=body, timestamp=ts, signature=sig):
            return refuse(401, "bad signature")
        try:
            payload = parse_interaction(body)
        except (ValueError, UnicodeDecodeError) as exc:
            return refuse(400, f"malformed interaction: {exc}")
        action = payload["actions"][0]
        user = payload["user"]
        decision = await run_in_threadpool(
            decider.decide,
            user_id=user["id"],
            user_name=str(user.get("username") or user.get("name") or ""),
            action_id=str(action.get("action_id", "")),
            value=str(action.get("value", "")),
            source="Slack",
        )
        if not decision.resumed and isinstance(payload.get("response_url"), str):
            background.add_task(reply_ephemeral, payload["response_url"], decision.message)
        return JSONResponse({"ok": decision.resumed, "result": decision.message})

    return app
