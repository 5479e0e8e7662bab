"""The handover gateway (HTTP): Slack interactions and alerts in.

Alerts: ``POST /alerts/webhook`` (the generic signed alert, `infra.gateway.alerts`) and
``POST /alerts/alertmanager`` (Alertmanager's webhook with a bearer token or basic auth) become
Prefect events through the incident book (`infra.gateway.incidents`): one run per host and
procedure, later reports attached to it. Refused alerts get a precise 4xx and an audit line and
never reach Prefect; when Prefect cannot take an event the answer is 503 (the sender retries).

Slack interactions:

``POST /slack/interactions`` verifies Slack's request signature with the signing secret
(slack_sdk's verifier: HMAC-SHA256 over ``v0:timestamp:body``, 5-minute window against replay),
parses the interaction, and hands it to the `Decider`; it answers Slack at once (Slack wants an
answer within 3 s) and tells a refused user why in an ephemeral reply on the interaction's
``response_url``. ``GET /healthz`` says whether it runs and for which site.

A request with a bad signature or a stale timestamp gets 401, a malformed one 400; neither reaches
Prefect. Secrets come from the site file's references and are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

from fastapi import BackgroundTasks, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from slack_sdk.signature import SignatureVerifier
from starlette.concurrency import run_in_threadpool

from config.site import Site
from infra.gateway.alerts import (
    Alert,
    AlertRefused,
    check_basic_or_bearer,
    parse_alertmanager,
    parse_generic,
    verify_signature,
)
from infra.gateway.decide import Decider
from infra.gateway.intake import AlertIntake, PrefectUnavailable
from tasks.adapters.slack import reply_ephemeral

log = logging.getLogger("handover.gateway")
#: Slack requests: the replay window and the largest body, unless the site's `alerts` section
#: sets them (`signature_window_s`, `max_body_bytes`)
WINDOW_S = 300.0
MAX_BODY = 64 * 1024


def parse_interaction(body: bytes) -> dict[str, Any]:
    """The interaction payload of a Slack request body (``payload=<json>``).

    Raises:
        ValueError: the body is not a Slack interaction, with what is wrong.
    """
    form = urllib.parse.parse_qs(body.decode("utf-8", errors="strict"), strict_parsing=True)
    raw = form.get("payload")
    if not raw or len(raw) != 1:
        raise ValueError("no payload field")
    try:
        payload = json.loads(raw[0])
    except RecursionError:
        raise ValueError("the payload is nested too deep") from None
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


class AlertSecrets:
    """The resolved credentials of the alert endpoints (never logged)."""

    def __init__(
        self, webhook: bytes, am_token: str | None = None, am_password: str | None = None
    ) -> None:
        self.webhook = webhook
        self.am_token = am_token
        self.am_password = am_password


def create_app(
    site: Site,
    signing_secret: str | None,
    decider: Decider,
    intake: AlertIntake | None = None,
    alert_secrets: AlertSecrets | None = None,
) -> FastAPI:
    """The gateway's FastAPI application for one site.

    Args:
        site: the site.
        signing_secret: Slack's signing secret (None: no Slack interactions endpoint).
        decider: applies approval decisions; also writes the audit log.
        intake: alert intake (None: no alert endpoints).
        alert_secrets: the webhook secret and Alertmanager's credentials.
    """
    state: dict[str, Any] = {}
    window_s = site.alerts.signature_window_s if site.alerts else WINDOW_S
    max_body = site.alerts.max_body_bytes if site.alerts else MAX_BODY

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if intake is None:
            yield
            return
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            state["client"] = client
            if intake.starter is not None:
                # bounded: a Prefect API that is down must not hold the gateway's start
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(intake.starter.warm(client), 5)
            tasks = [
                asyncio.create_task(intake.run_forever(get_client)),
                asyncio.create_task(intake.send_events_forever(client)),
            ]
            try:
                yield
            finally:
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                # what is still queued goes now (bounded: a Prefect API that is down must not
                # hold the gateway's stop)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(intake.drain_events(client), 5)

    app = FastAPI(title="handover gateway", docs_url=None, redoc_url=None, lifespan=lifespan)
    verifier = SignatureVerifier(signing_secret or "unused: no Slack signing secret")

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"ok": True, "site": site.site}

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        """The gateway's own counters for Prometheus (`gateway_metrics`)."""
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(gateway_metrics(site, decider, intake), media_type=CONTENT_TYPE_LATEST)

    def refused(status: int, reason: str, source: str, peer: str) -> JSONResponse:
        decider.record(source=source, peer=peer, result="refused", status=status, reason=reason)
        return JSONResponse({"ok": False, "error": reason}, status_code=status)

    async def accept_all(alerts: list[Alert], source: str, peer: str) -> JSONResponse:
        assert intake is not None
        results = []
        for alert in alerts:
            try:
                results.append(await intake.accept(alert, state["client"]))
            except PrefectUnavailable as exc:
                return refused(503, str(exc), source, peer)
        return JSONResponse({"ok": True, "alerts": results}, status_code=202)

    if intake is not None and alert_secrets is not None:
        assert site.alerts is not None
        cfg = site.alerts

        @app.post("/alerts/webhook")
        async def alert_webhook(request: Request) -> JSONResponse:
            peer = request.client.host if request.client else "?"
            body = await _bounded_body(request, cfg.max_body_bytes)
            if body is None:
                return refused(413, f"body over {cfg.max_body_bytes} bytes", "webhook", peer)
            try:
                verify_signature(
                    alert_secrets.webhook,
                    request.headers.get("X-Handover-Timestamp", ""),
                    request.headers.get("X-Handover-Signature", ""),
                    body,
                    window_s=cfg.signature_window_s,
                    now=time.time(),
                )
                alert = parse_generic(site, body)
            except AlertRefused as exc:
                return refused(exc.status, exc.reason, "webhook", peer)
            return await accept_all([alert], alert.source, peer)

        @app.post("/alerts/alertmanager")
        async def alert_alertmanager(request: Request) -> JSONResponse:
            peer = request.client.host if request.client else "?"
            if cfg.alertmanager is None:
                return refused(404, "no alerts.alertmanager in the site file", "alertmanager", peer)
            body = await _bounded_body(request, cfg.max_body_bytes)
            if body is None:
                return refused(413, f"body over {cfg.max_body_bytes} bytes", "alertmanager", peer)
            try:
                check_basic_or_bearer(
                    cfg.alertmanager,
                    request.headers.get("Authorization", ""),
                    alert_secrets.am_token,
                    alert_secrets.am_password,
                )
                alerts, problems = parse_alertmanager(site, cfg.alertmanager, body)
            except AlertRefused as exc:
                return refused(exc.status, exc.reason, "alertmanager", peer)
            for p in problems:
                decider.record(source="alertmanager", peer=peer, result="refused", reason=p)
            if not alerts:
                return refused(422, "; ".join(problems), "alertmanager", peer)
            resp = await accept_all(alerts, "alertmanager", peer)
            if problems and resp.status_code == 202:
                data = json.loads(bytes(resp.body))
                data["refused"] = problems
                return JSONResponse(data, status_code=202)
            return resp

    @app.post("/slack/interactions", include_in_schema=signing_secret is not None)
    async def interactions(request: Request, background: BackgroundTasks) -> JSONResponse:
        ts = request.headers.get("X-Slack-Request-Timestamp", "")
        sig = request.headers.get("X-Slack-Signature", "")
        peer = request.client.host if request.client else "?"

        def refuse(status: int, reason: str) -> JSONResponse:
            decider.record(source="Slack", peer=peer, result="refused", reason=reason)
            return JSONResponse({"ok": False, "error": reason}, status_code=status)

        if signing_secret is None:
            return refuse(404, "this gateway has no Slack signing secret")
        # read no more than the limit: a huge body is refused without being read in full
        body = await _bounded_body(request, max_body)
        if body is None:
            return refuse(413, f"body over {max_body} bytes")
        try:
            age = abs(time.time() - int(ts))
        except ValueError:
            return refuse(401, "missing or malformed X-Slack-Request-Timestamp")
        if age > window_s:
            return refuse(401, f"stale request: timestamp {int(age)} s away (replay?)")
        if not verifier.is_valid(body=body, timestamp=ts, signature=sig):
            return refuse(401, "bad signature")
        try:
            payload = parse_interaction(body)
        except (ValueError, UnicodeDecodeError) as exc:
            return refuse(400, f"malformed interaction: {exc}")
        action = payload["actions"][0]
        user = payload["user"]
        try:
            decision = await run_in_threadpool(
                decider.decide,
                user_id=user["id"],
                user_name=str(user.get("username") or user.get("name") or ""),
                action_id=str(action.get("action_id", "")),
                value=str(action.get("value", "")),
                source="Slack",
            )
        except Exception as exc:  # noqa: BLE001 - the Prefect API failed: say so, resume nothing
            log.warning("could not decide on a click: %s", exc)
            return refuse(503, "the Prefect API did not answer; nothing was resumed; click again")
        if not decision.resumed and isinstance(payload.get("response_url"), str):
            background.add_task(reply_ephemeral, payload["response_url"], decision.message)
        return JSONResponse({"ok": decision.resumed, "result": decision.message})

    return app


