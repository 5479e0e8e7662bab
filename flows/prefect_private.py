"""Every private part of Prefect that handover relies on, in one module, and why.

Prefect may change anything outside its public API in any release. handover pins Prefect
exactly (pyproject.toml), keeps its uses of Prefect's private parts here, and
`tests/test_prefect_private.py` checks each of them against the installed Prefect: an upgrade
that removes or changes one fails there, naming it (docs/how-to/upgrade.md). Everything else
in handover uses Prefect's public API only.

What handover needs that Prefect's public API does not offer:

* **Runs started from a fork server** (`handover serve` and `handover worker`, `--start
  forkserver`, infra/serve.py). `prefect.flow_engine.run_flow_in_subprocess` (public) starts a run's
  process with ``multiprocessing.get_context("spawn")``, looked up through the module global
  `multiprocessing` of `prefect.flow_engine`. `start_flow_runs_with` replaces that global by one
  whose ``get_context("spawn")`` answers the fork server's context; nothing else of Prefect's
  start changes.
* **Flows pickled by reference.** `run_flow_in_subprocess` hands the run's process the flow
  object through cloudpickle (`prefect.utilities.callables.cloudpickle_wrapped_call`), which copies
  a flow by value: its function's parameter annotations (clean-move's `mode: Mode`) then no longer
  resolve and Prefect refuses the run's parameters. `pickle_flows_by_reference` registers a
  reducer for `Flow` with `copyreg`, which cloudpickle honours.
* **A worker that starts the flow object it imported** (`handover worker`, infra/worker.py).
  `prefect.workers.process.ProcessWorker.run` starts ``python -m prefect.engine`` or the
  deployment's command, after the deployment's pull steps, in an environment the deployment and
  the run may set: it would import everything afresh in each run and let whoever may create
  deployments run code with the worker's keys. `prefect.runner.Runner` starts a flow object
  (`Runner.add_flow`) but takes no runs of a work pool. `run_flow_object` runs one flow run the
  way the runner runs an added flow, with two names of `prefect.runner`'s private modules:

  - `prefect.runner._flow_run_executor.FlowRunExecutorContext`: the per-run machinery of the
    runner and of `ProcessWorker` (process tracking, the control channel that cancels a run,
    the Crashed state of a process that died, the flow's crashed and cancellation hooks). Used:
    ``create_executor(flow_run, starter, resolve_flow=, propose_submitting=)``, its
    `control_channel`, the executor's ``submit(task_status=)`` and its result's `status_code`
    and `handle.pid`.
  - `prefect.runner._starter_direct.DirectSubprocessStarter`: what the runner starts an added
    flow with (`run_flow_in_subprocess` with the deployment's name, heartbeats and the control
    channel). Used: its keywords `flow`, `deployment_name`, `heartbeat_seconds`,
    `control_channel`.

* **No signal to a process that has ended.** Prefect's `ProcessManager` signals a tracked run's
  process by its PID (`os.kill`) when it cancels the run, when the runner stops (every run it
  still tracks) and when the per-run context closes, and `is_alive` is ``os.kill(pid, 0)``. A run
  whose process has ended but is still tracked then gets its PID signalled, SIGTERM and, 30 s
  later while "alive", SIGKILL: after PID reuse (a kernel with `pid_max` 32768 wraps in minutes
  under load) that is an unrelated process, such as another service's sshd.
  The same stop also forces Cancelled (``force=True``) on every run it still tracks, over a
  Completed or Failed state its process had just reported. `never_signal_ended_processes` makes
  `prefect.runner._process_manager.ProcessHandle` check its own process object's exit code first
  (an ended process is reported gone and never signalled), and
  `prefect.runner._cancellation_manager.CancellationManager.cancel` leave a run whose process
  has ended as it ended.

The concurrency limits' lease storage that outlives a server restart is named by a module path
(`flows.service_lock.LEASE_STORAGE`, Prefect's documented setting
``PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE``); the test checks that module too.
"""

from __future__ import annotations

import copyreg
import logging
import multiprocessing
import pickle
import sys
from importlib import import_module
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

if TYPE_CHECKING:
    from multiprocessing.context import BaseContext

    from prefect.client.schemas.objects import FlowRun
    from prefect.flows import Flow

#: the private names this module uses (`tests/test_prefect_private.py` imports each)
PRIVATE_NAMES = (
    "prefect.runner._flow_run_executor.FlowRunExecutorContext",
    "prefect.runner._starter_direct.DirectSubprocessStarter",
    "prefect.runner._process_manager.ProcessHandle",
    "prefect.runner._cancellation_manager.CancellationManager",
)
#: the module `run_flow_in_subprocess` reads `multiprocessing` from
FLOW_ENGINE = "prefect.flow_engine"


class _SpawnAs:
    """Stands for the `multiprocessing` module inside `prefect.flow_engine`: its
    ``get_context("spawn")`` answers another context, everything else is multiprocessing's."""

    def __init__(self, ctx: BaseContext) -> None:
        self._ctx = ctx

    def get_context(self, method: str | None = None) -> Any:
        return self._ctx if method == "spawn" else multiprocessing.get_context(method)

    def __getattr__(self, name: str) -> Any:
        return getattr(multiprocessing, name)


def start_flow_runs_with(ctx: BaseContext) -> None:
    """Make Prefect start this process's flow runs' processes from `ctx` instead of spawn.

    Args:
        ctx: the multiprocessing context to start them from (the fork server's).
    """
    import prefect.flow_engine

    prefect.flow_engine.multiprocessing = _SpawnAs(ctx)  # type: ignore[attr-defined,assignment]


