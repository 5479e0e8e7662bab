"""Flows `geo-failover` and `geo-failback`: move a replicated tool to another site through
DNS with several masters.

Snapshot (the tool's names on every master and the TSIG key on each, each site's database and
replication, each site's health page, the last replication reading, the remap check), plan
(`flows.plans.geo_failover`, `flows.plans.geo_failback`), approve as the site's policy says (a
failover whose loss window exceeds what may be accepted without asking always asks, and the
request states the window), then the one executor runs the plan. Verify: the masters that
answer name the target with the new epoch, the target's health page answers 200, and the old
site's tool no longer accepts writes (its database is read-only, or its epoch is old).
"""

from __future__ import annotations

import getpass
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from prefect import flow
from prefect.client.schemas.objects import State
from pydantic import Field

from config.site import Site
from flows import progress
from flows.approval import automatic_policy
from flows.executor import Executor
from flows.geo_records import LastGeoFailover, last_lag, remember_geo_failover
from flows.notify import mrkdwn
from flows.plans.geo_failback import plan_geo_failback
from flows.plans.geo_failover import (
    FAILBACK,
    PROCEDURE,
    GeoPlan,
    GeoRequest,
    Mode,
    compensate_geo,
    current_answer,
    plan_geo_failover,
)
from flows.plans.geo_state import GeoSnapshot, NameAnswer, ToolHealth
from flows.plans.model import steps_markdown
from flows.procedure import (
    Finish,
    Finisher,
    Run,
    locked,
    procedure_run,
    refused_or_dry_run,
    request_lines,
    show_plan,
)
from flows.result import ProcedureResult
from flows.run_site import load_run_site
from tasks.geo import await_health, snapshot_geo
from tasks.geo_dns import read_names
from tasks.outcome import now

__all__ = ["GeoResult", "geo_failback", "geo_failover", "report_markdown"]

#: where a rebuilt replica's old content is kept (the failback's default)
KEEP_DIR = "/var/lib/handover/geo-kept"


class GeoResult(ProcedureResult):
    """The typed result of a geo failover or failback."""

    procedure: str = PROCEDURE
    status: Literal["completed", "partial", "failed", "refused", "rejected", "dry-run"]
    tool: str = ""
    mode: Mode | None = None
    from_site: str | None = None
    to_site: str | None = None
    old_epoch: int | None = None
    new_epoch: int | None = None
    loss_window: str = ""
    reason: str = ""
    plan: GeoPlan | None = None
    #: what every master answers afterwards
    names: list[NameAnswer] = Field(default_factory=list)
    #: the masters left behind (they did not answer)
    masters_behind: list[str] = Field(default_factory=list)
    health: ToolHealth | None = None
    actions: list[str] = Field(default_factory=list)


#: the remap check the plan shows is bounded tightly (a failover of a lost site must not wait
#: on its silent pages): each request, and the whole crawl; `handover check remap` goes further
#: how long a failover waits for the geo watch's repair to let the tool go
WATCH_WAIT_S = 60.0
REMAP_REQUEST_S = 2.0
REMAP_TOTAL_S = 10.0


def _snapshot(site: Site, tool: str, to: str) -> GeoSnapshot:
    from tasks.remap import check_remap

    with ThreadPoolExecutor(max_workers=1) as ex:
        # the crawl runs beside the reads of the databases, masters and health pages
        remap = ex.submit(check_remap, site, tool, timeout_s=REMAP_REQUEST_S, total_s=REMAP_TOTAL_S)
        snap = snapshot_geo(site, tool)
        lag = last_lag(site.site, tool, to)
        if lag is not None:
            snap.last_lag[to] = lag
        try:
            report = remap.result()
            snap.remap = [report.summary]
            snap.remap_ready = report.ready
        except Exception as exc:  # noqa: BLE001 - readiness is shown, never blocks
            snap.remap = [f"the remap check could not run: {exc}"]
    return snap


@flow(name=PROCEDURE, persist_result=False)
def geo_failover(
    site_file: str,
    service: str,
    to: str,
    mode: Mode | None = None,
    max_lag_s: float | None = None,
    reason: str = "",
    requested_by: str = "",
    pause_for_approval: bool | None = None,
    dry_run: bool = False,
    automatic: bool = False,
    flapping: str = "",
) -> State[Any]:
    """Move the tool `service` to the site `to` (module docstring).

    Args:
        site_file: the site file (with `geo:`).
        service: the tool's name.
        to: the site to move it to.
        mode: ``planned`` or ``failover`` (default: planned when the active site's database is
            the primary).
        max_lag_s: the loss window accepted without asking (default: the tool's `max_lag_s`).
        reason: why, for the thread and the report.
        requested_by: who or what asked.
        pause_for_approval: ask a human first (default: the site's policy).
        dry_run: show the plan and change nothing.
        automatic: started by the automatic control switch (`flows.geo_site_down`): the
            site's countdown (`geo.countdown_s`) instead of its approval policy. Taken only in
            a run called in-process (the control switch's subflow); a run created through the
            Prefect API gets the site's approval policy whatever this says.
        flapping: with `automatic`, why a human decides (another automatic failover of the
            tool was too recent).

    Returns:
        A Completed state (completed, rejected, dry-run) or a Failed one (failed, refused)
        whose data is the `GeoResult`.
    """
    req = GeoRequest(
        tool=service,
        to=to,
        mode=mode,
        max_lag_s=max_lag_s,
        reason=reason,
        automatic=automatic and not progress.created_through_the_api(),
        flapping=flapping,
    )
    return _run(PROCEDURE, site_file, req, requested_by, pause_for_approval, dry_run)


