"""Flow `switch`: move the service's master role and its DNS alias to the slave.

Snapshot (the alias on every authoritative server and its epoch, the TSIG key, each front end's
role and epoch and the database's), plan (`flows.plans.switch`), approve as the site's policy
says, then: disable the master (a planned switch redirects its clients to the new master for the
alias TTL; a failover kills the master's DB sessions and raises the database's epoch so that it
cannot write), repoint the alias with one compare-and-set update that writes the new epoch
beside it, and enable the slave as the master with that epoch. Verify: every authoritative
server answers the new address and epoch, the new master answers as the master to a client that
resolves the alias now, and the old one does not.
"""

from __future__ import annotations

import getpass
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.client.schemas.objects import State
from pydantic import Field

from config.site import Site
from flows import progress
from flows.approval import automatic_path_proven, automatic_policy
from flows.executor import Executor
from flows.notify import mrkdwn
from flows.plans.model import steps_markdown
from flows.plans.switch import (
    PROCEDURE,
    AliasAnswer,
    Mode,
    SwitchPlan,
    SwitchRequest,
    SwitchSnapshot,
    compensate_switch,
    plan_switch,
)
from flows.plans.verify import SwitchAfter, verify_switch
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
from flows.switch_records import (
    last_automatic_switch,
    remember_automatic_switch,
    remember_switch,
)
from tasks.alias import key_accepted, read_aliases
from tasks.frontend import read_frontend, read_maintenance
from tasks.http_probe import ask_ready
from tasks.outcome import now

__all__ = ["SwitchResult", "report_markdown", "switch"]


class SwitchResult(ProcedureResult):
    """The typed result of a switch."""

    procedure: str = PROCEDURE
    status: Literal["completed", "partial", "failed", "refused", "rejected", "dry-run"]
    mode: Mode | None = None
    master: str | None = None
    to: str | None = None
    old_epoch: int | None = None
    new_epoch: int | None = None
    reason: str = ""
    alert_id: str = ""
    plan: SwitchPlan | None = None
    #: what every authoritative server answers afterwards
    alias: list[AliasAnswer] = Field(default_factory=list)
    #: what a client that resolves the alias now reaches (its /ready answer)
    client_sees: str = ""
    actions: list[str] = Field(default_factory=list)
    #: what the agents' move that followed the switch did (`frontend.move_agents: follow`)
    agents_move: str = ""


def snapshot_switch(run: Run) -> SwitchSnapshot:
    """The alias on every server, the key check and every front end, read side by side."""
    site = run.shell.site
    assert site.frontend is not None and site.dns is not None
    hosts = site.frontend.hosts
    cluster = site.frontend.cluster_host
    with ThreadPoolExecutor(max_workers=len(hosts) + 3) as ex:
        aliases = ex.submit(read_aliases, site)
        key = ex.submit(key_accepted, site)
        maintenance = ex.submit(read_maintenance, run.shell, cluster) if cluster else None
        fronts = dict(zip(hosts, ex.map(lambda h: read_frontend(run.shell, h), hosts), strict=True))
    accepted, why = key.result()
    in_maintenance, maintenance_error = maintenance.result() if maintenance else (None, "")
    return SwitchSnapshot(
        aliases=aliases.result(),
        frontends=fronts,
        key_accepted=accepted,
        key_error=why,
        maintenance=in_maintenance,
        maintenance_error=maintenance_error,
    )


def client_view(site: Site, address: str) -> dict[str, Any] | None:
    """What the front end at `address` answers on /ready (None: no answer)."""
    assert site.frontend is not None
    answer = ask_ready(address, site.frontend.port)
    return answer[1] if answer is not None else None