async def _bounded_body(request: Request, limit: int) -> bytes | None:
    """The body, or None as soon as it grows over `limit` (never read a huge body whole)."""
    declared = request.headers.get("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def gateway_metrics(site: Site, decider: Decider, intake: AlertIntake | None) -> bytes:
    """``handover_gateway_requests_total`` (every alert and interaction the gateway answered,
    by source, result and HTTP status: new, attached, noted, stale, refused, resumed, ...) and
    ``handover_gateway_incidents_open``, ``handover_gateway_events_queued`` and
    ``handover_gateway_events_dropped_total`` (attached alerts' audit events waiting for, or
    lost to, a Prefect API that does not take them), in Prometheus' text format."""
    from prometheus_client import generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.registry import Collector, CollectorRegistry

    class _Gateway(Collector):
        def collect(self) -> Any:
            requests = CounterMetricFamily(
                "handover_gateway_requests",
                "Alerts and interactions the gateway answered, by source, result and status",
                labels=["site", "source", "result", "status"],
            )
            for (source, result, status), n in sorted(decider.counts.items()):
                requests.add_metric([site.site, source, result, status], float(n))
            yield requests
            if intake is not None:
                open_ = GaugeMetricFamily(
                    "handover_gateway_incidents_open",
                    "Incidents open (an alert started a run that has not finished)",
                    labels=["site"],
                )
                open_.add_metric([site.site], float(len(intake.incidents.open_incidents())))
                yield open_
                queued = GaugeMetricFamily(
                    "handover_gateway_events_queued",
                    "Audit events of attached alerts not yet taken by Prefect",
                    labels=["site"],
                )
                queued.add_metric([site.site], float(intake.events_queued))
                yield queued
                dropped = CounterMetricFamily(
                    "handover_gateway_events_dropped",
                    "Audit events dropped because Prefect did not take them for too long",
                    labels=["site"],
                )
                dropped.add_metric([site.site], float(intake.events_dropped))
                yield dropped

    registry = CollectorRegistry()
    registry.register(_Gateway())
    data: bytes = generate_latest(registry)
    return data
