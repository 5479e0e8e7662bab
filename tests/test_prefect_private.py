"""The private parts of Prefect that handover relies on (flows/prefect_private.py) are still there
and still work as handover uses them.

Run after every Prefect upgrade (docs/how-to/upgrade.md): each failure names the part that
changed, what handover uses it for, and where. No server, no process is started.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import multiprocessing
import uuid
from typing import Any

import prefect
import pytest

from flows import prefect_private

WHERE = "see flows/prefect_private.py"


def _resolve(dotted: str) -> Any:
    module, _, name = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"{dotted} is gone in Prefect {prefect.__version__} ({exc}); {WHERE}")


def _takes(dotted: str, fn: Any, *args: Any, **kwargs: Any) -> None:
    """`fn` (named `dotted`) accepts the arguments handover passes it."""
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except TypeError as exc:
        pytest.fail(
            f"{dotted} no longer takes {sorted(kwargs)} (and {len(args)} positional) in Prefect "
            f"{prefect.__version__}: {exc}; its signature is {inspect.signature(fn)}; {WHERE}"
        )


@pytest.mark.parametrize("dotted", prefect_private.PRIVATE_NAMES)
def test_every_private_name_imports(dotted: str) -> None:
    _resolve(dotted)


def test_the_flow_run_executor_context_is_used_as_handover_uses_it() -> None:
    dotted = "prefect.runner._flow_run_executor.FlowRunExecutorContext"
    context = _resolve(dotted)
    _takes(dotted, context)
    _takes(
        f"{dotted}.create_executor",
        context.create_executor,
        "self",
        "flow_run",
        "starter",
        resolve_flow=None,
        propose_submitting=False,
    )
    # set on entering the context (which needs a server): read in its source
    assert "self.control_channel =" in inspect.getsource(context.__aenter__), (
        f"{dotted} no longer sets control_channel when entered; {WHERE}"
    )
    executor = _resolve("prefect.runner._flow_run_executor.FlowRunExecutor")
    _takes(
        "prefect.runner._flow_run_executor.FlowRunExecutor.submit",
        executor.submit,
        "self",
        task_status=None,
    )
    result = _resolve("prefect.runner._flow_run_executor.FlowRunExecutionResult")
    fields = {f.name for f in dataclasses.fields(result)}
    assert {"handle", "status_code"} <= fields, (
        f"prefect.runner._flow_run_executor.FlowRunExecutionResult has fields {sorted(fields)}, "
        f"no longer handle and status_code; {WHERE}"
    )
    handle = _resolve("prefect.runner._process_manager.ProcessHandle")
    assert isinstance(inspect.getattr_static(handle, "pid", None), property), (
        f"prefect.runner._process_manager.ProcessHandle has no pid property any more; {WHERE}"
    )


def test_the_direct_subprocess_starter_takes_a_flow_object() -> None:
    dotted = "prefect.runner._starter_direct.DirectSubprocessStarter"
    starter = _resolve(dotted)
    _takes(
        dotted,
        starter,
        flow=None,
        deployment_name="clean-move",
        heartbeat_seconds=30,
        control_channel=None,
    )
    _takes(f"{dotted}.start", starter.start, "self", "flow_run", task_status=None)
    assert "run_flow_in_subprocess" in inspect.getsource(starter.start), (
        f"{dotted}.start no longer starts the flow with run_flow_in_subprocess (which the fork "
        f"server and the pickling by reference act on); {WHERE}"
    )


class _FakeProcess:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs

    def start(self) -> None:
        pass


class _FakeContext:
    """A multiprocessing context that records the processes asked of it and starts none."""

    def __init__(self) -> None:
        self.processes: list[_FakeProcess] = []

    def Process(self, **kwargs: Any) -> _FakeProcess:
        self.processes.append(_FakeProcess(**kwargs))
        return self.processes[-1]


def test_a_flow_run_process_comes_from_the_given_context_with_the_flow_by_reference(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`start_flow_runs_with` decides where `run_flow_in_subprocess` starts the run's process,
    and the flow object travels to it by reference (`pickle_flows_by_reference`)."""
    import prefect.flow_engine
    from prefect.client.schemas.objects import FlowRun

    from flows.site_snapshot import site_snapshot

    dotted = "prefect.flow_engine.run_flow_in_subprocess"
    assert prefect.flow_engine.multiprocessing is multiprocessing, (
        f"{prefect_private.FLOW_ENGINE} no longer has the module global multiprocessing that "
        f"{dotted} asks for its spawn context; {WHERE}"
    )
    monkeypatch.setattr(prefect.flow_engine, "multiprocessing", multiprocessing)  # restored after
    fake = _FakeContext()
    prefect_private.start_flow_runs_with(fake)
    prefect_private.pickle_flows_by_reference()
    _takes(dotted, prefect.flow_engine.run_flow_in_subprocess, site_snapshot, flow_run=None, env={})
    prefect.flow_engine.run_flow_in_subprocess(
        site_snapshot, flow_run=FlowRun(flow_id=uuid.uuid4()), env={}
    )
    assert len(fake.processes) == 1, (
        f"{dotted} no longer starts its process from multiprocessing.get_context('spawn') read "
        f"in {prefect_private.FLOW_ENGINE}: the fork server would not be used; {WHERE}"
    )
    payload = b"".join(a for a in fake.processes[0].kwargs.get("args", ()) if isinstance(a, bytes))
    assert b"_module_attribute" in payload and b"flows.site_snapshot" in payload, (
        f"{dotted} no longer hands the flow to its process cloudpickled with the copyreg "
        f"reducers (the flow went by value, its annotations would not resolve); {WHERE}"
    )


