"""`handover serve` serves the deployments of deployments/prefect.yaml from one process."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound

from config.loader import load_site
from config.site import Site
from flows.approval import resume_with_input
from infra.bench.alert import stop_groups
from infra.crash_recovery import HEARTBEAT_S
from infra.serve import DEPLOYMENTS_FILE, deployment_name, entry_applies, read_deployments
from infra.worker import worker_processes
from tasks.site_state import snapshot_site
from tests.conftest import (
    LAB_SITE,
    ROOT,
    RunningLab,
    end_transfer,
    final_run,
    place_on_primaries,
    require,
    submit_long_job,
    wait_final_or_explain,
    wait_for,
)


def full_name(entry: str, site: Site) -> str:
    """``<flow>/<deployment>`` of a site's deployment of an entry, as the API looks it up."""
    return f"{entry}/{deployment_name(entry, site)}"


def test_prefect_yaml_declares_the_procedures() -> None:
    names = {d["name"]: d for d in read_deployments(DEPLOYMENTS_FILE)}
    assert names["clean-move"]["entrypoint"] == "flows/clean_move.py:clean_move"
    assert "site-snapshot" in names


#: the log of the `handover serve` a test started last (`serving`)
SERVE_LOG: dict[str, Path] = {}


@contextlib.contextmanager
def serving(lab: RunningLab, prefect_api: str, *extra: str) -> Iterator[subprocess.Popen[bytes]]:
    """`handover serve` for the lab's site, until its deployments are registered by it. Its
    output goes to a file (`SERVE_LOG["serve"]`): a pipe nobody reads fills up after a few
    runs' logs and then blocks the server in the middle of its work."""
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    log_path = lab.site_file.parent / f"serve-{time.monotonic_ns()}.log"
    SERVE_LOG["serve"] = log_path
    log = open(log_path, "wb")  # closed when the server has stopped
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "infra.cli",
            "serve",
            "--site",
            str(lab.site_file),
            "--poll-interval",
            "1",
            *extra,
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:

        def deployed() -> bool:
            # registered by this serve process: the lab's own deployments (another test
            # module's lab of the same site and service may have left them with its file)
            # every deployment of the file, not only the first registered
            with get_client(sync_client=True) as client:
                try:
                    deps = [
                        client.read_deployment_by_name(full_name(d["name"], lab.site))
                        for d in read_deployments(DEPLOYMENTS_FILE)
                        if entry_applies(d, lab.site)
                    ]
                except ObjectNotFound:
                    return False
            site = str(lab.site_file.resolve())
            return all(d.parameters.get("site_file") == site for d in deps)

        wait_for(deployed, 60, "handover serve to register the deployment")
        yield proc
    finally:
        stop_groups([proc])
        log.close()


def test_a_run_served_with_spawn_starts_in_a_fresh_interpreter(
    lab: RunningLab, prefect_api: str
) -> None:
    """Its own `handover serve --start spawn`, first in the module: the module's shared serve
    (`served`, from the next test on) would otherwise take the run too."""
    with serving(lab, prefect_api, "--start", "spawn") as proc:
        _started_as(proc, "spawn", lab.site)


@pytest.fixture(scope="module")
def served(lab: RunningLab, prefect_api: str) -> Iterator[subprocess.Popen[bytes]]:
    """One `handover serve` (its default start method, the fork server) for the module's tests
    that need no other options: each waits for its own runs to end, so they can share it."""
    with serving(lab, prefect_api) as proc:
        yield proc


def test_served_clean_move_runs_from_the_api(
    lab: RunningLab, served: subprocess.Popen[bytes]
) -> None:
    run = run_deployment(
        full_name("clean-move", lab.site),
        parameters={"from_host": "fts101", "to_host": "fts102", "dry_run": True},
        timeout=120,
    )
    assert run.state is not None and run.state.is_completed(), run.state
    assert run.state.message and "dry run: would move 4 agents" in run.state.message
    assert run.parameters["site_file"] == str(lab.site_file.resolve())


