"""The snapshot model: a site's live state as the planners see it, and the parsers that build it.

Everything here is pure: `parse_processes` and `parse_disabled` turn recorded command output into
the model, and `tasks.site_state` fills it from the hosts. A host that cannot be reached is part of
a snapshot (``reachable=False`` with the error and whether it is transient), never an exception:
the planners decide what an unreachable host means.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Literal

from pydantic import BaseModel, Field

from config.site import DISABLED_ABSENT, Commands


class AgentProcess(BaseModel):
    """An agent daemon seen in a host's process table."""

    name: str
    pid: int
    user: str


class TransferProcess(BaseModel):
    """A transfer process (``<CHANNEL>__<id>``) seen in a host's process table."""

    channel: str
    transfer_id: str
    pid: int
    #: how long it has run, in seconds (None: the process listing has no elapsed time)
    age_s: float | None = None


class HostSnapshot(BaseModel):
    """One host's live state."""

    host: str
    reachable: bool
    error: str | None = None
    error_kind: Literal["transient", "permanent"] | None = None
    agents: list[AgentProcess] = Field(default_factory=list)
    transfers: dict[str, int] = Field(default_factory=dict)
    transfer_processes: list[TransferProcess] = Field(default_factory=list)
    disabled: list[str] = Field(default_factory=list)
    #: why the `.disabled` file could not be read (None: read, or absent). An unreadable file is
    #: not an empty one: nothing may be written from an unknown content.
    disabled_error: str | None = None
    taken_at: dt.datetime

    def runs(self, agent: str) -> bool:
        """Whether an agent process of that name runs here."""
        return any(a.name == agent for a in self.agents)

    def running_transfers(self, channel: str) -> int:
        """Transfer processes of a channel running here."""
        return self.transfers.get(channel, 0)


class SiteSnapshot(BaseModel):
    """The live state of every host of a site, and each channel's state."""

    site: str
    taken_at: dt.datetime
    hosts: list[HostSnapshot]
    channels: dict[str, str] = Field(default_factory=dict)
    #: channels whose state no reachable host could read, and why
    channel_errors: dict[str, str] = Field(default_factory=dict)
    #: how long taking the snapshot took (remote commands, in parallel)
    duration_s: float = 0.0
    #: per channel, the seconds each of its running transfers still needs, from the site's
    #: `database.transfer_eta_query` (None: not read, or the site cannot tell)
    transfer_eta: dict[str, list[float]] | None = None

    def host(self, name: str) -> HostSnapshot:
        """The snapshot of one host (KeyError if absent)."""
        for h in self.hosts:
            if h.host == name:
                return h
        raise KeyError(name)

    def has(self, name: str) -> bool:
        """Whether the snapshot holds a host of that name."""
        return any(h.host == name for h in self.hosts)

    def where(self, agent: str) -> list[str]:
        """The hosts on which an agent process runs."""
        return [h.host for h in self.hosts if h.runs(agent)]


#: `ps`'s elapsed time, ``[[DD-]hh:]mm:ss``
_ETIME = re.compile(r"^(?:(?:(\d+)-)?(\d+):)?(\d+):(\d+)$")


def parse_etime(text: str) -> float | None:
    """Seconds from `ps`'s ``etime`` (``[[DD-]hh:]mm:ss``); None when it is not one."""
    m = _ETIME.match(text)
    if m is None:
        return None
    days, hours, minutes, seconds = (int(g) if g else 0 for g in m.groups())
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def parse_processes(
    text: str, commands: Commands
) -> tuple[list[AgentProcess], list[TransferProcess]]:
    """Parse ``ps -eo pid=,user=,etime=,args=`` output into agent and transfer processes.

    The elapsed-time column is optional: ``ps -eo pid=,user=,args=`` (a profile written before
    it, or a `ps` without it) parses too, and its transfers have no age.

    Args:
        text: the command's stdout.
        commands: the site's command profile (the agent and transfer patterns).

    Returns:
        Agents (by process title) and transfers (``<CHANNEL>__<id>``), in table order.
    """
    agent_re = re.compile(commands.agent_process_regex)
    transfer_re = re.compile(commands.transfer_process_regex)
    agents: list[AgentProcess] = []
    transfers: list[TransferProcess] = []
    for line in text.splitlines():
        parts = line.split(None, 3)
        if len(parts) < 3 or not parts[0].isdigit():
            continue
        pid, user = int(parts[0]), parts[1]
        age = parse_etime(parts[2]) if len(parts) == 4 else None
        args = parts[3] if age is not None else line.split(None, 2)[2]
        m = agent_re.match(args)
        if m and args.split(None, 1)[0] == m.group(1):
            agents.append(AgentProcess(name=m.group(1), pid=pid, user=user))
            continue
        t = transfer_re.match(args)
        if t:
            transfers.append(
                TransferProcess(channel=t.group(1), transfer_id=t.group(2), pid=pid, age_s=age)
            )
    return agents, transfers


def parse_disabled(text: str) -> list[str]:
    """The agent names in a ``.disabled`` file's text (the read's "absent" marker is none)."""
    return [
        line.strip()
        for line in text.splitlines()
        if line.strip() and line.strip() != DISABLED_ABSENT
    ]


def count_transfers(transfers: list[TransferProcess]) -> dict[str, int]:
    """Running transfers per channel, sorted by channel."""
    counts: dict[str, int] = {}
    for t in transfers:
        counts[t.channel] = counts.get(t.channel, 0) + 1
    return dict(sorted(counts.items()))


class HostWithPartners(BaseModel):
    """What a procedure about one host plans from: the host's own snapshot and its partners'.

    `host` is None when the host could not be read over SSH (its agents' state is then known
    from the partners only); `partners` holds the hosts its agents may run on instead, with the
    channel states.
    """

    host: HostSnapshot | None
    partners: SiteSnapshot