def test_other_start_methods_are_multiprocessings_own(monkeypatch: pytest.MonkeyPatch) -> None:
    import prefect.flow_engine

    monkeypatch.setattr(prefect.flow_engine, "multiprocessing", multiprocessing)
    fake = _FakeContext()
    prefect_private.start_flow_runs_with(fake)
    patched: Any = prefect.flow_engine.multiprocessing
    assert patched.get_context("spawn") is fake
    assert patched.get_context("fork") is multiprocessing.get_context("fork")
    assert patched.cpu_count is multiprocessing.cpu_count


def test_the_lease_storage_that_outlives_a_restart_is_there() -> None:
    from flows.service_lock import LEASE_STORAGE

    module = importlib.import_module(LEASE_STORAGE)
    assert hasattr(module, "ConcurrencyLeaseStorage"), (
        f"{LEASE_STORAGE} has no ConcurrencyLeaseStorage in Prefect {prefect.__version__}: "
        "`handover server start` would fail (PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE); "
        "see flows/service_lock.py"
    )


def _ended_process() -> Any:
    """A real child process that has run and been joined: its PID is free for the kernel."""
    process = multiprocessing.get_context("fork").Process(target=lambda: None)
    process.start()
    process.join(10)
    assert process.exitcode == 0
    return process


