"""Seed 002's sensors, read through the snapshot path: what `handover exporter` publishes.

One reading is the site's snapshot (each host's agents and transfer processes, each channel's
state), each host's init-script status (which running agent serves), and each front end's role,
epoch and database view, all read in parallel and bounded by `timeout_s`: a host that does not
answer in time is reported unreachable, never waited for.
"""

from __future__ import annotations

import datetime as dt
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from pydantic import BaseModel, Field

from flows.plans.rolling_upgrade import parse_status
from flows.plans.snapshot import HostSnapshot, SiteSnapshot
from flows.plans.switch import FrontendState
from tasks.adapters.ssh import SshError
from tasks.frontend import read_frontend
from tasks.outcome import now
from tasks.remote import SiteShell
from tasks.site_state import read_channel_state, snapshot_host


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


def read_sensors(shell: SiteShell, timeout_s: float = 20.0) -> SensorReading:
    """Read every sensor of the site once, within `timeout_s` (see the module docstring).

    Each host is read on its own: a host that does not answer within the bound is reported
    unreachable, and only that host (a reading that waited for it would make every host look
    down to the alert rules).
    """
    site = shell.site
    started = time.monotonic()
    deadline = started + timeout_s
    fronts = site.frontend.hosts if site.frontend else []
    hosts = [h.name for h in site.hosts]

    def left() -> float:
        return max(0.1, deadline - time.monotonic())

    def states(host: str) -> dict[str, str]:
        res = shell.run(host, "agents_status")
        return {
            s.agent: s.state or "running"
            for s in parse_status(res.stdout, site.commands.agent_status_regex)
        }

    errors: list[str] = []
    reading = SensorReading(taken_at=now(), duration_s=0.0)
    workers = min(32, 2 * len(hosts) + len(fronts) + len(site.channels))
    ex = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        snap_fs = {h: ex.submit(snapshot_host, shell, h) for h in hosts}
        state_fs = {h: ex.submit(states, h) for h in hosts}
        front_fs = {h: ex.submit(read_frontend, shell, h) for h in fronts}
        snaps: list[HostSnapshot] = []
        for host, f in snap_fs.items():
            try:
                snaps.append(f.result(timeout=left()))
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
        readers = [s.host for s in snaps if s.reachable]
        channel_fs = (
            {c: ex.submit(read_channel_state, shell, readers[0], c) for c in site.channels}
            if readers
            else {}
        )
        channels: dict[str, str] = {}
        for channel, cf in channel_fs.items():
            try:
                channels[channel] = cf.result(timeout=left())
            except (FutureTimeout, SshError) as exc:
                errors.append(f"channel {channel}: {type(exc).__name__}: {exc}")
        reading.snapshot = SiteSnapshot(
            site=site.site,
            taken_at=reading.taken_at,
            hosts=snaps,
            channels=channels,
            duration_s=round(time.monotonic() - started, 3),
        )
        for host, sf in state_fs.items():
            try:
                reading.agent_states[host] = sf.result(timeout=left())
            except (FutureTimeout, SshError) as exc:
                errors.append(f"{host}: agents_status: {type(exc).__name__}: {exc}")
        for host, ff in front_fs.items():
            try:
                reading.frontends.append(ff.result(timeout=left()))
            except FutureTimeout:
                errors.append(f"{host}: frontend_status: no answer within {timeout_s:g} s")
    finally:
        # a host that hangs is not waited for: its thread ends with its SSH timeout
        ex.shutdown(wait=False, cancel_futures=True)
    reading.errors = errors
    reading.duration_s = round(time.monotonic() - started, 3)
    return reading
