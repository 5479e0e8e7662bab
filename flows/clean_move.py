"""Flow `clean-move`: move agents from one host to another without losing a job.

1. Snapshot both hosts and plan (`flows.plans.clean_move`): pre-checks (both hosts reachable,
   the agents configured on the target and running on the source, none on both) and the steps of
   the chosen mode. A failed pre-check changes nothing and says why; a dry run stops here.
2. Hold the service (one procedure per service) and ask for approval as the site's policy says.
3. Execute the plan (`flows.executor`): ``full`` and ``staged`` are the procedures done by hand;
   ``pipelined`` moves each agent as soon as its own channel has drained; with the site's
   policy, each channel goes Inactive when its running transfers are about to end (a cut-over
   window) and each agent's start on the target waits for the DB lock before its stop on the
   source (hot standby). A chain that fails is
   compensated (`compensate_clean_move`): each of its agents ends running once, with its channel
   Active; what cannot be repaired is in the report with the exact commands to run.
4. Verify against a fresh snapshot and report.

A re-run converges: the plan is derived from a fresh snapshot and every verb is idempotent.
"""

from __future__ import annotations

import datetime as dt
import getpass
import signal
import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.client.schemas.objects import State
from pydantic import Field

from config.site import ProcedurePolicy, Site, short_name
from flows import progress
from flows.approval import approve
from flows.attempt import Superseded, check_not_crash_looping
from flows.executor import Executor
from flows.plans.clean_move import (
    PROCEDURE,
    Mode,
    MovePlan,
    MoveRequest,
    plan_clean_move,
    plan_markdown,
)
from flows.plans.clean_move_compensation import compensate_clean_move
from flows.plans.snapshot import SiteSnapshot
from flows.plans.verify import verify_clean_move
from flows.plans.words import count
from flows.procedure import Finish, Finisher, Run, locked, procedure_run
from flows.rehearsal_gate import rehearsal_gate
from flows.result import AgentOutcome, ProcedureResult, Status, Timing
from flows.run_site import load_run_site
from tasks.adapters.db import DatabaseUnavailable, read_transfer_eta
from tasks.outcome import now
from tasks.remote import SiteShell
from tasks.site_state import snapshot_site, snapshot_site_task

__all__ = ["CleanMoveResult", "clean_move", "report_markdown"]


class CleanMoveResult(ProcedureResult):
    """The typed result of a clean move (also rendered as the run's markdown report)."""

    procedure: str = PROCEDURE
    from_host: str
    to_host: str
    mode: Mode
    dry_run: bool
    forced: bool
    plan: MovePlan | None = None
    downtime_s: dict[str, float] = Field(default_factory=dict)
    downtime_total_s: float = 0.0
    downtime_max_s: float = 0.0
    jobs_lost: int = 0


def _why(exc: BaseException) -> str:
    """Why a move stopped, in words (``terminated by SIGTERM``, ``interrupted``, ...)."""
    sig = getattr(exc, "signal", None)
    if isinstance(sig, int):
        return f"terminated by {signal.Signals(sig).name}"
    if isinstance(exc, KeyboardInterrupt):
        return f"interrupted{': ' + str(exc) if str(exc) else ''}"
    return f"{type(exc).__name__}: {exc}"


def _downtime(executor: Executor) -> dict[str, float]:
    out = {}
    for ch, t0 in executor.inactive_at.items():
        t1 = executor.active_at.get(ch)
        if t1 is not None:
            out[ch] = round((t1 - t0).total_seconds(), 2)
    return out


def _finalise(
    site: Site, plan: MovePlan, executor: Executor, snap: SiteSnapshot
) -> tuple[Status, list[AgentOutcome]]:
    """The move's verdict from a fresh snapshot (`verify_clean_move`); its human actions join
    the executor's."""
    verdict = verify_clean_move(site, plan, executor.outcomes, snap)
    executor.human.extend(verdict.human)
    return verdict.status, verdict.agents


def report_markdown(r: CleanMoveResult) -> str:
    """The final report as markdown (pure)."""
    lines = r.report_head(f"Clean move {r.from_host} -> {r.to_host}")
    if r.agents:
        lines += [
            "## Agents",
            "",
            "| agent | result | runs on | downtime | note |",
            "|---|---|---|---|---|",
        ]
        for a in r.agents:
            dt_s = r.downtime_s.get(a.channel or "", None)
            lines.append(
                f"| {a.agent} | {a.result} | {', '.join(a.running_on) or 'nowhere'} | "
                f"{'-' if dt_s is None else f'{dt_s:.1f} s'} | {a.note} |"
            )
        lines.append("")
    if r.channels:
        lines += [
            "Channels now: " + ", ".join(f"{c} {s}" for c, s in sorted(r.channels.items())),
            "",
        ]
    if r.steps:
        lines += ["## Steps", "", "| start | end | outcome | step |", "|---|---|---|---|"]
        for s in r.steps:
            lines.append(
                f"| {s.started_at:%H:%M:%S} | {s.ended_at:%H:%M:%S} | {s.outcome} | {s.sentence} |"
            )
    if r.plan is not None and (r.status in ("dry-run", "refused") or not r.steps):
        lines += ["", plan_markdown(r.plan)]
    return "\n".join(lines)


