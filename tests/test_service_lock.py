"""The one-procedure-per-service lock against a real Prefect server: busy means busy, and only that.

A slow or failing Prefect API must never be reported as "a procedure is already running": on a
loaded machine that refusal sent operators looking for a run that did not exist.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from typing import Any

import pytest

from flows import service_lock as sl
from tests.conftest import ROOT, wait_for


def _service() -> str:
    return f"svc-{uuid.uuid4().hex[:8]}"


def test_a_held_service_is_refused_naming_the_holder(prefect_api: str) -> None:
    service = _service()
    with sl.service_lock("locktest", service, "clean-move"):
        with pytest.raises(sl.ServiceBusy) as refused:
            with sl.service_lock("locktest", service, "emergency-move"):
                pytest.fail("a second holder entered the lock")
    msg = str(refused.value)
    assert f"already running for service {service} of site locktest" in msg
    assert "clean-move run None (id None, started" in msg and f"pid {os.getpid()}" in msg
    # released on exit: the next procedure gets it
    with sl.service_lock("locktest", service, "emergency-move"):
        pass


def test_an_api_that_does_not_answer_in_time_is_not_called_busy(
    prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = _service()
    monkeypatch.setattr(sl, "ACQUIRE_TIMEOUT_S", 1e-6)
    with pytest.raises(sl.LockUnavailable) as refused:
        with sl.service_lock("locktest", service, "clean-move"):
            pytest.fail("entered the lock although the request timed out")
    msg = str(refused.value)
    assert "did not answer the lock request" in msg and "nothing was changed" in msg
    assert "already running" not in msg
    assert not isinstance(refused.value, sl.ServiceBusy)


def test_a_holder_whose_process_died_here_is_taken_over_at_once(prefect_api: str) -> None:
    service = _service()
    # a holder in another process, killed without releasing: its lease would hold for a minute
    script = (
        "import os, sys\n"
        "from flows.service_lock import service_lock\n"
        f"with service_lock('locktest', {service!r}, 'clean-move'):\n"
        "    print('held', flush=True)\n"
        "    sys.stdin.read()\n"
    )
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PREFECT_LOGGING_LEVEL": "WARNING"}
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with pytest.raises(sl.ServiceBusy, match=f"pid {proc.pid}"):
            with sl.service_lock("locktest", service, "emergency-move"):
                pass
        proc.kill()
        proc.wait(10)
        with sl.service_lock("locktest", service, "emergency-move"):
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def takes_lock(service: str) -> bool:
    """Whether another procedure takes the service's lock now (released at once)."""
    try:
        with sl.service_lock("locktest", service, "emergency-move"):
            return True
    except sl.ServiceBusy:
        return False


