"""Snapshots: the live state of a site, read through the SSH layer.

`parse_processes` is pure (tested on recorded `ps` output); `snapshot_host` and `snapshot_site` read
the hosts. A host that cannot be reached is part of the snapshot (``reachable=False`` with the error
and whether it is transient), never an exception: the planners decide what an unreachable host
means.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from prefect import task
from pydantic import BaseModel, Field

from config.site import Commands, Site
from tasks import remote
from tasks.ssh import PermanentSshError, SshError, TransientSshError


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
    #: how long taking the snapshot took (remote commands, in parallel)
    duration_s: float = 0.0

    def host(self, name: str) -> HostSnapshot:
        """The snapshot of one host (KeyError if absent)."""
        for h in self.hosts:
            if h.host == name:
                return h
        raise KeyError(name)

    def where(self, agent: str) -> list[str]:
        """The hosts on which an agent process runs."""
        return [h.host for h in self.hosts if h.runs(agent)]


def parse_processes(
    text: str, commands: Commands
) -> tuple[list[AgentProcess], list[TransferProcess]]:
    """Parse ``ps -eo pid=,user=,args=`` output into agent and transfer processes.

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
        parts = line.split(None, 2)
        if len(parts) < 3 or not parts[0].isdigit():
            continue
        pid, user, args = int(parts[0]), parts[1], parts[2]
        m = agent_re.match(args)
        if m and args.split(None, 1)[0] == m.group(1):
            agents.append(AgentProcess(name=m.group(1), pid=pid, user=user))
            continue
        t = transfer_re.match(args)
        if t:
            transfers.append(TransferProcess(channel=t.group(1), transfer_id=t.group(2), pid=pid))
    return agents, transfers


def parse_disabled(text: str) -> list[str]:
    """The agent names in a ``.disabled`` file's text."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _unreachable(host: str, exc: SshError) -> HostSnapshot:
    return HostSnapshot(
        host=host,
        reachable=False,
        error=str(exc),
        error_kind="transient" if isinstance(exc, TransientSshError) else "permanent",
        taken_at=_now(),
    )


def snapshot_host(site: Site, host: str) -> HostSnapshot:
    """Read one host: its agents, transfers per channel and `.disabled` entries.

    An SSH failure gives ``reachable=False`` with the error; a command that runs but fails (a
    broken `ps`) raises `PermanentSshError`, since the snapshot would be wrong.
    """
    try:
        ps = remote.run(site, host, "list_processes")
        disabled = remote.run_argv(site, host, site.commands.disabled_argv("read"))
    except SshError as exc:  # could not reach or log in: that is part of the snapshot
        return _unreachable(host, exc)
    if not ps.ok:
        raise PermanentSshError(
            f"{host}: `{ps.command}` failed (exit {ps.exit_code}): {ps.stderr.strip()[-200:]}; "
            "check commands.list_processes in the site file",
            host=host,
            command=ps.command,
        )
    agents, transfers = parse_processes(ps.stdout, site.commands)
    counts: dict[str, int] = {}
    for t in transfers:
        counts[t.channel] = counts.get(t.channel, 0) + 1
    return HostSnapshot(
        host=host,
        reachable=True,
        agents=agents,
        transfers=dict(sorted(counts.items())),
        transfer_processes=transfers,
        # `cat` of a missing file exits non-zero: no file means no entry
        disabled=parse_disabled(disabled.stdout) if disabled.ok else [],
        taken_at=_now(),
    )


def read_channel_state(site: Site, host: str, channel: str) -> str:
    """A channel's state (``Active``, ``Inactive``, ...) read with the profile's command on a host.

    Raises:
        PermanentSshError: the command failed or printed no state.
    """
    res = remote.run(site, host, "channel_state", channel=channel)
    m = re.search(site.commands.channel_state_regex, res.stdout)
    if not res.ok or m is None:
        raise PermanentSshError(
            f"{host}: cannot read the state of channel {channel}: `{res.command}` exited "
            f"{res.exit_code}: {(res.stderr or res.stdout).strip()[-200:]}",
            host=host,
            command=res.command,
        )
    return m.group(1)


def snapshot_site(site: Site, hosts: list[str] | None = None) -> SiteSnapshot:
    """Snapshot hosts in parallel (all by default) and read every channel's state once.

    Channel states are read on the first reachable host; they are left empty when no host can be
    reached.
    """
    started = time.monotonic()
    names = hosts or [h.name for h in site.hosts]
    with ThreadPoolExecutor(max_workers=min(site.ssh.parallelism, len(names))) as ex:
        snaps = list(ex.map(lambda h: snapshot_host(site, h), names))
    channels: dict[str, str] = {}
    reader = next((s.host for s in snaps if s.reachable), None)
    if reader is not None and site.channels:
        with ThreadPoolExecutor(max_workers=min(site.ssh.parallelism, len(site.channels))) as ex:
            states = list(ex.map(lambda c: read_channel_state(site, reader, c), site.channels))
        channels = dict(zip(site.channels, states, strict=True))
    return SiteSnapshot(
        site=site.site,
        taken_at=_now(),
        hosts=snaps,
        channels=channels,
        duration_s=round(time.monotonic() - started, 3),
    )


@task(
    name="snapshot-site",
    retries=2,
    retry_delay_seconds=1,
    retry_condition_fn=remote.retry_if_transient,
)
def snapshot_site_task(site: Site, hosts: list[str] | None = None) -> SiteSnapshot:
    """Prefect task: `snapshot_site`."""
    return snapshot_site(site, hosts)
