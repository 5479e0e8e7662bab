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
``response_url``. ``GET /healthz`` says whether it runs and for which sites.

One gateway may serve several sites (`create_sites_app`): each request goes to the site it names
and is checked with that site's credentials only (`infra.gateway.sites`).

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
from starlette.concurrency import run_in_threadpool

from config.site import Site
from infra.gateway.alerts import Alert
from infra.gateway.decide import Decider
from infra.gateway.intake import AlertIntake, PrefectUnavailable
from infra.gateway.sites import MAX_BODY, WINDOW_S, AlertSecrets, Refused, SiteGateway, Sites
from tasks.adapters.slack import reply_ephemeral

log = logging.getLogger("handover.gateway")
__all__ = [
    "MAX_BODY",
    "WINDOW_S",
    "AlertSecrets",
    "create_app",
    "create_sites_app",
    "gateway_metrics",
    "parse_interaction",
]


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


def create_app(
    site: Site,
    signing_secret: str | None,
    decider: Decider,
    intake: AlertIntake | None = None,
    alert_secrets: AlertSecrets | None = None,
) -> FastAPI:
    """The gateway's FastAPI application for one site (`create_sites_app` for several).

    Args:
        site: the site.
        signing_secret: Slack's signing secret (None: no Slack interactions endpoint).
        decider: applies approval decisions; also writes the audit log.
        intake: alert intake (None: no alert endpoints).
        alert_secrets: the webhook secret and Alertmanager's credentials.
    """
    return create_sites_app(
        Sites([SiteGateway(site, signing_secret, decider, intake, alert_secrets)])
    )


