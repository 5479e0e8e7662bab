"""Snapshots: the live state of a site, read through the SSH layer into `flows.plans.snapshot`.

`snapshot_host` and `snapshot_site` read the hosts; the model and its parsers are pure and live in
`flows.plans.snapshot`. A host that cannot be reached is part of the snapshot, never an exception.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from prefect import task
from prefect.cache_policies import NO_CACHE

from config.site import Site
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
from tasks.adapters.ssh import CommandResult, PermanentSshError, SshError, TransientSshError
from tasks.outcome import now
from tasks.remote import SiteShell

log = logging.getLogger(__name__)

__all__ = [
    "AgentProcess",
    "HostSnapshot",
    "SiteSnapshot",
    "TransferProcess",
    "channel_state",
    "parse_disabled",
    "parse_processes",
    "read_channel_state",
    "read_host",
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


#: a read-only command for `read_host`: a command-profile name with its values, or an argv
Query = tuple[str, dict[str, str]] | list[str]


def snapshot_host(shell: SiteShell, host: str) -> HostSnapshot:
    """Read one host: its agents, transfers per channel and `.disabled` entries (`read_host`)."""
    return read_host(shell, host)[0]


def read_host(
    shell: SiteShell, host: str, extra: Sequence[Query] = ()
) -> tuple[HostSnapshot, list[CommandResult]]:
    """Read one host's snapshot, and run `extra` read-only commands, in one SSH round trip.

    An SSH failure gives ``reachable=False`` with the error (and no extra result); a command that
    runs but fails (a broken `ps`) raises `PermanentSshError`, since the snapshot would be wrong.
    A `.disabled` file that exists but cannot be read is reported in ``disabled_error``, not
    taken as empty. The extra commands' results are returned as they are, in order.
    """
    site = shell.site
    try:
        ps, disabled, *rest = shell.run_many(
            host, [("list_processes", {}), site.commands.disabled_argv("read"), *extra]
        )
    except SshError as exc:  # could not reach or log in: that is part of the snapshot
        return _unreachable(host, exc), []
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
    snap = HostSnapshot(
        host=host,
        reachable=True,
        agents=agents,
        transfers=count_transfers(transfers),
        transfer_processes=transfers,
        disabled=parse_disabled(disabled.stdout) if disabled.ok else [],
        disabled_error=disabled_error,
        taken_at=now(),
    )
    return snap, rest


def read_channel_state(shell: SiteShell, host: str, channel: str) -> str:
    """A channel's state (``Active``, ``Inactive``, ...) read with the profile's command on a host.

    Raises:
        PermanentSshError: the command failed or printed no state.
    """
    return channel_state(
        shell.site, host, channel, shell.run(host, "channel_state", channel=channel)
    )


def channel_state(site: Site, host: str, channel: str, res: CommandResult) -> str:
    """A channel's state from what its `channel_state` command printed on `host`.

    Raises:
        PermanentSshError: the command failed or printed no state.
    """
    m = re.search(site.commands.channel_state_regex, res.stdout)
    if not res.ok or m is None:
        raise PermanentSshError(
            f"{host}: cannot read the state of channel {channel}: `{res.command}` exited "
            f"{res.exit_code}: {(res.stderr or res.stdout).strip()[-200:]}",
            host=host,
            command=res.command,
        )
    return m.group(1)


def spread_channels(channels: Sequence[str], hosts: Sequence[str]) -> dict[str, list[str]]:
    """Which host reads which channels' states: round-robin, so that each host's one round trip
    carries a few and none carries them all."""
    out: dict[str, list[str]] = {h: [] for h in hosts}
    for i, channel in enumerate(channels):
        if hosts:
            out[hosts[i % len(hosts)]].append(channel)
    return out


def snapshot_site(shell: SiteShell, hosts: list[str] | None = None) -> SiteSnapshot:
    """Snapshot hosts in parallel (all by default) and read every channel's state once.

    One SSH round trip per host (`read_host`), at most `ssh.parallelism` hosts at once: each
    host's carries its process table, its `.disabled` file and the states of a few channels
    (`spread_channels`); with the site's `database.channel_states_query`, every channel's state
    is read with that one query instead, and the hosts read only what it did not answer. A
    channel whose reading failed there (a host cut off from the database)
    is read again on the other reachable hosts, one after the other; a channel no host could
    read is left out of `channels` and its error is in `channel_errors` (all are left out when
    no host can be reached).
    """
    site = shell.site
    started = time.monotonic()
    names = hosts or [h.name for h in site.hosts]
    channels: dict[str, str] = {}
    errors: dict[str, str] = {}
    retry: list[str] = []
    from_db = channel_states_from_db(site)
    channels.update({c: st for c, st in from_db.items() if c in site.channels})
    assigned = spread_channels([c for c in site.channels if c not in channels], names)

    def one(host: str) -> HostSnapshot:
        mine = assigned[host]
        snap, rest = read_host(shell, host, [("channel_state", {"channel": c}) for c in mine])
        if not snap.reachable:
            retry.extend(mine)
        for channel, res in zip(mine, rest, strict=False):
            try:
                channels[channel] = channel_state(site, host, channel, res)
            except SshError as exc:
                errors[channel] = str(exc)
                retry.append(channel)
        return snap

    with ThreadPoolExecutor(max_workers=min(site.ssh.parallelism, len(names))) as ex:
        snaps = list(ex.map(one, names))
    readers = [s.host for s in snaps if s.reachable]

    def read(channel: str) -> None:
        # the other reachable hosts, one after the other: a host cut off from the database
        # cannot read it
        first: SshError | None = None
        for host in readers:
            try:
                channels[channel] = read_channel_state(shell, host, channel)
                errors.pop(channel, None)
                return
            except SshError as exc:
                first = first or exc
        if first is not None:
            errors[channel] = str(first)

    if readers and retry:
        with ThreadPoolExecutor(max_workers=min(site.ssh.parallelism, len(retry))) as ex:
            list(ex.map(read, sorted(set(retry))))
    return SiteSnapshot(
        site=site.site,
        taken_at=now(),
        hosts=snaps,
        channels={c: channels[c] for c in site.channels if c in channels},
        channel_errors={c: errors[c] for c in site.channels if c in errors and c not in channels},
        duration_s=round(time.monotonic() - started, 3),
    )


def channel_states_from_db(site: Site) -> dict[str, str]:
    """The channel states from the site's one query, or nothing (no query configured, or the
    database did not answer: the hosts read them, as without the query)."""
    if site.database is None or site.database.channel_states_query is None:
        return {}
    from tasks.adapters.db import DatabaseUnavailable, read_channel_states

    try:
        return read_channel_states(site)
    except DatabaseUnavailable as exc:
        log.warning("%s; reading the channel states on the hosts instead", exc)
        return {}


@task(name="snapshot-site", cache_policy=NO_CACHE, **remote.TRANSIENT_RETRIES)
def snapshot_site_task(shell: SiteShell, hosts: list[str] | None = None) -> SiteSnapshot:
    """Prefect task: `snapshot_site`."""
    return snapshot_site(shell, hosts)
