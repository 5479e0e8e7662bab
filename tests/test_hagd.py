"""The HA group daemon: the state machine with a simulated clock and network (pure),
the protocol's trust rules (pure), and real daemons talking UDP on loopback addresses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from config.site import Dns
from infra.bench.hagd import KEY as CLUSTER_KEY
from infra.bench.hagd import Provider, make_cluster
from infra.hagd.config import HagdConfig, HagdConfigError, load_config
from infra.hagd.daemon import Daemon, ask
from infra.hagd.group import Group
from infra.hagd.pool import PoolMember, plan_pool
from infra.hagd.pool_keeper import PoolKeeper
from infra.hagd.protocol import (
    Freshness,
    GroupState,
    Message,
    Rejected,
    check_source,
    decode,
    encode,
    group_digest,
)
from infra.hagd.report import Reporter
from tests.conftest import DAEMON_OCTET, IS_ROOT, ROOT, require, stays, wait_for

KEY = b"a-shared-key-of-the-group-0123456789"
DT1, DT2 = 1.0, 0.5
#: the members' clocks may differ by this much (`skew`)
SKEW = 0.1


# --- the state machine, on a simulated network ---------------------------------------------------


@dataclass
class Net:
    """Providers of groups exchanging heartbeats every `step` seconds of simulated time; a
    provider that is `down` says and hears nothing (what it sent before is still delivered);
    `starts_fail` providers' start scripts fail; a provider's heartbeats reach the others
    `delay` seconds after it sent them (0: in the step they are sent)."""

    step: float = 0.1
    now: float = 1000.0
    nodes: dict[str, dict[str, Group]] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)
    starts_fail: set[str] = field(default_factory=set)
    #: providers whose status script fails (checked on masters at every step)
    status_fails: set[str] = field(default_factory=set)
    running: dict[str, set[str]] = field(default_factory=dict)  # group -> providers serving
    delay: dict[str, float] = field(default_factory=dict)
    #: heartbeats in the network: (due, sender, receiver, state, sent)
    inflight: list[tuple[float, str, str, GroupState, float]] = field(default_factory=list)

    def add(
        self, node: str, ranks: dict[str, int], preempt: bool = False, check_failures: int = 1
    ) -> None:
        self.nodes[node] = {
            g: Group(
                name=g,
                digest=group_digest(KEY, g),
                me=node,
                rank=r,
                dt1=DT1,
                dt2=DT2,
                started_at=self.now,
                preempt=preempt,
                skew=SKEW,
                check_failures=check_failures,
            )
            for g, r in ranks.items()
        }

    def run(self, seconds: float) -> None:
        for _ in range(round(seconds / self.step)):
            self.now += self.step
            for node, groups in self.nodes.items():
                if node in self.down:
                    continue
                for g in groups.values():
                    if g.mode == "master" and node in self.status_fails:
                        g.checked(False, self.now, "exit 3: not serving")
                    for action in g.tick(self.now):
                        serving = self.running.setdefault(g.name, set())
                        if action == "start":
                            ok = node not in self.starts_fail
                            if ok:
                                serving.add(node)
                            g.started(ok, self.now, "" if ok else "exit 1")
                        else:
                            serving.discard(node)
                            g.stopped(True, self.now)
            for other, theirs in self.nodes.items():
                if other in self.down:
                    continue
                due = self.now + self.delay.get(other, 0.0)
                for node in self.nodes:
                    if node != other:
                        self.inflight += [
                            (due, other, node, g.state(), self.now) for g in theirs.values()
                        ]
            arrived = [m for m in self.inflight if m[0] <= self.now + 1e-9]
            self.inflight = [m for m in self.inflight if m[0] > self.now + 1e-9]
            for _, other, node, state, sent in arrived:
                mine = next(
                    (g for g in self.nodes[node].values() if g.digest == state.digest), None
                )
                if mine is not None and node not in self.down:
                    mine.heard(other, state, self.now, sent=sent)

    def mode(self, node: str, group: str = "g") -> str:
        return self.nodes[node][group].mode

    def masters(self, group: str = "g") -> list[str]:
        return sorted(
            n
            for n, gs in self.nodes.items()
            if n not in self.down and gs.get(group) and gs[group].mode == "master"
        )


@pytest.fixture
def net() -> Net:
    n = Net()
    for node, rank in (("p30", 30), ("p20", 20), ("p10", 10)):
        n.add(node, {"g": rank})
    return n


def test_the_highest_rank_is_elected_after_dt1_then_starts_after_dt2(net: Net) -> None:
    net.run(DT1 - 0.2)
    assert {net.mode(n) for n in net.nodes} == {"initial"}
    net.run(0.4)
    assert net.mode("p30") == "takeover" and net.mode("p20") == net.mode("p10") == "normal"
    assert net.running.get("g", set()) == set()
    net.run(DT2 + 0.2)
    assert net.masters() == ["p30"] and net.running["g"] == {"p30"}
    assert net.nodes["p10"]["g"].master == "p30"


def test_a_dead_master_is_replaced_by_the_next_rank_after_dt1_and_dt2(net: Net) -> None:
    net.run(3)
    net.down.add("p30")
    net.running["g"].discard("p30")  # crashed with its box
    net.run(DT1 - 0.2)
    assert net.mode("p20") == "normal", "taken over before dT1"
    net.run(0.4)
    assert net.mode("p20") == "takeover"
    net.run(DT2 + 0.2)
    assert net.masters() == ["p20"] and net.running["g"] == {"p20"}
    assert "not heard for" in net.nodes["p20"]["g"].events[-2]


def test_a_dead_masters_late_heartbeats_do_not_keep_it_alive(net: Net) -> None:
    """The master's heartbeats take 0.6 s through the network, then it dies: the ones still in
    flight arrive up to 0.6 s after its death, and must not hold off the failover. It is dead
    dT1 (+ the tolerated skew) after its last heartbeat was *sent*."""
    net.run(3)
    assert net.masters() == ["p30"]
    net.delay["p30"] = 0.6
    stays_master = net.now + 2
    while net.now < stays_master:  # a slow network alone is no failover
        net.run(net.step)
        assert net.mode("p20") == "normal" and net.masters() == ["p30"]
    net.down.add("p30")  # its last heartbeat went out in the step just run
    net.running["g"].discard("p30")
    last_sent = net.now
    net.run(DT1)
    assert net.inflight == [] and net.mode("p20") == "normal", "dead before dT1"
    net.run(SKEW + net.step)  # last_sent + dT1 + skew + one step; the last arrival + dT1 is later
    assert net.mode("p20") == "takeover", (
        f"p20 still {net.mode('p20')} {net.now - last_sent:.1f} s after p30's last heartbeat "
        "was sent: liveness counted from the late arrivals"
    )
    assert "p30 not heard for 1 s" in net.nodes["p20"]["g"].events[-1]
    net.run(DT2 + 0.2)
    assert net.masters() == ["p20"]


def test_a_message_stamped_in_the_future_never_extends_a_members_life() -> None:
    g = Group(name="g", digest="d", me="p20", rank=20, dt1=DT1, dt2=DT2, started_at=0, skew=SKEW)
    g.heard("p30", GroupState("d", 30, "master"), now=100.0, sent=160.0)  # its clock is ahead
    assert g.members["p30"].heard_at == 100.0 and "p30" in g.alive(100.0 + DT1)
    assert "p30" not in g.alive(100.0 + DT1 + 0.01)
    g.heard("p30", GroupState("d", 30, "master"), now=101.0, sent=100.5)  # 0.5 s on the way
    assert g.members["p30"].heard_at == 100.5 + SKEW


def test_the_higher_rank_back_does_not_preempt_unless_configured(net: Net) -> None:
    net.run(3)
    net.down.add("p30")
    net.running["g"].discard("p30")
    net.run(3)
    assert net.masters() == ["p20"]
    net.down.discard("p30")
    net.add("p30", {"g": 30})  # restarted daemon
    net.run(4)
    assert net.masters() == ["p20"] and net.mode("p30") == "normal"
    net.add("p30", {"g": 30}, preempt=True)
    net.run(4)
    assert net.masters() == ["p30"] and net.running["g"] == {"p30"}


def test_manual_takeover_makes_the_master_give_up_first(net: Net) -> None:
    net.run(3)
    assert "taking over" in net.nodes["p10"]["g"].takeover(net.now)
    net.run(0.3)
    assert net.mode("p30") in ("giveup", "normal") and "p30" not in net.running["g"]
    assert net.running["g"] == set(), "two services during a manual takeover"
    net.run(DT2)
    assert net.masters() == ["p10"] and net.running["g"] == {"p10"}


def test_manual_giveup_hands_over_to_the_next_rank(net: Net) -> None:
    net.run(3)
    assert "giving up" in net.nodes["p30"]["g"].giveup(net.now)
    net.run(DT1 + DT2 + 0.5)
    assert net.masters() == ["p20"] and net.running["g"] == {"p20"}
    assert net.mode("p30") == "normal" and not net.nodes["p30"]["g"].yields


def test_a_failing_start_script_lets_the_next_rank_take_over(net: Net) -> None:
    net.starts_fail.add("p30")
    net.run(DT1 + DT2 + 0.5)
    assert net.mode("p30") == "failure"
    net.run(DT2 + 0.5)
    assert net.masters() == ["p20"]
    assert "start failed" in net.nodes["p30"]["g"].events[-1]


def test_a_master_whose_status_fails_gives_up_and_stands_no_more_until_reset(net: Net) -> None:
    net.run(DT1 + DT2 + 0.5)
    assert net.masters() == ["p30"]
    net.status_fails.add("p30")
    net.run(0.2)
    assert net.mode("p30") == "failure" and "p30" not in net.running["g"]
    assert net.nodes["p30"]["g"].events[-2].startswith("giveup: service status failed")
    net.run(DT2 + 0.5)
    assert net.masters() == ["p20"]
    net.status_fails.clear()
    assert "standing again" in net.nodes["p30"]["g"].reset(net.now)
    net.run(2 * DT1)
    assert net.mode("p30") == "normal" and net.masters() == ["p20"]


def test_a_master_gives_up_only_after_check_failures_in_a_row() -> None:
    net = Net()
    net.add("p30", {"g": 30}, check_failures=3)
    net.add("p20", {"g": 20})
    net.run(DT1 + DT2 + 0.5)
    g = net.nodes["p30"]["g"]
    assert net.masters() == ["p30"]
    for _ in range(2):
        g.checked(False, net.now, "exit 3: does not answer")
    assert g.mode == "master" and g.events[-1].startswith("check: service status failed")
    assert "2 of 3 in a row" in g.events[-1]
    g.checked(True, net.now)  # one good answer starts the count again
    for _ in range(2):
        g.checked(False, net.now, "exit 3: does not answer")
    assert g.mode == "master"
    g.checked(False, net.now, "exit 3: does not answer")
    assert g.mode == "giveup" and g.events[-1].startswith("giveup: service status failed")
    net.run(DT2 + 0.5)
    assert net.mode("p30") == "failure" and net.masters() == ["p20"]


def test_two_masters_after_a_partition_the_lower_rank_gives_up(net: Net) -> None:
    net.run(3)
    # a partition: p30 alone on one side, the others elect p20
    net.down.add("p30")
    net.run(3)
    net.down.discard("p30")
    assert net.mode("p30") == "master" and net.mode("p20") == "master"
    net.run(1)
    assert net.masters() == ["p30"] and net.running["g"] == {"p30"}


def test_one_backup_for_three_groups_takes_over_only_the_failed_one() -> None:
    net = Net()
    for i, g in enumerate(("rb", "bdii", "fts"), start=1):
        net.add(f"primary{i}", {g: 100})
    net.add("backup", {"rb": 10, "bdii": 10, "fts": 10})
    net.run(3)
    assert net.masters("rb") == ["primary1"] and net.masters("fts") == ["primary3"]
    net.down.add("primary2")
    net.running["bdii"].discard("primary2")
    net.run(DT1 + DT2 + 0.5)
    assert net.masters("bdii") == ["backup"]
    assert net.mode("backup", "rb") == net.mode("backup", "fts") == "normal"


# --- stateless pools (pure) ---------------------------------------------------------------------


ALLOWED = {"p30": "10.0.0.3", "p10": "10.0.0.1"}


def pool_plan(
    serving: bool = True,
    current: tuple[str, ...] = (),
    allowed: dict[str, str] = ALLOWED,
    **members: PoolMember,
) -> Any:
    return plan_pool(
        me="p20",
        rank=20,
        serving=serving,
        address="10.0.0.2",
        members=members,
        allowed=allowed,
        now=100.0,
        dt1=DT1,
        current=list(current),
    )


def test_the_highest_live_rank_keeps_the_pool_and_only_serving_members_are_in_it() -> None:
    alive30 = PoolMember(30, True, "10.0.0.3", 99.5)
    dead30 = PoolMember(30, True, "10.0.0.3", 98.0)
    p10 = PoolMember(10, True, "10.0.0.1", 99.9)
    idle10 = PoolMember(10, False, "10.0.0.1", 99.9)
    other = pool_plan(p30=alive30, p10=p10)
    assert not other.keeper and other.keeper_id == "p30" and not other.changes
    plan = pool_plan(current=("10.0.0.1", "10.0.0.2", "10.0.0.3"), p30=dead30, p10=p10)
    assert plan.keeper and plan.remove == ["10.0.0.3"] and plan.add == []
    assert plan.want == ["10.0.0.1", "10.0.0.2"]
    plan = pool_plan(current=("10.0.0.2",), p10=idle10)
    assert not plan.changes and plan.want == ["10.0.0.2"]
    plan = pool_plan(current=("10.0.0.2",), p10=p10)
    assert plan.add == ["10.0.0.1"] and plan.remove == []
    plan = pool_plan(current=(), p10=p10)
    assert plan.add == ["10.0.0.1", "10.0.0.2"]


def test_a_pool_member_advertising_an_address_not_allowed_is_not_published() -> None:
    p10 = PoolMember(10, True, "10.0.0.1", 99.9)
    liar10 = PoolMember(10, True, "10.6.6.6", 99.9)
    plan = pool_plan(current=("10.0.0.2",), p10=liar10)
    assert plan.keeper and plan.want == ["10.0.0.2"] and not plan.changes
    assert plan.refused == {
        "p10": "p10 advertises 10.6.6.6, but the configuration allows 10.0.0.1 for it: "
        "not published"
    }
    # a member the configuration names no address for is not published either
    plan = pool_plan(current=("10.0.0.2",), p99=PoolMember(5, True, "10.0.0.9", 99.9))
    assert plan.want == ["10.0.0.2"] and "p99 advertises 10.0.0.9" in plan.refused["p99"]
    assert "allows no address" in plan.refused["p99"]
    # already in the name (by hand, or an earlier keeper): the keeper removes it
    plan = pool_plan(current=("10.0.0.2", "10.6.6.6"), p10=liar10)
    assert plan.remove == ["10.6.6.6"] and plan.add == []
    # a higher rank advertising another address does not keep the name: it could publish itself
    plan = pool_plan(current=("10.0.0.2",), p30=PoolMember(30, True, "10.6.6.6", 99.9), p10=p10)
    assert plan.keeper and plan.add == ["10.0.0.1"] and list(plan.refused) == ["p30"]


def pool_keeper(monkeypatch: pytest.MonkeyPatch, started_at: float = 0.0) -> PoolKeeper:
    monkeypatch.setenv("K", "a-tsig-key-of-the-test-zone-0123")
    return PoolKeeper(
        name="bdii",
        digest="d",
        me="p20",
        rank=20,
        address="10.0.0.2",
        allowed={"p10": "10.0.0.1"},
        dns=Dns.model_validate(POOL_DNS),
        dt1=DT1,
        skew=SKEW,
        check=1.0,
        reporter=Reporter(None, "p20"),
        started_at=started_at,
    )


def test_a_pool_member_just_started_listens_for_dt1_before_it_keeps_the_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before it has heard the pool, a provider would take itself for the keeper and write the
    name with its own address alone (the others' addresses removed)."""
    keeper = pool_keeper(monkeypatch, started_at=100.0)
    spawned: list[str] = []

    def spawn(coro: Any) -> None:
        spawned.append(coro.__name__)
        coro.close()

    async def script(action: str, group: str) -> tuple[bool, str]:
        return True, ""

    for now in (100.0, 100.5, 100.0 + DT1 - 0.01):
        keeper.step(now, script, spawn)
        keeper._checking = False  # the status check "ended"
    assert "_sync" not in spawned and "_status" in spawned, spawned
    keeper.step(100.0 + DT1, script, spawn)
    assert spawned[-1] == "_sync", spawned


