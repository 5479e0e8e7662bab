"""Flow `drop-db-lock`: kill the database sessions that come from a machine (optionally one
agent's) and verify they are gone.

An emergency move uses the same verb when the primary cannot be reached and its agents' sessions
hold the locks the backup's agents wait for; run on its own, it has the skeleton of every
procedure: the run's thread, the service lock, the listing of the sessions, the plan
(`flows.plans.drop_db_lock`), the site's approval policy, the executor (the one retry rule), a
verification from a fresh listing, the report.
"""

from __future__ import annotations

import getpass
from typing import Any, Literal

from prefect import flow
from prefect.artifacts import create_table_artifact
from prefect.client.schemas.objects import State
from pydantic import Field, model_validator

from flows.executor import Executor
from flows.notify import mrkdwn
from flows.plans.drop_db_lock import (
    PROCEDURE,
    DbSessions,
    DropDbLockPlan,
    DropDbLockRequest,
    FoundSession,
    plan_drop_db_lock,
    sessions_left,
)
from flows.plans.model import steps_markdown
from flows.plans.words import count
from flows.procedure import Finish, Finisher, Run, locked, procedure_run, unknown_host
from flows.result import ProcedureResult, StepRecord
from flows.run_site import load_run_site
from tasks.adapters.db import DatabaseUnavailable
from tasks.db_sessions import find_sessions
from tasks.outcome import now


class DropDbLockResult(ProcedureResult):
    """What was found, what was killed, and what is left."""

    procedure: str = PROCEDURE
    status: Literal["completed", "failed", "refused", "rejected", "dry-run"]
    host: str
    agent: str | None
    dry_run: bool
    found: list[FoundSession] = Field(default_factory=list)
    #: the outcome sentence of the kill (or of the dry run, or why nothing was done)
    sentence: str = ""
    #: the kill's record (None: nothing was killed)
    step: StepRecord | None = None
    plan: DropDbLockPlan | None = None

    @model_validator(mode="after")
    def _said(self) -> DropDbLockResult:
        if not self.sentence:
            self.sentence = self.summary
        return self


@flow(name=PROCEDURE, persist_result=False)
def drop_db_lock(
    site_file: str,
    host: str,
    agent: str | None = None,
    dry_run: bool = False,
    requested_by: str = "",
    pause_for_approval: bool | None = None,
) -> State[Any]:
    """Kill the DB sessions from `host` (of `agent` only, when given) and verify they are gone.

    Args:
        site_file: the site file (its `database` section says which database and how to log in).
        host: the machine whose sessions go.
        agent: only the sessions of this agent (its program / application name).
        dry_run: list the sessions and kill nothing.
        requested_by: who asked.
        pause_for_approval: ask a human first (default: the site's policy for drop-db-lock).

    Returns:
        A Completed state (completed, dry-run, rejected) or a Failed one (failed, refused)
        whose data is the `DropDbLockResult`.
    """
    started = now()
    site = load_run_site(site_file)
    who = requested_by or getpass.getuser()
    whose = f" of {agent}" if agent else ""
    params = {"host": host, "agent": agent or "", "dry_run": dry_run}
    finish = Finisher(
        DropDbLockResult,
        report_markdown,
        site=site.site,
        host=host,
        agent=agent,
        dry_run=dry_run,
        requested_by=who,
        started_at=started,
    )
    if refusal := unknown_host(site, host):
        return finish("refused", refusal)
    with procedure_run(site, PROCEDURE, f"DB sessions from {host}{whose}", who, params) as run:
        finish.run = run
        return locked(
            site,
            PROCEDURE,
            finish,
            lambda: _drop(run, host, agent, dry_run, who, pause_for_approval, finish),
            subject=host,
        )


def _listing(run: Run, host: str, agent: str | None) -> list[FoundSession]:
    return [
        FoundSession(id=s.id, machine=s.machine, program=s.program)
        for s in find_sessions(run.shell.site, host, agent)
    ]


def _drop(
    run: Run,
    host: str,
    agent: str | None,
    dry_run: bool,
    who: str,
    pause: bool | None,
    finish: Finish,
) -> State[Any]:
    """List, plan, approve, execute, verify, report."""
    site = run.shell.site
    whose = f" of {agent}" if agent else ""
    try:
        found = _listing(run, host, agent)
    except (DatabaseUnavailable, ValueError) as exc:
        return finish("failed", f"could not list the DB sessions from {host}: {exc}")
    create_table_artifact(
        key="drop-db-lock-sessions",
        table=[s.model_dump() for s in found],
        description=f"DB sessions from {host}{whose}",
    )
    plan = plan_drop_db_lock(
        site, DbSessions(found=found), DropDbLockRequest(host=host, agent=agent)
    )
    known: dict[str, Any] = {"plan": plan, "found": found}
    if not plan.ok:
        return finish("refused", "; ".join(plan.problems), **known)
    if dry_run:
        summary = f"dry run: {count(len(found), 'DB session')} from {host}{whose}; nothing killed"
        return finish("dry-run", summary, **known)
    if not plan.phases:
        return finish("completed", "; ".join(plan.notes), **known)
    what = f"drop-db-lock: kill {count(len(found), 'DB session')} from {host}{whose}"
    approval = run.approve(
        site.policy(PROCEDURE),
        pause,
        who,
        what,
        [
            mrkdwn("Site *{}*, requested by {}.", site.site, who),
            mrkdwn("*Sessions*: {}", ", ".join(f"{s.program} ({s.id})" for s in found)),
        ],
    )
    if not approval.approved:
        return finish(
            "rejected", f"{approval.sentence()}; nothing changed", approval=approval, **known
        )
    executor = Executor(run.shell, plan)
    executor.execute()
    kill = next((r for r in executor.records if r.outcome == "done"), None)
    try:
        left = sessions_left(plan, _listing(run, host, agent))
        human = [
            f"DB session {s.id} of {s.program} from {host} is still there; kill it on the "
            "database server"
            for s in left
        ]
    except (DatabaseUnavailable, ValueError) as exc:
        human = [f"could not list the DB sessions from {host} after the kill: {exc}"]
    human = [*executor.human, *human]
    failed = bool(executor.failed_chains) or bool(human)
    sentence = (
        kill.sentence if kill is not None else "; ".join(r.sentence for r in executor.records)
    )
    return finish(
        "failed" if failed else "completed",
        sentence + ("; a human must act" if failed else ""),
        sentence=sentence,
        step=kill,
        approval=approval,
        steps=executor.records,
        human_actions=human,
        **known,
    )


def report_markdown(r: DropDbLockResult) -> str:
    """The report as markdown (pure)."""
    lines = r.report_head(f"drop-db-lock {r.host}")
    if r.found:
        lines += ["## Sessions found", ""] + [
            f"- {s.id}: {s.program} from {s.machine}" for s in r.found
        ]
    if r.plan is not None and r.plan.phases:
        lines += ["", "## The plan", *steps_markdown(r.plan)]
    return "\n".join(lines)
