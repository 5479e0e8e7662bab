"""Resuming a paused run with its approval input: Prefect saves the input's schema only after
the run is Paused, and refuses input in between; `resume_with_input` waits that moment out."""

from __future__ import annotations

from typing import Any

import pytest

from flows import approval
from flows.approval import SCHEMA_NOT_YET, resume_with_input


def _prefect(refusals: list[str]) -> tuple[list[Any], Any]:
    calls: list[Any] = []

    def resume(run_id: Any, run_input: dict[str, Any]) -> None:
        calls.append((run_id, run_input))
        if refusals:
            raise RuntimeError(f"Cannot resume this run: {refusals.pop(0)}")

    return calls, resume


def test_input_refused_before_its_schema_is_saved_is_given_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls, resume = _prefect([f"{SCHEMA_NOT_YET}.", f"{SCHEMA_NOT_YET}."])
    monkeypatch.setattr(approval, "resume_flow_run", resume)
    resume_with_input("run-1", {"decision": "approve", "who": "alice"})
    assert calls == [("run-1", {"decision": "approve", "who": "alice"})] * 3


def test_any_other_refusal_is_raised_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls, resume = _prefect(["Run is not paused."])
    monkeypatch.setattr(approval, "resume_flow_run", resume)
    with pytest.raises(RuntimeError, match="Run is not paused"):
        resume_with_input("run-1", {"decision": "reject", "who": "bob"})
    assert len(calls) == 1


def test_a_schema_that_never_appears_is_refused_after_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls, resume = _prefect([SCHEMA_NOT_YET] * 1000)
    monkeypatch.setattr(approval, "resume_flow_run", resume)
    with pytest.raises(RuntimeError, match=SCHEMA_NOT_YET):
        resume_with_input("run-1", {"decision": "approve", "who": "carol"}, wait_s=0.3)
    assert 2 <= len(calls) < 10
