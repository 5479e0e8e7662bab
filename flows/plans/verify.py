"""What a procedure's run left, judged from a fresh snapshot taken after it (pure).

Every procedure ends the same way: the executor has done what it could, a new snapshot says
where things are, and one of these functions turns the two into the run's verdict: each agent's
outcome, the status, and what a human must still do. Nothing here does I/O.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from config.site import Site
from flows.plans.clean_move import MovePlan
from flows.plans.clean_move_compensation import channel_human
from flows.plans.emergency_move import EmergencyPlan
from flows.plans.fence_host import FencePlan
from flows.plans.model import AgentOutcome
from flows.plans.rolling_upgrade import UpgradePlan, UpgradeSnapshot
from flows.plans.snapshot import HostSnapshot, SiteSnapshot
from flows.plans.steps import command
from flows.plans.switch import AliasAnswer, FrontendState, SwitchPlan


class Verdict(BaseModel):
    """A run's outcome as the snapshot after it shows it."""

    status: Literal["completed", "partial", "failed"]
    agents: list[AgentOutcome] = Field(default_factory=list)
    #: each moved channel's state after the run
    channels: dict[str, str] = Field(default_factory=dict)
    #: what a human must still do (besides what the executor already said)
    human: list[str] = Field(default_factory=list)


def verify_clean_move(
    site: Site, plan: MovePlan, outcomes: dict[str, AgentOutcome], after: SiteSnapshot
) -> Verdict:
    """Each agent's outcome against the snapshot after the move, and the move's status.

    Args:
        site: the site.
        plan: the move's plan.
        outcomes: what compensation said of the agents it handled (by agent).
        after: the snapshot of both hosts after the move.
    """
    agents: list[AgentOutcome] = []
    human: list[str] = []
    status: Literal["completed", "partial", "failed"] = "completed"
    src = after.host(plan.from_host) if after.has(plan.from_host) else None
    if src is not None and not src.reachable and plan.agents:
        # its agents may run or not: a move cannot tell, an emergency move can handle either
        human.append(
            f"{plan.from_host} does not answer ({src.error}); its agents' state is unknown. If "
            f"it is down, move them with `handover run emergency-move --host {plan.from_host}`"
        )
    for m in plan.agents:
        where = after.where(m.agent)
        o = outcomes.get(m.agent) or AgentOutcome(
            agent=m.agent,
            channel=m.channel,
            result="finished" if m.action == "finish" else "moved",
            running_on=where,
        )
        o = o.model_copy(update={"running_on": where})
        agents.append(o)
        if o.result == "in-doubt":  # the channel stays Inactive on purpose; the remedy said why
            status = "failed"
            continue
        active = m.channel is None or after.channels.get(m.channel) == "Active"
        if len(where) != 1 or not active:
            status = "failed"
            if len(where) > 1:
                stop = command(site, "stop_agent", agent=m.agent)
                human.append(
                    f"{m.agent} runs on {' and '.join(where)}: on {plan.from_host} run `{stop}`"
                )
            if m.channel and not active:
                human.append(channel_human(site, plan, m.channel))
        elif o.result in ("left-on-source", "rolled-back") and status == "completed":
            status = "partial"
        elif o.result == "stranded":
            status = "failed"
    return Verdict(status=status, agents=agents, human=human)


def verify_emergency_move(plan: EmergencyPlan, after: SiteSnapshot | None) -> Verdict:
    """Each moved agent runs on its target and each moved channel is Active there.

    Args:
        plan: the emergency move's plan.
        after: the snapshot of the targets after the move (None: nothing was to move).
    """
    agents = []
    for m in plan.moves:
        there = after is not None and after.host(m.to).runs(m.agent)
        agents.append(
            AgentOutcome(
                agent=m.agent,
                channel=m.channel,
                result="moved" if there else "stranded",
                running_on=[m.to] if there else [],
            )
        )
    chans = [m.channel for m in plan.moves if m.channel]
    not_active = [c for c in chans if after is None or after.channels.get(c) != "Active"]
    human = []
    if not_active and after is not None:
        human.append(
            "channel(s) not Active after the move: "
            + ", ".join(
                f"{c} ({after.channels[c]})"
                if c in after.channels
                else f"{c} (unreadable: {after.channel_errors.get(c, 'not read')})"
                for c in not_active
            )
            + "; once the agents' hosts reach the database, run `handover run emergency-move "
            f"--host {plan.host}` again"
        )
    ok = all(a.running_on for a in agents) and not not_active
    return Verdict(
        status="completed" if ok else "failed",
        agents=agents,
        channels={c: after.channels.get(c, "unknown") for c in chans} if after else {},
        human=human,
    )


