"""The procedures' verdicts from the snapshot after a run (pure): recorded lab states in, each
agent's outcome, the status and what a human must still do out."""

from __future__ import annotations

import pytest

from flows.plans.clean_move import MoveRequest, plan_clean_move
from flows.plans.emergency_move import EmergencyRequest, plan_emergency_move
from flows.plans.fence_host import FenceRequest, plan_fence_host
from flows.plans.model import AgentOutcome
from flows.plans.snapshot import AgentProcess, HostWithPartners
from flows.plans.verify import verify_clean_move, verify_emergency_move, verify_fence_host
from tests.plan_cases import site, snapshot

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
