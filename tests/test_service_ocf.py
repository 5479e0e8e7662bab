"""The agents' start/stop/status procedure on the lab: `handover service` with OCF's exit codes,
the OCF resource agent checked by Debian's `ocf-tester`, and run by a real Pacemaker that
notices a dead agent, recovers it, and has handover's alert agent report the failure.

The Pacemaker test starts the machine's one cluster: this module stays in the first test group
with the other Pacemaker modules (`tests/conftest.py`).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from infra.cli import main
from tests.conftest import ROOT, RunningLab, require, stays, wait_for

P = "glite-transfer-channel-agent-urlcopy-"
A, B = P + "CERN-CERN", P + "CERN-RAL"


def service(
    lab: RunningLab, capsys: pytest.CaptureFixture[str], action: str, host: str, *agents: str
) -> tuple[int, dict[str, Any]]:
    """`handover service ACTION --host HOST [--agent A ...] --json`: (exit code, its answer)."""
    capsys.readouterr()
    argv = ["service", action, "--host", host, "--json", "--site", str(lab.site_file)]
    for a in agents:
        argv += ["--agent", a]
    code = main(argv)
    return code, json.loads(capsys.readouterr().out)


def words(answer: dict[str, Any]) -> dict[str, str]:
    return {v["agent"]: v["word"] for v in answer["agents"]}


def agent_pid(lab: RunningLab, host: str, agent: str) -> int | None:
    for p in lab.lab.host_processes().get(host, []):
        if p.title.split()[0] == agent:
            return p.pid
    return None


def test_status_start_stop_and_monitor_with_ocf_codes(
    lab: RunningLab, capsys: pytest.CaptureFixture[str]
) -> None:
    code, answer = service(lab, capsys, "status", "fts101", A)
    assert (code, words(answer)) == (0, {A: "running"}), answer
    code, answer = service(lab, capsys, "monitor", "fts101", A)
    assert (code, words(answer)) == (0, {A: "serving"}), answer
    # a clean stop is 7, not a failure; a second stop changes nothing
    code, answer = service(lab, capsys, "stop", "fts101", A)
    assert code == 0 and "stopped 1 agent" in answer["said"], answer
    code, answer = service(lab, capsys, "status", "fts101", A)
    assert (code, words(answer)) == (7, {A: "stopped"}), answer
    code, answer = service(lab, capsys, "stop", "fts101", A)
    assert code == 0 and "already stopped" in answer["said"], answer
    code, answer = service(lab, capsys, "start", "fts101", A)
    assert (code, words(answer)) == (0, {A: "running"}), answer
    # an agent that dies (SIGKILL) is a failure: 1, with what it was doing
    pid = agent_pid(lab, "fts101", A)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: agent_pid(lab, "fts101", A) is None, 10, "the agent gone")
    code, answer = service(lab, capsys, "status", "fts101", A)
    assert (code, words(answer)) == (1, {A: "failed"}), answer
    assert "serving" in answer["agents"][0]["why"]
    # the stop clears the dead agent's state, as an init script removes a stale pid file
    code, answer = service(lab, capsys, "stop", "fts101", A)
    code, answer = service(lab, capsys, "status", "fts101", A)
    assert (code, words(answer)) == (7, {A: "stopped"}), answer
    code, answer = service(lab, capsys, "start", "fts101", A)
    assert code == 0, answer
    # every agent of a host at once; an agent the host does not run is a configuration error
    # (its backups are stopped, disabled: they do not make the host's code 7)
    code, answer = service(lab, capsys, "status", "fts102")
    assert code == 0, answer
    assert {a: w for a, w in words(answer).items()} == {
        a.name: "running" if a.primary == "fts102" else "stopped"
        for a in lab.site.agents_configured_on("fts102")
    }
    code, answer = service(lab, capsys, "status", "fts101", "glite-transfer-vo-agent-atlas")
    assert (code, words(answer)["glite-transfer-vo-agent-atlas"]) == (6, "not-configured")
    assert main(["service", "status", "--host", "fts999", "--site", str(lab.site_file)]) == 2


def prefix(lab: RunningLab, host: str) -> str:
    """How the resource agent reaches a lab host's init script from the machine."""
    return f"nsenter -t {lab.lab.record()['hosts'][host]['init_pid']} -u -p -m --"