# --- the flow -----------------------------------------------------------------------------------

#: how far ahead a run may be asked to start acting (`start_at`)
MAX_HOLD_S = 24 * 3600.0


@flow(name=PROCEDURE, log_prints=False, persist_result=False)
def clean_move(
    site_file: str,
    from_host: str,
    to_host: str,
    agents: list[str] | None = None,
    mode: Mode = "pipelined",
    drain_timeout_s: float | None = None,
    poll_interval_s: float | None = None,
    dry_run: bool = False,
    pause_for_approval: bool | None = None,
    force_after_drain_timeout: bool = False,
    requested_by: str = "",
    start_at: dt.datetime | None = None,
    cutover_window_s: float | None = None,
    hot_standby: bool | None = None,
) -> State[Any]:
    """Move agents from `from_host` to `to_host` without losing a job.

    Args:
        site_file: the site file (validated when it loads).
        from_host: the host the agents leave.
        to_host: the host they go to (their configured backup).
        agents: which agents (default: every agent of the pair that runs on `from_host`).
        mode: ``pipelined`` (recommended), ``full`` or ``staged``.
        drain_timeout_s: how long to wait for running transfers (default: the site's policy).
        poll_interval_s: how often to look at running transfers (default: the site's policy).
        dry_run: show the plan and change nothing.
        pause_for_approval: pause for a human decision after showing the plan (default: the
            site's policy for clean-move).
        force_after_drain_timeout: proceed after the drain timeout, accepting that the
            transfers still running lose their state (reported as such).
        requested_by: who asked (shown in the report and the approval record).
        start_at: change nothing before this moment (a cut-over at an agreed time): the
            snapshot, plan and approval come first, then the run holds until it; at most
            `MAX_HOLD_S` ahead, and a moment already past starts at once.
        cutover_window_s: pipelined: how much later than the start each channel may go
            Inactive, when its running transfers are about to end (default: the site's policy;
            needs `database.transfer_eta_query`).
        hot_standby: pipelined: start each agent on the target before its stop on the source
            (default: the site's policy).

    Returns:
        A Completed state (completed, partial, dry-run, rejected) or a Failed one (failed,
        refused, cancelled), whose data is the `CleanMoveResult`.
    """
    if cutover_window_s is not None and not 0 <= cutover_window_s <= 3600:
        raise ValueError(
            f"cutover_window_s={cutover_window_s:g}: give 0 (every channel Inactive at once) to "
            "3600 s; nothing was changed"
        )
    started = now()
    run_id = progress.current_run_id()
    site = load_run_site(site_file)
    policy = site.policy(PROCEDURE)
    req = move_request(
        site,
        from_host=from_host,
        to_host=to_host,
        agents=agents,
        mode=mode,
        drain_timeout_s=drain_timeout_s,
        force=force_after_drain_timeout,
        cutover_window_s=cutover_window_s,
        hot_standby=hot_standby,
    )
    poll_s = poll_interval_s or policy.poll_interval_s
    who = requested_by or getpass.getuser()
    base: dict[str, Any] = dict(
        site=site.site,
        from_host=from_host,
        to_host=to_host,
        mode=mode,
        dry_run=dry_run,
        forced=force_after_drain_timeout,
        requested_by=who,
        started_at=started,
        flow_run_id=run_id,
    )
    finish = Finisher(CleanMoveResult, report_markdown, **base)

    if dry_run:
        # a dry run the crash recovery started is held to the limit a real one is
        # (`procedure_run` checks that)
        check_not_crash_looping()
        with SiteShell(site) as shell:
            return _plan_only(shell, req, finish)
    params = {
        "agents": ",".join(short_name(a) for a in agents or []) or "all",
        "mode": mode,
        "force": force_after_drain_timeout,
    }
    if start_at is not None:
        if start_at.tzinfo is None:
            return finish("refused", "refused: start_at needs a time zone (e.g. 2026-12-03T14:00Z)")
        ahead = (start_at - dt.datetime.now(dt.UTC)).total_seconds()
        if ahead > MAX_HOLD_S:
            return finish(
                "refused",
                f"refused: start_at {start_at.isoformat()} is {ahead / 3600:.1f} h ahead (at most "
                f"{MAX_HOLD_S / 3600:.0f} h); start the run nearer the time",
            )
        params["start_at"] = start_at.isoformat()
    with procedure_run(site, PROCEDURE, f"{from_host} → {to_host} ({mode})", who, params) as run:
        finish.run = run
        return locked(
            site,
            PROCEDURE,
            finish,
            lambda: _move(run, req, policy, poll_s, who, pause_for_approval, finish, start_at),
        )


