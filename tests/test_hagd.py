"""The HA group daemon (seed 003): the state machine with a simulated clock and network (pure),
the protocol's trust rules (pure), and real daemons talking UDP on loopback addresses."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.bench.hagd import KEY as CLUSTER_KEY
from infra.bench.hagd import Provider, make_cluster
from infra.hagd.config import HagdConfigError, load_config
from infra.hagd.group import Group
from infra.hagd.pool import PoolMember, plan_pool
from infra.hagd.protocol import (
    Freshness,
    GroupState,
    Message,
    Rejected,
    decode,
    encode,
    group_digest,
)
from tests.conftest import DAEMON_OCTET, ROOT, stays, wait_for

KEY = b"a-shared-key-of-the-group-0123456789"
DT1, DT2 = 1.0, 0.5


# --- the state machine, on a simulated network ---------------------------------------------------


@dataclass
class Net:
    """Providers of groups exchanging heartbeats every `step` seconds of simulated time; a
    provider that is `down` says and hears nothing; `starts_fail` providers' start scripts fail."""

    step: float = 0.1
    now: float = 1000.0
    nodes: dict[str, dict[str, Group]] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)
    starts_fail: set[str] = field(default_factory=set)
    #: providers whose status script fails (checked on masters at every step)
    status_fails: set[str] = field(default_factory=set)
    running: dict[str, set[str]] = field(default_factory=dict)  # group -> providers serving

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
            for node, groups in self.nodes.items():
                if node in self.down:
                    continue
                for other, theirs in self.nodes.items():
                    if other == node or other in self.down:
                        continue
                    for g in theirs.values():
                        mine = groups.get(g.name)
                        if mine is not None:
                            mine.heard(other, g.state(), self.now)

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


def pool_plan(serving: bool = True, current: tuple[str, ...] = (), **members: PoolMember) -> Any:
    return plan_pool(
        me="p20",
        rank=20,
        serving=serving,
        address="10.0.0.2",
        members=members,
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
    fresh = Freshness(max_age_s=5)
    fresh.check(decode(data, KEY), time.time())
    with pytest.raises(Rejected, match="replayed"):
        fresh.check(decode(data, KEY), time.time())
    with pytest.raises(Rejected, match="stale"):
        fresh.check(decode(encode(msg(seq=2, t=time.time() - 60), KEY), KEY), time.time())
    # a restarted sender (another boot) starts its sequence again
    fresh.check(Message("p30", "b2", 1, time.time(), ()), time.time())


def test_config_errors_name_the_field_and_the_fix(tmp_path: Path) -> None:
    f = tmp_path / "hagd.yaml"
    f.write_text(
        yaml.safe_dump(
            {
                "group": {"g": 30},
                "script": "relative/script",
                "key": {"env": "HAGD_KEY"},
                "peers": ["127.0.0.2"],
            }
        )
    )
    with pytest.raises(HagdConfigError, match=r"script.*absolute"):
        load_config(f)
    good = {"group": {"g": 30}, "script": "/bin/true", "key": {"env": "HAGD_KEY"}}
    for bad, needle in (
        ({"peers": ["127.0.0.2"], "prot": 1}, "prot: Extra inputs"),
        ({"peers": ["127.0.0.2"], "dt1": 1, "interval": 0.5}, "fewer than 3 heartbeats"),
        ({}, "give the peers' addresses"),
        ({"peers": ["127.0.0.2"], "check": 0.1}, "check: 0.1 s is shorter than the heartbeat"),
        (
            {"peers": ["127.0.0.2"], "report": "hooks.env"},
            "report: hooks.env must be an absolute path",
        ),
        (
            {
                "peers": ["127.0.0.2"],
                "pool": {
                    "bdii": {
                        "dns": {
                            "server": "127.0.0.1",
                            "zone": "example.org",
                            "alias": "bdii.example.org",
                            "tsig_key_name": "k",
                            "tsig_key": {"env": "K"},
                        }
                    }
                },
            },
            "pool.bdii: not in `group`; give it a rank there",
        ),
    ):
        f.write_text(yaml.safe_dump({**good, **bad}))
        with pytest.raises(HagdConfigError, match=needle):
            load_config(f)


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
        extra_peers=(peer,),
        names=["p30", "p20", "p10"],
    )
    try:
        yield dict(zip(("p30", "p20", "p10"), ps, strict=True))
    finally:
        for p in ps:
            p.stop()


def test_real_daemons_elect_take_over_and_hand_back(providers: dict[str, Provider]) -> None:
    p30, p20, p10 = providers["p30"], providers["p20"], providers["p10"]
    for p in providers.values():
        p.start()
    wait_for(lambda: p30.mode() == "master" or None, 15, "p30 to become master")
    assert p30.serves() and not p20.serves() and not p10.serves()
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
    peer.sendto(data, (p20.address, 3333))  # a replay of p30's heartbeat
    peer.close()
    time.sleep(0.5)
    counts = p20.status()["counts"]
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
    from infra.hagd.daemon import ask

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
