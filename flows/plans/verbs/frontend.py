"""The verbs of the web front end's master and slave roles, and the service epoch."""

from __future__ import annotations

from typing import ClassVar, Literal

from flows.plans.step import Step


class FrontendDisable(Step):
    """Make the host's front end a slave, redirecting clients for a while."""

    verb: Literal["frontend-disable"] = "frontend-disable"
    #: where clients are redirected (``-``: nowhere)
    address: str = "-"
    #: how long clients are redirected
    seconds: int = 0

    PRE: ClassVar[str] = "the host answers SSH"
    POST: ClassVar[str] = "its front end is a slave"


class FrontendEnable(Step):
    """Make the host's front end the master, with the step's epoch."""

    verb: Literal["frontend-enable"] = "frontend-enable"
    #: the service epoch the front end writes with
    epoch: int

    PRE: ClassVar[str] = "the database's epoch is not newer than the step's"
    POST: ClassVar[str] = "the front end answers as the master with the step's epoch"


class FenceEpoch(Step):
    """Raise the database's service epoch: every older master's write is refused."""

    verb: Literal["fence-epoch"] = "fence-epoch"
    #: the epoch the database must hold
    epoch: int

    PRE: ClassVar[str] = "the database's epoch is not newer than the step's"
    POST: ClassVar[str] = "the database's epoch is the step's"