def move_request(
    site: Site,
    *,
    from_host: str,
    to_host: str,
    agents: list[str] | None = None,
    mode: Mode = "pipelined",
    drain_timeout_s: float | None = None,
    force: bool = False,
    cutover_window_s: float | None = None,
    hot_standby: bool | None = None,
) -> MoveRequest:
    """The planner's request for a run with these parameters under the site's policy (what a
    run plans with, and what a rehearsal plans the real site with)."""
    policy = site.policy(PROCEDURE)
    return MoveRequest(
        from_host=from_host,
        to_host=to_host,
        agents=agents,
        mode=mode,
        drain_timeout_s=drain_timeout_s or policy.drain_timeout_s,
        force=force,
        expected_transfer_s=policy.expected_transfer_s,
        expected_restart_s=policy.expected_restart_s,
        cutover_window_s=(
            policy.cutover_window_s if cutover_window_s is None else cutover_window_s
        ),
        cutover_drain_s=policy.cutover_drain_s,
        hot_standby=policy.hot_standby if hot_standby is None else hot_standby,
        lock_wait_s=policy.agent_lock_wait_s,
    )


def _snapshot_and_plan(
    shell: SiteShell, req: MoveRequest, finish: Finish
) -> tuple[SiteSnapshot, MovePlan, State[Any] | None]:
    """Snapshot both hosts, plan, publish the plan; the refusal state when a pre-check failed."""
    # a host the site does not have is the planner's refusal, not the snapshot's KeyError
    names = {h.name for h in shell.site.hosts}
    known = list(dict.fromkeys(h for h in (req.from_host, req.to_host) if h in names))
    snap = (
        snapshot_site_task(shell, known)
        if known
        else SiteSnapshot(site=shell.site.site, taken_at=now(), hosts=[])
    )
    snap = _with_transfer_eta(shell.site, snap, req)
    plan = plan_clean_move(shell.site, snap, req)
    progress.emit("plan", plan=plan)
    create_markdown_artifact(key="clean-move-plan", markdown=plan_markdown(plan))
    refused = None
    if not plan.ok:
        refused = finish(
            "refused", "pre-checks failed, nothing changed: " + "; ".join(plan.problems), plan=plan
        )
    return snap, plan, refused


def _with_transfer_eta(site: Site, snap: SiteSnapshot, req: MoveRequest) -> SiteSnapshot:
    """The snapshot with the running transfers' remaining times, when the plan can use them (a
    pipelined move with a cut-over window, on a site whose database tells)."""
    db = site.database
    if req.mode != "pipelined" or not req.cutover_window_s or db is None:
        return snap
    if db.transfer_eta_query is None:
        return snap
    try:
        eta = read_transfer_eta(site)
    except DatabaseUnavailable as exc:
        get_run_logger().warning("%s; every channel goes Inactive at once", exc)
        return snap
    return snap.model_copy(update={"transfer_eta": eta})


def _plan_only(shell: SiteShell, req: MoveRequest, finish: Finish) -> State[Any]:
    snap, plan, refused = _snapshot_and_plan(shell, req, finish)
    if refused is not None:
        return refused
    n = len(plan.agents)
    return finish(
        "dry-run",
        f"dry run: would move {count(n, 'agent')} from {req.from_host} to "
        f"{req.to_host} in {req.mode} mode in about {plan.estimated_duration_s:.0f} s "
        f"({len(plan.steps)} steps); nothing changed",
        plan=plan,
        channels=snap.channels,
        where={m.agent: snap.where(m.agent) for m in plan.agents},
    )


def _hold_until(start_at: dt.datetime | None) -> float:
    """Wait until `start_at` (nothing when absent or past); returns the seconds held."""
    if start_at is None:
        return 0.0
    ahead = (start_at - dt.datetime.now(dt.UTC)).total_seconds()
    if ahead <= 0:
        return 0.0
    get_run_logger().info("holding until %s (%.1f s) before the first change", start_at, ahead)
    progress.emit("step-sentence", sentence=f"holding {ahead:.1f} s until {start_at.isoformat()}")
    t0 = time.monotonic()
    time.sleep(ahead)
    return time.monotonic() - t0