def test_a_run_created_through_the_api_takes_no_automatic_path_without_an_alerts_seal(
    lab: RunningLab, served: subprocess.Popen[bytes]
) -> None:
    """What a sensor's run may do without a human (switch at once, proceed when an approval
    times out) is for runs the gateway started from an alert it checked: a switch created
    through the API naming the master as failed, with a made-up seal, waits for the site's
    approval; an emergency move created through the API proceeds on no timeout."""
    import yaml

    from tasks.alias import read_aliases

    master = lab.site.host("fts101").address
    assert read_aliases(lab.site)[0].addresses == [master]
    data = yaml.safe_load(lab.site_file.read_text())
    data["procedures"]["emergency-move"].update(
        {"approval": "required", "approval_timeout_s": 3, "on_approval_timeout": "proceed"}
    )
    timing_out = lab.site_file.parent / f"{lab.site_file.stem}-timeout.yaml"
    timing_out.write_text(yaml.safe_dump(data, sort_keys=False))
    switch = run_deployment(
        full_name("switch", lab.site),
        parameters={"failed_host": "fts101", "alert_id": "forged", "alert_seal": "1:00"},
        timeout=0,
    )
    move = run_deployment(
        full_name("emergency-move", lab.site),
        parameters={"site_file": str(timing_out), "host": "fts106"},
        timeout=0,
    )
    wait_for(lambda: _state(switch.id).is_paused(), 90, "the switch to ask for approval")
    assert read_aliases(lab.site)[0].addresses == [master]  # nothing switched meanwhile
    resume_with_input(switch.id, run_input={"decision": "reject", "who": "test"})
    wait_for(lambda: final_run(switch.id) and final_run(move.id), 120, "both runs to end")
    # read while serve runs: stopping it cancels, state forced, any run whose process has
    # not exited yet, even one that has just ended (Prefect's runner at shutdown)
    switched = _state(switch.id).message or ""
    said = _state(move.id).message or ""
    assert "rejected" in switched, switched
    assert read_aliases(lab.site)[0].addresses == [master]
    assert "rejected by policy" in said and "nothing changed" in said, said


def paused_move(site: Site) -> Any:
    """A clean move of fts101's agents to fts102 created through the API, once it waits for its
    approval (the site requires one: a run created through the API cannot switch it off)."""
    run = run_deployment(
        full_name("clean-move", site),
        parameters={"from_host": "fts101", "to_host": "fts102", "pause_for_approval": False},
        timeout=0,
    )
    wait_for(lambda: _state(run.id).is_paused(), 60, "the move to ask for approval")
    return run


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return ""


def _started_as(proc: subprocess.Popen[bytes], start: str, site: Site) -> None:
    """A move created through the API runs, paused for its approval, in the process `start`
    says: forked by the serve process's fork server (which has imported Prefect and the flows),
    or a fresh interpreter serve started itself (spawn); rejected, it ends Completed."""
    run = paused_move(site)
    try:
        servers = [c for c in _children(proc.pid) if "multiprocessing.forkserver" in _cmdline(c)]
        if start == "forkserver":
            assert len(servers) == 1, [_cmdline(c) for c in _children(proc.pid)]
            preloaded = _cmdline(servers[0])
            assert "prefect.flow_engine" in preloaded and "flows.clean_move" in preloaded
            runs = _children(servers[0])
        else:
            assert servers == []
            runs = [
                c
                for c in _children(proc.pid)
                if "multiprocessing" in _cmdline(c) and "resource_tracker" not in _cmdline(c)
            ]
        assert len(runs) == 1, "the paused run's process: " + str(
            {c: _cmdline(c) for c in _children(proc.pid)}
        )
    finally:
        resume_with_input(run.id, run_input={"decision": "reject", "who": "test"})

    wait_for(lambda: final_run(run.id), 60, "the rejected run to end")
    with get_client(sync_client=True) as client:
        st = client.read_flow_run(run.id).state
    assert st is not None and st.is_completed() and "rejected by test" in (st.message or "")


def test_a_served_run_is_forked_by_the_fork_server(
    lab: RunningLab, served: subprocess.Popen[bytes]
) -> None:
    _started_as(served, "forkserver", lab.site)


