"""What a geo failover plans from: each master's answer for the tool's names, each site's
database and replication, each site's web application, and the last replication reading.

Nothing here does I/O.
"""

from __future__ import annotations

import datetime as dt
import re

from pydantic import BaseModel, Field

_GTID = re.compile(r"^(\d+)-(\d+)-(\d+)$")


class NameAnswer(BaseModel):
    """What one DNS master answers for one of the tool's names (or why it did not)."""

    site: str
    master: str
    name: str
    addresses: list[str] = Field(default_factory=list)
    epoch: int | None = None
    error: str = ""


class DatabaseState(BaseModel):
    """One site's database as it answered (or why it did not)."""

    site: str
    server: str
    reachable: bool
    error: str = ""
    read_only: bool | None = None
    binlog_pos: str = ""
    current_pos: str = ""
    slave_pos: str = ""
    #: it is configured as a replica (SHOW SLAVE STATUS has a row)
    is_replica: bool = False
    io_running: str = ""
    sql_running: str = ""
    seconds_behind: int | None = None
    last_error: str = ""
    #: the source it replicates from (``host:port``)
    source: str = ""
    #: the position its receiving thread has reached
    io_pos: str = ""
    fence_epoch: int | None = None
    fence_site: str = ""
    taken_at: dt.datetime

    @property
    def replicating(self) -> bool:
        """Both replication threads run."""
        return self.is_replica and self.io_running == "Yes" and self.sql_running == "Yes"

    @property
    def primary(self) -> bool:
        """It answers, is writable and replicates from nobody."""
        return self.reachable and self.read_only is False and not self.is_replica


class ToolHealth(BaseModel):
    """What one site's web application answered on its health page (through the tool's name)."""

    site: str
    address: str
    status: int | None = None
    error: str = ""

    @property
    def serving(self) -> bool:
        """It answered 200."""
        return self.status == 200


class ReplicaLag(BaseModel):
    """One replica's lag behind the tool's primary, at one reading."""

    tool: str
    site: str
    primary: str | None
    taken_at: dt.datetime
    #: seconds behind, as the replica reports it (None: unknown)
    seconds: float | None = None
    #: transactions the primary has written that the replica has not applied (None: unknown)
    transactions: int | None = None
    replicating: bool = False
    last_error: str = ""


class GeoSnapshot(BaseModel):
    """Everything a geo failover plans from."""

    tool: str
    names: list[NameAnswer] = Field(default_factory=list)
    databases: dict[str, DatabaseState] = Field(default_factory=dict)
    health: dict[str, ToolHealth] = Field(default_factory=dict)
    #: per master (``address:port``), whether it accepted the TSIG key (None: it did not
    #: answer). Not called `keys`: a model with a `keys` attribute passes for a mapping
    key_ok: dict[str, bool | None] = Field(default_factory=dict)
    key_errors: dict[str, str] = Field(default_factory=dict)
    #: the last sensor reading of each replica's lag, by site (what a failover of an
    #: unreachable primary states as its loss window)
    last_lag: dict[str, ReplicaLag] = Field(default_factory=dict)
    #: the remap check's summary and findings, as sentences (empty: not run)
    remap: list[str] = Field(default_factory=list)
    remap_ready: bool | None = None


def parse_gtid(position: str) -> dict[int, tuple[int, int]]:
    """A GTID position (``0-1-42,1-2-7``) as {domain: (server id, sequence)}.

    Raises:
        ValueError: a part is not ``domain-server-sequence``.
    """
    out: dict[int, tuple[int, int]] = {}
    for part in (p.strip() for p in position.split(",")):
        if not part:
            continue
        m = _GTID.match(part)
        if not m:
            raise ValueError(f"{part!r} is not a GTID (domain-server-sequence)")
        out[int(m.group(1))] = (int(m.group(2)), int(m.group(3)))
    return out


def transactions_behind(primary: str, replica: str) -> int:
    """How many transactions of the primary's position the replica's position lacks (the
    difference of sequence numbers, per replication domain)."""
    p, r = parse_gtid(primary), parse_gtid(replica)
    return sum(max(0, seq - r.get(dom, (0, 0))[1]) for dom, (_srv, seq) in p.items())


def replica_lags(tool: str, databases: dict[str, DatabaseState]) -> list[ReplicaLag]:
    """Each replica's lag behind the primary among `databases` (pure): seconds as the replica
    reports them, transactions from the GTID positions when the primary answered."""
    primaries = [d for d in databases.values() if d.primary]
    primary = primaries[0] if len(primaries) == 1 else None
    out = []
    for d in databases.values():
        if primary is not None and d.site == primary.site:
            continue
        behind: int | None = None
        if primary is not None and d.reachable:
            try:
                behind = transactions_behind(primary.binlog_pos, d.current_pos or d.slave_pos)
            except ValueError:
                behind = None
        out.append(
            ReplicaLag(
                tool=tool,
                site=d.site,
                primary=primary.site if primary else None,
                taken_at=d.taken_at,
                seconds=float(d.seconds_behind) if d.seconds_behind is not None else None,
                transactions=behind,
                replicating=d.replicating,
                last_error=d.error or d.last_error,
            )
        )
    return out
