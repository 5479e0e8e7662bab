"""The geo failover and failback planners, their compensation and the replication arithmetic
(pure: no server).

The states are the geo lab's (`config/sites/geo-lab.yaml`): the tool `portal` active at site-a
with epoch 1 and replicated to site-b, one DNS master per site; each case changes what the
failure it stands for changes (a site's database silent, a master silent, a key refused...).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from config.loader import load_site
from config.site import Site
from flows.plans.geo_failback import plan_geo_failback
from flows.plans.geo_failover import (
    GeoPlan,
    GeoRequest,
    compensate_geo,
    plan_geo_failover,
)
from flows.plans.geo_state import (
    DatabaseState,
    GeoSnapshot,
    NameAnswer,
    ReplicaLag,
    parse_gtid,
    replica_lags,
    transactions_behind,
)
from flows.plans.geo_status import geo_status
from flows.plans.model import Failure, Ledger

ROOT = Path(__file__).resolve().parent
SITE: Site = load_site(ROOT.parent / "config/sites/geo-lab.yaml")
A, B = "127.0.40.11", "127.0.40.21"
MA, MB = "127.0.0.1:55453", "127.0.0.1:55454"
T0 = dt.datetime(2026, 12, 7, 9, 0, tzinfo=dt.UTC)
NAMES = ["portal.ops.handover.test", "cic.ops.handover.test"]


def names(a: tuple[str, int] | str | None = (A, 1), b: tuple[str, int] | str | None = (A, 1)):
    """Each master's answer for both names: (address, epoch), or an error string."""
    out = []
    for site, master, got in (("site-a", MA, a), ("site-b", MB, b)):
        for n in NAMES:
            if isinstance(got, tuple):
                out.append(
                    NameAnswer(site=site, master=master, name=n, addresses=[got[0]], epoch=got[1])
                )
            else:
                out.append(NameAnswer(site=site, master=master, name=n, error=got or "timeout"))
    return out


def primary(site: str = "site-a", addr: str = A, epoch: int = 1, pos: str = "0-1-40"):
    return DatabaseState(
        site=site,
        server=f"{addr}:3306",
        reachable=True,
        read_only=False,
        binlog_pos=pos,
        current_pos=pos,
        fence_epoch=epoch,
        fence_site=site,
        taken_at=T0,
    )


def replica(site: str = "site-b", addr: str = B, of: str = A, pos: str = "0-1-38", **kw):
    fields = dict(
        site=site,
        server=f"{addr}:3306",
        reachable=True,
        read_only=True,
        binlog_pos=pos,
        current_pos=pos,
        slave_pos=pos,
        is_replica=True,
        io_running="Yes",
        sql_running="Yes",
        seconds_behind=0,
        source=f"{of}:3306",
        fence_epoch=1,
        fence_site="site-a",
        taken_at=T0,
    )
    fields.update(kw)
    return DatabaseState(**fields)


def silent(site: str, addr: str) -> DatabaseState:
    return DatabaseState(
        site=site, server=f"{addr}:3306", reachable=False, error="timed out", taken_at=T0
    )


def snap(**kw) -> GeoSnapshot:
    fields = dict(
        tool="portal",
        names=names(),
        databases={"site-a": primary(), "site-b": replica()},
        key_ok={MA: True, MB: True},
    )
    fields.update(kw)
    return GeoSnapshot(**fields)


def req(**kw) -> GeoRequest:
    return GeoRequest(tool="portal", to=kw.pop("to", "site-b"), **kw)


def ids(plan: GeoPlan) -> list[str]:
    return [s.id for s in plan.steps]


def test_a_planned_failover_fences_waits_promotes_moves_the_names_and_makes_the_source_follow():
    plan = plan_geo_failover(SITE, snap(), req())
    assert plan.ok, plan.problems
    assert plan.mode == "planned"
    assert (plan.from_site, plan.to_site, plan.old_epoch, plan.new_epoch) == (
        "site-a",
        "site-b",
        1,
        2,
    )
    assert ids(plan) == [
        "source-read-only",
        "catch-up",
        "promote",
        "repoint-names",
        "await-resolvers",
        "source-replicates",
    ]
    move = plan.steps[3]
    assert move.address == B and move.epoch == 2
    assert move.expect == {MA: [A], MB: [A]} and move.expect_epoch == {MA: 1, MB: 1}
    assert plan.steps[1].timeout_s == SITE.geo.catch_up_s
    assert plan.steps[4].timeout_s == SITE.geo.ttl_s + SITE.geo.verify_margin_s
    assert not plan.needs_loss_approval and plan.human == []


