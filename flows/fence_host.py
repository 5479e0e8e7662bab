"""Flow `fence-host`: a host back after an emergency move must not serve its moved agents again.

The same skeleton as every procedure: the run's thread and SSH client, the service lock (no
other procedure acts on the same agents meanwhile), a snapshot of the host and of its agents'
other hosts, the plan (`flows.plans.fence_host`: list in the host's `.disabled` file every agent
of it that runs on its other host, and stop those that run on both), the site's approval policy
for fence-host, the executor, a verification from a fresh snapshot of the host, the report.
"""

from __future__ import annotations

import getpass
from typing import Any, Literal

from prefect import flow
from prefect.client.schemas.objects import State

from config.site import short_name
from flows.executor import Executor
from flows.notify import mrkdwn
from flows.plans.emergency_move import partners
from flows.plans.fence_host import PROCEDURE, FencePlan, FenceRequest, plan_fence_host
from flows.plans.model import steps_markdown
from flows.plans.snapshot import HostWithPartners, SiteSnapshot
from flows.plans.verify import verify_fence_host
from flows.plans.words import count
from flows.procedure import Finish, Finisher, Run, locked, procedure_run, unknown_host
from flows.result import ProcedureResult
from flows.run_site import load_run_site
from tasks.outcome import now
from tasks.site_state import snapshot_host, snapshot_site


class FenceResult(ProcedureResult):
    """The typed result of fence-host."""

    procedure: str = PROCEDURE
    host: str
    status: Literal["completed", "failed", "refused", "rejected"]
    plan: FencePlan | None = None


@flow(name=PROCEDURE, persist_result=False)
def fence_host(
    site_file: str,
    host: str,
    requested_by: str = "",
    pause_for_approval: bool | None = None,
) -> State[Any]:
    """List the host's moved agents in its `.disabled` file and stop those that run twice.

    Args:
        site_file: the site file.
        host: the host that came back.
        requested_by: who asked (an operator, a procedure's report).
        pause_for_approval: ask a human first (default: the site's policy for fence-host).

    Returns:
        A Completed state (completed, rejected) or a Failed one (failed, refused) whose message
        says what was fenced or why not; its data is the `FenceResult`.
    """
    started = now()
    site = load_run_site(site_file)
    who = requested_by or getpass.getuser()
    finish = Finisher(
        FenceResult,
        report_markdown,
        site=site.site,
        host=host,
        requested_by=who,
        started_at=started,
    )
    if refusal := unknown_host(site, host):
        return finish("refused", refusal)
    with procedure_run(site, PROCEDURE, f"{host} is back", who, {"host": host}) as run:
        finish.run = run
        return locked(
            site,
            PROCEDURE,
            finish,
            lambda: _fence(run, host, who, pause_for_approval, finish),
            subject=host,
        )


def _fence(run: Run, host: str, who: str, pause: bool | None, finish: Finish) -> State[Any]:
    """Snapshot, plan, approve, execute, verify, report."""
    shell, site = run.shell, run.shell.site
    snap = snapshot_host(shell, host)
    others = (
        snapshot_site(shell, partners(site, host))
        if snap.reachable
        else SiteSnapshot(site=site.site, taken_at=now(), hosts=[])
    )
    plan = plan_fence_host(
        site, HostWithPartners(host=snap, partners=others), FenceRequest(host=host)
    )
    if not plan.ok:
        return finish("refused", "; ".join(plan.problems), plan=plan)
    if not plan.moved:
        return finish(
            "completed",
            f"{host}: nothing to fence ({plan.configured} agents, none moved)",
            plan=plan,
        )
    what = f"fence-host of {host}: {count(len(plan.moved), 'agent')} served elsewhere"
    approval = run.approve(
        site.policy(PROCEDURE),
        pause,
        who,
        what,
        [
            mrkdwn("Site *{}*, requested by {}.", site.site, who),
            mrkdwn(
                "*Listed in {}*: {}",
                site.commands.disabled_file,
                ", ".join(short_name(a) for a in plan.moved),
            ),
            mrkdwn(
                "*Stopped there* (they run on both hosts): {}",
                ", ".join(short_name(a) for a in plan.twice) or "none",
            ),
        ],
    )
    if not approval.approved:
        return finish(
            "rejected", f"{approval.sentence()}; nothing changed", approval=approval, plan=plan
        )
    executor = Executor(shell, plan)
    executor.execute()
    after = snapshot_host(shell, host)
    human = [*executor.human, *verify_fence_host(plan, after).human]
    listed = [a for r in executor.records if r.verb == "write-disabled" for a in r.changed]
    failed = bool(executor.failed_chains) or bool(human)
    summary = (
        f"{host}: fencing failed: " + "; ".join(human)
        if failed
        else f"{host} fenced: {count(len(plan.moved), 'agent')} served elsewhere are listed in "
        f"{site.commands.disabled_file} ({len(listed)} newly), "
        f"{count(len(plan.twice), 'agent')} stopped there"
    )
    return finish(
        "failed" if failed else "completed",
        summary,
        approval=approval,
        plan=plan,
        steps=executor.records,
        human_actions=human,
    )


def report_markdown(r: FenceResult) -> str:
    """The report as markdown (pure)."""
    lines = r.report_head(f"fence-host {r.host}")
    if r.plan is not None and r.plan.ok and r.plan.phases:
        lines += ["## The plan", *steps_markdown(r.plan), ""]
    if r.steps:
        lines += ["## What was done", ""] + [f"1. {s.sentence}" for s in r.steps]
    return "\n".join(lines)