def test_every_pool_member_says_when_a_member_advertises_an_address_not_allowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keeper = pool_keeper(monkeypatch)
    for t in (100.0, 100.5):  # said once, not at every heartbeat
        keeper.heard("p10", GroupState("d", 10, "master", address="10.6.6.6"), t, sent=t)
    assert keeper.events == [
        "p10 advertises 10.6.6.6, but the configuration allows 10.0.0.1 for it: not published "
        "(pool.bdii.addresses, or its address in peers)"
    ]
    assert keeper.status(100.5)["members"]["p10"]["address_allowed"] is False
    keeper.heard("p10", GroupState("d", 10, "master", address="10.0.0.1"), 101.0, sent=101.0)
    assert len(keeper.events) == 1
    assert keeper.status(101.0)["members"]["p10"]["address_allowed"] is True


def test_a_pool_name_never_loses_its_last_address() -> None:
    plan = pool_plan(
        serving=False, current=("10.0.0.2",), p10=PoolMember(10, False, "10.0.0.1", 99.9)
    )
    assert plan.keeper and not plan.changes and plan.want == []
    assert "kept as they are (10.0.0.2)" in plan.note


# --- the protocol --------------------------------------------------------------------------------


def msg(seq: int = 1, t: float | None = None) -> Message:
    return Message(
        sender="p30",
        boot="b1",
        seq=seq,
        time=time.time() if t is None else t,
        groups=(GroupState(digest=group_digest(KEY, "fts-frontend"), rank=30, mode="master"),),
    )