def test_a_failover_of_an_unreachable_site_within_the_lag_bound_goes_ahead_without_asking():
    lag = ReplicaLag(
        tool="portal",
        site="site-b",
        primary="site-a",
        taken_at=T0,
        seconds=2,
        transactions=3,
        replicating=True,
    )
    s = snap(
        names=names(a="timed out"),
        databases={"site-a": silent("site-a", A), "site-b": replica(io_running="Connecting")},
        key_ok={MA: None, MB: True},
        last_lag={"site-b": lag},
    )
    plan = plan_geo_failover(SITE, s, req())
    assert plan.ok, plan.problems
    assert plan.mode == "failover"
    # the unreachable source is not waited for: no read-only, no catch-up, nobody follows
    assert ids(plan) == ["promote", "repoint-names", "await-resolvers"]
    assert not plan.needs_loss_approval
    assert "2 s and 3 transaction(s) behind site-a" in plan.loss_window
    assert plan.masters_silent == [f"site-a {MA}"]
    assert any("geo-failback" in h and "--to site-a" in h for h in plan.human)


@pytest.mark.parametrize(
    ("lag", "why"),
    [
        (None, "unknown: no replication reading"),
        (
            ReplicaLag(
                tool="portal",
                site="site-b",
                primary="site-a",
                taken_at=T0,
                seconds=60,
                transactions=900,
                replicating=True,
            ),
            "beyond the 5 s accepted without asking",
        ),
        (
            ReplicaLag(
                tool="portal",
                site="site-b",
                primary="site-a",
                taken_at=T0,
                seconds=1,
                transactions=1,
                replicating=False,
                last_error="Duplicate entry",
            ),
            "replication was broken: Duplicate entry",
        ),
    ],
)
def test_a_failover_beyond_the_bound_or_without_a_reading_needs_a_human_for_its_loss(lag, why):
    s = snap(
        names=names(a="timed out"),
        databases={"site-a": silent("site-a", A), "site-b": replica()},
        last_lag={"site-b": lag} if lag else {},
    )
    plan = plan_geo_failover(SITE, s, req())
    assert plan.ok and plan.needs_loss_approval
    assert why in plan.loss_window


def test_the_request_s_max_lag_overrides_the_tool_s():
    lag = ReplicaLag(
        tool="portal", site="site-b", primary="site-a", taken_at=T0, seconds=60, replicating=True
    )
    s = snap(
        databases={"site-a": silent("site-a", A), "site-b": replica()}, last_lag={"site-b": lag}
    )
    assert not plan_geo_failover(SITE, s, req(max_lag_s=120)).needs_loss_approval
    assert plan_geo_failover(SITE, s, req(max_lag_s=30)).needs_loss_approval


def test_a_silent_master_does_not_stop_the_failover_but_no_master_at_all_does():
    plan = plan_geo_failover(SITE, snap(names=names(b="refused connection")), req())
    assert plan.ok and plan.masters_silent == [f"site-b {MB}"]
    assert any("drift watch repairs them" in n for n in plan.notes)
    none = plan_geo_failover(SITE, snap(names=names(a="down", b="down")), req())
    assert not none.ok and "no DNS master answered" in none.problems[0]


def test_a_master_that_refuses_the_key_refuses_the_plan():
    s = snap(key_ok={MA: True, MB: False}, key_errors={MB: "BADKEY"})
    plan = plan_geo_failover(SITE, s, req())
    assert (
        not plan.ok and "refused the TSIG key" in plan.problems[0] and "BADKEY" in plan.problems[0]
    )


def test_a_target_that_does_not_replicate_from_the_active_site_is_refused_with_the_failback():
    s = snap(databases={"site-a": primary(), "site-b": replica(is_replica=False, source="")})
    plan = plan_geo_failover(SITE, s, req())
    assert not plan.ok
    assert "no replica" in plan.problems[0] and "geo-failback" in plan.problems[0]


