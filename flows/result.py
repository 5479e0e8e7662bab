"""The typed result of every procedure: one shape, rendered as the run's report and its JSON.

`ProcedureResult` holds what every procedure reports (status, summary, the steps with their
outcome sentences, where each agent ended, the channels, what a human must do); a procedure's
result adds its own fields (a clean move's downtime, an emergency move's case).
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, Field

from flows.approval import ApprovalRecord
from flows.plans.model import AgentOutcome

Status = Literal["completed", "partial", "failed", "refused", "rejected", "dry-run", "cancelled"]
Outcome = Literal["done", "failed", "compensation", "forced", "recovered"]


class StepRecord(BaseModel):
    """One executed step: its outcome sentence and its times."""

    step: str
    verb: str
    host: str
    agents: list[str] = Field(default_factory=list)
    channels: list[str] = Field(default_factory=list)
    outcome: Outcome
    sentence: str
    commands: list[str] = Field(default_factory=list)
    #: what the verb changed (agents, channels or DB sessions), for counts in the summary
    changed: list[str] = Field(default_factory=list)
    started_at: dt.datetime
    ended_at: dt.datetime
    #: time spent in the remote commands (or the necessary wait) of the step itself, without
    #: the orchestration around it
    remote_s: float = 0.0
    #: what the host's own tools reported (YAIM's list of changes)
    report: list[str] = Field(default_factory=list)
    #: figures the verb measured (each agent's seconds down across a restart)
    measures: dict[str, float] = Field(default_factory=dict)


class Timing(BaseModel):
    """Where the time went: the flow against the remote work it could not avoid."""

    flow_wall_s: float
    act_wall_s: float
    critical_path_s: float
    snapshots_s: float
    human_wait_s: float = 0.0
    #: time held before acting until the requested start (`start_at`)
    held_s: float = 0.0

    @property
    def overhead_ratio(self) -> float:
        """Flow wall time (less any wait for a human or for the requested start) over remote
        commands + necessary waits (1.0 = no overhead)."""
        need = self.critical_path_s + self.snapshots_s
        spent = self.flow_wall_s - self.human_wait_s - self.held_s
        return round(spent / need, 3) if need > 0 else 0.0


class ProcedureResult(BaseModel):
    """What every procedure's run returns (its state's data) and reports."""

    procedure: str
    site: str
    status: Status
    summary: str
    requested_by: str = ""
    approval: ApprovalRecord | None = None
    steps: list[StepRecord] = Field(default_factory=list)
    agents: list[AgentOutcome] = Field(default_factory=list)
    channels: dict[str, str] = Field(default_factory=dict)
    where: dict[str, list[str]] = Field(default_factory=dict)
    human_actions: list[str] = Field(default_factory=list)
    notifications: str = ""
    timing: Timing | None = None
    started_at: dt.datetime
    ended_at: dt.datetime
    flow_run_id: str | None = None

    def report_head(self, title: str, *lead: str) -> list[str]:
        """The opening of every procedure's report, as markdown lines (pure).

        The title with the status, the summary, the `lead` lines (what else belongs before
        anything a human reads next), the approval, then what a human must still do.

        Args:
            title: what ran, e.g. ``Clean move fts101 -> fts102``.
            lead: lines that follow the summary.
        """
        lines = [f"# {title}: {self.status.upper()}", "", self.summary, ""]
        for line in lead:
            lines += [line, ""]
        if self.approval is not None:
            lines += [f"Approval: {self.approval.sentence()}", ""]
        if self.human_actions:
            lines += ["## A human must act", "", *[f"- {h}" for h in self.human_actions], ""]
        return lines


#: `AgentOutcome` is the pure core's (its verifications build it); results carry it
__all__ = ["AgentOutcome", "Outcome", "ProcedureResult", "Status", "StepRecord", "Timing"]
