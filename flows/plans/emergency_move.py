"""The emergency move's plan: its three cases, decided from what a probe saw (pure).

* **A**, the host answers SSH: write the `.disabled` entries, stop its agents, then start them on
  their other hosts; a start that fails within the lock wait gets the DB sessions of those agents
  from the host killed (a host that crashed and rebooted left them open) and is started again.
* **B**, the host answers on the network but SSH does not work (refused, or the login hangs):
  launch the agents on their other hosts as hot standbys (each start waits for the DB lock the
  host's sessions still hold), kill the host's DB sessions once they wait, collect each standby
  the moment it holds its lock and set its channels Active; then try, within a bound, to stop the
  host's agents cleanly, and leave it to a human if that never works.
* **C**, the host does not answer at all: the same hot standbys, kill and collection, with nothing
  sent to the host (the run records it as unreachable: no step waits on a connect to it).

The DB lock is what makes B and C safe at once: only the lock's holder serves, a standby only
waits for it, and an agent of the host whose session was killed cannot take it back from the
standby that holds it. A standby that gave up is started again; one that cannot take its lock
gets the host's sessions of its agents killed again and is started once more. In case A every
channel of the moved agents is set Active at the end. Nothing here does I/O.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from config.site import Site, short_name
from flows.plans.model import Chain, Phase, Plan
from flows.plans.snapshot import HostSnapshot, HostWithPartners, SiteSnapshot
from flows.plans.start_again import start_again
from flows.plans.verbs import AnyStep, step

PROCEDURE = "emergency-move"
Case = Literal["A", "B", "C"]
Reach = Literal["open", "refused", "silent"]

#: cases B and C: how long after the standbys' processes run the host's DB sessions are
#: killed, so that each standby already asks for its lock and takes it the moment the kill frees
#: it (an agent of the host whose session was killed reconnects after a back-off, behind it)
KILL_AFTER_LAUNCH_S = 0.3
#: case B: how long to keep trying to stop the host's agents cleanly
STOP_BOUND_S = 10.0


def classify(reach: Reach, ssh_ok: bool) -> tuple[Case, str]:
    """The case (A, B or C) from what the probe saw.

    Args:
        reach: what the host's SSH port did: accept, refuse (RST), or stay silent.
        ssh_ok: whether a snapshot over SSH worked.
    """
    if ssh_ok:
        return "A", "the host answers SSH"
    if reach == "refused":
        return "B", "the host answers on the network but refuses SSH (sshd down)"
    if reach == "open":
        return "B", "the host accepts the connection but the SSH login fails or hangs"
    return "C", "the host does not answer on the network (down, or cut off)"


class Move(BaseModel):
    """One agent leaving the failed host, and where it goes (its other configured host)."""

    agent: str
    channel: str | None = None
    to: str


class EmergencyRequest(BaseModel):
    """What the probe saw of the failed host."""

    host: str
    reach: Reach
    #: the agents with a DB session from the host, read from the database when SSH works (an
    #: agent that runs nowhere but has one was lost by the host: a crash and a reboot leave its
    #: session holding its lock); empty when it was not read
    sessions_of: list[str] = Field(default_factory=list)
    #: agents that move even though they run nowhere (a rolling upgrade's failed host: they
    #: did not start on the new software there)
    failed_here: list[str] = Field(default_factory=list)


class EmergencyPlan(Plan):
    """The plan of an emergency move."""

    procedure: str = PROCEDURE
    host: str
    case: Case
    why: str
    moves: list[Move] = Field(default_factory=list)
    #: transfers given up on the host (None: its process table could not be read)
    transfers_given_up: int | None = None

    def targets(self) -> list[str]:
        """The hosts the agents go to."""
        return sorted({m.to for m in self.moves})


def choose_moves(
    site: Site,
    host: str,
    host_snap: HostSnapshot | None,
    others: SiteSnapshot,
    sessions_of: list[str] | None = None,
    failed_here: list[str] | None = None,
) -> list[Move]:
    """Which agents leave `host`, and where they go.

    An agent may run on `host` as its primary or as its backup (after an earlier move); it goes
    to its other host. With the host's own snapshot (case A) the agents that run there move, and
    so do two kinds that run nowhere: those an earlier move left half done (listed in the host's
    `.disabled` file: an emergency move stopped them, then could not start them on their other
    host), and those the host lost (a DB session from the host still exists for them,
    `sessions_of`: it crashed and rebooted, and they could not take their locks back). An agent
    that runs nowhere for neither reason was stopped by someone and is left alone.
    Without it (cases B and C) every agent that may run on `host` and does not run on its other
    host moves: it ran, or may have run, on the failed host, and nothing serves it now.
    """
    moves = []
    for a in site.agents_configured_on(host):
        to = a.backup if a.primary == host else a.primary
        if host_snap is not None:
            stranded = (
                (
                    a.name in host_snap.disabled
                    or a.name in (sessions_of or [])
                    or a.name in (failed_here or [])
                )
                and others.has(to)
                and others.host(to).reachable
                and not others.where(a.name)
            )
            if not host_snap.runs(a.name) and not stranded:
                continue
        elif to in others.where(a.name):
            continue
        moves.append(Move(agent=a.name, channel=a.channel, to=to))
    return moves


def partners(site: Site, host: str) -> list[str]:
    """The other hosts of every agent that may run on `host`."""
    return sorted(
        {a.backup if a.primary == host else a.primary for a in site.agents_configured_on(host)}
    )


def fence_human(host: str, why: str) -> str:
    """The human action for a host whose `.disabled` file could not be written."""
    return f"{host} {why}. When it is up, run `handover run fence-host --host {host}`"


def _by_target(moves: list[Move]) -> list[tuple[str, list[Move]]]:
    """The moves grouped by the host they go to, in name order."""
    out: dict[str, list[Move]] = {}
    for m in moves:
        out.setdefault(m.to, []).append(m)
    return sorted(out.items())


def _start_chains(site: Site, host: str, moves: list[Move]) -> list[Chain]:
    """Case A, per target: clear the `.disabled` entries and start (`start_again` if that
    fails)."""
    chains = []
    for target, ms in _by_target(moves):
        names = [m.agent for m in ms]
        fallback = start_again(site, f"{target}/", host, target, names)
        chains.append(
            Chain(
                name=f"start on {target}",
                steps=[
                    step(site, f"{target}/clear-disabled", "clear-disabled", target, names),
                    step(site, f"{target}/start", "start", target, names, fallback=fallback),
                ],
            )
        )
    return chains


def _standby_phases(site: Site, host: str, moves: list[Move]) -> list[Phase]:
    """Cases B and C: launch the standbys on the targets, then kill the host's DB sessions while
    each target collects its standbys and sets their channels Active (each target on its own,
    the moment its agents hold their locks; `start_again` for a standby that cannot)."""
    launch, collect = [], [Chain(name=f"free the locks of {host}", steps=[_kill(site, host)])]
    for target, ms in _by_target(moves):
        names = [m.agent for m in ms]
        chans = [m.channel for m in ms if m.channel]
        launch.append(
            Chain(
                name=f"standbys on {target}",
                steps=[
                    step(site, f"{target}/clear-disabled", "clear-disabled", target, names),
                    step(site, f"{target}/start-standby", "start-standby", target, names),
                ],
            )
        )
        steps = [
            step(
                site,
                f"{target}/await-serving",
                "await-serving",
                target,
                names,
                fallback=start_again(site, f"{target}/", host, target, names),
            )
        ]
        if chans:
            steps.append(
                step(
                    site,
                    f"{target}/set-active",
                    "set-active",
                    target,
                    [],
                    chans,
                    if_fails="continue",
                )
            )
        collect.append(Chain(name=f"collect on {target}", steps=steps))
    return [
        Phase(name="launch the standbys on the backups", chains=launch),
        Phase(name="free their DB locks and collect them", chains=collect),
    ]


def _kill(site: Site, host: str) -> AnyStep:
    return step(site, f"{host}/drop-sessions", "drop-sessions", host, delay_s=KILL_AFTER_LAUNCH_S)


def plan_emergency_move(site: Site, snap: HostWithPartners, req: EmergencyRequest) -> EmergencyPlan:
    """Plan the emergency move of `req.host`.

    Args:
        site: the site.
        snap: the host's own snapshot when SSH worked (`host` None otherwise) and a snapshot of
            the hosts the agents may go to (`partners`), with channel states.
        req: the failed host and what its SSH port did.

    Returns:
        The plan: its case and why, the moves, and the steps for that case.
    """
    host, host_snap, others = req.host, snap.host, snap.partners
    case, why = classify(req.reach, host_snap is not None)
    moves = choose_moves(site, host, host_snap, others, req.sessions_of, req.failed_here)
    names = [m.agent for m in moves]
    transfers = (
        sum(host_snap.transfers.get(m.channel or "", 0) for m in moves) if host_snap else None
    )
    notes = [
        f"{host}: case {case}: {why}; "
        + (
            "moving " + ", ".join(f"{short_name(m.agent)} to {m.to}" for m in moves)
            if moves
            else "no agent to move"
        )
    ]
    base = dict(site=site.site, host=host, case=case, why=why, moves=moves, notes=notes)
    unknown = [t for t in {m.to for m in moves} if not others.has(t)]
    if unknown:
        return EmergencyPlan(
            **base,
            ok=False,
            problems=[f"{t} is missing from the snapshot of the backups" for t in unknown],
        )
    phases: list[Phase] = []
    human: list[str] = []
    if moves and case == "A":
        phases.append(
            Phase(
                name=f"stop the agents on {host}",
                chains=[
                    Chain(
                        name=host,
                        steps=[
                            step(site, f"{host}/write-disabled", "write-disabled", host, names),
                            step(site, f"{host}/stop", "stop", host, names),
                        ],
                    )
                ],
            )
        )
        # their sessions end with their processes, unless the host crashed and rebooted since:
        # the crashed processes' sessions then still hold the locks on the server
        phases.append(
            Phase(
                name="start them on their backups",
                chains=_start_chains(site, host, moves),
            )
        )
    elif moves and case == "B":
        stop_human = (
            f"{host}: could not stop its agents within {STOP_BOUND_S:.0f} s; they keep trying to "
            "reconnect to the DB and cannot serve (the backups hold the locks). When "
            f"{host} is reachable, run `handover run fence-host --host {host}`"
        )
        phases += _standby_phases(site, host, moves)
        phases.append(
            Phase(
                name=f"stop the agents on {host} when it lets us",
                chains=[
                    Chain(
                        name=host,
                        steps=[
                            step(
                                site,
                                f"{host}/write-disabled",
                                "write-disabled",
                                host,
                                names,
                                retry_for_s=STOP_BOUND_S,
                                if_fails="end-chain",
                                human=stop_human,
                            ),
                            step(
                                site,
                                f"{host}/stop",
                                "stop",
                                host,
                                names,
                                retry_for_s=STOP_BOUND_S,
                                if_fails="continue",
                                human=stop_human,
                            ),
                        ],
                    )
                ],
            )
        )
    elif moves:
        phases += _standby_phases(site, host, moves)
        human.append(
            fence_human(
                host,
                "is down: its .disabled file could not be written, so its agents may try to "
                "start when it comes back (they cannot serve: the backups hold the locks)",
            )
        )
    elif case == "C":
        # nothing left to move (an earlier run moved it all), but the host is still down and
        # its .disabled file unread: the reminder must not vanish with a second run
        human.append(
            fence_human(
                host,
                "is down: its .disabled file could not be read, so its agents may try to start "
                "when it comes back (they cannot serve: the backups hold the locks)",
            )
        )
    chans = [m.channel for m in moves if m.channel]
    if chans and case == "A":  # B and C set them as each target collects its standbys
        target = moves[0].to
        phases.append(
            Phase(
                name="channels Active",
                chains=[
                    Chain(
                        name="channels",
                        steps=[
                            step(
                                site,
                                "channels/set-active",
                                "set-active",
                                target,
                                [],
                                chans,
                                if_fails="continue",
                            )
                        ],
                    )
                ],
            )
        )
    return EmergencyPlan(
        **base,
        ok=True,
        human=human,
        phases=phases,
        transfers_given_up=transfers,
    )
