"""The verbs that wait for running transfers: the drain, and the drain-aware cut-over."""

from __future__ import annotations

from typing import ClassVar, Literal

from config.site import Site
from flows.plans.argv import shell_command
from flows.plans.step import Step
from flows.plans.steps import db_kind


class WaitDrained(Step):
    """Wait until no transfer of the channels runs on the host (bounded by the drain timeout)."""

    verb: Literal["wait-drained"] = "wait-drained"

    PRE: ClassVar[str] = "the channels are Inactive"
    POST: ClassVar[str] = "no transfer of the channels runs on the host"
    WATCHES_DRAIN: ClassVar[bool] = True

    def planned_commands(self, site: Site) -> list[str]:
        return [
            shell_command(site.commands.argv("list_processes"))
            + f"  # until no {c}__* process runs"
            for c in self.channels
        ]


class AwaitCutover(Step):
    """Wait until the channel's running transfers all end within `drain_s` (the cut-over)."""

    verb: Literal["await-cutover"] = "await-cutover"
    #: go on once every running transfer of the channel ends within this long
    drain_s: float = 0.0
    #: go on at the latest this long after the procedure began acting
    window_s: float = 0.0
    #: go on this long before the cut-over's moment (to prepare for it)
    lead_s: float = 0.0

    PRE: ClassVar[str] = "the database tells how long each running transfer still needs"
    POST: ClassVar[str] = (
        "the channel's running transfers all end within the step's drain, or its window ended"
    )

    def planned_commands(self, site: Site) -> list[str]:
        return [
            f"{db_kind(site)}: database.transfer_eta_query, until "
            f"{', '.join(self.channels)} can drain"
        ]
