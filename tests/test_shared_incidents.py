"""The incident book shared by several gateways (infra/gateway/shared_incidents.py), on a real
PostgreSQL: the same rules as the memory book, one incident however the alerts are split over
gateways, nothing lost when a gateway's connection or the gateway itself goes in mid-storm."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from infra.gateway.incidents import Verdict
from infra.gateway.shared_incidents import IncidentStoreError, SharedIncidents
from infra.pg_cluster import PgCluster, pg_bin_dir
from tests.conftest import require
from tests.test_alerts import alert

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def store_url() -> Iterator[str]:
    """A PostgreSQL of the module's own with a `handover` database; yields its URL."""
    require(
        pg_bin_dir() is not None,
        "a PostgreSQL server (apt-get install postgresql)",
        need="lab",
    )
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    base = Path(tempfile.mkdtemp(prefix="handover-test-incidents-", dir="/var/tmp"))
    base.chmod(0o755)
    cluster = PgCluster.scratch(base, port, "incident store")
    cluster.ensure()
    cluster.start()
    try:
        cluster.psql("CREATE ROLE book LOGIN PASSWORD 'b%k'")
        cluster.psql("CREATE DATABASE book OWNER book")
        yield f"postgresql://book:b%25k@127.0.0.1:{port}/book"
    finally:
        cluster.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture()
def books(store_url: str) -> Iterator[tuple[SharedIncidents, SharedIncidents]]:
    """Two gateways' books on an empty store."""
    a, b = SharedIncidents(store_url, 300), SharedIncidents(store_url, 300)
    a._run(lambda c: c.run("TRUNCATE handover_incidents, handover_incident_notes"))
    yield a, b
    a.close()
    b.close()


def test_the_same_rules_as_the_memory_book(books: tuple[SharedIncidents, SharedIncidents]) -> None:
    a, b = books
    verdict, first = a.admit(alert(), "emergency-move")
    assert verdict == "new" and first is not None
    for kind, source in [("host_down", "lemon"), ("resource_failed", "pacemaker")]:
        v, inc = b.admit(alert(kind=kind, source=source), "emergency-move")
        assert v == "attached" and inc is not None and inc.event_id == first.event_id
    assert inc.attached == 2 and inc.sources == {"webhook": 1, "lemon": 1, "pacemaker": 1}
    assert a.admit(alert(host="fts105"), "emergency-move")[0] == "new"
    # a recovery is noted on the open incident, and never opens one
    assert b.admit(alert(kind="recovered"), None)[0] == "noted"
    assert a.admit(alert(host="fts106", kind="recovered"), None) == ("ignored", None)
    # each note is written once, by whichever gateway takes it
    notes = b.take_pending(first)
    assert len(notes) == 3 and notes[-1].startswith("recovery reported")
    assert a.take_pending(first) == []
    b.notes_written(first)
    # a run that has not finished keeps its incident open past the window
    a.set_run(first, "run-1")
    assert {i.run_id for i in b.open_incidents() if i.subject == "fts101"} == {"run-1"}


def test_the_window_and_the_run_decide_when_an_incident_is_over(store_url: str) -> None:
    a, b = SharedIncidents(store_url, 1.0), SharedIncidents(store_url, 1.0)
    try:
        a._run(lambda c: c.run("TRUNCATE handover_incidents, handover_incident_notes"))
        _, inc = a.admit(alert(), "emergency-move")
        assert inc is not None
        time.sleep(1.2)
        assert b.admit(alert(), "emergency-move")[0] == "new"  # the window is the store's clock
        _, inc = b.admit(alert(source="lemon"), "emergency-move")
        assert inc is not None
        a.set_run(inc, "run-2")
        time.sleep(1.2)
        assert b.admit(alert(), "emergency-move")[0] == "attached"  # its run runs
        b.set_finished(inc, True)
        verdict, again = a.admit(alert(), "emergency-move")
        assert verdict == "new" and again is not None and again.run_id is None
        # an incident whose event could not be sent is forgotten: the retry opens it again
        a.forget(again)
        assert b.admit(alert(), "emergency-move")[0] == "new"
    finally:
        a.close()
        b.close()


