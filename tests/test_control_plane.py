"""Prefect without a single server (`handover server start --ha`, infra/control_plane.py): two API
servers and the background services on PostgreSQL and Redis, behind HAProxy, each part a real
process of its own. A part is killed with SIGKILL, as a crash leaves it, and what it served must
go on: a concurrency lease granted by the killed API server, a flow run talking to the API
through the balancer, the leases across a Redis restart."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

from infra.control_plane import ControlPlane
from infra.plane_config import haproxy_config, redis_config
from infra.ports import free_port
from tests.conftest import ROOT, require, wait_for
from tests.test_prefect_server import _get

HANDOVER = [sys.executable, "-m", "infra.cli"]
#: a flow that talks to the API for about five seconds (a task run every 0.4 s)
FLOW = """
import sys, time
from prefect import flow, task

@task
def step(i: int) -> int:
    time.sleep(0.4)
    return i

@flow(flow_run_name=sys.argv[1])
def through_balancer(n: int = 12) -> int:
    return sum(step(i) for i in range(n))

print("RESULT", through_balancer())
"""


def _handover(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HANDOVER, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
    )


@pytest.fixture(scope="module")
def plane() -> Iterator[ControlPlane]:
    """A plane started by `handover server start --ha` in a directory of its own, shared by the
    module's tests (each leaves every part running); stopped at the end."""
    require(
        shutil.which("redis-server") is not None and shutil.which("haproxy") is not None,
        "redis-server and haproxy (apt-get install redis-server haproxy)",
        need="lab",
    )
    work = Path(tempfile.mkdtemp(prefix="handover-test-plane-", dir="/var/tmp"))
    work.chmod(0o755)  # its PostgreSQL runs as postgres: it must reach work/pg
    home = work / "home"
    port = free_port()
    started = _handover(
        "server",
        "start",
        "--ha",
        "--home",
        str(home),
        "--port",
        str(port),
        "--api-ports",
        f"{free_port()},{free_port()}",
        "--redis-port",
        str(free_port()),
        "--pg-port",
        str(free_port()),
        "--pg-dir",
        str(work / "pg"),
    )
    found = ControlPlane.of_home(home)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert found is not None
        auth = (home / "api-auth").read_text().strip()
        with temporary_settings({PREFECT_API_URL: found.url, PREFECT_API_AUTH_STRING: auth}):
            yield found
    finally:
        if found is not None:
            found.stop()
        shutil.rmtree(work, ignore_errors=True)


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def _limit(name: str) -> None:
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))


def _acquire(name: str) -> str:
    with get_client(sync_client=True) as client:
        return str(
            client.increment_concurrency_slots_with_lease([name], 1, "concurrency", 120).json()[
                "lease_id"
            ]
        )


def _taken(name: str) -> bool:
    """Whether the slot of `name` is refused to a new holder (HTTP 423)."""
    try:
        lease = _acquire(name)
    except httpx.HTTPStatusError as exc:
        assert exc.response.status_code == 423, exc
        return True
    with get_client(sync_client=True) as client:
        client.release_concurrency_slots_with_lease(uuid.UUID(lease))
    return False


@pytest.mark.lab
def test_every_part_runs_and_the_balancer_requires_the_auth_string(
    plane: ControlPlane,
) -> None:
    status = _handover("server", "status", "--home", str(plane.home))
    assert status.returncode == 0, status.stdout + status.stderr
    for part in ("postgresql", "redis", "api-1", "api-2", "services", "balancer"):
        assert any(line.split()[:2] == [part, "running"] for line in status.stdout.splitlines()), (
            status.stdout
        )
    auth = (plane.home / "api-auth").read_text().strip()
    assert _get(f"{plane.url}/health") == 200
    assert _get(f"{plane.url}/admin/version") == 401
    assert _get(f"{plane.url}/admin/version", auth) == 200
    for i in (1, 2):
        assert _get(f"{plane.api_url(i)}/admin/version", auth) == 200
    # every Prefect process shares Redis for its leases and messages, and none migrates
    for part in ("api-1", "api-2", "services"):
        pid = plane.pid(part)
        assert pid is not None
        env = _environ(pid)
        assert env["PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"] == "prefect_redis.lease_storage"
        assert env["PREFECT_MESSAGING_BROKER"] == "prefect_redis.messaging"
        assert env["PREFECT_API_DATABASE_MIGRATE_ON_START"] == "false"
        assert env["PREFECT_HOME"] == str(plane.home / part)
    # Redis's password and the database's are the home's, private
    for name in ("redis-password", "redis/redis.conf", "postgresql-password", "api-auth"):
        assert (plane.home / name).stat().st_mode & 0o777 == 0o600, name
    assert plane.home.stat().st_mode & 0o777 == 0o700