def _module_attribute(module: str, name: str) -> Any:
    """`module.name`, imported (how a flow pickled by reference is unpickled)."""
    return getattr(import_module(module), name)


def _reduce_flow(fl: Any) -> Any:
    """Pickle a flow that is its module's attribute by reference, as pickle does functions.

    A flow object is not the function it wraps, so cloudpickle does not find the function under
    its name in its module and copies it by value, with only the globals its body names. By
    reference, the child uses the module's own flow, as ``python -m prefect.engine`` does. Any
    other flow (one defined in a function) is pickled as before.
    """
    module = getattr(fl.fn, "__module__", None)
    name = getattr(fl.fn, "__qualname__", None)
    if module and name and getattr(sys.modules.get(module), name, None) is fl:
        return (_module_attribute, (module, name))
    return fl.__reduce_ex__(pickle.DEFAULT_PROTOCOL)


def pickle_flows_by_reference() -> None:
    """Register `_reduce_flow` for Prefect's `Flow` (cloudpickle honours copyreg)."""
    from prefect import Flow

    copyreg.pickle(Flow, _reduce_flow)


def _ended(handle: Any) -> bool:
    """Whether the handle's own process object knows its process has ended."""
    try:
        return handle.returncode is not None
    except (OSError, ValueError):  # a closed multiprocessing process: ended long ago
        return True


def never_signal_ended_processes() -> None:
    """Make Prefect's runner leave alone a flow run whose process has ended.

    `ProcessHandle.is_alive` answers False and `graceful_kill`/`hard_kill` raise
    ProcessLookupError (what Prefect expects of a process already gone) once the handle's
    process object has an exit code, instead of signalling its PID, which the kernel may have
    given to another process since; `CancellationManager.cancel` returns at once for such a
    run instead of forcing it Cancelled over the state its process reported. Idempotent.
    """
    from prefect.runner._cancellation_manager import CancellationManager
    from prefect.runner._process_manager import ProcessHandle

    if getattr(ProcessHandle, "_handover_guarded", False):
        return
    cancel = CancellationManager.cancel
    alive, graceful, hard = (
        ProcessHandle.is_alive,
        ProcessHandle.graceful_kill,
        ProcessHandle.hard_kill,
    )
    log = logging.getLogger("prefect.handover")

    def is_alive(self: Any) -> bool:
        return False if _ended(self) else alive(self)

    def refuse(self: Any, signal_name: str) -> None:
        log.info(
            "not sending %s to PID %s: its flow run's process has ended", signal_name, self.pid
        )
        raise ProcessLookupError(f"the process of PID {self.pid} has ended")

    def graceful_kill(self: Any) -> None:
        if _ended(self):
            refuse(self, "SIGTERM")
        graceful(self)

    def hard_kill(self: Any) -> None:
        if _ended(self):
            refuse(self, "SIGKILL")
        hard(self)

    async def cancel_unless_ended(
        self: Any, flow_run: FlowRun, state_msg: str | None = None
    ) -> None:
        handle = self._process_manager.get(flow_run.id)
        if handle is not None and _ended(handle):
            log.info("flow run %s has ended; not cancelling it", flow_run.id)
            return
        await cancel(self, flow_run, state_msg=state_msg)

    CancellationManager.cancel = cancel_unless_ended  # type: ignore[method-assign]
    ProcessHandle.is_alive = is_alive  # type: ignore[method-assign]
    ProcessHandle.graceful_kill = graceful_kill  # type: ignore[method-assign]
    ProcessHandle.hard_kill = hard_kill  # type: ignore[method-assign]
    ProcessHandle._handover_guarded = True  # type: ignore[attr-defined]


async def run_flow_object(
    flow_run: FlowRun,
    flow: Flow[Any, Any],
    *,
    deployment_name: str,
    heartbeat_s: int,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> tuple[int, int]:
    """Run `flow_run` as `flow` in a child process, as Prefect's runner runs an added flow.

    The process gets the worker's own environment plus the deployment's name and the heartbeat
    setting; Prefect proposes its states, cancels it through its control channel, and marks it
    Crashed (running the flow's hooks) when it dies.

    Args:
        flow_run: the run, already handed to this worker (Pending).
        flow: the flow object to run, imported by the caller.
        deployment_name: the run's deployment, as the runner tells the run.
        heartbeat_s: seconds between the run's heartbeats.
        task_status: told the process's PID as soon as it runs.

    Returns:
        The process's exit code and PID.

    Raises:
        RuntimeError: the process did not start, or has no PID.
    """
    from prefect.runner._flow_run_executor import FlowRunExecutorContext
    from prefect.runner._starter_direct import DirectSubprocessStarter

    async def resolve(_: FlowRun) -> Flow[Any, Any]:
        return flow

    execution: Any = None
    async with FlowRunExecutorContext() as ctx:
        starter = DirectSubprocessStarter(
            flow=flow,
            deployment_name=deployment_name,
            heartbeat_seconds=heartbeat_s,
            control_channel=ctx.control_channel,
        )
        executor = ctx.create_executor(
            flow_run, starter, resolve_flow=resolve, propose_submitting=False
        )

        async def execute(
            *, task_status: anyio.abc.TaskStatus[Any] = anyio.TASK_STATUS_IGNORED
        ) -> None:
            nonlocal execution
            execution = await executor.submit(task_status=task_status)

        async with anyio.create_task_group() as group:
            handle = await group.start(execute)
            if handle.pid is None:
                raise RuntimeError("the flow run's process has no PID")
            task_status.started(handle.pid)
    if execution is None or execution.status_code is None:
        raise RuntimeError("the flow run's process did not start")
    return int(execution.status_code), int(execution.handle.pid)
