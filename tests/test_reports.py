"""Every procedure's report opens the same way (`ProcedureResult.report_head`): what ran and its
status, the summary, who approved, then what a human must still do, before any detail."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest

from flows import clean_move, drop_db_lock, emergency_move, fence_host, rolling_upgrade, switch
from flows.approval import ApprovalRecord

pytestmark = pytest.mark.unit
AT = dt.datetime(2026, 12, 6, 3, 0, tzinfo=dt.UTC)
APPROVAL = ApprovalRecord(decision="approve", who="@oncall", source="slack", decided_at=AT)
HUMAN = ["on fts102 run `service fts-agents start`"]

# each procedure's result class, its own fields, its report, and the title the report gives it
REPORTS: dict[str, tuple[Any, dict[str, Any], Callable[[Any], str], str]] = {
    "clean-move": (
        clean_move.CleanMoveResult,
        {
            "from_host": "fts101",
            "to_host": "fts102",
            "mode": "full",
            "dry_run": False,
            "forced": False,
        },
        clean_move.report_markdown,
        "Clean move fts101 -> fts102",
    ),
    "drop-db-lock": (
        drop_db_lock.DropDbLockResult,
        {"host": "fts105", "agent": None, "dry_run": False},
        drop_db_lock.report_markdown,
        "drop-db-lock fts105",
    ),
    "emergency-move": (
        emergency_move.EmergencyResult,
        {"host": "fts101", "case": "B", "why": "SSH refused"},
        emergency_move.report_markdown,
        "Emergency move of fts101",
    ),
    "fence-host": (
        fence_host.FenceResult,
        {"host": "fts101"},
        fence_host.report_markdown,
        "fence-host fts101",
    ),
    "switch": (
        switch.SwitchResult,
        {"master": "fts101", "to": "fts102"},
        switch.report_markdown,
        "Switch fts101 → fts102",
    ),
    "rolling-upgrade": (
        rolling_upgrade.UpgradeResult,
        {"version": "3.7.2"},
        rolling_upgrade.report_markdown,
        "Rolling upgrade of lab",
    ),
}


@pytest.mark.parametrize("procedure", sorted(REPORTS))
def test_a_report_opens_with_status_summary_approval_and_what_a_human_must_do(
    procedure: str,
) -> None:
    cls, fields, report, title = REPORTS[procedure]
    result = cls(
        site="lab",
        status="failed",
        summary="stopped after the first host",
        approval=APPROVAL,
        human_actions=HUMAN,
        started_at=AT,
        ended_at=AT,
        **fields,
    )
    lines = report(result).splitlines()
    assert lines[0] == f"# {title}: FAILED"
    assert lines[2] == "stopped after the first host"
    approval = lines.index(f"Approval: {APPROVAL.sentence()}")
    must = lines.index("## A human must act")
    assert lines[must + 2] == f"- {HUMAN[0]}"
    assert approval < must, "the approval comes before what a human must do"
    # nothing but the lead lines between the summary and the approval
    assert all(not line.startswith("#") for line in lines[3:approval])


def test_without_approval_or_human_action_the_report_says_neither() -> None:
    result = fence_host.FenceResult(
        site="lab", status="completed", summary="done", host="fts101", started_at=AT, ended_at=AT
    )
    text = fence_host.report_markdown(result)
    assert "Approval:" not in text and "A human must act" not in text


def test_a_report_the_api_cannot_store_does_not_fail_the_run(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The report is published after the work is done: an API that answers 500 then (a server
    process lost, Redis restarting) leaves the run's outcome as it was, and the report goes to
    the log instead."""
    from flows import procedure

    def refuse(**kw: Any) -> None:
        raise RuntimeError("Server error '500 Internal Server Error' for url '/api/artifacts/'")

    monkeypatch.setattr(procedure, "create_markdown_artifact", refuse)
    result = fence_host.FenceResult(
        site="lab", status="completed", summary="done", host="fts101", started_at=AT, ended_at=AT
    )
    with caplog.at_level("WARNING", logger="handover.report"):
        state = procedure.end(result, fence_host.report_markdown)
    assert state.is_completed() and state.message == "done"
    assert "could not be published" in caplog.text
    assert fence_host.report_markdown(result).splitlines()[0] in caplog.text
    failed = result.model_copy(update={"status": "failed", "summary": "stopped"})
    assert procedure.end(failed, fence_host.report_markdown).is_failed()