def hold_without_releasing(
    service: str, holder: dict[str, object] | None, lease_s: float = 600
) -> str:
    """Take the service's slot as a holder that then vanished (nothing renews or releases it,
    so the server reclaims it `lease_s` after); record `holder` in the Variable as a real
    holder would."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    name = sl.lock_name("locktest", service)
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
        granted = client.increment_concurrency_slots_with_lease([name], 1, "concurrency", lease_s)
        if holder is not None:
            sl._write_holder(client, name, {**holder, "lease": granted.json()["lease_id"]})
    return name


def test_a_holder_whose_run_has_ended_is_taken_over_at_once(prefect_api: str) -> None:
    from prefect import flow
    from prefect.context import FlowRunContext

    @flow
    def ended() -> str:
        ctx = FlowRunContext.get()
        assert ctx is not None and ctx.flow_run is not None
        return str(ctx.flow_run.id)

    for run_id in (ended(), str(uuid.uuid4())):  # a completed run, a run nobody knows
        service = _service()
        hold_without_releasing(
            service,
            {"procedure": "clean-move", "flow_run_id": run_id, "pid": 1, "hostname": "elsewhere"},
        )
        with sl.service_lock("locktest", service, "emergency-move"):
            pass  # taken over, not refused for the lease's ten minutes


def test_a_holder_whose_run_still_runs_is_not_taken_over(prefect_api: str) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    @flow(name="lock-holder")
    def holder() -> None:
        pass

    with get_client(sync_client=True) as client:
        run = client.create_flow_run(holder, state=Running())
    service = _service()
    hold_without_releasing(
        service,
        {"procedure": "clean-move", "flow_run_id": str(run.id), "pid": 1, "hostname": "elsewhere"},
    )
    with pytest.raises(sl.ServiceBusy, match=str(run.id)):
        with sl.service_lock("locktest", service, "emergency-move"):
            pytest.fail("took the service from a running holder")


def test_procedures_on_different_services_hold_their_locks_at_once(prefect_api: str) -> None:
    """Each service has its own lock: a move of one service never waits for, nor refuses, a
    move of another; the first service stays refused to others meanwhile."""
    first, second = _service(), _service()
    with sl.service_lock("locktest", first, "clean-move"):
        with sl.service_lock("locktest", second, "clean-move"):
            with pytest.raises(sl.ServiceBusy, match=first):
                with sl.service_lock("locktest", first, "emergency-move"):
                    pytest.fail("a second holder entered the first service's lock")


def test_a_slot_nobody_recorded_is_freed_after_the_orphan_bound(
    prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a slot just taken is not an orphan (the bound is generous: a loaded machine may take a
    # second or more between the acquisition and the check)
    monkeypatch.setattr(sl, "ORPHAN_AFTER_S", 20.0)
    service = _service()
    hold_without_releasing(service, None)
    with pytest.raises(sl.ServiceBusy, match="not yet recorded its name"):
        with sl.service_lock("locktest", service, "emergency-move"):
            pytest.fail("took a slot that was just acquired")
    monkeypatch.setattr(sl, "ORPHAN_AFTER_S", 1.0)

    wait_for(lambda: takes_lock(service), 20, "the orphaned slot to be freed")


def test_a_second_host_of_the_same_procedure_waits_for_the_service_others_are_refused(
    prefect_api: str,
) -> None:
    """Two boxes of one service lost together: the second host's emergency move waits for the
    first's (bounded); the same host's again, or another procedure, is refused at once."""
    import threading
    import time

    service = _service()
    got: dict[str, float] = {}

    def second() -> None:
        with sl.service_lock("locktest", service, "emergency-move", subject="h2", wait_s=60):
            got["at"] = time.monotonic()

    with sl.service_lock("locktest", service, "emergency-move", subject="h1"):
        t0 = time.monotonic()
        # the same host again, or another procedure: refused at once even when allowed to wait
        with pytest.raises(sl.ServiceBusy) as same:
            with sl.service_lock("locktest", service, "emergency-move", subject="h1", wait_s=60):
                pytest.fail("the same host's second move entered the lock")
        with pytest.raises(sl.ServiceBusy):
            with sl.service_lock("locktest", service, "clean-move", subject="h2", wait_s=60):
                pytest.fail("another procedure entered the lock")
        assert time.monotonic() - t0 < 30 and "waited" not in str(same.value)
        th = threading.Thread(target=second)
        th.start()
        time.sleep(2.5)
        assert "at" not in got  # it waits while the first holds the service
        left = time.monotonic()
    th.join(30)
    assert "at" in got and got["at"] >= left  # it entered once the first released it
    # a bounded wait: still held after wait_s is a refusal that says it waited
    with sl.service_lock("locktest", service, "emergency-move", subject="h1"):
        with pytest.raises(sl.ServiceBusy, match=r"waited 2 s for it"):
            with sl.service_lock("locktest", service, "emergency-move", subject="h3", wait_s=2):
                pytest.fail("entered a held lock")


def test_a_failover_waits_for_the_watchs_repair_and_nothing_else(prefect_api: str) -> None:
    """The geo watch repairs under the tool's lock for a few seconds: a failover behind it waits
    (bounded) instead of being refused; one that does not name it is refused at once."""
    import threading
    import time

    service = _service()
    got: dict[str, float] = {}

    def failover() -> None:
        with sl.service_lock(
            "locktest", service, "geo-failover", wait_s=60, behind=frozenset({"geo-watch"})
        ):
            got["at"] = time.monotonic()

    with sl.service_lock("locktest", service, "geo-watch", subject="portal"):
        with pytest.raises(sl.ServiceBusy):
            with sl.service_lock("locktest", service, "geo-failback", wait_s=60):
                pytest.fail("a run that does not wait for the watch entered the lock")
        th = threading.Thread(target=failover)
        th.start()
        time.sleep(2.5)
        assert "at" not in got  # it waits while the watch repairs
        left = time.monotonic()
    th.join(30)
    assert "at" in got and got["at"] >= left
    # the watch waits for nobody: a failover holding the tool refuses it at once
    with sl.service_lock("locktest", service, "geo-failover"):
        with pytest.raises(sl.ServiceBusy):
            with sl.service_lock("locktest", service, "geo-watch", behind=frozenset({"x"})):
                pytest.fail("the watch entered a held lock")


def test_a_waiting_run_is_not_refused_by_a_holder_not_yet_recorded(
    prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two hosts' moves started together: the second may look while the first holds the slot
    but has not yet written its record; it looks again instead of being refused."""
    import threading
    import time

    service = _service()
    real = sl._read_holder
    calls = {"n": 0}

    def not_yet(client: object, name: str) -> dict[str, object] | None:
        calls["n"] += 1
        return None if calls["n"] == 1 else real(client, name)

    got: dict[str, float] = {}

    def second() -> None:
        with sl.service_lock("locktest", service, "emergency-move", subject="h2", wait_s=60):
            got["at"] = time.monotonic()

    with sl.service_lock("locktest", service, "emergency-move", subject="h1"):
        monkeypatch.setattr(sl, "_read_holder", not_yet)
        th = threading.Thread(target=second)
        th.start()
        # hold until it has looked a second time (on a loaded machine its first look can come
        # late, and a fixed hold could end before the second)
        until = time.monotonic() + 30
        while calls["n"] < 2 and th.is_alive() and time.monotonic() < until:
            time.sleep(0.05)
        assert calls["n"] >= 2, "the waiting run never looked again"
        assert th.is_alive() and "at" not in got  # still waiting, not refused
        left = time.monotonic()
    th.join(30)
    assert got.get("at", 0) >= left
    # without leave to wait, the same moment is a refusal (nobody recorded: named as such)
    calls["n"] = 0
    with sl.service_lock("locktest", service, "clean-move", subject="h1"):
        with pytest.raises(sl.ServiceBusy, match="has not yet recorded its name"):
            with sl.service_lock("locktest", service, "clean-move", subject="h2"):
                pytest.fail("entered a held lock")


