"""The clean move's plan: a pure function of the site and a snapshot of it.

`plan_clean_move` decides, for each agent, what a move from one host to another still has to do,
and lays the steps out for the chosen mode:

* ``full``: the full clean move, as done by hand. Every channel Inactive, wait until none runs a
  transfer, write the `.disabled` entries, stop the agents, start them on the backup, every
  channel Active.
* ``staged``: the per-agent procedure done by hand, one agent after the other.
* ``pipelined``: every channel Inactive at once; each agent moves the moment its own channel has
  drained, so a channel's downtime is its own drain plus the restart.

A re-run after a crash converges because the plan is derived from what is live: an agent already
on the target only has the move finished (it must serve there, and its channel is set Active),
an agent stopped on the source
but not yet started on the target is started there, and so on. Nothing here does I/O.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from config.site import Site
from flows.plans.cutover import Cutover, decide
from flows.plans.model import AnyStep, Chain, Phase, Plan, steps_markdown
from flows.plans.snapshot import SiteSnapshot
from flows.plans.start_again import start_again
from flows.plans.verbs import HandOver, step

PROCEDURE = "clean-move"
#: hot standby with a cut-over window: the standby is launched this long before the cut-over's
#: moment, so that its launch is done before the channel goes Inactive
STANDBY_LEAD_S = 2.0
Mode = Literal["full", "staged", "pipelined"]
AgentState = Literal["on-source", "on-target", "on-neither"]


class MoveRequest(BaseModel):
    """What the operator asked for."""

    from_host: str
    to_host: str
    agents: list[str] | None = None
    mode: Mode = "pipelined"
    drain_timeout_s: float = 900.0
    force: bool = False
    expected_transfer_s: float = 210.0
    expected_restart_s: float = 5.0
    #: pipelined: how much later than the start a channel may go Inactive (0: all at once)
    cutover_window_s: float = Field(default=0.0, ge=0, le=3600)
    #: pipelined, with a window: go Inactive once the running transfers end within this long
    cutover_drain_s: float = 2.0
    #: pipelined: start each agent on the target ahead of its stop on the source
    hot_standby: bool = False
    #: how long an agent's start waits for its DB lock (bounds a standby's wait)
    lock_wait_s: float = 60.0


class AgentMove(BaseModel):
    """One agent in the plan: where it is now and what the move still has to do for it."""

    agent: str
    channel: str | None
    vo: str | None
    state: AgentState
    running_transfers: int = 0
    channel_state: str | None = None
    #: "move": the whole procedure; "start": stopped on the source, start it on the target;
    #: "finish": already on the target, only make sure it serves there (not listed in the
    #: target's `.disabled`) and its channel is Active.
    action: Literal["move", "start", "finish"]
    estimated_drain_s: float = 0.0
    #: pipelined with a cut-over window: when its channel is expected to go Inactive and why
    cutover: Cutover | None = None
    #: its start on the target is launched before the drain ends (hot standby)
    standby_early: bool = False
    #: listed in the target's `.disabled` file when the move was planned
    listed_on_target: bool = False


class MovePlan(Plan):
    """The plan of a clean move, shown before anything changes (and all a dry run does)."""

    procedure: str = PROCEDURE
    from_host: str
    to_host: str
    mode: Mode
    force: bool
    drain_timeout_s: float
    agents: list[AgentMove] = Field(default_factory=list)
    estimated_downtime_s: dict[str, float] = Field(default_factory=dict)
    estimated_duration_s: float = 0.0
    cutover_window_s: float = 0.0
    hot_standby: bool = False

    @property
    def channels(self) -> list[str]:
        """The channels the move touches."""
        return [m.channel for m in self.agents if m.channel is not None]


def _classify(
    site: Site, snap: SiteSnapshot, req: MoveRequest, problems: list[str], notes: list[str]
) -> list[AgentMove]:
    src, dst = snap.host(req.from_host), snap.host(req.to_host)
    pair = {req.from_host, req.to_host}
    candidates = [a for a in site.service.agents if {a.primary, a.backup} == pair]
    if req.agents is None and not candidates:
        # most likely a mistyped host: "nothing to move" would report it done
        pairs: dict[str, int] = {}
        for a in site.service.agents:
            key = " and ".join(sorted((a.primary, a.backup)))
            pairs[key] = pairs.get(key, 0) + 1
        where = "; ".join(f"{n} on {k}" for k, n in pairs.items())
        problems.append(
            f"no agent of site {site.site} is configured on {req.from_host} and {req.to_host}; "
            f"an agent moves between its primary and its backup, and the agents are: {where}"
        )
        return []
    if req.agents is not None:
        known = {a.name: a for a in site.service.agents}
        chosen = []
        for name in req.agents:
            agent = known.get(name)
            if agent is None:
                problems.append(f"agent {name} is not in site {site.site}")
            elif {agent.primary, agent.backup} != pair:
                problems.append(
                    f"{name} is configured on {agent.primary} and {agent.backup}, not on "
                    f"{req.from_host} and {req.to_host}; it cannot move between them"
                )
            else:
                chosen.append(agent)
        candidates = chosen
    moves: list[AgentMove] = []
    for a in candidates:
        on_src, on_dst = src.runs(a.name), dst.runs(a.name)
        ch_state = snap.channels.get(a.channel) if a.channel else None
        if on_src and on_dst:
            # one copy holds the DB lock, the other waits for it: the target's copy is a
            # standby (of an interrupted move, or started by the target's boot after a move
            # rolled back while that host was down), or it serves and the source's waits.
            # Either way the move's end is the target's copy alone: the move goes on, and the
            # source's copy is stopped after its drain
            why = (
                "the standby of an interrupted move"
                if a.name in src.disabled
                else f"a copy {req.to_host} started at its boot, or in a run that did not finish"
            )
            notes.append(
                f"{a.name} runs on both {req.from_host} and {req.to_host} ({why}); only one holds "
                f"the DB lock: the move goes on and stops it on {req.from_host}"
            )
            on_dst = False
        if on_src:
            state: AgentState = "on-source"
            action: Literal["move", "start", "finish"] = "move"
        elif on_dst:
            state, action = "on-target", "finish"
            unfinished = (ch_state not in (None, "Active")) or a.name not in src.disabled
            if req.agents is None and not unfinished:
                continue  # it simply lives there: not part of this move
            notes.append(f"{a.name} already runs on {req.to_host}: only finishing its move")
        else:
            state, action = "on-neither", "start"
            began = a.name in src.disabled or (ch_state not in (None, "Active"))
            if req.agents is None and not began:
                notes.append(f"{a.name} runs on neither host and no move of it began; left alone")
                continue
            notes.append(f"{a.name} runs on neither host: it will be started on {req.to_host}")
        running = src.running_transfers(a.channel) if a.channel else 0
        moves.append(
            AgentMove(
                agent=a.name,
                channel=a.channel,
                vo=a.vo,
                state=state,
                action=action,
                running_transfers=running,
                channel_state=ch_state,
                estimated_drain_s=req.expected_transfer_s if running and action == "move" else 0.0,
                listed_on_target=a.name in dst.disabled,
            )
        )
    for m in moves:
        if m.channel in snap.channel_errors:
            problems.append(
                f"the state of channel {m.channel} could not be read "
                f"({snap.channel_errors[m.channel]}); a move needs it: check that the hosts "
                "reach the database, then plan again"
            )
    return moves


def _chain_steps(
    site: Site,
    req: MoveRequest,
    ms: list[AgentMove],
    prefix: str,
    *,
    drain: bool = True,
    all_agents: bool = False,
) -> list[AnyStep]:
    """A group's move: Inactive, drained, `.disabled`, stop, start on the target, Active.

    All the group's agents or channels in one step each.
    """
    steps: list[AnyStep] = []
    src, dst = req.from_host, req.to_host
    moving = [m for m in ms if m.action == "move"]
    starting = [m for m in ms if m.action in ("move", "start")]
    finishing = [m for m in ms if m.action == "finish"]
    chans = [m.channel for m in ms if m.channel]
    move_chans = [m.channel for m in moving if m.channel]
    if drain and move_chans:
        steps.append(step(site, f"{prefix}set-inactive", "set-inactive", src, [], move_chans))
        steps.append(step(site, f"{prefix}wait-drained", "wait-drained", src, [], move_chans))
    if ms:
        # every agent of the move is listed on the source (a no-op where it already is), so a
        # reboot of the source does not start it there again
        steps.append(
            step(site, f"{prefix}write-disabled", "write-disabled", src, [m.agent for m in ms], [])
        )
    if moving:
        steps.append(
            step(
                site,
                f"{prefix}stop",
                "stop",
                src,
                [m.agent for m in moving],
                [],
                all_agents=all_agents,
            )
        )
    if starting or finishing:
        # the target is where each of them lives after the move: its boot must start them
        listed = [m.agent for m in starting + finishing]
        steps.append(step(site, f"{prefix}clear-disabled", "clear-disabled", dst, listed, []))
    if starting:
        names = [m.agent for m in starting]
        # once the stop is verified, a session of these agents from the source is stale (a
        # source cut off from the database, a database that froze, leave one holding the lock)
        steps.append(
            step(
                site,
                f"{prefix}start",
                "start",
                dst,
                names,
                [],
                fallback=start_again(site, prefix, src, dst, names),
            )
        )
    if finishing:
        names = [m.agent for m in finishing]
        # a copy already running on the target counts once it serves: one its boot started
        # after a crash may only wait for a lock its own stale session holds
        steps.append(
            step(
                site,
                f"{prefix}await-serving",
                "await-serving",
                dst,
                names,
                [],
                fallback=start_again(site, f"{prefix}finish/", src, dst, names),
            )
        )
    if chans:
        steps.append(step(site, f"{prefix}set-active", "set-active", dst, [], chans))
    return steps


def plan_clean_move(site: Site, snap: SiteSnapshot, req: MoveRequest) -> MovePlan:
    """Plan a clean move of agents from `req.from_host` to `req.to_host`.

    Args:
        site: the site.
        snap: a snapshot of (at least) both hosts, with channel states.
        req: the request.

    Returns:
        The plan. ``ok`` is False when a pre-check failed; ``problems`` then says why, and the plan
        has no steps (nothing may change).
    """
    problems: list[str] = []
    notes: list[str] = []
    base = dict(
        site=site.site,
        from_host=req.from_host,
        to_host=req.to_host,
        mode=req.mode,
        force=req.force,
        drain_timeout_s=req.drain_timeout_s,
    )
    if req.from_host == req.to_host:
        problems.append(f"source and target are both {req.from_host}")
    for h in (req.from_host, req.to_host):
        if h not in {x.name for x in site.hosts}:
            problems.append(f"host {h} is not in site {site.site} ({site.host_names()})")
    if problems:
        return MovePlan(**base, ok=False, problems=problems)
    for h in (req.from_host, req.to_host):
        try:
            hs = snap.host(h)
        except KeyError:
            problems.append(f"{h} is missing from the snapshot")
            continue
        if not hs.reachable:
            problems.append(
                f"{h} is unreachable ({hs.error}); a clean move needs both hosts. If {h} has "
                "failed, use the emergency move"
            )
    if not problems and site.channels and not snap.channels:
        problems.append("channel states could not be read")
    if problems:
        return MovePlan(**base, ok=False, problems=problems)
    moves = _classify(site, snap, req, problems, notes)
    if problems:
        return MovePlan(**base, ok=False, problems=problems, notes=notes, agents=moves)
    if not moves:
        notes.append(f"nothing to move from {req.from_host} to {req.to_host}")
        return MovePlan(**base, ok=True, notes=notes)

    phases: list[Phase] = []
    if req.mode == "full":
        everything = moves
        all_on_source = (
            all(m.action == "move" for m in moves)
            and req.agents is None
            and len(snap.host(req.from_host).agents) == len(moves)
        )
        phases.append(
            Phase(
                name="full move",
                chains=[
                    Chain(
                        name="all agents",
                        steps=_chain_steps(site, req, everything, "all/", all_agents=all_on_source),
                    )
                ],
            )
        )
    elif req.mode == "staged":
        steps: list[AnyStep] = []
        for m in moves:
            steps += _chain_steps(site, req, [m], f"{m.channel or m.vo}/")
        phases.append(
            Phase(name="staged move", chains=[Chain(name="one agent at a time", steps=steps)])
        )
    else:
        phases += _pipelined(site, snap, req, moves, notes)

    restart = req.expected_restart_s
    for m in moves:
        if m.cutover is not None:
            m.estimated_drain_s = m.cutover.drain_s
    chans = [m for m in moves if m.channel]
    longest = max((m.estimated_drain_s for m in chans), default=0.0)
    if req.mode == "full":
        downtime = {str(m.channel): longest + restart for m in chans}
        duration = longest + restart
    else:
        downtime = {str(m.channel): m.estimated_drain_s + restart for m in chans}
        duration = sum(downtime.values()) if req.mode == "staged" else longest + restart
    if req.mode == "pipelined":
        duration += max((m.cutover.after_s for m in moves if m.cutover is not None), default=0.0)
    return MovePlan(
        **base,
        ok=True,
        notes=notes,
        agents=moves,
        phases=phases,
        estimated_downtime_s=downtime,
        estimated_duration_s=duration,
        cutover_window_s=req.cutover_window_s if req.mode == "pipelined" else 0.0,
        hot_standby=req.hot_standby and req.mode == "pipelined",
    )


def _pipelined(
    site: Site, snap: SiteSnapshot, req: MoveRequest, moves: list[AgentMove], notes: list[str]
) -> list[Phase]:
    """The pipelined mode's phases: every channel Inactive at once (or each at its own moment,
    with a cut-over window and the transfers' times known), then each agent moved as soon as
    its channel has drained (started on the target ahead of its stop, with hot standby)."""
    src, dst = req.from_host, req.to_host
    eta = snap.transfer_eta
    drain_aware = req.cutover_window_s > 0 and eta is not None
    if req.cutover_window_s > 0 and eta is None:
        notes.append(
            "cut-over window set but the transfers' remaining times are unknown (no "
            "database.transfer_eta_query, or it failed): every channel goes Inactive at once"
        )
    phases: list[Phase] = []
    move_chans = [m.channel for m in moves if m.action == "move" and m.channel]
    if move_chans and not drain_aware:
        phases.append(
            Phase(
                name="stop new transfers",
                chains=[
                    Chain(
                        name="all channels",
                        steps=[step(site, "all/set-inactive", "set-inactive", src, [], move_chans)],
                    )
                ],
            )
        )
    chains = []
    for m in moves:
        label = m.channel or f"vo-{m.vo}"
        p = f"{label}/"
        steps: list[AnyStep] = []
        moving = m.action == "move"
        cut: list[AnyStep] = []
        if moving and m.channel and drain_aware:
            assert eta is not None
            m.cutover = decide(
                eta.get(m.channel, []), req.cutover_drain_s, 0.0, req.cutover_window_s
            )
            cut = [
                step(
                    site,
                    f"{p}await-cutover",
                    "await-cutover",
                    src,
                    [],
                    [m.channel],
                    drain_s=req.cutover_drain_s,
                    window_s=req.cutover_window_s,
                ),
                # at the moment the cut-over chose: no read before it
                step(
                    site, f"{p}set-inactive", "set-inactive", src, [], [m.channel], read_first=False
                ),
            ]
        if not (moving and req.hot_standby):
            steps += cut
            if moving and m.channel:
                steps.append(step(site, f"{p}wait-drained", "wait-drained", src, [], [m.channel]))
            steps += _chain_steps(site, req, [m], p, drain=False)
            chains.append(Chain(name=label, steps=steps))
            continue
        drain = m.cutover.drain_s if m.cutover is not None else m.estimated_drain_s
        lead = STANDBY_LEAD_S if cut else 0.0
        # the standby waits for the lock from its launch through the drain and the stop: only
        # when that fits inside the agent's lock wait with a margin (else it would give up: it
        # is launched after the drain)
        m.standby_early = drain + req.expected_restart_s + lead <= 0.75 * req.lock_wait_s
        standby = step(site, f"{p}start-standby", "start-standby", dst, [m.agent], [])
        if cut and m.standby_early:
            # the target is prepared while the channel still serves, just before its moment
            steps.append(
                step(
                    site,
                    f"{p}prepare",
                    "await-cutover",
                    src,
                    [],
                    cut[0].channels,
                    drain_s=req.cutover_drain_s,
                    window_s=req.cutover_window_s,
                    lead_s=lead,
                )
            )
        else:
            steps += cut
        steps.append(step(site, f"{p}write-disabled", "write-disabled", src, [m.agent], []))
        steps.append(step(site, f"{p}clear-disabled", "clear-disabled", dst, [m.agent], []))
        if m.standby_early:
            steps.append(standby)
            if cut:
                # a transfer begun after the preparation may put the moment off: a standby
                # that has waited too long to last through the drain and the stop is launched
                # again, while the channel still serves
                budget = req.lock_wait_s - (drain + req.expected_restart_s + 1.0)
                steps.append(cut[0])
                steps.append(
                    step(
                        site,
                        f"{p}refresh-standby",
                        "start-standby",
                        dst,
                        [m.agent],
                        max_wait_s=max(1.0, budget),
                    )
                )
                steps.append(cut[1])
        if m.channel:
            steps.append(step(site, f"{p}wait-drained", "wait-drained", src, [], [m.channel]))
        if not m.standby_early:
            steps.append(standby)
        if m.channel and site.database is not None and site.database.sees_lock_release:
            # the channel goes Active the moment the agent's DB session ends (it can start no
            # transfer without its lock, which the standby takes), not once the stop returned
            steps.append(
                step(site, f"{p}hand-over", "hand-over", src, [m.agent], [m.channel], target=dst)
            )
        else:
            # on the channel's critical path: stopped, then verified (no read before)
            steps.append(step(site, f"{p}stop", "stop", src, [m.agent], read_first=False))
            if m.channel:
                # the source's agent is gone: only the standby can take the channel's work,
                # and pending jobs wait for it in the database meanwhile
                steps.append(step(site, f"{p}set-active", "set-active", dst, [], [m.channel]))
        steps.append(
            step(
                site,
                f"{p}await-serving",
                "await-serving",
                dst,
                [m.agent],
                [],
                fallback=start_again(site, p, src, dst, [m.agent]),
            )
        )
        chains.append(Chain(name=label, steps=steps))
    phases.append(Phase(name="move each agent as its channel drains", chains=chains))
    return phases


def plan_markdown(plan: MovePlan) -> str:
    """The plan as markdown: per phase and chain, each step with its host and exact commands."""
    out = [f"## Clean move plan: {plan.from_host} -> {plan.to_host} ({plan.mode} mode)", ""]
    if not plan.ok:
        out += ["**Pre-checks failed; nothing will change:**", ""]
        out += [f"- {p}" for p in plan.problems]
        return "\n".join(out)
    out += [
        "| agent | now | running transfers | channel | action | est. downtime |",
        "|---|---|---|---|---|---|",
    ]
    for m in plan.agents:
        est = plan.estimated_downtime_s.get(m.channel or "", 0.0)
        out.append(
            f"| {m.agent} | {m.state} | {m.running_transfers} | "
            f"{m.channel or '-'} {m.channel_state or ''} | {m.action} | "
            f"{est:.0f} s |"
        )
    out += [
        "",
        f"Estimated duration: {plan.estimated_duration_s:.0f} s; drain timeout "
        f"{plan.drain_timeout_s:.0f} s{'; FORCED after timeout' if plan.force else ''}.",
        "",
    ]
    cut = [m for m in plan.agents if m.cutover is not None]
    if cut:
        out += [
            f"Cut-over (each channel goes Inactive when its transfers are about to end, at most "
            f"{plan.cutover_window_s:g} s after the start; checked again when the moment comes):",
            "",
        ]
        for m in cut:
            assert m.cutover is not None
            when = "at once" if m.cutover.now else f"in about {m.cutover.after_s:.1f} s"
            out.append(f"- {m.channel}: {when}: {m.cutover.reason}")
        out.append("")
    if plan.hot_standby:
        early = [m.agent for m in plan.agents if m.standby_early]
        out += [
            "Hot standby: each agent's start on the target is launched before its stop on the "
            "source and takes the DB lock when the source's agent lets go"
            + (
                f" (launched before the drain: {', '.join(early)}; the others after it)"
                if early
                else " (after its drain)"
            )
            + "; a standby that gave up waiting is started again after the stop."
            + (
                " Each channel goes Active the moment the database shows its agent's session "
                "from the source ended, while the stop command still runs (hand-over)."
                if any(isinstance(s, HandOver) for s in plan.steps)
                else ""
            ),
            "",
        ]
    for note in plan.notes:
        out.append(f"- {note}")
    out += steps_markdown(plan)
    return "\n".join(out)
