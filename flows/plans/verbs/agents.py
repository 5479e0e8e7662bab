"""The verbs that list, stop and start a host's agents."""

from __future__ import annotations

from typing import ClassVar, Literal

from config.site import Site
from flows.plans.argv import shell_command
from flows.plans.step import Ledger, Step
from flows.plans.steps import command


def _disabled_commands(site: Site, what: str, agents: list[str]) -> list[str]:
    return [
        shell_command(site.commands.disabled_argv("write")) + f"  # {what} " + ", ".join(agents)
    ]


class WriteDisabled(Step):
    """List the agents in the host's .disabled file: a restart of the host leaves them down."""

    verb: Literal["write-disabled"] = "write-disabled"

    PRE: ClassVar[str] = "the host answers SSH"
    POST: ClassVar[str] = "each agent is listed in the .disabled file"

    def planned_commands(self, site: Site) -> list[str]:
        return _disabled_commands(site, "adds", self.agents)


class ClearDisabled(Step):
    """Take the agents out of the host's .disabled file."""

    verb: Literal["clear-disabled"] = "clear-disabled"

    PRE: ClassVar[str] = "the .disabled file can be read"
    POST: ClassVar[str] = "no agent is listed in the .disabled file"

    def planned_commands(self, site: Site) -> list[str]:
        return _disabled_commands(site, "removes", self.agents)


class Stop(Step):
    """Stop the agents on the host (all of the host's, with the profile's stop-all command)."""

    verb: Literal["stop"] = "stop"
    #: a stop of every agent of the host: the profile's stop-all command
    all_agents: bool = False
    #: read the host before acting (False: act, then verify; on a critical path, or at a moment
    #: chosen for it)
    read_first: bool = True

    PRE: ClassVar[str] = "the host answers SSH"
    POST: ClassVar[str] = "no process of the agents runs on the host"

    def planned_commands(self, site: Site) -> list[str]:
        if self.all_agents:
            return [command(site, "stop_all")]
        return [command(site, "stop_agent", agent=a) for a in self.agents]

    def done(self, ledger: Ledger) -> None:
        ledger.add("stopped", self.agents)

    def in_doubt(self, ledger: Ledger) -> None:
        ledger.add("stop_in_doubt", self.agents)


class Start(Step):
    """Start the agents on the host; each holds its DB lock when the step ends."""

    verb: Literal["start"] = "start"

    PRE: ClassVar[str] = (
        "the agents are configured on the host and not listed in its .disabled file"
    )
    POST: ClassVar[str] = "each agent runs on the host (it holds its DB lock)"

    def planned_commands(self, site: Site) -> list[str]:
        return [command(site, "start_agent", agent=a) for a in self.agents]

    def done(self, ledger: Ledger) -> None:
        ledger.add("started", self.agents)
