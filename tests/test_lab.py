"""The lab behaves like an FTS 2 site: transfers flow, channels, agents, the DB lock, faults."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import pytest

from infra.lab.settings import lab_settings
from tasks import agents as verbs
from tasks.adapters.ssh import TransientSshError
from tasks.channels import set_channels
from tasks.outcome import StepFailed
from tasks.site_state import snapshot_host
from tests.conftest import (
    RunningLab,
    db_sessions,
    kill_sessions,
    wait_boot_agents_gave_up,
    wait_for,
)

CERN = "CERN-CERN"
CERN_AGENT = f"glite-transfer-channel-agent-urlcopy-{CERN}"


def test_transfers_flow(lab: RunningLab) -> None:
    start = lab.lab.score().jobs_done
    wait_for(lambda: lab.lab.score().jobs_done >= start + 10, 20, "10 jobs done")
    st = lab.lab.status()
    assert all(c.state == "Active" for c in st.channels.values())
    snap = snapshot_host(lab.shell, "fts101")
    assert snap.reachable and snap.transfers, snap


def test_status_shows_every_host_agent_and_channel(lab: RunningLab) -> None:
    st = lab.lab.status()
    assert st.up and st.labd
    assert [h.name for h in st.hosts] == [h.name for h in lab.site.hosts]
    for a in lab.site.service.agents:
        host = next(h for h in st.hosts if h.name == a.primary)
        view = next(v for v in host.agents if v.name == a.name)
        assert view.user == "edguser" and view.state == "serving"
        backup = next(h for h in st.hosts if h.name == a.backup)
        assert a.name in backup.disabled
    assert set(st.channels) == set(lab.site.channels)


def test_inactive_channel_starts_no_new_transfer(lab: RunningLab) -> None:
    ch = "CERN-RAL"
    res = set_channels(lab.shell, "fts101", [ch], "Inactive")
    assert res.changed == [ch]
    try:
        # running transfers finish (at most 3 s each), then nothing new starts
        wait_for(
            lambda: snapshot_host(lab.shell, "fts101").running_transfers(ch) == 0,
            10,
            f"{ch} to drain",
        )
        seen = set()
        for _ in range(10):
            snap = snapshot_host(lab.shell, "fts101")
            seen |= {t.transfer_id for t in snap.transfer_processes if t.channel == ch}
            time.sleep(0.2)
        assert seen == set()
        assert lab.lab.status().channels[ch].pending > 0, "load should keep jobs pending"
    finally:
        set_channels(lab.shell, "fts101", [ch], "Active")
    wait_for(
        lambda: snapshot_host(lab.shell, "fts101").running_transfers(ch) > 0,
        10,
        f"{ch} to run transfers again",
    )
    # the database kept both changes, in order, with its own times (the benchmarks' moments)
    with contextlib.closing(lab.lab.db.connect()) as conn:
        history = conn.run(
            "SELECT state FROM channel_history WHERE channel = :c ORDER BY at DESC LIMIT 2", c=ch
        )
    assert [r[0] for r in history] == ["Active", "Inactive"]


def _submit(lab: RunningLab, channel: str, duration_s: float) -> int:
    with contextlib.closing(lab.lab.db.connect()) as conn:
        rows = conn.run(
            "INSERT INTO jobs (channel, state, duration_s) VALUES (:c, 'Pending', :d) RETURNING id",
            c=channel,
            d=duration_s,
        )
    return int(rows[0][0])


def _job_state(lab: RunningLab, job: int) -> str:
    with contextlib.closing(lab.lab.db.connect()) as conn:
        return str(conn.run("SELECT state FROM jobs WHERE id = :i", i=job)[0][0])


def test_stopping_an_agent_with_running_transfers_loses_them(lab: RunningLab) -> None:
    ch = "CERN-FNAL"
    agent = f"glite-transfer-channel-agent-urlcopy-{ch}"
    before = lab.lab.score().jobs_lost
    job = _submit(lab, ch, 60.0)
    wait_for(
        lambda: any(
            t.transfer_id == str(job) for t in snapshot_host(lab.shell, "fts101").transfer_processes
        ),
        10,
        f"transfer {ch}__{job} to run",
    )
    res = verbs.stop_agents(lab.shell, "fts101", [agent])
    assert res.changed == [agent]
    try:
        assert _job_state(lab, job) == "Lost"
        assert lab.lab.score().jobs_lost > before
        # the transfer process itself is still there: its state is what was lost
        assert any(
            t.transfer_id == str(job) for t in snapshot_host(lab.shell, "fts101").transfer_processes
        )
    finally:
        verbs.start_agents(lab.shell, "fts101", [agent])


def test_a_restart_keeps_running_transfers_and_runs_the_installed_version(
    lab: RunningLab,
) -> None:
    ch = "CERN-RAL"
    agent = f"glite-transfer-channel-agent-urlcopy-{ch}"
    long_job = _submit(lab, ch, 4.0)
    wait_for(lambda: _job_state(lab, long_job) == "Active", 10, f"job {long_job} to run")
    sh = lab.shell

    def host(script: str) -> str:
        res = sh.run_argv("fts101", ["sh", "-c", script], timeout=60)
        return res.stdout + res.stderr

    try:
        assert "1-1 -> 2-1" in host("spma_wrapper.sh --version 2")
        assert (
            host("rpm -q glite-data-transfer-agents")
            .strip()
            .startswith("glite-data-transfer-agents-2-1")
        )
        out = host(f"service transfer-agents restart --instance {agent}")
        assert "handed over" in out and "[  OK  ]" in out and "version 2" in out, out
        status = host(f"service transfer-agents status --instance {agent}")
        assert "(serving, version 2, config " in status and "at its last restart" in status
        # the transfer that ran across the restart is finished by the new instance, not lost
        wait_for(lambda: _job_state(lab, long_job) == "Done", 15, f"job {long_job} to be Done")
        # the old instance has its last word in the state file before the new one takes the
        # lock: restart after restart, the new one reports serving
        for _ in range(10):
            out = host(f"service transfer-agents restart --instance {agent}")
            assert "Starting" in out and "[  OK  ]" in out.split("Starting", 1)[1], out
        assert lab.lab.score().restart_gaps_s.get(agent), "the database saw no restart"
        # a broken version: the restarted agent fails and says why; the old one is back on 1
        assert "2-1 -> 3-1" in host("spma_wrapper.sh --version 3")
        out = host(f"service transfer-agents restart --instance {agent}")
        assert "[FAILED]" in out and "version 3 is broken" in out, out
        assert "no package glite-data-transfer-agents version 9" in host(
            "spma_wrapper.sh --version 9"
        )
    finally:
        host(f"spma_wrapper.sh --version 1 && service transfer-agents restart --instance {agent}")
    assert "(serving, version 1," in host(f"service transfer-agents status --instance {agent}")


def test_a_transfer_that_finishes_under_its_agent_is_done(lab: RunningLab) -> None:
    job = _submit(lab, "CERN-IN2P3", 0.5)
    wait_for(lambda: _job_state(lab, job) == "Done", 15, f"job {job} to be Done")


def test_second_agent_blocks_on_the_db_lock_until_the_session_is_killed(lab: RunningLab) -> None:
    primary, backup = lab.site.host("fts101"), lab.site.host("fts102")
    verbs.clear_disabled(lab.shell, "fts102", [CERN_AGENT])
    t0 = time.monotonic()
    with pytest.raises(StepFailed) as info:
        verbs.start_agents(lab.shell, "fts102", [CERN_AGENT])
    waited = time.monotonic() - t0
    msg = str(info.value)
    assert "could not take the DB lock" in msg and f"from {primary.address}" in msg, msg
    assert waited >= lab_settings(lab.site).lock_wait_s
    # now start it again and, while it waits, kill the primary's session for that agent
    import threading

    outcome: dict[str, object] = {}

    def start() -> None:
        try:
            outcome["result"] = verbs.start_agents(lab.shell, "fts102", [CERN_AGENT])
        except Exception as exc:
            outcome["error"] = exc

    th = threading.Thread(target=start)
    th.start()
    # the backup's agent is connected and waiting for the lock: only then is the primary's
    # session killed (earlier, the agent could find the lock free without having waited)
    wait_for(
        lambda: any(s[1] == CERN_AGENT for s in db_sessions(lab, backup.address)),
        30,
        "the backup's agent to connect and wait for the DB lock",
    )
    assert kill_sessions(lab, primary.address, CERN_AGENT) == 1
    th.join(30)
    assert "result" in outcome, outcome
    assert lab.lab.serving(lab.site, lab.lab.record())[CERN_AGENT] == {"fts102"}
    # the primary's agent still runs (it keeps trying to reconnect) but does not serve
    assert snapshot_host(lab.shell, "fts101").runs(CERN_AGENT)
    assert any(s[1] == CERN_AGENT for s in db_sessions(lab, backup.address))
    score = wait_for(
        lambda: (s := lab.lab.score()).agents_alive_on_two_hosts and s,
        5,
        "the agent alive on two hosts to be recorded",
    )
    assert score.agents_running_twice == []  # type: ignore[union-attr]
    # tidy up: stop the old one, put the agent back on its primary
    verbs.stop_agents(lab.shell, "fts101", [CERN_AGENT])
    verbs.stop_agents(lab.shell, "fts102", [CERN_AGENT])
    verbs.write_disabled(lab.shell, "fts102", [CERN_AGENT])
    verbs.start_agents(lab.shell, "fts101", [CERN_AGENT])


def _proc_states(lab: RunningLab, host: str) -> set[str]:
    return {p.state for p in lab.lab.host_processes().get(host, [])}


def test_a_snapshot_reads_the_channel_states_in_one_query_when_the_site_says_so(
    lab: RunningLab,
) -> None:
    """`database.channel_states_query`: the states come from one query, no host is asked for
    one; a database that does not answer leaves them to the hosts, with the same result."""
    from tasks.site_state import snapshot_site

    site = lab.site
    assert site.database is not None
    set_channels(lab.shell, "fts101", ["CERN-RAL"], "Inactive")
    try:
        plain = snapshot_site(lab.shell)
        assert plain.channels["CERN-RAL"] == "Inactive" and len(plain.channels) == 6

        def variant(**db: object) -> object:
            return site.model_copy(
                update={
                    "database": site.database.model_copy(  # type: ignore[union-attr]
                        update={"channel_states_query": "SELECT name, state FROM channels", **db}
                    )
                }
            )

        for case, expect_host_reads in ((variant(), False), (variant(port=1, timeout_s=2), True)):
            sent = _snapshot_recording(case)
            snap, commands = sent
            assert snap.channels == plain.channels and snap.channel_errors == {}
            host_reads = [c for c in commands if isinstance(c, tuple) and c[0] == "channel_state"]
            assert bool(host_reads) == expect_host_reads, host_reads
    finally:
        set_channels(lab.shell, "fts101", ["CERN-RAL"], "Active")


def test_channels_are_set_in_the_database_when_the_site_says_so(lab: RunningLab) -> None:
    """`database.channel_set_statement`: the states are written from here, no host runs the
    channel tool; a statement the database refuses, or one that changes no row, leaves those
    channels to the tool on the host, with the same result."""
    from tasks.site_state import snapshot_site

    site = lab.site
    assert site.database is not None
    reads = "SELECT name, state FROM channels"
    chans = ["CERN-RAL", "CERN-FNAL"]

    def variant(statement: str) -> Any:
        return site.model_copy(
            update={
                "database": site.database.model_copy(  # type: ignore[union-attr]
                    update={"channel_states_query": reads, "channel_set_statement": statement}
                )
            }
        )

    def history(channel: str) -> str:
        with contextlib.closing(lab.lab.db.connect()) as conn:
            rows = conn.run(
                "SELECT state FROM channel_history WHERE channel = :c ORDER BY at DESC LIMIT 1",
                c=channel,
            )
        return str(rows[0][0])

    good = "UPDATE channels SET state = :state WHERE name = :channel"
    cases = [
        (good, [], "(in the database)"),
        ("UPDATE no_such_table SET state = :state WHERE name = :channel", chans, "did not take"),
        (good + " AND name <> 'CERN-FNAL'", ["CERN-FNAL"], "CERN-FNAL with the command"),
    ]
    try:
        for statement, by_tool, words in cases:
            for state in ("Inactive", "Active"):
                result, ran = _set_recording(variant(statement), chans, state)
                assert result.changed == chans, result
                assert words in result.sentence, result.sentence
                assert sorted(ran) == sorted(f"set_channel_state:{c}" for c in by_tool), ran
                assert (result.commands[0].startswith("database:")) == (by_tool != chans)
                assert {c: history(c) for c in chans} == dict.fromkeys(chans, state)
                live = snapshot_site(lab.shell).channels
                assert all(live[c] == state for c in chans), live
    finally:
        set_channels(lab.shell, "fts101", chans, "Active")


def _set_recording(site: Any, channels: list[str], state: Any) -> tuple[Any, list[str]]:
    """`set_channels` on fts101 of `site`, and the commands it ran on hosts."""
    from tasks.remote import SiteShell

    ran: list[str] = []
    with SiteShell(site) as shell:
        run = shell.run

        def recording(host: str, name: str, **kw: Any) -> Any:
            ran.append(f"{name}:{kw.get('channel')}")
            return run(host, name, **kw)

        shell.run = recording  # type: ignore[method-assign]
        return set_channels(shell, "fts101", channels, state), ran


def _snapshot_recording(site: Any) -> tuple[Any, list[Any]]:
    """A snapshot of `site` and the commands its round trips carried."""
    from tasks.remote import SiteShell
    from tasks.site_state import snapshot_site

    sent: list[Any] = []
    with SiteShell(site) as shell:
        run_many = shell.run_many

        def recording(host: str, commands: list[Any], **kw: Any) -> Any:
            sent.extend(commands)
            return run_many(host, commands, **kw)

        shell.run_many = recording  # type: ignore[method-assign]
        return snapshot_site(shell), sent


def test_fault_sshd_down(lab: RunningLab) -> None:
    lab.lab.fault("fts102", "sshd-down")
    try:
        snap = snapshot_host(lab.shell, "fts102")
        assert not snap.reachable and snap.error_kind == "transient"
        assert "connection refused" in (snap.error or "")
        host = next(h for h in lab.lab.status().hosts if h.name == "fts102")
        assert host.up and not host.sshd and host.agents, "agents keep running without sshd"
    finally:
        lab.lab.heal("fts102")
    assert snapshot_host(lab.shell, "fts102").reachable


def _first_contact(lab: RunningLab, host: str) -> Any:
    """A snapshot of `host` over a new connection, as the first run after a fault makes it: it
    gives up at the site's connect bound (a connection opened before the fault waits for its
    command bound instead, 30 s in the lab)."""
    from tasks.remote import SiteShell

    with SiteShell(lab.site) as fresh:
        return snapshot_host(fresh, host)


def test_fault_frozen(lab: RunningLab) -> None:
    lab.lab.fault("fts106", "frozen")
    try:
        assert _proc_states(lab, "fts106") == {"T"}
        snap = _first_contact(lab, "fts106")
        assert not snap.reachable and snap.error_kind == "transient"
    finally:
        lab.lab.heal("fts106")
    assert "T" not in _proc_states(lab, "fts106")
    assert snapshot_host(lab.shell, "fts106").reachable


def test_fault_slow(lab: RunningLab) -> None:
    lab.lab.fault("fts106", "slow")
    try:
        stopped = wait_for(
            lambda: _proc_states(lab, "fts106") == {"T"},
            5,
            "the slow host's processes to be seen stopped",
            interval=0.01,
        )
        assert stopped
        assert snapshot_host(lab.shell, "fts106").reachable, "slow, not unreachable"
    finally:
        lab.lab.heal("fts106")
    for _ in range(20):
        assert "T" not in _proc_states(lab, "fts106")
        time.sleep(0.02)


def test_fault_db_unreachable(lab: RunningLab) -> None:
    host = lab.site.host("fts102")
    agents = lab.agents_on("fts102")
    lab.lab.fault("fts102", "db-unreachable")
    try:
        wait_for(
            lambda: not (lab.lab.serving(lab.site, lab.lab.record()).keys() & set(agents)),
            20,
            "fts102's agents to lose their DB sessions",
        )
        res = lab.lab.exec("fts102", ["glite-transfer-channel-list", "CERN-PIC"], timeout=30)
        assert res.returncode != 0
    finally:
        lab.lab.heal("fts102")
    # the server still holds the sessions it never heard closing: kill them, agents take over
    kill_sessions(lab, host.address)
    wait_for(
        lambda: set(agents) <= lab.lab.serving(lab.site, lab.lab.record()).keys(),
        20,
        "fts102's agents to serve again",
    )


def test_fault_crash_and_reboot(lab: RunningLab) -> None:
    host = lab.site.host("fts105")
    agents = lab.agents_on("fts105")
    assert {name for _, name in db_sessions(lab, host.address)} >= set(agents)
    lab.lab.fault("fts105", "crash")
    try:
        assert lab.lab.host_processes().get("fts105", []) == []
        snap = _first_contact(lab, "fts105")
        assert not snap.reachable and snap.error_kind == "transient"
        # as after a real crash, the database still holds the dead host's sessions (and locks)
        assert {name for _, name in db_sessions(lab, host.address)} >= set(agents)
    finally:
        lab.lab.heal("fts105")
    snap = snapshot_host(lab.shell, "fts105")
    assert snap.reachable
    # on reboot it ran `service transfer-agents start`; the agents wait for the dead sessions'
    # locks. Kill those sessions and start them: they serve again.
    wait_boot_agents_gave_up(lab, "fts105")
    wait_for(
        lambda: not snapshot_host(lab.shell, "fts105").agents, 10, "the agents that gave up to exit"
    )
    kill_sessions(lab, host.address)
    verbs.start_agents(lab.shell, "fts105", agents)
    assert set(agents) <= lab.lab.serving(lab.site, lab.lab.record()).keys()


def test_unknown_fault_kind_is_refused(lab: RunningLab) -> None:
    from infra.lab.lab import LabError

    with pytest.raises(LabError, match="unknown fault kind"):
        lab.lab.fault("fts101", "melted")


def test_no_agent_ever_served_twice(lab: RunningLab) -> None:
    assert lab.lab.score().agents_running_twice == []


def test_transient_error_on_dead_sshd_is_classified(lab: RunningLab) -> None:

    lab.lab.fault("fts106", "sshd-down")
    try:
        lab.shell.pool.drop("fts106")
        with pytest.raises(TransientSshError) as info:
            lab.shell.run_argv("fts106", ["hostname"])
        assert "fts106" in str(info.value) and lab.site.host("fts106").address in str(info.value)
    finally:
        lab.lab.heal("fts106")
    assert lab.shell.run_argv("fts106", ["hostname"]).stdout.strip() == "fts106"
