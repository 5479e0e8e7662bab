"""The site verbs on the lab: idempotent, verified, with outcome sentences; and as Prefect tasks."""

from __future__ import annotations

import time

import pytest
from prefect import flow

from flows.plans.verbs import SetActive, Start, Stop
from tasks import agents as verbs
from tasks.channels import set_channels
from tasks.outcome import StepFailed
from tasks.run_context import RunContext
from tasks.site_state import snapshot_host, snapshot_site_task
from tasks.verbs import run_step
from tests.conftest import RunningLab

PIC = "glite-transfer-channel-agent-urlcopy-CERN-PIC"
CNAF = "glite-transfer-channel-agent-urlcopy-CERN-CNAF"


def test_stop_is_idempotent_and_says_what_it_did(lab: RunningLab) -> None:
    first = verbs.stop_agents(lab.shell, "fts102", [PIC])
    assert first.sentence == "fts102: stopped 1 agent (CERN-PIC), 0 were already stopped"
    assert first.changed == [PIC] and first.commands
    second = verbs.stop_agents(lab.shell, "fts102", [PIC, CNAF])
    assert second.sentence == "fts102: stopped 1 agent (CERN-CNAF), 1 was already stopped"
    assert not snapshot_host(lab.shell, "fts102").agents
    # without the read before: the stop runs anyway (harmless), then the host is verified
    blind = verbs.stop_agents(lab.shell, "fts102", [PIC], read_first=False)
    assert blind.sentence == "fts102: stopped 1 agent (CERN-PIC)" and blind.commands
    again = verbs.start_agents(lab.shell, "fts102", [PIC, CNAF])
    assert (
        again.sentence == "fts102: started 2 agents (CERN-PIC, CERN-CNAF), 0 were already running"
    )
    same = verbs.start_agents(lab.shell, "fts102", [PIC, CNAF])
    assert same.sentence == "fts102: started 0 agents, 2 were already running"
    assert same.commands == []


def test_stop_all_uses_the_profile_stop_command(lab: RunningLab) -> None:
    res = verbs.stop_agents(lab.shell, "fts105")
    assert res.commands == ["service transfer-agents stop"]
    assert len(res.changed) == 2
    verbs.start_agents(lab.shell, "fts105", lab.agents_on("fts105"))


def test_disabled_entries(lab: RunningLab) -> None:
    res = verbs.write_disabled(lab.shell, "fts106", ["glite-transfer-vo-agent-atlas"])
    assert res.sentence.endswith(
        "0 agents in /etc/glite-data-transfer-agents.disabled, 1 was already listed"
    )
    res = verbs.clear_disabled(lab.shell, "fts106", ["glite-transfer-vo-agent-atlas"])
    assert res.changed == ["glite-transfer-vo-agent-atlas"]
    assert snapshot_host(lab.shell, "fts106").disabled == ["glite-transfer-vo-agent-cms"]
    verbs.clear_disabled(lab.shell, "fts106", ["glite-transfer-vo-agent-cms"])
    assert snapshot_host(lab.shell, "fts106").disabled == []
    # the file is gone, as the manual `rm -f` leaves it
    gone = lab.lab.exec("fts106", ["test", "-e", str(lab.site.commands.disabled_file)])
    assert gone.returncode == 1
    res = verbs.write_disabled(
        lab.shell, "fts106", ["glite-transfer-vo-agent-atlas", "glite-transfer-vo-agent-cms"]
    )
    assert res.sentence == (
        "fts106: disabled 2 agents (vo atlas, vo cms) in "
        "/etc/glite-data-transfer-agents.disabled, 0 were already listed"
    )


def test_start_refuses_a_disabled_agent(lab: RunningLab) -> None:
    with pytest.raises(StepFailed, match="clear the entries first"):
        verbs.start_agents(lab.shell, "fts106", ["glite-transfer-vo-agent-atlas"])
    assert not snapshot_host(lab.shell, "fts106").agents


def test_start_refuses_an_agent_not_configured_there(lab: RunningLab) -> None:
    with pytest.raises(StepFailed, match="not configured on fts106"):
        verbs.start_agents(lab.shell, "fts106", [PIC])


def test_channels(lab: RunningLab) -> None:
    res = set_channels(lab.shell, "fts102", ["CERN-PIC", "CERN-CNAF"], "Inactive")
    assert (
        res.sentence
        == "fts102: set 2 channels (CERN-PIC, CERN-CNAF) Inactive, 0 were already Inactive"
    )
    res = set_channels(lab.shell, "fts102", ["CERN-PIC", "CERN-CNAF"], "Active")
    assert (
        res.sentence == "fts102: set 2 channels (CERN-PIC, CERN-CNAF) Active, 0 were already Active"
    )
    # without the read before (a clean move's set-active: it ends the channel's downtime)
    res = set_channels(lab.shell, "fts102", ["CERN-PIC"], "Active", read_first=False)
    assert res.sentence == "fts102: set 1 channel (CERN-PIC) Active"
    with pytest.raises(StepFailed, match="unknown channel"):
        set_channels(lab.shell, "fts102", ["CERN-NOWHERE"], "Active")