@pytest.mark.lab
def test_a_lease_outlives_the_api_server_that_granted_it(plane: ControlPlane) -> None:
    name = f"test-plane-{uuid.uuid4().hex[:8]}"
    with temporary_settings({PREFECT_API_URL: plane.api_url(1)}):
        _limit(name)
        lease = _acquire(name)
    import redis

    keys = redis.Redis(port=plane.spec.redis_port, password=plane.redis_password()).keys(
        f"*{lease}*"
    )
    assert keys, "the lease is not kept in Redis"
    assert plane.kill("api-1")
    try:
        assert plane.pid("api-1") is None
        # the balancer takes it out (what HandoverApiServerDown pages on)
        wait_for(
            lambda: _server_state(plane, "api-1") == "DOWN",
            30,
            "the balancer's metrics to show api-1 down",
            interval=0.5,
        )
        assert _server_state(plane, "api-2") == "UP"
        with temporary_settings({PREFECT_API_URL: plane.api_url(2)}):
            with get_client(sync_client=True) as client:
                # the other server knows the lease: its holder renews it there, nobody else
                # gets the slot, and its release frees it
                assert client.renew_concurrency_lease(uuid.UUID(lease), 120).status_code == 204
                assert client.read_global_concurrency_limit_by_name(name).active_slots == 1
                assert _taken(name)
                client.release_concurrency_slots_with_lease(uuid.UUID(lease))
                assert client.read_global_concurrency_limit_by_name(name).active_slots == 0
            assert not _taken(name)
    finally:
        plane.start_part("api-1")
    assert _get(f"{plane.api_url(1)}/health") == 200
    wait_for(
        lambda: _server_state(plane, "api-1") == "UP",
        30,
        "the balancer's metrics to show api-1 back",
        interval=0.5,
    )


def _server_state(plane: ControlPlane, server: str) -> str | None:
    """An API server's state in the balancer's own metrics (HAProxy's exporter)."""
    assert plane.metrics_url is not None
    with urllib.request.urlopen(plane.metrics_url, timeout=5) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith("haproxy_server_status{") and f'server="{server}"' in line:
            if line.rsplit(" ", 1)[1] == "1":
                return line.split('state="', 1)[1].split('"', 1)[0]
    return None


def _run_flow(name: str, code: str = FLOW) -> subprocess.Popen[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PREFECT_API_AUTH_STRING": str(PREFECT_API_AUTH_STRING.value()),
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    return subprocess.Popen(
        [sys.executable, "-c", code, name],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )


def _task_runs_done(name: str) -> int:
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterName,
        TaskRunFilter,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as client:
        done = client.read_task_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])),
            task_run_filter=TaskRunFilter(
                state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.COMPLETED]))
            ),
        )
    return len(done)


def _state_of(name: str) -> str | None:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name]))
        )
    return runs[0].state.type.value if runs and runs[0].state else None


@pytest.mark.lab
@pytest.mark.parametrize("victim", ["api-2", "services"])
def test_a_run_goes_on_when_a_server_process_is_killed_under_it(
    plane: ControlPlane, victim: str
) -> None:
    name = f"plane-{victim}-{uuid.uuid4().hex[:6]}"
    proc = _run_flow(name)
    try:
        wait_for(lambda: _state_of(name) == "RUNNING", 90, f"run {name} running", interval=0.5)
        # mid-run: some task runs reported through the balancer first
        wait_for(lambda: _task_runs_done(name) >= 2, 60, f"{name}'s first tasks", interval=0.2)
        assert plane.kill(victim)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        plane.start_part(victim)
    assert proc.returncode == 0, out
    assert "RESULT 66" in out, out
    wait_for(
        lambda: _state_of(name) == "COMPLETED", 30, f"run {name} recorded Completed", interval=0.5
    )


@pytest.mark.lab
def test_redis_restarted_keeps_its_leases_and_the_plane_serves_again(
    plane: ControlPlane,
) -> None:
    name = f"test-plane-{uuid.uuid4().hex[:8]}"
    _limit(name)
    lease = _acquire(name)
    assert plane.kill("redis")
    plane.start_part("redis")

    def renewed() -> bool:
        # as the lock's holder does: a renewal that fails (an API server whose connection to
        # Redis is still being made again answers 500) is tried again; a lease Redis lost
        # would be refused every time (404)
        try:
            with get_client(sync_client=True) as client:
                return client.renew_concurrency_lease(uuid.UUID(lease), 120).status_code == 204
        except httpx.HTTPStatusError as exc:
            assert exc.response.status_code != 404, "Redis lost the lease"
            return False

    wait_for(renewed, 30, "the lease renewed after Redis's restart", interval=0.5)
    with get_client(sync_client=True) as client:
        assert _taken(name)
        client.release_concurrency_slots_with_lease(uuid.UUID(lease))
    assert not _taken(name)
    # the API servers and the services reconnect: a run goes through end to end
    run = f"plane-after-redis-{uuid.uuid4().hex[:6]}"
    proc = _run_flow(run)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "RESULT 66" in out, out