def test_a_served_flow_is_pickled_by_reference() -> None:
    """The runner hands a run's process the flow object, cloudpickled: by value, the flow's
    parameter annotations (clean-move's `mode: Mode`) would not resolve there."""
    import cloudpickle

    from flows.clean_move import clean_move
    from flows.prefect_private import pickle_flows_by_reference

    pickle_flows_by_reference()
    data = cloudpickle.dumps(clean_move)
    assert cloudpickle.loads(data) is clean_move
    check = (
        "import sys, cloudpickle; fl = cloudpickle.loads(sys.stdin.buffer.read()); "
        "print(fl.validate_parameters({'site_file': 's', 'from_host': 'a', 'to_host': 'b', "
        "'mode': 'staged'})['mode'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", check], input=data, capture_output=True, cwd=ROOT, timeout=60
    )
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode().strip() == "staged"


def test_a_run_created_through_the_api_loads_only_reviewed_site_files(
    lab: RunningLab, served: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    """The deployment's site_file parameter pointed at a file outside the site directories
    (here a copy of the lab's own site elsewhere): the run refuses it before reading it."""
    import shutil

    elsewhere = tmp_path / "not-reviewed" / "site.yaml"
    elsewhere.parent.mkdir()
    shutil.copy(lab.site_file, elsewhere)
    run = run_deployment(
        full_name("site-snapshot", lab.site),
        parameters={"site_file": str(elsewhere)},
        timeout=120,
    )
    # the same site by name: its file is in a site directory (serve's --site directory)
    named = run_deployment(
        full_name("site-snapshot", lab.site),
        parameters={"site_file": lab.site_file.stem},
        timeout=120,
    )
    assert run.state is not None and run.state.is_failed(), run.state
    assert "site directories" in (run.state.message or ""), run.state.message
    assert named.state is not None and named.state.is_completed(), named.state


def test_the_drift_watch_is_scheduled_and_the_switch_triggered() -> None:
    from infra.serve import build_deployments, deployment_entry

    deps = {
        deployment_entry(d.name): d
        for d in build_deployments(str(ROOT / "config" / "sites" / "lab.yaml"))
    }
    [schedule] = deps["drift-watch"].schedules
    assert schedule.schedule.interval.total_seconds() == 300
    [trigger] = deps["switch"].triggers
    assert "handover.alert.frontend_down" in trigger.expect
    assert "handover.alert.frontend_down" not in deps["emergency-move"].triggers[0].expect


def test_a_dead_front_end_host_also_starts_the_switch() -> None:
    from infra.serve import build_deployments, deployment_entry

    deps = {
        deployment_entry(d.name): d
        for d in build_deployments(str(ROOT / "config" / "sites" / "lab.yaml"))
    }
    [trigger] = deps["switch"].triggers
    assert "handover.alert.host_down" in trigger.expect
    assert trigger.match["handover.frontend"] in ("true", ["true"])
    assert "handover.alert.host_down" in deps["emergency-move"].triggers[0].expect


def test_a_site_of_web_tools_gets_the_geo_deployments_and_its_lost_site_trigger() -> None:
    from infra.gateway.starts import RunStarter, starts_for
    from infra.serve import build_deployments, deployment_entry

    geo = {
        deployment_entry(d.name): d
        for d in build_deployments(str(ROOT / "config" / "sites" / "geo-lab.yaml"))
    }
    # the agents' procedures are not a site of web tools', nor the geo ones a site's without geo
    assert set(geo) == {"geo-failover", "geo-failback", "geo-watch", "geo-site-down"}
    lab = {deployment_entry(d.name) for d in build_deployments(str(LAB_SITE))}
    assert not {n for n in lab if n.startswith("geo-")} and "emergency-move" in lab
    [trigger] = geo["geo-site-down"].triggers
    assert list(trigger.expect) == ["handover.alert.site_down"]
    # the gateway decides from the same triggers: a site_down event starts geo-site-down with the
    # geo site, its seal and its alert id; a host's event starts nothing on this site
    starter = RunStarter(load_site(ROOT / "config" / "sites" / "geo-lab.yaml"))
    resource = {
        "prefect.resource.id": "handover.geo-site.geo-lab.site-a",
        "handover.site": "geo-lab",
        "handover.service": "ops-tools",
        "handover.geo_site": "site-a",
    }
    event = {
        "id": "e1",
        "event": "handover.alert.site_down",
        "resource": resource,
        "payload": {"alert_seal": "1:ab", "source": "alertmanager", "summary": "site-a lost"},
    }
    [start] = starts_for(event, starter.rules)
    assert start.deployment == "geo-site-down"
    assert start.parameters["geo_site"] == "site-a"
    assert (start.parameters["alert_id"], start.parameters["alert_seal"]) == ("e1", "1:ab")
    host_event = {
        **event,
        "event": "handover.alert.host_down",
        "resource": {**resource, "prefect.resource.id": "handover.host.geo-lab.tool-a"},
    }
    assert starts_for(host_event, starter.rules) == []


@pytest.fixture(scope="module")
def pool_api() -> Iterator[str]:
    """Prefect's server on PostgreSQL, as a site that runs workers on several machines has it
    (`handover server start --db postgresql`): the worker tests take their runs from it. The
    suite's shared server keeps its SQLite, whose one writer two workers polling every half second
    and six runs contend for; that set-up is the one-machine demo's, not the workers'.
    From its first use to the module's end this process's client points at it: a later test
    of the module that needs the suite's shared server says so itself."""
    import shutil
    import tempfile

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from infra.pg_cluster import pg_bin_dir
    from infra.prefect_server import server_on_postgresql

    require(
        pg_bin_dir() is not None,
        "a PostgreSQL server (apt-get install postgresql)",
        need="lab",
    )
    work = Path(tempfile.mkdtemp(prefix="handover-test-pool-", dir="/var/tmp"))
    work.chmod(0o755)  # the server's PostgreSQL runs as postgres: it must reach work/pg
    try:
        with server_on_postgresql(work) as srv:
            with temporary_settings(updates={PREFECT_API_URL: srv.url}):
                yield srv.url
    finally:
        shutil.rmtree(work, ignore_errors=True)


POOL = "handover-test-workers"


@pytest.fixture(scope="module")
def pool_deploy(lab: RunningLab, pool_api: str) -> str:
    """`handover deploy --site LAB --pool POOL` against `pool_api`, once for the module's
    worker tests (each may run alone); returns its output."""
    env = {**os.environ, "PREFECT_API_URL": pool_api}
    deploy = subprocess.run(
        [sys.executable, "-m", "infra.cli", "deploy", "--site", str(lab.site_file), "--pool", POOL],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    return deploy.stdout


@contextlib.contextmanager
def workers(
    lab: RunningLab, api_url: str, pool: str, names: list[str], home: Path
) -> Iterator[dict[str, Path]]:
    """`handover worker --pool POOL` processes (`infra.worker.worker_processes`), one run at a
    time each; yields their logs by name."""
    with worker_processes(api_url, lab.site_file, pool, names, home, limit=1) as logs:
        yield logs


def _began(run_id: uuid.UUID) -> int:
    """How many times a run's process logged its beginning to the API."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), limit=200)
    return sum("Beginning flow run" in log.message for log in logs)


def _forked_runs(home: Path) -> dict[str, list[int]]:
    """Per worker of this test (by name), the run processes its fork server has started; and
    each fork server must have imported handover's flows."""
    found: dict[str, list[int]] = {}
    for pid in _worker_pids(home):
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        prefect_home = next(e for e in environ if e.startswith(f"PREFECT_HOME={home}/".encode()))
        name = Path(prefect_home.decode().split("=", 1)[1]).name
        found[name] = []
        for server in _children(pid):
            if "multiprocessing.forkserver" in _cmdline(server):
                assert "flows.clean_move" in _cmdline(server)
                found[name] += _children(server)
    return found


def test_two_workers_share_the_pool_and_start_each_run_once(
    lab: RunningLab, pool_api: str, pool_deploy: str, tmp_path: Path
) -> None:
    """`handover deploy --pool` creates the pool and puts the procedures in it; two workers
    (own names and homes, one run at a time each) take its runs, each run exactly once, started
    from their fork servers: while one worker holds a paused move, the other takes the runs."""
    pool = POOL
    assert f"work pool {pool} created (type process)" in pool_deploy
    assert f"(pool {pool}, " in pool_deploy
    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(full_name("site-snapshot", lab.site))
        assert dep.work_pool_name == pool

    def snapshots(n: int) -> list[Any]:
        runs = [run_deployment(full_name("site-snapshot", lab.site), timeout=0) for _ in range(n)]
        for run in runs:
            wait_final_or_explain(run.id, 120, logs)
        with get_client(sync_client=True) as client:
            states = [client.read_flow_run(r.id).state for r in runs]
        assert all(st is not None and st.is_completed() for st in states), states
        for run in runs:
            # each run began once: its process's own lines reach the API (batched, so wait)
            began = wait_for(lambda run=run: _began(run.id), 30, f"run {run.id}'s lines")
            assert began == 1, (run.id, began)
        return runs

    def ran_by(run: Any) -> list[str]:
        return [
            name
            for name, log in logs.items()
            if f"/runs/flow-run/{run.id}" in log.read_text(errors="replace")
        ]

    with workers(lab, pool_api, pool, ["worker-a", "worker-b"], tmp_path) as logs:
        # a move paused for its approval holds one worker's only slot, in a process its fork
        # server started (with handover's flows imported)
        move = paused_move(lab.site)
        try:
            forked = _forked_runs(tmp_path)
            busy = [name for name, children in forked.items() if children]
            assert len(busy) == 1 and len(forked[busy[0]]) == 1, forked
            [free] = set(logs) - set(busy)
            # the other worker takes every run meanwhile, each once
            for run in snapshots(3):
                wait_for(lambda run=run: ran_by(run), 15, f"run {run.id}'s lines in a log")
                assert ran_by(run) == [free], (run.id, ran_by(run))
        finally:
            resume_with_input(move.id, run_input={"decision": "reject", "who": "test"})
        wait_for(lambda: final_run(move.id), 60, "the rejected run to end")
        # both free again: every run still once, by either
        for run in snapshots(3):
            wait_for(lambda run=run: ran_by(run), 15, f"run {run.id}'s lines in a log")
            assert len(ran_by(run)) == 1, (run.id, ran_by(run))
        # what the exporter publishes as handover's own health: both workers online
        from tasks.run_counts import read_run_counts

        assert read_run_counts().workers.get(pool) == 2


def test_the_worker_runs_handovers_flows_only_and_in_its_own_environment(
    lab: RunningLab, pool_api: str, pool_deploy: str, tmp_path: Path
) -> None:
    """Whoever may create deployments through the API must not run code on a worker, which holds
    the site's keys: a deployment of another flow put in the pool (a shell pull step, a command
    job variable) is refused and runs nothing; a run of handover's own deployment whose job
    variables set a command and an environment (the Slack API's address and a bot token: the
    token would be sent there) runs handover's flow in the worker's environment."""
    from infra.fakeslack import FakeSlack

    pool = POOL
    marker = tmp_path / "ran"
    touch = f"touch {marker}"
    with get_client(sync_client=True) as client:
        foreign = client.create_deployment(
            flow_id=client.create_flow_from_name("not-handover"),
            name="evil",
            work_pool_name=pool,
            entrypoint="evil.py:evil",
            pull_steps=[{"prefect.deployments.steps.run_shell_script": {"script": touch}}],
            job_variables={"command": touch, "env": {"EVIL": "1"}},
        )
    with FakeSlack(tokens={"xoxb-stolen"}) as fake:
        with workers(lab, pool_api, pool, ["guard"], tmp_path) as logs:
            refused = run_deployment(foreign, timeout=0)
            wait_for(lambda: final_run(refused.id), 120, "the foreign run to end")
            state = _state(refused.id)
            assert state.is_failed(), state
            assert "refused by handover worker guard" in (state.message or "")
            assert "is not one of handover's" in (state.message or "")
            dry = run_deployment(
                full_name("clean-move", lab.site),
                parameters={"from_host": "fts101", "to_host": "fts102", "dry_run": True},
                job_variables={
                    "command": touch,
                    "env": {
                        "HANDOVER_SLACK_API_URL": fake.base_url,
                        "HANDOVER_SLACK_BOT_TOKEN": "xoxb-stolen",
                    },
                },
                timeout=0,
            )
            wait_for(lambda: final_run(dry.id), 120, "the dry run to end")
            assert _state(dry.id).is_completed(), _state(dry.id)
            text = logs["guard"].read_text(errors="replace")
        assert "ignored the run's job variable command, the run's job variable env" in text
        # the refusal is the run's handled end, not an infrastructure that never reported
        assert "Infrastructure returned without reporting" not in text, text
        assert fake.calls == [], [c.method for c in fake.calls]
    assert not marker.exists()


def _worker_pids(home: Path) -> list[int]:
    """The worker processes whose Prefect home is under `home` (this test's)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if f"PREFECT_HOME={home}/".encode() in environ and " worker " in _cmdline(int(proc.name)):
            pids.append(int(proc.name))
    return pids


def test_a_worker_killed_mid_move_the_procedure_finishes_on_the_other(
    lab: RunningLab, pool_api: str, pool_deploy: str, tmp_path: Path
) -> None:
    """Both workers of the pool are up; the one running a clean move dies with its machine
    (SIGKILL of its whole process group: worker, fork server and run) while a channel drains.
    The heartbeat automation marks the run Crashed, the recovery automation starts the same
    move with the same parameters, the other worker takes it, its service lock is taken over
    from the dead run at once, and the move converges: every agent on the target, no agent ever
    serving twice, no job lost."""
    from infra.crash_recovery import DEAD_AFTER_S

    place_on_primaries(lab)
    before = lab.lab.score()
    pool = POOL
    job = submit_long_job(lab, "CERN-RAL", 600)
    with workers(lab, pool_api, pool, ["crash-a", "crash-b"], tmp_path):
        first = paused_move(lab.site)
        resume_with_input(first.id, run_input={"decision": "approve", "who": "test"})
        wait_for(
            lambda: snapshot_site(lab.shell).channels.get("CERN-RAL") == "Inactive",
            60,
            "the move to set CERN-RAL Inactive and wait for its long transfer",
        )
        runner = [p for p in _worker_pids(tmp_path) if _runs_of(p)]
        assert len(runner) == 1, runner
        os.killpg(runner[0], signal.SIGKILL)
        killed = time.monotonic()

        wait_for(
            lambda: _state(first.id).is_crashed(), DEAD_AFTER_S + 60, "the dead run to be Crashed"
        )
        crashed_s = time.monotonic() - killed
        assert "no heartbeat" in (_state(first.id).message or "")

        def resumed() -> Any:
            with get_client(sync_client=True) as client:
                runs = client.read_flow_runs(
                    deployment_filter=DeploymentFilter(
                        id=DeploymentFilterId(any_=[first.deployment_id])
                    )
                )
            # runs of the recovery automation since the first (the module's earlier tests ran
            # the same move)
            again = [
                r
                for r in runs
                if r.created_by is not None
                and "AUTOMATION" in str(r.created_by.type).upper()
                and r.created is not None
                and first.created is not None
                and r.created > first.created
            ]
            assert len(again) <= 1, [(r.name, r.parameters) for r in again]
            return again[0] if again else None

        second = wait_for(resumed, 60, "the recovery automation's run")
        assert second.parameters == first.parameters
        # the site requires an approval: the new run asks again, with the live state
        wait_for(lambda: _state(second.id).is_paused(), 90, "the new run to ask for approval")
        resume_with_input(second.id, run_input={"decision": "approve", "who": "test"})
        end_transfer(lab, job)
        wait_for(lambda: _state(second.id).is_final(), 180, "the new run to end")
        converged_s = time.monotonic() - killed
        state = _state(second.id)
        assert state.is_completed(), state.message
        print(f"kill -> crashed {crashed_s:.1f} s, -> converged {converged_s:.1f} s")

    snap = snapshot_site(lab.shell)
    moved = [a.name for a in lab.site.agents_on("fts101")]
    for agent in moved:
        assert snap.where(agent) == ["fts102"], (agent, snap.where(agent))
    assert set(snap.channels.values()) == {"Active"}
    after = lab.lab.score()
    assert after.agents_running_twice == []
    assert after.jobs_lost == before.jobs_lost
    place_on_primaries(lab)


def _state(run_id: Any) -> Any:
    with get_client(sync_client=True) as client:
        st = client.read_flow_run(run_id).state
    assert st is not None
    return st


def _runs_of(worker_pid: int) -> list[int]:
    """The run processes a worker's fork server has forked."""
    return [
        run
        for server in _children(worker_pid)
        if "multiprocessing.forkserver" in _cmdline(server)
        for run in _children(server)
    ]


def test_a_paused_run_outlives_its_workers_restart_and_resumes(
    lab: RunningLab, pool_api: str, pool_deploy: str, tmp_path: Path
) -> None:
    """What `systemctl restart handover-worker` does for an upgrade (the unit's KillMode=process):
    SIGTERM to the worker alone. A clean move paused for its approval keeps waiting in its own
    process, sending its heartbeats (nothing marks it Crashed); a new worker takes the pool; the
    approval given afterwards resumes the run, which completes the move."""
    place_on_primaries(lab)
    before = lab.lab.score()
    with workers(lab, pool_api, POOL, ["restart-old"], tmp_path / "old"):
        move = paused_move(lab.site)
        [old] = _worker_pids(tmp_path / "old")
        [run_process] = _runs_of(old)
        os.kill(old, signal.SIGTERM)
        wait_for(lambda: not _alive(old), 30, "the old worker to stop")
        assert _alive(run_process), "the paused run's process died with its worker"
        stopped = dt.datetime.now(dt.UTC)
        with workers(lab, pool_api, POOL, ["restart-new"], tmp_path / "new"):
            # the run sends its own heartbeats: one comes after its worker is gone (a period is
            # 30 s), so the dead-run automation does not take it for dead
            wait_for(
                lambda: _heartbeat_since(move.id, stopped),
                HEARTBEAT_S + 30,
                "a heartbeat of the paused run after its worker stopped",
                interval=1,
            )
            assert _state(move.id).is_paused()
            resume_with_input(move.id, run_input={"decision": "approve", "who": "test"})
            wait_for(lambda: _state(move.id).is_final(), 180, "the resumed move to end")
    state = _state(move.id)
    assert state.is_completed(), state.message
    snap = snapshot_site(lab.shell)
    for agent in lab.site.agents_on("fts101"):
        assert snap.where(agent.name) == ["fts102"], (agent.name, snap.where(agent.name))
    after = lab.lab.score()
    assert after.agents_running_twice == []
    assert after.jobs_lost == before.jobs_lost
    place_on_primaries(lab)


def _heartbeat_since(run_id: Any, since: dt.datetime) -> bool:
    """Whether the run sent a heartbeat after `since`."""
    from prefect.events.filters import (
        EventFilter,
        EventNameFilter,
        EventOccurredFilter,
        EventResourceFilter,
    )

    with get_client(sync_client=True) as client:
        page = client.read_events(
            EventFilter(
                occurred=EventOccurredFilter(since=since),
                event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
                resource=EventResourceFilter(id=[f"prefect.flow-run.{run_id}"]),
            ),
            limit=1,
        )
    return bool(page.events)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_run_whose_process_died_before_its_first_heartbeat_is_crashed_and_run_again(
    lab: RunningLab, prefect_api: str, served: subprocess.Popen[bytes]
) -> None:
    """A run whose process never sent a heartbeat is marked Crashed by the heartbeat automation
    and started again by the recovery automation: one set Running (its process killed in the
    moment after its start, before its first heartbeat left its queue) and one a worker was
    starting (Pending: the worker killed then). Here neither has a process at all."""
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Pending, Running

    from infra.crash_recovery import DEAD_AFTER_S

    tag = uuid.uuid4().hex[:8]
    params = {
        state: {
            "from_host": "fts101",
            "to_host": "fts102",
            "dry_run": True,
            "requested_by": f"no-heartbeat-{state}-{tag}",
        }
        for state in ("running", "pending")
    }
    with temporary_settings({PREFECT_API_URL: prefect_api}):
        with get_client(sync_client=True) as client:
            dep = client.read_deployment_by_name(full_name("clean-move", lab.site))
            runs = {
                state: client.create_flow_run_from_deployment(
                    dep.id,
                    parameters=p,
                    state=Running() if state == "running" else Pending(),
                )
                for state, p in params.items()
            }
        for state, run in runs.items():
            wait_for(
                lambda run=run: _state(run.id).is_crashed(),
                DEAD_AFTER_S + 60,
                f"the silent {state} run to be marked Crashed",
                interval=1,
            )
            assert "no heartbeat" in (_state(run.id).message or "")

        def again(state: str) -> Any:
            with get_client(sync_client=True) as client:
                found = client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id]))
                )
            return next(
                (
                    r
                    for r in found
                    if r.id != runs[state].id
                    and r.parameters.get("requested_by") == params[state]["requested_by"]
                ),
                None,
            )

        for state in runs:
            rerun = wait_for(
                lambda state=state: again(state), 60, f"the {state} run's recovery", interval=1
            )
            final = wait_final_or_explain(rerun.id, 180, dict(SERVE_LOG)).state
            assert final is not None and final.is_completed(), (state, final)


