"""The HA group daemon on the lab (`handover lab up --hagd`): a daemon in each front-end host's
namespaces, the front end its service, real crashes, reboots and a partition of the heartbeats,
the database's epoch fence, and an election that runs the switch flow through the gateway.

The tests run in order on one lab: each leaves the group with a master the next starts from.
"""

from __future__ import annotations

import datetime as dt
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.hagd.daemon import ask
from infra.lab.lab import hagd_group
from infra.lab.settings import lab_settings
from tasks.http_probe import ask_ready
from tests.alert_stack import SECRET, Stack, alias_host, emergency_runs, run_logs, stack_fixture
from tests.alert_stack import switch_runs as runs_for
from tests.conftest import (
    DAEMON_OCTET,
    RunningLab,
    forget_automatic_switches,
    start_lab,
    stays,
    wait_for,
)

MASTER, BACKUP = "fts101", "fts102"
#: the VO agents' host and its backup: their daemons watch each other (`lab.hagd.watch`)
VO, VO_BACKUP = "fts105", "fts106"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningLab]:
    yield from start_lab(
        tmp_path_factory, alerts={"dedup_window_s": 30}, hagd=True, hagd_watch=[VO, VO_BACKUP]
    )


@pytest.fixture(scope="module")
def stack(
    lab: RunningLab, prefect_api: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    yield from stack_fixture(lab, prefect_api, tmp_path_factory)


def group(lab: RunningLab, host: str, name: str | None = None) -> dict[str, Any]:
    """A host's daemon's view of a group (default: the front end's; `handover hagd status`)."""
    answer = ask(str(lab.lab.paths.hagd_control(host)), "status")
    view: dict[str, Any] = answer["groups"][name or hagd_group(lab.site)]
    return view


def mode(lab: RunningLab, host: str) -> str | None:
    return lab.lab.hagd_mode(host)


def command(lab: RunningLab, host: str, cmd: str) -> str:
    answer = ask(str(lab.lab.paths.hagd_control(host)), cmd, hagd_group(lab.site))
    assert answer["ok"], answer
    return str(answer["said"])


def ready(lab: RunningLab, host: str) -> int | None:
    """What the host's front end answers on /ready (200: the master)."""
    assert lab.site.frontend is not None
    answer = ask_ready(lab.site.host(host).address, lab.site.frontend.port, 1.0)
    return answer[0] if answer else None


def serves(lab: RunningLab, host: str) -> bool:
    """The host's daemon is the group master and its front end answers as the master."""
    return mode(lab, host) == "master" and ready(lab, host) == 200


def back_normal(lab: RunningLab, host: str, timeout: float = 60) -> None:
    """Wait until a rebooted host's daemon is back in mode normal; the daemon's log on failure."""
    deadline = time.monotonic() + timeout
    while mode(lab, host) != "normal":
        if time.monotonic() > deadline:
            from infra.lab.observe import host_processes

            log = lab.lab.paths.host_dir(host) / "log" / "hagd.log"
            tail = log.read_text()[-3000:] if log.exists() else "(no log)"
            # whether the reboot got as far as starting the daemon, and what runs there
            titles = [p.title[:100] for p in host_processes(lab.lab).get(host, [])]
            booted = lab.lab.paths.host_dir(host) / "booted"
            pytest.fail(
                f"{host}'s daemon not normal after {timeout} s ({mode(lab, host)}); booted "
                f"{booted.exists()}; its processes: {titles}\n{tail}"
            )
        time.sleep(0.1)


def settle(lab: RunningLab) -> float:
    """Seconds to watch for something that must not happen (two dT1: a full election)."""
    return 2 * lab_settings(lab.site).hagd.dt1_s


def test_the_highest_rank_is_elected_and_only_its_front_end_serves(lab: RunningLab) -> None:
    wait_for(lambda: serves(lab, MASTER), 20, f"{MASTER} (rank 20) elected and serving")
    wait_for(lambda: mode(lab, BACKUP) == "normal", 10, f"{BACKUP} normal")
    view = group(lab, BACKUP)
    assert view["master"] == MASTER
    assert view["members"][MASTER]["rank"] == 20 and view["members"][MASTER]["alive"]
    assert view["rank"] == 10
    assert ready(lab, BACKUP) == 503


def test_a_crashed_master_is_replaced_by_the_next_rank(lab: RunningLab) -> None:
    t0 = time.monotonic()
    lab.lab.fault(MASTER, "crash")
    wait_for(lambda: serves(lab, BACKUP), 30, f"{BACKUP} elected and serving")
    took = time.monotonic() - t0
    events = group(lab, BACKUP)["events"]
    assert any(f"{MASTER} not heard" in e and "elected" in e for e in events), (took, events)
    assert events[-1] == "master: service started: group master", events
    score = lab.lab.score()
    assert score.clients is not None
    assert score.clients.writes_by_fenced_master == 0
    assert score.clients.epoch_holder == BACKUP


def test_the_rebooted_master_does_not_take_the_group_back(lab: RunningLab) -> None:
    lab.lab.heal(MASTER)
    back_normal(lab, MASTER)
    # its daemon stopped the master role the boot's front end came back with
    wait_for(lambda: ready(lab, MASTER) == 503, 10, f"{MASTER}'s front end a slave")
    stays(
        lambda: mode(lab, MASTER) == "normal" and serves(lab, BACKUP),
        settle(lab),
        f"{BACKUP} stays master ({MASTER} does not pre-empt)",
    )
    assert group(lab, MASTER)["master"] == BACKUP


def test_manual_give_up_and_takeover(lab: RunningLab) -> None:
    # the master gives up: the next rank takes over, the one that gave up yields
    said = command(lab, BACKUP, "giveup")
    assert "giving up" in said
    wait_for(lambda: serves(lab, MASTER), 20, f"{MASTER} master after {BACKUP} gave up")
    wait_for(lambda: ready(lab, BACKUP) == 503, 10, f"{BACKUP}'s front end a slave")
    assert group(lab, BACKUP)["mode"] == "normal"
    # a takeover on the backup: the master stops within dT2, then the backup starts
    said = command(lab, BACKUP, "takeover")
    assert "taking over" in said
    wait_for(lambda: serves(lab, BACKUP), 20, f"{BACKUP} master after its takeover")
    wait_for(lambda: mode(lab, MASTER) == "normal", 10, f"{MASTER} normal")
    assert ready(lab, MASTER) == 503
    assert f"giveup: {BACKUP} takes over: giving up" in group(lab, MASTER)["events"]
    # and back, so that the alias and the master agree again
    command(lab, MASTER, "takeover")
    wait_for(lambda: serves(lab, MASTER), 20, f"{MASTER} master after its takeover")
    wait_for(lambda: mode(lab, BACKUP) == "normal", 10, f"{BACKUP} normal")


def test_a_partition_makes_two_masters_and_only_the_newest_writes(lab: RunningLab) -> None:
    assert serves(lab, MASTER)
    lab.lab.score(reset=True)
    seen = group(lab, MASTER)["event_count"]
    lab.lab.fault(MASTER, "partition")
    try:
        # the backup hears nothing from the master: it is elected and claims a newer epoch ...
        wait_for(lambda: serves(lab, BACKUP), 30, f"{BACKUP} elected while {MASTER} is cut off")
        # ... while the master, which heard nothing either, was still the master: its own
        # status check finds it fenced by that epoch, and it gives up and stops standing
        wait_for(lambda: mode(lab, MASTER) == "failure", 20, f"{MASTER} fenced, in failure")
        view = group(lab, MASTER)
        events = view["events"][-(view["event_count"] - seen) :]
        assert any("status failed" in e and "fenced" in e for e in events), events
        assert not any("takes over" in e for e in events), events  # it never heard the backup
        score = lab.lab.score()
        assert score.clients is not None
        assert score.clients.writes_by_fenced_master == 0, score.clients
        assert score.clients.epoch_holder == BACKUP
    finally:
        lab.lab.heal(MASTER)
    wait_for(lambda: group(lab, BACKUP)["members"][MASTER]["alive"], 10, "heartbeats again")
    stays(lambda: serves(lab, BACKUP), settle(lab) / 2, f"{BACKUP} stays the only master")
    assert "standing again" in command(lab, MASTER, "reset")
    wait_for(lambda: mode(lab, MASTER) == "normal", 10, f"{MASTER} standing again")
    command(lab, MASTER, "takeover")
    wait_for(lambda: serves(lab, MASTER), 20, f"{MASTER} master again")


def test_an_election_runs_the_switch_flow_once(
    lab: RunningLab, stack: Stack, tmp_path: Path
) -> None:
    forget_automatic_switches(lab)
    secret = tmp_path / "webhook.secret"
    secret.write_bytes(SECRET)
    lab.lab.report_to(stack.url, secret)
    assert serves(lab, MASTER) and alias_host(lab) == MASTER
    since = dt.datetime.now(dt.UTC)
    lab.lab.fault(MASTER, "crash")
    # the backup's start script serves, then asks the gateway (`handover-switch`): the switch
    # flow fences the old master and moves the alias
    wait_for(lambda: serves(lab, BACKUP), 30, f"{BACKUP} elected and serving")
    wait_for(lambda: alias_host(lab) == BACKUP, 120, f"the alias moved to {BACKUP}")
    [run] = wait_for(lambda: runs_for(MASTER, since), 30, "the switch run")
    done = stack.wait_final(run.id, 120)
    assert done is not None and done.state is not None and done.state.is_completed(), done
    # the switch fenced from the backup, then enabled it: its daemon stays the master
    stays(
        lambda: len(runs_for(MASTER, since)) == 1 and serves(lab, BACKUP),
        5,
        f"one switch run, {BACKUP} still the group master",
    )
    # the daemon's own reports reached the gateway; the election's is noted in the run
    assert stack.gateway_lines('"source": "hagd"', '"kind": "frontend_down"', '"result": "new"')
    assert stack.gateway_lines('"kind": "ha_event"')
    wait_for(
        lambda: any("ha_event" in m and "is master" in m for m in run_logs(run.id)),
        30,
        "the election noted in the run's log",
    )
    lab.lab.heal(MASTER)
    back_normal(lab, MASTER)


def test_a_lost_agents_host_is_reported_by_its_watcher_and_its_agents_moved(
    lab: RunningLab, stack: Stack, tmp_path: Path
) -> None:
    """The VO agents' host and its backup watch each other (a watch group: no service, no
    script). The host crashes: the backup's daemon reports it lost as `host_down` within dT1,
    and the gateway starts its emergency move; nothing is typed. A lost front end stays an
    `ha_event` (the previous test), a lost watched host is a `host_down`."""
    secret = tmp_path / "webhook.secret"
    secret.write_bytes(SECRET)
    lab.lab.report_to(stack.url, secret)
    watch = ask(str(lab.lab.paths.hagd_control(VO_BACKUP)), "status")["groups"]
    [name] = watch  # the backup runs no front end: the watch group only
    wait_for(
        lambda: group(lab, VO_BACKUP, name)["members"].get(VO, {}).get("alive"), 20, f"{VO} heard"
    )
    vo = [a.name for a in lab.site.agents_on(VO)]
    lab.lab.fault(VO, "crash")
    [run] = wait_for(lambda: emergency_runs(VO), 60, f"an emergency move of {VO}")
    assert "hagd" in run.parameters["requested_by"], run.parameters
    done = stack.wait_final(run.id, 120)
    assert done.state is not None and done.state.is_completed(), done.state
    serving = lab.lab.serving(lab.site, lab.lab.record())
    assert vo and all(serving.get(a) == {VO_BACKUP} for a in vo), serving
    assert stack.gateway_lines('"source": "hagd"', '"kind": "host_down"', f'"host": "{VO}"')
    assert name.endswith("-agents") and group(lab, VO_BACKUP, name)["members"][VO]["alive"] is False
    lab.lab.heal(VO)


def test_a_stateless_pool_loses_and_regains_providers_in_dns(
    lab: RunningLab, tmp_path: Path
) -> None:
    """Three providers of a pool (daemons on the machine, on addresses of their own) keep a
    round-robin name in the lab's BIND9: the dead and the one that stops serving leave it, and
    come back."""
    from infra.bench.hagd import make_cluster
    from tasks.adapters.dns import read_alias

    assert lab.site.dns is not None
    pool_dns = lab.site.dns.model_copy(
        update={"alias": f"pool.{lab.site.dns.zone}", "secondaries": []}
    )
    ps = make_cluster(
        tmp_path,
        DAEMON_OCTET,
        [30, 20, 10],
        dt1=1.0,
        dt2=0.5,
        names=["p30", "p20", "p10"],
    )
    for p in ps:
        cfg = yaml.safe_load(p.config.read_text())
        cfg["check"] = 0.3
        cfg["pool"] = {"fts": {"dns": pool_dns.model_dump(mode="json")}}
        p.config.write_text(yaml.safe_dump(cfg))
        (p.dir / "service-fts").write_text("up\n")  # every provider serves
    p30, p20, p10 = ps

    def records() -> list[str]:
        return read_alias(pool_dns, pool_dns.servers()[0]).addresses

    def holds(*members: Any) -> bool:
        return records() == sorted(p.address for p in members)

    try:
        for p in ps:
            p.start()
        wait_for(lambda: holds(p30, p20, p10), 20, "the three providers in the name")
        assert p30.status()["groups"]["fts"]["keeper"] == "p30"
        # the keeper dies: the next rank keeps the name and removes it
        p30.stop(signal.SIGKILL)
        wait_for(lambda: holds(p20, p10), 20, "p30 removed by p20")
        assert p20.status()["groups"]["fts"]["keeper"] == "p20"
        # a provider whose status fails leaves the name; back when it serves again
        (p10.dir / "service-fts").unlink()
        wait_for(lambda: holds(p20), 20, "p10 removed: it no longer serves")
        (p10.dir / "service-fts").write_text("up\n")
        wait_for(lambda: holds(p20, p10), 20, "p10 back")
        p30.start()
        wait_for(lambda: holds(p30, p20, p10), 20, "p30 back")
        events = p20.status()["groups"]["fts"]["events"]
        assert any("removed" in e and p30.address in e for e in events), events
        # p10 comes back advertising an address the others' configuration does not allow for
        # it (its `peers` address): alive and serving, but not published, and the keeper says so
        elsewhere = f"127.{DAEMON_OCTET}.0.99"
        p10.stop()
        cfg = yaml.safe_load(p10.config.read_text())
        cfg["pool"]["fts"]["address"] = elsewhere
        p10.config.write_text(yaml.safe_dump(cfg))
        wait_for(lambda: holds(p30, p20), 20, "p10 removed: stopped")
        p10.start()

        def p10_serving() -> bool:
            m = p30.status()["groups"]["fts"]["members"].get("p10", {})
            return bool(m.get("alive") and m.get("serving"))

        wait_for(p10_serving, 20, "p10 alive and serving again")
        stays(lambda: holds(p30, p20), 3, f"{elsewhere} kept out of the name")
        view = p30.status()["groups"]["fts"]
        assert view["members"]["p10"]["address_allowed"] is False
        assert view["refused"] == [
            f"p10 advertises {elsewhere}, but the configuration allows {p10.address} for it: "
            "not published"
        ]
        assert any(
            f"p10 advertises {elsewhere}" in e for e in p20.status()["groups"]["fts"]["events"]
        )
    finally:
        for p in ps:
            p.stop()
