"""The switch planner and its compensation on states recorded on the lab (pure: no server).

The snapshots in `plan_cases/switch/` were read from a running lab (`config/sites/lab.yaml`)
with the alias at fts102: healthy, fts102's front end killed, fts102 frozen, and fts101's sshd
down. The DNS and key failures are those states with one answer changed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from config.loader import load_site
from config.site import Site
from flows.plans.model import Failure, Ledger
from flows.plans.switch import (
    SwitchPlan,
    SwitchRequest,
    SwitchSnapshot,
    compensate_switch,
    plan_switch,
)

ROOT = Path(__file__).resolve().parent
SITE: Site = load_site(ROOT.parent / "config/sites/lab.yaml")


def _fail(plan: SwitchPlan, error: BaseException) -> Failure:
    """The switch's one chain failed with `error`."""
    return Failure.of(plan.phases[-1].chains[0], error)


def recorded(name: str) -> SwitchSnapshot:
    return SwitchSnapshot.model_validate_json(
        (ROOT / "plan_cases" / "switch" / f"{name}.json").read_text()
    )


def verbs(plan: SwitchPlan) -> list[tuple[str, str]]:
    return [(s.verb, s.host) for s in plan.steps]


def test_planned_switch_disables_enables_then_moves_the_alias() -> None:
    plan = plan_switch(SITE, recorded("master-fts102-healthy"), SwitchRequest())
    assert plan.ok, plan.problems
    assert (plan.mode, plan.master, plan.to) == ("planned", "fts102", "fts101")
    assert (plan.old_epoch, plan.new_epoch) == (4, 5)
    assert verbs(plan) == [
        ("frontend-disable", "fts102"),
        ("frontend-enable", "fts101"),
        ("move-alias", "fts101"),
    ]
    disable, enable, alias = plan.steps
    # clients holding the old address are redirected for the TTL plus the margin
    assert disable.address == "127.0.1.1"
    assert disable.seconds == SITE.dns.ttl_s + SITE.frontend.redirect_margin_s  # type: ignore[union-attr]
    assert enable.epoch == alias.epoch == 5
    # compare-and-set: the update expects the master's address and the epoch beside it
    assert alias.expect == ["127.0.1.2"] and alias.address == "127.0.1.1"
    assert alias.expect_epoch == 4
    assert (
        "prereq yxrrset fts.lab.handover.test A 127.0.1.2; "
        'prereq yxrrset fts.lab.handover.test TXT "epoch=4"; '
    ) in alias.commands[0]
    assert enable.commands == ["fts-frontend enable 5"]


def test_a_dead_front_end_is_a_failover_that_fences_before_enabling() -> None:
    plan = plan_switch(SITE, recorded("master-fts102-frontend-down"), SwitchRequest())
    assert plan.ok, plan.problems
    assert plan.mode == "failover"
    # the host answers SSH: its role is set to slave so a restart comes back as a slave
    assert verbs(plan) == [
        ("frontend-disable", "fts102"),
        ("drop-sessions", "fts102"),
        ("fence-epoch", "fts101"),
        ("frontend-enable", "fts101"),
        ("move-alias", "fts101"),
    ]
    assert plan.steps[0].if_fails == "continue" and plan.steps[0].address == "-"
    assert plan.steps[1].agents == ["fts-frontend"]
    assert plan.steps[2].epoch == plan.new_epoch == 5


def test_an_unreachable_master_is_fenced_without_touching_it() -> None:
    plan = plan_switch(SITE, recorded("master-fts102-frozen"), SwitchRequest())
    assert plan.ok, plan.problems
    assert plan.mode == "failover"
    assert [v for v, h in verbs(plan) if h == "fts102"] == ["drop-sessions"]
    assert ("fence-epoch", "fts101") in verbs(plan)


def test_a_planned_switch_is_refused_when_the_master_does_not_answer() -> None:
    plan = plan_switch(SITE, recorded("master-fts102-frozen"), SwitchRequest(mode="planned"))
    assert not plan.ok and not plan.steps
    assert "--failover" in plan.problems[0]


def test_a_slave_that_cannot_be_reached_is_refused() -> None:
    snap = recorded("slave-fts101-sshd-down")
    plan = plan_switch(SITE, snap, SwitchRequest())
    assert not plan.ok and not plan.steps
    assert plan.problems[0].startswith("the slave fts101 is not ready: its host does not answer")


def test_a_dns_server_down_changes_nothing_and_says_which() -> None:
    snap = recorded("master-fts102-healthy")
    snap.aliases[1] = snap.aliases[1].model_copy(
        update={"addresses": [], "error": "did not answer within 3 s"}
    )
    plan = plan_switch(SITE, snap, SwitchRequest())
    assert not plan.ok and not plan.steps
    assert plan.problems == ["DNS server 127.0.0.1:55354 did not answer: did not answer within 3 s"]


def test_servers_that_disagree_are_refused() -> None:
    snap = recorded("master-fts102-healthy")
    snap.aliases[1] = snap.aliases[1].model_copy(update={"addresses": ["127.0.1.1"]})
    plan = plan_switch(SITE, snap, SwitchRequest())
    assert not plan.ok
    assert "disagree" in plan.problems[0] and "zone transfer" in plan.problems[0]


def test_a_refused_key_is_reported_as_is() -> None:
    snap = recorded("master-fts102-healthy").model_copy(
        update={"key_accepted": False, "key_error": "refused the TSIG key 'handover-lab'"}
    )
    plan = plan_switch(SITE, snap, SwitchRequest())
    assert not plan.ok and plan.problems == ["refused the TSIG key 'handover-lab'"]