def test_a_storm_split_over_two_gateways_opens_one_incident(
    books: tuple[SharedIncidents, SharedIncidents],
) -> None:
    a, b = books
    storm = [(a if i % 2 else b, alert(source=f"monitor{i % 5}")) for i in range(1000)]
    with ThreadPoolExecutor(max_workers=16) as ex:
        verdicts = list(ex.map(lambda job: job[0].admit(job[1], "emergency-move")[0], storm))
    assert Counter(verdicts) == {"new": 1, "attached": 999}
    (inc,) = [i for i in a.open_incidents() if i.subject == "fts101"]
    assert inc.attached == 999 and sum(inc.sources.values()) == 1000
    assert len(a.take_pending(inc)) + len(b.take_pending(inc)) == 999


def test_a_gateway_lost_mid_storm_loses_nothing_it_answered(
    books: tuple[SharedIncidents, SharedIncidents],
) -> None:
    """Gateway A's session is killed by the server in the middle (its next call reconnects),
    then A goes altogether: what it answered is in the store, and the alerts it did not answer
    go to B, as their senders retry them."""
    a, b = books
    answered: list[Verdict] = []
    for i in range(300):
        if i == 100:
            a._run(lambda c: c.run("SELECT 1"))
            b._run(
                lambda c: c.run(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                    "application_name = 'handover-gateway' AND pid <> pg_backend_pid()"
                )
            )
        if i == 200:
            a.close()
            a._connect = _refuse  # type: ignore[method-assign]
        try:
            answered.append(a.admit(alert(), "emergency-move")[0])
        except IncidentStoreError:
            answered.append(b.admit(alert(), "emergency-move")[0])  # the sender retries at B
    assert Counter(answered) == {"new": 1, "attached": 299}
    (inc,) = [i for i in b.open_incidents() if i.subject == "fts101"]
    assert inc.attached == 299


def _refuse() -> None:
    raise IncidentStoreError("gateway A is gone")


def test_a_bad_store_url_is_refused_with_the_fix() -> None:
    with pytest.raises(IncidentStoreError, match="must be postgresql://"):
        SharedIncidents("mysql://x@y/z", 300)
    with pytest.raises(IncidentStoreError, match="cannot be reached"):
        SharedIncidents("postgresql://u:p@127.0.0.1:1/db", 300)


def test_a_gateway_whose_book_is_unreachable_answers_503(store_url: str) -> None:
    """The alert is not recorded and the sender is told to retry."""
    import asyncio

    from infra.gateway.intake import AlertIntake, PrefectUnavailable
    from tests.test_alerts import SITE

    book = SharedIncidents(store_url, 300)
    book.close()
    book._connect = _refuse  # type: ignore[method-assign]
    intake = AlertIntake(SITE, book, lambda **_: None)
    with pytest.raises(PrefectUnavailable, match="incident book did not answer"):
        asyncio.run(intake.accept(alert(), client=None))


def test_notes_claimed_by_a_gateway_that_died_are_written_by_another(
    books: tuple[SharedIncidents, SharedIncidents], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway killed between claiming notes and writing them to the run's log: after the
    claim's bound another gateway claims them again; written notes are gone for good."""
    import infra.gateway.shared_incidents as si

    a, b = books
    verdict, inc = a.admit(alert(host="fts102"), "emergency-move")
    assert verdict == "new" and inc is not None
    for _ in range(3):
        assert b.admit(alert(host="fts102"), "emergency-move")[0] == "attached"
    assert len(a.take_pending(inc)) == 3  # a claims them, then dies without writing
    assert b.take_pending(inc) == []  # claimed: not twice while a may still write them
    monkeypatch.setattr(si, "CLAIM_S", 0.5)
    time.sleep(0.7)
    again = b.take_pending(inc)
    assert [n.split(":", 1)[0] for n in again] == [f"alert attached #{i}" for i in (1, 2, 3)]
    b.notes_written(inc)
    time.sleep(0.7)
    assert a.take_pending(inc) == [] and b.take_pending(inc) == []
