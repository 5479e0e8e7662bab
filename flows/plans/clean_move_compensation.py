"""The clean move's compensation: what to do for each agent of a chain that failed (pure).

`compensate_clean_move` reads the plan, the run's `Ledger` and the `Failure`, and returns one
`Remedy` per agent of the failed chain (`chain_moves`): each agent ends running once with its
channel Active, or, where that cannot be done, a human action with the exact commands
(`agent_human`, `channel_human`). Nothing here does I/O.
"""

from __future__ import annotations

from typing import Any

from config.site import Site
from flows.plans.clean_move import AgentMove, MovePlan
from flows.plans.model import AnyStep, Chain, Failure, Ledger, Remedy
from flows.plans.steps import command
from flows.plans.verbs import ClearDisabled, step


def chain_moves(plan: MovePlan, chain: Chain) -> list[AgentMove]:
    """The agents a chain acts on (by agent or by channel)."""
    names = {a for s in chain.steps for a in s.agents}
    chans = {c for s in chain.steps for c in s.channels}
    return [m for m in plan.agents if m.agent in names or (m.channel in chans)]


def channel_human(site: Site, plan: MovePlan, channel: str) -> str:
    """What a human runs when a channel may have been left Inactive."""
    cmd = command(site, "set_channel_state", channel=channel, state="Active")
    return (
        f"channel {channel} may still be Inactive: on {plan.to_host} or {plan.from_host} "
        f"run `{cmd}`"
    )


def agent_human(site: Site, plan: MovePlan, agent: str, channel: str | None) -> str:
    """What a human runs when an agent was left running nowhere."""
    msg = (
        f"{agent} runs nowhere: on {plan.to_host} (or {plan.from_host}) remove it from "
        f"{site.commands.disabled_file} and run `{command(site, 'start_agent', agent=agent)}`"
    )
    if channel:
        msg += f"; then `{command(site, 'set_channel_state', channel=channel, state='Active')}`"
    return msg


