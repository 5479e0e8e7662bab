"""The service's sensors, read through the snapshot path: what `handover exporter` publishes.

One reading is the site's snapshot (each host's agents and transfer processes, each channel's
state), each host's init-script status (which running agent serves), and each front end's role,
epoch and database view: one SSH round trip per host, the hosts in parallel (at most
`ssh.parallelism` at once), the whole bounded by `timeout_s`: a host that does not answer in
time is reported unreachable, never waited for. A channel whose state could not be read on its
host is left out of this reading (and said in `errors`); the next reading tries again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from pydantic import BaseModel, Field

from flows.plans.geo_status import GeoToolStatus
from flows.plans.rolling_upgrade import parse_status
from flows.plans.snapshot import HostSnapshot, SiteSnapshot
from flows.plans.switch import FrontendState
from tasks.adapters.ssh import CommandResult, SshError
from tasks.frontend import frontend_state
from tasks.geo import read_geo_status
from tasks.outcome import now
from tasks.probe import probe_tcp
from tasks.remote import SiteShell
from tasks.site_state import Query, channel_state, read_host, spread_channels

#: a host's read is probed once it has taken this many times its last read (and at least
#: `ssh.probe_timeout_s`): on a large site, where reads queue and take a second, a healthy host
#: is not probed at every reading
PROBE_AFTER_USUAL = 3.0
#: each shell's hosts' last read times (a reading's shell lives as long as the exporter)
_read_s: weakref.WeakKeyDictionary[SiteShell, dict[str, float]] = weakref.WeakKeyDictionary()


class SensorReading(BaseModel):
    """One reading of every sensor."""

    taken_at: dt.datetime
    duration_s: float
    snapshot: SiteSnapshot | None = None
    #: per host, the state each running agent reports (``serving``, ``db-lost``, ...)
    agent_states: dict[str, dict[str, str]] = Field(default_factory=dict)
    frontends: list[FrontendState] = Field(default_factory=list)
    #: what could not be read in time, or at all
    errors: list[str] = Field(default_factory=list)
    #: each replicated tool's status (a site with `geo:`)
    geo: list[GeoToolStatus] = Field(default_factory=list)


def read_sensors(shell: SiteShell, timeout_s: float = 20.0) -> SensorReading:
    """Read every sensor of the site once, within `timeout_s` (see the module docstring).

    One SSH round trip per host (`read_host`): its snapshot, its init script's status, its
    front end's state (a front-end host) and the states of a few channels (`spread_channels`).
    Each host is read on its own: a host that does not answer within the bound is reported
    unreachable, and only that host (a reading that waited for it would make every host look
    down to the alert rules). A host whose read has not answered within `ssh.probe_timeout_s`
    (or three times its last read, when that is longer) gets a TCP connect to its SSH port with
    the same bound; a silent one is reported unreachable at once (`_probe`): a dead host reads
    as down within about twice that bound.
    """
    site = shell.site
    started = time.monotonic()
    deadline = started + timeout_s
    fronts = set(site.frontend.hosts if site.frontend else [])
    # a site of replicated web tools is read through its databases, masters and health pages:
    # its hosts run no agents to read over SSH
    hosts = [] if site.service.kind == "web-tools" else [h.name for h in site.hosts]
    assigned = spread_channels(site.channels, hosts)

    def left() -> float:
        return max(0.1, deadline - time.monotonic())

    #: the hosts found silent by the probe of a slow read, and why
    silent: dict[str, str] = {}

    def one(host: str) -> tuple[HostSnapshot, list[CommandResult]]:
        extra: list[Query] = [("agents_status", {})]
        if host in fronts:
            extra.append(("frontend_status", {}))
        extra += [("channel_state", {"channel": c}) for c in assigned[host]]
        usual = _read_s.setdefault(shell, {}).get(host, 0.0)
        after = max(site.ssh.probe_timeout_s, PROBE_AFTER_USUAL * usual)
        probe = threading.Timer(after, _probe, (shell, host, silent))
        probe.daemon = True
        probe.start()
        began = time.monotonic()
        try:
            out = read_host(shell, host, extra)
        finally:
            probe.cancel()
        if out[0].reachable:
            _read_s[shell][host] = time.monotonic() - began
        return out

    errors: list[str] = []
    reading = SensorReading(taken_at=now(), duration_s=0.0)
    channels: dict[str, str] = {}
    ex = ThreadPoolExecutor(max_workers=max(1, min(site.ssh.parallelism, len(hosts))) + 1)
    try:
        geo = ex.submit(read_geo_status, site) if site.geo is not None else None
        futures = {h: ex.submit(one, h) for h in hosts}
        snaps: list[HostSnapshot] = []
        for host, f in futures.items():
            _until_done_or_silent(f, host, silent, deadline)
            rest: list[CommandResult]
            try:
                if host in silent:  # as a host whose connect failed: not waited for further
                    snap, rest = _silent_snapshot(host, silent[host]), []
                else:
                    snap, rest = f.result(timeout=left())
            except (FutureTimeout, SshError) as exc:
                why = (
                    f"no answer within {timeout_s:g} s"
                    if isinstance(exc, FutureTimeout)
                    else str(exc)
                )
                errors.append(f"{host}: {why}")
                snaps.append(
                    HostSnapshot(
                        host=host,
                        reachable=False,
                        error=why,
                        error_kind="transient",
                        taken_at=now(),
                    )
                )
                continue
            snaps.append(snap)
            if not snap.reachable:
                errors.append(f"{host}: {snap.error}")
                if host in fronts:
                    reading.frontends.append(
                        FrontendState(host=host, reachable=False, error=snap.error)
                    )
                continue
            status, *rest = rest
            reading.agent_states[host] = {
                s.agent: s.state or "running"
                for s in parse_status(status.stdout, site.commands.agent_status_regex)
            }
            if host in fronts:
                front, *rest = rest
                reading.frontends.append(frontend_state(host, front))
            for channel, res in zip(assigned[host], rest, strict=True):
                try:
                    channels[channel] = channel_state(site, host, channel, res)
                except SshError as exc:
                    errors.append(f"channel {channel}: {exc}")
        if geo is not None:
            try:
                reading.geo = geo.result(timeout=left())
            except FutureTimeout:
                errors.append(f"the replicated tools: no answer within {timeout_s:g} s")
        reading.snapshot = SiteSnapshot(
            site=site.site,
            taken_at=reading.taken_at,
            hosts=snaps,
            channels={c: channels[c] for c in site.channels if c in channels},
            duration_s=round(time.monotonic() - started, 3),
        )
    finally:
        # a host that hangs is not waited for: its thread ends with its SSH timeout
        ex.shutdown(wait=False, cancel_futures=True)
    reading.errors = errors
    reading.duration_s = round(time.monotonic() - started, 3)
    return reading


def _probe(shell: SiteShell, host: str, silent: dict[str, str]) -> None:
    """A host's read has not answered within `ssh.probe_timeout_s`: a TCP connect to its SSH
    port, with the same bound, tells a slow host (it answers: its read goes on) from a down or
    cut-off one (silent: recorded, and its cached connection dropped, which ends the read). A
    host that answers its read in its usual time is never probed: a healthy site sees no extra
    connection."""
    site = shell.site
    h, bound = site.host(host), site.ssh.probe_timeout_s
    if probe_tcp(h.address, h.port, bound) == "silent":
        silent[host] = f"its SSH port did not answer within {bound:g} s"
        shell.drop(host)


def _until_done_or_silent(
    f: Future[Any], host: str, silent: dict[str, str], deadline: float
) -> None:
    """Wait for a host's read until it ends, the host is found silent, or the deadline."""
    while not f.done() and host not in silent and time.monotonic() < deadline:
        with contextlib.suppress(FutureTimeout):
            f.result(timeout=min(0.05, max(0.0, deadline - time.monotonic())))


def _silent_snapshot(host: str, why: str) -> HostSnapshot:
    """The snapshot of a host the probe found silent."""
    return HostSnapshot(
        host=host, reachable=False, error=why, error_kind="transient", taken_at=now()
    )
