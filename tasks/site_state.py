"""Snapshots: the live state of a site, read through the SSH layer into `flows.plans.snapshot`.

`snapshot_host` and `snapshot_site` read the hosts; the model and its parsers are pure and live in
`flows.plans.snapshot`. A host that cannot be reached is part of the snapshot, never an exception.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

from prefect import task
from prefect.cache_policies import NO_CACHE

from flows.plans.snapshot import (
    AgentProcess,
    HostSnapshot,
    SiteSnapshot,
    TransferProcess,
    count_transfers,
    parse_disabled,
    parse_processes,
)
from tasks import remote
from tasks.adapters.ssh import PermanentSshError, SshError, TransientSshError
from tasks.outcome import now
from tasks.remote import SiteShell

__all__ = [
    "AgentProcess",
    "HostSnapshot",
    "SiteSnapshot",
    "TransferProcess",
    "parse_disabled",
    "parse_processes",
    "read_channel_state",
    "snapshot_host",
    "snapshot_site",
    "snapshot_site_task",
]


def _unreachable(host: str, exc: SshError) -> HostSnapshot:
    return HostSnapshot(
        host=host,
        reachable=False,
        error=str(exc),
        error_kind="transient" if isinstance(exc, TransientSshError) else "permanent",
        taken_at=now(),
    )


def snapshot_host(shell: SiteShell, host: str) -> HostSnapshot:
    """Read one host: its agents, transfers per channel and `.disabled` entries.

    An SSH failure gives ``reachable=False`` with the error; a command that runs but fails (a
    broken `ps`) raises `PermanentSshError`, since the snapshot would be wrong. A `.disabled` file
    that exists but cannot be read is reported in ``disabled_error``, not taken as empty.
    """
    site = shell.site
    try:
        ps = shell.run(host, "list_processes")
        disabled = shell.run_argv(host, site.commands.disabled_argv("read"))
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
    disabled_error = None
    if not disabled.ok:
        disabled_error = (
            f"{host}: cannot read {site.commands.disabled_file} (exit {disabled.exit_code}): "
            f"{(disabled.stderr or disabled.stdout).strip()[-200:] or 'no output'}"
        )
    return HostSnapshot(
        host=host,
        reachable=True,
        agents=agents,
        transfers=count_transfers(transfers),
        transfer_processes=transfers,
        disabled=parse_disabled(disabled.stdout) if disabled.ok else [],
        disabled_error=disabled_error,
        taken_at=now(),
    )


def read_channel_state(shell: SiteShell, host: str, channel: str) -> str:
    """A channel's state (``Active``, ``Inactive``, ...) read with the profile's command on a host.

    Raises:
        PermanentSshError: the command failed or printed no state.
    """
    site = shell.site
    res = shell.run(host, "channel_state", channel=channel)
    m = re.search(site.commands.channel_state_regex, res.stdout)
    if not res.ok or m is None:
        raise PermanentSshError(
            f"{host}: cannot read the state of channel {channel}: `{res.command}` exited "
            f"{res.exit_code}: {(res.stderr or res.stdout).strip()[-200:]}",
            host=host,
            command=res.command,
        )
    return m.group(1)


def snapshot_site(shell: SiteShell, hosts: list[str] | None = None) -> SiteSnapshot:
    """Snapshot hosts in parallel (all by default) and read every channel's state once.

    Each channel's state is read on the first reachable host that can read it; a channel no host
    could read is left out of `channels` and its error is in `channel_errors` (all are left out
    when no host can be reached).
    """
    site = shell.site
    started = time.monotonic()
    names = hosts or [h.name for h in site.hosts]
    with ThreadPoolExecutor(max_workers=min(site.ssh.parallelism, len(names))) as ex:
        snaps = list(ex.map(lambda h: snapshot_host(shell, h), names))
    readers = [s.host for s in snaps if s.reachable]
    channels: dict[str, str] = {}
    errors: dict[str, str] = {}

    def read(channel: str) -> None:
        # the first reachable host that can read it: a host cut off from the database cannot
        first: SshError | None = None
        for host in readers:
            try:
                channels[channel] = read_channel_state(shell, host, channel)
                return
            except SshError as exc:
                first = first or exc
        if first is not None:
            errors[channel] = str(first)

    if readers and site.channels:
        with ThreadPoolExecutor(max_workers=min(site.ssh.parallelism, len(site.channels))) as ex:
            list(ex.map(read, site.channels))
    return SiteSnapshot(
        site=site.site,
        taken_at=now(),
        hosts=snaps,
        channels={c: channels[c] for c in site.channels if c in channels},
        channel_errors={c: errors[c] for c in site.channels if c in errors},
        duration_s=round(time.monotonic() - started, 3),
    )


@task(name="snapshot-site", cache_policy=NO_CACHE, **remote.TRANSIENT_RETRIES)
def snapshot_site_task(shell: SiteShell, hosts: list[str] | None = None) -> SiteSnapshot:
    """Prefect task: `snapshot_site`."""
    return snapshot_site(shell, hosts)