@flow(name=PROCEDURE, persist_result=False)
def switch(
    site_file: str,
    to: str | None = None,
    mode: Mode | None = None,
    reason: str = "",
    requested_by: str = "",
    pause_for_approval: bool | None = None,
    dry_run: bool = False,
    alert_id: str = "",
    failed_host: str = "",
    alert_seal: str = "",
) -> State[Any]:
    """Switch the service's master role and alias to another front end (module docstring).

    Args:
        site_file: the site file.
        to: the new master (default: the first other front end that is ready).
        mode: ``planned`` or ``failover`` (default: planned when the master answers as the
            master, else failover).
        reason: why, for the thread and the report.
        requested_by: who or what asked.
        pause_for_approval: ask a human first (default: the site's policy for `switch`).
        dry_run: show the plan and change nothing.
        alert_id: the alert event that started the run, if any.
        failed_host: set by a sensor (the deployment's trigger): the host whose front end
            failed. The switch acts only when that host is the master; it is automatic (after
            the site's opt-out countdown, `frontend.countdown_s`; a human decides when another
            automatic switch happened within `frontend.block_s`) only when called in-process or
            proven to come from an alert by `alert_seal`; otherwise the site's approval policy
            applies.
        alert_seal: the gateway's seal of the alert (`flows.seals`), set by the trigger.

    Returns:
        A Completed state (completed, rejected, dry-run) or a Failed one (failed, refused)
        whose data is the `SwitchResult`.
    """
    started = now()
    site = load_run_site(site_file)
    who = requested_by or getpass.getuser()
    params = {
        "to": to or "",
        "mode": mode or "",
        "reason": reason,
        "alert": alert_id,
        "failed": failed_host,
    }
    if failed_host and not reason:
        reason = f"the front end of {failed_host} failed ({who})"
    automatic = bool(failed_host) and automatic_path_proven(site, alert_id, alert_seal, failed_host)
    title = f"switch of {site.dns.alias if site.dns else 'the alias'}" + (f" to {to}" if to else "")
    finish = Finisher(
        SwitchResult,
        report_markdown,
        site=site.site,
        requested_by=who,
        reason=reason,
        alert_id=alert_id,
        started_at=started,
    )
    request = SwitchRequest(to=to, mode=mode, reason=reason, automatic=automatic)
    with procedure_run(site, PROCEDURE, title, who, params) as run:
        finish.run = run
        # the front end and its alias: a lock of their own, so that a host that died is
        # switched away from while its agents are moved by the emergency move
        return locked(
            site,
            PROCEDURE,
            finish,
            lambda: _switch(
                run, request, who, pause_for_approval, dry_run, finish, failed_host, site_file
            ),
            part="frontend",
        )


def _switch(
    run: Run,
    req: SwitchRequest,
    who: str,
    pause: bool | None,
    dry_run: bool,
    finish: Finish,
    failed_host: str = "",
    site_file: str = "",
) -> State[Any]:
    site = run.shell.site
    if failed_host and not req.automatic:
        said = (
            f"this run names {failed_host} as failed but is not proven to come from an alert "
            "(created through the Prefect API without the gateway's seal): the site's approval "
            "policy applies"
        )
        get_run_logger().warning("%s", said)
        progress.emit("step-sentence", sentence=said)
    snap = (
        snapshot_switch(run)
        if site.frontend and site.dns
        else SwitchSnapshot(aliases=[], frontends={})
    )
    plan = plan_switch(site, snap, req)
    show_plan(plan, plan_markdown(plan))
    known: dict[str, Any] = dict(
        plan=plan,
        mode=plan.mode,
        master=plan.master,
        to=plan.to,
        old_epoch=plan.old_epoch,
        new_epoch=plan.new_epoch,
        actions=list(plan.notes),
    )
    if plan.ok and plan.already_done:
        return finish("completed", plan.notes[0], alias=snap.aliases, **known)
    if plan.ok and failed_host and plan.master != failed_host:
        return finish(
            "completed",
            f"the front end of {failed_host} failed, but the alias points at {plan.master}: "
            "nothing to switch",
            alias=snap.aliases,
            **known,
        )
    ended = refused_or_dry_run(plan, finish, dry_run, **known)
    if ended is not None:
        return ended
    assert site.dns is not None and site.frontend is not None
    what = f"{plan.mode} switch of {site.dns.alias} from {plan.master} to {plan.to}"
    lines = [
        *request_lines(site, who, req.reason, plan.notes[1:]),
        mrkdwn("*Epoch*: {} → {}", plan.old_epoch, plan.new_epoch),
    ]
    policy = site.policy(PROCEDURE)
    if req.automatic:
        last = last_automatic_switch(site.site)
        flapping = last is not None and (now() - last.at).total_seconds() < site.frontend.block_s
        if flapping:
            assert last is not None
            # anti-flapping: the second automatic switch within the block period asks a human
            why = (
                f"another automatic switch ran {(now() - last.at).total_seconds():.0f} s ago "
                f"({last.master} → {last.to}, run {last.run_id}), within frontend.block_s = "
                f"{site.frontend.block_s} s: a human decides"
            )
            lines.append(mrkdwn("*Anti-flapping*: {}", why))
            progress.emit("step-sentence", sentence=why)
        else:
            why = ""
            if site.frontend.countdown_s > 0:
                what = (
                    f"switching {site.dns.alias} to {plan.to} in {site.frontend.countdown_s} s "
                    "unless aborted (Reject aborts, Approve switches now)"
                )
        policy, pause = automatic_policy(policy, site.frontend.countdown_s, why)
    approval = run.approve(policy, pause, who, what, lines)
    if not approval.approved:
        return finish(
            "rejected", f"{approval.sentence()}; nothing changed", approval=approval, **known
        )

    executor = Executor(run.shell, plan, compensate=compensate_switch)
    executor.execute()
    # verify
    assert plan.to is not None and plan.to_address is not None and plan.master is not None
    after = read_aliases(site)
    verdict = verify_switch(
        plan,
        SwitchAfter(
            aliases=after,
            new_master=read_frontend(run.shell, plan.to),
            old_master=read_frontend(run.shell, plan.master),
        ),
    )
    seen = client_view(site, after[0].addresses[0]) if after and after[0].addresses else None
    client = (
        f"a client resolving {site.dns.alias} now reaches {after[0].addresses[0]}, which "
        f"answers {seen}"
        if seen is not None
        else f"a client resolving {site.dns.alias} now reaches no front end"
    )
    human = [*plan.human, *executor.human]
    problems = verdict.human
    ok = verdict.status == "completed" and not executor.failed_chains
    human += problems
    if ok and req.automatic:
        remember_automatic_switch(site.site, plan.master, plan.to)
    if ok and plan.new_epoch is not None:
        remember_switch(site.site, plan.to, plan.to_address, plan.new_epoch)
    summary = (
        f"{site.dns.alias} switched from {plan.master} to {plan.to} ({plan.mode}), epoch "
        f"{plan.old_epoch} -> {plan.new_epoch}"
        if ok
        else f"switch from {plan.master} to {plan.to} did not complete: "
        + "; ".join(problems or [str(h) for h in executor.human] or ["a step failed"])
    )
    status = "completed" if ok else "failed"
    moved = ""
    if ok and site.frontend.move_agents == "follow":
        master_state = snap.frontends.get(plan.master)
        host_gone = master_state is None or not master_state.reachable
        moved, moved_ok, moved_human = _agents_follow(
            site_file, plan, who, emergency=plan.mode == "failover" and host_gone
        )
        summary += f"; {moved}"
        human += moved_human
        if not moved_ok:
            status = "partial"
    return finish(
        status,
        summary,
        agents_move=moved,
        approval=approval,
        steps=executor.records,
        agents=list(executor.outcomes.values()),
        human_actions=human,
        alias=after,
        client_sees=client,
        **{
            **known,
            "actions": [*known["actions"], *[r.sentence for r in executor.records], client],
        },
    )


