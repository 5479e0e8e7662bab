"""The verbs of the hot standby: start ahead of the stop, hand over, collect the start."""

from __future__ import annotations

from typing import ClassVar, Literal

from config.site import Site
from flows.plans.step import Ledger, Step
from flows.plans.steps import command, db_kind


class StartStandby(Step):
    """Launch the agents' start on the target: each waits for the DB lock the source holds."""

    verb: Literal["start-standby"] = "start-standby"
    #: launch again a standby of this run that has waited longer than this
    max_wait_s: float = 0.0

    PRE: ClassVar[str] = (
        "the agents are configured on the host and not listed in its .disabled file"
    )
    POST: ClassVar[str] = (
        "each agent's start runs on the host, waiting for the DB lock the source holds"
    )

    def planned_commands(self, site: Site) -> list[str]:
        return [
            command(site, "start_agent", agent=a) + "  # not waited for: it waits for the DB lock"
            for a in self.agents
        ]

    def done(self, ledger: Ledger) -> None:
        ledger.add("standby", self.agents)


class AwaitServing(Step):
    """Collect the standbys' word: each agent serves (it took its lock, or was started again)."""

    verb: Literal["await-serving"] = "await-serving"

    PRE: ClassVar[str] = "the source's agents are stopped"
    POST: ClassVar[str] = (
        "each agent serves on the host (its standby took the DB lock, it was started again, or "
        "a copy already running there took it)"
    )

    def planned_commands(self, site: Site) -> list[str]:
        return [command(site, "start_agent", agent=a) for a in self.agents]

    def done(self, ledger: Ledger) -> None:
        ledger.add("started", self.agents)


class HandOver(Step):
    """Stop the source's agents and write their channels Active as their sessions end."""

    verb: Literal["hand-over"] = "hand-over"
    #: the host whose standbys wait for the agents' locks
    target: str

    PRE: ClassVar[str] = (
        "the channels have drained; each agent's standby waits for its DB lock on the target"
    )
    POST: ClassVar[str] = (
        "no process of the agents runs on the host, and each channel reads Active (set as soon "
        "as the database shows the agent's session ended)"
    )
    SETS_CHANNELS: ClassVar[str | None] = "Active"

    def planned_commands(self, site: Site) -> list[str]:
        statement = site.database.channel_set_statement if site.database else None
        return [command(site, "stop_agent", agent=a) for a in self.agents] + [
            f"{db_kind(site)}: while the stop runs, the sessions of {', '.join(self.agents)} "
            f"from {self.host}; once they ended: {statement}  # state=Active, channel={c}"
            for c in self.channels
        ]

    def done(self, ledger: Ledger) -> None:
        ledger.add("stopped", self.agents)
        ledger.add("active", self.channels)

    def in_doubt(self, ledger: Ledger) -> None:
        ledger.add("stop_in_doubt", self.agents)

    def partly_done(self, ledger: Ledger, exc: BaseException) -> None:
        """A hand-over whose stop worked names the stopped agents on its exception."""
        stopped: list[str] = getattr(exc, "stopped_agents", None) or []
        if stopped:
            ledger.add("done", [f"{self.id}#stop"])
            ledger.add("stopped", stopped)