def test_verbs_run_as_prefect_tasks(lab: RunningLab, prefect_api: str) -> None:
    @flow
    def little_procedure() -> list[str]:
        snap = snapshot_site_task(lab.shell, ["fts102"])
        running = sorted(a.name for a in snap.host("fts102").agents)
        ctx = RunContext(lab.shell)
        steps = [
            Stop(id="stop", host="fts102", agents=running),
            Start(id="start", host="fts102", agents=running),
            SetActive(id="set-active", host="fts102", channels=["CERN-PIC"]),
        ]
        return [run_step(ctx, s).sentence for s in steps]

    sentences = little_procedure()
    assert sentences == [
        "fts102: stopped 2 agents (CERN-CNAF, CERN-PIC), 0 were already stopped",
        "fts102: started 2 agents (CERN-CNAF, CERN-PIC), 0 were already running",
        # a plan's set-active writes without a read first (it ends the downtime)
        "fts102: set 1 channel (CERN-PIC) Active",
    ]


def test_a_standby_waits_for_the_lock_and_takes_it_when_the_primary_lets_go(
    lab: RunningLab,
) -> None:
    """CERN-PIC serves on fts102; its standby launched on fts101 waits for the lock (a stale one
    is launched again), and serves once fts102's agent is stopped; never two serving."""
    import time

    from tasks.standby import await_serving, start_standby
    from tests.conftest import place_on_primaries

    try:
        verbs.clear_disabled(lab.shell, "fts101", [PIC])
        first = start_standby(lab.shell, "fts101", [PIC])
        assert first.changed == [PIC], first.sentence
        assert "waits for its DB lock" in first.sentence
        assert snapshot_host(lab.shell, "fts101").runs(PIC)  # its process is there, waiting
        assert snapshot_host(lab.shell, "fts102").runs(PIC)  # and the primary still serves
        time.sleep(1.2)
        again = start_standby(lab.shell, "fts101", [PIC], max_wait_s=1.0)
        assert again.changed == [PIC] and "launched again" in again.sentence, again.sentence
        assert start_standby(lab.shell, "fts101", [PIC]).changed == []  # idempotent
        verbs.stop_agents(lab.shell, "fts102", [PIC])
        served = await_serving(lab.shell, "fts101", [PIC])
        assert served.sentence == "fts101: 1 standby (CERN-PIC) took the DB lock"
        assert lab.lab.score().agents_running_twice == []
    finally:
        place_on_primaries(lab)


def test_a_copy_already_running_that_waits_for_a_stale_lock_is_not_counted_as_serving(
    lab: RunningLab,
) -> None:
    """A rebooted host's boot started CERN-PIC again while its session from before the crash
    still holds the DB lock: the copy runs but only waits. `await_serving` waits for it, and
    fails once it gave up, so that the step's fallback kills the stale session and starts it
    again (which then serves)."""
    import contextlib
    import threading

    from tasks.db_sessions import drop_sessions
    from tasks.standby import await_serving
    from tests.conftest import place_on_primaries

    address = lab.site.host("fts101").address
    try:
        verbs.stop_agents(lab.shell, "fts102", [PIC])
        verbs.clear_disabled(lab.shell, "fts101", [PIC])
        # the crashed copy's session: from fts101, in the agent's name, holding its lock
        stale = lab.lab.db.connect(source_address=address, application_name=PIC)
        with contextlib.closing(stale):
            stale.run("SELECT pg_advisory_lock(hashtext(:n))", n=PIC)
            boot = threading.Thread(
                target=lambda: lab.shell.run("fts101", "start_agent", agent=PIC, timeout=60)
            )
            boot.start()
            deadline = time.monotonic() + 20
            while not snapshot_host(lab.shell, "fts101").runs(PIC):
                assert time.monotonic() < deadline, "the boot's copy never ran"
                time.sleep(0.1)
            with pytest.raises(StepFailed) as failed:
                await_serving(lab.shell, "fts101", [PIC])
            assert "waited for its DB lock and gave up" in str(failed.value), failed.value
            assert not snapshot_host(lab.shell, "fts101").runs(PIC)
            boot.join(30)
            # the fallback: the stale session killed, a plain start takes the lock
            dropped = drop_sessions(lab.site, "fts101", PIC)
            assert dropped.changed, dropped.sentence
        started = verbs.start_agents(lab.shell, "fts101", [PIC])
        assert started.changed == [PIC], started.sentence
        served = await_serving(lab.shell, "fts101", [PIC])  # the copy that runs now serves
        assert served.sentence.endswith("1 already running there, now serving (CERN-PIC)"), served
        [status] = [s for s in verbs.read_status(lab.shell, "fts101")[0] if s.agent == PIC]
        assert status.serving, status
        assert lab.lab.score().agents_running_twice == []
    finally:
        place_on_primaries(lab)