def _record_signals(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Record every signal sent; each then fails as it does for a PID nobody has."""
    import os

    sent: list[tuple[int, int]] = []

    def record(pid: int, sig: int) -> None:
        sent.append((pid, sig))
        raise ProcessLookupError(pid)

    monkeypatch.setattr(os, "kill", record)
    monkeypatch.setattr(os, "killpg", record)
    return sent


def _keep_handle_class(monkeypatch: pytest.MonkeyPatch, handle_class: Any) -> None:
    """Undo `never_signal_ended_processes` after the test (it patches two classes)."""
    for name in ("is_alive", "graceful_kill", "hard_kill"):
        monkeypatch.setattr(handle_class, name, getattr(handle_class, name))
    monkeypatch.setattr(handle_class, "_handover_guarded", False, raising=False)
    cancellation = _resolve("prefect.runner._cancellation_manager.CancellationManager")
    monkeypatch.setattr(cancellation, "cancel", cancellation.cancel)


def test_prefects_own_handle_signals_the_pid_of_an_ended_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Why the guard exists: unguarded, Prefect signals whatever now has the PID. When this fails,
    Prefect has fixed it and `never_signal_ended_processes` can go."""
    handle_class = _resolve("prefect.runner._process_manager.ProcessHandle")
    _keep_handle_class(monkeypatch, handle_class)
    handle = handle_class(_ended_process())
    sent = _record_signals(monkeypatch)
    with pytest.raises(ProcessLookupError):
        handle.graceful_kill()
    assert sent, (
        f"Prefect {prefect.__version__} no longer signals an ended process's PID: "
        f"never_signal_ended_processes may be dropped; {WHERE}"
    )


def test_the_guard_never_signals_an_ended_process_even_when_the_runner_kills_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import anyio

    handle_class = _resolve("prefect.runner._process_manager.ProcessHandle")
    manager_class = _resolve("prefect.runner._process_manager.ProcessManager")
    _keep_handle_class(monkeypatch, handle_class)
    prefect_private.never_signal_ended_processes()
    prefect_private.never_signal_ended_processes()  # idempotent: wrapped once
    handle = handle_class(_ended_process())
    sent = _record_signals(monkeypatch)
    assert not handle.is_alive()
    with pytest.raises(ProcessLookupError):
        handle.hard_kill()
    run_id = uuid.uuid4()

    async def stop_as_the_runner_does() -> None:
        async with manager_class() as manager:
            await manager.add(run_id, handle)
            await manager.kill(run_id, grace_seconds=1)
        # leaving the manager kills every run it still tracks, as a stopping runner does

    anyio.run(stop_as_the_runner_does)
    assert sent == [], f"signals sent to a freed PID: {sent}"


def _pause_until_signalled(ready: Any) -> None:
    import signal

    # a handler the test process installed (Prefect's, for one) is inherited by the fork
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    ready.set()
    signal.pause()


def test_the_guard_still_signals_a_live_process(monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    handle_class = _resolve("prefect.runner._process_manager.ProcessHandle")
    _keep_handle_class(monkeypatch, handle_class)
    prefect_private.never_signal_ended_processes()
    fork = multiprocessing.get_context("fork")
    ready = fork.Event()
    process = fork.Process(target=_pause_until_signalled, args=(ready,))
    process.start()
    try:
        assert ready.wait(10), "the child did not start"
        handle = handle_class(process)
        assert handle.is_alive()
        handle.graceful_kill()
        process.join(10)
        assert process.exitcode == -signal.SIGTERM
    finally:
        if process.is_alive():
            process.kill()
            process.join(10)


class _Recorder:
    """Stands for the runner's hook runner, state proposer and event emitter: records calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        async def record(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return (None, None) if name == "get_flow_and_deployment" else True

        return record


def test_a_stopping_runner_leaves_an_ended_run_in_the_state_it_ended_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Unguarded, the runner's stop forces Cancelled over the Completed its process reported."""
    import anyio
    from prefect.client.schemas.objects import FlowRun
    from prefect.states import Completed

    handle_class = _resolve("prefect.runner._process_manager.ProcessHandle")
    manager_class = _resolve("prefect.runner._process_manager.ProcessManager")
    cancellation_class = _resolve("prefect.runner._cancellation_manager.CancellationManager")
    _keep_handle_class(monkeypatch, handle_class)
    _record_signals(monkeypatch)
    run = FlowRun(flow_id=uuid.uuid4(), state=Completed())

    def cancel_tracked(guarded: bool) -> list[str]:
        recorder = _Recorder()
        if guarded:
            prefect_private.never_signal_ended_processes()

        async def go() -> None:
            manager = manager_class()
            await manager.add(run.id, handle_class(_ended_process()))
            cancellation = cancellation_class(
                process_manager=manager,
                hook_runner=recorder,
                state_proposer=recorder,
                event_emitter=recorder,
                client=recorder,
            )
            await cancellation.cancel(run, state_msg="Runner is shutting down.")

        anyio.run(go)
        return recorder.calls

    assert "propose_cancelled" in cancel_tracked(guarded=False), (
        f"Prefect {prefect.__version__} no longer cancels an ended run: the guard may go; {WHERE}"
    )
    assert cancel_tracked(guarded=True) == []
