"""What every step of a plan has, and the ledger of what the executor has done so far.

A `Step` names a verb, the host it acts on, its agents or channels, the exact commands the verb
runs, what must hold before it (`pre`) and what holds after it (`post`, which the verb checks
against the host), and what to do when it fails. Each verb is a subclass of `Step` in
`flows.plans.verbs` with the parameters only it needs, its conditions, the commands it shows and
its effect on the `Ledger`; a plan file names the verb and the union of those subclasses reads
each step as its own kind.

Nothing here does I/O or imports Prefect, SSH or a database driver.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from config.site import Site
    from flows.plans.model import Plan
    from flows.plans.verbs import AnyStep


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

    def add(
        self,
        field: Literal[
            "inactive", "active", "stopped", "started", "standby", "stop_in_doubt", "done"
        ],
        names: list[str],
    ) -> None:
        """Add names to one of the ledger's lists, each once, in order."""
        have: list[str] = getattr(self, field)
        have += [n for n in names if n not in have]

    def record_in_doubt(self, step: Step) -> None:
        """Note a step whose outcome is unknown: the connection failed while its command may
        have run (only a stop leaves a state that matters in doubt)."""
        step.in_doubt(self)

    def record(self, step: Step) -> None:
        """Note a step that succeeded."""
        self.add("done", [step.id])
        step.done(self)

    @classmethod
    def after(cls, plan: Plan, step_id: str) -> Ledger:
        """The ledger of a run that did the plan's steps in order up to `step_id` included."""
        ledger = cls()
        for s in plan.steps:
            ledger.record(s)
            if s.id == step_id:
                return ledger
        raise KeyError(f"no step {step_id!r} in the plan")


class Step(BaseModel):
    """One verb on one host for some agents or channels, with the exact commands it runs.

    A subclass per verb (`flows.plans.verbs`) sets `verb`, its conditions `PRE` and `POST`,
    the commands it shows (`planned_commands`), and what it leaves in the ledger (`done`,
    `in_doubt`, `partly_done`).
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    verb: str
    host: str
    agents: list[str] = Field(default_factory=list)
    channels: list[str] = Field(default_factory=list)
    commands: list[str] = Field(default_factory=list)
    pre: str = ""
    post: str = ""
    #: wait this long after the chain reached the step before running it
    delay_s: float = 0.0
    #: keep retrying a failed step (any error) until this many seconds have passed
    retry_for_s: float = 0.0
    #: steps run in its place when it fails; the step counts as done when they all succeed
    fallback: list[AnyStep] = Field(default_factory=list)
    #: when the step (and its fallback) failed for good: ``abort`` fails the chain (the
    #: procedure's compensation runs), ``end-chain`` ends the chain without failing it,
    #: ``continue`` goes on with the chain's next step; the last two record the failure and
    #: the step's `human` action
    if_fails: Literal["abort", "end-chain", "continue"] = "abort"
    #: what a human must do when the step failed for good
    human: str = ""

    #: what must hold before the verb runs, and what it leaves (the verb verifies the latter)
    PRE: ClassVar[str] = ""
    POST: ClassVar[str] = ""
    #: the state the step writes to its channels ("Inactive", "Active"), if it writes one:
    #: the executor notes the moment (the drain counts from it)
    SETS_CHANNELS: ClassVar[str | None] = None
    #: the step waits for its channels to drain on its host: the executor's one drain monitor
    #: watches them from the start of the run
    WATCHES_DRAIN: ClassVar[bool] = False

    @classmethod
    def build(
        cls,
        site: Site,
        sid: str,
        host: str,
        agents: list[str] | None = None,
        channels: list[str] | None = None,
        **fields: object,
    ) -> Self:
        """The step with the commands it runs on this site and its conditions."""
        made = cls.model_validate(
            {
                "id": sid,
                "host": host,
                "agents": agents or [],
                "channels": channels or [],
                "pre": cls.PRE,
                "post": cls.POST,
                **fields,
            }
        )
        made.commands = made.planned_commands(site)
        return made

    def planned_commands(self, site: Site) -> list[str]:
        """The commands the verb runs for the step (what the plan shows)."""
        return []

    def done(self, ledger: Ledger) -> None:
        """Note in the ledger what the step did (it succeeded)."""

    def in_doubt(self, ledger: Ledger) -> None:
        """Note in the ledger what the step may have done (the connection failed meanwhile)."""

    def partly_done(self, ledger: Ledger, exc: BaseException) -> None:
        """Note in the ledger the part of its work a failed step did (from its exception)."""
