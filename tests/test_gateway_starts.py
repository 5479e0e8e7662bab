"""The runs an incident starts, decided from deployments/prefect.yaml's triggers as Prefect's
automations decide (pure: no Prefect server; `tests/test_alert_runs.py` creates them for real)."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.loader import load_site
from infra.gateway.alerts import event_id, parse_generic
from infra.gateway.incidents import Incidents
from infra.gateway.intake import alert_event
from infra.gateway.starts import idempotency_key, starts_for, triggers
from tests.test_alerts import generic

SITE = load_site(Path(__file__).resolve().parent.parent / "config/sites/lab.yaml")
RULES = triggers(SITE)
FRONTS = frozenset(SITE.frontend.hosts if SITE.frontend else ())


def starts(host: str, kind: str, **over: str) -> dict[str, dict[str, object]]:
    alert = parse_generic(SITE, generic(host=host, kind=kind, **over))
    inc = Incidents(300).admit(alert, "emergency-move")[1]
    event = alert_event(alert, inc, attached=False, frontend_hosts=FRONTS)
    return {s.deployment: s.parameters for s in starts_for(event, RULES)}


def test_an_agent_host_down_starts_its_emergency_move_with_the_triggers_parameters() -> None:
    alert = parse_generic(SITE, generic(host="fts105", kind="host_down"))
    assert starts("fts105", "host_down") == {
        "emergency-move": {
            "host": "fts105",
            "alert_id": str(event_id(alert)),
            "alert_seal": "",  # this gateway seals nothing: no automatic path
            "requested_by": "alert from webhook: fts101 does not answer",
        }
    }


def test_the_runs_an_alert_starts_carry_the_gateways_seal_of_it() -> None:
    """Both runs a front end's host_down starts (and the automations' backstop, from the same
    event) carry the seal of the alert about that host, and each holds for its run."""
    import time

    from flows.seals import alert_seal_holds, alert_seal_key

    key = alert_seal_key("a-webhook-secret-of-the-gateway")
    alert = parse_generic(SITE, generic(host="fts101", kind="host_down"))
    inc = Incidents(300).admit(alert, "emergency-move")[1]
    event = alert_event(alert, inc, attached=False, frontend_hosts=FRONTS, alert_key=key)
    started = {s.deployment: s.parameters for s in starts_for(event, RULES)}
    move, switch = started["emergency-move"], started["switch"]
    assert move["alert_seal"] == switch["alert_seal"] != ""
    for params, host in ((move, move["host"]), (switch, switch["failed_host"])):
        assert alert_seal_holds(
            key,
            str(params["alert_id"]),
            str(host),
            str(params["alert_seal"]),
            created_at=time.time(),
            max_age_s=600,
        )
    # an attached alert's event is no start and carries none
    attached = alert_event(alert, None, attached=True, frontend_hosts=FRONTS, alert_key=key)
    assert "alert_seal" not in attached["payload"]


def test_a_front_end_host_down_starts_the_move_and_the_switch() -> None:
    started = starts("fts101", "host_down")
    assert set(started) == {"emergency-move", "switch"}
    assert started["switch"]["failed_host"] == "fts101"
    assert starts("fts101", "frontend_down").keys() == {"switch"}
    assert starts("fts101", "resource_failed").keys() == {"emergency-move"}


def test_what_starts_nothing_starts_nothing() -> None:
    assert starts("fts101", "recovered") == {}
    assert starts("fts101", "ha_event") == {}
    assert starts("fts105", "frontend_down") == {}  # not a front end


def test_another_sites_event_starts_nothing_here() -> None:
    alert = parse_generic(SITE, generic(host="fts101", kind="host_down"))
    inc = Incidents(300).admit(alert, "emergency-move")[1]
    event = alert_event(alert, inc, attached=False, frontend_hosts=FRONTS)
    event["resource"] = {**event["resource"], "handover.site": "elsewhere"}
    assert starts_for(event, RULES) == []


def test_the_key_is_the_incidents_so_two_gateways_create_one_run() -> None:
    a = parse_generic(SITE, generic(host="fts105", kind="host_down"))
    # two gateways, each with its own book, admit the same alert: the same event id, the same key
    e1 = alert_event(a, Incidents(300).admit(a, "emergency-move")[1], attached=False)
    e2 = alert_event(a, Incidents(300).admit(a, "emergency-move")[1], attached=False)
    assert idempotency_key(e1["id"], "emergency-move") == idempotency_key(
        e2["id"], "emergency-move"
    )
    assert idempotency_key(e1["id"], "switch") != idempotency_key(e1["id"], "emergency-move")


def test_a_busy_server_is_asked_again_at_once_not_after_prefects_2_s(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SQLite locked by another write answers 503; the alert's sender is waiting, so the run's
    creation is tried again after 0.1 s, 0.2 s, ... (the idempotency key makes it one run)."""
    import asyncio

    import httpx
    from prefect.exceptions import PrefectHTTPStatusError

    from infra.gateway import starts
    from infra.gateway.starts import _create_quickly

    class Client:
        def __init__(self, busy: int, code: int = 503) -> None:
            self.busy, self.code, self.keys = busy, code, []

        async def create_flow_run_from_deployment(self, dep: str, **kw: object) -> str:
            self.keys.append(kw["idempotency_key"])
            if len(self.keys) <= self.busy:
                req = httpx.Request("POST", "http://prefect/api/deployments/x/create_flow_run")
                resp = httpx.Response(self.code, request=req)
                raise PrefectHTTPStatusError.from_httpx_error(
                    httpx.HTTPStatusError("busy", request=req, response=resp)
                )
            return "run"

    # the waits it takes, recorded instead of slept (what they cost is the bench's business)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(starts, "_sleep", sleep)
    client = Client(busy=2)
    assert asyncio.run(_create_quickly(client, "dep", {}, "k")) == "run"
    assert waits == [0.1, 0.2]
    assert client.keys == ["k", "k", "k"]
    # another refusal is not retried, and a server busy for good is given up (503 to the sender)
    waits.clear()
    refused = Client(busy=1, code=422)
    with pytest.raises(PrefectHTTPStatusError):
        asyncio.run(_create_quickly(refused, "dep", {}, "k"))
    assert waits == [] and len(refused.keys) == 1
    busy = Client(busy=99)
    with pytest.raises(PrefectHTTPStatusError):
        asyncio.run(_create_quickly(busy, "dep", {}, "k"))
    assert waits == [0.1, 0.2, 0.4, 0.8, 1.6] and len(busy.keys) == 6