def create_sites_app(sites: Sites) -> FastAPI:
    """The gateway's FastAPI application for its sites: each request is routed to its site and
    checked with that site's credentials (`infra.gateway.sites`)."""
    state: dict[str, Any] = {}
    intakes = [g.intake for g in sites.gateways if g.intake is not None]
    alert_sites = sites.alert_sites

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if not intakes:
            yield
            return
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            state["client"] = client
            # bounded: a Prefect API that is down must not hold the gateway's start
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(i.starter.warm(client) for i in intakes if i.starter)), 5
                )
            tasks = [
                asyncio.create_task(job)
                for i in intakes
                for job in (i.run_forever(get_client), i.send_events_forever(client))
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
                    await asyncio.wait_for(
                        asyncio.gather(*(i.drain_events(client) for i in intakes)), 5
                    )

    app = FastAPI(title="handover gateway", docs_url=None, redoc_url=None, lifespan=lifespan)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {
            "ok": True,
            "site": sites.first.site.site,
            "sites": [
                {"site": g.site.site, "service": g.site.service.name} for g in sites.gateways
            ],
        }

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        """The gateway's own counters for Prometheus (`gateway_metrics`)."""
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(gateway_metrics(sites), media_type=CONTENT_TYPE_LATEST)

    def refused(exc: Refused, source: str, peer: str) -> JSONResponse:
        exc.by.decider.record(
            source=source, peer=peer, result="refused", status=exc.status, reason=exc.reason
        )
        return JSONResponse({"ok": False, "error": exc.reason}, status_code=exc.status)

    async def accept_all(
        alerts: list[tuple[SiteGateway, Alert]], source: str, peer: str
    ) -> JSONResponse:
        results = []
        for gw, alert in alerts:
            assert gw.intake is not None
            try:
                results.append(await gw.intake.accept(alert, state["client"]))
            except PrefectUnavailable as exc:
                return refused(Refused(503, str(exc), gw), source, peer)
        return JSONResponse({"ok": True, "alerts": results}, status_code=202)

    if alert_sites:
        max_alert_body = max(g.max_body for g in alert_sites)

        @app.post("/alerts/webhook")
        async def alert_webhook(request: Request) -> JSONResponse:
            peer = request.client.host if request.client else "?"
            body = await _bounded_body(request, max_alert_body)
            try:
                if body is None:
                    raise Refused(413, f"body over {max_alert_body} bytes", alert_sites[0])
                gw, alert = sites.webhook(
                    request.headers.get("X-Handover-Timestamp", ""),
                    request.headers.get("X-Handover-Signature", ""),
                    body,
                    now=time.time(),
                )
            except Refused as exc:
                return refused(exc, "webhook", peer)
            return await accept_all([(gw, alert)], alert.source, peer)

        @app.post("/alerts/alertmanager")
        async def alert_alertmanager(request: Request) -> JSONResponse:
            peer = request.client.host if request.client else "?"
            if not any(g.site.alerts and g.site.alerts.alertmanager for g in alert_sites):
                nowhere = Refused(404, "no alerts.alertmanager in the site file", sites.first)
                return refused(nowhere, "alertmanager", peer)
            body = await _bounded_body(request, max_alert_body)
            try:
                if body is None:
                    raise Refused(413, f"body over {max_alert_body} bytes", alert_sites[0])
                alerts, problems = sites.alertmanager(
                    request.headers.get("Authorization", ""), body
                )
            except Refused as exc:
                return refused(exc, "alertmanager", peer)
            for gw, p in problems:
                gw.decider.record(source="alertmanager", peer=peer, result="refused", reason=p)
            if not alerts:
                reason = "; ".join(p for _, p in problems)
                return refused(Refused(422, reason, problems[0][0]), "alertmanager", peer)
            resp = await accept_all(alerts, "alertmanager", peer)
            if problems and resp.status_code == 202:
                data = json.loads(bytes(resp.body))
                data["refused"] = [p for _, p in problems]
                return JSONResponse(data, status_code=202)
            return resp

    slack_body = max(g.max_body for g in sites.gateways)
    has_slack = any(g.signing_secret is not None for g in sites.gateways)

    @app.post("/slack/interactions", include_in_schema=has_slack)
    async def interactions(request: Request, background: BackgroundTasks) -> JSONResponse:
        peer = request.client.host if request.client else "?"

        def refuse(exc: Refused) -> JSONResponse:
            exc.by.decider.record(source="Slack", peer=peer, result="refused", reason=exc.reason)
            return JSONResponse({"ok": False, "error": exc.reason}, status_code=exc.status)

        if not has_slack:
            return refuse(Refused(404, "this gateway has no Slack signing secret", sites.first))
        # read no more than the limit: a huge body is refused without being read in full
        body = await _bounded_body(request, slack_body)
        if body is None:
            return refuse(Refused(413, f"body over {slack_body} bytes", sites.first))
        try:
            signed = sites.slack(
                request.headers.get("X-Slack-Request-Timestamp", ""),
                request.headers.get("X-Slack-Signature", ""),
                body,
                now=time.time(),
            )
        except Refused as exc:
            return refuse(exc)
        try:
            payload = parse_interaction(body)
        except (ValueError, UnicodeDecodeError) as exc:
            return refuse(Refused(400, f"malformed interaction: {exc}", signed[0]))
        action = payload["actions"][0]
        user = payload["user"]
        for gw in signed:
            try:
                decision = await run_in_threadpool(
                    gw.decider.decide,
                    user_id=user["id"],
                    user_name=str(user.get("username") or user.get("name") or ""),
                    action_id=str(action.get("action_id", "")),
                    value=str(action.get("value", "")),
                    source="Slack",
                )
            except Exception as exc:  # noqa: BLE001 - the Prefect API failed: say so, resume nothing
                log.warning("could not decide on a click: %s", exc)
                return refuse(
                    Refused(
                        503,
                        "the Prefect API did not answer; nothing was resumed; click again",
                        gw,
                    )
                )
            # one Slack app for several sites: the run's own site decides
            if decision.reason != "other-site":
                break
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


def gateway_metrics(sites: Sites) -> bytes:
    """``handover_gateway_requests_total`` (every alert and interaction the gateway answered,
    by site, source, result and HTTP status: new, attached, noted, stale, refused, resumed, ...)
    and ``handover_gateway_incidents_open``, ``handover_gateway_events_queued`` and
    ``handover_gateway_events_dropped_total`` (attached alerts' audit events waiting for, or
    lost to, a Prefect API that does not take them), per site, in Prometheus' text format."""
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
            for g in sites.gateways:
                for (source, result, status), n in sorted(g.decider.counts.items()):
                    requests.add_metric([g.site.site, source, result, status], float(n))
            yield requests
            with_intake = [(g.site.site, g.intake) for g in sites.gateways if g.intake]
            if not with_intake:
                return
            open_ = GaugeMetricFamily(
                "handover_gateway_incidents_open",
                "Incidents open (an alert started a run that has not finished)",
                labels=["site"],
            )
            queued = GaugeMetricFamily(
                "handover_gateway_events_queued",
                "Audit events of attached alerts not yet taken by Prefect",
                labels=["site"],
            )
            dropped = CounterMetricFamily(
                "handover_gateway_events_dropped",
                "Audit events dropped because Prefect did not take them for too long",
                labels=["site"],
            )
            for name, intake in with_intake:
                open_.add_metric([name], float(len(intake.incidents.open_incidents())))
                queued.add_metric([name], float(intake.events_queued))
                dropped.add_metric([name], float(intake.events_dropped))
            yield from (open_, queued, dropped)

    registry = CollectorRegistry()
    registry.register(_Gateway())
    data: bytes = generate_latest(registry)
    return data
