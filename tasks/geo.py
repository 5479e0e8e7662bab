"""The geo failover's verbs and reads: a tool's database at one site, its names on every
master, the clients' resolvers, and each site's health page.

Every verb is idempotent (a database already read-only, a replica already promoted with the
epoch, names already at the address: left alone, said so) and checks its post-condition
before it returns. The step's `host` is a geo site's name.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from pathlib import Path

from config.site import Site, Tool
from flows.plans.geo_state import GeoSnapshot, ToolHealth
from flows.plans.geo_status import GeoToolStatus, geo_status
from flows.plans.verbs import (
    AwaitResolvers,
    DbReadOnly,
    PromoteReplica,
    RebuildReplica,
    ReplicateFrom,
    RepointNames,
    WaitApplied,
)
from tasks.adapters.replication import (
    ReplicationError,
    promote,
    read_database,
    rebuild_replica,
    replicate_from,
    set_read_only,
    wait_applied,
)
from tasks.geo_dns import keys_accepted, read_names, repoint, resolvers_answer
from tasks.outcome import StepFailed, StepResult, now


def _tool(site: Site, name: str) -> Tool:
    assert site.geo is not None
    return site.geo.tool(name)


def _result(step_host: str, verb: str, changed: bool, what: str, sentence: str) -> StepResult:
    t = now()
    return StepResult(
        host=step_host,
        verb=verb,
        changed=[what] if changed else [],
        unchanged=[] if changed else [what],
        sentence=sentence,
        started_at=t,
        ended_at=t,
    )


def _failed(
    s: DbReadOnly | WaitApplied | PromoteReplica | ReplicateFrom | RebuildReplica, exc: Exception
) -> StepFailed:
    return StepFailed(str(exc), host=s.host, verb=s.verb)


def db_read_only(site: Site, s: DbReadOnly) -> StepResult:
    """Set the tool's database at the step's site read-only (or writable again)."""
    tool = _tool(site, s.tool)
    started = now()
    try:
        changed = set_read_only(tool, s.host, s.on)
        after = read_database(tool, s.host)
    except ReplicationError as exc:
        raise _failed(s, exc) from exc
    if after.read_only is not s.on:
        raise StepFailed(
            f"the database of {tool.name} at {s.host} is still "
            f"{'writable' if s.on else 'read-only'} after the change ({after.error or 'no error'})",
            host=s.host,
            verb=s.verb,
        )
    state = "read-only" if s.on else "writable"
    r = _result(
        s.host,
        s.verb,
        changed,
        f"{tool.name}@{s.host}",
        f"{s.host}: the database of {tool.name} is {state}"
        + ("" if changed else " (it already was)")
        + (f"; its position is {after.binlog_pos or 'empty'}" if s.on else ""),
    )
    return r.model_copy(
        update={
            "started_at": started,
            "commands": [f"SET GLOBAL read_only = {'ON' if s.on else 'OFF'}"] if changed else [],
        }
    )


def wait_caught_up(site: Site, s: WaitApplied) -> StepResult:
    """Wait until the replica at the step's site has applied its source's whole position."""
    tool = _tool(site, s.tool)
    started = now()
    source = read_database(tool, s.source)
    if not source.reachable:
        raise StepFailed(
            f"the position of {s.source} cannot be read: {source.error}", host=s.host, verb=s.verb
        )
    position = source.binlog_pos
    try:
        ok = wait_applied(tool, s.host, position, s.timeout_s)
    except ReplicationError as exc:
        raise _failed(s, exc) from exc
    if not ok:
        there = read_database(tool, s.host)
        raise StepFailed(
            f"the replica at {s.host} did not apply {s.source}'s position {position} within "
            f"{s.timeout_s:g} s (it is at {there.current_pos or there.slave_pos or 'nothing'}"
            + (f", last error: {there.last_error}" if there.last_error else "")
            + "); nothing was promoted",
            host=s.host,
            verb=s.verb,
        )
    r = _result(
        s.host,
        s.verb,
        False,
        f"{tool.name}@{s.host}",
        f"{s.host}: the replica of {tool.name} has applied everything {s.source} wrote "
        f"({position or 'nothing yet'}) in {(now() - started).total_seconds():.1f} s",
    )
    return r.model_copy(update={"started_at": started})


def promote_replica(site: Site, s: PromoteReplica) -> StepResult:
    """Make the replica at the step's site the primary with the step's epoch."""
    tool = _tool(site, s.tool)
    started = now()
    try:
        changed = promote(tool, s.host, s.epoch)
        after = read_database(tool, s.host)
    except ReplicationError as exc:
        raise _failed(s, exc) from exc
    if not (after.primary and after.fence_epoch == s.epoch and after.fence_site == s.host):
        raise StepFailed(
            f"the database of {tool.name} at {s.host} is not the primary with epoch {s.epoch} "
            f"after the promotion (read-only {after.read_only}, replica of "
            f"{after.source or 'nobody'}, epoch {after.fence_epoch} for {after.fence_site})",
            host=s.host,
            verb=s.verb,
        )
    r = _result(
        s.host,
        s.verb,
        changed,
        f"{tool.name}@{s.host}",
        f"{s.host}: the database of {tool.name} is the primary with epoch {s.epoch}"
        + ("" if changed else " (it already was)"),
    )
    return r.model_copy(
        update={
            "started_at": started,
            "acted_at": now(),
            "commands": [
                "STOP SLAVE IO_THREAD; MASTER_GTID_WAIT(<received>); STOP SLAVE; RESET SLAVE ALL",
                f"UPDATE handover_fence SET epoch = {s.epoch}, site = '{s.host}'",  # noqa: S608 - shown, not run
                "SET GLOBAL read_only = OFF",
            ]
            if changed
            else [],
        }
    )


def repoint_names(site: Site, s: RepointNames) -> StepResult:
    """Move the tool's names on every master that answers; fail when the target site (or a
    site whose masters answered) has fewer than its minimum, or when a master was moved by
    somebody else."""
    assert site.geo is not None
    geo = site.geo
    tool = _tool(site, s.tool)
    started = now()
    done = repoint(geo, tool, s.address, s.epoch)
    if done.refused:
        raise StepFailed(
            "a DNS master refused the change: "
            + "; ".join(f"{m}: {why}" for m, why in done.refused.items())
            + (f"; moved on {', '.join(done.moved)}" if done.moved else "; nothing was moved")
            + ". Read `handover status --service "
            + tool.name
            + "` and decide where the tool is active",
            host=s.host,
            verb=s.verb,
        )
    behind: list[str] = []
    short: list[str] = []
    for gs in geo.sites:
        mine = [f"{m.address}:{m.port}" for m in gs.masters]
        moved = [m for m in mine if m in done.moved]
        need = s.minimum.get(gs.name, gs.min_masters)
        if len(moved) < need and (gs.name == s.host or moved):
            short.append(f"{gs.name}: {len(moved)} of {len(mine)} (at least {need})")
        behind += [f"{m} ({gs.name}: {done.silent[m]})" for m in mine if m in done.silent]
    if short or not done.moved:
        raise StepFailed(
            f"{', '.join(tool.names)} moved on too few masters: "
            + ("; ".join(short) or "none answered")
            + (f"; silent: {'; '.join(behind)}" if behind else "")
            + "; start the silent masters and run the failover again (it resumes)",
            host=s.host,
            verb=s.verb,
        )
    sentence = (
        f"{', '.join(tool.names)} point at {s.address} with epoch {s.epoch} on "
        f"{len(done.moved)} of {len(geo.masters())} masters ({', '.join(done.moved)})"
        + (f"; {len(done.changed)} changed by compare-and-set" if done.changed else "; already")
    )
    human = []
    if behind:
        sentence += "; left behind: " + "; ".join(behind)
        human.append(
            "DNS masters left behind (they did not answer): "
            + "; ".join(behind)
            + "; the drift watch repairs each when it answers again"
        )
    return StepResult(
        host=s.host,
        verb=s.verb,
        changed=done.changed,
        unchanged=[m for m in done.moved if m not in done.changed],
        sentence=sentence,
        commands=[
            f"UPDATE {geo.zone} on {m}: prereq A and TXT as read; replace A {s.address}, "
            f'TXT "epoch={s.epoch}" for {", ".join(tool.names)} (TSIG {geo.tsig_key_name})'
            for m in done.changed
        ],
        started_at=started,
        ended_at=now(),
        acted_at=now(),
        human=human,
    )


def await_resolvers(site: Site, s: AwaitResolvers) -> StepResult:
    """Wait until every resolver that answers gives the new address for every name."""
    assert site.geo is not None
    started = time.monotonic()
    t0 = now()
    deadline = started + s.timeout_s
    while True:
        stale = {
            f"{where} {name}": got
            for name in s.names
            for where, got in resolvers_answer(site.geo, name).items()
            if isinstance(got, list) and got != [s.address]
        }
        if not stale or time.monotonic() >= deadline:
            break
        time.sleep(0.25)
    if stale:
        raise StepFailed(
            f"after {s.timeout_s:g} s these resolvers still answer otherwise: "
            + "; ".join(f"{w}: {', '.join(g) or 'nothing'}" for w, g in stale.items()),
            host=s.host,
            verb=s.verb,
        )
    return StepResult(
        host=s.host,
        verb=s.verb,
        unchanged=list(s.names),
        sentence=f"every resolver that answers gives {s.address} for {', '.join(s.names)}, "
        f"{time.monotonic() - started:.1f} s after the names moved",
        started_at=t0,
        ended_at=now(),
    )


def follow(site: Site, s: ReplicateFrom) -> StepResult:
    """Make the database at the step's site a replica of the step's source."""
    tool = _tool(site, s.tool)
    try:
        changed = replicate_from(tool, s.host, s.source)
    except ReplicationError as exc:
        raise _failed(s, exc) from exc
    return _result(
        s.host,
        s.verb,
        changed,
        f"{tool.name}@{s.host}",
        f"{s.host}: the database of {tool.name} replicates from {s.source}"
        + ("" if changed else " (it already did)"),
    )


def rebuild(site: Site, s: RebuildReplica) -> StepResult:
    """Rebuild the database at the step's site from the source, its old content kept."""
    tool = _tool(site, s.tool)
    try:
        kept = rebuild_replica(tool, s.host, s.source, Path(s.keep_dir))
    except ReplicationError as exc:
        raise _failed(s, exc) from exc
    return _result(
        s.host,
        s.verb,
        True,
        f"{tool.name}@{s.host}",
        f"{s.host}: the database of {tool.name} was rebuilt from {s.source} and replicates "
        f"from it; what it held is kept in {kept}",
    )