@flow(name=FAILBACK, persist_result=False)
def geo_failback(
    site_file: str,
    service: str,
    to: str,
    keep_dir: str = KEEP_DIR,
    reason: str = "",
    requested_by: str = "",
    pause_for_approval: bool | None = None,
    dry_run: bool = False,
) -> State[Any]:
    """Move the tool `service` back to `to`, rebuilding its database there first when it is
    not a healthy replica (its old content kept in `keep_dir`).

    Args:
        site_file: the site file (with `geo:`).
        service: the tool's name.
        to: the site to return to.
        keep_dir: where the rebuilt database's old content is kept.
        reason: why.
        requested_by: who or what asked.
        pause_for_approval: ask a human first (default: the site's policy).
        dry_run: show the plan and change nothing.

    Returns:
        As `geo_failover`.
    """
    req = GeoRequest(tool=service, to=to, mode="planned", reason=reason, keep_dir=keep_dir)
    return _run(FAILBACK, site_file, req, requested_by, pause_for_approval, dry_run)


def _run(
    procedure: str,
    site_file: str,
    req: GeoRequest,
    requested_by: str,
    pause: bool | None,
    dry_run: bool,
) -> State[Any]:
    started = now()
    site = load_run_site(site_file)
    who = requested_by or getpass.getuser()
    params = {"service": req.tool, "to": req.to, "mode": req.mode or "", "reason": req.reason}
    title = f"{procedure} of {req.tool} to {req.to}"
    finish = Finisher(
        GeoResult,
        report_markdown,
        procedure=procedure,
        site=site.site,
        requested_by=who,
        reason=req.reason,
        tool=req.tool,
        started_at=started,
    )
    with procedure_run(site, procedure, title, who, params) as run:
        finish.run = run
        return locked(
            site,
            procedure,
            finish,
            lambda: _body(run, procedure, req, who, pause, dry_run, finish),
            part=f"geo-{req.tool}",
            # the watch holds the tool for a repair of a few seconds (more when a site is lost
            # and its reads time out): a failover waits for it rather than being refused
            wait_s=WATCH_WAIT_S,
            behind=frozenset({"geo-watch"}),
        )