def test_a_planned_failover_needs_the_source_and_a_running_replica():
    down = snap(databases={"site-a": silent("site-a", A), "site-b": replica()})
    plan = plan_geo_failover(SITE, down, req(mode="planned"))
    assert not plan.ok and "(--failover)" in plan.problems[0]
    broken = snap(
        databases={"site-a": primary(), "site-b": replica(sql_running="No", last_error="1062")}
    )
    plan = plan_geo_failover(SITE, broken, req())
    assert not plan.ok and "last error: 1062" in plan.problems[0]
    late = snap(databases={"site-a": primary(), "site-b": replica(seconds_behind=600)})
    plan = plan_geo_failover(SITE, late, req())
    assert not plan.ok and "600 s behind" in plan.problems[0]


def test_a_tool_already_active_at_the_target_is_left_alone():
    s = snap(
        names=names(a=(B, 2), b=(B, 2)),
        databases={
            "site-a": replica(site="site-a", addr=A, of=B),
            "site-b": primary(site="site-b", addr=B, epoch=2),
        },
    )
    plan = plan_geo_failover(SITE, s, req())
    assert plan.ok and plan.already_done and plan.steps == []


def test_a_failover_whose_names_did_not_move_resumes_after_the_promotion():
    # an earlier run promoted site-b with epoch 2; the names still say site-a, epoch 1
    s = snap(
        databases={
            "site-a": primary(epoch=1).model_copy(update={"read_only": True}),
            "site-b": primary(site="site-b", addr=B, epoch=2),
        }
    )
    plan = plan_geo_failover(SITE, s, req())
    assert plan.ok, plan.problems
    assert plan.resumed and plan.new_epoch == 2
    assert ids(plan) == ["repoint-names", "await-resolvers"]


def test_the_target_site_needs_its_minimum_of_masters():
    raw = SITE.model_dump(mode="json", exclude_defaults=True)
    raw["geo"]["sites"][1]["min_masters"] = 1
    site = Site.model_validate(raw)
    plan = plan_geo_failover(site, snap(names=names(b="down")), req())
    assert not plan.ok and "site-b's 1 DNS master(s) answer" in plan.problems[0]


def test_an_unknown_tool_or_site_or_a_site_without_geo_is_refused():
    assert (
        "no tool 'wiki'"
        in plan_geo_failover(SITE, snap(), req().model_copy(update={"tool": "wiki"})).problems[0]
    )
    assert "not a site of portal" in plan_geo_failover(SITE, snap(), req(to="site-c")).problems[0]
    plain = load_site(ROOT.parent / "config/sites/lab.yaml")
    assert "declares no tools" in plan_geo_failover(plain, snap(), req()).problems[0]


def test_names_pointing_at_no_site_of_the_tool_are_refused():
    plan = plan_geo_failover(SITE, snap(names=names(a=("10.0.0.9", 3), b=("10.0.0.9", 3))), req())
    assert not plan.ok and "10.0.0.9" in plan.problems[0] and "which is no site" in plan.problems[0]


def test_a_failback_rebuilds_a_site_that_is_no_healthy_replica_then_moves_the_tool_back():
    after_failover = snap(
        names=names(a=(A, 1), b=(B, 2)),  # site-a's master came back stale
        databases={
            # site-a came back as it was lost: writable, its own primary, epoch 1
            "site-a": primary(epoch=1, pos="0-1-44"),
            "site-b": primary(site="site-b", addr=B, epoch=2, pos="0-2-10"),
        },
    )
    plan = plan_geo_failback(SITE, after_failover, req(to="site-a", keep_dir="/var/keep"))
    assert plan.ok, plan.problems
    assert plan.procedure == "geo-failback"
    assert (plan.from_site, plan.to_site, plan.new_epoch) == ("site-b", "site-a", 3)
    assert ids(plan) == [
        "rebuild",
        "source-read-only",
        "catch-up",
        "promote",
        "repoint-names",
        "await-resolvers",
        "source-replicates",
    ]
    assert plan.steps[0].keep_dir == "/var/keep" and plan.steps[0].source == "site-b"
    assert "it is no replica" in plan.notes[1]


def test_a_failback_to_a_healthy_replica_is_a_planned_failover():
    healthy = snap(
        names=names(a=(B, 2), b=(B, 2)),
        databases={
            "site-a": replica(site="site-a", addr=A, of=B),
            "site-b": primary(site="site-b", addr=B, epoch=2),
        },
    )
    plan = plan_geo_failback(SITE, healthy, req(to="site-a"))
    assert plan.ok and ids(plan)[0] == "source-read-only" and "rebuild" not in ids(plan)


