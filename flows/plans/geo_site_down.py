"""The automatic control switch's decision: a site the monitoring path declared dead, and what
becomes of each tool active there.

The monitoring path (the exporter's reading, Prometheus' `HandoverGeoSiteDown` for the site's
bound, Alertmanager, the gateway) says a site is lost. handover does not act on that word
alone: its own reading must confirm it. Every tool placed at the site must have its database
and its health page silent, and every DNS master of the site must be silent too. A site any
part of which answers is no lost site (a partition, a tool restarting): an operator decides.

Then, per tool:

* active elsewhere: nothing to do;
* active at the lost site: a failover to the first other site (in `geo.sites` order) whose
  database answers and replicates from the lost one; none: refused, said;
* a tool that failed over automatically within `geo.block_s` is not failed over again without a
  human (anti-flapping);
* otherwise the failover runs under the site's countdown (`geo.countdown_s`: announced, and an
  abort stops it) or at once (0). A loss window beyond the tool's `max_lag_s` still asks a
  human, as for a failover started by hand.

Nothing here does I/O.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, Field

from config.site import Site
from flows.plans.geo_status import GeoToolStatus

Action = Literal["failover", "ask", "nothing", "refused"]


class ToolDecision(BaseModel):
    """What becomes of one tool."""

    tool: str
    action: Action
    #: the site it fails over to (failover, ask)
    to: str | None = None
    sentence: str


class SiteDownPlan(BaseModel):
    """The decision for a site declared dead."""

    site: str
    geo_site: str
    #: handover's own reading confirms the site is lost
    confirmed: bool = False
    decisions: list[ToolDecision] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list)

    @property
    def failovers(self) -> list[ToolDecision]:
        """The tools to fail over (with or without a human)."""
        return [d for d in self.decisions if d.action in ("failover", "ask")]


def silent_parts(site: Site, geo_site: str, statuses: list[GeoToolStatus]) -> list[str]:
    """What of `geo_site` still answers in handover's reading (pure): each a sentence; none
    means the reading confirms the site is lost."""
    assert site.geo is not None
    answering: list[str] = []
    for st in statuses:
        db = st.snapshot.databases.get(geo_site)
        if db is not None and db.reachable:
            answering.append(f"the database of {st.tool} at {geo_site} ({db.server}) answers")
        health = st.snapshot.health.get(geo_site)
        if health is not None and health.status is not None:
            answering.append(
                f"the tool {st.tool} at {geo_site} answers its health page ({health.status})"
            )
        answering += sorted(
            {
                f"the DNS master {a.master} of {geo_site} answers"
                for a in st.snapshot.names
                if a.site == geo_site and not a.error
            }
        )
    return list(dict.fromkeys(answering))


def plan_site_down(
    site: Site,
    geo_site: str,
    statuses: list[GeoToolStatus],
    last_automatic: dict[str, dt.datetime],
    now: dt.datetime,
) -> SiteDownPlan:
    """The decision for `geo_site` declared dead (pure; see the module docstring).

    Args:
        site: the site (with `geo:`).
        geo_site: the geo site the monitoring path declared dead.
        statuses: every tool's status, read now.
        last_automatic: when each tool last failed over automatically (by tool name).
        now: the time of the decision.

    Returns:
        The decision; ``confirmed`` False (and no failover) when handover's reading does not
        confirm the loss, with what still answers in ``problems``.
    """
    plan = SiteDownPlan(site=site.site, geo_site=geo_site)
    if site.geo is None:
        plan.problems.append(f"site {site.site} declares no tools replicated between sites")
        return plan
    geo = site.geo
    if geo_site not in {s.name for s in geo.sites}:
        plan.problems.append(
            f"no geo site {geo_site!r} in {site.site} (sites: "
            + ", ".join(s.name for s in geo.sites)
            + ")"
        )
        return plan
    answering = silent_parts(site, geo_site, statuses)
    if answering:
        plan.problems.append(
            f"{geo_site} is not lost by handover's own reading: "
            + "; ".join(answering)
            + "; no automatic failover (an operator decides: `handover run geo-failover`)"
        )
        return plan
    plan.confirmed = True
    for st in statuses:
        tool = geo.tool(st.tool)
        if st.active_site != geo_site:
            plan.decisions.append(
                ToolDecision(
                    tool=tool.name,
                    action="nothing",
                    sentence=f"{tool.name} is active at {st.active_site or 'no known site'}, "
                    f"not at {geo_site}: nothing to do",
                )
            )
            continue
        lost = tool.sites.get(geo_site)
        source = f"{lost.db_host}:{lost.db_port or tool.database.port}" if lost else ""
        targets = [
            s.name
            for s in geo.sites
            if s.name != geo_site
            and s.name in tool.sites
            and (db := st.snapshot.databases.get(s.name)) is not None
            and db.reachable
            and db.is_replica
            and db.source == source
        ]
        if not targets:
            plan.decisions.append(
                ToolDecision(
                    tool=tool.name,
                    action="refused",
                    sentence=f"{tool.name} is active at the lost site {geo_site} and no other "
                    "site's database answers as its replica: nothing to fail over to",
                )
            )
            continue
        to = targets[0]
        last = last_automatic.get(tool.name)
        if last is not None and (now - last).total_seconds() < geo.block_s:
            plan.decisions.append(
                ToolDecision(
                    tool=tool.name,
                    action="ask",
                    to=to,
                    sentence=f"{tool.name} failed over automatically "
                    f"{(now - last).total_seconds():.0f} s ago, within geo.block_s = "
                    f"{geo.block_s} s: a human decides its failover to {to}",
                )
            )
            continue
        plan.decisions.append(
            ToolDecision(
                tool=tool.name,
                action="failover",
                to=to,
                sentence=f"{tool.name} fails over from the lost site {geo_site} to {to}"
                + (f" in {geo.countdown_s} s unless aborted" if geo.countdown_s else " at once"),
            )
        )
    return plan
