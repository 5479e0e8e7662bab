"""The verb that moves the service's DNS alias with one compare-and-set update."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from flows.plans.step import Ledger, Step


class MoveAlias(Step):
    """Point the alias at `address` with `epoch`, if it holds `expect` and `expect_epoch`."""

    verb: Literal["move-alias"] = "move-alias"
    #: the new address
    address: str
    #: the service epoch the alias's TXT record gets
    epoch: int
    #: the addresses the alias must hold now (the compare of compare-and-set)
    expect: list[str] = Field(default_factory=list)
    #: the epoch the alias's TXT record must hold now (None: no TXT record), part of the compare
    expect_epoch: int | None = None

    PRE: ClassVar[str] = "the alias holds the addresses the step expects (compare-and-set)"
    POST: ClassVar[str] = "every authoritative server answers the new address and epoch"

    def done(self, ledger: Ledger) -> None:
        ledger.alias_moved = True