def _agents_follow(
    site_file: str, plan: SwitchPlan, who: str, *, emergency: bool
) -> tuple[str, bool, list[str]]:
    """Move the old master's agents after the switch (`frontend.move_agents: follow`): a clean
    move to the new master, or, when the old master's host is gone, its emergency move. Each runs
    as a subflow with its own lock (the agents'), report and thread; a failover whose old master
    still answers keeps its agents where they serve. Returns (what happened, whether it went
    well, what a human must do)."""
    assert plan.master is not None and plan.to is not None
    if plan.mode == "failover" and not emergency:
        return f"the agents of {plan.master} stay there (its host answers)", True, []
    by = f"{who} (switch {plan.master} -> {plan.to})"
    if emergency:
        from flows.emergency_move import emergency_move

        state = emergency_move(site_file, plan.master, requested_by=by, return_state=True)
    else:
        from flows.clean_move import clean_move

        state = clean_move(
            site_file,
            plan.master,
            plan.to,
            pause_for_approval=False,
            requested_by=by,
            return_state=True,
        )
    result = state.result(raise_on_failure=False)
    what = "emergency move" if emergency else "clean move"
    if not isinstance(result, ProcedureResult):
        return f"the {what} of {plan.master}'s agents crashed: {result}", False, [str(result)]
    ok = result.status == "completed"
    return f"{what} of {plan.master}'s agents: {result.summary}", ok, list(result.human_actions)


def plan_markdown(plan: SwitchPlan) -> str:
    """The switch's plan as markdown."""
    out = [f"## Switch: {plan.master or '?'} → {plan.to or '?'} ({plan.mode or 'refused'})", ""]
    if not plan.ok:
        out += ["**Pre-checks failed; nothing will change:**", ""]
        return "\n".join(out + [f"- {p}" for p in plan.problems])
    out += [f"- {n}" for n in plan.notes]
    return "\n".join(out + steps_markdown(plan))


def report_markdown(r: SwitchResult) -> str:
    """The report as markdown (pure)."""
    lines = r.report_head(f"Switch {r.master or '?'} → {r.to or '?'}")
    lines += ["## What was done", ""] + [f"1. {a}" for a in r.actions]
    if r.agents_move:
        lines += ["", "## The agents", "", r.agents_move]
    if r.alias:
        lines += ["", "## The alias now", ""] + [
            f"- {a.server}: {a.error or ', '.join(a.addresses)} (epoch {a.epoch}, serial "
            f"{a.serial})"
            for a in r.alias
        ]
    return "\n".join(lines)
