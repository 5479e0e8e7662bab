"""What every plan is made of: steps in chains in phases, and what the executor did so far.

A plan is data. Each step (`flows.plans.step.Step`, one subclass per verb in
`flows.plans.verbs`) names a verb, the host it acts on, its agents or channels, the exact
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

from flows.plans.step import Ledger, Step
from flows.plans.verbs import AnyStep

#: ``in-doubt``: its stop was interrupted on a host that stopped answering, so whether it still
#: runs is unknown until the host answers again
AgentResult = Literal["moved", "finished", "left-on-source", "rolled-back", "stranded", "in-doubt"]


class AgentOutcome(BaseModel):
    """Where an agent ended, and how."""

    agent: str
    channel: str | None
    result: AgentResult
    running_on: list[str]
    note: str = ""


class Chain(BaseModel):
    """Steps run one after the other."""

    name: str
    steps: list[AnyStep]


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
    def steps(self) -> list[AnyStep]:
        """Every step, in plan order (fallbacks not included)."""
        return [s for p in self.phases for c in p.chains for s in c.steps]

    def steps_on(self, host: str) -> list[AnyStep]:
        """The steps that act on one host, in order."""
        return [s for s in self.steps if s.host == host]

    def hosts(self) -> list[str]:
        """The hosts the plan acts on, in order of first use."""
        return list(dict.fromkeys(s.host for s in self.steps))


class Failure(BaseModel):
    """A chain that failed, as a procedure's compensation sees it."""

    chain: Chain
    #: the error's kind (its class name, e.g. ``DrainTimeout``, ``AliasChanged``)
    kind: str
    #: the error's message
    message: str

    @classmethod
    def of(cls, chain: Chain, error: BaseException) -> Failure:
        """The failure of `chain` by `error`."""
        return cls(chain=chain, kind=type(error).__name__, message=str(error))


class Remedy(BaseModel):
    """Compensation for one agent: steps to run in order, and where they leave the agent.

    A failing step whose ``if_fails`` is ``abort`` ends the remedy with `failed` (when set);
    ``continue`` records the failure (and its ``human`` action) and goes on.
    """

    agent: str
    channel: str | None = None
    steps: list[AnyStep] = Field(default_factory=list)
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


__all__ = [
    "AgentOutcome",
    "AgentResult",
    "AnyStep",
    "Chain",
    "Ledger",
    "Phase",
    "Plan",
    "Remedy",
    "Step",
    "steps_markdown",
]
