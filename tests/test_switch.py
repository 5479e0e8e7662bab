"""The master-to-slave switch on the lab: real BIND9 (primary and secondary), real front ends,
the lab's clients submitting through the alias, and the database's epoch fence."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows import progress
from flows.switch import SwitchResult, switch
from tasks.adapters.dns import move_alias, read_alias
from tests.conftest import ROOT, RunningLab, wait_for


@pytest.fixture(autouse=True)
def healed(lab: RunningLab, prefect_api: str) -> Iterator[None]:
    yield
    for h in lab.site.hosts:
        lab.lab.heal(h.name)


def run(lab: RunningLab, site_file: Path | None = None, **kw: Any) -> SwitchResult:
    state = switch(
        str(site_file or lab.site_file), pause_for_approval=False, return_state=True, **kw
    )
    result = state.result(raise_on_failure=False)
    assert isinstance(result, SwitchResult), result
    return result


def alias_everywhere(lab: RunningLab) -> list[tuple[list[str], int | None]]:
    dns = lab.site.dns
    assert dns is not None
    return [(a.addresses, a.epoch) for a in (read_alias(dns, s) for s in dns.servers())]


def settled_alias(lab: RunningLab) -> list[tuple[list[str], int | None]]:
    """The alias on every server, once they agree: a change made straight on the primary
    reaches the secondary by NOTIFY and a zone transfer, a moment later."""

    def agreed() -> list[tuple[list[str], int | None]] | None:
        seen = alias_everywhere(lab)
        return seen if all(s == seen[0] for s in seen) else None

    return wait_for(agreed, 15, "every DNS server to serve the same alias")  # type: ignore[return-value]


def address(lab: RunningLab, host: str) -> str:
    return lab.site.host(host).address


def master(lab: RunningLab) -> str:
    """The host the alias points at now."""
    [(addrs, _epoch), *_] = alias_everywhere(lab)
    return next(h.name for h in lab.site.hosts if h.address == addrs[0])


def post(lab: RunningLab, host: str, job_id: str) -> tuple[int, dict[str, Any]]:
    """Submit straight to one front end (not through the alias)."""
    assert lab.site.frontend is not None
    conn = http.client.HTTPConnection(address(lab, host), lab.site.frontend.port, timeout=5)
    conn.request("POST", "/jobs", body=json.dumps({"id": job_id}))
    r = conn.getresponse()
    body = json.loads(r.read() or b"{}")
    conn.close()
    return r.status, body


def clients_after(lab: RunningLab, accepted: int) -> Any:
    """The clients' score once they had more than `accepted` submissions accepted."""
    return wait_for(
        lambda: (c := lab.lab.score().clients) is not None and c.accepted > accepted and c,
        30,
        "the clients to have submissions accepted",
    )


def test_planned_switch_and_back_loses_nothing(lab: RunningLab, prefect_api: str) -> None:
    before = master(lab)
    other = next(h for h in lab.site.frontend.hosts if h != before)  # type: ignore[union-attr]
    lab.lab.score(reset=True)
    start = lab.lab.score().clients
    assert start is not None
    epoch = alias_everywhere(lab)[0][1]
    assert epoch is not None

    r = run(lab, reason="test: planned")
    assert r.status == "completed", r.summary
    assert (r.mode, r.master, r.to, r.new_epoch) == ("planned", before, other, epoch + 1)
    # the primary and the secondary both answer the new address and epoch
    assert alias_everywhere(lab) == [([address(lab, other)], epoch + 1)] * 2
    assert post(lab, other, "t-planned-new")[0] == 201
    # the old master redirects clients that still hold its address
    status, body = post(lab, before, "t-planned-old")
    assert (status, body["redirect"]) == (307, address(lab, other))
    assert "answers {'role': 'master'" in r.client_sees

    # and back, from the command line the README shows
    argv = [sys.executable, "-m", "infra.cli", "run", "switch", "--site", str(lab.site_file)]
    cli = subprocess.run(
        [*argv, "--yes", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "PREFECT_API_URL": prefect_api},
        check=False,
    )
    assert cli.returncode == 0, cli.stderr[-2000:]
    back = json.loads(cli.stdout)
    assert (back["status"], back["to"], back["new_epoch"]) == ("completed", before, epoch + 2)
    assert alias_everywhere(lab) == [([address(lab, before)], epoch + 2)] * 2

    c = clients_after(lab, start.accepted + 20)
    # nothing lost, nothing written by a fenced master; how long clients waited is a latency,
    # measured by `handover bench switch` (on a loaded machine the gap between the disable
    # and the enable can outlast the new master's hold of a redirected request)
    assert c.lost == 0 and c.writes_by_fenced_master == 0, c
    assert c.epoch == epoch + 2 and c.epoch_holder == before


