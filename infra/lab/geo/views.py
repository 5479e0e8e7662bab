"""What `GeoLab.status` reports (typed views of the geo lab, as `handover lab status` shows
them)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class DatabaseView(BaseModel):
    """One tool's MariaDB server at one site, as handover's account sees it."""

    tool: str
    server: str
    #: the lab's process runs
    running: bool
    #: it answered handover's account
    up: bool
    read_only: bool | None = None
    #: it replicates from another server, both threads running
    replicating: bool | None = None
    #: the server it replicates from (None: it is no replica)
    replica_of: str | None = None
    #: Seconds_Behind_Master (None: not replicating, or unknown)
    lag_s: float | None = None
    gtid_current_pos: str | None = None
    fence_epoch: int | None = None
    fence_site: str | None = None
    writes: int | None = None
    #: the replication's own errors, or why the server did not answer
    error: str | None = None


class DnsServerView(BaseModel):
    """A master or resolver, and what it answers for the first tool's first name."""

    role: str
    server: str
    running: bool
    addresses: list[str] = Field(default_factory=list)
    epoch: int | None = None
    ttl_s: int | None = None
    error: str | None = None


class ToolView(BaseModel):
    """One tool's web application at one site, and its health page's answer."""

    tool: str
    url: str
    running: bool
    status: int | None = None
    health: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None


class GeoSiteView(BaseModel):
    """One site of the geo lab."""

    name: str
    #: lost at once by `GeoLab.kill_site` and not restored since
    killed: bool
    databases: list[DatabaseView]
    masters: list[DnsServerView]
    resolvers: list[DnsServerView]
    tools: list[ToolView]


class GeoStatus(BaseModel):
    """The geo lab: whether it runs, and each site."""

    site: str
    up: bool
    state_dir: str
    started: str | None = None
    sites: list[GeoSiteView] = Field(default_factory=list)


def _dns_line(kind: str, v: DnsServerView) -> str:
    run = "" if v.running else " (not running)"
    said = v.error or f"{', '.join(v.addresses) or 'no address'}, epoch {v.epoch}, TTL {v.ttl_s}"
    return f"  {kind} {v.server}{run}: {said}"


def status_lines(st: GeoStatus) -> list[str]:
    """`st` as lines for a terminal (`handover lab status`)."""
    lines = [f"geo lab {'up' if st.up else 'down'} (site {st.site}, state {st.state_dir})"]
    for s in st.sites:
        lines.append(
            f"{s.name}" + (" [killed: `handover lab geo-fault restore-site`]" if s.killed else "")
        )
        for d in s.databases:
            if not d.up:
                lines.append(f"  database {d.tool} {d.server}: down ({d.error})")
                continue
            role = (
                f"replica of {d.replica_of}, "
                + ("replicating" if d.replicating else "NOT replicating")
                + f", lag {d.lag_s if d.lag_s is not None else '?'} s"
                if d.replica_of
                else "primary"
            )
            lines.append(
                f"  database {d.tool} {d.server}: {'read-only' if d.read_only else 'writable'} "
                f"{role}; fence epoch {d.fence_epoch} ({d.fence_site}); {d.writes} writes; "
                f"GTID {d.gtid_current_pos}" + (f"; {d.error}" if d.error else "")
            )
        lines += [_dns_line("master", v) for v in s.masters]
        lines += [_dns_line("resolver", v) for v in s.resolvers]
        for t in s.tools:
            run = "" if t.running else " (not running)"
            said = t.error if t.status is None else f"{t.status} {t.health}"
            lines.append(f"  tool {t.tool} {t.url}{run}: {said}")
    return lines