def test_an_alias_at_a_host_that_is_no_front_end_is_refused() -> None:
    snap = recorded("master-fts102-healthy")
    snap.aliases = [a.model_copy(update={"addresses": ["127.0.1.5"]}) for a in snap.aliases]
    plan = plan_switch(SITE, snap, SwitchRequest())
    assert not plan.ok and "not at exactly one front-end host" in plan.problems[0]


def test_switching_to_the_serving_master_does_nothing() -> None:
    plan = plan_switch(SITE, recorded("master-fts102-healthy"), SwitchRequest(to="fts102"))
    assert plan.ok and plan.already_done and not plan.steps


def test_an_unknown_target_is_refused() -> None:
    plan = plan_switch(SITE, recorded("master-fts102-healthy"), SwitchRequest(to="fts105"))
    assert not plan.ok and "not a front-end host" in plan.problems[0]


def test_the_epoch_is_the_newest_seen_plus_one() -> None:
    snap = recorded("master-fts102-healthy")
    snap.frontends["fts101"] = snap.frontends["fts101"].model_copy(update={"db_epoch": 9})
    plan = plan_switch(SITE, snap, SwitchRequest())
    # the slave's own database read is newer than what the master reported: never reuse it
    assert plan.new_epoch == 10
    # the update's compare is what the alias holds, not what the database says
    assert plan.steps[-1].expect_epoch == 4


def test_an_alias_without_an_epoch_record_is_compared_as_such() -> None:
    snap = recorded("master-fts102-healthy")
    snap.aliases = [a.model_copy(update={"epoch": None}) for a in snap.aliases]
    plan = plan_switch(SITE, snap, SwitchRequest())
    assert plan.ok, plan.problems
    alias = plan.steps[-1]
    # the update requires that there is no epoch record yet: nothing else can be replayed over
    assert alias.expect_epoch is None and alias.epoch == 5
    assert "prereq nxrrset fts.lab.handover.test TXT" in alias.commands[0]


class AliasChanged(Exception):
    """Stands for `tasks.adapters.dns.AliasChanged` (compensation matches it by name)."""


def _planned() -> SwitchPlan:
    return plan_switch(SITE, recorded("master-fts102-healthy"), SwitchRequest())


@pytest.mark.parametrize("failed_at", ["enable-slave", "move-alias"])
def test_a_planned_switch_that_failed_before_the_alias_moved_rolls_back(failed_at: str) -> None:
    plan = _planned()
    before = {"enable-slave": "disable-master", "move-alias": "enable-slave"}[failed_at]
    ledger = Ledger.after(plan, before)
    [remedy] = compensate_switch(
        SITE, plan, ledger, _fail(plan, RuntimeError("DNS server did not answer"))
    )
    assert remedy.result == "rolled-back" and remedy.running_on == ["fts102"]
    re_enable, disable_slave = remedy.steps
    # the old master comes back with an epoch newer than the slave's: the slave is fenced
    assert (re_enable.verb, re_enable.host, re_enable.epoch) == ("frontend-enable", "fts102", 6)
    assert (disable_slave.verb, disable_slave.host) == ("frontend-disable", "fts101")


def test_an_alias_changed_behind_the_switch_changes_nothing_more() -> None:
    plan = _planned()
    ledger = Ledger.after(plan, "enable-slave")
    [remedy] = compensate_switch(SITE, plan, ledger, _fail(plan, AliasChanged("now at 127.0.1.5")))
    assert remedy.steps == [] and remedy.result == "stranded"
    assert "somebody else" in remedy.human[0] and "127.0.1.5" in remedy.human[0]


def test_nothing_to_undo_once_the_alias_moved_or_before_anything_was_done() -> None:
    plan = _planned()
    assert (
        compensate_switch(SITE, plan, Ledger.after(plan, "move-alias"), _fail(plan, RuntimeError()))
        == []
    )
    assert compensate_switch(SITE, plan, Ledger(), _fail(plan, RuntimeError())) == []


def test_a_failover_whose_alias_did_not_move_tells_a_human() -> None:
    plan = plan_switch(SITE, recorded("master-fts102-frontend-down"), SwitchRequest())
    [remedy] = compensate_switch(
        SITE, plan, Ledger.after(plan, "enable-slave"), _fail(plan, RuntimeError("x"))
    )
    assert remedy.steps == [] and remedy.running_on == ["fts101"]
    assert "--failover" in remedy.human[0]


CLUSTERED = SITE.model_copy(
    update={"frontend": SITE.frontend.model_copy(update={"cluster_host": "fts105"})}  # type: ignore[union-attr]
)


@pytest.mark.parametrize(
    ("maintenance", "automatic", "ok"),
    [
        (True, True, False),  # a sensor's switch only notifies while the cluster is maintained
        (None, True, False),  # nor when nobody can tell
        (False, True, True),
        (True, False, True),  # a human's switch goes ahead (the human decided)
    ],
)
def test_maintenance_mode_holds_back_an_automatic_switch(
    maintenance: bool | None, automatic: bool, ok: bool
) -> None:
    snap = recorded("master-fts102-healthy").model_copy(
        update={"maintenance": maintenance, "maintenance_error": "" if maintenance else "no CIB"}
    )
    plan = plan_switch(CLUSTERED, snap, SwitchRequest(automatic=automatic))
    assert plan.ok is ok, plan.problems
    if not ok:
        assert "only notifies" in plan.problems[0] and "fts105" in plan.problems[0]


def test_without_a_cluster_maintenance_is_not_asked() -> None:
    snap = recorded("master-fts102-healthy")
    assert plan_switch(SITE, snap, SwitchRequest(automatic=True)).ok