def _failure(plan: GeoPlan, chain_of: str) -> Failure:
    chain = next(c for p in plan.phases for c in p.chains for s in c.steps if s.id == chain_of)
    return Failure.of(chain, RuntimeError("boom"))


def test_compensation_undoes_the_read_only_before_the_promotion_and_nothing_after():
    plan = plan_geo_failover(SITE, snap(), req())
    before = Ledger.after(plan, "catch-up")
    before.done.remove("catch-up")
    [remedy] = compensate_geo(SITE, plan, before, _failure(plan, "catch-up"))
    assert remedy.result == "rolled-back"
    assert [(s.verb, s.host, s.on) for s in remedy.steps] == [("db-read-only", "site-a", False)]
    promoted = Ledger.after(plan, "promote")
    [stranded] = compensate_geo(SITE, plan, promoted, _failure(plan, "repoint-names"))
    assert stranded.result == "stranded" and "resumes after the promotion" in stranded.human[0]
    moved = Ledger.after(plan, "repoint-names")
    assert compensate_geo(SITE, plan, moved, _failure(plan, "source-replicates")) == []


def test_gtid_positions_and_transactions_behind():
    assert parse_gtid("0-1-42,1-2-7") == {0: (1, 42), 1: (2, 7)}
    assert parse_gtid("") == {}
    with pytest.raises(ValueError, match="not a GTID"):
        parse_gtid("0-1")
    assert transactions_behind("0-1-42", "0-1-40") == 2
    assert transactions_behind("0-1-42,1-3-5", "0-1-42") == 5
    assert transactions_behind("0-1-40", "0-1-42") == 0


def test_replica_lags_reads_seconds_and_transactions_against_the_one_primary():
    lags = replica_lags(
        "portal", {"site-a": primary(pos="0-1-50"), "site-b": replica(seconds_behind=3)}
    )
    assert [(x.site, x.primary, x.seconds, x.transactions, x.replicating) for x in lags] == [
        ("site-b", "site-a", 3.0, 12, True)
    ]
    lost = replica_lags("portal", {"site-a": silent("site-a", A), "site-b": replica()})
    assert [(x.primary, x.transactions) for x in lost] == [(None, None), (None, None)]


# --- states recorded on the geo lab -------------------------------------------------------------
# `plan_cases/geo/NAME.json` were read with `tasks.geo.snapshot_geo` from a geo lab started from
# config/sites/geo-lab.yaml: healthy (portal active at site-a, epoch 1, site-b replicating);
# master-b-down (site-b's master stopped); site-a-killed (site-a's tool, database and master
# killed at once); site-a-back-stale (after site-b was promoted with epoch 2 and the names moved
# on site-b's master alone, site-a restored from its data, writable, its master still at epoch 1).


def recorded(name: str) -> GeoSnapshot:
    return GeoSnapshot.model_validate_json(
        (ROOT / "plan_cases" / "geo" / f"{name}.json").read_text()
    )


def test_recorded_healthy_plans_a_planned_failover_with_the_read_positions():
    snap = recorded("healthy")
    assert snap.databases["site-b"].replicating and snap.databases["site-a"].primary
    plan = plan_geo_failover(SITE, snap, req())
    assert plan.ok and plan.mode == "planned" and (plan.old_epoch, plan.new_epoch) == (1, 2)
    assert ids(plan)[:3] == ["source-read-only", "catch-up", "promote"]
    [lag] = replica_lags("portal", snap.databases)
    assert (lag.primary, lag.transactions, lag.replicating) == ("site-a", 0, True)


def test_recorded_master_down_is_left_behind_not_a_refusal():
    plan = plan_geo_failover(SITE, recorded("master-b-down"), req())
    assert plan.ok and plan.masters_silent == [f"site-b {MB}"]


def test_recorded_killed_site_is_a_failover_that_asks_without_a_reading_and_not_with_one():
    snap = recorded("site-a-killed")
    assert not snap.databases["site-a"].reachable
    assert snap.databases["site-b"].is_replica and not snap.databases["site-b"].replicating
    plan = plan_geo_failover(SITE, snap, req())
    assert plan.ok and plan.mode == "failover" and plan.needs_loss_approval
    assert ids(plan) == ["promote", "repoint-names", "await-resolvers"]
    reading = ReplicaLag(
        tool="portal",
        site="site-b",
        primary="site-a",
        taken_at=T0,
        seconds=0,
        transactions=0,
        replicating=True,
    )
    snap.last_lag["site-b"] = reading
    assert not plan_geo_failover(SITE, snap, req()).needs_loss_approval