def _move(
    run_: Run,
    req: MoveRequest,
    policy: ProcedurePolicy,
    poll_s: float,
    requested_by: str,
    pause: bool | None,
    finish: Finish,
    start_at: dt.datetime | None = None,
) -> State[Any]:
    logger = get_run_logger()
    flow_started = time.monotonic()
    shell, thread, site = run_.shell, run_.thread, run_.shell.site
    snap, plan, refused = _snapshot_and_plan(shell, req, finish)
    if refused is not None:
        return refused
    if not plan.agents:
        return finish(
            "completed",
            f"nothing to move from {req.from_host} to {req.to_host}",
            plan=plan,
            channels=snap.channels,
        )
    refusal, rehearsed = rehearsal_gate(
        site,
        PROCEDURE,
        policy,
        plan,
        f"handover rehearse clean-move --site {site.site} --from {req.from_host} --to "
        f"{req.to_host} --mode {req.mode}",
    )
    if refusal is not None:
        return finish("refused", f"refused: {refusal}; nothing changed", plan=plan)
    if rehearsed:
        logger.info("%s", rehearsed)
    approval = approve(
        policy,
        pause,
        requested_by,
        f"clean move of {count(len(plan.agents), 'agent')} {req.from_host} -> "
        f"{req.to_host} ({req.mode}), est. {plan.estimated_duration_s:.0f} s"
        + (f"; {rehearsed}" if rehearsed else ""),
        announce=lambda: thread.request_approval(plan, requested_by),
        conclude=thread.decided,
        slack=site.slack,
        plan=plan,
    )
    if not approval.approved:
        return finish(
            "rejected",
            f"{approval.sentence()}; nothing changed",
            plan=plan,
            approval=approval,
            channels=snap.channels,
        )
    executor = Executor(
        shell,
        plan,
        poll_s=poll_s,
        drain_timeout_s=plan.drain_timeout_s,
        drain_host_lost_s=policy.drain_host_lost_s,
        force=plan.force,
        compensate=compensate_clean_move,
    )
    held = _hold_until(start_at)
    act_started = time.monotonic()
    try:
        executor.execute()
    except Superseded:
        raise  # this run was marked Crashed and started again: that run reports
    except BaseException as exc:
        logger.error("clean move interrupted: %r", exc)
        after = snapshot_site(shell, [req.from_host, req.to_host])
        _, outcomes = _finalise(site, plan, executor, after)
        finish(
            "cancelled",
            f"cancelled ({_why(exc)}); agents now: "
            + ", ".join(f"{o.agent} on {','.join(o.running_on) or 'nowhere'}" for o in outcomes),
            plan=plan,
            approval=approval,
            steps=executor.records,
            agents=outcomes,
            human_actions=executor.human,
            channels=after.channels,
            where={o.agent: o.running_on for o in outcomes},
            downtime_s=_downtime(executor),
        )
        raise
    act_wall = time.monotonic() - act_started
    after = snapshot_site_task(shell, [req.from_host, req.to_host])
    status, outcomes = _finalise(site, plan, executor, after)
    downtime = _downtime(executor)
    timing = Timing(
        flow_wall_s=round(time.monotonic() - flow_started, 3),
        act_wall_s=round(act_wall, 3),
        critical_path_s=executor.critical_path_s(),
        snapshots_s=round(snap.duration_s + after.duration_s, 3),
        human_wait_s=round(approval.waited_s, 3),
        held_s=round(held, 3),
    )
    moved = [o for o in outcomes if o.result in ("moved", "finished")]
    total = sum(downtime.values())
    summary = (
        f"{req.from_host} -> {req.to_host} ({req.mode}): "
        f"{count(len(moved), 'agent')} of {len(outcomes)} on {req.to_host}"
        + (f", {len(outcomes) - len(moved)} not moved" if len(moved) < len(outcomes) else "")
        + f"; channel downtime max {max(downtime.values(), default=0):.1f} s, total {total:.1f} s; "
        f"{count(executor.jobs_lost, 'job')} lost"
        + ("; FORCED after drain timeout" if executor.forced else "")
        + ("; a human must act" if executor.human else "")
    )
    return finish(
        status,
        summary,
        plan=plan,
        approval=approval,
        steps=executor.records,
        agents=outcomes,
        downtime_s=downtime,
        downtime_total_s=round(total, 2),
        downtime_max_s=max(downtime.values(), default=0.0),
        jobs_lost=executor.jobs_lost,
        channels=after.channels,
        where={o.agent: o.running_on for o in outcomes},
        human_actions=executor.human,
        timing=timing,
    )
