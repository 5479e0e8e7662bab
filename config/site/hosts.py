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

    name: HostName
    address: str
    port: int = Field(default=22, ge=1, le=65535)
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

    channel: ChannelName | None = None
    vo: VoName | None = None
    name: AgentName = ""
    primary: HostName
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

    name: HostName
    kind: Literal["fts2-agents"] = "fts2-agents"
    agents: list[Agent] = Field(min_length=1)