def test_recorded_stale_site_back_is_seen_and_failed_back_through_a_rebuild():
    snap = recorded("site-a-back-stale")
    st = geo_status(SITE.geo.tool("portal"), snap)
    assert (st.active_site, st.epoch) == ("site-b", 2)
    assert any("2 writable primaries" in p for p in st.problems), st.problems
    assert st.masters_behind and all(MA in m for m in st.masters_behind)
    # moving to site-a again is refused until it is rebuilt; the failback rebuilds it
    assert not plan_geo_failover(SITE, snap, req(to="site-a")).ok
    back = plan_geo_failback(SITE, snap, req(to="site-a"))
    assert back.ok and ids(back)[0] == "rebuild" and back.new_epoch == 3


# --- the automatic control switch's decision ----------------------------------------------------


def statuses(name: str) -> list:
    from flows.plans.geo_status import geo_status

    return [geo_status(SITE.geo.tool("portal"), recorded(name))]


NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)


def test_a_lost_site_confirmed_by_the_reading_fails_its_tools_over_to_their_replica():
    from flows.plans.geo_site_down import plan_site_down

    plan = plan_site_down(SITE, "site-a", statuses("site-a-killed"), {}, NOW)
    assert plan.confirmed and plan.problems == []
    [d] = plan.decisions
    assert (d.tool, d.action, d.to) == ("portal", "failover", "site-b")
    assert d.sentence.endswith("at once")  # the lab's countdown is 0


def test_a_site_any_part_of_which_answers_is_not_lost():
    from flows.plans.geo_site_down import plan_site_down

    for name, site in (("healthy", "site-a"), ("master-b-down", "site-b")):
        plan = plan_site_down(SITE, site, statuses(name), {}, NOW)
        assert not plan.confirmed and plan.failovers == [], name
        assert "not lost by handover's own reading" in plan.problems[0]
    # site-b's master is down, but its database and tool answer: named
    plan = plan_site_down(SITE, "site-b", statuses("master-b-down"), {}, NOW)
    assert "the database of portal at site-b" in plan.problems[0]


def test_a_second_automatic_failover_within_the_block_asks_a_human():
    from flows.plans.geo_site_down import plan_site_down

    recent = {"portal": NOW - dt.timedelta(seconds=60)}
    [d] = plan_site_down(SITE, "site-a", statuses("site-a-killed"), recent, NOW).decisions
    assert d.action == "ask" and d.to == "site-b" and "within geo.block_s = 600 s" in d.sentence
    old = {"portal": NOW - dt.timedelta(seconds=601)}
    [d] = plan_site_down(SITE, "site-a", statuses("site-a-killed"), old, NOW).decisions
    assert d.action == "failover"


def test_tools_active_elsewhere_are_left_and_a_tool_without_a_replica_is_refused():
    from flows.plans.geo_site_down import plan_site_down

    # portal is active at site-b in this state; site-a (stale, but here reported lost) holds none
    snap = recorded("site-a-back-stale")
    silent_a = snap.model_copy(deep=True)
    silent_a.databases["site-a"] = silent("site-a", A)
    silent_a.health["site-a"] = silent_a.health["site-a"].model_copy(
        update={"status": None, "error": "refused"}
    )
    silent_a.names = [
        n if n.site != "site-a" else n.model_copy(update={"error": "timeout"}) for n in snap.names
    ]
    from flows.plans.geo_status import geo_status

    tool = SITE.geo.tool("portal")
    [d] = plan_site_down(SITE, "site-a", [geo_status(tool, silent_a)], {}, NOW).decisions
    assert d.action == "nothing" and "active at site-b" in d.sentence
    # lost site-a while active there, and site-b no replica: nothing to fail over to
    killed = recorded("site-a-killed")
    killed.databases["site-b"] = killed.databases["site-b"].model_copy(update={"is_replica": False})
    [d] = plan_site_down(SITE, "site-a", [geo_status(tool, killed)], {}, NOW).decisions
    assert d.action == "refused" and "no other site's database answers as its replica" in d.sentence
    unknown = plan_site_down(SITE, "site-z", [geo_status(tool, killed)], {}, NOW)
    assert not unknown.confirmed and "no geo site 'site-z'" in unknown.problems[0]