PAUSED_FLOW = """
import sys
from prefect import flow
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput

class Decision(RunInput):
    decision: str

@flow(flow_run_name=sys.argv[1])
def waits_for_a_decision() -> str:
    answer = pause_flow_run(wait_for_input=Decision, timeout=900, poll_interval=1)
    return answer.decision

print("RESULT", waits_for_a_decision())
"""


@pytest.mark.lab
def test_a_paused_run_resumes_after_every_server_process_is_upgraded_in_turn(
    plane: ControlPlane,
) -> None:
    """What upgrading the server does (a new Prefect: the schema migrated, each process started
    again on it), one process at a time so the balancer always has an API server: a run
    waiting for its approval keeps waiting, and the approval given afterwards resumes it."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.flow_runs import resume_flow_run

    name = f"plane-paused-{uuid.uuid4().hex[:6]}"
    proc = _run_flow(name, PAUSED_FLOW)
    try:
        wait_for(lambda: _state_of(name) == "PAUSED", 90, f"run {name} paused", interval=0.5)
        before = {part: plane.pid(part) for part in (*plane.api_names, "services")}
        for part in (*plane.api_names, "services"):
            plane.stop_part(part)
            plane.migrate()
            plane.start_part(part)
        after = {part: plane.pid(part) for part in before}
        assert all(after[p] not in (None, before[p]) for p in before), (before, after)
        assert _state_of(name) == "PAUSED"
        with get_client(sync_client=True) as client:
            [run] = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name]))
            )
        resume_flow_run(run.id, run_input={"decision": "approve"})
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "RESULT approve" in out, out
    wait_for(lambda: _state_of(name) == "COMPLETED", 30, f"run {name} Completed", interval=0.5)


@pytest.mark.lab
def test_server_stop_stops_every_part(plane: ControlPlane) -> None:
    # the module's last test: the fixture's teardown finds nothing left to stop
    stopped = _handover("server", "stop", "--home", str(plane.home))
    assert stopped.returncode == 0, stopped.stderr
    assert "control plane stopped" in stopped.stdout
    assert not any(plane.running().values()), plane.running()
    status = _handover("server", "status", "--home", str(plane.home))
    assert status.returncode == 1
    assert status.stdout.count("not running") == len(plane.part_names), status.stdout


@pytest.mark.unit
def test_the_balancer_checks_each_api_server_and_retries_elsewhere() -> None:
    cfg = haproxy_config("127.0.0.1", 4200, [("10.0.0.1", 4200), ("10.0.0.2", 4200)])
    assert "bind 127.0.0.1:4200" in cfg
    assert "option httpchk GET /api/health" in cfg
    assert "server api-1 10.0.0.1:4200 check" in cfg
    assert "server api-2 10.0.0.2:4200 check" in cfg
    assert "option redispatch" in cfg  # a refused connection goes to the other server
    assert "timeout tunnel" in cfg  # the event websockets stay open
    if shutil.which("haproxy"):
        with tempfile.NamedTemporaryFile("w", suffix=".cfg") as f:
            f.write(cfg)
            f.flush()
            check = subprocess.run(
                ["haproxy", "-c", "-f", f.name], capture_output=True, text=True, check=False
            )
        assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.unit
def test_redis_keeps_an_append_only_file_behind_a_password() -> None:
    cfg = redis_config(6390, Path("/var/lib/handover/plane/redis"), "s3cret")
    assert "requirepass s3cret" in cfg
    assert "bind 127.0.0.1" in cfg
    assert "appendonly yes" in cfg


@pytest.mark.unit
def test_ha_refuses_sqlite_and_a_single_api_server(tmp_path: Path) -> None:
    refused = _handover("server", "start", "--ha", "--db", "sqlite", "--home", str(tmp_path / "h"))
    assert refused.returncode == 1
    assert "--ha needs PostgreSQL" in refused.stdout
    one = _handover("server", "start", "--ha", "--api-servers", "1", "--home", str(tmp_path / "h"))
    assert one.returncode == 1
    assert "at least 2" in one.stdout
    assert not (tmp_path / "h").exists()
