"""Flow `emergency-move`: move every agent of a failed host to its backup now.

Running transfers on the failed host are given up (their agent marks them failed when it starts
on the backup; the VO's retry policy retries them); there is no drain. The flow probes the host's
SSH port, snapshots what it can, and the planner (`flows.plans.emergency_move`) takes the
case (A, B or C) on its own, saying which and why:

* **A**, the host answers SSH: write the `.disabled` entries, stop its agents, start them on the
  backup.
* **B**, the host answers on the network but SSH does not work: launch the agents on the backup
  as hot standbys (each waits for the DB lock still held by the host's sessions), kill the host's
  DB sessions while they wait, collect each standby as it takes its lock and set its channels
  Active, then try, with a bound, to stop the host's agents cleanly.
* **C**, the host does not answer at all (a probe bounded by `ssh.probe_timeout_s`): the same
  standbys, kill and collection; the host is recorded as unreachable for the run, so nothing
  waits on a connect to it.

The site's policy says whether to run at once or to ask first; an emergency policy may proceed when
nobody answers within the approval timeout. Afterwards every agent runs on its backup and its
channel is Active; the report says what was done and what a human must still do (`fence-host`
when the host comes back).
"""

from __future__ import annotations

import getpass
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.client.schemas.objects import State
from pydantic import Field

from config.site import short_name
from flows import progress
from flows.approval import approve, automatic_path_proven
from flows.executor import Executor
from flows.notify import Mrkdwn, mrkdwn
from flows.plans.emergency_move import (
    PROCEDURE,
    Case,
    EmergencyPlan,
    EmergencyRequest,
    partners,
    plan_emergency_move,
)
from flows.plans.model import steps_markdown
from flows.plans.snapshot import HostWithPartners
from flows.plans.verify import verify_emergency_move
from flows.plans.words import count
from flows.procedure import Finish, Finisher, Run, locked, procedure_run, unknown_host
from flows.result import ProcedureResult
from flows.run_site import load_run_site
from tasks.db_sessions import DatabaseUnavailable, find_sessions
from tasks.outcome import now
from tasks.probe import probe_tcp
from tasks.site_state import HostSnapshot, snapshot_host, snapshot_site

__all__ = ["EmergencyResult", "emergency_move", "report_markdown"]

#: a second host's emergency move (two boxes of one service lost together) waits this long for
#: the first to release the service instead of being refused; the same host's is refused at once
#: (the first run moves its agents). Moves of other services, which have locks of their own, run
#: at the same time.
QUEUE_S = 900.0


class EmergencyResult(ProcedureResult):
    """The typed result of an emergency move."""

    procedure: str = PROCEDURE
    host: str
    case: Case | None = None
    why: str = ""
    status: Literal["completed", "failed", "refused", "rejected"]
    alert_id: str = ""
    plan: EmergencyPlan | None = None
    #: every outcome sentence, in order
    actions: list[str] = Field(default_factory=list)
    transfers_given_up: int | None = None
    sessions_killed: int = 0
    lock_wait_s: float | None = None


@flow(name=PROCEDURE, persist_result=False)
def emergency_move(
    site_file: str,
    host: str,
    requested_by: str = "",
    pause_for_approval: bool | None = None,
    alert_id: str = "",
    alert_seal: str = "",
) -> State[Any]:
    """Move every agent of `host` to its other host now (see the module docstring).

    Args:
        site_file: the site file.
        host: the failed (or failing) host.
        requested_by: who or what asked (an operator, an alert).
        pause_for_approval: ask a human first (default: the site's policy for emergency-move;
            with an emergency policy, no answer within the timeout means proceed).
        alert_id: the id of the alert event that started the run (set by the deployment's
            trigger; the gateway attaches later alerts for the host to this run).
        alert_seal: the gateway's seal of that alert (`flows.seals`, set by the trigger): only
            a run called in-process or carrying it may proceed when an approval the site asks
            for times out (an emergency policy); any other treats the timeout as a rejection.

    Returns:
        A Completed state (completed, rejected) or a Failed one (failed, refused) whose data is
        the `EmergencyResult`.
    """
    started = now()
    site = load_run_site(site_file)
    who = requested_by or getpass.getuser()
    finish = Finisher(
        EmergencyResult,
        report_markdown,
        site=site.site,
        host=host,
        requested_by=who,
        alert_id=alert_id,
        started_at=started,
    )
    if refusal := unknown_host(site, host):
        return finish("refused", refusal)
    params = {"host": host, "alert": alert_id}
    with procedure_run(site, PROCEDURE, f"{host} failed", who, params) as run:
        finish.run = run

        def body() -> State[Any]:
            automatic = automatic_path_proven(site, alert_id, alert_seal, host)
            return _emergency(run, host, who, pause_for_approval, finish, automatic)

        return locked(site, PROCEDURE, finish, body, subject=host, wait_s=QUEUE_S)