def test_a_message_round_trips_and_never_shows_the_group_name_or_the_key() -> None:
    data = encode(msg(), KEY)
    assert b"fts-frontend" not in data and KEY not in data
    assert decode(data, KEY) == msg(t=decode(data, KEY).time)
    pool = GroupState(digest=group_digest(KEY, "bdii"), rank=10, mode="master", address="10.0.0.1")
    back = decode(encode(Message("p10", "b", 1, time.time(), (pool,)), KEY), KEY)
    assert back.groups == (pool,)


def test_forged_altered_replayed_and_stale_messages_are_refused() -> None:
    data = encode(msg(), KEY)
    with pytest.raises(Rejected, match="bad signature"):
        decode(encode(msg(), b"another-key-another-key-123456"), KEY)
    with pytest.raises(Rejected, match="bad signature"):
        decode(data.replace(b'"master"', b'"normal"'), KEY)
    with pytest.raises(Rejected, match="unsigned"):
        decode(b'{"id":"p30"}', KEY)
    fresh = Freshness(max_age_s=DT1 + SKEW, max_ahead_s=SKEW)
    now = time.time()
    fresh.check(decode(data, KEY), now)
    with pytest.raises(Rejected, match="replayed"):
        fresh.check(decode(data, KEY), now)
    # older than dT1 + skew: it could not make its sender alive (a delayed or replayed backlog)
    with pytest.raises(Rejected, match=r"^stale message \(sent 1\.20 s ago"):
        fresh.check(msg(seq=2, t=now - DT1 - SKEW - 0.1), now)
    with pytest.raises(Rejected, match=r"^message from the future \(0\.20 s ahead"):
        fresh.check(msg(seq=3, t=now + SKEW + 0.1), now)
    fresh.check(msg(seq=4, t=now - DT1), now)  # within the bounds
    fresh.check(msg(seq=5, t=now + SKEW / 2), now)
    # a restarted sender (another boot) starts its sequence again
    fresh.check(Message("p30", "b2", 1, now, ()), now)