def compensate_clean_move(
    site: Site, plan: MovePlan, ledger: Ledger, failure: Failure
) -> list[Remedy]:
    """What to do for each agent of a chain that failed, from what the run has done (pure).

    Each agent ends running once with its channel Active: an agent already started on the target
    only has its channel set Active (on the target, else on the source); an agent stopped on the
    source that the target did not start is started again on the source (and listed again in the
    target's `.disabled` file when the run had removed it there); an agent still on the source
    gets its channel Active again (on the source, else on the target: the state is in the
    database) and its `.disabled` entry cleared. What cannot be done becomes a human action with
    the exact commands.

    Args:
        site: the site.
        plan: the plan that was running.
        ledger: what the run had done when the chain failed.
        failure: the failed chain (its agents: `chain_moves`) and the error: its kind for the
            notes (e.g. ``DrainTimeout``), its message for an agent left on the source.
    """
    src, dst = plan.from_host, plan.to_host
    moves, reason, error = chain_moves(plan, failure.chain), failure.kind, failure.message
    remedies: list[Remedy] = []

    def set_active(host: str, ch: str, **options: Any) -> AnyStep:
        return step(
            site,
            f"compensation/{ch}/set-active",
            "set-active",
            host,
            [],
            [ch],
            if_fails="continue",
            human=channel_human(site, plan, ch),
            **options,
        )

    def set_active_anywhere(ch: str) -> AnyStep:
        # a channel's state lives in the database: when the source cannot be reached, the
        # target sets it (a move that fails because its source is lost must not leave the
        # channel Inactive, its agent serving nothing, until somebody notices)
        other = step(site, f"compensation/{ch}/set-active", "set-active", dst, [], [ch])
        return set_active(src, ch, fallback=[other])

    def relist_on_target(a: str, label: str) -> list[AnyStep]:
        # the run removed the agent from the target's `.disabled` file and the agent goes back
        # to the source: listed again, or a reboot of the target starts a second copy
        m = next((x for x in moves if x.agent == a), None)
        cleared = any(
            isinstance(s, ClearDisabled) and s.host == dst and a in s.agents and s.id in ledger.done
            for s in plan.steps
        )
        if m is None or not m.listed_on_target or not cleared:
            return []
        return [
            step(
                site,
                f"compensation/{label}/write-disabled",
                "write-disabled",
                dst,
                [a],
                if_fails="continue",
                human=f"list {a} in {site.commands.disabled_file} on {dst} again, so that a "
                "reboot of that host does not start it",
            )
        ]

    def stop_standby(a: str, label: str) -> list[AnyStep]:
        # its start on the target waits for the lock the source's agent holds: it must not
        # take the lock later, when nobody expects it (or give up and be reported dead)
        if a not in ledger.standby:
            return []
        steps = [
            step(
                site,
                f"compensation/{label}/stop-standby",
                "stop",
                dst,
                [a],
                if_fails="continue",
                human=f"{a}'s standby may still wait for the DB lock on {dst}: there run "
                f"`{command(site, 'stop_agent', agent=a)}`",
            )
        ]
        return steps + relist_on_target(a, label)

    def rollback(a: str, ch: str | None, label: str, first: list[AnyStep]) -> Remedy:
        # stopped on the source, the target did not start it: started again on the source
        back = agent_human(site, plan, a, ch)
        steps = [
            *first,
            step(
                site, f"compensation/{label}/clear-disabled", "clear-disabled", src, [a], human=back
            ),
            step(site, f"compensation/{label}/start", "start", src, [a], human=back),
            *relist_on_target(a, label),
        ]
        if ch and ch not in ledger.active:
            steps.append(set_active_anywhere(ch))
        return Remedy(
            agent=a,
            channel=ch,
            steps=steps,
            result="rolled-back",
            running_on=[src],
            note=f"{dst} could not start it ({reason}); started again on {src}",
            failed_result="stranded",
            failed_note=f"runs nowhere after {reason}",
        )

    for m in moves:
        a, ch = m.agent, m.channel
        label = ch or a
        if a in ledger.stopped and a in ledger.standby and a not in ledger.started:
            # hot standby: the source's agent stopped; its standby has most likely taken the
            # lock. Unless its await is what failed (then the target could not start it), the
            # target keeps it and the channel goes Active there
            if ch is None or ch in ledger.active:
                stop = step(
                    site,
                    f"compensation/{label}/stop-standby",
                    "stop",
                    dst,
                    [a],
                    human=agent_human(site, plan, a, ch),
                )
                remedies.append(rollback(a, ch, label, [stop]))
                continue
            remedies.append(
                Remedy(
                    agent=a,
                    channel=ch,
                    steps=[
                        step(
                            site,
                            f"compensation/{label}/await-serving",
                            "await-serving",
                            dst,
                            [a],
                            human=agent_human(site, plan, a, ch),
                        ),
                        set_active_anywhere(ch),
                    ],
                    result="moved",
                    running_on=[dst],
                    note=f"after {reason}",
                    failed_result="stranded",
                    failed_note=f"runs nowhere after {reason}",
                )
            )
            continue
        if a in ledger.started or m.action == "finish":  # runs on the target
            fallback = (
                [step(site, f"compensation/{ch}/set-active", "set-active", src, [], [ch])]
                if ch
                else []
            )
            steps = (
                [set_active(dst, ch, fallback=fallback)] if ch and ch not in ledger.active else []
            )
            remedies.append(
                Remedy(
                    agent=a,
                    channel=ch,
                    steps=steps,
                    result="moved",
                    running_on=[dst],
                    note=f"after {reason}",
                )
            )
        elif a in ledger.stopped or m.action == "start":  # stopped, the target did not start it
            remedies.append(rollback(a, ch, label, []))
        elif a in ledger.stop_in_doubt:  # its stop was cut off: it may be stopping
            # an Active channel would give it transfers that its stop, finishing when the host
            # answers again (a frozen host thaws), would lose: the channel stays Inactive
            remedies.append(
                Remedy(
                    agent=a,
                    channel=ch,
                    steps=stop_standby(a, label),
                    result="in-doubt",
                    running_on=[],
                    note=(
                        f"its stop on {src} was cut off ({(error or reason)[:200]}); whether it "
                        "still runs is unknown"
                    ),
                    human=[
                        f"{a}: its stop on {src} was cut off, so "
                        + (f"channel {ch} stays Inactive; " if ch else "")
                        + f"once {src} answers, run the move again: it finishes the move if the "
                        "agent stopped, or moves it if it still runs"
                    ],
                )
            )
        else:  # still on the source
            steps = stop_standby(a, label)
            steps += [set_active_anywhere(ch)] if ch and ledger.still_inactive(ch) else []
            steps.append(
                step(
                    site,
                    f"compensation/{label}/clear-disabled",
                    "clear-disabled",
                    src,
                    [a],
                    if_fails="continue",
                )
            )
            remedies.append(
                Remedy(
                    agent=a,
                    channel=ch,
                    steps=steps,
                    result="left-on-source",
                    running_on=[src],
                    note=(error or reason)[:300],
                )
            )
    return remedies
