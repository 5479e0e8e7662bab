"""The geo failback: a tool moved back to a site it was failed away from.

A site that was lost and came back may hold writes its replacement never received, and its
database is no replica of anybody. The failback rebuilds it as a replica of the active site
unless it is a healthy one already (its old content is dumped to a file first: nothing is
thrown away unseen), then runs a planned failover to it (`flows.plans.geo_failover`).

Nothing here does I/O.
"""

from __future__ import annotations

from config.site import Site
from flows.plans.geo_failover import (
    FAILBACK,
    GeoPlan,
    GeoRequest,
    current_answer,
    plan_geo_failover,
    refused,
)
from flows.plans.geo_state import GeoSnapshot
from flows.plans.model import Chain, Phase
from flows.plans.verbs import RebuildReplica


def plan_geo_failback(site: Site, snap: GeoSnapshot, req: GeoRequest) -> GeoPlan:
    """The failback's plan (pure): rebuild the site to return to as a replica of the active
    one unless it is a healthy one already, then a planned failover to it.

    Args:
        site: the site (with `geo:`).
        snap: as for `plan_geo_failover`.
        req: the tool and the site to return to (`to`).

    Returns:
        A plan whose procedure is ``geo-failback``.
    """
    base = GeoPlan(site=site.site, ok=False, tool=req.tool, to_site=req.to, procedure=FAILBACK)
    if site.geo is None:
        return refused(
            base, f"site {site.site} declares no tools replicated between sites (`geo:`)"
        )
    try:
        tool = site.geo.tool(req.tool)
    except KeyError as exc:
        return refused(base, str(exc.args[0]))
    if req.to not in tool.sites:
        return refused(
            base, f"{req.to} is not a site of {tool.name} (sites: {', '.join(tool.sites)})"
        )
    first = current_answer(snap.names, tool.names[0])
    active = tool.site_of(first.addresses[0]) if first is not None else None
    if active is None:
        return refused(base, f"no DNS master says where {tool.name} is active")
    if active == req.to:
        return plan_geo_failover(site, snap, req).model_copy(update={"procedure": FAILBACK})
    there = snap.databases.get(req.to)
    if there is None or not there.reachable:
        return refused(
            base,
            f"the database of {tool.name} at {req.to} does not answer"
            + (f" ({there.error})" if there else "")
            + ": it cannot be rebuilt; start it and run the failback again",
        )
    src = tool.sites[active]
    source_server = f"{src.db_host}:{src.db_port or tool.database.port}"
    healthy = (
        there.is_replica
        and there.source == source_server
        and there.replicating
        and not there.last_error
    )
    if healthy:
        plan = plan_geo_failover(site, snap, req.model_copy(update={"mode": "planned"}))
        return plan.model_copy(update={"procedure": FAILBACK})
    # rebuild first: the snapshot after it is what the planned failover would see
    rebuilt = snap.model_copy(deep=True)
    rebuilt.databases[req.to] = there.model_copy(
        update=dict(
            is_replica=True,
            source=source_server,
            io_running="Yes",
            sql_running="Yes",
            last_error="",
            read_only=True,
            seconds_behind=0,
            fence_epoch=None,
        )
    )
    plan = plan_geo_failover(site, rebuilt, req.model_copy(update={"mode": "planned"}))
    plan = plan.model_copy(update={"procedure": FAILBACK})
    if not plan.ok:
        return plan
    rebuild = Phase(
        name="rebuild the replica",
        chains=[
            Chain(
                name=f"{tool.name}@{req.to}",
                steps=[
                    RebuildReplica.build(
                        site,
                        "rebuild",
                        req.to,
                        tool=tool.name,
                        source=active,
                        keep_dir=req.keep_dir,
                        post=f"the database at {req.to} replicates from {active}; what it held "
                        f"is kept in {req.keep_dir}",
                    )
                ],
            )
        ],
    )
    plan.phases = [rebuild, *plan.phases]
    plan.notes.insert(
        1,
        f"{req.to}'s database is rebuilt from {active}'s first ("
        + (
            f"it replicates from {there.source}, not {source_server}"
            if there.is_replica and there.source != source_server
            else f"its replication is broken: {there.last_error}"
            if there.is_replica and there.last_error
            else "it is no replica"
            if not there.is_replica
            else "its replication does not run"
        )
        + f"); what it held is kept in {req.keep_dir} before it is replaced",
    )
    return plan
