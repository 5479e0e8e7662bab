"""Flow `window-notice`: say in Slack, before a maintenance window opens, what it will do.

Scheduled (`deployments/prefect.yaml`, every 5 minutes). For each procedure of the site with
maintenance windows, when the next window opens within the policy's `notice_s`, it posts one
message in the site's channel: when the window opens and closes, and the plan its scheduled run
would follow if the site stayed as it is now (for the rolling upgrade: the version, the hosts
still to do, in order). The window's opening is remembered in a Prefect Variable
(``window-notice-<site>-<procedure>``), so each window is announced once. It changes nothing.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from prefect import flow
from prefect.client.schemas.objects import State
from prefect.states import Completed
from prefect.variables import Variable
from pydantic import BaseModel, Field

from config.site import Site
from flows.plans.rolling_upgrade import PROCEDURE as UPGRADE
from flows.plans.rolling_upgrade import UpgradeRequest, plan_rolling_upgrade, upgrade_hosts
from flows.plans.windows import describe, next_opening
from flows.run_site import load_run_site
from tasks.adapters.slack import SlackNotifier, mrkdwn
from tasks.outcome import now
from tasks.remote import SiteShell

PROCEDURE = "window-notice"


class Notice(BaseModel):
    """One window announced."""

    procedure: str
    opens_at: dt.datetime
    closes_at: dt.datetime
    window: str
    text: str
    posted: bool


class NoticeResult(BaseModel):
    """What the run announced."""

    site: str
    notices: list[Notice] = Field(default_factory=list)
    summary: str


def notice_variable(site: str, procedure: str) -> str:
    """The Prefect Variable that remembers the last window announced."""
    return f"window-notice-{site}-{procedure}"[:255].lower()


def upgrade_plan_text(site: Site) -> str:
    """What a scheduled rolling upgrade would do now, in a few lines (read live; no change)."""
    from flows.rolling_upgrade import snapshot_upgrade

    version = site.upgrade.target_version
    with SiteShell(site) as shell:
        snap = snapshot_upgrade(shell, upgrade_hosts(site))
    plan = plan_rolling_upgrade(
        site,
        snap,
        UpgradeRequest(version=version, batch=site.upgrade.batch, canary=site.upgrade.canary),
    )
    if not plan.ok:
        return "Its run would be refused as the site is now: " + "; ".join(plan.problems)
    hosts = ", ".join(f"{h.host} ({h.why})" for h in plan.todo) or "none"
    return (
        f"{plan.notes[0]}. Hosts: {hosts}. If a host fails: {site.upgrade.on_failure}."
        if plan.todo
        else plan.notes[0]
    )


@flow(name=PROCEDURE, persist_result=False)
def window_notice(site_file: str) -> State[Any]:
    """Announce each maintenance window that opens within its notice period (module docstring).

    Args:
        site_file: the site file.

    Returns:
        A Completed state whose data is the `NoticeResult`.
    """
    site = load_run_site(site_file)
    t = now()
    notices = []
    for procedure, policy in site.procedures.items():
        nxt = next_opening(policy, t)
        if not policy.windows or nxt is None:
            continue
        opens, window = nxt
        if (opens - t).total_seconds() > policy.notice_s:
            continue
        key = notice_variable(site.site, procedure)
        if Variable.get(key, default=None) == opens.isoformat():
            continue  # announced already
        closes = opens + dt.timedelta(seconds=window.duration_s)
        plan = upgrade_plan_text(site) if procedure == UPGRADE else ""
        # the plan quotes what the hosts answered: shown as text
        text = mrkdwn(
            ":calendar: *{}* maintenance window on *{}* opens at {:%Y-%m-%d %H:%M} UTC and "
            "closes at {:%H:%M} UTC ({}).{}",
            procedure,
            site.site,
            opens,
            closes,
            describe(window),
            f" {plan}" if plan else "",
        )
        posted = SlackNotifier.for_site(site).post(text, in_thread=False) is not None
        Variable.set(key, opens.isoformat(), overwrite=True)
        notices.append(
            Notice(
                procedure=procedure,
                opens_at=opens,
                closes_at=closes,
                window=describe(window),
                text=text,
                posted=posted,
            )
        )
    result = NoticeResult(
        site=site.site,
        notices=notices,
        summary=(
            "; ".join(
                f"announced the {n.procedure} window at {n.opens_at:%H:%M} UTC" for n in notices
            )
            or "no window opens within its notice period"
        ),
    )
    return Completed(message=result.summary, data=result)
