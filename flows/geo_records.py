"""What the geo failovers and the replication readings of a site wrote, kept as Prefect
Variables: each replica's last lag reading (what a failover of an unreachable site states as its
loss window), the last completed failover of each tool (what the drift watch expects every
master to answer) and the last automatic one (anti-flapping).

Best effort like the switch's records (`flows.switch_records`): a record that cannot be written
is logged, one that cannot be read counts as none.
"""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel

from flows.plans.geo_state import ReplicaLag
from flows.switch_records import get_record, set_record


class LastGeoFailover(BaseModel):
    """What the last completed geo failover of a tool wrote on the masters."""

    at: dt.datetime
    tool: str
    site: str
    address: str
    epoch: int
    run_id: str = ""


def _lag_variable(site: str, tool: str, replica: str) -> str:
    return f"geo-lag-{site}-{tool}-{replica}"


def _last_variable(site: str, tool: str) -> str:
    return f"geo-last-{site}-{tool}"


def _automatic_variable(site: str, tool: str) -> str:
    return f"geo-last-automatic-{site}-{tool}"


def remember_lags(site: str, lags: list[ReplicaLag]) -> None:
    """Keep each replica's reading (only readings that say something: a replica whose primary
    did not answer keeps its previous reading, the one a failover needs)."""
    for lag in lags:
        if lag.primary is not None and lag.seconds is not None:
            set_record(_lag_variable(site, lag.tool, lag.site), lag)


def last_lag(site: str, tool: str, replica: str) -> ReplicaLag | None:
    """The last useful reading of `replica`'s lag (None: none on record)."""
    raw = get_record(_lag_variable(site, tool, replica))
    try:
        return ReplicaLag.model_validate(raw) if raw else None
    except ValueError:
        return None


def remember_geo_failover(site: str, record: LastGeoFailover, *, automatic: bool) -> None:
    """Keep the failover (and, when automatic, as the last automatic one)."""
    set_record(_last_variable(site, record.tool), record)
    if automatic:
        set_record(_automatic_variable(site, record.tool), record)


def last_geo_failover(site: str, tool: str, *, automatic: bool = False) -> LastGeoFailover | None:
    """The last completed (or last automatic) failover of `tool` (None: none on record)."""
    raw = get_record(_automatic_variable(site, tool) if automatic else _last_variable(site, tool))
    try:
        return LastGeoFailover.model_validate(raw) if raw else None
    except ValueError:
        return None