def _emergency(
    run: Run,
    host: str,
    who: str,
    pause: bool | None,
    finish: Finish,
    automatic: bool = True,
) -> State[Any]:
    shell, thread, site = run.shell, run.thread, run.shell.site
    # snapshot: what the host's SSH port does (a short probe: a silent host costs its bound
    # once, and is recorded so that no step of the run waits on a connect to it), the host
    # itself if SSH works, and its partners, read meanwhile
    h = site.host(host)
    with ThreadPoolExecutor(max_workers=1) as ex:
        read_partners = ex.submit(snapshot_site, shell, partners(site, host))
        reach = probe_tcp(h.address, h.port, site.ssh.probe_timeout_s)
        if reach == "silent":
            shell.mark_unreachable(
                host, f"its SSH port did not answer within {site.ssh.probe_timeout_s:g} s"
            )
        snap: HostSnapshot | None = None
        if reach == "open":
            snap = snapshot_host(shell, host)
            if not snap.reachable:
                snap = None
        others = read_partners.result()
    sessions_of: list[str] = []
    if snap is not None and site.database is not None:
        # which agents still have a DB session from the host: one that runs nowhere was lost
        try:
            sessions_of = sorted({s.program for s in find_sessions(site, host)})
        except (DatabaseUnavailable, ValueError) as exc:
            get_run_logger().warning("could not list the DB sessions from %s: %s", host, exc)
    # plan
    plan = plan_emergency_move(
        site,
        HostWithPartners(host=snap, partners=others),
        EmergencyRequest(host=host, reach=reach, sessions_of=sessions_of),
    )
    create_markdown_artifact(key="emergency-move-plan", markdown=plan_markdown(plan))
    actions = list(plan.notes)
    for sentence in plan.notes:
        progress.emit("step-sentence", sentence=sentence)
    known: dict[str, Any] = dict(
        case=plan.case, why=plan.why, plan=plan, transfers_given_up=plan.transfers_given_up
    )
    if not plan.ok:
        return finish(
            "refused",
            "pre-checks failed, nothing changed: " + "; ".join(plan.problems),
            actions=actions,
            **known,
        )
    # approve
    what = f"emergency move of {count(len(plan.moves), 'agent')} off {host} (case {plan.case})"
    shown = ", ".join(f"{short_name(m.agent)} → {m.to}" for m in plan.moves) or "none"
    policy = site.policy(PROCEDURE)
    if not automatic and policy.on_approval_timeout == "proceed":
        # silence means "go" only for a failure the gateway vouched for
        said = (
            "this run was created through the Prefect API without the gateway's seal of an "
            "alert: an approval that times out rejects it (the emergency policy's proceed "
            "holds for alerts only)"
        )
        get_run_logger().warning("%s", said)
        progress.emit("step-sentence", sentence=said)
        policy = policy.model_copy(update={"on_approval_timeout": "reject"})
    approval = approve(
        policy,
        pause,
        who,
        what,
        announce=lambda: thread.request(
            what,
            [
                mrkdwn(
                    "Site *{}*, requested by {}. Case {}: {}.", site.site, who, plan.case, plan.why
                ),
                mrkdwn("*Moves*: {}", shown),
                Mrkdwn(
                    "*Impact*: transfers running on the failed host are marked failed and "
                    "retried by the VO's retry policy; the channels stay Active."
                ),
            ],
        ),
        conclude=thread.decided,
        slack=site.slack,
    )
    if not approval.approved:
        return finish(
            "rejected",
            f"{approval.sentence()}; nothing changed",
            approval=approval,
            actions=actions,
            **known,
        )
    # execute
    executor = Executor(shell, plan)
    executor.execute()
    # verify: each agent runs on its target, each moved channel is Active there
    after = snapshot_site(shell, plan.targets()) if plan.moves else None
    verdict = verify_emergency_move(plan, after)
    agents = verdict.agents
    ok = verdict.status == "completed" and not executor.failed_chains
    killed = sum(
        len(r.changed)
        for r in executor.records
        if r.verb == "drop-sessions" and r.outcome == "done"
    )
    lock_wait = (
        executor.phase_s.get(plan.phases[0].name) if plan.case != "A" and plan.phases else None
    )
    human = [*plan.human, *executor.human, *verdict.human]
    transfers = plan.transfers_given_up
    summary = (
        f"{host} (case {plan.case}): "
        + (
            f"{count(sum(1 for a in agents if a.running_on), 'agent')} of {len(agents)} "
            "moved off it"
            if agents
            else "no agent of it needed moving"
        )
        + (f"; {killed} DB session(s) of {host} killed" if killed else "")
        + (f"; {transfers} running transfer(s) given up" if transfers else "")
        + ("; a human must act" if human else "")
    )
    return finish(
        "completed" if ok else "failed",
        summary,
        approval=approval,
        actions=actions + [r.sentence for r in executor.records],
        steps=executor.records,
        agents=agents,
        where={a.agent: a.running_on for a in agents},
        channels=verdict.channels,
        human_actions=human,
        sessions_killed=killed,
        lock_wait_s=round(lock_wait, 2) if lock_wait is not None else None,
        **known,
    )


def plan_markdown(plan: EmergencyPlan) -> str:
    """The emergency plan as markdown: the case, the moves, each step with its commands."""
    out = [f"## Emergency move of {plan.host}: case {plan.case}", "", plan.why, ""]
    if not plan.ok:
        out += ["**Pre-checks failed; nothing will change:**", ""]
        return "\n".join(out + [f"- {p}" for p in plan.problems])
    out += [f"- {short_name(m.agent)} → {m.to}" for m in plan.moves]
    out += [f"- a human must: {h}" for h in plan.human]
    return "\n".join(out + steps_markdown(plan))


def report_markdown(r: EmergencyResult) -> str:
    """The report as markdown (pure)."""
    lines = r.report_head(
        f"Emergency move of {r.host}", *([f"Case **{r.case}**: {r.why}."] if r.case else [])
    )
    lines += ["## What was done", ""] + [f"1. {a}" for a in r.actions]
    if r.agents:
        lines += ["", "## Agents", ""] + [
            f"- {short_name(a.agent)}: {', '.join(a.running_on) or 'nowhere'}" for a in r.agents
        ]
    return "\n".join(lines)
