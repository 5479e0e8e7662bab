"""Alert intake, pure: the generic webhook's signature and body, Alertmanager's payloads, the
credentials, the events an alert becomes, and the incident book (one run per host)."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from config.loader import load_site
from config.site import AlertmanagerIntake, BasicAuth, SecretRef, Site
from infra.gateway.alerts import (
    Alert,
    AlertRefused,
    check_basic_or_bearer,
    event_id,
    event_name,
    event_resource,
    parse_alertmanager,
    parse_generic,
    sign,
    verify_signature,
)
from infra.gateway.incidents import Incidents

SITE: Site = load_site(Path(__file__).resolve().parent.parent / "config/sites/lab.yaml")
SECRET = b"a-test-secret-0123456789"
NOW = 1_800_000_000
T = "2026-11-23T01:00:00+00:00"  # an event time; intake tests that act use now


def generic(**over: Any) -> bytes:
    body = {
        "site": "lab",
        "host": "fts101",
        "service": "fts-lab",
        "kind": "host_down",
        "severity": "critical",
        "time": T,
        "summary": "fts101 does not answer",
        **over,
    }
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()


def refused(fn: Any, *args: Any, **kw: Any) -> AlertRefused:
    with pytest.raises(AlertRefused) as info:
        fn(*args, **kw)
    return info.value


# --- the generic webhook ---------------------------------------------------------------------


def test_a_signed_body_is_accepted() -> None:
    """The documented signature (what a hook computes with its own HMAC library: sha256 over
    `<timestamp>.<body>`) is accepted anywhere inside the window, and the same signature under
    another secret is not."""
    import hashlib
    import hmac

    body = generic()
    theirs = "sha256=" + hmac.new(SECRET, f"{NOW}.".encode() + body, hashlib.sha256).hexdigest()
    assert sign(SECRET, NOW, body) == theirs
    for now in (NOW, NOW + 10, NOW - 300, NOW + 300):
        assert verify_signature(SECRET, str(NOW), theirs, body, window_s=300, now=now) is None
    other = b"another-secret"
    err = refused(verify_signature, other, str(NOW), theirs, body, window_s=300, now=NOW)
    assert err.reason == "bad signature"


@pytest.mark.parametrize(
    ("timestamp", "signature", "now", "reason"),
    [
        ("", None, NOW, "missing X-Handover-Timestamp"),
        ("yesterday", None, NOW, "malformed X-Handover-Timestamp"),
        (str(NOW), None, NOW + 301, "stale request"),
        (str(NOW), None, NOW - 301, "stale request"),
        (str(NOW), "", NOW, "missing or malformed X-Handover-Signature"),
        (str(NOW), "sha256=" + "0" * 64, NOW, "bad signature"),
    ],
)
def test_bad_signatures_are_refused(
    timestamp: str, signature: str | None, now: int, reason: str
) -> None:
    body = generic()
    sig = sign(SECRET, NOW, body) if signature is None else signature
    err = refused(verify_signature, SECRET, timestamp, sig, body, window_s=300, now=now)
    assert err.status == 401 and reason in err.reason


def test_a_signature_covers_the_timestamp_and_the_body() -> None:
    body = generic()
    sig = sign(SECRET, NOW, body)
    tampered = generic(host="fts102")
    err = refused(verify_signature, SECRET, str(NOW), sig, tampered, window_s=300, now=NOW)
    assert err.reason == "bad signature"
    err = refused(verify_signature, SECRET, str(NOW + 1), sig, body, window_s=300, now=NOW)
    assert err.reason == "bad signature"


def test_a_generic_alert_keeps_its_extra_fields() -> None:
    alert = parse_generic(SITE, generic(source="lemon", dedup_key="seq-7", rack="B12"))
    assert (alert.host, alert.kind, alert.source, alert.dedup_key) == (
        "fts101",
        "host_down",
        "lemon",
        "seq-7",
    )
    assert alert.extra == {"rack": "B12"}
    assert alert.time == dt.datetime(2026, 11, 23, 1, tzinfo=dt.UTC)


def test_a_host_may_be_named_by_its_address() -> None:
    assert parse_generic(SITE, generic(host="127.0.1.2")).host == "fts102"


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"not json", 400, "not JSON"),
        (b"[1, 2]", 400, "not a JSON object"),
        (generic(host=None), 422, "missing field(s): host"),
        (generic(kind=None, time=None), 422, "missing field(s): kind, time"),
        (generic(site="elsewhere"), 422, "unknown site 'elsewhere'"),
        (generic(host="fts999"), 422, "unknown host 'fts999'"),
        (generic(service="dcache"), 422, "unknown service 'dcache'"),
        (generic(kind="on_fire"), 422, "kind:"),
        (generic(time="last tuesday"), 422, "time:"),
    ],
)
def test_bad_bodies_are_refused_precisely(body: bytes, status: int, reason: str) -> None:
    err = refused(parse_generic, SITE, body)
    assert err.status == status and reason in err.reason, err.reason


# --- Alertmanager ----------------------------------------------------------------------------

INTAKE = AlertmanagerIntake(bearer_token=SecretRef(env="X"))


def am(*alerts: dict[str, Any], status: str = "firing") -> bytes:
    return json.dumps(
        {
            "version": "4",
            "status": status,
            "receiver": "handover",
            "groupKey": '{}:{alertname="HostDown"}',
            "groupLabels": {"alertname": "HostDown"},
            "commonLabels": {},
            "commonAnnotations": {},
            "externalURL": "http://alertmanager:9093",
            "truncatedAlerts": 0,
            "alerts": list(alerts),
        }
    ).encode()


def am_alert(status: str = "firing", **labels: str) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": "HostDown", "severity": "page", **labels},
        "annotations": {"summary": f"{labels.get('instance', '?')} is down"},
        "startsAt": "2026-11-23T01:00:00Z",
        "endsAt": "2026-11-23T01:05:00Z" if status == "resolved" else "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": "c0ffee" + labels.get("instance", "")[-1:],
    }


def test_a_firing_alertmanager_alert_maps_to_host_down() -> None:
    alerts, problems = parse_alertmanager(SITE, INTAKE, am(am_alert(instance="127.0.1.1:9100")))
    assert problems == []
    [a] = alerts
    assert (a.host, a.kind, a.severity, a.source) == ("fts101", "host_down", "page", "alertmanager")
    assert a.summary == "127.0.1.1:9100 is down"
    assert a.extra["labels"]["alertname"] == "HostDown"


def test_a_resolved_alertmanager_alert_is_a_recovery() -> None:
    alerts, _ = parse_alertmanager(
        SITE, INTAKE, am(am_alert("resolved", host="fts101"), status="resolved")
    )
    assert [a.kind for a in alerts] == ["recovered"]
    assert alerts[0].time == dt.datetime(2026, 11, 23, 1, 5, tzinfo=dt.UTC)


def test_a_grouped_notification_gives_one_alert_each_and_says_what_it_refused() -> None:
    alerts, problems = parse_alertmanager(
        SITE,
        INTAKE,
        am(
            am_alert(host="fts101"),
            am_alert(instance="127.0.1.2:9100"),
            am_alert(host="fts105", handover_kind="service_down"),
            am_alert(host="fts999"),
            {**am_alert(host="fts106"), "labels": {"alertname": "DiskFull", "host": "fts106"}},
        ),
    )
    assert [(a.host, a.kind) for a in alerts] == [
        ("fts101", "host_down"),
        ("fts102", "host_down"),
        ("fts105", "service_down"),
    ]
    assert len(problems) == 2
    assert "unknown host 'fts999'" in problems[0]
    assert "DiskFull" in problems[1] and "alerts.alertmanager.kinds" in problems[1]


def test_a_payload_that_is_not_alertmanagers_is_refused() -> None:
    err = refused(parse_alertmanager, SITE, INTAKE, b'{"version": "3", "alerts": []}')
    assert err.status == 400 and "not an Alertmanager v4 webhook" in err.reason


def test_alertmanager_repeats_are_the_same_alert() -> None:
    one, _ = parse_alertmanager(SITE, INTAKE, am(am_alert(host="fts101")))
    again, _ = parse_alertmanager(SITE, INTAKE, am(am_alert(host="fts101")))
    assert event_id(one[0]) == event_id(again[0])


def test_bearer_and_basic_credentials() -> None:
    check_basic_or_bearer(INTAKE, "Bearer tok", "tok", None)
    for header, reason in [("", "missing bearer"), ("Bearer nope", "bad bearer")]:
        assert reason in refused(check_basic_or_bearer, INTAKE, header, "tok", None).reason
    basic = AlertmanagerIntake(basic_auth=BasicAuth(username="am", password=SecretRef(env="Y")))
    good = "Basic " + base64.b64encode(b"am:pw").decode()
    check_basic_or_bearer(basic, good, None, "pw")
    bad = "Basic " + base64.b64encode(b"am:wrong").decode()
    assert "bad basic" in refused(check_basic_or_bearer, basic, bad, None, "pw").reason
    assert "malformed" in refused(check_basic_or_bearer, basic, "Basic %%%", None, "pw").reason


# --- events and incidents --------------------------------------------------------------------


def alert(host: str = "fts101", kind: str = "host_down", when: str = T, **kw: Any) -> Alert:
    return parse_generic(SITE, generic(host=host, kind=kind, time=when, **kw))


def test_an_alert_becomes_an_event_naming_site_host_and_service() -> None:
    a = alert()
    assert event_name(a) == "handover.alert.host_down"
    assert event_resource(a) == {
        "prefect.resource.id": "handover.host.lab.fts101",
        "prefect.resource.name": "fts101",
        "handover.site": "lab",
        "handover.host": "fts101",
        "handover.service": "fts-lab",
        "handover.frontend": "false",
    }
    # a front-end host: the switch's trigger matches it too
    assert event_resource(a, frozenset({"fts101"}))["handover.frontend"] == "true"
    assert event_id(a) == event_id(alert()) != event_id(alert(when="2026-11-23T02:00:00Z"))


GEO: Site = load_site(Path(__file__).resolve().parent.parent / "config/sites/geo-lab.yaml")


def geo_generic(**over: Any) -> bytes:
    body = {
        "site": "geo-lab",
        "geo_site": "site-a",
        "service": "ops-tools",
        "kind": "site_down",
        "time": T,
        "summary": "site-a is lost",
        **over,
    }
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()


def test_a_lost_geo_site_is_an_alert_about_the_geo_site_not_a_host() -> None:
    a = parse_generic(GEO, geo_generic())
    assert (a.geo_site, a.host, a.subject) == ("site-a", "", "geo-site:site-a")
    assert event_name(a) == "handover.alert.site_down"
    assert event_resource(a) == {
        "prefect.resource.id": "handover.geo-site.geo-lab.site-a",
        "prefect.resource.name": "site-a",
        "handover.site": "geo-lab",
        "handover.geo_site": "site-a",
        "handover.service": "ops-tools",
    }
    # one incident per geo site: the other tools' alerts of the same loss attach to it, and a
    # host alert of the same name (were there one) is another incident
    book = Incidents(300, Clock())
    assert book.admit(a, "geo-site-down")[0] == "new"
    assert book.admit(parse_generic(GEO, geo_generic(tool="cic")), "geo-site-down")[0] == "attached"
    assert (
        book.admit(parse_generic(GEO, geo_generic(geo_site="site-b")), "geo-site-down")[0] == "new"
    )
    # Alertmanager's HandoverGeoSiteDown: the geo_site label, not the exporter's instance
    labels = {
        "alertname": "HandoverGeoSiteDown",
        "site": "geo-lab",
        "tool": "portal",
        "geo_site": "site-b",
        "instance": "127.0.0.1:9464",
        "handover_kind": "site_down",
    }
    assert GEO.alerts is not None and GEO.alerts.alertmanager is not None
    for status, kind in (("firing", "site_down"), ("resolved", "recovered")):
        body = json.dumps(
            {
                "version": "4",
                "status": status,
                "alerts": [{"status": status, "labels": labels, "startsAt": T}],
            }
        ).encode()
        [got], why = parse_alertmanager(GEO, GEO.alerts.alertmanager, body)
        assert why == [] and (got.kind, got.geo_site, got.host) == (kind, "site-b", "")


def test_each_site_starts_only_the_procedures_it_has() -> None:
    from infra.gateway.intake import AlertIntake

    def starts(site: Site, body: bytes) -> str | None:
        return AlertIntake(site, Incidents(300), lambda **_: None).procedure_for(
            parse_generic(site, body)
        )

    assert starts(GEO, geo_generic()) == "geo-site-down"
    # a host of a site of web tools: no agents to move, recorded only
    assert starts(GEO, geo_generic(geo_site=None, host="tool-a", kind="host_down")) is None
    assert starts(SITE, generic()) == "emergency-move"


@pytest.mark.parametrize(
    ("site", "body", "reason"),
    [
        ("geo", geo_generic(geo_site="site-z"), "unknown geo site 'site-z'"),
        ("geo", geo_generic(host="tool-a"), "a host or a geo_site, not both"),
        ("geo", geo_generic(geo_site=None), "missing field(s): geo_site"),
        # a geo site named for another kind: the kinds that name a host
        ("geo", geo_generic(kind="host_down"), "a host_down alert names a host"),
        ("lab", generic(host=None, geo_site="site-a", kind="site_down"), "has no geo sites"),
        ("lab", generic(host=None), "missing field(s): host (or geo_site"),
    ],
)
def test_geo_site_alerts_are_refused_precisely(site: str, body: bytes, reason: str) -> None:
    exc = refused(parse_generic, GEO if site == "geo" else SITE, body)
    assert exc.status == 422 and reason in exc.reason, exc.reason


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_one_incident_per_host_and_procedure_within_the_window() -> None:
    clock = Clock()
    book = Incidents(300, clock)
    verdict, first = book.admit(alert(), "emergency-move")
    assert verdict == "new" and first is not None
    # the same failure from other monitors, in other words
    for kind, source in [("host_down", "lemon"), ("resource_failed", "pacemaker")]:
        v, inc = book.admit(alert(kind=kind, source=source), "emergency-move")
        assert v == "attached" and inc is first
    assert first.attached == 2 and first.sources == {"webhook": 1, "lemon": 1, "pacemaker": 1}
    assert book.admit(alert(host="fts105"), "emergency-move")[0] == "new"
    assert len(book.take_pending(first)) == 2 and book.take_pending(first) == []
    clock.t += 301
    assert book.admit(alert(), "emergency-move")[0] == "new"


def test_an_incident_stays_open_while_its_run_runs() -> None:
    clock = Clock()
    book = Incidents(60, clock)
    _, inc = book.admit(alert(), "emergency-move")
    assert inc is not None
    inc.run_id = "run-1"
    clock.t += 3600
    assert book.admit(alert(), "emergency-move")[0] == "attached"
    inc.run_finished = True
    book.take_pending(inc)
    assert book.admit(alert(), "emergency-move")[0] == "new"


def test_a_recovery_never_opens_an_incident() -> None:
    book = Incidents(300, Clock())
    assert book.admit(alert(kind="recovered"), None) == ("ignored", None)
    _, inc = book.admit(alert(), "emergency-move")
    verdict, noted = book.admit(alert(kind="recovered"), None)
    assert verdict == "noted" and noted is inc and inc is not None
    assert book.take_pending(inc)[0].startswith("recovery reported: recovered for fts101")


def test_an_ha_group_report_starts_nothing_and_is_noted_on_the_hosts_incident() -> None:
    from infra.hagd.report import ha_alert
    from infra.hooks.crm import encode

    body = encode(
        ha_alert(
            site="lab",
            service="fts-lab",
            host="fts101",
            provider="fts102",
            group="fts-lab-frontend",
            what="master",
            detail="fts102 is master: master: service started: group master",
            now=dt.datetime.now(dt.UTC),
            seq=1,
        )
    )
    report = parse_generic(SITE, body)
    assert (report.kind, report.source, report.host) == ("ha_event", "hagd", "fts101")
    assert SITE.alerts is not None and report.kind not in SITE.alerts.procedures
    book = Incidents(300, Clock())
    assert book.admit(report, None) == ("ignored", None)
    _, inc = book.admit(alert(kind="frontend_down", source="hagd"), "switch")
    verdict, noted = book.admit(report, None)
    assert verdict == "noted" and noted is inc and inc is not None
    [sentence] = book.take_pending(inc)
    assert sentence.startswith("noted: ha_event for fts101 from hagd")
    assert "hagd group fts-lab-frontend on fts102: master" in sentence


def test_an_incident_whose_event_was_not_taken_is_forgotten() -> None:
    book = Incidents(300, Clock())
    _, inc = book.admit(alert(), "emergency-move")
    assert inc is not None
    book.forget(inc)
    assert book.admit(alert(), "emergency-move")[0] == "new"


# --- the gateway when Prefect is down ---------------------------------------------------------


def test_an_alert_prefect_cannot_take_is_answered_503_and_not_kept() -> None:
    """The sender must retry (the hooks spool): the gateway neither acknowledges the alert nor
    keeps an incident that would swallow the retry as a duplicate."""
    import socket
    import time

    from fastapi.testclient import TestClient
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from infra.gateway.app import AlertSecrets, create_app
    from infra.gateway.decide import Decider
    from infra.gateway.intake import AlertIntake

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    from infra.gateway.starts import RunStarter

    # the runs created by the gateway (the default) or by the automations from its event
    for starter in (RunStarter(SITE), None):
        decider = Decider(SITE)
        book = Incidents(300)
        intake = AlertIntake(SITE, book, decider.record, starter=starter)
        app = create_app(SITE, None, decider, intake, AlertSecrets(SECRET))
        body = generic(time=dt.datetime.now(dt.UTC).isoformat())
        with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{dead}/api"}):
            with TestClient(app) as client:
                for _ in range(2):
                    ts = int(time.time())
                    resp = client.post(
                        "/alerts/webhook",
                        content=body,
                        headers={
                            "X-Handover-Timestamp": str(ts),
                            "X-Handover-Signature": sign(SECRET, ts, body),
                        },
                    )
                    assert resp.status_code == 503, resp.text
                    assert (
                        "Prefect did not start the runs or take the event" in (resp.json()["error"])
                    )
        assert book.open_incidents() == []
        assert [e["status"] for e in decider.audit] == [503, 503]


def test_the_gateway_counts_what_it_answered_for_prometheus() -> None:
    from fastapi.testclient import TestClient
    from prometheus_client.parser import text_string_to_metric_families

    from infra.gateway.app import AlertSecrets, create_app
    from infra.gateway.decide import Decider
    from infra.gateway.intake import AlertIntake

    decider = Decider(SITE)
    app = create_app(
        SITE, None, decider, AlertIntake(SITE, Incidents(300), decider.record), AlertSecrets(SECRET)
    )
    body = generic(time=dt.datetime.now(dt.UTC).isoformat())
    client = TestClient(app)  # no lifespan: no Prefect needed for refusals
    for sig in ("sha256=00", "sha256=11"):
        resp = client.post(
            "/alerts/webhook",
            content=body,
            headers={
                "X-Handover-Timestamp": str(int(dt.datetime.now().timestamp())),
                "X-Handover-Signature": sig,
            },
        )
        assert resp.status_code == 401
    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    samples = {
        (smp.name, tuple(sorted(smp.labels.items()))): smp.value
        for fam in text_string_to_metric_families(resp.text)
        for smp in fam.samples
    }
    key = (("result", "refused"), ("site", "lab"), ("source", "webhook"), ("status", "401"))
    assert samples[("handover_gateway_requests_total", key)] == 2.0
    assert samples[("handover_gateway_incidents_open", (("site", "lab"),))] == 0.0
    assert samples[("handover_gateway_events_queued", (("site", "lab"),))] == 0.0
    assert samples[("handover_gateway_events_dropped_total", (("site", "lab"),))] == 0.0


# --- old alerts ---------------------------------------------------------------------------------


def _stale_app(host_port: int) -> tuple[Any, Any, Incidents]:
    from infra.gateway.app import AlertSecrets, create_app
    from infra.gateway.decide import Decider
    from infra.gateway.intake import AlertIntake

    hosts = [
        h.model_copy(update={"address": "127.0.0.1", "port": host_port})
        if h.name == "fts101"
        else h
        for h in SITE.hosts
    ]
    site = SITE.model_copy(update={"hosts": hosts})
    decider = Decider(site)
    book = Incidents(300)
    app = create_app(
        site, None, decider, AlertIntake(site, book, decider.record), AlertSecrets(SECRET)
    )
    return app, decider, book


@contextlib.contextmanager
def _no_prefect() -> Any:
    """The Prefect API is a port nobody listens on (no temporary server is started)."""
    import socket

    from prefect.settings import PREFECT_API_URL, temporary_settings

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{dead}/api"}):
        yield


def _post_signed(client: Any, body: bytes) -> Any:
    import time

    ts = int(time.time())
    return client.post(
        "/alerts/webhook",
        content=body,
        headers={"X-Handover-Timestamp": str(ts), "X-Handover-Signature": sign(SECRET, ts, body)},
    )


def test_an_old_host_down_for_a_host_that_answers_ssh_starts_nothing() -> None:
    """A spooled alert delivered after an outage: its host greets on SSH again, so it is
    recorded and nothing starts (not even an event reaches Prefect)."""
    import socket
    import threading

    from fastapi.testclient import TestClient

    sshd = socket.socket()
    sshd.bind(("127.0.0.1", 0))
    sshd.listen(4)

    def greet() -> None:
        with contextlib.suppress(OSError):
            while True:
                c, _ = sshd.accept()
                c.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
                c.close()

    threading.Thread(target=greet, daemon=True).start()
    app, decider, book = _stale_app(sshd.getsockname()[1])
    old = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)).isoformat()
    try:
        with _no_prefect(), TestClient(app) as client:
            resp = _post_signed(client, generic(time=old))
    finally:
        sshd.close()
    assert resp.status_code == 202, resp.text
    [answer] = resp.json()["alerts"]
    assert answer["result"] == "stale" and "answers SSH now" in answer["reason"]
    assert book.open_incidents() == []
    assert decider.audit[-1]["result"] == "stale"


def test_an_old_host_down_confirmed_by_a_fresh_probe_is_acted_on() -> None:
    """The same old alert for a host whose sshd does not answer: it goes on to Prefect (here a
    dead API, so 503: it was acted on, not set aside)."""
    import socket

    from fastapi.testclient import TestClient
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    app, _decider, _book = _stale_app(closed)
    old = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)).isoformat()
    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{closed}/api"}):
        with TestClient(app) as client:
            resp = _post_signed(client, generic(time=old))
    assert resp.status_code == 503, resp.text


def test_an_old_service_alert_is_recorded_not_acted_on() -> None:
    from fastapi.testclient import TestClient

    app, _decider, book = _stale_app(1)
    old = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)).isoformat()
    with _no_prefect(), TestClient(app) as client:
        resp = _post_signed(client, generic(time=old, kind="resource_failed"))
    [answer] = resp.json()["alerts"]
    assert answer["result"] == "stale" and "cannot be confirmed" in answer["reason"]
    assert book.open_incidents() == []


def test_attached_alerts_are_answered_at_once_and_their_events_sent_in_batches() -> None:
    """Only the alert that opens an incident waits for Prefect; the others' events (the audit
    trail, which starts nothing) are queued and sent many to a request, kept when Prefect
    fails."""
    import asyncio

    from infra.gateway.decide import Decider
    from infra.gateway.intake import EVENT_BATCH, AlertIntake

    class Resp:
        def __init__(self, ok: bool) -> None:
            self.ok = ok

        def raise_for_status(self) -> None:
            if not self.ok:
                raise OSError("Prefect is down")

    class Client:
        def __init__(self) -> None:
            self.posts: list[int] = []
            self.up = True

        async def request(self, method: str, path: str, json: Any) -> Resp:
            assert (method, path) == ("POST", "/events")
            if self.up:
                self.posts.append(len(json))
            return Resp(self.up)

    decider = Decider(SITE)
    intake = AlertIntake(SITE, Incidents(300), decider.record)
    client = Client()
    now = dt.datetime.now(dt.UTC).isoformat()

    async def storm() -> list[str]:
        out = []
        for i in range(EVENT_BATCH + 50):
            a = parse_generic(SITE, generic(time=now, source=f"m{i % 3}"))
            out.append((await intake.accept(a, client))["result"])
        return out

    verdicts = asyncio.run(storm())
    assert verdicts[0] == "new" and set(verdicts[1:]) == {"attached"}
    assert client.posts == [1]  # the incident's own event, before its answer
    client.up = False
    assert asyncio.run(intake.send_events(client)) == 0  # kept for the next try
    client.up = True
    asyncio.run(intake.drain_events(client))
    assert client.posts == [1, EVENT_BATCH, 49]
    assert intake.events_dropped == 0
