"""Alerts in: the generic signed webhook and Alertmanager's webhook, checked and normalised (pure).

Every source ends as the same `Alert`: site, host (or, for a ``site_down``, the geo site), service,
kind, severity, time, summary, and whatever else the sender put in (kept). An alert becomes one
Prefect event whose resource names the site, the host or geo site and the service
(`event_resource`); automations declared with the deployments match on those labels.

The generic webhook's signature (a stable interface; the Pacemaker and Heartbeat hooks speak it):
``X-Handover-Timestamp: <Unix seconds>`` and ``X-Handover-Signature: sha256=<hex>``, the hex
HMAC-SHA256 of ``"<timestamp>.<raw body>"`` with the site's webhook secret; requests more than
the signature window (5 minutes) away from the gateway's clock are refused as replays.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from config.site import AlertKind, AlertmanagerIntake, Site
from flows.seals import geo_site_subject
from infra.hooks import delivery

#: a namespace for event ids derived from an alert's identity (the same alert, the same id)
EVENT_NAMESPACE = uuid.UUID("6f1f4c52-5a43-4a43-9a8e-2f0b7f6c1d11")


class AlertRefused(ValueError):
    """The alert cannot be accepted; `status` is the HTTP status that says why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Alert(BaseModel):
    """One alert, whatever sent it; fields beyond the interface's are kept in `extra`."""

    model_config = ConfigDict(extra="forbid")

    site: str = Field(min_length=1, max_length=63)
    #: the host the alert is about (every kind but ``site_down``)
    host: str = Field(default="", max_length=253)
    #: the geo site the alert is about (a ``site_down``, or its ``recovered``)
    geo_site: str = Field(default="", max_length=63)
    service: str = Field(min_length=1, max_length=63)
    kind: AlertKind
    severity: str = Field(default="critical", max_length=32)
    time: dt.datetime
    summary: str = Field(default="", max_length=2000)
    source: str = Field(default="webhook", max_length=64)
    #: what makes two reports the same alert (e.g. Alertmanager's fingerprint, Pacemaker's
    #: node sequence); default: site, host, kind and time
    dedup_key: str = Field(default="", max_length=256)
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("time")
    @classmethod
    def _aware(cls, v: dt.datetime) -> dt.datetime:
        return v if v.tzinfo else v.replace(tzinfo=dt.UTC)

    @model_validator(mode="after")
    def _one_subject(self) -> Alert:
        if bool(self.host) == bool(self.geo_site):
            raise ValueError("an alert names a host or a geo site (geo_site), not both nor neither")
        if self.kind == "site_down" and not self.geo_site:
            raise ValueError("a site_down alert names a geo site (geo_site), not a host")
        if self.geo_site and self.kind not in ("site_down", "recovered"):
            raise ValueError(f"a {self.kind} alert names a host, not a geo site")
        return self

    @property
    def subject(self) -> str:
        """What the alert is about, as its incident and its seal name it: the host's name, or
        ``geo-site:NAME`` (`flows.seals.geo_site_subject`; a host's name has no colon, so a geo
        site never shares a host's incident or seal)."""
        return geo_site_subject(self.geo_site) if self.geo_site else self.host

    def identity(self) -> str:
        """The same alert reported again (a repeat, a retry) has the same identity."""
        return "/".join(
            (self.site, self.subject, self.kind, self.dedup_key or self.time.isoformat())
        )


# --- signatures ---------------------------------------------------------------------------------


# the hooks sign with the same function (it lives with them: they run on the nodes with the
# standard library only)
sign = delivery.sign


def verify_signature(
    secret: bytes,
    timestamp: str,
    signature: str,
    body: bytes,
    *,
    window_s: float,
    now: float,
) -> None:
    """Check a generic webhook's signature and its timestamp window.

    Raises:
        AlertRefused: 401 with the reason (missing, malformed, stale or wrong).
    """
    if not timestamp:
        raise AlertRefused(401, "missing X-Handover-Timestamp")
    try:
        ts = int(timestamp)
    except ValueError:
        raise AlertRefused(401, "malformed X-Handover-Timestamp (Unix seconds)") from None
    if abs(now - ts) > window_s:
        raise AlertRefused(401, f"stale request: timestamp {int(abs(now - ts))} s away (replay?)")
    if not signature.startswith("sha256="):
        raise AlertRefused(401, "missing or malformed X-Handover-Signature (sha256=<hex>)")
    if not hmac.compare_digest(sign(secret, ts, body), signature):
        raise AlertRefused(401, "bad signature")