def test_the_recovery_automation_refuses_a_procedure_that_crashed_max_crashes_times(
    lab: RunningLab, prefect_api: str, served: subprocess.Popen[bytes]
) -> None:
    """The real recovery automation behind `handover serve`: a dry-run move whose runs crash
    is started again after its first and second crash (and the new runs complete), but after
    the third with the same parameters the automation's run refuses to start, saying why."""
    import uuid

    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed, Running

    from flows.attempt import MAX_CRASHES

    params = {
        "from_host": "fts101",
        "to_host": "fts102",
        "dry_run": True,
        "requested_by": f"crash-loop-{uuid.uuid4().hex[:8]}",
    }

    def reruns(dep_id: Any) -> list[Any]:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep_id]))
            )
        return [
            r
            for r in runs
            if r.parameters.get("requested_by") == params["requested_by"]
            and r.created_by is not None
            and "AUTOMATION" in str(r.created_by.type).upper()
        ]

    from prefect.settings import PREFECT_API_URL, temporary_settings

    # this module's worker tests point the process at their own server for the module's rest
    with temporary_settings({PREFECT_API_URL: prefect_api}):
        with get_client(sync_client=True) as client:
            dep = client.read_deployment_by_name(full_name("clean-move", lab.site))
        for n in range(1, MAX_CRASHES + 1):
            with get_client(sync_client=True) as client:
                # created Running, so that no one takes it, then crashed as a dead process's is
                run = client.create_flow_run_from_deployment(
                    dep.id, parameters=params, state=Running()
                )
                client.set_flow_run_state(run.id, Crashed(message="test: crashed"), force=True)
            again = wait_for(
                lambda n=n: rs if len(rs := reruns(dep.id)) >= n else None,
                60,
                f"the recovery automation's run after crash {n}",
            )
            assert len(again) == n, [(r.name, r.parameters) for r in again]
            newest = max(again, key=lambda r: r.created)
            state = wait_final_or_explain(newest.id, 180, dict(SERVE_LOG)).state
            assert state is not None
            if n < MAX_CRASHES:
                assert state.type == StateType.COMPLETED, (n, state.message)
            else:
                assert state.type == StateType.FAILED, state.message
                assert f"crashed {MAX_CRASHES} times with these parameters" in (
                    state.message or ""
                ), state.message