def test_with_peers_a_message_is_taken_only_from_its_members_address() -> None:
    peers = {"p30": "127.0.3.30", "p20": "127.0.3.20"}
    check_source(msg(), "127.0.3.30", peers)
    with pytest.raises(Rejected, match=r"^wrong source address \(p30 is at 127\.0\.3\.30"):
        check_source(msg(), "127.0.3.20", peers)  # p20's address, claiming to be p30
    with pytest.raises(Rejected, match=r"^unknown member \('p30' is not in `peers`"):
        check_source(msg(), "127.0.3.30", {"p20": "127.0.3.20"})
    check_source(msg(), "192.0.2.1", {})  # broadcast only: no list to check against


POOL_DNS = {
    "server": "127.0.0.1",
    "zone": "example.org",
    "alias": "bdii.example.org",
    "tsig_key_name": "k",
    "tsig_key": {"env": "K"},
}


def test_config_errors_name_the_field_and_the_fix(tmp_path: Path) -> None:
    f = tmp_path / "hagd.yaml"
    peers = {"p20": "127.0.0.2"}
    f.write_text(
        yaml.safe_dump(
            {
                "group": {"g": 30},
                "script": "relative/script",
                "key": {"env": "HAGD_KEY"},
                "peers": peers,
            }
        )
    )
    with pytest.raises(HagdConfigError, match=r"script.*absolute"):
        load_config(f)
    good = {"id": "p30", "group": {"g": 30}, "script": "/bin/true", "key": {"env": "HAGD_KEY"}}
    pool = {"address": "127.0.0.1", "dns": POOL_DNS}
    for bad, needle in (
        ({"peers": peers, "prot": 1}, "prot: Extra inputs"),
        ({"peers": peers, "dt1": 1, "interval": 0.5}, "fewer than 3 heartbeats"),
        ({}, "give the peers' addresses"),
        ({"peers": peers, "check": 0.1}, "check: 0.1 s is shorter than the heartbeat"),
        (
            {"peers": peers, "report": "hooks.env"},
            "report: hooks.env must be an absolute path",
        ),
        (
            {"peers": peers, "pool": {"bdii": {"dns": POOL_DNS}}},
            "pool.bdii: not in `group`; give it a rank there",
        ),
        # a list says nothing about which address is whose
        (
            {"peers": ["127.0.0.2"]},
            r"peers: Value error, give each member's id with its address, e.g. "
            r"\{fts102: 127.0.1.2\}",
        ),
        ({"peers": {"p20": "fts102.example.org"}}, "peers.p20: Value error, 'fts102.example.org' "),
        ({"peers": {"p30": "127.0.0.3"}}, "peers.p30: this provider's own id"),
        ({"peers": peers, "dt1": 1, "interval": 0.3, "skew": 0.6}, "skew: 0.6 s is more than half"),
        (
            {"iface": ["eth1"], "pool": {"g": pool}},
            r"pool.g.addresses: give the address each member may put in the name \(\{id: address",
        ),
        (
            {"peers": peers, "pool": {"g": {**pool, "addresses": {"p99": "127.0.0.9"}}}},
            r"pool.g.addresses.p99: not in `peers`, so its heartbeats are dropped; add it",
        ),
        (
            {"peers": peers, "pool": {"g": {**pool, "addresses": {"p30": "127.0.0.9"}}}},
            r"pool.g.addresses.p30: 127.0.0.9, but this provider serves at 127.0.0.1",
        ),
        # a watch group: no service, its losses reported (so a report file), named in `group`
        ({"peers": peers, "watch": ["w"], "report": "/x"}, "watch: w is not in `group`"),
        ({"peers": peers, "watch": ["g"]}, "report: a watch group reports its lost members"),
        (
            {"peers": peers, "group": {"g": 30, "w": 1}, "watch": ["w"], "script": None},
            "script: give the service script of group g",
        ),
        (
            {"peers": peers, "watch": ["g"], "report": "/x", "pool": {"g": pool}},
            "watch: g is a pool",
        ),
    ):
        f.write_text(yaml.safe_dump({**good, **bad}))
        with pytest.raises(HagdConfigError, match=needle):
            load_config(f)
    # the address each other member may put in a pool's name: its `peers` address, unless the
    # pool says otherwise (a service on another interface than the heartbeats)
    f.write_text(
        yaml.safe_dump(
            {
                **good,
                "peers": {"p20": "127.0.0.2", "p10": "127.0.0.1"},
                "pool": {"g": {**pool, "addresses": {"p10": "10.0.0.1"}}},
            }
        )
    )
    assert load_config(f).pool_allowed("g") == {"p20": "127.0.0.2", "p10": "10.0.0.1"}
    f.write_text(
        yaml.safe_dump(
            {**good, "iface": ["eth1"], "pool": {"g": {**pool, "addresses": {"p20": "10.0.0.2"}}}}
        )
    )
    assert load_config(f).pool_allowed("g") == {"p20": "10.0.0.2"}
    # a daemon of watch groups only needs no script
    watcher = {**good, "peers": peers, "watch": ["g"], "report": "/etc/handover/hooks.env"}
    del watcher["script"]
    f.write_text(yaml.safe_dump(watcher))
    assert load_config(f).script is None


