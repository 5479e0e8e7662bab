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
from flows.plans.snapshot import HostSnapshot, SiteSnapshot
from flows.plans.steps import command


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
