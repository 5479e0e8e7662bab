"""The rolling upgrade's decisions between its batches and after a failed host (pure).

Between two batches the run settles what the last one did, then decides, in this order: halt
when more hosts failed than the site tolerates; leave the rest for the next window when the
next host would not end before the window closes (its time estimated from the slowest host so
far, with a margin); after the canary, ask a human again when the site says so; otherwise go on.
A failed host gets the site's `upgrade.on_failure`: rolled back to the version it had, its
agents moved to their backups, or reported and left as it is. Nothing here does I/O.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel

from config.site import Site
from flows.plans.rolling_upgrade import HostPlan, UpgradePlan
from flows.plans.windows import WindowCheck, fits
from flows.plans.words import count

#: a batch is started when the slowest host so far, times this, still ends in the window
ESTIMATE_MARGIN = 1.25


class Settled(BaseModel):
    """What a finished host's run did, as the decisions read it."""

    host: str
    upgraded: bool
    seconds: float


class Gate(BaseModel):
    """What the run does before its next batch."""

    action: Literal["go", "halt", "ask"]
    #: why it halts, or the question a human is asked
    reason: str = ""


def before_batch(
    plan: UpgradePlan,
    batch: int,
    settled: list[Settled],
    *,
    max_failures: int,
    window: WindowCheck,
    now: dt.datetime,
    forced: bool,
    expected_host_s: float,
    approve_after_canary: bool,
) -> Gate:
    """Whether batch number `batch` (0 is the first) may start, from the hosts settled so far.

    Args:
        plan: the upgrade's plan.
        batch: the index of the batch about to start.
        settled: every host done so far, upgraded or not.
        max_failures: how many failed hosts the site tolerates.
        window: the maintenance window the run started in.
        now: the time of the decision.
        forced: the run was forced outside its window (no window check).
        expected_host_s: a host's time when none has been upgraded yet (the site's policy).
        approve_after_canary: whether the site asks a human again after the canary.
    """
    failures = sum(1 for s in settled if not s.upgraded)
    if failures > max_failures:
        return Gate(
            action="halt",
            reason=f"{count(failures, 'host')} failed (the site tolerates {max_failures}): "
            "the run halts",
        )
    done = [s.seconds for s in settled if s.upgraded]
    estimate = max(done) * ESTIMATE_MARGIN if done else expected_host_s
    if not forced and not fits(window, now, estimate):
        closes = f"{window.closes_at:%H:%M:%S} UTC" if window.closes_at else "now"
        return Gate(
            action="halt",
            reason=f"the window closes at {closes} and a host takes about {estimate:.0f} s: "
            "the rest is left for the next window",
        )
    after_canary = plan.canary is not None and plan.batches[:1] == [[plan.canary]]
    if after_canary and batch == 1 and approve_after_canary:
        return Gate(
            action="ask", reason=f"the canary {plan.canary} is done: continue with the other hosts?"
        )
    return Gate(action="go")


OnFailure = Literal["rollback", "move", "halt"]


def on_host_failure(site: Site, plan: UpgradePlan, host: HostPlan) -> OnFailure:
    """What the run does with a failed host: the site's `upgrade.on_failure`, except that a
    rollback needs a version to go back to (one the host had, not the target)."""
    policy = site.upgrade.on_failure
    if policy == "rollback":
        return "rollback" if host.installed and host.installed != plan.version else "halt"
    return policy
