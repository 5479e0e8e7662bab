"""`handover service status|monitor`'s verdicts from recorded host states (pure): OCF's codes."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from config.loader import load_site
from flows.plans.service_status import (
    OCF_ERR_CONFIGURED,
    OCF_ERR_GENERIC,
    OCF_ERR_INSTALLED,
    OCF_NOT_RUNNING,
    OCF_SUCCESS,
    AgentVerdict,
    dead_agents,
    judge_agent,
    overall,
)
from flows.plans.snapshot import AgentProcess, HostSnapshot

SITE = load_site(Path(__file__).resolve().parent.parent / "config/sites/lab.yaml")
A = "glite-transfer-channel-agent-urlcopy-CERN-CERN"
B = "glite-transfer-channel-agent-urlcopy-CERN-RAL"
T = dt.datetime(2026, 12, 2, tzinfo=dt.UTC)
# what the lab's init script prints (`infra/lab/hostcmd.py status`), recorded
STATUS = (
    f"{A} (pid 4242) is running (serving, version 2, config 3f2a)\n"
    f"{B} (pid 4243) is running (db-lost, version 2, config 3f2a)\n"
    "glite-transfer-channel-agent-urlcopy-CERN-FNAL is dead (failed: could not take the DB lock "
    "within 8 s; held by DB session 77 from 127.0.1.2 (fts102))\n"
    "glite-transfer-channel-agent-urlcopy-CERN-IN2P3 is stopped\n"
    "glite-transfer-channel-agent-urlcopy-CERN-PIC is stopped (disabled)\n"
)


def snap(*running: str, disabled: tuple[str, ...] = (), reachable: bool = True) -> HostSnapshot:
    return HostSnapshot(
        host="fts101",
        reachable=reachable,
        error=None if reachable else "connection refused",
        agents=[AgentProcess(name=n, pid=4242, user="edguser") for n in running],
        disabled=list(disabled),
        taken_at=T,
    )


def judge(agent: str, s: HostSnapshot, *, deep: bool, installed: str | None = "2") -> AgentVerdict:
    return judge_agent(SITE, "fts101", agent, s, STATUS, installed, deep=deep)


@pytest.mark.parametrize(
    ("agent", "deep", "code", "word"),
    [
        (A, False, OCF_SUCCESS, "running"),
        (A, True, OCF_SUCCESS, "serving"),
        (B, False, OCF_SUCCESS, "running"),
        (B, True, OCF_ERR_GENERIC, "not-serving"),
        ("glite-transfer-channel-agent-urlcopy-CERN-FNAL", False, OCF_ERR_GENERIC, "failed"),
        ("glite-transfer-channel-agent-urlcopy-CERN-IN2P3", False, OCF_NOT_RUNNING, "stopped"),
        ("glite-transfer-channel-agent-urlcopy-CERN-PIC", True, OCF_NOT_RUNNING, "stopped"),
        ("glite-transfer-vo-agent-atlas", False, OCF_ERR_CONFIGURED, "not-configured"),
    ],
)
def test_status_tells_running_serving_stopped_and_failed_apart(
    agent: str, deep: bool, code: int, word: str
) -> None:
    s = snap(A, B, disabled=("glite-transfer-channel-agent-urlcopy-CERN-PIC",))
    v = judge(agent, s, deep=deep)
    assert (v.code, v.word) == (code, word), v
    assert v.sentence().startswith(f"{agent} on fts101: {word}")


def test_the_reasons_are_said() -> None:
    s = snap(A, B, disabled=("glite-transfer-channel-agent-urlcopy-CERN-PIC",))
    assert (
        "could not take the DB lock"
        in judge("glite-transfer-channel-agent-urlcopy-CERN-FNAL", s, deep=False).why
    )
    assert "db-lost" in judge(B, s, deep=True).why
    assert (
        "disabled in /etc/glite-data-transfer-agents.disabled"
        in judge("glite-transfer-channel-agent-urlcopy-CERN-PIC", s, deep=False).why
    )
    assert (
        "it runs on fts105 (backup fts106)"
        in judge("glite-transfer-vo-agent-atlas", s, deep=False).why
    )


def test_not_installed_and_unreachable() -> None:
    v = judge(A, snap(A), deep=False, installed=None)
    assert (v.code, v.word) == (OCF_ERR_INSTALLED, "not-installed")
    assert "rpm -q glite-data-transfer-agents" in v.why
    v = judge(A, snap(reachable=False), deep=True)
    assert (v.code, v.word) == (OCF_ERR_GENERIC, "unknown") and "connection refused" in v.why


def test_dead_lines_and_one_code_for_several_agents() -> None:
    assert dead_agents(STATUS, SITE.commands.agent_dead_regex) == {
        "glite-transfer-channel-agent-urlcopy-CERN-FNAL": "failed: could not take the DB lock "
        "within 8 s; held by DB session 77 from 127.0.1.2 (fts102)"
    }

    def v(code: int) -> AgentVerdict:
        return AgentVerdict(host="h", agent="a", code=code, word="running", why="")

    assert overall([v(0), v(0)]) == 0
    assert overall([v(0), v(7)]) == 7
    assert overall([v(7), v(6), v(1)]) == 1
    assert overall([v(0), v(6), v(7)]) == 6
    backup = AgentVerdict(host="h", agent="b", code=7, word="stopped", why="", disabled=True)
    assert overall([v(0), backup]) == 0
    assert overall([backup, backup]) == 7


# --- the exporter's metrics (pure) ---------------------------------------------------------------


def test_the_exporter_publishes_serving_agents_channels_and_capacity() -> None:
    from flows.plans.snapshot import SiteSnapshot, TransferProcess
    from flows.plans.switch import FrontendState
    from infra.exporter import families, started_per_second
    from tasks.sensors import SensorReading

    def reading(t: int, ids: list[str]) -> SensorReading:
        host = snap(A, B)
        host.transfer_processes = [
            TransferProcess(channel="CERN-CERN", transfer_id=i, pid=100 + int(i)) for i in ids
        ]
        host.transfers = {"CERN-CERN": len(ids)}
        return SensorReading(
            taken_at=T + dt.timedelta(seconds=t),
            duration_s=0.4,
            snapshot=SiteSnapshot(
                site="lab", taken_at=T, hosts=[host], channels={"CERN-CERN": "Active"}
            ),
            agent_states={"fts101": {A: "serving", B: "db-lost"}},
            frontends=[
                FrontendState(
                    host="fts101",
                    reachable=True,
                    running=True,
                    answers=True,
                    role="master",
                    epoch=3,
                    db_epoch=3,
                )
            ],
        )

    first, second = reading(0, ["1", "2"]), reading(10, ["2", "3", "4", "5"])
    rates = started_per_second(first, second, SITE.channels)
    assert rates["CERN-CERN"] == 0.3 and rates["CERN-RAL"] == 0.0
    assert started_per_second(None, second, ["CERN-CERN"]) == {"CERN-CERN": 0.0}
    got = {
        (f.name, tuple(sorted(smp.labels.items()))): smp.value
        for f in families(SITE, second, rates, T.timestamp() + 12)
        for smp in f.samples
    }

    def value(name: str, **labels: str) -> float:
        key = (name, tuple(sorted({"site": "lab", **labels}.items())))
        return got[key]

    cern = {"agent": A, "channel": "CERN-CERN", "vo": ""}
    ral = {"agent": B, "channel": "CERN-RAL", "vo": ""}
    assert value("handover_agent_serving", host="fts101", **cern) == 1.0
    assert value("handover_agent_running", host="fts101", **ral) == 1.0
    assert value("handover_agent_serving", host="fts101", **ral) == 0.0  # db-lost
    assert value("handover_channel_serving_agents", **cern) == 1.0
    assert value("handover_channel_serving_agents", **ral) == 0.0
    assert value("handover_host_up", host="fts101") == 1.0
    assert value("handover_host_up", host="fts102") == 0.0  # not in the snapshot
    assert value("handover_transfer_processes", host="fts101", channel="CERN-CERN") == 4.0
    assert value("handover_transfers_started_per_second", channel="CERN-CERN") == 0.3
    assert value("handover_channel_active", channel="CERN-CERN") == 1.0
    assert value("handover_frontend_master", host="fts101") == 1.0
    assert value("handover_database_reachable", host="fts101") == 1.0
    assert value("handover_sensor_age_seconds") == 2.0


def test_the_exporter_publishes_runs_and_approvals_waiting() -> None:
    from infra.exporter import run_families
    from tasks.run_counts import RunCounts

    counts = RunCounts(
        window_s=86400,
        runs={"switch": {"Completed": 3, "Failed": 1}, "clean-move": {"Paused": 1}},
        waiting={"clean-move": 1},
        workers={"handover": 2, "spare-pool": 0},
    )
    got = {
        (smp.name, tuple(sorted(smp.labels.items()))): smp.value
        for f in run_families(SITE, counts)
        for smp in f.samples
    }
    assert (
        got[("handover_runs", (("procedure", "switch"), ("site", "lab"), ("state", "Failed")))]
        == 1.0
    )
    assert (
        got[("handover_approvals_waiting", (("procedure", "clean-move"), ("site", "lab")))] == 1.0
    )
    # handover's own health: workers online per pool, and whether the API answered
    assert got[("handover_workers_online", (("pool", "handover"), ("site", "lab")))] == 2.0
    assert got[("handover_workers_online", (("pool", "spare-pool"), ("site", "lab")))] == 0.0
    from infra.exporter import api_family

    assert [smp.value for smp in api_family(SITE, False).samples] == [0.0]
    assert [smp.value for smp in api_family(SITE, True).samples] == [1.0]
    assert len(got) == 6
