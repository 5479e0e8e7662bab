"""What every verb returns (a typed result with an outcome sentence) and how it fails."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, Field


class StepResult(BaseModel):
    """The outcome of one idempotent verb on one host.

    `sentence` says what was done in words an operator reads at 3 a.m., e.g.
    ``"fts101: stopped 3 agents, 1 was already stopped"``.
    """

    host: str
    verb: str
    changed: list[str] = Field(default_factory=list)
    unchanged: list[str] = Field(default_factory=list)
    sentence: str
    commands: list[str] = Field(default_factory=list)
    started_at: dt.datetime
    ended_at: dt.datetime
    #: what the host's own tools reported (YAIM's list of changes), line by line
    report: list[str] = Field(default_factory=list)
    #: figures the verb measured (each agent's seconds down across a restart)
    measures: dict[str, float] = Field(default_factory=dict)
    #: when its change was made (its commands returned), before the check that confirmed it
    acted_at: dt.datetime | None = None
    #: what a human must check although the step reached its post-condition
    human: list[str] = Field(default_factory=list)
    #: the step went on past its bound because the run was forced: this many running
    #: transfers lose their state (None: it was not forced)
    forced_lost: int | None = None


class StepFailed(RuntimeError):
    """A verb could not reach its post-condition. The message says what, where and what next."""

    def __init__(self, message: str, *, host: str, verb: str) -> None:
        super().__init__(message)
        self.host = host
        self.verb = verb

    def __reduce__(self) -> tuple[object, ...]:
        return (_restore, (str(self), self.host, self.verb))


def _restore(message: str, host: str, verb: str) -> StepFailed:
    return StepFailed(message, host=host, verb=verb)


def listing(items: list[str], most: int = 6) -> str:
    """`` (a, b)`` for the items (agents by their short name), or ``""`` when there are none."""
    from config.site import short_name

    if not items:
        return ""
    shown = [short_name(i) for i in items[:most]]
    more = f", +{len(items) - most} more" if len(items) > most else ""
    return f" ({', '.join(shown)}{more})"


def was(n: int) -> str:
    """``was`` or ``were``."""
    return "was" if n == 1 else "were"


def now() -> dt.datetime:
    """The current time in UTC."""
    return dt.datetime.now(dt.UTC)
