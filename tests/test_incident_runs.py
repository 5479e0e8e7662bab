"""An incident follows its run on a real Prefect server: one whose run Prefect does not know (the
run was deleted) or whose run id in the book is not a run's is closed after a bound, with an
audit line, and the next alert for the host starts a run again."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client

from config.loader import load_site
from infra.gateway.alerts import parse_generic
from infra.gateway.decide import Decider
from infra.gateway.incidents import Incidents
from infra.gateway.intake import RUN_UNREADABLE_CLOSE_S, AlertIntake
from tests.test_alerts import generic

SITE = load_site(Path(__file__).resolve().parent.parent / "config/sites/lab.yaml")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _resolve(intake: AlertIntake) -> None:
    async def once() -> None:
        async with get_client() as client:
            await intake.resolve_once(client)

    asyncio.run(once())


@pytest.mark.parametrize("run_id", [str(uuid.uuid4()), "not-a-run-id"])
def test_an_incident_whose_run_cannot_be_read_closes_and_the_next_alert_starts_a_run(
    prefect_api: str, run_id: str
) -> None:
    clock = Clock()
    book = Incidents(60, clock)
    decider = Decider(SITE)
    intake = AlertIntake(SITE, book, decider.record)
    alert = parse_generic(SITE, generic(time=dt.datetime.now(dt.UTC).isoformat()))
    verdict, inc = book.admit(alert, "emergency-move")
    assert verdict == "new" and inc is not None
    book.set_run(inc, run_id)  # deleted since, or garbled in a shared book
    clock.t += 61  # past the dedup window: only the run keeps it open
    _resolve(intake)
    assert book.admit(alert, "emergency-move")[0] == "attached"  # not yet: within the bound
    clock.t += RUN_UNREADABLE_CLOSE_S
    _resolve(intake)
    closed: list[dict[str, Any]] = [e for e in decider.audit if e["result"] == "incident-closed"]
    assert len(closed) == 1 and closed[0]["run"] == run_id, list(decider.audit)
    assert "cannot be read" in closed[0]["reason"]
    assert book.admit(alert, "emergency-move")[0] == "new"


def test_prefect_not_answering_closes_no_incident() -> None:
    """A run that cannot be read because Prefect is down may well be running: its incident
    stays open however long the outage."""
    import socket

    from prefect.settings import PREFECT_API_URL, temporary_settings

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    clock = Clock()
    book = Incidents(60, clock)
    decider = Decider(SITE)
    intake = AlertIntake(SITE, book, decider.record)
    alert = parse_generic(SITE, generic(time=dt.datetime.now(dt.UTC).isoformat()))
    _, inc = book.admit(alert, "emergency-move")
    assert inc is not None
    book.set_run(inc, str(uuid.uuid4()))
    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{dead}/api"}):
        for _ in range(3):
            clock.t += RUN_UNREADABLE_CLOSE_S
            _resolve(intake)
    assert book.admit(alert, "emergency-move")[0] == "attached"
    assert not [e for e in decider.audit if e["result"] == "incident-closed"]
