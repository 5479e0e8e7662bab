"""Per-procedure policies (approval, bounds of waits, windows, estimates) and the rolling
upgrade's settings."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
)

from config.site.base import HostName, SiteModel
from config.site.commands import Version
from config.site.windows import Blackout, MaintenanceWindow


class ProcedurePolicy(SiteModel):
    """Per-procedure policy: approval, its timeout, and the bounds of the procedure's waits."""

    #: whether a run asks a human before it acts
    approval: Literal["required", "none"] = "required"
    #: how long a run waits for a decision
    approval_timeout_s: float = Field(default=900.0, gt=0)
    #: what no decision means: `reject`, or `proceed` (emergency procedures only)
    on_approval_timeout: Literal["reject", "proceed"] = "reject"
    #: which decisions count: ``any`` (a Slack approver's click, or the Prefect UI's form) or
    #: ``gateway`` (only a decision the gateway sealed after checking Slack's signature and the
    #: approver list; a form typed into the Prefect UI is logged and the run keeps waiting)
    approval_via: Literal["any", "gateway"] = "any"
    #: ``required``: a run goes ahead only after a passed rehearsal of the same plan on the
    #: site's twin (`handover rehearse`), at most `rehearse_within_s` old; its approval
    #: message names the rehearsal (the clean move and the rolling upgrade)
    rehearse: Literal["optional", "required"] = "optional"
    #: how old a rehearsal may be to clear a run
    rehearse_within_s: float = Field(default=86400.0, gt=0, le=30 * 86400)
    #: the procedure may proceed on an approval timeout
    emergency: bool = False
    #: how long a clean move waits for a channel's running transfers to end
    drain_timeout_s: float = Field(default=900.0, gt=0)
    #: how long the drained host may stay unreachable before the move gives up on the drain
    #: (and compensates) instead of waiting for `drain_timeout_s`
    drain_host_lost_s: float = Field(default=30.0, gt=0)
    #: how often a wait (a drain, an agent's start) looks again
    poll_interval_s: float = Field(default=2.0, gt=0)
    #: typical duration of one transfer, for downtime estimates (FTS 2: 3-4 minutes)
    expected_transfer_s: float = Field(default=210.0, ge=0)
    #: typical time to stop an agent and start it elsewhere, for downtime estimates
    expected_restart_s: float = Field(default=5.0, ge=0)
    #: when the procedure may run: a run outside every window (or in a blackout) is refused
    #: unless forced with a reason; none: any time
    windows: list[MaintenanceWindow] = Field(default_factory=list)
    #: days on which no window opens (a change freeze)
    blackouts: list[Blackout] = Field(default_factory=list)
    #: how long before a window opens its Slack notice (with the plan) goes out
    notice_s: float = Field(default=1800.0, ge=0, le=7 * 86400)
    #: the typical time of one host's step of a rolling upgrade (upgrade, configure, restart,
    #: verify), until the run has measured one: a step that would end after its window closes
    #: is not started
    expected_host_s: float = Field(default=30.0, gt=0)
    #: clean move, pipelined: how much later than the move's start a channel may go Inactive,
    #: so that it goes Inactive when its running transfers are about to end instead of at once
    #: (needs `database.transfer_eta_query`); 0: every channel at once, as the manual procedure does
    cutover_window_s: float = Field(default=0.0, ge=0, le=3600)
    #: clean move, pipelined, with a cut-over window: a channel goes Inactive at the first moment
    #: its running transfers all end within this many seconds (at the window's end at the latest)
    cutover_drain_s: float = Field(default=2.0, gt=0, le=3600)
    #: clean move, pipelined: start each agent on the target before stopping it on the source
    #: (its start waits for the DB lock and takes it the moment the source's agent lets go), when
    #: the wait fits in `agent_lock_wait_s`; false: stop, then start, as the manual procedure does
    hot_standby: bool = True
    #: how long an agent's start waits for its DB lock before it gives up (FTS 2: about a minute)
    agent_lock_wait_s: float = Field(default=60.0, gt=0, le=3600)


class Upgrade(SiteModel):
    """The rolling upgrade: what a scheduled run does and what a failed host means.

    Example:
        ``upgrade: {target_version: "2", on_failure: rollback, batch: 1}``
    """

    #: the version a run installs when it is not given one (a scheduled run); none: such a run
    #: only re-renders the configuration and restarts the agents
    target_version: Version | None = None
    #: what the run does about a host that failed, beside halting: ``halt`` (report and stop),
    #: ``rollback`` (re-install the version it had and restart), ``move`` (move its agents to
    #: their backups)
    on_failure: Literal["halt", "rollback", "move"] = "halt"
    #: hosts upgraded at the same time (Ansible's `serial`)
    batch: int = Field(default=1, ge=1, le=256)
    #: failed hosts the run tolerates before it halts (0: halt at the first)
    max_failures: int = Field(default=0, ge=0)
    #: a host upgraded first, alone
    canary: HostName | None = None
    #: after the canary, ask a human before the other hosts
    approve_after_canary: bool = False