def _body(
    run: Run,
    procedure: str,
    req: GeoRequest,
    who: str,
    pause: bool | None,
    dry_run: bool,
    finish: Finish,
) -> State[Any]:
    site = run.shell.site
    if site.geo is None or req.tool not in {t.name for t in site.geo.tools}:
        snap = GeoSnapshot(tool=req.tool)
    else:
        snap = _snapshot(site, req.tool, req.to)
    plan = (plan_geo_failback if procedure == FAILBACK else plan_geo_failover)(site, snap, req)
    show_plan(plan, plan_markdown(plan))
    known: dict[str, Any] = dict(
        plan=plan,
        mode=plan.mode,
        from_site=plan.from_site,
        to_site=plan.to_site,
        old_epoch=plan.old_epoch,
        new_epoch=plan.new_epoch,
        loss_window=plan.loss_window,
        actions=list(plan.notes),
    )
    if plan.ok and plan.already_done:
        return finish("completed", plan.notes[0], names=snap.names, **known)
    ended = refused_or_dry_run(plan, finish, dry_run, **known)
    if ended is not None:
        return ended
    assert site.geo is not None and plan.to_site is not None and plan.new_epoch is not None
    tool = site.geo.tool(req.tool)
    what = f"{plan.mode} {procedure} of {tool.name} from {plan.from_site} to {plan.to_site}"
    lines = [
        *request_lines(site, who, req.reason, plan.notes[1:]),
        mrkdwn("*Epoch*: {} → {}", plan.old_epoch, plan.new_epoch),
    ]
    policy = site.policy(procedure)
    if req.automatic:
        if req.flapping:
            lines.append(mrkdwn("*Anti-flapping*: {}", req.flapping))
        elif site.geo.countdown_s > 0:
            what = (
                f"failing {tool.name} over to {plan.to_site} in {site.geo.countdown_s} s unless "
                "aborted (Reject aborts, Approve fails over now)"
            )
        policy, pause = automatic_policy(policy, site.geo.countdown_s, req.flapping)
    if plan.needs_loss_approval:
        # a loss beyond what may be accepted without asking: a human decides, whatever the
        # site's policy, and a request left unanswered is not a yes
        lines.append(mrkdwn("*Writes that may be lost*: {}", plan.loss_window))
        policy = policy.model_copy(update={"approval": "required", "on_approval_timeout": "reject"})
        pause = True
    approval = run.approve(policy, pause, who, what, lines)
    if not approval.approved:
        return finish(
            "rejected", f"{approval.sentence()}; nothing changed", approval=approval, **known
        )
    executor = Executor(run.shell, plan, compensate=compensate_geo)
    # each phase builds on the one before it (no promotion without the catch-up, no names
    # moved without the promotion): a failed chain stops the run there
    executor.before_phase = lambda _phase: (
        f"{', '.join(executor.failed_chains)} failed" if executor.failed_chains else None
    )
    executor.execute()
    after = read_names(site.geo, tool)
    health = await_health(tool, plan.to_site, max(2.0, site.geo.verify_margin_s))
    problems = _verify(plan, after, health)
    behind = sorted({f"{a.site} {a.master}" for a in after if a.error})
    ok = not problems and not executor.failed_chains
    human = [*plan.human, *executor.human, *problems]
    if ok:
        assert plan.to_address is not None
        remember_geo_failover(
            site.site,
            LastGeoFailover(
                at=now(),
                tool=tool.name,
                site=plan.to_site,
                address=plan.to_address,
                epoch=plan.new_epoch,
                run_id=progress.current_run_id() or "",
            ),
            automatic=req.automatic,
        )
    summary = (
        f"{tool.name} moved from {plan.from_site} to {plan.to_site} ({plan.mode}), epoch "
        f"{plan.old_epoch} -> {plan.new_epoch}; it serves at {plan.to_site}"
        + (f"; masters left behind: {', '.join(behind)}" if behind else "")
        if ok
        else f"{procedure} of {tool.name} to {plan.to_site} did not complete: "
        + "; ".join(problems or [str(h) for h in executor.human] or ["a step failed"])
    )
    return finish(
        "completed" if ok else "failed",
        summary,
        approval=approval,
        steps=executor.records,
        agents=list(executor.outcomes.values()),
        human_actions=human,
        names=after,
        masters_behind=behind,
        health=health,
        **{**known, "actions": [*known["actions"], *[r.sentence for r in executor.records]]},
    )


def _verify(plan: GeoPlan, after: list[NameAnswer], health: ToolHealth) -> list[str]:
    """What does not hold after the run (pure): every master that answers names the target
    with the new epoch, and the target's health page answers 200."""
    out = []
    wrong = [
        f"{a.master} answers {', '.join(a.addresses) or 'nothing'} with epoch {a.epoch} for "
        f"{a.name}"
        for a in after
        if not a.error and (a.addresses != [plan.to_address] or a.epoch != plan.new_epoch)
    ]
    if wrong:
        out.append("masters that answer otherwise after the run: " + "; ".join(wrong))
    for name in plan.names:
        if current_answer(after, name) is None:
            out.append(f"no master answers for {name} after the run")
    if not health.serving:
        out.append(
            f"the tool at {plan.to_site} ({health.address}) does not serve: its health page "
            f"answered {health.status or health.error}"
        )
    return out


def plan_markdown(plan: GeoPlan) -> str:
    """The plan as the artifact shows it."""
    head = f"# Plan: {plan.procedure} of {plan.tool} to {plan.to_site}"
    if not plan.ok:
        return "\n".join([head, "", "Refused:", *[f"- {p}" for p in plan.problems]])
    return "\n".join([head, "", *[f"- {n}" for n in plan.notes], *steps_markdown(plan)])


def report_markdown(r: GeoResult) -> str:
    """The report artifact."""
    lines = r.report_head(
        f"{r.procedure} of {r.tool} {r.from_site or '?'} -> {r.to_site or '?'}",
        *([f"Loss window: {r.loss_window}"] if r.loss_window else []),
    )
    if r.names:
        lines += ["## The names on every master", "", "| master | name | answer | epoch |"]
        lines += ["|---|---|---|---|"]
        for a in r.names:
            answer = (a.error and "no answer") or ", ".join(a.addresses) or "nothing"
            lines.append(f"| {a.site} {a.master} | {a.name} | {answer} | {a.epoch} |")
        lines.append("")
    if r.health is not None:
        lines += [
            f"Health page at {r.to_site}: {r.health.status or r.health.error}",
            "",
        ]
    if r.actions:
        lines += ["## What was done", "", *[f"- {a}" for a in r.actions]]
    return "\n".join(lines)
