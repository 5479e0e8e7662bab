"""The private parts of Prefect that handover relies on (flows/prefect_private.py) are still there
and still work as handover uses them.

Run after every Prefect upgrade (README, "Upgrading Prefect"): each failure names the part that
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
