"""Crash recovery's guards (flows/attempt.py): a process whose run was marked Crashed stops
before its next step; the recovery automation's runs stop a crash loop."""

from __future__ import annotations

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.states import Crashed

from flows import attempt
from flows.attempt import MAX_CRASHES, Superseded, check_current, crash_loop


def test_a_run_marked_crashed_is_superseded_before_its_next_step(
    prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []

    @flow(name="attempt-guard")
    def guarded() -> None:
        check_current()  # running: goes on
        seen.append("first step")
        ctx = FlowRunContext.get()
        assert ctx is not None and ctx.flow_run is not None
        with get_client(sync_client=True) as client:
            # what the heartbeat automation does to a run whose process it takes for dead
            client.set_flow_run_state(ctx.flow_run.id, Crashed(message="no heartbeat"), force=True)
        check_current()  # within CHECK_EVERY_S of the last read: not read again
        seen.append("within the check interval")
        monkeypatch.setattr(attempt, "CHECK_EVERY_S", 0.0)
        try:
            check_current()
        except Superseded as exc:
            seen.append(str(exc))
            return
        seen.append("second step")

    guarded()
    assert seen[:2] == ["first step", "within the check interval"]
    assert "was marked Crashed (no heartbeat)" in seen[2]
    assert "second step" not in seen


def test_outside_a_flow_run_nothing_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside a run (a procedure called in-process, a bench) no state is read: the API is not
    asked, and no check time is recorded."""
    import prefect.client.orchestration as orchestration

    asked: list[object] = []

    def no_client(*args: object, **kwargs: object) -> None:
        asked.append(args)
        raise AssertionError("check_current asked the API outside a flow run")

    monkeypatch.setattr(orchestration, "get_client", no_client)
    before = dict(attempt._checked)
    assert check_current() is None
    assert asked == [] and attempt._checked == before


def test_the_automation_stops_after_max_crashes_with_the_same_parameters() -> None:
    mine = {"host": "fts101", "alert_id": "a"}
    other = {"host": "fts102", "alert_id": "a"}
    crashed = [(i, f"run-{i}", mine) for i in range(MAX_CRASHES - 1)]
    crashed += [(90, "other-host", other), (91, "other-host-2", other), (92, "x", other)]
    assert crash_loop(99, mine, crashed) is None
    crashed.append((MAX_CRASHES, "run-last", mine))
    reason = crash_loop(99, mine, crashed)
    assert reason is not None
    assert f"crashed {MAX_CRASHES} times" in reason and "run-0" in reason
    # the run itself is not counted
    assert crash_loop(MAX_CRASHES, mine, crashed) is None