def ocf_tester(name: str, agent: str, **params: str) -> None:
    """Debian's `ocf-tester` on one of handover's resource agents: it passes."""
    tester = shutil.which("ocf-tester")
    require(
        tester is not None and shutil.which("xmllint") is not None,
        "ocf-tester and xmllint (Debian packages resource-agents libxml2-utils)",
    )
    assert tester is not None
    options = [w for k, v in params.items() for w in ("-o", f"{k}={v}")]
    res = subprocess.run(
        [tester, "-n", name, *options, str(ROOT / "infra" / "ocf" / agent)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "passed all tests" in res.stdout, res.stdout


def frontend(lab: RunningLab, host: str) -> dict[str, Any]:
    """The front end's status line on a lab host."""
    res = lab.lab.exec(host, ["service", "fts-frontend", "status"])
    state: dict[str, Any] = json.loads(res.stdout.splitlines()[-1])
    return state


def test_the_resource_agent_passes_ocf_tester(lab: RunningLab) -> None:
    ocf_tester("fts-cern-cern", "fts-agent", instance=A, exec_prefix=prefix(lab, "fts101"))
    # ocf-tester ends with a stop: the agent serves again for the next test
    subprocess.run(
        [str(ROOT / "infra" / "ocf" / "fts-agent"), "start"],
        env={
            **os.environ,
            "OCF_RESKEY_instance": A,
            "OCF_RESKEY_exec_prefix": prefix(lab, "fts101"),
        },
        check=True,
        timeout=60,
    )


def test_the_front_end_resource_agent_passes_ocf_tester_and_fences_older_masters(
    lab: RunningLab,
) -> None:
    agent = ROOT / "infra" / "ocf" / "fts-frontend"
    env = {**os.environ, "OCF_RESKEY_exec_prefix": prefix(lab, "fts101")}

    def ocf(action: str, host: str = "fts101") -> int:
        here = {**env, "OCF_RESKEY_exec_prefix": prefix(lab, host)}
        return subprocess.run([str(agent), action], env=here, timeout=90, check=False).returncode

    before = frontend(lab, "fts101")
    assert before["role"] == "master" and ocf("monitor") == 0, before
    assert ocf("monitor", "fts102") == 7  # the slave: not running
    ocf_tester("fts-frontend", "fts-frontend", exec_prefix=prefix(lab, "fts101"))
    # ocf-tester ends with a stop: fts101 is a slave, the server still answering
    after = frontend(lab, "fts101")
    assert (after["role"], after["answers"]) == ("slave", True), after
    assert ocf("start") == 0
    assert frontend(lab, "fts101")["epoch"] > before["epoch"]
    # the resource on fts102 takes a newer epoch: fts101, still believing, is fenced (a failure)
    assert ocf("start", "fts102") == 0
    assert ocf("monitor", "fts102") == 0
    assert ocf("monitor") == 1
    assert ocf("stop", "fts102") == 0 and ocf("stop", "fts102") == 0  # idempotent
    assert ocf("start") == 0 and ocf("start") == 0
    state = frontend(lab, "fts101")
    assert (state["role"], state["epoch"]) == ("master", state["db_epoch"]), state
    assert ocf("validate-all") == 0
    bad = {**env, "OCF_RESKEY_command": "/nonexistent/fts-frontend", "OCF_RESKEY_exec_prefix": ""}
    assert subprocess.run([str(agent), "start"], env=bad, timeout=30).returncode == 5
    assert subprocess.run([str(agent), "monitor"], env=bad, timeout=30).returncode == 7


@pytest.mark.pacemaker
def test_pacemaker_recovers_a_dead_agent_and_handover_hears_of_it(
    lab: RunningLab, tmp_path: Path
) -> None:
    from infra.lab.pacemaker import OneNodeCluster
    from infra.ocf import install

    tools = ("corosync", "pacemakerd", "cibadmin", "crm_resource", "nsenter")
    absent = [t for t in tools if shutil.which(t) is None]
    require(not absent, f"{', '.join(absent)} (Debian packages corosync pacemaker)")
    installed = install()
    hacluster = pwd.getpwnam("hacluster")
    work = Path(f"/var/tmp/handover-lab/pacemaker-ocf-{os.getpid()}")
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)
    spool = work / "spool"
    spool.mkdir(exist_ok=True)
    os.chown(spool, hacluster.pw_uid, hacluster.pw_gid)
    cluster = OneNodeCluster(
        str(ROOT / "infra" / "hooks" / "pacemaker_alert.py"),
        workdir=str(work / "cluster"),
        # no gateway: the alert agent keeps its alerts in the spool, which the test reads
        alert_env={
            "HANDOVER_SITE": lab.site.site,
            "HANDOVER_SERVICE": lab.site.service.name,
            "HANDOVER_SPOOL_DIR": str(spool),
            "HANDOVER_HOST_MAP": f"{os.uname().nodename}=fts101",
            "HANDOVER_TIMEOUT_S": "3",
        },
        resource_id="fts-cern-ral",
        resource_type="ocf:handover:fts-agent",
        resource_params={"instance": B, "exec_prefix": prefix(lab, "fts101")},
        monitor_interval="2s",
    )
    cluster.start(timeout_s=90)
    try:
        wait_for(cluster.resource_running, 60, "Pacemaker to see the agent running")
        before = agent_pid(lab, "fts101", B)
        assert before is not None
        os.kill(before, signal.SIGKILL)

        def recovered() -> bool:
            pid = agent_pid(lab, "fts101", B)
            return pid is not None and pid != before

        # Pacemaker's monitor finds it dead, stops it (clearing its state) and starts it again
        wait_for(recovered, 60, "Pacemaker to start the dead agent again")

        def reported() -> list[dict[str, Any]]:
            found = []
            for f in sorted(spool.glob("*.json")):
                alert = json.loads(f.read_text())
                if alert.get("kind") == "resource_failed" and alert.get("host") == "fts101":
                    found.append(alert)
            return found

        [first, *_] = wait_for(reported, 30, "the alert agent's resource_failed alert")
        assert "fts-cern-ral" in first["summary"], first

        # the front end's master role as a resource that Pacemaker watches and never starts
        # or stops (is-managed=false: handover's switch moves the master, see the README):
        # Pacemaker's monitor notices the server killed and the alert agent says `frontend_down`
        cluster.add_resource(
            "fts-frontend",
            "ocf:handover:fts-frontend",
            {"exec_prefix": prefix(lab, "fts101")},
            meta={"is-managed": "false"},
        )
        wait_for(lambda: cluster.resource_running("fts-frontend"), 60, "the front end resource")
        lab.lab.fault("fts101", "frontend-down")

        def frontend_down() -> list[dict[str, Any]]:
            return [
                a
                for f in sorted(spool.glob("*.json"))
                if (a := json.loads(f.read_text())).get("kind") == "frontend_down"
            ]

        [down, *_] = wait_for(frontend_down, 30, "the alert agent's frontend_down alert")
        assert down["host"] == "fts101" and "fts-frontend" in down["summary"], down
        stays(lambda: not frontend(lab, "fts101")["running"], 3, "Pacemaker left it alone")
        lab.lab.heal("fts101")
        assert frontend(lab, "fts101")["role"] == "master"
    finally:
        cluster.stop()
        for path in installed:
            path.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)


