"""What every plan is made of: steps in chains in phases, and what the executor did so far.

A plan is data. Each `Step` names a verb, the host it acts on, its agents or channels, the exact
commands the verb runs, what must hold before it (`pre`) and what holds after it (`post`, which
the verb checks against the host). Chains of a phase run at the same time, the steps of a chain
one after the other, the phases in order. A step may say what to do when it fails: keep trying
within a bound (`retry_for_s`), run other steps instead (`fallback`), and whether the chain goes
on (`if_fails`) and what a human must then do (`human`).

The `Ledger` is what the executor has done so far, in the terms compensation needs; a procedure's
compensation is a pure function of its plan and a ledger, and returns `Remedy` objects, each a
short list of steps for one agent and the outcome it leads to.

Nothing here does I/O or imports Prefect, SSH or a database driver.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Verb = Literal[
    "set-inactive",
    "wait-drained",
    "write-disabled",
    "stop",
    "clear-disabled",
    "start",
    "set-active",
    "drop-sessions",
    "frontend-disable",
    "frontend-enable",
    "fence-epoch",
    "move-alias",
    "check-agents",
    "install-version",
    "configure-node",
    "restart-agents",
    "await-cutover",
    "start-standby",
    "await-serving",
    "hand-over",
]

#: what each verb needs before it runs, and what it leaves (the verb verifies the latter)
CONDITIONS: dict[Verb, tuple[str, str]] = {
    "set-inactive": ("the channels exist", "each channel reads Inactive"),
    "wait-drained": (
        "the channels are Inactive",
        "no transfer of the channels runs on the host",
    ),
    "write-disabled": ("the host answers SSH", "each agent is listed in the .disabled file"),
    "stop": ("the host answers SSH", "no process of the agents runs on the host"),
    "clear-disabled": (
        "the .disabled file can be read",
        "no agent is listed in the .disabled file",
    ),
    "start": (
        "the agents are configured on the host and not listed in its .disabled file",
        "each agent runs on the host (it holds its DB lock)",
    ),
    "set-active": ("an agent serves each channel", "each channel reads Active"),
    "drop-sessions": (
        "the database answers",
        "none of the DB sessions found from the host remains (a reconnect is a new one)",
    ),
    "frontend-disable": ("the host answers SSH", "its front end is a slave"),
    "frontend-enable": (
        "the database's epoch is not newer than the step's",
        "the front end answers as the master with the step's epoch",
    ),
    "fence-epoch": (
        "the database's epoch is not newer than the step's",
        "the database's epoch is the step's",
    ),
    "move-alias": (
        "the alias holds the addresses the step expects (compare-and-set)",
        "every authoritative server answers the new address and epoch",
    ),
    "check-agents": (
        "the host answers SSH",
        "each of the agents serves there, and the hosts of their backups answer",
    ),
    "install-version": ("the host answers SSH", "the step's version is installed"),
    "configure-node": (
        "the site-info file is readable",
        "the agents' configuration is rendered (its changes are reported)",
    ),
    "restart-agents": (
        "the agents run on the host",
        "each agent serves again (with the step's version), its running transfers kept",
    ),
    "await-cutover": (
        "the database tells how long each running transfer still needs",
        "the channel's running transfers all end within the step's drain, or its window ended",
    ),
    "start-standby": (
        "the agents are configured on the host and not listed in its .disabled file",
        "each agent's start runs on the host, waiting for the DB lock the source holds",
    ),
    "await-serving": (
        "the source's agents are stopped",
        "each agent runs on the host (its standby took the DB lock, or it was started again)",
    ),
    "hand-over": (
        "the channels have drained; each agent's standby waits for its DB lock on the target",
        "no process of the agents runs on the host, and each channel reads Active (set as soon "
        "as the database shows the agent's session ended)",
    ),
}

#: ``in-doubt``: its stop was interrupted on a host that stopped answering, so whether it still
#: runs is unknown until the host answers again
AgentResult = Literal["moved", "finished", "left-on-source", "rolled-back", "stranded", "in-doubt"]


class Step(BaseModel):
    """One verb on one host for some agents or channels, with the exact commands it runs."""

    id: str
    verb: Verb
    host: str
    agents: list[str] = Field(default_factory=list)
    channels: list[str] = Field(default_factory=list)
    commands: list[str] = Field(default_factory=list)
    pre: str = ""
    post: str = ""
    #: a stop of every agent of the host: the profile's stop-all command (seed 000 step 6)
    all_agents: bool = False
    #: wait this long after the chain reached the step before running it
    delay_s: float = 0.0
    #: keep retrying a failed step (any error) until this many seconds have passed
    retry_for_s: float = 0.0
    #: steps run in its place when it fails; the step counts as done when they all succeed
    fallback: list[Step] = Field(default_factory=list)
    #: when the step (and its fallback) failed for good: ``abort`` fails the chain (the
    #: procedure's compensation runs), ``end-chain`` ends the chain without failing it,
    #: ``continue`` goes on with the chain's next step; the last two record the failure and
    #: the step's `human` action
    if_fails: Literal["abort", "end-chain", "continue"] = "abort"
    #: what a human must do when the step failed for good
    human: str = ""
    #: the service epoch the step writes (frontend-enable, fence-epoch, move-alias)
    epoch: int | None = None
    #: move-alias: the new address; frontend-disable: where clients are redirected (``-``: none)
    address: str = ""
    #: move-alias: the addresses the alias must hold now (the compare of compare-and-set)
    expect: list[str] = Field(default_factory=list)
    #: move-alias: the epoch the alias's TXT record must hold now (None: no TXT record), part of
    #: the same compare
    expect_epoch: int | None = None
    #: frontend-disable: how long clients are redirected
    seconds: int = 0
    #: install-version: the version to install; restart-agents: the version each agent must run
    version: str | None = None
    #: check-agents: other hosts that must answer (the hosts of the agents' backups);
    #: hand-over: the host whose standbys wait for the agents' locks
    others: list[str] = Field(default_factory=list)
    #: await-cutover: go on once every running transfer of the channel ends within this long
    drain_s: float = 0.0
    #: await-cutover: go on at the latest this long after the procedure began acting
    window_s: float = 0.0
    #: await-cutover: go on this long before the cut-over's moment (to prepare for it)
    lead_s: float = 0.0
    #: start-standby: launch again a standby of this run that has waited longer than this
    max_wait_s: float = 0.0
    #: stop, set-inactive: read the host before acting (False: act, then verify; on a critical
    #: path, or at a moment chosen for it)
    read_first: bool = True


class Chain(BaseModel):
    """Steps run one after the other."""

    name: str
    steps: list[Step]


class Phase(BaseModel):
    """Chains run at the same time; the next phase starts when all have ended."""

    name: str
    chains: list[Chain]


class Plan(BaseModel):
    """A procedure's plan: shown before anything changes, and all a dry run does.

    ``ok`` is False when a pre-check failed; ``problems`` then says why, and the plan has no
    steps. ``human`` lists what a human will have to do whatever happens (known at plan time).
    """

    procedure: str
    site: str
    ok: bool
    problems: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    human: list[str] = Field(default_factory=list)
    phases: list[Phase] = Field(default_factory=list)

    @property
    def steps(self) -> list[Step]:
        """Every step, in plan order (fallbacks not included)."""
        return [s for p in self.phases for c in p.chains for s in c.steps]

    def steps_on(self, host: str) -> list[Step]:
        """The steps that act on one host, in order."""
        return [s for s in self.steps if s.host == host]

    def hosts(self) -> list[str]:
        """The hosts the plan acts on, in order of first use."""
        return list(dict.fromkeys(s.host for s in self.steps))


class Ledger(BaseModel):
    """What the executor has done so far, as compensation needs to know it."""

    inactive: list[str] = Field(default_factory=list)
    active: list[str] = Field(default_factory=list)
    stopped: list[str] = Field(default_factory=list)
    started: list[str] = Field(default_factory=list)
    #: agents whose start was launched on the target ahead of their stop (hot standby)
    standby: list[str] = Field(default_factory=list)
    #: agents whose stop failed on the connection: the command may have reached the host
    #: before it stopped answering, so they may be stopping (a frozen host finishes the stop
    #: when it thaws)
    stop_in_doubt: list[str] = Field(default_factory=list)
    #: ids of the steps that succeeded
    done: list[str] = Field(default_factory=list)
    #: the alias was moved (move-alias succeeded)
    alias_moved: bool = False

    def still_inactive(self, channel: str) -> bool:
        """Set Inactive by the run and not yet Active again."""
        return channel in self.inactive and channel not in self.active

    def record_in_doubt(self, step: Step) -> None:
        """Note a step whose outcome is unknown: the connection failed while its command may
        have run (only a stop leaves a state that matters in doubt)."""
        if step.verb in ("stop", "hand-over"):
            self.stop_in_doubt += [a for a in step.agents if a not in self.stop_in_doubt]

    def record(self, step: Step) -> None:
        """Note a step that succeeded."""
        if step.id not in self.done:
            self.done.append(step.id)
        if step.verb == "move-alias":
            self.alias_moved = True
        if step.verb == "set-inactive":
            self.inactive += [c for c in step.channels if c not in self.inactive]
        elif step.verb == "set-active":
            self.active += [c for c in step.channels if c not in self.active]
        elif step.verb == "stop":
            self.stopped += [a for a in step.agents if a not in self.stopped]
        elif step.verb == "hand-over":
            self.stopped += [a for a in step.agents if a not in self.stopped]
            self.active += [c for c in step.channels if c not in self.active]
        elif step.verb in ("start", "await-serving"):
            self.started += [a for a in step.agents if a not in self.started]
        elif step.verb == "start-standby":
            self.standby += [a for a in step.agents if a not in self.standby]

    @classmethod
    def after(cls, plan: Plan, step_id: str) -> Ledger:
        """The ledger of a run that did the plan's steps in order up to `step_id` included."""
        ledger = cls()
        for s in plan.steps:
            ledger.record(s)
            if s.id == step_id:
                return ledger
        raise KeyError(f"no step {step_id!r} in the plan")