def verify_fence_host(plan: FencePlan, after: HostSnapshot) -> Verdict:
    """The host lists every moved agent in its `.disabled` file and runs none of those that ran
    twice; what it still does wrong is each a human action."""
    if not after.reachable:
        human = [
            f"{plan.host} stopped answering ({after.error}); run fence-host again when it does"
        ]
    else:
        human = [
            f"{a} is not listed in {plan.host}'s .disabled file"
            for a in plan.moved
            if a not in after.disabled
        ] + [f"{a} still runs on {plan.host}" for a in plan.twice if after.runs(a)]
    return Verdict(status="failed" if human else "completed", human=human)


class SwitchAfter(BaseModel):
    """What the switch's verification reads after the run."""

    #: every authoritative server's answer for the alias (the primary first)
    aliases: list[AliasAnswer]
    #: the front ends of the new master and of the old one
    new_master: FrontendState
    old_master: FrontendState


def verify_switch(plan: SwitchPlan, after: SwitchAfter) -> Verdict:
    """Every DNS server answers the new master's address with the new epoch, the new master
    serves as the master with that epoch, and the old one no longer answers as the master.

    Args:
        plan: the switch's plan (a switch that acts: master, target, address and epochs set).
        after: the aliases and both front ends read after the run.
    """
    assert plan.master is not None and plan.to is not None
    human: list[str] = []
    lagging = [
        a
        for a in after.aliases
        if a.error or a.addresses != [plan.to_address] or a.epoch != plan.new_epoch
    ]
    if lagging:
        human.append(
            "servers not answering the new address and epoch: "
            + "; ".join(f"{a.server} {a.error or a.addresses} epoch {a.epoch}" for a in lagging)
        )
    new = after.new_master
    if not (new.serving_master and new.epoch == plan.new_epoch):
        human.append(
            f"{plan.to} does not serve as the master with epoch {plan.new_epoch} (role "
            f"{new.role}, epoch {new.epoch}, database epoch {new.db_epoch})"
        )
    old = after.old_master
    if old.reachable and old.role == "master" and old.answers:
        human.append(f"{plan.master} still answers as the master (its writes are fenced)")
    return Verdict(status="failed" if human else "completed", human=human)


def verify_rolling_upgrade(
    plan: UpgradePlan, results: dict[str, str], after: UpgradeSnapshot
) -> Verdict:
    """Each host the run reports done is as the report says, read from the hosts afterwards.

    An upgraded host has the target version installed and each of its agents running it (where
    the agent's status says its version); a rolled-back host has its old version again with its
    agents running; a host whose agents were moved runs none of them, and each runs elsewhere.
    A failed or left host is reported as such already and is not judged again.

    Args:
        plan: the upgrade's plan.
        results: each host's result as the run settled it (``upgraded``, ``rolled-back``...).
        after: the hosts read after the run.
    """
    human: list[str] = []
    for hp in plan.todo:
        result = results.get(hp.host)
        if result not in ("upgraded", "rolled-back", "moved"):
            continue
        seen = after.hosts.get(hp.host)
        if seen is None or not seen.reachable:
            why = seen.error if seen is not None else "not read"
            human.append(f"{hp.host} ({result}) does not answer after the run: {why}")
            continue
        if result == "moved":
            wrong = [a for a in hp.agents if hp.host in after.site.where(a)]
            nowhere = [a for a in hp.agents if not after.site.where(a)]
            human += [f"{a} still runs on {hp.host} after its move" for a in wrong]
            human += [f"{a} runs nowhere after its move from {hp.host}" for a in nowhere]
            continue
        version = plan.version if result == "upgraded" else hp.installed
        if version is not None and seen.installed != version:
            human.append(
                f"{hp.host} ({result}) has version {seen.installed or 'unknown'} installed, "
                f"not {version}"
            )
        for a in hp.agents:
            st = seen.status(a)
            if st is None:
                human.append(f"{a} does not run on {hp.host} ({result})")
            elif version is not None and st.version is not None and st.version != version:
                human.append(f"{a} on {hp.host} runs version {st.version}, not {version}")
    return Verdict(status="failed" if human else "completed", human=human)