def test_a_procedure_another_alert_of_the_host_started_is_not_started_twice() -> None:
    """A front-end host that dies: its front end's alert (30 s) and its host_down (1 min) both
    ask for the switch; it runs once, whichever comes first (as Prefect's per-host trigger
    window would have it)."""
    import asyncio
    import datetime as dt

    from infra.gateway.decide import Decider
    from infra.gateway.incidents import Incidents
    from infra.gateway.intake import AlertIntake
    from infra.gateway.starts import RunStarter

    class Starter(RunStarter):
        def __init__(self) -> None:
            super().__init__(SITE)
            self.started: list[set[str]] = []

        async def start(
            self, client: object, event: dict[str, object], only: set[str] | None = None
        ) -> list[tuple[str, str]]:
            deps = [d for d in self.deployments_for(event) if only is None or d in only]
            self.started.append(set(deps))
            return [(d, f"run-{d}-{len(self.started)}") for d in deps]

    class Resp:
        def raise_for_status(self) -> None:
            pass

    class Client:
        async def request(self, method: str, path: str, json: object) -> Resp:
            return Resp()

    now = dt.datetime.now(dt.UTC).isoformat()
    host = SITE.frontend.hosts[0] if SITE.frontend else "fts101"

    def send(intake: AlertIntake, kind: str) -> dict[str, object]:
        a = parse_generic(SITE, generic(host=host, kind=kind, time=now))
        return asyncio.run(intake.accept(a, Client()))

    for first, then in (("frontend_down", "host_down"), ("host_down", "frontend_down")):
        starter = Starter()
        intake = AlertIntake(SITE, Incidents(300), Decider(SITE).record, starter=starter)
        assert send(intake, first)["result"] == "new"
        second = send(intake, then)
        if then == "host_down":  # its own procedure starts; the switch does not, again
            assert second["result"] == "new"
            assert starter.started == [{"switch"}, {"emergency-move"}]
        else:  # the switch the host_down started is the frontend_down's incident
            assert second["result"] == "attached"
            assert starter.started == [{"emergency-move", "switch"}]