def check_basic_or_bearer(
    intake: AlertmanagerIntake, authorization: str, token: str | None, password: str | None
) -> None:
    """Alertmanager's credentials: ``Bearer <token>`` or ``Basic <base64 user:password>``.

    Raises:
        AlertRefused: 401 when they are missing or wrong.
    """
    import base64

    scheme, _, value = authorization.partition(" ")
    if intake.bearer_token is not None:
        if scheme.lower() != "bearer" or not value:
            raise AlertRefused(401, "missing bearer token")
        if token is None or not hmac.compare_digest(value.encode(), token.encode()):
            raise AlertRefused(401, "bad bearer token")
        return
    assert intake.basic_auth is not None
    if scheme.lower() != "basic" or not value:
        raise AlertRefused(401, "missing basic auth")
    try:
        user, _, pw = base64.b64decode(value, validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        raise AlertRefused(401, "malformed basic auth") from None
    good_user = hmac.compare_digest(user.encode(), intake.basic_auth.username.encode())
    good_pw = password is not None and hmac.compare_digest(pw.encode(), password.encode())
    if not (good_user and good_pw):
        raise AlertRefused(401, "bad basic auth credentials")


# --- parsing ------------------------------------------------------------------------------------

GENERIC_FIELDS = {"site", "host", "geo_site", "service", "kind", "severity", "time", "summary"}
REQUIRED = ("site", "service", "kind", "time")


def _known_host(site: Site, name: str) -> str:
    """The site's host name for `name` (a host name, or a host's address)."""
    for h in site.hosts:
        if name in (h.name, h.address):
            return h.name
    raise AlertRefused(
        422,
        f"unknown host {name!r} for site {site.site} (known: "
        + ", ".join(h.name for h in site.hosts)
        + ")",
    )


def _known_geo_site(site: Site, name: str) -> str:
    """`name`, a geo site of the site's `geo:` section."""
    if site.geo is None:
        raise AlertRefused(
            422, f"site {site.site} has no geo sites (a geo_site alert needs the site's `geo:`)"
        )
    known = [s.name for s in site.geo.sites]
    if name not in known:
        raise AlertRefused(
            422, f"unknown geo site {name!r} for site {site.site} (known: {', '.join(known)})"
        )
    return name


def _validated(site: Site, data: dict[str, Any]) -> Alert:
    if data.get("site") != site.site:
        raise AlertRefused(
            422, f"unknown site {data.get('site')!r} (this gateway serves {site.site})"
        )
    if data.get("geo_site") or data.get("kind") == "site_down":
        if data.get("host"):
            raise AlertRefused(422, "an alert names a host or a geo_site, not both")
        if not data.get("geo_site"):
            raise AlertRefused(422, "missing field(s): geo_site (a site_down names a geo site)")
        data["geo_site"] = _known_geo_site(site, str(data["geo_site"]))
        data["host"] = ""
    elif not data.get("host"):
        raise AlertRefused(422, "missing field(s): host (or geo_site, for a site_down)")
    else:
        data["host"] = _known_host(site, str(data.get("host")))
    if data.get("service") != site.service.name:
        raise AlertRefused(
            422,
            f"unknown service {data.get('service')!r} (site {site.site} runs {site.service.name})",
        )
    try:
        return Alert.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "body"
        raise AlertRefused(422, f"{where}: {first['msg']}") from None


def parse_generic(site: Site, body: bytes) -> Alert:
    """A generic alert body (the webhook interface), checked against the site.

    Raises:
        AlertRefused: 400 for a body that is not a JSON object, 422 for a missing or bad field,
            an unknown site, host or service.
    """
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, or nested too deep
        raise AlertRefused(400, f"body is not JSON: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        raise AlertRefused(400, "body is not a JSON object")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise AlertRefused(422, f"missing field(s): {', '.join(missing)}")
    fields = {k: v for k, v in data.items() if k in GENERIC_FIELDS}
    extra = {k: v for k, v in data.items() if k not in GENERIC_FIELDS}
    fields["source"] = str(extra.pop("source", "webhook"))[:64]
    fields["dedup_key"] = str(extra.pop("dedup_key", ""))[:256]
    fields["extra"] = extra
    return _validated(site, fields)


class AlertmanagerItem(BaseModel):
    """One alert of an Alertmanager webhook (version 4)."""

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: dt.datetime
    endsAt: dt.datetime | None = None
    fingerprint: str = ""
    generatorURL: str = ""


class AlertmanagerPayload(BaseModel):
    """Alertmanager's webhook payload (version 4)."""

    version: Literal["4"]
    status: Literal["firing", "resolved"]
    receiver: str = ""
    groupKey: str = ""
    alerts: list[AlertmanagerItem] = Field(min_length=1)


def parse_alertmanager(
    site: Site, intake: AlertmanagerIntake, body: bytes
) -> tuple[list[Alert], list[str]]:
    """The alerts of one Alertmanager notification (a group), and why any were refused.

    Labels used: ``site`` (default: this site), ``host`` (or ``instance``, without its port;
    ``geo_site`` for a ``site_down``), ``service`` (default: the site's), ``handover_kind`` (else
    `intake.kinds[alertname]`), ``severity``; a resolved alert becomes kind ``recovered``.

    Raises:
        AlertRefused: 400 when the payload is not Alertmanager's version 4 webhook.
    """
    found, refused = alertmanager_alerts(site, intake, read_alertmanager(body))
    return [alert for _, alert in found], refused


def read_alertmanager(body: bytes) -> AlertmanagerPayload:
    """An Alertmanager notification's payload.

    Raises:
        AlertRefused: 400 when the payload is not Alertmanager's version 4 webhook.
    """
    try:
        return AlertmanagerPayload.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "body"
        raise AlertRefused(
            400, f"not an Alertmanager v4 webhook: {where}: {first['msg']}"
        ) from None


def alertmanager_alerts(
    site: Site,
    intake: AlertmanagerIntake,
    payload: AlertmanagerPayload,
    only: set[int] | None = None,
) -> tuple[list[tuple[int, Alert]], list[str]]:
    """The alerts of a notification for `site` (those at the positions `only`, or all), each
    with its position, and why any were refused (see `parse_alertmanager`)."""
    alerts: list[tuple[int, Alert]] = []
    refused: list[str] = []
    for i, a in enumerate(payload.alerts):
        if only is not None and i not in only:
            continue
        lb = a.labels
        name = lb.get("alertname", "")
        kind: str | None = lb.get("handover_kind") or intake.kinds.get(name)
        # a lost geo site names the site (its `geo_site` label), not the exporter's instance
        about_geo_site = kind == "site_down"
        if a.status == "resolved":
            kind = "recovered"
        host = "" if about_geo_site else lb.get("host") or lb.get("instance", "").rsplit(":", 1)[0]
        if kind is None:
            refused.append(
                f"alerts[{i}] ({name or 'no alertname'}): no handover_kind label and no kind "
                "for this alertname in alerts.alertmanager.kinds"
            )
            continue
        try:
            alerts.append(
                (
                    i,
                    _validated(
                        site,
                        {
                            "site": lb.get("site", site.site),
                            "host": host,
                            "geo_site": lb.get("geo_site", "") if about_geo_site else "",
                            "service": lb.get("service", site.service.name),
                            "kind": kind,
                            "severity": lb.get("severity", "critical"),
                            "time": a.endsAt if a.status == "resolved" and a.endsAt else a.startsAt,
                            "summary": a.annotations.get("summary")
                            or a.annotations.get("description")
                            or name,
                            "source": "alertmanager",
                            "dedup_key": f"{a.fingerprint or name}@{a.startsAt.isoformat()}",
                            "extra": {
                                "labels": lb,
                                "annotations": a.annotations,
                                "group_key": payload.groupKey,
                                "generator_url": a.generatorURL,
                            },
                        },
                    ),
                )
            )
        except AlertRefused as exc:
            refused.append(f"alerts[{i}] ({name}): {exc.reason}")
    return alerts, refused


# --- events -------------------------------------------------------------------------------------


#: the event of an alert that joined a host's open incident (no trigger expects it)
ATTACHED_EVENT = "handover.alert.attached"


def event_name(alert: Alert) -> str:
    """``handover.alert.host_down`` and the like: what the deployments' triggers expect."""
    return f"handover.alert.{alert.kind}"


def gateway_event_name(alert: Alert) -> str:
    """``handover.gateway.host_down`` and the like: the event of an alert whose runs (if any)
    the gateway decided and created itself (no trigger expects it, so no automation starts a
    run again, nor one the site's `alerts.procedures` left out)."""
    return f"handover.gateway.{alert.kind}"


def event_resource(alert: Alert, frontend_hosts: frozenset[str] = frozenset()) -> dict[str, str]:
    """The event's resource: the host of the site, with the labels automations match on
    (``handover.frontend`` says whether the host is one of the site's front ends: a host that
    dies there starts the switch as well as the emergency move); for an alert about a geo site,
    ``handover.geo-site.SITE.NAME`` with the label ``handover.geo_site``."""
    if alert.geo_site:
        return {
            "prefect.resource.id": f"handover.geo-site.{alert.site}.{alert.geo_site}",
            "prefect.resource.name": alert.geo_site,
            "handover.site": alert.site,
            "handover.geo_site": alert.geo_site,
            "handover.service": alert.service,
        }
    return {
        "prefect.resource.id": f"handover.host.{alert.site}.{alert.host}",
        "prefect.resource.name": alert.host,
        "handover.site": alert.site,
        "handover.host": alert.host,
        "handover.service": alert.service,
        "handover.frontend": "true" if alert.host in frontend_hosts else "false",
    }


def event_id(alert: Alert) -> uuid.UUID:
    """A deterministic id: Prefect ignores an event whose id it has already seen, so the same
    alert sent twice (two gateways, a retried hook) is evaluated once."""
    return uuid.uuid5(EVENT_NAMESPACE, alert.identity())
