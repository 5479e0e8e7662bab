"""The site model: what a site is made of, and the invariants a site file must satisfy.

A site file (YAML) describes one grid service deployment: its hosts, the agents of the service with
their primary and backup hosts, the commands used to act on the hosts (the "command profile", the
FTS 2 agents' commands by default), SSH settings, the database, DNS, Slack and per-procedure
policies. One module per section of the file; this package re-exports their public names, so
``from config.site import Site`` is how callers import them.

Secrets are never inline: a secret field holds a reference (`{env: NAME}`, `{file: PATH}` or
`{prefect_secret: BLOCK}`) that is resolved only when the secret is used (`config.site.secrets`).

Every name that can reach a remote shell (host, channel, VO and agent names) is checked against a
strict pattern when the file loads, and commands are argv templates whose placeholders are whole
words, so quoting is structural rather than a matter of care.

Example:
    >>> from config.loader import load_site
    >>> site = load_site("config/sites/lab.yaml")
    >>> [a.name for a in site.agents_on("fts101")][:1]
    ['glite-transfer-channel-agent-urlcopy-CERN-CERN']
"""

from config.site.alerts import (
    DEFAULT_ALERT_PROCEDURES,
    DEFAULT_AM_KINDS,
    AlertKind,
    AlertmanagerIntake,
    AlertProcedure,
    Alerts,
    BasicAuth,
)
from config.site.base import (
    AGENT_NAME_RE,
    CHANNEL_AGENT_PREFIX,
    CHANNEL_NAME_RE,
    DISABLED_ABSENT,
    ENV_NAME_RE,
    HOST_NAME_RE,
    SLACK_USER_RE,
    VO_AGENT_PREFIX,
    VO_NAME_RE,
    AgentName,
    ChannelName,
    HostName,
    SiteModel,
    VoName,
    short_name,
)
from config.site.commands import (
    COMMAND_PLACEHOLDERS,
    VERSION_RE,
    ArgvTemplate,
    Commands,
    Version,
)
from config.site.database import Database
from config.site.dns import DNS_NAME_RE, Dns, DnsName, DnsServer, dns_server_address
from config.site.frontend import Frontend
from config.site.geo import Geo, GeoSite, Tool, ToolDatabase, ToolPlacement
from config.site.hosts import Agent, Host, HostRole, Service
from config.site.procedures import ProcedurePolicy, Upgrade
from config.site.root import Site
from config.site.secrets import SecretBlockReader, SecretError, SecretRef, read_secret_blocks_with
from config.site.slack import Slack
from config.site.ssh import SshConfig
from config.site.windows import Blackout, MaintenanceWindow

__all__ = [
    "AGENT_NAME_RE",
    "CHANNEL_AGENT_PREFIX",
    "CHANNEL_NAME_RE",
    "COMMAND_PLACEHOLDERS",
    "DEFAULT_ALERT_PROCEDURES",
    "DEFAULT_AM_KINDS",
    "DISABLED_ABSENT",
    "DNS_NAME_RE",
    "ENV_NAME_RE",
    "HOST_NAME_RE",
    "SLACK_USER_RE",
    "VERSION_RE",
    "VO_AGENT_PREFIX",
    "VO_NAME_RE",
    "Agent",
    "AgentName",
    "AlertKind",
    "AlertProcedure",
    "AlertmanagerIntake",
    "Alerts",
    "ArgvTemplate",
    "BasicAuth",
    "Blackout",
    "ChannelName",
    "Commands",
    "Database",
    "Dns",
    "DnsName",
    "DnsServer",
    "Frontend",
    "Geo",
    "GeoSite",
    "Host",
    "HostName",
    "HostRole",
    "MaintenanceWindow",
    "ProcedurePolicy",
    "SecretBlockReader",
    "SecretError",
    "SecretRef",
    "Service",
    "Site",
    "SiteModel",
    "Slack",
    "SshConfig",
    "Tool",
    "ToolDatabase",
    "ToolPlacement",
    "Upgrade",
    "Version",
    "VoName",
    "dns_server_address",
    "read_secret_blocks_with",
    "short_name",
]