def test_the_exporter_serves_metrics_that_match_the_lab(lab: RunningLab) -> None:
    """`handover exporter` as a process: its /metrics against what the lab itself sees."""
    import socket
    import sys
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "infra.cli",
            "exporter",
            "--site",
            str(lab.site_file),
            "--port",
            str(port),
            "--interval",
            "1",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    def scrape() -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return {}
        out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for fam in text_string_to_metric_families(text):
            for smp in fam.samples:
                out.setdefault(smp.name, {})[tuple(sorted(smp.labels.items()))] = smp.value
        return out

    try:
        # three readings: the rate needs two, and the lab's load is on
        wait_for(
            lambda: (
                len(scrape().get("handover_host_up", {})) == len(lab.site.hosts)
                and scrape()["handover_sensor_age_seconds"]
            ),
            60,
            "the exporter's first reading",
        )
        # the capacity: new transfer processes between two readings, while the load runs
        wait_for(
            lambda: sum(scrape().get("handover_transfers_started_per_second", {}).values()) > 0,
            60,
            "transfers started per second above 0",
        )
        m = scrape()
        rec = lab.lab.record()
        serving = lab.lab.serving(lab.lab.site, rec)
        per_agent = {dict(k)["agent"]: v for k, v in m["handover_channel_serving_agents"].items()}
        assert per_agent == {
            a.name: float(len(serving.get(a.name, set()))) for a in lab.site.service.agents
        }, (per_agent, serving)
        assert set(m["handover_host_up"].values()) == {1.0}
        masters = {dict(k)["host"]: v for k, v in m["handover_frontend_master"].items()}
        assert sorted(masters.values()) == [0.0, 1.0], masters
        assert m["handover_sensor_errors"] and set(m["handover_sensor_errors"].values()) == {0.0}
    finally:
        proc.terminate()
        _, errors = proc.communicate(timeout=10)
    assert b"could not be read" not in errors, errors.decode()[-2000:]


def test_the_runs_of_the_procedures_are_counted_from_prefect(
    lab: RunningLab, prefect_api: str
) -> None:
    from flows.site_snapshot import site_snapshot
    from tasks.run_counts import read_run_counts

    before = read_run_counts().runs.get("site-snapshot", {}).get("Completed", 0)
    site_snapshot(str(lab.site_file))
    counts = read_run_counts()
    assert counts.runs["site-snapshot"]["Completed"] == before + 1, counts
    assert counts.waiting.get("site-snapshot", 0) == 0