def test_a_master_that_cannot_be_reached_is_fenced(lab: RunningLab) -> None:
    old = master(lab)
    lab.lab.fault(old, "frozen")
    r = run(lab, reason="test: master frozen")
    assert r.status == "completed", r.summary
    assert r.mode == "failover"
    new = r.to
    assert new is not None and new != old
    fenced = [s for s in r.steps if s.verb == "drop-sessions"]
    assert fenced and fenced[0].outcome == "done"
    # the old master wakes up still believing it is the master: the database refuses its writes
    lab.lab.heal(old)
    status, body = post(lab, old, "t-fenced-write")
    assert status == 503 and body["result"].startswith("fenced"), body
    score = lab.lab.score().clients
    assert score is not None and score.writes_by_fenced_master == 0
    assert score.epoch == r.new_epoch and score.epoch_holder == new
    # the switch back enables it with a newer epoch
    back = run(lab, to=old)
    assert back.status == "completed", back.summary
    assert post(lab, old, "t-after-fence")[0] == 201


def test_an_alias_changed_behind_the_switch_stops_it(lab: RunningLab) -> None:
    dns = lab.site.dns
    assert dns is not None
    before = master(lab)
    secret = dns.tsig_key.resolve().get_secret_value()
    elsewhere = address(lab, "fts105")

    def meddle(kind: str, data: dict[str, Any]) -> None:
        if kind == "step-start" and data["step"].verb == "move-alias":
            # somebody repoints the alias by hand while the switch runs
            now = read_alias(dns, dns.servers()[0])
            move_alias(dns, secret, [address(lab, before)], elsewhere, 99, expect_epoch=now.epoch)

    with progress.sink(meddle):
        r = run(lab)
    assert r.status == "failed"
    # nothing more was changed: the alias stays where the other hand put it
    assert settled_alias(lab) == [([elsewhere], 99)] * 2
    assert any("somebody else" in h and elsewhere in h for h in r.human_actions), r.human_actions
    # repair for the next tests: the alias back at the host that serves
    serving = r.to
    assert serving is not None
    move_alias(dns, secret, [elsewhere], address(lab, serving), r.new_epoch or 0, expect_epoch=99)
    settled_alias(lab)