def test_a_member_lost_from_a_watch_group_is_a_host_down_about_its_host() -> None:
    """What the gateway is told: a lost watched host starts its procedure; a lost member of a
    served group (the front end's) is an event noted on the incident."""
    import datetime as dt

    from infra.hagd.report import ha_alert

    common = {
        "site": "s",
        "service": "fts",
        "host": "fts105",
        "provider": "fts106",
        "group": "fts-agents",
        "detail": "fts105 (rank 20, normal) not heard for 2 s",
        "now": dt.datetime(2026, 12, 7, tzinfo=dt.UTC),
        "seq": 1,
    }
    lost = ha_alert(**common, what="lost", watch=True)  # type: ignore[arg-type]
    assert (lost["kind"], lost["host"], lost["severity"]) == ("host_down", "fts105", "critical")
    assert ha_alert(**common, what="lost")["kind"] == "ha_event"  # type: ignore[arg-type]
    assert ha_alert(**common, what="master", watch=True)["kind"] == "ha_event"  # type: ignore[arg-type]


# --- real daemons on loopback addresses ----------------------------------------------------------


@pytest.fixture
def providers(tmp_path: Path) -> Iterator[dict[str, Provider]]:
    base = DAEMON_OCTET
    peer = f"127.{base}.0.250"  # the test listens there, as one more peer
    ps = make_cluster(
        tmp_path,
        base,
        [30, 20, 10],
        dt1=DT1,
        dt2=DT2,
        extra_peers={"observer": peer},
        names=["p30", "p20", "p10"],
    )
    try:
        yield dict(zip(("p30", "p20", "p10"), ps, strict=True))
    finally:
        for p in ps:
            p.stop()


