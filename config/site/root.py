"""The root of a site file: every section, the cross-field invariants, and lookups."""

from __future__ import annotations

import math
from typing import Any

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from config.invariants import InvariantError, Problem
from config.site.alerts import Alerts
from config.site.base import HostName, SiteModel
from config.site.commands import Commands
from config.site.database import Database
from config.site.dns import Dns
from config.site.frontend import Frontend
from config.site.geo import Geo
from config.site.hosts import Agent, Host, Service
from config.site.procedures import ProcedurePolicy, Upgrade
from config.site.slack import Slack
from config.site.ssh import SshConfig


class Site(SiteModel):
    """A whole site: the root of a site file."""

    #: the site's name (in run names, Slack threads, metrics' `site` label and lock names)
    site: HostName
    #: free text for people reading the file
    description: str = ""
    #: every machine handover reaches over SSH
    hosts: list[Host] = Field(min_length=1)
    #: the service whose agents handover moves, and its agents with their primary and backup hosts
    service: Service
    #: how each verb is done on a host (the command profile; the FTS 2 agents' commands by default)
    commands: Commands = Field(default_factory=Commands)
    #: how handover logs in to the hosts
    ssh: SshConfig
    #: the service's database: channel states, the agents' sessions that drop-db-lock kills (none:
    #: those procedures are refused)
    database: Database | None = None
    #: the front end's DNS alias and the servers that answer it (the switch needs it)
    dns: Dns | None = None
    #: the web front end's master and slave (the switch needs it)
    frontend: Frontend | None = None
    #: tools replicated between sites and moved between them through DNS (geo failover)
    geo: Geo | None = None
    #: the channel, approvers and tokens for threads and approvals in Slack (none: approvals in the
    #: Prefect UI only)
    slack: Slack | None = None
    #: what the gateway accepts from monitoring and which procedure each alert starts
    alerts: Alerts | None = None
    #: the rolling upgrade's settings
    upgrade: Upgrade = Field(default_factory=Upgrade)
    #: each procedure's policy (approval, bounds of its waits, windows), by procedure name
    #: (`clean-move`, `emergency-move`, `switch`...)
    procedures: dict[str, ProcedurePolicy] = Field(default_factory=dict)
    #: the settings of the lab that simulates this site (a lab site only): test equipment, so
    #: not part of this schema; kept as given, and read and checked by the lab with its own
    #: model (`infra.lab.settings.lab_settings`)
    lab: dict[str, Any] | None = None

    @field_validator("lab")
    @classmethod
    def _finite(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        """The lab's settings are kept as given, and written back out as JSON (the lab's copy
        of the site): an infinite or NaN number, which JSON cannot hold, is refused here."""

        def walk(node: Any, where: str) -> None:
            if isinstance(node, float) and not math.isfinite(node):
                raise ValueError(f"{where} is {node}: give a finite number")
            if isinstance(node, dict):
                for k, x in node.items():
                    walk(x, f"{where}.{k}")
            elif isinstance(node, list):
                for i, x in enumerate(node):
                    walk(x, f"{where}[{i}]")

        walk(v, "lab")
        return v

    @model_validator(mode="after")
    def _invariants(self) -> Site:
        problems = self.invariant_problems()
        if problems:
            raise InvariantError(problems)
        return self

    def invariant_problems(self) -> list[Problem]:
        """Check what single fields cannot: references between fields and consistent bounds
        (`config.invariants`)."""
        from config.invariants import site_problems

        return site_problems(self)

    # --- lookups -------------------------------------------------------------------------------

    def host(self, name: str) -> Host:
        """The host called `name`.

        Raises:
            KeyError: with the known host names.
        """
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(f"no host {name!r} in site {self.site}; hosts: {self.host_names()}")

    def host_names(self) -> str:
        """Comma-separated host names, for messages."""
        return ", ".join(h.name for h in self.hosts)

    def agent(self, name: str) -> Agent:
        """The agent called `name` (KeyError if none)."""
        for a in self.service.agents:
            if a.name == name:
                return a
        raise KeyError(f"no agent {name!r} in site {self.site}")

    def agents_on(self, host: str) -> list[Agent]:
        """Agents whose primary host is `host`, in file order."""
        return [a for a in self.service.agents if a.primary == host]

    def agents_configured_on(self, host: str) -> list[Agent]:
        """Agents that may run on `host` (as primary or backup)."""
        return [a for a in self.service.agents if host in (a.primary, a.backup)]

    @property
    def channels(self) -> list[str]:
        """All channels served by the site's channel agents."""
        return [a.channel for a in self.service.agents if a.channel is not None]

    def policy(self, procedure: str) -> ProcedurePolicy:
        """The policy for a procedure, or the default policy."""
        return self.procedures.get(procedure, ProcedurePolicy())
