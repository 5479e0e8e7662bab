"""Flow `rolling-upgrade`: upgrade the agents host after host, in the maintenance window.

Check the window (outside it, or in a blackout, the run is refused with the next window's start
unless forced with a reason, which is recorded); snapshot every host (processes, installed
version, agent status); plan (`flows.plans.rolling_upgrade`): the hosts not yet on the target, in
order or in batches, the canary first; approve (and, when the site says so, again after the
canary); then, batch after batch: a batch whose estimate would end after the window closes is
not started (the run ends partial, saying what is left), each host is checked, upgraded (SPMA),
configured (YAIM, its report kept), restarted and verified, and each agent's time down is read.
A failed host halts the run once more hosts failed than `upgrade.max_failures` allows; the site's
`upgrade.on_failure` says what happens to it: ``halt`` (reported, left as it is), ``rollback``
(the version it had, installed, configured and restarted) or ``move`` (its agents moved to their
backups by the emergency-move plan).
"""

from __future__ import annotations

import getpass
import re
import statistics
from typing import Any, Literal

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.client.schemas.objects import State
from pydantic import BaseModel, Field

from config.site import VERSION_RE, Site, short_name
from flows import progress
from flows.attempt import check_not_crash_looping
from flows.executor import Executor
from flows.notify import esc, mrkdwn
from flows.plans.emergency_move import EmergencyRequest, partners, plan_emergency_move
from flows.plans.model import Phase
from flows.plans.rolling_upgrade import (
    PROCEDURE,
    HostPlan,
    UpgradePlan,
    UpgradeRequest,
    UpgradeSnapshot,
    plan_markdown,
    plan_rollback,
    plan_rolling_upgrade,
    upgrade_hosts,
)
from flows.plans.snapshot import HostWithPartners
from flows.plans.upgrade_decisions import Settled, before_batch, on_host_failure
from flows.plans.verify import verify_rolling_upgrade
from flows.plans.windows import WindowCheck, check_window
from flows.plans.words import count
from flows.procedure import Finish, Finisher, Run, locked, procedure_run
from flows.rehearsal_gate import rehearsal_gate
from flows.result import ProcedureResult, StepRecord
from flows.run_site import load_run_site
from tasks.outcome import now
from tasks.remote import SiteShell
from tasks.site_state import snapshot_host, snapshot_site
from tasks.upgrade import read_upgrade_host

__all__ = ["UpgradeResult", "report_markdown", "rolling_upgrade", "snapshot_upgrade"]

HostResult = Literal["upgraded", "already", "failed", "rolled-back", "moved", "left"]


class HostOutcome(BaseModel):
    """Where one host ended."""

    host: str
    result: HostResult
    #: the version installed before the run, and at its end
    before: str | None = None
    after: str | None = None
    #: wall time of the host's steps, and the part spent in remote commands
    seconds: float = 0.0
    remote_s: float = 0.0
    note: str = ""


class UpgradeResult(ProcedureResult):
    """The typed result of a rolling upgrade."""

    procedure: str = PROCEDURE
    status: Literal["completed", "partial", "failed", "refused", "rejected", "dry-run"]
    version: str | None = None
    config_only: bool = False
    on_failure: str = "halt"
    plan: UpgradePlan | None = None
    window: WindowCheck | None = None
    #: the reason given to run outside the window (empty: not forced)
    forced_reason: str = ""
    hosts: list[HostOutcome] = Field(default_factory=list)
    #: hosts not started (the window, or a halt): the next run continues with them
    left: list[str] = Field(default_factory=list)
    #: each agent's seconds down across its restart
    missed_s: dict[str, float] = Field(default_factory=dict)
    missed_p50_s: float | None = None
    missed_p95_s: float | None = None
    missed_max_s: float | None = None
    #: YAIM's report per host
    configure_report: dict[str, list[str]] = Field(default_factory=dict)
    actions: list[str] = Field(default_factory=list)


