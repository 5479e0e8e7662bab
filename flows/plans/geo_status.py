"""A replicated tool's status, the page the operations centre kept by hand: where the tool is
active and with which epoch, each site's database and replication (lag in seconds and in
transactions, whether it runs, the last error), each master's answer and each site's health
page, and what is wrong.

Nothing here does I/O.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from config.site import Tool
from flows.plans.geo_failover import current_answer
from flows.plans.geo_state import GeoSnapshot, ReplicaLag, replica_lags


class GeoToolStatus(BaseModel):
    """One tool's status (module docstring)."""

    tool: str
    #: the site the newest epoch on the masters names (None: no master answered, or the
    #: address is no site's)
    active_site: str | None = None
    epoch: int | None = None
    snapshot: GeoSnapshot
    lags: list[ReplicaLag] = Field(default_factory=list)
    #: masters whose answer differs from the newest (behind, or silent)
    masters_behind: list[str] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing is wrong."""
        return not self.problems


def geo_status(tool: Tool, snap: GeoSnapshot) -> GeoToolStatus:
    """The tool's status from a snapshot (pure)."""
    first = current_answer(snap.names, tool.names[0])
    active = tool.site_of(first.addresses[0]) if first is not None else None
    epoch = first.epoch if first is not None else None
    st = GeoToolStatus(
        tool=tool.name,
        active_site=active,
        epoch=epoch,
        snapshot=snap,
        lags=replica_lags(tool.name, snap.databases),
    )
    newest = {n: current_answer(snap.names, n) for n in tool.names}
    for a in snap.names:
        best = newest.get(a.name)
        if a.error:
            st.masters_behind.append(f"{a.site} {a.master} ({a.name}: no answer)")
        elif best is not None and (a.addresses != best.addresses or a.epoch != best.epoch):
            st.masters_behind.append(
                f"{a.site} {a.master} ({a.name}: {', '.join(a.addresses) or 'nothing'} with "
                f"epoch {a.epoch}, not {', '.join(best.addresses)} with epoch {best.epoch})"
            )
    p = st.problems
    if first is None:
        p.append("no DNS master answers for " + tool.names[0])
    elif active is None:
        p.append(f"{tool.names[0]} points at {first.addresses[0]}, which is no site of the tool")
    if st.masters_behind:
        p.append("masters behind: " + "; ".join(st.masters_behind))
    primaries = sorted(s for s, d in snap.databases.items() if d.primary)
    if len(primaries) > 1:
        p.append(
            f"{len(primaries)} writable primaries ({', '.join(primaries)}): only "
            f"{active or 'the active site'} should accept writes; the others are fenced by "
            "their old epoch, and the drift watch sets them read-only"
        )
    if active is not None:
        db = snap.databases.get(active)
        if db is not None and not db.primary:
            p.append(
                f"the database at the active site {active} is not the primary ("
                + ("it does not answer" if not db.reachable else f"read-only {db.read_only}")
                + ")"
            )
        h = snap.health.get(active)
        if h is not None and not h.serving:
            p.append(f"the tool at {active} does not serve ({h.status or h.error})")
    for lag in st.lags:
        if lag.primary is None:
            continue
        if not lag.replicating:
            p.append(
                f"the replica at {lag.site} does not replicate"
                + (f": {lag.last_error}" if lag.last_error else "")
            )
        elif lag.seconds is not None and lag.seconds > tool.max_lag_s:
            p.append(
                f"the replica at {lag.site} is {lag.seconds:g} s behind, more than the "
                f"{tool.max_lag_s:g} s a failover may lose without asking"
            )
    return st


def status_rows(st: GeoToolStatus) -> list[list[str]]:
    """One row per site: site, role, database, replication, lag, health (strings)."""
    rows = []
    lags = {lag.site: lag for lag in st.lags}
    for site, db in st.snapshot.databases.items():
        role = "active" if site == st.active_site else "standby"
        if not db.reachable:
            dbs = "no answer"
        else:
            dbs = ("read-only" if db.read_only else "writable") + (
                f", epoch {db.fence_epoch}" if db.fence_epoch is not None else ""
            )
        lag = lags.get(site)
        if db.is_replica:
            repl = (
                f"from {db.source}: "
                + ("running" if db.replicating else f"io {db.io_running}, sql {db.sql_running}")
                + (f"; {db.last_error}" if db.last_error else "")
            )
        else:
            repl = "primary" if db.primary else "none"
        behind = (
            "-"
            if lag is None
            else (f"{lag.seconds:g} s" if lag.seconds is not None else "? s")
            + " / "
            + (f"{lag.transactions} tx" if lag.transactions is not None else "? tx")
        )
        h = st.snapshot.health.get(site)
        health = "-" if h is None else str(h.status) if h.status is not None else h.error[:60]
        rows.append([site, role, dbs, repl, behind, health])
    return rows


def status_markdown(statuses: list[GeoToolStatus]) -> str:
    """The status of every tool, as the artifact and `handover status` show it."""
    out = ["# Replication status", ""]
    for st in statuses:
        out += [
            f"## {st.tool}: active at {st.active_site or '?'}, epoch {st.epoch}",
            "",
            "| site | role | database | replication | lag | health |",
            "|---|---|---|---|---|---|",
            *["| " + " | ".join(r) + " |" for r in status_rows(st)],
            "",
        ]
        out += [f"- {p}" for p in st.problems] or ["- nothing wrong"]
        out.append("")
    return "\n".join(out)
