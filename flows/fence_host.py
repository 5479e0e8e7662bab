"""Flow `fence-host`: a host back after an emergency move must not serve its moved agents again.

Snapshot the host and its agents' other hosts, plan (`flows.plans.fence_host`): list in the host's
`.disabled` file every agent of it that runs on its other host, and stop those that run on both.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.client.schemas.objects import State
from prefect.states import Completed, Failed

from flows.executor import Executor
from flows.plans.emergency_move import partners
from flows.plans.fence_host import PROCEDURE, plan_fence_host
from flows.plans.snapshot import SiteSnapshot
from flows.result import ProcedureResult
from flows.run_site import load_run_site
from tasks.outcome import count, now
from tasks.remote import SiteShell
from tasks.site_state import snapshot_host, snapshot_site


@flow(name=PROCEDURE, persist_result=False)
def fence_host(site_file: str, host: str) -> State[Any]:
    """List the host's moved agents in its `.disabled` file and stop those that run twice.

    Returns:
        A Completed state whose message says what was fenced, or a Failed one saying why not;
        its data is the `ProcedureResult`.
    """
    started = now()
    site = load_run_site(site_file)
    if host not in {h.name for h in site.hosts}:
        return Failed(
            message=f"refused: no host {host!r} in site {site.site} (hosts: "
            f"{site.host_names()}); nothing changed"
        )
    with SiteShell(site) as shell:
        snap = snapshot_host(shell, host)
        others = (
            snapshot_site(shell, partners(site, host))
            if snap.reachable
            else SiteSnapshot(site=site.site, taken_at=now(), hosts=[])
        )
        plan = plan_fence_host(site, host, snap, others)
        if not plan.ok:
            return Failed(message="; ".join(plan.problems))
        run = Executor(shell, plan)
        run.execute()
    listed = [a for r in run.records if r.verb == "write-disabled" for a in r.changed]
    summary = (
        f"{host} fenced: {count(len(plan.moved), 'agent')} served elsewhere are listed in "
        f"{site.commands.disabled_file} ({len(listed)} newly), "
        f"{count(len(plan.twice), 'agent')} stopped there"
        if plan.moved
        else f"{host}: nothing to fence ({plan.configured} agents, none moved)"
    )
    failed = bool(run.failed_chains)
    result = ProcedureResult(
        procedure=PROCEDURE,
        site=site.site,
        status="failed" if failed else "completed",
        summary=summary if not failed else f"{host}: fencing failed: " + "; ".join(run.human),
        steps=run.records,
        human_actions=run.human,
        started_at=started,
        ended_at=now(),
    )
    return (Failed if failed else Completed)(message=result.summary, data=result)
