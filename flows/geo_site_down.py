"""Flow `geo-site-down`: the automatic control switch. A site the monitoring path declared
dead has its tools failed over, once handover's own reading confirms the loss.

It reads every tool's status, decides (`flows.plans.geo_site_down`: the loss confirmed by the
reading, a target per tool, anti-flapping), then runs `geo-failover` for each tool to fail over,
as a subflow with its own plan, report and lock: under the site's countdown (`geo.countdown_s`)
or, for a tool that failed over automatically within `geo.block_s`, with a human's approval. A
loss window beyond the tool's `max_lag_s` asks a human as for a failover started by hand.

The automatic path is taken only when the run was called in-process or carries the gateway's
seal of the alert that declared the site dead (`flows.approval.automatic_path_proven`); a run
created through the Prefect API without it asks a human for every failover.
"""

from __future__ import annotations

import getpass
from typing import Any, Literal

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.client.schemas.objects import State
from prefect.states import Completed, Failed
from pydantic import BaseModel, Field

from flows import progress
from flows.approval import automatic_path_proven
from flows.geo_failover import GeoResult, geo_failover
from flows.geo_records import last_geo_failover
from flows.plans.geo_site_down import SiteDownPlan, plan_site_down
from flows.run_site import load_run_site
from flows.seals import geo_site_subject
from tasks.geo import read_geo_status
from tasks.outcome import now

PROCEDURE = "geo-site-down"


class SiteDownResult(BaseModel):
    """What the control switch decided and what each failover did."""

    site: str
    geo_site: str
    status: Literal["completed", "partial", "refused"]
    summary: str
    automatic: bool
    plan: SiteDownPlan
    failovers: list[GeoResult] = Field(default_factory=list)


@flow(name=PROCEDURE, persist_result=False)
def geo_site_down(
    site_file: str,
    geo_site: str,
    reason: str = "",
    requested_by: str = "",
    alert_id: str = "",
    alert_seal: str = "",
) -> State[Any]:
    """Fail over the tools of the lost site `geo_site` (module docstring).

    Args:
        site_file: the site file (with `geo:`).
        geo_site: the geo site declared dead.
        reason: why (the alert's summary).
        requested_by: who or what asked.
        alert_id: the alert event that started the run, if any.
        alert_seal: the gateway's seal of that alert (`flows.seals`), set by the trigger.

    Returns:
        Completed (every failover completed, or nothing to do) or Failed (the loss not
        confirmed, a failover refused, rejected or failed), with the `SiteDownResult`.
    """
    site = load_run_site(site_file)
    who = requested_by or getpass.getuser()
    automatic = automatic_path_proven(site, alert_id, alert_seal, geo_site_subject(geo_site))
    if site.geo is None:
        plan = SiteDownPlan(
            site=site.site,
            geo_site=geo_site,
            problems=[f"site {site.site} declares no tools replicated between sites"],
        )
        statuses = []
    else:
        statuses = read_geo_status(site)
        last = {
            t.name: rec.at
            for t in site.geo.tools
            if (rec := last_geo_failover(site.site, t.name, automatic=True)) is not None
        }
        plan = plan_site_down(site, geo_site, statuses, last, now())
    for sentence in plan.problems + [d.sentence for d in plan.decisions]:
        progress.emit("step-sentence", sentence=sentence)
    results: list[GeoResult] = []
    for d in plan.failovers:
        assert d.to is not None
        state = geo_failover(
            site_file,
            service=d.tool,
            to=d.to,
            reason=reason or f"site {geo_site} lost ({who})",
            requested_by=who,
            # a run whose alert is not proven asks a human, like a failover by hand
            pause_for_approval=None if automatic else True,
            automatic=automatic,
            flapping=d.sentence if d.action == "ask" else "",
            return_state=True,
        )
        ran = state.result(raise_on_failure=False)
        if isinstance(ran, GeoResult):
            results.append(ran)
    done = [r for r in results if r.status == "completed"]
    if not plan.confirmed:
        status: Literal["completed", "partial", "refused"] = "refused"
        summary = "; ".join(plan.problems)
    elif len(done) == len(plan.failovers) and not any(
        d.action == "refused" for d in plan.decisions
    ):
        status = "completed"
        summary = f"site {geo_site} lost: " + (
            "; ".join(r.summary for r in done) if done else "no tool was active there"
        )
    else:
        status = "partial"
        summary = f"site {geo_site} lost: " + "; ".join(
            [r.summary for r in results]
            + [d.sentence for d in plan.decisions if d.action == "refused"]
        )
    result = SiteDownResult(
        site=site.site,
        geo_site=geo_site,
        status=status,
        summary=summary,
        automatic=automatic,
        plan=plan,
        failovers=results,
    )
    create_markdown_artifact(
        key=f"{PROCEDURE}-report",
        markdown="\n".join(
            [
                f"# Site {geo_site} declared lost: {status.upper()}",
                "",
                summary,
                "",
                *[f"- {d.sentence}" for d in plan.decisions],
                *[f"- {p}" for p in plan.problems],
            ]
        ),
        description=summary,
    )
    if status == "completed":
        return Completed(message=summary, data=result)
    return Failed(message=summary, data=result)