def read_health(tool: Tool, site_name: str, timeout_s: float = 3.0) -> ToolHealth:
    """What the tool at `site_name` answers on its health page, asked at its address with the
    tool's first name as the Host (and TLS server name, checked against `tool.ca_file`)."""
    address = tool.sites[site_name].address
    name = tool.names[0].rstrip(".")
    try:
        sock = socket.create_connection((address, tool.port), timeout=timeout_s)
        conn: http.client.HTTPConnection
        if tool.scheme == "https":
            ctx = ssl.create_default_context(cafile=tool.ca_file)
            sock = ctx.wrap_socket(sock, server_hostname=name)
            conn = http.client.HTTPSConnection(name, tool.port, timeout=timeout_s, context=ctx)
        else:
            conn = http.client.HTTPConnection(name, tool.port, timeout=timeout_s)
        conn.sock = sock
        try:
            conn.request("GET", tool.health_path, headers={"Host": name})
            r = conn.getresponse()
            r.read(65536)
            return ToolHealth(site=site_name, address=address, status=r.status)
        finally:
            conn.close()
    except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
        return ToolHealth(site=site_name, address=address, error=f"{type(exc).__name__}: {exc}")


def await_health(tool: Tool, site_name: str, timeout_s: float) -> ToolHealth:
    """The health page of the tool at `site_name`, asked until it answers 200 or `timeout_s`
    passed (a tool notices that the names moved when it next reads the masters); the last
    answer."""
    deadline = time.monotonic() + timeout_s
    health = read_health(tool, site_name)
    while not health.serving and time.monotonic() < deadline:
        time.sleep(0.25)
        health = read_health(tool, site_name)
    return health