def snapshot_upgrade(shell: SiteShell, hosts: list[str]) -> UpgradeSnapshot:
    """Every host's processes and `.disabled`, installed version and agent status."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(shell.site.ssh.parallelism, len(hosts) or 1)) as ex:
        sites = ex.submit(snapshot_site, shell, hosts)
        ups = dict(zip(hosts, ex.map(lambda h: read_upgrade_host(shell, h), hosts), strict=True))
    return UpgradeSnapshot(site=sites.result(), hosts=ups)


def percentile(values: list[float], q: float) -> float:
    """The `q` quantile (0..1) by the nearest-rank method (what a p95 means to an operator:
    95 % of the agents were down at most this long)."""
    ordered = sorted(values)
    rank = max(1, -(-int(q * 100 * len(ordered)) // 100))
    return ordered[min(rank, len(ordered)) - 1]


@flow(name=PROCEDURE, persist_result=False)
def rolling_upgrade(
    site_file: str,
    version: str | None = None,
    config_only: bool = False,
    hosts: list[str] | None = None,
    batch: int | None = None,
    max_failures: int | None = None,
    canary: str | None = None,
    force_window: str = "",
    requested_by: str = "",
    pause_for_approval: bool | None = None,
    dry_run: bool = False,
) -> State[Any]:
    """Upgrade the agents' software (or only their configuration) host after host.

    Args:
        site_file: the site file.
        version: the version to install (default: the site's `upgrade.target_version`).
        config_only: re-render the configuration and restart, install nothing.
        hosts: the hosts, in order (default: every host that runs agents, in file order).
        batch: hosts upgraded at the same time (default: the site's `upgrade.batch`).
        max_failures: failed hosts tolerated before the run halts (default: the site's).
        canary: a host upgraded first, alone (default: the site's `upgrade.canary`).
        force_window: run outside the maintenance window (or in a blackout) for this reason,
            which is recorded in the report and the Slack thread.
        requested_by: who or what asked.
        pause_for_approval: ask a human first (default: the site's policy).
        dry_run: show the plan and change nothing.

    Returns:
        A Completed state (completed, partial, rejected, dry-run) or a Failed one (failed,
        refused) whose data is the `UpgradeResult`.
    """
    started = now()
    site = load_run_site(site_file)
    who = requested_by or getpass.getuser()
    up = site.upgrade
    target = None if config_only else (version or up.target_version)
    params = {
        "version": target or "config only",
        "hosts": ",".join(hosts or []),
        "forced": force_window,
    }
    title = f"rolling upgrade to version {target}" if target else "rolling configuration update"
    finish = Finisher(
        UpgradeResult,
        report_markdown,
        site=site.site,
        requested_by=who,
        started_at=started,
        version=target,
        config_only=target is None,
        on_failure=up.on_failure,
        forced_reason=force_window,
    )
    with procedure_run(site, PROCEDURE, title, who, params) as run:
        finish.run = run
        if target is not None and not re.fullmatch(VERSION_RE, target):
            return finish(
                "refused",
                f"{target!r} is not a version (letters, digits and . _ + ~ -, starting with a "
                "letter or digit); nothing changed",
            )
        if not config_only and target is None:
            return finish(
                "refused",
                "no version given and the site's upgrade.target_version is not set; pass "
                "--version V, or --config-only to re-render the configuration; nothing changed",
            )
        window = check_window(site.policy(PROCEDURE), now())
        progress.emit("step-sentence", sentence=window.sentence())
        if window.status == "closed" and not dry_run:
            if not force_window:
                return finish(
                    "refused",
                    f"refused: {window.sentence()}; nothing changed (force it with a reason: "
                    "--force-window REASON)",
                    window=window,
                )
            progress.emit(
                "step-sentence",
                sentence=f"FORCED outside the maintenance window by {who}: {force_window}",
            )
        req = UpgradeRequest(
            version=target,
            hosts=hosts or [],
            batch=batch or up.batch,
            canary=canary or up.canary,
        )
        tolerated = max_failures if max_failures is not None else up.max_failures
        return locked(
            site,
            PROCEDURE,
            finish,
            lambda: _upgrade(
                run,
                req,
                window,
                tolerated,
                who,
                pause_for_approval,
                dry_run,
                bool(force_window),
                finish,
            ),
            window=window,
        )


def _upgrade(
    run: Run,
    req: UpgradeRequest,
    window: WindowCheck,
    max_failures: int,
    who: str,
    pause: bool | None,
    dry_run: bool,
    forced: bool,
    finish: Finish,
) -> State[Any]:
    site = run.shell.site
    policy = site.policy(PROCEDURE)
    snap = snapshot_upgrade(run.shell, upgrade_hosts(site))
    plan = plan_rolling_upgrade(site, snap, req)
    create_markdown_artifact(key="rolling-upgrade-plan", markdown=plan_markdown(plan))
    for sentence in plan.notes:
        progress.emit("step-sentence", sentence=sentence)
    known: dict[str, Any] = dict(plan=plan, window=window, actions=list(plan.notes))
    already = [
        HostOutcome(host=h.host, result="already", before=h.installed, after=h.installed)
        for h in plan.done
    ]
    if not plan.ok:
        return finish(
            "refused", "pre-checks failed, nothing changed: " + "; ".join(plan.problems), **known
        )
    if not plan.todo:
        return finish("completed", plan.notes[0], hosts=already, **known)
    if dry_run:
        # a dry run the crash recovery started is held to the limit a real one is
        # (`procedure_run` checks that)
        check_not_crash_looping()
        return finish("dry-run", "dry run: " + plan.notes[0] + "; nothing changed", **known)
    refusal, rehearsed = rehearsal_gate(
        site,
        PROCEDURE,
        policy,
        plan,
        f"handover rehearse rolling-upgrade --site {site.site}"
        + (f" --version {req.version}" if req.version else ""),
    )
    if refusal is not None:
        return finish("refused", f"refused: {refusal}; nothing changed", **known)
    what = plan.notes[0] + f" on site {site.site}" + (f"; {rehearsed}" if rehearsed else "")
    lines = [
        mrkdwn("Site *{}*, requested by {}.", site.site, who),
        mrkdwn("*Window*: {}{}", window.sentence(), " (FORCED)" if forced else ""),
        mrkdwn("*Hosts*: {}", ", ".join(f"{h.host} ({h.why})" for h in plan.todo)),
        mrkdwn("*If a host fails*: the run halts; {}", _policy_words(site)),
    ]
    approval = run.approve(policy, pause, who, what, lines)
    known["approval"] = approval
    if not approval.approved:
        return finish("rejected", f"{approval.sentence()}; nothing changed", **known)
    by_host = {h.host: h for h in plan.todo}
    extra: list[StepRecord] = []
    outcomes: dict[str, HostOutcome] = {}
    human: list[str] = []
    executor: Executor

    def settle(hosts: list[str]) -> None:
        """Record where each host of a finished batch ended; apply the policy to failed ones."""
        for h in hosts:
            mine = [r for r in executor.records if r.host == h]
            secs = (
                (max(r.ended_at for r in mine) - min(r.started_at for r in mine)).total_seconds()
                if mine
                else 0.0
            )
            failed = h in executor.failed_chains
            outcomes[h] = HostOutcome(
                host=h,
                result="failed" if failed else "upgraded",
                before=by_host[h].installed,
                after=None if failed else (req.version or by_host[h].installed),
                seconds=round(secs, 3),
                remote_s=round(sum(r.remote_s for r in mine), 3),
                note=next((r.sentence for r in reversed(mine) if r.outcome == "failed"), "")
                if failed
                else next((r.sentence for r in mine if r.verb == "restart-agents"), ""),
            )
            if failed:
                extra.extend(_after_failure(run, plan, by_host[h], outcomes[h], human))

    previous: list[str] = []

    def before(phase: Phase) -> str | None:
        """Between two batches: settle the last one, then the pure decision (`before_batch`);
        a human asked after the canary decides here."""
        nonlocal previous
        settle(previous)
        previous = [c.name for c in phase.chains]
        gate = before_batch(
            plan,
            plan.phases.index(phase),
            [
                Settled(host=o.host, upgraded=o.result == "upgraded", seconds=o.seconds)
                for o in outcomes.values()
            ],
            max_failures=max_failures,
            window=window,
            now=now(),
            forced=forced,
            expected_host_s=policy.expected_host_s,
            approve_after_canary=site.upgrade.approve_after_canary,
        )
        if gate.action == "ask":
            again = run.approve(
                policy.model_copy(update={"approval": "required"}),
                True,
                who,
                gate.reason,
                [esc(o.note or o.result) for o in outcomes.values()],
            )
            return None if again.approved else f"after the canary: {again.sentence()}"
        return gate.reason if gate.action == "halt" else None

    executor = Executor(run.shell, plan, before_phase=before)
    executor.execute()
    settle(previous if not executor.stop_reason else [])
    # verify: every host the run reports done is as reported, read afresh
    verdict = verify_rolling_upgrade(
        plan,
        {h: o.result for h, o in outcomes.items()},
        snapshot_upgrade(run.shell, upgrade_hosts(site)),
    )
    human += verdict.human
    stop_reason = executor.stop_reason
    if stop_reason:
        progress.emit("step-sentence", sentence=stop_reason)
    left = [c.name for p in plan.phases if p.name in executor.stopped_before for c in p.chains]
    records = [*executor.records, *extra]
    missed = {
        a: s
        for r in records
        if r.verb == "restart-agents" and r.outcome == "done"
        for a, s in r.measures.items()
        if not r.step.endswith("-rollback-restart")
    }
    values = list(missed.values())
    yaim = {r.host: r.report for r in records if r.verb == "configure-node" and r.outcome == "done"}
    done = [o for o in outcomes.values() if o.result == "upgraded"]
    bad = [o for o in outcomes.values() if o.result != "upgraded"]
    if left:
        human.append(
            f"left for the next run: {', '.join(left)} (run the upgrade again: it continues "
            "with them and skips the hosts already done)"
        )
    what_done = (
        f"{count(len(done), 'host')} upgraded to version {req.version}"
        if req.version
        else f"{count(len(done), 'host')} reconfigured and restarted"
    )
    summary = (
        what_done
        + (f" ({len(plan.done)} already)" if plan.done else "")
        + (f"; {', '.join(f'{o.host} {o.result}' for o in bad)}" if bad else "")
        + (f"; {count(len(left), 'host')} left" if left else "")
        + (f"; agents down at most {max(values):.2f} s each" if values else "")
        + (f" ({stop_reason})" if stop_reason else "")
    )
    if verdict.status == "failed":
        summary += "; the hosts read afterwards disagree: " + "; ".join(verdict.human)
    status = "failed" if bad or verdict.status == "failed" else ("partial" if left else "completed")
    return finish(
        status,
        summary,
        hosts=already + list(outcomes.values()),
        left=left,
        steps=records,
        human_actions=human,
        missed_s=missed,
        missed_p50_s=round(statistics.median(values), 3) if values else None,
        missed_p95_s=round(percentile(values, 0.95), 3) if values else None,
        missed_max_s=round(max(values), 3) if values else None,
        configure_report=yaim,
        **known,
    )


def _policy_words(site: Site) -> str:
    return {
        "halt": "it is reported and left as it is",
        "rollback": "it is rolled back to the version it had",
        "move": "its agents are moved to their backups",
    }[site.upgrade.on_failure]


def _after_failure(
    run: Run, plan: UpgradePlan, host_plan: HostPlan, outcome: HostOutcome, human: list[str]
) -> list[StepRecord]:
    """Apply the site's `upgrade.on_failure` to a failed host; update its outcome; return the
    records of what was run."""
    site = run.shell.site
    host = host_plan.host
    policy = on_host_failure(site, plan, host_plan)
    names = ", ".join(short_name(a) for a in host_plan.agents) or "none"
    if policy == "rollback":
        assert host_plan.installed is not None
        progress.emit(
            "step-sentence", sentence=f"{host} failed: rolling it back to {host_plan.installed}"
        )
        executor = Executor(
            run.shell, plan_rollback(site, host, host_plan.agents, host_plan.installed)
        )
        executor.execute()
        if executor.failed_chains:
            human.append(
                f"{host}: the rollback to version {host_plan.installed} failed too "
                f"({'; '.join(executor.human)}); its agents ({names}) may not serve: move them "
                f"(`handover run emergency-move --host {host}`)"
            )
        else:
            outcome.result = "rolled-back"
            outcome.after = host_plan.installed
            outcome.note += (
                f"; rolled back to version {host_plan.installed}, its agents serve again"
            )
        return executor.records
    if policy == "move":
        progress.emit("step-sentence", sentence=f"{host} failed: moving its agents to backups")
        snap = snapshot_host(run.shell, host)
        others = snapshot_site(run.shell, partners(site, host))
        failed_here = [a for a in host_plan.agents if not snap.runs(a)]
        move_plan = plan_emergency_move(
            site,
            HostWithPartners(host=snap if snap.reachable else None, partners=others),
            EmergencyRequest(host=host, reach="open", failed_here=failed_here),
        )
        if not move_plan.ok:
            human.append(f"{host}: its agents could not be moved: {'; '.join(move_plan.problems)}")
            return []
        executor = Executor(run.shell, move_plan)
        executor.execute()
        if executor.failed_chains:
            human.append(f"{host}: moving its agents failed: {'; '.join(executor.human)}")
        else:
            outcome.result = "moved"
            moved = ", ".join(f"{short_name(m.agent)} → {m.to}" for m in move_plan.moves)
            outcome.note += f"; its agents moved to their backups ({moved or 'none needed'})"
            human.append(
                f"{host} has the failed version {plan.version or '(config)'} installed and its "
                f"agents listed in its .disabled file; repair it, then move them back "
                f"(`handover run clean-move --from BACKUP --to {host}`)"
            )
        return executor.records
    human.append(
        f"{host} failed ({outcome.note}); the site's policy is to halt: its agents ({names}) "
        f"may not serve. Roll it back (`handover run rolling-upgrade --version "
        f"{host_plan.installed or 'PREVIOUS'} --hosts {host} --yes`) or move its agents "
        f"(`handover run emergency-move --host {host}`)"
    )
    return []


def report_markdown(r: UpgradeResult) -> str:
    """The report: what each host did, the agents' time down, what is left."""
    what = f"version {r.version}" if r.version else "configuration only"
    facts = [f"- {what}; if a host fails: {r.on_failure}"]
    if r.window is not None:
        facts.append(f"- window: {r.window.sentence()}")
    if r.forced_reason:
        facts.append(f"- **forced outside the window**: {r.forced_reason}")
    out = r.report_head(f"Rolling upgrade of {r.site}", "\n".join(facts))
    if r.hosts:
        out += ["", "| host | result | before | after | seconds | remote s | note |"]
        out.append("|---|---|---|---|---|---|---|")
        out += [
            f"| {o.host} | {o.result} | {o.before or '-'} | {o.after or '-'} | {o.seconds:.2f} "
            f"| {o.remote_s:.2f} | {o.note} |"
            for o in r.hosts
        ]
    if r.missed_s:
        out += [
            "",
            f"Agents down across the restart: p50 {r.missed_p50_s:.3f} s, p95 "
            f"{r.missed_p95_s:.3f} s, max {r.missed_max_s:.3f} s ({len(r.missed_s)} agents)",
        ]
    for host, lines in r.configure_report.items():
        changed = [ln for ln in lines if ": " in ln]
        if changed:
            out += ["", f"configure_node on {host}:", *[f"    {ln}" for ln in changed]]
    if r.left:
        out += ["", f"Left for the next run: {', '.join(r.left)}"]
    return "\n".join(out) + "\n"
