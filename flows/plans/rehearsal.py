"""A rehearsal on the twin (`handover rehearse`), in pure terms: do the real site's plan and the
twin's match, what a rehearsal's record says, and whether it lets a run go ahead.

Two plans match when their steps are the same (phase, chain, step, verb, host, agents,
channels, in order) and every other difference is one the twin is known to make: its site's
name (``SITE-twin``), its database's kind (the lab's PostgreSQL), which appears in the words
of a command, and the load at each snapshot (the running transfers and the estimates made from
them). Any other difference is unexplained: the twin is not the site there, and the rehearsal
does not count.

A rehearsal's record binds the plan's fingerprint (a hash of its steps, what `plan_shape`
lists): a run of a procedure whose policy says ``rehearse: required`` goes ahead only with a
passed rehearsal of the same fingerprint within the policy's bound (`rehearsal_refusal`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from typing import Any

from pydantic import BaseModel, Field

from flows.plans.model import Plan

#: database kinds a twin replaces by the lab's PostgreSQL (named in commands' words)
DB_KINDS = ("oracle", "mariadb", "postgresql")


class Difference(BaseModel):
    """One leaf where the real plan and the twin's differ."""

    path: str
    real: str
    twin: str
    #: why the twin differs there (None: unexplained)
    explained: str | None = None


class PlanComparison(BaseModel):
    """The real site's plan against the twin's."""

    matches: bool
    differences: list[Difference] = Field(default_factory=list)

    @property
    def unexplained(self) -> list[Difference]:
        """The differences the twin does not account for."""
        return [d for d in self.differences if d.explained is None]


class RehearsalRecord(BaseModel):
    """What a rehearsal found, kept for the run it clears (a Prefect Variable)."""

    site: str
    procedure: str
    fingerprint: str
    at: dt.datetime
    passed: bool
    plans_match: bool
    jobs_lost: int
    agents_twice: int
    #: per channel, seconds without a serving agent on the twin
    downtime_s: dict[str, float] = Field(default_factory=dict)
    #: where its report is (the artifact's key, and its URL when the API has a UI)
    report: str = ""
    #: `handover rehearse`'s seal over the fields a run checks (`flows.seals.rehearsal_seal`)
    seal: str = ""

    @property
    def sealed_fields(self) -> tuple[str, str, str, str, bool]:
        """What the seal covers: site, procedure, fingerprint, time (ISO), passed."""
        return (self.site, self.procedure, self.fingerprint, self.at.isoformat(), self.passed)

    def sentence(self) -> str:
        """How an approver is told about it."""
        worst = max(self.downtime_s.values(), default=0.0)
        return (
            f"rehearsed at {self.at:%H:%M} UTC on the twin: {self.jobs_lost} lost, "
            f"{self.agents_twice} serving twice, {worst:.1f} s downtime at most"
            + ("" if self.passed else " (FAILED)")
            + (f"; {self.report}" if self.report else "")
        )


def plan_shape(plan: Plan) -> list[str]:
    """The plan's steps as lines, what must be the same on the twin."""
    return [
        f"{p.name} / {c.name} / {s.id} {s.verb} {s.host} "
        f"agents={','.join(s.agents)} channels={','.join(s.channels)}"
        for p in plan.phases
        for c in p.chains
        for s in c.steps
    ]


def fingerprint(plan: Plan) -> str:
    """A hash of the plan's procedure and steps (`plan_shape`)."""
    text = "\n".join([plan.procedure, *plan_shape(plan)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _leaves(a: Any, b: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [
            d for k in sorted(set(a) | set(b)) for d in _leaves(a.get(k), b.get(k), f"{path}.{k}")
        ]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in _leaves(x, y, f"{path}[{i}]")
        ]
    return [] if a == b else [(path, a, b)]


#: plan fields that follow the load at the snapshot (running transfers and what is estimated
#: from them), not the steps
LOAD_FIELDS = re.compile(
    r"^\.(agents\[\d+\]\.(running_transfers|estimated_drain_s)|estimated_downtime_s\..+|"
    r"estimated_duration_s)$"
)


def _why(path: str, real: Any, twin: Any, site: str) -> str | None:
    if path == ".site" and twin == f"{site}-twin":
        return "the twin's site is named after the site, with -twin"
    if LOAD_FIELDS.match(path):
        return "the load: the transfers running at each snapshot, and the estimates from them"
    if isinstance(real, str) and isinstance(twin, str):
        for kind in DB_KINDS:
            if real.startswith(f"{kind}:") and twin.startswith("postgresql:"):
                if real.split(":", 1)[1] == twin.split(":", 1)[1]:
                    return f"the twin's database is the lab's PostgreSQL, the site's {kind}"
    return None


def compare_plans(real: Plan, twin: Plan) -> PlanComparison:
    """Whether the twin's plan is the real one's (module docstring), with every difference."""
    diffs = [
        Difference(
            path=path,
            real=str(a),
            twin=str(b),
            explained=_why(path, a, b, real.site),
        )
        for path, a, b in _leaves(real.model_dump(mode="json"), twin.model_dump(mode="json"))
    ]
    same_steps = plan_shape(real) == plan_shape(twin)
    return PlanComparison(matches=same_steps and all(d.explained for d in diffs), differences=diffs)


def rehearsal_refusal(
    record: RehearsalRecord | None,
    plan: Plan,
    *,
    now: dt.datetime,
    within_s: float,
    command: str,
    sealed: bool,
) -> str | None:
    """Why a run whose policy requires a rehearsal may not go ahead (None: it may).

    Args:
        record: the site's last rehearsal of this procedure (None: none).
        plan: the run's plan.
        now: the time now.
        within_s: how old a rehearsal may be.
        command: the command that rehearses this run, for the message.
        sealed: whether the record carries `handover rehearse`'s seal (`flows.seals`).
    """
    if record is None:
        return f"this site requires a rehearsal on the twin first: run `{command}`"
    if not sealed:
        return (
            "the last rehearsal's record does not carry the seal of `handover rehearse` (it was "
            "written another way, or with other site secrets); rehearse with the site's "
            f"secrets readable: `{command}`"
        )
    age = (now - record.at).total_seconds()
    if record.fingerprint != fingerprint(plan):
        return (
            f"the last rehearsal ({record.at:%Y-%m-%d %H:%M} UTC) was of another plan; rehearse "
            f"this one: `{command}`"
        )
    if not record.passed:
        return f"the rehearsal of this plan failed ({record.sentence()}); fix it and rehearse again"
    if age > within_s:
        return (
            f"the rehearsal of this plan is {age / 3600:.1f} h old (at most "
            f"{within_s / 3600:.1f} h); rehearse again: `{command}`"
        )
    return None
