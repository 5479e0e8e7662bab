"""The hosts of a site and the service's agents: which agent runs where, and where it moves."""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from typing import Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from config.site.base import (
    CHANNEL_AGENT_PREFIX,
    VO_AGENT_PREFIX,
    AgentName,
    ChannelName,
    HostName,
    SiteModel,
    VoName,
)


class HostRole(StrEnum):
    """What a host is for."""

    CHANNEL_AGENTS = "channel-agents"
    VO_AGENTS = "vo-agents"
    SPARE = "spare"
    DATABASE = "database"
    WEB = "web"


class Host(SiteModel):
    """A machine of the site, reached by SSH."""

    #: the host's short name, as procedures and the other sections name it
    name: HostName
    #: the address (or DNS name) SSH connects to
    address: str
    #: the SSH port
    port: int = Field(default=22, ge=1, le=65535)
    #: what the host is for: `channel-agents`, `vo-agents`, `spare`, `database`, `web`
    roles: list[HostRole] = Field(default_factory=list)

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        try:
            ipaddress.ip_address(v)
        except ValueError:
            if not re.fullmatch(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$", v):
                raise ValueError(f"{v!r} is neither an IP address nor a valid DNS name") from None
        return v


class Agent(SiteModel):
    """One agent daemon of the service: a channel agent (one channel) or a VO agent (one VO).

    The name defaults to the FTS 2 process name: ``glite-transfer-channel-agent-urlcopy-<CHANNEL>``
    or ``glite-transfer-vo-agent-<VO>``.
    """

    #: the channel a channel agent serves (give `channel` or `vo`, not both)
    channel: ChannelName | None = None
    #: the VO a VO agent serves
    vo: VoName | None = None
    #: the agent's process name (default: the FTS 2 name built from its channel or VO)
    name: AgentName = ""
    #: the host the agent normally runs on
    primary: HostName
    #: the host it moves to (a clean or emergency move, a switch that moves the agents)
    backup: HostName

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, data: object) -> object:
        if isinstance(data, dict) and not data.get("name"):
            if data.get("channel") and not data.get("vo"):
                data = {**data, "name": f"{CHANNEL_AGENT_PREFIX}{data['channel']}"}
            elif data.get("vo") and not data.get("channel"):
                data = {**data, "name": f"{VO_AGENT_PREFIX}{data['vo']}"}
        return data

    @model_validator(mode="after")
    def _one_kind(self) -> Agent:
        if (self.channel is None) == (self.vo is None):
            raise ValueError("an agent serves exactly one channel or one VO: set `channel` or `vo`")
        return self

    @property
    def kind(self) -> Literal["channel", "vo"]:
        """``channel`` for a channel agent, ``vo`` for a VO agent."""
        return "channel" if self.channel is not None else "vo"


class Service(SiteModel):
    """The service whose agents handover moves."""

    #: the service's name (the service lock is per site and service)
    name: HostName
    #: the kind of service: the FTS 2 agents, or web tools replicated between sites (`geo:`,
    #: no agents)
    kind: Literal["fts2-agents", "web-tools"] = "fts2-agents"
    #: every agent of the service (at least one for the FTS 2 agents)
    agents: list[Agent] = Field(default_factory=list)

    @model_validator(mode="after")
    def _agents(self) -> Service:
        if self.kind == "fts2-agents" and not self.agents:
            raise ValueError(
                "the FTS 2 agents' service needs at least one agent under `agents:` (or "
                "`kind: web-tools` for tools replicated between sites)"
            )
        return self
