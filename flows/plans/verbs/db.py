"""The verb that ends a host's sessions in the service database."""

from __future__ import annotations

from typing import ClassVar, Literal

from config.site import Site
from flows.plans.step import Step
from flows.plans.steps import db_kind


class DropSessions(Step):
    """Kill the DB sessions from the host (of the agents named, or all of them)."""

    verb: Literal["drop-sessions"] = "drop-sessions"

    PRE: ClassVar[str] = "the database answers"
    POST: ClassVar[str] = (
        "none of the DB sessions found from the host remains (a reconnect is a new one)"
    )

    def planned_commands(self, site: Site) -> list[str]:
        kind = db_kind(site)
        if self.agents:
            return [
                f"{kind}: kill the sessions of {a} from {self.host}, then check that none is left"
                for a in self.agents
            ]
        return [f"{kind}: kill every session from {self.host}, then check that none is left"]