class Remedy(BaseModel):
    """Compensation for one agent: steps to run in order, and where they leave the agent.

    A failing step whose ``if_fails`` is ``abort`` ends the remedy with `failed` (when set);
    ``continue`` records the failure (and its ``human`` action) and goes on.
    """

    agent: str
    channel: str | None = None
    steps: list[Step] = Field(default_factory=list)
    result: AgentResult
    running_on: list[str]
    note: str = ""
    #: where the agent is when an aborting step failed
    failed_result: AgentResult | None = None
    failed_note: str = ""
    #: what a human must do whatever the steps do
    human: list[str] = Field(default_factory=list)


def steps_markdown(plan: Plan) -> list[str]:
    """Each phase and chain of a plan, each step with its host and exact commands (markdown)."""
    out: list[str] = []
    for phase in plan.phases:
        out += ["", f"### {phase.name}"]
        for chain in phase.chains:
            if len(phase.chains) > 1:
                out.append(f"- **{chain.name}**")
            for s in chain.steps:
                extra = f" (after {s.delay_s:g} s)" if s.delay_s else ""
                out.append(
                    f"  1. `{s.host}` {s.verb}{extra}: " + "; ".join(f"`{c}`" for c in s.commands)
                )
                for f in s.fallback:
                    out.append(
                        f"     - if it fails: `{f.host}` {f.verb}: "
                        + "; ".join(f"`{c}`" for c in f.commands)
                    )
    return out