def _as_run(monkeypatch: pytest.MonkeyPatch, run: object) -> None:
    """The lock sees `run` as the flow run it is called from (a deployment's run: what a worker
    runs; a local flow call has no deployment)."""
    from types import SimpleNamespace

    class Context:
        @staticmethod
        def get() -> object:
            return SimpleNamespace(flow_run=run)

    monkeypatch.setattr(sl, "FlowRunContext", Context)


def _deployment_runs(params: list[dict[str, int]]) -> list[Any]:
    """Runs of a deployment of their own, created Running (nobody executes them)."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    @flow(name="lock-recovery")
    def procedure(x: int) -> None:
        del x

    with get_client(sync_client=True) as client:
        flow_id = client.create_flow(procedure)
        dep = client.create_deployment(
            flow_id=flow_id, name=f"lock-recovery-{uuid.uuid4().hex[:8]}"
        )
        return [
            client.create_flow_run_from_deployment(dep, parameters=p, state=Running())
            for p in params
        ]


def test_a_crashed_holders_service_is_kept_for_the_run_that_recovers_it(
    prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crashed run left its procedure half done: until the crash recovery's run (the same
    deployment, the same parameters) takes the service, another procedure is refused, as it
    would be were the holder alive; after `RECOVERY_RESERVE_S` anyone may take it."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    crashed, other, recovery = _deployment_runs([{"x": 1}, {"x": 2}, {"x": 1}])
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(crashed.id, Crashed(message="test"), force=True)
        crashed = client.read_flow_run(crashed.id)
    service = _service()
    hold_without_releasing(
        service,
        {"procedure": "clean-move", "flow_run_id": str(crashed.id), "pid": 1, "hostname": "x"},
    )
    # a local run, and a run of the same deployment with other parameters: refused
    with pytest.raises(sl.ServiceBusy, match="the crash recovery is starting its procedure"):
        with sl.service_lock("locktest", service, "emergency-move"):
            pytest.fail("took the service kept for the recovery")
    _as_run(monkeypatch, other)
    with pytest.raises(sl.ServiceBusy, match="kept for it"):
        with sl.service_lock("locktest", service, "clean-move"):
            pytest.fail("took the service kept for the recovery")
    # the recovery takes it over at once
    _as_run(monkeypatch, recovery)
    with sl.service_lock("locktest", service, "clean-move"):
        pass
    # past the reserve, a crashed holder's service is anyone's
    service = _service()
    hold_without_releasing(
        service,
        {"procedure": "clean-move", "flow_run_id": str(crashed.id), "pid": 1, "hostname": "x"},
    )
    monkeypatch.setattr(sl, "RECOVERY_RESERVE_S", 0.0)
    _as_run(monkeypatch, other)
    with sl.service_lock("locktest", service, "emergency-move"):
        pass


def test_a_recovery_waits_for_a_live_holder_instead_of_being_refused(
    prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The crash recovery's run finishes a half-done procedure: a live holder of the service
    makes it wait (up to `RECOVERY_WAIT_S`), not refuse; it takes the service once released."""
    import threading
    import time

    from prefect.client.schemas.objects import CreatedBy

    from flows.attempt import RESUME_NAME

    [run] = _deployment_runs([{"x": 1}])
    recovery = run.model_copy(
        update={"created_by": CreatedBy(type="AUTOMATION", display_value=RESUME_NAME)}
    )
    service = _service()
    held = threading.Event()
    released_at: list[float] = []

    def hold() -> None:
        with sl.service_lock("locktest", service, "emergency-move"):
            held.set()
            time.sleep(3)
            released_at.append(time.monotonic())

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(30)
        monkeypatch.setattr(sl, "RECOVERY_WAIT_S", 60.0)
        _as_run(monkeypatch, recovery)
        with sl.service_lock("locktest", service, "clean-move"):
            entered = time.monotonic()
    finally:
        holder.join(30)
    assert released_at and entered >= released_at[0]
    # a run that is no recovery is refused at once by a live holder
    from prefect.context import FlowRunContext

    monkeypatch.setattr(sl, "FlowRunContext", FlowRunContext)
    with sl.service_lock("locktest", service, "emergency-move"):
        with pytest.raises(sl.ServiceBusy):
            with sl.service_lock("locktest", service, "clean-move"):
                pytest.fail("a second holder entered")
