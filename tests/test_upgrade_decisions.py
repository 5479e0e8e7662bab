"""The rolling upgrade's decisions between batches and after a failed host (pure), on plans made
from a state recorded on the lab."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from config.loader import load_site
from flows.plans.rolling_upgrade import UpgradePlan, UpgradeRequest, UpgradeSnapshot
from flows.plans.rolling_upgrade import plan_rolling_upgrade as plan_upgrade
from flows.plans.upgrade_decisions import Settled, before_batch, on_host_failure
from flows.plans.windows import WindowCheck
from tests.conftest import ROOT

pytestmark = pytest.mark.unit
SITE = load_site(ROOT / "config" / "sites" / "lab.yaml")
CASES = Path(__file__).parent / "plan_cases" / "rolling_upgrade"
NOW = dt.datetime(2026, 12, 6, 2, 0, tzinfo=dt.UTC)
ALWAYS = WindowCheck(status="always")


def _plan(canary: str | None = None) -> UpgradePlan:
    snap = UpgradeSnapshot.model_validate_json((CASES / "all-v2.json").read_text())
    plan = plan_upgrade(SITE, snap, UpgradeRequest(version="3", canary=canary))
    assert plan.ok and len(plan.phases) >= 3
    return plan


def _gate(plan: UpgradePlan, batch: int, settled: list[Settled], **over: Any) -> Any:
    kw: dict[str, Any] = dict(
        max_failures=0,
        window=ALWAYS,
        now=NOW,
        forced=False,
        expected_host_s=60.0,
        approve_after_canary=False,
    )
    return before_batch(plan, batch, settled, **{**kw, **over})


def test_the_first_batch_goes_and_a_failure_past_the_tolerance_halts() -> None:
    plan = _plan()
    assert _gate(plan, 0, []).action == "go"
    failed = [Settled(host="fts101", upgraded=False, seconds=5.0)]
    halt = _gate(plan, 1, failed)
    assert halt.action == "halt" and "1 host failed (the site tolerates 0)" in halt.reason
    assert _gate(plan, 1, failed, max_failures=1).action == "go"


def test_the_rest_is_left_for_the_next_window_when_a_host_would_not_end_in_it() -> None:
    plan = _plan()
    closes = WindowCheck(status="open", closes_at=NOW + dt.timedelta(seconds=100))
    slow = [Settled(host="fts101", upgraded=True, seconds=90.0)]  # 90 s x 1.25 = 112 s > 100 s
    left = _gate(plan, 1, slow, window=closes)
    assert left.action == "halt" and "02:01:40 UTC" in left.reason and "about 112 s" in left.reason
    quick = [Settled(host="fts101", upgraded=True, seconds=70.0)]  # 87.5 s: it fits
    assert _gate(plan, 1, quick, window=closes).action == "go"
    # before any host is done, the site's expected time decides
    assert _gate(plan, 0, [], window=closes, expected_host_s=120.0).action == "halt"
    # a forced run does not look at the window; a closed one stops every batch
    assert _gate(plan, 1, slow, window=closes, forced=True).action == "go"
    assert _gate(plan, 0, [], window=WindowCheck(status="closed")).action == "halt"


def test_a_human_is_asked_after_the_canary_only_when_the_site_says_so() -> None:
    plan = _plan(canary="fts102")
    assert plan.batches[0] == ["fts102"]
    done = [Settled(host="fts102", upgraded=True, seconds=5.0)]
    ask = _gate(plan, 1, done, approve_after_canary=True)
    assert ask.action == "ask" and "the canary fts102 is done" in ask.reason
    assert _gate(plan, 1, done).action == "go"
    assert _gate(plan, 2, done, approve_after_canary=True).action == "go"
    # without a canary there is nothing to ask about
    assert _gate(_plan(), 1, done, approve_after_canary=True).action == "go"


def test_a_failed_host_gets_the_sites_policy_and_a_rollback_needs_a_version_to_go_back_to() -> None:
    plan = _plan()
    host = plan.todo[0]
    assert host.installed == "2"

    def policy(on_failure: str) -> Any:
        site = SITE.model_copy(
            update={"upgrade": SITE.upgrade.model_copy(update={"on_failure": on_failure})}
        )
        return site

    assert on_host_failure(policy("rollback"), plan, host) == "rollback"
    assert on_host_failure(policy("move"), plan, host) == "move"
    assert on_host_failure(policy("halt"), plan, host) == "halt"
    unknown = host.model_copy(update={"installed": None})
    assert on_host_failure(policy("rollback"), plan, unknown) == "halt"
    same = host.model_copy(update={"installed": "3"})
    assert on_host_failure(policy("rollback"), plan, same) == "halt"
