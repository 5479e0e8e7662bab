"""The procedures' verdicts from the snapshot after a run (pure): recorded lab states in, each
agent's outcome, the status and what a human must still do out."""

from __future__ import annotations

import pytest

from flows.plans.clean_move import MoveRequest, plan_clean_move
from flows.plans.emergency_move import EmergencyRequest, plan_emergency_move
from flows.plans.fence_host import FenceRequest, plan_fence_host
from flows.plans.model import AgentOutcome
from flows.plans.rolling_upgrade import UpgradeRequest, UpgradeSnapshot, plan_rolling_upgrade
from flows.plans.snapshot import AgentProcess, HostWithPartners
from flows.plans.switch import (
    AliasAnswer,
    FrontendState,
    SwitchRequest,
    SwitchSnapshot,
    plan_switch,
)
from flows.plans.verify import (
    SwitchAfter,
    verify_clean_move,
    verify_emergency_move,
    verify_fence_host,
    verify_rolling_upgrade,
    verify_switch,
)
from tests.conftest import ROOT
from tests.plan_cases import site, snapshot


def switch_case(name: str) -> SwitchSnapshot:
    path = ROOT / "tests" / "plan_cases" / "switch" / f"{name}.json"
    return SwitchSnapshot.model_validate_json(path.read_text())


pytestmark = pytest.mark.unit
P = "glite-transfer-channel-agent-urlcopy-"


def test_a_clean_move_whose_agent_runs_twice_after_it_failed_and_says_which_stop() -> None:
    s = site()
    plan = plan_clean_move(s, snapshot("steady"), MoveRequest(from_host="fts101", to_host="fts102"))
    moved = snapshot("moved")
    assert verify_clean_move(s, plan, {}, moved).status == "completed"
    # the same state, with CERN-RAL's agent still running on the source too
    twice = moved.model_copy(deep=True)
    twice.host("fts101").agents.append(AgentProcess(name=P + "CERN-RAL", pid=4242, user="x"))
    verdict = verify_clean_move(s, plan, {}, twice)
    assert verdict.status == "failed"
    [line] = verdict.human
    assert line.startswith(P + "CERN-RAL runs on fts101 and fts102: on fts101 run `")
    # an agent compensation rolled back and that runs on one host is a partial move
    back = AgentOutcome(
        agent=P + "CERN-RAL", channel="CERN-RAL", result="rolled-back", running_on=[]
    )
    assert verify_clean_move(s, plan, {back.agent: back}, moved).status == "partial"


def test_an_emergency_move_checks_every_agent_on_its_target_and_its_channel_active() -> None:
    s = site()
    before = snapshot("steady")
    plan = plan_emergency_move(
        s,
        HostWithPartners(host=before.host("fts101"), partners=before),
        EmergencyRequest(host="fts101", reach="open"),
    )
    assert plan.ok and plan.moves
    assert verify_emergency_move(plan, snapshot("moved")).status == "completed"
    # nothing moved: every agent stranded (the channels still Active on the source)
    verdict = verify_emergency_move(plan, before)
    assert verdict.status == "failed" and all(a.result == "stranded" for a in verdict.agents)
    assert verdict.human == [] and set(verdict.channels.values()) == {"Active"}
    # every agent moved, one channel left Inactive: named, with what to do
    inactive = snapshot("moved").model_copy(deep=True)
    channel = next(m.channel for m in plan.moves if m.channel)
    inactive.channels[channel] = "Inactive"
    verdict = verify_emergency_move(plan, inactive)
    assert verdict.status == "failed" and verdict.channels[channel] == "Inactive"
    [line] = verdict.human
    assert f"{channel} (Inactive)" in line and "--host fts101` again" in line


def test_fence_host_names_what_the_host_still_does_wrong() -> None:
    s = site()
    after = snapshot("fts101-rebooted")
    plan = plan_fence_host(
        s, HostWithPartners(host=after.host("fts101"), partners=after), FenceRequest(host="fts101")
    )
    assert plan.ok and plan.moved and plan.twice
    verdict = verify_fence_host(plan, after.host("fts101"))  # as before the fence: nothing done
    assert verdict.status == "failed"
    assert sum("is not listed" in h for h in verdict.human) == len(
        [a for a in plan.moved if a not in after.host("fts101").disabled]
    )
    assert sum("still runs on fts101" in h for h in verdict.human) == len(plan.twice)
    gone = after.host("fts101").model_copy(update={"reachable": False, "error": "refused"})
    assert verify_fence_host(plan, gone).human == [
        "fts101 stopped answering (refused); run fence-host again when it does"
    ]


