"""The verbs that write the channels' state in the service database."""

from __future__ import annotations

from typing import ClassVar, Literal

from config.site import Site
from flows.plans.step import Ledger, Step
from flows.plans.steps import command


def _set_commands(site: Site, channels: list[str], state: str) -> list[str]:
    db = site.database
    if db is not None and db.channel_set_statement:
        return [
            f"{db.kind}: {db.channel_set_statement}  # state={state}, channel={c}; else "
            + command(site, "set_channel_state", channel=c, state=state)
            for c in channels
        ]
    return [command(site, "set_channel_state", channel=c, state=state) for c in channels]


class SetInactive(Step):
    """Set the channels Inactive: no new transfer starts on them."""

    verb: Literal["set-inactive"] = "set-inactive"
    #: read the channels before writing (False: write, then verify; on a critical path)
    read_first: bool = True

    PRE: ClassVar[str] = "the channels exist"
    POST: ClassVar[str] = "each channel reads Inactive"
    SETS_CHANNELS: ClassVar[str | None] = "Inactive"

    def planned_commands(self, site: Site) -> list[str]:
        return _set_commands(site, self.channels, "Inactive")

    def done(self, ledger: Ledger) -> None:
        ledger.add("inactive", self.channels)


class SetActive(Step):
    """Set the channels Active: the agent that serves each takes their transfers."""

    verb: Literal["set-active"] = "set-active"

    PRE: ClassVar[str] = "an agent serves each channel"
    POST: ClassVar[str] = "each channel reads Active"
    SETS_CHANNELS: ClassVar[str | None] = "Active"

    def planned_commands(self, site: Site) -> list[str]:
        return _set_commands(site, self.channels, "Active")

    def done(self, ledger: Ledger) -> None:
        ledger.add("active", self.channels)
