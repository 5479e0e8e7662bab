"""The service lock across a Prefect server restart: a clean move runs while its server is
stopped and started again; afterwards the service is free and a second procedure runs.

Prefect keeps concurrency leases in the server's memory unless told otherwise: a restart
then forgot the lease while the slot stayed taken, and every later procedure for the service was
refused for good. Both storages are tried: on disk (what `handover server start` configures) and
the in-memory default (the holder then gives its slot back by name).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows import service_lock as sl
from flows.clean_move import CleanMoveResult
from infra.move_process import start_clean_move
from infra.ports import free_port
from infra.prefect_server import RestartableServer, spawn
from tasks.site_state import snapshot_site
from tests.conftest import (
    ROOT,
    RunningLab,
    cli_move_argv,
    end_transfer,
    place_on_primaries,
    submit_long_job,
    wait_for,
)
from tests.test_service_lock import hold_without_releasing, takes_lock

P = "glite-transfer-channel-agent-urlcopy-"
STORAGES = {
    "on-disk": sl.LEASE_STORAGE,
    "in-memory": "prefect.server.concurrency.lease_storage.memory",
}


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[RestartableServer]:
    """One server per lease storage, shared by the module's tests of that storage. Its lease
    repossessor looks every second instead of every 15 s: a dead holder's slot is reclaimed
    within a second of its lease running out, which is the part under test."""
    srv = RestartableServer(
        tmp_path_factory.mktemp("prefect-home"),
        {
            "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": STORAGES[request.param],
            "PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": "1",
        },
    )
    srv.start()
    try:
        with temporary_settings({PREFECT_API_URL: srv.url}):
            yield srv
    finally:
        srv.stop()


def _slots(name: str) -> int:
    with get_client(sync_client=True) as client:
        return int(client.read_global_concurrency_limit_by_name(name).active_slots)


@pytest.mark.parametrize("server", list(STORAGES), indirect=True)
def test_a_server_restart_mid_move_leaves_the_service_free(
    lab: RunningLab, server: RestartableServer
) -> None:
    place_on_primaries(lab)
    before = lab.lab.score()
    job = submit_long_job(lab, "CERN-CERN", 60)
    env = {**os.environ, "PREFECT_API_URL": server.url, "PREFECT_LOGGING_LEVEL": "WARNING"}
    move = start_clean_move(lab.site_file, "fts101", "fts102", env=env)
    try:
        wait_for(
            lambda: snapshot_site(lab.shell, ["fts102"]).hosts[0].runs(P + "CERN-RAL"),
            90,
            "the move to hold the service and move a first agent",
        )
        server.stop()
        time.sleep(3)  # the server is down for a while, as in a real restart
        server.start()
        end_transfer(lab, job)  # CERN-CERN may now drain
        out, _ = move.communicate(timeout=240)
    finally:
        if move.poll() is None:
            os.killpg(move.pid, signal.SIGKILL)
            move.wait(10)
        end_transfer(lab, job)
    first = CleanMoveResult.model_validate_json(out)
    assert first.status == "completed", first.summary
    name = sl.lock_name(lab.site.site, lab.site.service.name)
    wait_for(lambda: _slots(name) == 0, 20, "the service's slot to be free after the move")
    # a second procedure for the service is not refused (its own process: Prefect's slot
    # service is one per process and keeps the first server it talked to)
    back = subprocess.run(
        cli_move_argv(lab, "fts102", "fts101"),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    second = CleanMoveResult.model_validate_json(back.stdout)
    assert second.status == "completed", second.summary
    assert _slots(name) == 0
    after = lab.lab.score()
    assert after.jobs_lost == before.jobs_lost and after.agents_running_twice == []


@pytest.mark.server
@pytest.mark.parametrize("server", ["on-disk"], indirect=True)
def test_a_holder_that_died_on_another_machine_is_freed_when_its_lease_runs_out(
    server: RestartableServer,
) -> None:
    """A holder on another machine died (its run still says Running: nobody marked it yet):
    nothing here can tell it is dead, so its service stays refused, naming it, until the
    server reclaims its slot, one lease after its last renewal. (The suite's shared server is
    Prefect's ephemeral one, which runs no lease repossessor: this needs a server as
    `handover server start` runs it.)"""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    @flow(name="lock-holder-elsewhere")
    def holder() -> None:
        pass

    with get_client(sync_client=True) as client:
        run = client.create_flow_run(holder, state=Running())
    service = f"svc-{uuid.uuid4().hex[:8]}"
    hold_without_releasing(
        service,
        {"procedure": "clean-move", "flow_run_id": str(run.id), "pid": 1, "hostname": "elsewhere"},
        lease_s=60,  # the least the server allows (handover's own is LEASE_S, 60 s too)
    )
    with pytest.raises(sl.ServiceBusy, match="on elsewhere"):
        with sl.service_lock("locktest", service, "emergency-move"):
            pytest.fail("took the service before the dead holder's lease ran out")

    # the lease, then the server's repossessor loop (1 s here, 15 s by default), and a loaded
    # machine
    wait_for(lambda: takes_lock(service), 150, "the dead holder's slot to be reclaimed")


def test_the_servers_handover_starts_keep_leases_on_disk(tmp_path: Path) -> None:
    """`handover server start`, the benches and this suite's own servers use the on-disk
    lease storage; their UI calls the API on the port they listen on, not Prefect's 4200."""
    port = free_port()
    proc = spawn(tmp_path / "h", "127.0.0.1", port, {})
    environ = Path(f"/proc/{proc.pid}/environ")
    try:
        # Popen returns once the exec has begun; the kernel sets the new process's environment
        # a moment later, and until then the file reads empty
        text = wait_for(environ.read_bytes, 10, "the server's environment to be readable")
        env = text.split(b"\0")  # type: ignore[attr-defined]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert f"PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE={sl.LEASE_STORAGE}".encode() in env
    assert f"PREFECT_UI_API_URL=http://127.0.0.1:{port}/api".encode() in env
