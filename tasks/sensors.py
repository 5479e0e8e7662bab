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
from flows.plans.snapshot import SiteSnapshot
from flows.plans.switch import FrontendState
from tasks.adapters.ssh import SshError
from tasks.frontend import read_frontend
from tasks.outcome import now
from tasks.remote import SiteShell
from tasks.site_state import snapshot_site


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
    """Read every sensor of the site once, within `timeout_s` (see the module docstring)."""
    site = shell.site
    started = time.monotonic()
    fronts = site.frontend.hosts if site.frontend else []

    def states(host: str) -> dict[str, str]:
        res = shell.run(host, "agents_status")
        return {
            s.agent: s.state or "running"
            for s in parse_status(res.stdout, site.commands.agent_status_regex)
        }

    errors: list[str] = []
    reading = SensorReading(taken_at=now(), duration_s=0.0)
    ex = ThreadPoolExecutor(max_workers=min(site.ssh.parallelism, 2 + len(site.hosts)))
    try:
        snap_f = ex.submit(snapshot_site, shell)
        state_fs = {h.name: ex.submit(states, h.name) for h in site.hosts}
        front_fs = {h: ex.submit(read_frontend, shell, h) for h in fronts}
        deadline = started + timeout_s

        def left() -> float:
            return max(0.1, deadline - time.monotonic())

        try:
            reading.snapshot = snap_f.result(timeout=left())
        except (FutureTimeout, SshError) as exc:
            errors.append(f"snapshot: {type(exc).__name__}: {exc}")
        for host, f in state_fs.items():
            try:
                reading.agent_states[host] = f.result(timeout=left())
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