def test_a_wrong_tsig_key_is_refused_and_nothing_changes(lab: RunningLab, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong-key"
    wrong.write_text("d3Jvbmcgd3Jvbmcgd3Jvbmcgd3Jvbmcgd3Jvbmcgd3I=\n")
    wrong.chmod(0o600)
    data = yaml.safe_load(lab.site_file.read_text())
    data["dns"]["tsig_key"] = {"file": str(wrong)}
    site_file = tmp_path / "wrong-key.yaml"
    site_file.write_text(yaml.safe_dump(data))
    before = settled_alias(lab)
    r = run(lab, site_file)
    assert r.status == "refused"
    dns = lab.site.dns
    assert dns is not None
    assert f"TSIG key '{dns.tsig_key_name}'" in r.summary
    assert f"{dns.server}:{dns.port}" in r.summary
    assert alias_everywhere(lab) == before


def test_a_dns_server_down_changes_nothing_and_says_so(lab: RunningLab) -> None:
    before = settled_alias(lab)
    primary = int(lab.lab.record()["dns_pids"]["primary"])
    os.kill(primary, signal.SIGSTOP)
    try:
        r = run(lab)
    finally:
        os.kill(primary, signal.SIGCONT)
    assert r.status == "refused"
    dns = lab.site.dns
    assert dns is not None
    assert f"DNS server {dns.server}:{dns.port} did not answer" in r.summary
    assert alias_everywhere(lab) == before


def test_the_drift_watch_reports_a_record_changed_by_hand(
    lab: RunningLab, prefect_api: str
) -> None:
    from prefect.client.orchestration import get_client

    from flows.drift_watch import DriftResult, drift_watch

    r = run(lab)  # a switch on record: what every server must answer
    assert r.status == "completed", r.summary
    ok = drift_watch(str(lab.site_file), return_state=True)
    assert ok.is_completed(), ok.message
    dns = lab.site.dns
    assert dns is not None and r.to is not None
    to_address = address(lab, r.to)
    secret = dns.tsig_key.resolve().get_secret_value()
    by_hand = address(lab, "fts106")
    move_alias(dns, secret, [to_address], by_hand, r.new_epoch or 0, expect_epoch=r.new_epoch)
    try:
        state = drift_watch(str(lab.site_file), return_state=True)
        result = state.result(raise_on_failure=False)
        assert isinstance(result, DriftResult) and state.is_failed()
        assert result.status == "drift" and len(result.drifted) == 2, result.drifted
        assert all(by_hand in d for d in result.drifted)
        assert result.expected_addresses == [to_address]

        def drift_events() -> bool:
            with get_client(sync_client=True) as client:
                resp = client.request(
                    "POST",
                    "/events/filter",
                    json={"filter": {"event": {"name": ["handover.dns.drift"]}}, "limit": 5},
                )
            return any(
                e["resource"]["handover.site"] == lab.site.site for e in resp.json()["events"]
            )

        # events reach the server through Prefect's events worker, a moment later
        wait_for(drift_events, 30, "the handover.dns.drift event")
    finally:
        move_alias(dns, secret, [by_hand], to_address, r.new_epoch or 0, expect_epoch=r.new_epoch)


def _countdown_site(lab: RunningLab, tmp_path: Path, seconds: int) -> Path:
    data = yaml.safe_load(lab.site_file.read_text())
    data["frontend"].update({"countdown_s": seconds, "block_s": 0})
    site_file = tmp_path / f"countdown-{seconds}.yaml"
    site_file.write_text(yaml.safe_dump(data))
    return site_file


def test_an_automatic_switch_counts_down_and_can_be_aborted(
    lab: RunningLab, prefect_api: str, tmp_path: Path
) -> None:
    import threading

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    from flows.approval import resume_with_input

    before = settled_alias(lab)
    master_now = master(lab)
    box: dict[str, Any] = {}
    site_file = _countdown_site(lab, tmp_path, 120)
    worker = threading.Thread(
        target=lambda: box.update(
            r=switch(str(site_file), failed_host=master_now, return_state=True).result(
                raise_on_failure=False
            )
        )
    )
    worker.start()

    def paused() -> list[Any]:
        with get_client(sync_client=True) as client:
            return client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
                )
            )

    [waiting] = wait_for(paused, 60, "the countdown to pause the run")
    # aborted from the Prefect UI (the form's input; the gateway resumes with the same)
    resume_with_input(waiting.id, run_input={"decision": "reject", "who": "an operator"})
    worker.join(120)
    r = box["r"]
    assert isinstance(r, SwitchResult) and r.status == "rejected", r
    assert alias_everywhere(lab) == before, "an aborted switch changed the alias"
    # nobody aborts a short countdown: the automatic switch goes ahead
    r = run(lab, _countdown_site(lab, tmp_path, 2), failed_host=master_now)
    assert r.status == "completed", r.summary
    assert r.approval is not None and r.approval.decision == "timeout-proceed", r.approval
    assert master(lab) != master_now


