"""The rolling upgrade's planner and the maintenance windows (pure): plans from states recorded on
the lab (`tests/plan_cases/rolling_upgrade/*.json`, `flows.rolling_upgrade.snapshot_upgrade`), and
windows from fixed instants."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from config.loader import load_site
from config.site import Blackout, MaintenanceWindow, ProcedurePolicy
from flows.plans.rolling_upgrade import (
    UpgradeRequest,
    UpgradeSnapshot,
    parse_installed,
    parse_status,
    plan_rolling_upgrade,
)
from flows.plans.windows import check_window, fits
from tests.conftest import ROOT

CASES = Path(__file__).parent / "plan_cases" / "rolling_upgrade"
SITE = load_site(ROOT / "config" / "sites" / "lab.yaml")


def snap(name: str) -> UpgradeSnapshot:
    return UpgradeSnapshot.model_validate_json((CASES / f"{name}.json").read_text())


def verbs(plan: object, host: str) -> list[str]:
    return [s.verb for s in plan.steps_on(host)]  # type: ignore[attr-defined]


def test_every_host_on_the_target_is_nothing_to_do() -> None:
    plan = plan_rolling_upgrade(SITE, snap("all-v2"), UpgradeRequest(version="2"))
    assert plan.ok and plan.todo == [] and plan.phases == []
    assert [h.host for h in plan.done] == ["fts101", "fts102", "fts105", "fts106"]
    assert "nothing to do" in plan.notes[0]


def test_a_rerun_continues_with_the_hosts_not_yet_done() -> None:
    plan = plan_rolling_upgrade(SITE, snap("mixed"), UpgradeRequest(version="2"))
    assert plan.ok, plan.problems
    assert [h.host for h in plan.todo] == ["fts102", "fts105"]
    assert [h.host for h in plan.done] == ["fts101", "fts106"]
    assert plan.batches == [["fts102"], ["fts105"]]
    assert verbs(plan, "fts102") == [
        "check-agents",
        "install-version",
        "configure-node",
        "restart-agents",
    ]
    install = plan.steps_on("fts102")[1]
    assert install.version == "2" and install.commands[-1] == "spma_wrapper.sh --version 2"
    restart = plan.steps_on("fts102")[-1]
    assert restart.version == "2" and restart.commands[0] == "service transfer-agents restart"
    assert sorted(restart.agents) == sorted(
        a.name for a in SITE.service.agents if a.primary == "fts102"
    )
    # the pre-check asks the hosts of the agents' backups to answer
    assert plan.steps_on("fts102")[0].backup_hosts == ["fts101"]


def test_a_host_installed_but_not_restarted_is_restarted_without_a_new_install() -> None:
    plan = plan_rolling_upgrade(SITE, snap("installed-not-restarted"), UpgradeRequest(version="2"))
    assert plan.ok, plan.problems
    assert [h.host for h in plan.todo] == ["fts102", "fts105"]
    assert verbs(plan, "fts102") == ["check-agents", "configure-node", "restart-agents"]
    assert "install-version" in verbs(plan, "fts105")
    assert "2 agent(s) to restart" in plan.todo[0].why


def test_an_unhealthy_site_is_refused_naming_the_agent() -> None:
    plan = plan_rolling_upgrade(SITE, snap("agent-down"), UpgradeRequest(version="3"))
    assert not plan.ok and plan.phases == []
    assert any("fts102" in p and "CERN-PIC" in p for p in plan.problems), plan.problems


def test_config_only_restarts_every_host_and_installs_nothing() -> None:
    plan = plan_rolling_upgrade(SITE, snap("all-v2"), UpgradeRequest(version=None))
    assert plan.ok and plan.config_only
    assert [h.host for h in plan.todo] == ["fts101", "fts102", "fts105", "fts106"]
    assert all(s.verb != "install-version" for s in plan.steps)
    assert plan.steps_on("fts101")[-1].version is None


def test_canary_first_then_batches() -> None:
    plan = plan_rolling_upgrade(
        SITE, snap("all-v2"), UpgradeRequest(version="3", batch=2, canary="fts105")
    )
    assert plan.ok, plan.problems
    assert plan.batches == [["fts105"], ["fts101", "fts102"], ["fts106"]]
    assert [len(p.chains) for p in plan.phases] == [1, 2, 1]
    assert "canary fts105 first" in plan.notes[0] and "2 at a time" in plan.notes[0]


@pytest.mark.parametrize(
    ("req", "needle"),
    [
        (UpgradeRequest(version="3", hosts=["fts101", "fts999"]), "fts999 is not a host"),
        (UpgradeRequest(version="3", hosts=["fts101"], canary="fts102"), "canary fts102"),
    ],
)
def test_bad_requests_are_refused_precisely(req: UpgradeRequest, needle: str) -> None:
    plan = plan_rolling_upgrade(SITE, snap("all-v2"), req)
    assert not plan.ok and any(needle in p for p in plan.problems), plan.problems


def test_hosts_in_the_given_order() -> None:
    plan = plan_rolling_upgrade(
        SITE, snap("all-v2"), UpgradeRequest(version="3", hosts=["fts105", "fts101"])
    )
    assert plan.batches == [["fts105"], ["fts101"]]


def test_status_and_installed_parsing_with_the_default_profile() -> None:
    c = SITE.commands
    assert (
        parse_installed("glite-data-transfer-agents-2.1.0-3.noarch\n", c.installed_version_regex)
        == "2.1.0"
    )
    assert (
        parse_installed(
            "package glite-data-transfer-agents is not installed\n", c.installed_version_regex
        )
        is None
    )
    text = (
        "glite-transfer-vo-agent-atlas (pid 42) is running (serving, version 2, config "
        "0f07d15cb93e, down 0.031 s at its last restart)\n"
        "glite-transfer-vo-agent-cms (pid 43) is running (waiting-lock)\n"
        "glite-transfer-channel-agent-urlcopy-CERN-PIC is stopped (disabled)\n"
    )
    atlas, cms = parse_status(text, c.agent_status_regex)
    assert (atlas.agent, atlas.state, atlas.version, atlas.config, atlas.down_s) == (
        "glite-transfer-vo-agent-atlas",
        "serving",
        "2",
        "0f07d15cb93e",
        0.031,
    )
    assert (cms.state, cms.version, cms.down_s) == ("waiting-lock", None, None)


# --- windows ------------------------------------------------------------------------------------

ZURICH_TUESDAYS = MaintenanceWindow(cron="0 8 * * 2", duration_s=7200, timezone="Europe/Zurich")
POLICY = ProcedurePolicy(
    windows=[ZURICH_TUESDAYS],
    blackouts=[
        Blackout(start=dt.date(2026, 12, 21), end=dt.date(2027, 1, 4), reason="year-end freeze")
    ],
)


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def test_no_window_means_any_time() -> None:
    check = check_window(ProcedurePolicy(), at("2026-12-02T03:00:00+00:00"))
    assert check.status == "always" and fits(check, at("2026-12-02T03:00:00+00:00"), 1e6)


def test_inside_a_window_until_it_closes_in_its_own_time_zone() -> None:
    # Tuesday 1 December 2026, 08:00-10:00 in Geneva is 07:00-09:00 UTC
    check = check_window(POLICY, at("2026-12-01T07:00:00+00:00"))
    assert check.status == "open" and check.closes_at == at("2026-12-01T09:00:00+00:00")
    assert fits(check, at("2026-12-01T08:50:00+00:00"), 600)
    assert not fits(check, at("2026-12-01T08:50:00+00:00"), 601)
    assert check_window(POLICY, at("2026-12-01T09:00:00+00:00")).status == "closed"


def test_outside_names_the_next_window() -> None:
    check = check_window(POLICY, at("2026-12-02T12:00:00+00:00"))
    assert check.status == "closed" and check.reason == "outside every maintenance window"
    assert check.next_opens_at == at("2026-12-08T07:00:00+00:00")
    assert "2026-12-08 07:00 UTC" in check.sentence()
    assert not fits(check, at("2026-12-02T12:00:00+00:00"), 1)


def test_a_blackout_closes_its_days_and_skips_its_windows() -> None:
    # 22 December is a Tuesday inside the freeze: no window then, the next is 5 January
    check = check_window(POLICY, at("2026-12-22T07:30:00+00:00"))
    assert check.status == "closed" and "year-end freeze" in check.reason
    assert check.next_opens_at == at("2027-01-05T07:00:00+00:00")


def test_summer_time_moves_the_window_in_utc() -> None:
    check = check_window(POLICY, at("2027-06-01T06:30:00+00:00"))  # 08:30 in Geneva (CEST)
    assert check.status == "open" and check.closes_at == at("2027-06-01T08:00:00+00:00")
