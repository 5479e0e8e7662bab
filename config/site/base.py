"""The base of every site model (unknown keys are errors), and the names that reach a
shell: host, channel, VO and agent names, each checked against a strict pattern when a site file
loads."""

from __future__ import annotations

from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    StringConstraints,
)

HOST_NAME_RE = r"^[a-z][a-z0-9-]{0,62}$"
CHANNEL_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
VO_NAME_RE = r"^[a-z][a-z0-9._-]{0,31}$"
AGENT_NAME_RE = r"^[A-Za-z][A-Za-z0-9._-]{0,127}$"
ENV_NAME_RE = r"^[A-Z_][A-Z0-9_]{0,127}$"
SLACK_USER_RE = r"^[UW][A-Z0-9]{2,20}$"

HostName = Annotated[str, StringConstraints(pattern=HOST_NAME_RE)]
ChannelName = Annotated[str, StringConstraints(pattern=CHANNEL_NAME_RE)]
VoName = Annotated[str, StringConstraints(pattern=VO_NAME_RE)]
AgentName = Annotated[str, StringConstraints(pattern=AGENT_NAME_RE)]

CHANNEL_AGENT_PREFIX = "glite-transfer-channel-agent-urlcopy-"
VO_AGENT_PREFIX = "glite-transfer-vo-agent-"


#: what the `.disabled` read prints when the file does not exist
DISABLED_ABSENT = "__handover_no_disabled_file__"


def short_name(agent: str) -> str:
    """A short label for an agent: its channel (``CERN-CERN``) or ``vo atlas``."""
    if agent.startswith(CHANNEL_AGENT_PREFIX):
        return agent.removeprefix(CHANNEL_AGENT_PREFIX)
    if agent.startswith(VO_AGENT_PREFIX):
        return "vo " + agent.removeprefix(VO_AGENT_PREFIX)
    return agent


class SiteModel(BaseModel):
    """Base for every site model: unknown keys are errors (a typo must not pass silently)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