@pytest.mark.pacemaker
def test_pacemaker_maintenance_mode_keeps_an_automatic_switch_to_a_notice(
    lab: RunningLab, prefect_api: str, tmp_path: Path
) -> None:
    """A real one-node Pacemaker cluster in maintenance mode, asked through a lab host (its
    `crm_attribute` reaches the machine's cluster): an automatic switch only notifies; out of
    maintenance, the same switch goes ahead."""
    import shutil

    from infra.lab.pacemaker import OneNodeCluster
    from tests.conftest import require

    absent = [t for t in ("corosync", "pacemakerd", "crm_attribute") if shutil.which(t) is None]
    require(not absent, f"{', '.join(absent)} (Debian packages corosync pacemaker)")
    data = yaml.safe_load(lab.site_file.read_text())
    data["frontend"].update({"countdown_s": 0, "block_s": 0, "cluster_host": "fts105"})
    site_file = tmp_path / "clustered.yaml"
    site_file.write_text(yaml.safe_dump(data))
    work = Path(f"/var/tmp/handover-lab/pacemaker-switch-{os.getpid()}")
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)
    cluster = OneNodeCluster(
        str(ROOT / "infra" / "hooks" / "pacemaker_alert.py"), workdir=str(work / "cluster")
    )
    cluster.start(timeout_s=90)

    def maintenance(on: bool) -> None:
        attribute = ["crm_attribute", "--type", "crm_config", "--name", "maintenance-mode"]
        subprocess.run(
            [*attribute, "--update", "true" if on else "false"],
            check=True,
            timeout=30,
        )

    try:
        maintenance(True)
        before, failed = settled_alias(lab), master(lab)
        r = run(lab, site_file, failed_host=failed)
        assert r.status == "refused", r.summary
        assert "maintenance mode" in r.summary and "only notifies" in r.summary
        assert alias_everywhere(lab) == before
        maintenance(False)
        r = run(lab, site_file, failed_host=failed)
        assert r.status == "completed", r.summary
        assert master(lab) != failed
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


def test_a_dead_master_host_is_switched_away_from_while_its_agents_move(lab: RunningLab) -> None:
    """The master's host crashes: its host_down starts both the emergency move (its agents) and
    the switch (its front end); they hold different locks and run side by side."""
    from concurrent.futures import ThreadPoolExecutor

    from flows.emergency_move import EmergencyResult, emergency_move
    from tests.conftest import forget_automatic_switches, place_on_primaries

    place_on_primaries(lab)
    forget_automatic_switches(lab)
    dead = master(lab)
    lab.lab.fault(dead, "crash")
    with ThreadPoolExecutor(max_workers=2) as ex:
        moving = ex.submit(
            lambda: emergency_move(str(lab.site_file), dead, return_state=True).result(
                raise_on_failure=False
            )
        )
        switching = ex.submit(lambda: run(lab, failed_host=dead))
        moved, switched = moving.result(timeout=300), switching.result(timeout=300)
    assert isinstance(moved, EmergencyResult) and moved.status == "completed", moved
    assert switched.status == "completed" and switched.mode == "failover", switched.summary
    assert master(lab) != dead
    serving = lab.lab.serving(lab.site, lab.lab.record())
    assert all(serving.get(a.name) != {dead} for a in lab.site.agents_on(dead)), serving


def test_the_old_masters_agents_follow_a_planned_switch(
    lab: RunningLab, prefect_api: str, tmp_path: Path
) -> None:
    """`frontend.move_agents: follow`: after a planned switch, a clean move takes the old
    master's agents to the new master (a subflow with the agents' own lock)."""
    from tests.conftest import place_on_primaries

    place_on_primaries(lab)
    data = yaml.safe_load(lab.site_file.read_text())
    data["frontend"]["move_agents"] = "follow"
    site_file = tmp_path / "follow.yaml"
    site_file.write_text(yaml.safe_dump(data))
    old = master(lab)
    on_old = [a.name for a in lab.site.agents_configured_on(old)]
    serving = lab.lab.serving(lab.site, lab.lab.record())
    moving = [a for a in on_old if serving.get(a) == {old}]
    assert moving, serving
    r = run(lab, site_file)
    assert r.status == "completed", r.summary
    assert r.agents_move.startswith(f"clean move of {old}'s agents"), r.agents_move
    new = r.to
    serving = lab.lab.serving(lab.site, lab.lab.record())
    assert all(serving.get(a) == {new} for a in moving), serving
    assert lab.lab.score().agents_running_twice == []
