"""The hand-over verb's decisions, with the stop, the database link and the channel verb faked
at the verb's own seams (the lab runs the real thing: `tests/test_clean_move_flow.py`)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from config.loader import load_site
from config.site import Site
from tasks import hand_over as ho
from tasks.adapters.db import DatabaseUnavailable, DbSession
from tasks.outcome import StepFailed, StepResult, now
from tests.conftest import LAB_SITE

AGENT = "glite-transfer-channel-agent-urlcopy-CERN-RAL"


def _site(statement: bool = True) -> Site:
    site = load_site(LAB_SITE)
    assert site.database is not None
    extra = (
        {
            "channel_states_query": "SELECT name, state FROM channels",
            "channel_set_statement": "UPDATE channels SET state = :state WHERE name = :channel",
        }
        if statement
        else {}
    )
    return site.model_copy(update={"database": site.database.model_copy(update=extra)})


class FakeLink:
    """The agent's session is listed until `released` is set; writes are recorded."""

    def __init__(self, sessions: bool = True, missed: list[str] | None = None) -> None:
        self.sessions_seen = sessions
        self.released = threading.Event()
        self.missed = missed or []
        self.writes: list[tuple[list[str], str]] = []
        self.states: dict[str, str] = {}
        #: set by the first write: the fake stop returns only after it (or after its bound)
        self.written = threading.Event()
        #: when the session went away and when the first write came (`now()`)
        self.released_at: Any = None
        self.written_at: Any = None

    def release(self) -> None:
        self.released_at = now()
        self.released.set()

    def sessions(self, names: Any, address: Any, program: str | None) -> list[DbSession]:
        if not self.sessions_seen or self.released.is_set():
            return []
        return [DbSession(id="4242", machine="fts101", program=program or "")]

    def write_channel_states(self, channels: list[str], state: str) -> list[str]:
        self.writes.append((list(channels), state))
        self.written_at = self.written_at or now()
        self.written.set()
        for c in channels:
            if c not in self.missed:
                self.states[c] = state
        return list(self.missed)

    def channel_states(self) -> dict[str, str]:
        return dict(self.states)


class Shell:
    def __init__(self, site: Site) -> None:
        self.site = site


def _result(verb: str) -> StepResult:
    return StepResult(host="fts101", verb=verb, sentence="ok", started_at=now(), ended_at=now())


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """`link`: the database; `stop`: what the stop does (it releases the session first unless
    told not to); `set_channels`: calls of the channel verb."""
    box: dict[str, Any] = {"link": FakeLink(), "release": True, "stop_error": None}
    box["stop_returned"] = []
    calls: list[tuple[str, list[str]]] = []
    box["set_channels"] = calls

    @contextmanager
    def borrowed(site: Site) -> Iterator[FakeLink]:
        if box.get("db_down"):
            raise DatabaseUnavailable("the postgresql database at 127.0.0.1:5432 did not answer")
        yield box["link"]

    def stop_agents(shell: Any, host: str, agents: list[str], read_first: bool) -> StepResult:
        assert not read_first
        if box["release"]:
            box["link"].release()
            # the command and its check return after the agent let go: here, once the verb
            # wrote the channel (bounded, for the cases in which it must not write)
            box["link"].written.wait(1.0)
        box["stop_returned"].append(now())
        if box["stop_error"] is not None:
            raise box["stop_error"]
        return _result("stop-agents")

    def set_channels(
        shell: Any, host: str, channels: list[str], state: str, read_first: bool
    ) -> StepResult:
        calls.append((host, list(channels)))
        if box.get("set_error"):
            raise box["set_error"]
        return _result("set-channels-active")

    monkeypatch.setattr(ho, "borrowed", borrowed)
    monkeypatch.setattr(ho, "stop_agents", stop_agents)
    monkeypatch.setattr(ho, "set_channels", set_channels)
    yield box


def run(site: Site | None = None) -> StepResult:
    return ho.hand_over(Shell(site or _site()), "fts101", [AGENT], ["CERN-RAL"], "fts102")  # type: ignore[arg-type]


def test_the_channel_goes_active_once_the_session_is_gone_before_the_stop_returns(
    fakes: dict[str, Any],
) -> None:
    res = run()
    assert fakes["link"].writes == [(["CERN-RAL"], "Active")]
    assert fakes["set_channels"] == []
    # the write's moment, while the stop had not returned yet
    (returned,) = fakes["stop_returned"]
    assert res.acted_at is not None and res.acted_at <= returned
    # from the watch seeing the session gone to the write: within the fake's own span from the
    # session's end to the write (never the stop's time, never negative)
    link = fakes["link"]
    span = (link.written_at - link.released_at).total_seconds()
    assert 0 <= res.measures["active_after_let_go_s"] <= span + 0.001, (res.measures, span)
    assert "as soon as its DB session ended" in res.sentence
    assert res.changed == [AGENT, "CERN-RAL"] and res.human == []


def test_a_stop_that_fails_after_the_agent_let_go_asks_a_human_and_keeps_the_channel(
    fakes: dict[str, Any],
) -> None:
    fakes["stop_error"] = StepFailed("fts101: still running", host="fts101", verb="stop-agents")
    res = run()
    assert fakes["link"].states == {"CERN-RAL": "Active"}
    assert len(res.human) == 1 and "check on fts101 that no process of it is left" in res.human[0]
    assert "still running" in res.sentence


def test_a_stop_that_fails_while_the_session_is_open_writes_nothing(
    fakes: dict[str, Any],
) -> None:
    fakes["release"] = False
    fakes["stop_error"] = StepFailed("fts101: still running", host="fts101", verb="stop-agents")
    with pytest.raises(StepFailed, match="still running") as failed:
        run()
    assert fakes["link"].writes == [] and fakes["set_channels"] == []
    assert not hasattr(failed.value, "stopped_agents")


@pytest.mark.parametrize(
    ("case", "why"),
    [
        ("no-session", "no DB session of it from fts101 was seen"),
        ("db-down", "the database did not answer"),
        ("no-statement", "the site's database cannot tell the agent's session"),
    ],
)
def test_without_the_watch_the_channel_is_set_after_the_stop(
    fakes: dict[str, Any], case: str, why: str
) -> None:
    site = _site(statement=case != "no-statement")
    if case == "no-session":
        fakes["link"] = FakeLink(sessions=False)
    fakes["db_down"] = case == "db-down"
    res = run(site)
    assert fakes["link"].writes == []
    assert fakes["set_channels"] == [("fts102", ["CERN-RAL"])]
    assert f"CERN-RAL Active after the stop ({why})" in res.sentence


def test_a_channel_the_write_missed_is_set_by_the_channel_verb(fakes: dict[str, Any]) -> None:
    fakes["link"] = FakeLink(missed=["CERN-RAL"])
    res = run()
    assert fakes["set_channels"] == [("fts102", ["CERN-RAL"])]
    assert "Active after the stop" in res.sentence


def test_a_failure_after_the_stop_names_the_stopped_agents_for_the_ledger(
    fakes: dict[str, Any],
) -> None:
    fakes["link"] = FakeLink(sessions=False)
    fakes["set_error"] = StepFailed("fts102: could not set CERN-RAL", host="fts102", verb="x")
    with pytest.raises(StepFailed) as failed:
        run()
    assert failed.value.stopped_agents == [AGENT]  # type: ignore[attr-defined]