def snapshot_geo(site: Site, tool_name: str) -> GeoSnapshot:
    """The names on every master, the key on every master, each site's database and health
    page, read side by side (the last lag reading and the remap check are added by the
    flow)."""
    from concurrent.futures import ThreadPoolExecutor

    assert site.geo is not None
    tool = site.geo.tool(tool_name)
    sites = list(tool.sites)
    with ThreadPoolExecutor(max_workers=2 * len(sites) + 2) as ex:
        names = ex.submit(read_names, site.geo, tool)
        keys = ex.submit(keys_accepted, site.geo, tool)
        dbs = {s: ex.submit(read_database, tool, s) for s in sites}
        health = {s: ex.submit(read_health, tool, s) for s in sites}
        ok, errors = keys.result()
        return GeoSnapshot(
            tool=tool.name,
            names=names.result(),
            databases={s: f.result() for s, f in dbs.items()},
            health={s: f.result() for s, f in health.items()},
            key_ok=ok,
            key_errors=errors,
        )


def read_geo_status(site: Site) -> list[GeoToolStatus]:
    """Every replicated tool's status now (`flows.plans.geo_status`); nothing is changed."""
    assert site.geo is not None
    return [geo_status(t, snapshot_geo(site, t.name)) for t in site.geo.tools]
