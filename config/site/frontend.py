"""The service's web front end: its hosts, and how a switch of its master role behaves."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
)

from config.site.base import HostName, SiteModel


class Frontend(SiteModel):
    """The service's web front end: the master behind the DNS alias accepts the
    clients' jobs, the other hosts wait as slaves; `handover run switch` moves the master role
    and the alias together.

    Every write of a master carries the service epoch it was enabled with; the database refuses a
    write whose epoch is older than its own, so a master that was switched away from cannot
    write even if it never heard of the switch.
    """

    #: the front-end hosts (a switch picks the master's successor among them)
    hosts: list[HostName] = Field(min_length=2)
    #: the HTTP port every front end listens on
    port: int = Field(default=8446, ge=1, le=65535)
    #: how long the old master of a planned switch redirects clients to the new one beyond the
    #: alias TTL (clients keep the old address for up to the TTL)
    redirect_margin_s: int = Field(default=5, ge=0, le=3600)
    #: an automatic switch (started by an alert) says "switching ... in N s unless aborted" in
    #: Slack and the Prefect UI and waits this long for an abort (0: it switches at once)
    countdown_s: int = Field(default=30, ge=0, le=3600)
    #: a second automatic switch of the service within this period waits for a human's
    #: approval (anti-flapping)
    block_s: int = Field(default=3600, ge=0, le=7 * 86400)
    #: a node of the Pacemaker cluster that watches the front ends, where its maintenance mode
    #: is asked (`commands.cluster_maintenance`); in maintenance, an automatic switch only
    #: notifies. None: the site declares no cluster
    cluster_host: HostName | None = None
    #: what becomes of the old master's agents: ``none`` (they stay), ``follow`` (a planned
    #: switch moves them to the new master with a clean move; a failover whose master's host
    #: does not answer moves them with an emergency move)
    move_agents: Literal["none", "follow"] = "none"
