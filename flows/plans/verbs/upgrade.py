"""The verbs of the rolling upgrade: check, install, configure, restart."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from config.site import Site
from flows.plans.step import Step
from flows.plans.steps import command


class CheckAgents(Step):
    """Check that the agents serve on the host and the hosts of their backups answer."""

    verb: Literal["check-agents"] = "check-agents"
    #: the hosts of the agents' backups: they must answer
    backup_hosts: list[str] = Field(default_factory=list)

    PRE: ClassVar[str] = "the host answers SSH"
    POST: ClassVar[str] = "each of the agents serves there, and the hosts of their backups answer"

    def planned_commands(self, site: Site) -> list[str]:
        return [command(site, "agents_status"), command(site, "list_processes")]


class InstallVersion(Step):
    """Install the step's version of the service's packages on the host."""

    verb: Literal["install-version"] = "install-version"
    #: the version to install
    version: str

    PRE: ClassVar[str] = "the host answers SSH"
    POST: ClassVar[str] = "the step's version is installed"

    def planned_commands(self, site: Site) -> list[str]:
        return [
            command(site, "installed_version"),
            command(site, "upgrade", version=self.version),
        ]


class ConfigureNode(Step):
    """Render the agents' configuration from the site-info file (its changes are reported)."""

    verb: Literal["configure-node"] = "configure-node"

    PRE: ClassVar[str] = "the site-info file is readable"
    POST: ClassVar[str] = "the agents' configuration is rendered (its changes are reported)"

    def planned_commands(self, site: Site) -> list[str]:
        return [command(site, "configure")]


class RestartAgents(Step):
    """Restart the host's agents, keeping their running transfers; each serves again."""

    verb: Literal["restart-agents"] = "restart-agents"
    #: the version each agent must run after the restart (None: any)
    version: str | None = None

    PRE: ClassVar[str] = "the agents run on the host"
    POST: ClassVar[str] = (
        "each agent serves again (with the step's version), its running transfers kept"
    )

    def planned_commands(self, site: Site) -> list[str]:
        return [command(site, "restart"), command(site, "agents_status")]