@pytest.mark.server
def test_real_daemons_elect_take_over_and_hand_back(providers: dict[str, Provider]) -> None:
    p30, p20, p10 = providers["p30"], providers["p20"], providers["p10"]
    for p in providers.values():
        p.start()
    wait_for(lambda: p30.mode() == "master" or None, 15, "p30 to become master")
    assert p30.serves() and not p20.serves() and not p10.serves()
    # p10 was started last: on a loaded machine it may still be starting (no control socket yet)
    wait_for(lambda: p10.mode() == "normal" or None, 15, "p10 up and normal")
    st = p10.status()["groups"]["fts"]
    assert st["master"] == "p30" and st["members"]["p30"]["alive"]
    # the group's name never travels: listen as a peer and look at the bytes
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind((p30.address.rsplit(".", 2)[0] + ".0.250", 3333))
    peer.settimeout(3)
    data = b""
    while decode(data, CLUSTER_KEY.encode()).sender != "p30" if data else True:
        data, _ = peer.recvfrom(8192)  # every provider sends here: keep one of p30's
    assert b"fts" not in data.replace(b'"id":"', b"").split(b'"g":', 1)[1].split(b"]]", 1)[0]
    # a forged heartbeat (another key) claiming mastership changes nothing, and is counted
    forged = encode(
        Message(
            "p99", "x", 1, time.time(), (GroupState(group_digest(b"k" * 32, "fts"), 99, "master"),)
        ),
        b"k" * 32,
    )
    peer.sendto(forged, (p20.address, 3333))
    peer.close()
    # a replay of p30's heartbeat, from p30's address (another port): only its sequence number
    # gives it away
    replay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    replay.bind((p30.address, 0))
    replay.sendto(data, (p20.address, 3333))
    replay.close()
    # counted once each (waited for: the datagrams are handled by p20's loop, not by now)
    counts = wait_for(
        lambda: (
            (c := p20.status()["counts"]).get("dropped: bad signature")
            and c.get("dropped: replayed message")
            and c
        ),
        10,
        "p20 to count the forged and the replayed heartbeat",
    )
    assert counts.get("dropped: bad signature") == 1, counts
    assert counts.get("dropped: replayed message") == 1, counts
    # the master's box dies (SIGKILL: its service stays up there, the group sees nothing)
    killed_at = time.monotonic()
    p30.stop(signal.SIGKILL)
    (p30.dir / "service-fts").unlink()
    wait_for(lambda: p20.serves() or None, DT1 + DT2 + 5, "p20 to take over")
    took = time.monotonic() - killed_at
    assert took >= DT1, f"taken over after {took:.2f} s, before dT1"
    # the start script has run; the daemon says master once it has seen it end
    wait_for(lambda: p20.mode() == "master" or None, 5, "p20 master after its start")
    assert not p10.serves()
    # p30 back: no pre-emption; a manual takeover hands the group back, p20 stopping first
    p30.start()
    wait_for(lambda: p30.mode() == "normal" or None, 30, "p30 back, normal")
    stays(lambda: p30.mode() == "normal" and p20.serves(), DT1 + 0.5, "p20 stays the master")

    assert ask(p30.control, "takeover", "fts")["ok"]
    wait_for(lambda: p30.serves() or None, DT2 + 5, "p30 to take the group back")
    assert not p20.serves()
    wait_for(lambda: p20.mode() == "normal" or None, 5, "p20 normal after its stop")
    # the command line says the same
    res = subprocess.run(
        [sys.executable, "-m", "infra.cli", "hagd", "status", "--control", p10.control, "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert json.loads(res.stdout)["groups"]["fts"]["master"] == "p30"
    # SIGTERM: the daemon stops the service it runs before it goes
    p30.stop()
    assert not p30.serves()
    wait_for(lambda: p20.serves() or None, DT1 + DT2 + 5, "p20 to take over again")


@pytest.mark.server
def test_a_start_script_that_hangs_past_its_timeout_is_killed_and_the_next_rank_serves(
    providers: dict[str, Provider],
) -> None:
    """The elected p30's start script hangs: the daemon kills it (its whole process group)
    once the config's `timeout` (5 s) has passed, says so, stops standing, and p20 takes
    over."""
    p30, p20 = providers["p30"], providers["p20"]
    hang = 611  # seconds: a sleep no other test runs, to find it in the process table
    (p30.dir / "hang-start").write_text(f"{hang}\n")

    def sleepers() -> list[int]:
        found = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                with contextlib.suppress(OSError):
                    if (proc / "cmdline").read_bytes() == f"sleep\0{hang}\0".encode():
                        found.append(int(proc.name))
        return found

    for p in providers.values():
        p.start()
    wait_for(lambda: sleepers() or None, 20, "p30's start script to hang")
    wait_for(lambda: p20.mode() == "master" or None, 30, "p20 to take over")
    assert p20.serves() and not p30.serves()
    assert p30.mode() == "failure"
    events = p30.status()["groups"]["fts"]["events"]
    assert any("start did not finish within 5 s" in e for e in events), events
    assert p30.status()["groups"]["fts"]["script_s"]["start"] >= 5.0
    assert sleepers() == [], "the hung script outlived its timeout"


@pytest.mark.server
def test_real_daemons_keep_two_groups_apart(providers: dict[str, Provider]) -> None:
    """Each daemon is a member of two groups with other ranks (fts: p30 > p20 > p10; srm:
    p20 > p10 > p30): each group elects its own master, and when p30's box dies only fts moves
    (to p20, which then masters both); srm's master never changes."""
    ranks = {"p30": 10, "p20": 30, "p10": 20}
    for name, p in providers.items():
        cfg = yaml.safe_load(p.config.read_text())
        cfg["group"]["srm"] = ranks[name]
        p.config.write_text(yaml.safe_dump(cfg))
    p30, p20, p10 = providers["p30"], providers["p20"], providers["p10"]
    for p in providers.values():
        p.start()
    wait_for(lambda: p30.mode("fts") == "master" or None, 15, "p30 to master fts")
    wait_for(lambda: p20.mode("srm") == "master" or None, 15, "p20 to master srm")
    assert p30.serves("fts") and p20.serves("srm")
    assert not p30.serves("srm") and not p20.serves("fts") and not p10.serves("fts")
    wait_for(lambda: p10.mode("srm") == "normal" or None, 15, "p10 up and normal in srm")
    srm_starts = [e for e in p20.service_log() if e[0] == "start"]
    p30.stop(signal.SIGKILL)  # its box dies
    wait_for(lambda: p20.mode("fts") == "master" or None, 30, "p20 to take fts over")
    assert p20.serves("fts") and p20.serves("srm") and not p10.serves("fts")
    # srm was not touched: still p20's, its service not restarted, p10 still normal
    assert p20.mode("srm") == "master" and p10.mode("srm") == "normal"
    assert p20.status()["groups"]["srm"]["master"] == "p20"
    starts = [e for e in p20.service_log() if e[0] == "start"]
    assert len(starts) == len(srm_starts) + 1, (srm_starts, starts)


@pytest.mark.lab
def test_heartbeats_broadcast_on_iface_are_heard_by_the_other_daemon(tmp_path: Path) -> None:
    """`iface` instead of `peers`: two daemons, each in a network namespace of its own joined
    by a veth pair (10.77.0.1 and .2 on a /24), broadcast their heartbeats on their interface
    and hear each other's: one master, the other normal and seeing it alive, for good. (A
    daemon's socket is bound to its unicast address, which never receives a broadcast: each
    also listens on its interfaces' broadcast addresses.)"""
    import shutil

    require(IS_ROOT and shutil.which("ip") is not None, "root and iproute2", need="lab")
    tag = f"hb{os.getpid() % 100000}"
    spaces = {"p20": (f"{tag}a", "10.77.0.1"), "p10": (f"{tag}b", "10.77.0.2")}

    def ip(*argv: str) -> None:
        subprocess.run(["ip", *argv], check=True, capture_output=True, timeout=10)

    ps = make_cluster(tmp_path, DAEMON_OCTET, [20, 10], dt1=DT1, dt2=DT2, names=["p20", "p10"])
    try:
        for ns, _ in spaces.values():
            ip("netns", "add", ns)
        ip("link", "add", f"{tag}a", "type", "veth", "peer", "name", f"{tag}b")
        for ns, address in spaces.values():
            ip("link", "set", ns, "netns", ns)
            ip("-n", ns, "addr", "add", f"{address}/24", "brd", "+", "dev", ns)
            ip("-n", ns, "link", "set", ns, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        for p in ps:
            ns, address = spaces[p.name]
            cfg = yaml.safe_load(p.config.read_text())
            cfg.update(address=address, peers={}, iface=[ns])
            p.config.write_text(yaml.safe_dump(cfg))
            with open(p.dir / "hagd.log", "ab") as log:
                argv = [sys.executable, "-m", "infra.cli", "hagd", "run", "--config"]
                p.proc = subprocess.Popen(
                    ["ip", "netns", "exec", ns, *argv, str(p.config)],
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        p20, p10 = ps
        wait_for(lambda: p20.mode() == "master" or None, 20, "p20 to become master")
        wait_for(lambda: p10.mode() == "normal" or None, 20, "p10 up and normal")

        def hears_p20() -> bool:
            st = p10.status()["groups"]["fts"]
            return st["master"] == "p20" and st["members"]["p20"]["alive"]

        wait_for(lambda: hears_p20() or None, 10, "p10 to hear p20's broadcast heartbeats")
        # without them p10 would elect itself once p20 is silent for dT1 + dT2
        stays(lambda: p10.mode() == "normal" and p20.serves(), DT1 + DT2 + 1, "one master")
        assert not p10.serves()
    finally:
        for p in ps:
            p.stop()
        for ns, _ in spaces.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


@pytest.mark.server
def test_a_signed_heartbeat_from_another_members_address_is_dropped(
    providers: dict[str, Provider],
) -> None:
    """With `peers`, a heartbeat is taken only from the address listed for the member it names:
    one correctly signed by the group's key, naming p10 and announcing a takeover, sent from the
    observer's address (a listed peer, another loopback address), is dropped and counted, and
    the master does not give up; the same from p10's address is taken (and it does)."""
    p30 = providers["p30"]
    for p in providers.values():
        p.start()
    wait_for(lambda: p30.mode() == "master" or None, 15, "p30 to become master")
    digest = group_digest(CLUSTER_KEY.encode(), "fts")

    def takeover_by_p10(seq: int, sender: str = "p10") -> bytes:
        state = GroupState(digest, 10, "takeover")
        return encode(
            Message(sender, "another-boot", seq, time.time(), (state,)), CLUSTER_KEY.encode()
        )

    def send_from(address: str, data: bytes) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((address, 0))
            s.sendto(data, (p30.address, 3333))

    observer = f"127.{DAEMON_OCTET}.0.250"
    send_from(observer, takeover_by_p10(1))
    send_from(observer, takeover_by_p10(1, sender="p99"))
    wait_for(
        lambda: p30.status()["counts"].get("dropped: wrong source address") == 1 or None,
        5,
        "p30 to count the heartbeat from the wrong address",
    )
    assert p30.status()["counts"].get("dropped: unknown member") == 1
    stays(lambda: p30.mode() == "master", DT2 + 0.5, "p30 stays master")
    assert not any("takes over" in e for e in p30.status()["groups"]["fts"]["events"])
    # the very same message from p10's address: taken, and the master gives up
    send_from(providers["p10"].address, takeover_by_p10(2))
    wait_for(
        lambda: (
            "giveup: p10 takes over: giving up" in p30.status()["groups"]["fts"]["events"] or None
        ),
        5,
        "p30 to hear p10's takeover from p10's address",
    )
    assert p30.status()["counts"].get("dropped: wrong source address") == 1


def daemon_config(tmp_path: Path, **extra: Any) -> HagdConfig:
    return HagdConfig.model_validate(
        {
            "id": "p30",
            "address": "127.0.0.1",
            "peers": {"p20": "127.0.0.2"},
            "group": {"fts": 30},
            "script": "/bin/true",
            "key": {"env": "HAGD_TEST_KEY"},
            "dt1": DT1,
            "interval": 0.25,
            "control": str(tmp_path / "run" / "hagd.sock"),
            **extra,
        }
    )


@pytest.mark.server
def test_the_daemon_counts_a_members_life_from_when_its_heartbeat_was_sent(
    tmp_path: Path,
) -> None:
    """A heartbeat 0.9 s on its way (dT1 1 s, skew 0.25 s) makes its sender alive as of
    0.65 s ago, not as of its arrival; one older than dT1 + skew is dropped as stale."""
    d = Daemon(daemon_config(tmp_path), KEY)
    line = GroupState(group_digest(KEY, "fts"), 20, "normal")
    sent = time.time() - 0.9
    d.datagram_received(encode(Message("p20", "b", 1, sent, (line,)), KEY), ("127.0.0.2", 3333))
    p20 = d.status()["groups"]["fts"]["members"]["p20"]
    assert p20["heard_s_ago"] >= 0.9 - d.cfg.skew and p20["alive"], p20
    late = time.time() - DT1 - d.cfg.skew - 0.2
    d.datagram_received(encode(Message("p20", "b", 2, late, (line,)), KEY), ("127.0.0.2", 3333))
    assert d.counts["dropped: stale message"] == 1 and d.counts["accepted"] == 1, d.counts
    assert d.status()["groups"]["fts"]["members"]["p20"]["heard_s_ago"] >= 0.9 - d.cfg.skew


@pytest.mark.server
def test_the_control_socket_is_never_open_to_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The socket is created mode 0600 (under a umask around its bind), never looser and then
    chmod'ed: with the process's umask at 0, its mode right after the bind is 0600."""
    seen: list[tuple[str, int, int]] = []
    bind = socket.socket.bind

    def watched(sock: socket.socket, address: Any) -> None:
        bind(sock, address)
        if sock.family == socket.AF_UNIX:
            umask = os.umask(0)
            os.umask(umask)
            seen.append((str(address), stat.S_IMODE(os.stat(address).st_mode), umask))

    monkeypatch.setattr(socket.socket, "bind", watched)
    d = Daemon(daemon_config(tmp_path), KEY)
    path = tmp_path / "run" / "hagd.sock"

    async def open_and_ask() -> dict[str, Any]:
        server = await d._control()
        try:
            return await asyncio.to_thread(ask, str(path), "status")
        finally:
            server.close()

    umask = os.umask(0)
    try:
        answer = asyncio.run(open_and_ask())
        assert os.umask(0) == 0, "the daemon left its umask set"
    finally:
        os.umask(umask)
    assert answer["ok"] and answer["id"] == "p30"
    assert [(a, oct(m)) for a, m, _ in seen] == [(str(path), "0o600")], seen
    assert all(u & 0o077 == 0o077 for _, _, u in seen), "bound under a umask open to others"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
