"""Flow `geo-watch`: the replication status of every replicated tool, kept and repaired.

Scheduled (`deployments/prefect.yaml`, every minute). For each tool of the site's `geo:` it
reads the names on every master, each site's database and replication and each health page;
publishes the status table (the artifact ``replication-status``, the page the operations
centre kept by hand); keeps each replica's lag (what a failover of an unreachable site states
as its loss window, `flows.geo_records`); and brings the site back in line:

* a master **behind** (its epoch older than the last failover's, or than the newest any master
  answers when no failover is on record: it was silent during a failover) is repointed with
  the same compare-and-set a failover uses;
* a master whose answer differs at the same epoch (changed by hand) is reported, not changed;
* a database that is writable at a site the tool is not active at, with an older epoch than
  the active site's (a site that came back after a failover), is set read-only. Its tool
  refused writes already (its epoch is old); now its database does too.

Both repairs hold the tool's failover lock: a failover or failback that runs is left alone, and
the next watch looks again. What is still wrong after that is emitted as ``handover.geo.drift``
and said in Slack, and the run ends Failed so it shows in the UI.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.client.schemas.objects import State
from prefect.events import emit_event
from prefect.states import Completed, Failed
from pydantic import BaseModel, Field

from config.site import Site, Tool
from flows.geo_records import last_geo_failover, remember_lags
from flows.plans.geo_failover import current_answer
from flows.plans.geo_status import GeoToolStatus, status_markdown
from flows.procedure import holding_service
from flows.run_site import load_run_site
from flows.service_lock import ServiceLockError
from tasks.adapters.replication import ReplicationError, set_read_only
from tasks.adapters.slack import SlackNotifier, mrkdwn
from tasks.geo import read_geo_status
from tasks.geo_dns import repoint

PROCEDURE = "geo-watch"
EVENT = "handover.geo.drift"


class GeoWatchResult(BaseModel):
    """What one watch found and repaired."""

    site: str
    summary: str
    repaired: list[str] = Field(default_factory=list)
    statuses: list[GeoToolStatus] = Field(default_factory=list)


def repair(site: Site, tool: Tool, st: GeoToolStatus) -> list[str]:
    """Repoint the masters behind and fence a stale writable database (module docstring);
    what was done, as sentences."""
    assert site.geo is not None
    done: list[str] = []
    record = last_geo_failover(site.site, tool.name)
    newest = current_answer(st.snapshot.names, tool.names[0])
    if record is not None and (newest is None or (newest.epoch or 0) <= record.epoch):
        address, epoch = record.address, record.epoch
    elif newest is not None and newest.epoch is not None:
        address, epoch = newest.addresses[0], newest.epoch
    else:
        return done
    behind = {
        a.master for a in st.snapshot.names if not a.error and (a.epoch is None or a.epoch < epoch)
    }
    if behind:
        r = repoint(site.geo, tool, address, epoch, only=behind)
        done += [
            f"{tool.name}: master {m} repointed to {address} with epoch {epoch}" for m in r.changed
        ]
        done += [
            f"{tool.name}: master {m} could not be repaired: {why}"
            for m, why in {**r.silent, **r.refused}.items()
        ]
    active = tool.site_of(address)
    for s, db in st.snapshot.databases.items():
        if s == active or not db.primary:
            continue
        if db.fence_epoch is not None and db.fence_epoch >= epoch:
            continue
        try:
            if set_read_only(tool, s, True):
                done.append(
                    f"{tool.name}: the database at {s} (epoch {db.fence_epoch}, older than "
                    f"{epoch}) was writable although the tool is active at {active}: set "
                    "read-only; `handover run geo-failback` rebuilds it as a replica"
                )
        except ReplicationError as exc:
            done.append(f"{tool.name}: the stale database at {s} could not be fenced: {exc}")
    return done


@flow(name=PROCEDURE, persist_result=False)
def geo_watch(site_file: str, repair_drift: bool = True) -> State[Any]:
    """Read, keep and repair every tool's replication status (module docstring).

    Args:
        site_file: the site file (with `geo:`).
        repair_drift: repoint the masters behind and fence stale databases (False: only read).

    Returns:
        Completed (nothing wrong, or no `geo:`) or Failed (something is still wrong), with the
        `GeoWatchResult`.
    """
    site = load_run_site(site_file)
    if site.geo is None:
        result = GeoWatchResult(site=site.site, summary=f"site {site.site} has no `geo:` tools")
        return Completed(message=result.summary, data=result)
    statuses = read_geo_status(site)
    repaired: list[str] = []
    for tool, st in zip(site.geo.tools, statuses, strict=True):
        remember_lags(site.site, st.lags)
        if repair_drift and not st.ok:
            # the tool's failover lock: a failover or failback that runs is not repaired under it
            try:
                with holding_service(site, PROCEDURE, f"geo-{tool.name}", subject=tool.name):
                    repaired += repair(site, tool, st)
            except ServiceLockError as exc:
                repaired.append(f"{tool.name}: not repaired now: {exc}")
    if repaired:
        statuses = read_geo_status(site)
    create_markdown_artifact(
        key="replication-status",
        markdown=status_markdown(statuses)
        + ("\n## Repaired\n\n" + "\n".join(f"- {r}" for r in repaired) if repaired else ""),
    )
    wrong = [f"{st.tool}: {p}" for st in statuses for p in st.problems]
    summary = (
        "; ".join(wrong)
        if wrong
        else "every tool is active at one site, its replicas replicate and every master agrees"
    ) + (f" (repaired: {'; '.join(repaired)})" if repaired else "")
    result = GeoWatchResult(site=site.site, summary=summary, repaired=repaired, statuses=statuses)
    if not wrong:
        return Completed(message=summary, data=result)
    emit_event(
        event=EVENT,
        resource={
            "prefect.resource.id": f"handover.geo.{site.site}",
            "handover.site": site.site,
        },
        payload={"problems": wrong, "repaired": repaired},
    )
    SlackNotifier.for_site(site).post(
        mrkdwn(":warning: Replicated tools: {}", summary), in_thread=False
    )
    return Failed(message=summary, data=result)