def _upgrade_case(name: str) -> UpgradeSnapshot:
    path = ROOT / "tests" / "plan_cases" / "rolling_upgrade" / f"{name}.json"
    return UpgradeSnapshot.model_validate_json(path.read_text())


def _as_upgraded_to(snap: UpgradeSnapshot, version: str) -> UpgradeSnapshot:
    after = snap.model_copy(deep=True)
    for h in after.hosts.values():
        h.installed = version
        for a in h.agents:
            a.version = version
    return after


def test_a_rolling_upgrade_is_judged_by_what_the_hosts_have_afterwards() -> None:
    before = _upgrade_case("all-v2")
    plan = plan_rolling_upgrade(site(), before, UpgradeRequest(version="3"))
    hosts = [h.host for h in plan.todo]
    upgraded = dict.fromkeys(hosts, "upgraded")
    assert verify_rolling_upgrade(plan, upgraded, _as_upgraded_to(before, "3")).status == (
        "completed"
    )
    # reported upgraded, but the hosts still have version 2: each host and agent is named
    stale = verify_rolling_upgrade(plan, upgraded, before)
    assert stale.status == "failed"
    assert f"{hosts[0]} (upgraded) has version 2 installed, not 3" in stale.human
    assert any(line.endswith("runs version 2, not 3") for line in stale.human)
    # a rolled-back host must have its old version back; failed and left hosts are not judged
    results = {hosts[0]: "rolled-back", **dict.fromkeys(hosts[1:], "left")}
    assert verify_rolling_upgrade(plan, results, before).status == "completed"
    assert verify_rolling_upgrade(plan, {hosts[0]: "failed"}, before).status == "completed"
    # an agent that does not run after the upgrade
    down = _as_upgraded_to(before, "3")
    gone = down.hosts[hosts[0]].agents.pop()
    verdict = verify_rolling_upgrade(plan, upgraded, down)
    assert verdict.human == [f"{gone.agent} does not run on {hosts[0]} (upgraded)"]
    # a host whose agents were moved runs none of them, and each runs somewhere
    moved = verify_rolling_upgrade(plan, {hosts[0]: "moved"}, before)
    assert moved.status == "failed" and all("still runs on" in h for h in moved.human)


def _frontend(host: str, **state: object) -> FrontendState:
    return FrontendState(host=host, reachable=True, running=True, answers=True, **state)  # type: ignore[arg-type]


def test_a_switch_is_judged_by_the_dns_servers_and_both_front_ends() -> None:
    plan = plan_switch(site(), switch_case("master-fts102-healthy"), SwitchRequest())
    assert (plan.master, plan.to, plan.new_epoch) == ("fts102", "fts101", 5)
    good = [AliasAnswer(server=s, addresses=[str(plan.to_address)], epoch=5) for s in ("a", "b")]
    master = _frontend("fts101", role="master", epoch=5, db_epoch=5)
    slave = _frontend("fts102", role="slave", epoch=4, db_epoch=5)
    after = SwitchAfter(aliases=good, new_master=master, old_master=slave)
    assert verify_switch(plan, after).status == "completed"
    # one secondary still answers the old address; the old master still answers as the master
    lagging = [good[0], AliasAnswer(server="b", addresses=["127.0.1.2"], epoch=4)]
    still = _frontend("fts102", role="master", epoch=4, db_epoch=5)
    verdict = verify_switch(
        plan, after.model_copy(update={"aliases": lagging, "old_master": still})
    )
    assert verdict.status == "failed" and len(verdict.human) == 2
    assert verdict.human[0].startswith("servers not answering the new address and epoch: b ")
    assert verdict.human[1] == "fts102 still answers as the master (its writes are fenced)"
    # the new master with a stale epoch
    stale = _frontend("fts101", role="master", epoch=4, db_epoch=4)
    [line] = verify_switch(plan, after.model_copy(update={"new_master": stale})).human
    assert line.startswith("fts101 does not serve as the master with epoch 5")
