"""`handover worker --pool NAME`: a Prefect process worker that starts runs from a fork server.

On several machines, the procedures are deployments in a Prefect work pool (`handover deploy`
creates it and puts every deployment of deployments/prefect.yaml in it) and each machine runs a
worker of that pool. Prefect hands each scheduled run to one worker: the worker proposes the run's
Pending state and the server accepts one proposal, so two workers never start the same run.

`HandoverWorker` takes the runs of a pool of type `process` (Prefect's `ProcessWorker`) and starts
a run of one of handover's deployments the way `handover serve` starts it (`infra/serve.py`): the
flow object, imported once, is handed to a process forked from a fork server that has imported
Prefect and the flows, not `python -m prefect.engine`, which imports everything afresh in every
run (about 1.5 s on 2 cores).

It runs nothing else. The worker holds the site's keys (SSH, TSIG, Slack, the database), so
whoever may create deployments through the Prefect API must not be able to make it run their
code or read those keys:

* a run of a deployment that is not one of handover's for the worker's sites (another name,
  another site's deployment, or a name of handover's with another flow) is refused: it ends
  Failed with the reason, and the worker logs it; nothing of the deployment (its pull steps,
  its command) runs. A pool whose deployments are of several sites has workers given every one
  of them (`--site` repeated), or each site has a pool of its own;
* a run of handover's deployment runs handover's own flow object with the worker's environment:
  the job variables of the deployment and the run (`env`, `command`, a working directory) and
  its pull steps are ignored, and the worker says so. A run's `job_variables.env` could
  otherwise point the flow's Slack client elsewhere (`HANDOVER_SLACK_API_URL`: the bot token
  sent away) or widen the site directories (`HANDOVER_SITES_DIRS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import anyio
import anyio.abc

from flows.prefect_private import (
    never_signal_ended_processes,
    pickle_flows_by_reference,
    run_flow_object,
)
from infra.crash_recovery import HEARTBEAT_S
from infra.serve import (
    StartMethod,
    allow_site_dir,
    sites_specs,
    start_runs_from_forkserver,
)

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun
    from prefect.flows import Flow
    from prefect.workers.process import ProcessJobConfiguration, ProcessWorkerResult

#: the work pool handover's deployments go to unless prefect.yaml or `--pool` says otherwise
DEFAULT_POOL = "handover"


def _make_worker_class() -> type[Any]:
    """`HandoverWorker`, defined when Prefect's worker module is imported (the CLI imports this
    module without starting a worker)."""
    import warnings

    from prefect.logging.loggers import get_worker_logger
    from prefect.workers.process import ProcessWorker, ProcessWorkerResult

    # Prefect registers worker classes by their type; this one keeps ProcessWorker's ("process":
    # a pool of that type, served by this class in this process) and Prefect warns of the clash
    warnings.filterwarnings("ignore", message="Type 'HandoverWorker'", category=UserWarning)

    class HandoverWorker(ProcessWorker):
        """A process-pool worker that runs handover's deployments only, from the fork server."""

        flows: ClassVar[dict[str, Flow[Any, Any]]] = {}

        async def _refuse(
            self,
            flow_run: FlowRun,
            why: str,
            task_status: anyio.abc.TaskStatus[int] | None,
        ) -> ProcessWorkerResult:
            from prefect.states import Failed

            message = f"refused by handover worker {self.name}: {why}; nothing of it ran"
            get_worker_logger(self).warning(
                "flow run %s (%s) %s", flow_run.name, flow_run.id, message
            )
            await self.client.set_flow_run_state(flow_run.id, Failed(message=message), force=True)
            if task_status is not None:
                # handled, with no process: 0 records no infrastructure PID (Prefect would
                # otherwise log that the infrastructure never reported the run started)
                task_status.started(0)
            return ProcessWorkerResult(status_code=0, identifier="refused")

        async def run(
            self,
            flow_run: FlowRun,
            configuration: ProcessJobConfiguration,
            task_status: anyio.abc.TaskStatus[int] | None = None,
        ) -> ProcessWorkerResult:
            if flow_run.deployment_id is None:
                return await self._refuse(flow_run, "it belongs to no deployment", task_status)
            deployment = await self.client.read_deployment(flow_run.deployment_id)
            deployment_name = deployment.name
            flow = self.flows.get(deployment_name)
            theirs = (await self.client.read_flow(deployment.flow_id)).name
            if flow is None or theirs != flow.name:
                return await self._refuse(
                    flow_run,
                    f"deployment {theirs}/{deployment_name} is not one of handover's for "
                    f"this worker's sites ({', '.join(sorted(self.flows))}); this worker runs "
                    "those only",
                    task_status,
                )
            ignored = [
                *(f"job variable {k}" for k in sorted(deployment.job_variables or {})),
                *(f"the run's job variable {k}" for k in sorted(flow_run.job_variables or {})),
                *(["the deployment's pull steps"] if deployment.pull_steps else []),
            ]
            if ignored:
                get_worker_logger(self).warning(
                    "flow run %s (%s): ignored %s: handover's flows run with the worker's own "
                    "command and environment",
                    flow_run.name,
                    flow_run.id,
                    ", ".join(ignored),
                )
            # heartbeats, so that a run whose worker dies is known crashed (crash_recovery)
            status_code, pid = await run_flow_object(
                flow_run,
                flow,
                deployment_name=deployment_name,
                heartbeat_s=HEARTBEAT_S,
                task_status=task_status if task_status is not None else anyio.TASK_STATUS_IGNORED,
            )
            return ProcessWorkerResult(status_code=status_code, identifier=str(pid))

    return HandoverWorker


def run_worker(
    site_files: str | Sequence[str],
    pool: str = DEFAULT_POOL,
    *,
    name: str | None = None,
    limit: int | None = None,
    poll_s: float = 0.5,
    start: StartMethod = "forkserver",
) -> None:
    """Run a worker of `pool` until interrupted.

    Args:
        site_files: the sites whose deployments this worker starts from its fork server (a
            file, or several; each site's deployments are its own, `infra.serve.deployment_name`;
            a run of another site's deployment is refused). The runs carry their own site file
            in their parameters; these say which deployments and flows, and let the runs load
            site files from their directories.
        pool: the work pool to take runs from.
        name: the worker's name (unique per machine: two processes of one name are one worker to
            Prefect); default `handover-<host name>-<pid>`.
        limit: at most this many runs at once.
        poll_s: seconds between asking the pool for runs to start.
        start: `forkserver` (imports done once) or `spawn` (Prefect's own start, for comparison).
    """
    # before Prefect reads its settings: how often the worker asks for runs
    os.environ["PREFECT_WORKER_QUERY_SECONDS"] = str(poll_s)
    files = [site_files] if isinstance(site_files, str) else list(site_files)
    for f in files:
        allow_site_dir(f)
    specs = sites_specs(files)
    pickle_flows_by_reference()
    never_signal_ended_processes()
    worker_class = _make_worker_class()
    worker_class.flows = {str(settings["name"]): fl for fl, settings in specs}
    if start == "forkserver":
        start_runs_from_forkserver(sorted({fl.fn.__module__ for fl, _ in specs}))
    worker_name = name or f"handover-{os.uname().nodename}-{os.getpid()}"

    async def main() -> None:
        worker = worker_class(work_pool_name=pool, name=worker_name, limit=limit)
        await worker.start(printer=lambda msg: print(f"handover worker: {msg}", flush=True))

    print(
        f"handover worker {worker_name}: pool {pool}, polling every {poll_s:g} s, runs start by "
        f"{start}; site {', '.join(str(Path(f).resolve()) for f in files)}",
        flush=True,
    )
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        print("handover worker: stopped", flush=True)


@contextlib.contextmanager
def worker_processes(
    api_url: str,
    site_file: Path,
    pool: str,
    names: list[str],
    home: Path,
    *,
    limit: int = 1,
    register_timeout_s: float = 90,
) -> Iterator[dict[str, Path]]:
    """`handover worker --pool POOL` processes on this machine (tests and benches), each with its
    own name, Prefect home (`home/NAME`) and log (`home/NAME.log`), until each has registered
    with the pool; yields their logs by name, then stops them by PID (SIGTERM, SIGKILL after
    20 s).

    Raises:
        TimeoutError: a worker did not register within `register_timeout_s` (its log says why).
    """
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    root = Path(__file__).resolve().parent.parent
    procs: list[subprocess.Popen[bytes]] = []
    logs = {name: home / f"{name}.log" for name in names}
    home.mkdir(parents=True, exist_ok=True)
    try:
        for name in names:
            env = {
                **os.environ,
                "PREFECT_API_URL": api_url,
                "PREFECT_HOME": str(home / name),
                "PREFECT_LOGGING_LEVEL": "INFO",
            }
            with open(logs[name], "wb") as log:
                procs.append(
                    subprocess.Popen(
                        [
                            *(sys.executable, "-m", "infra.cli", "worker"),
                            *("--site", str(site_file), "--pool", pool),
                            *("--name", name, "--limit", str(limit)),
                        ],
                        cwd=root,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        deadline = time.monotonic() + register_timeout_s
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            while True:
                with get_client(sync_client=True) as client:
                    seen = {w.name for w in client.read_workers_for_work_pool(pool)}
                if set(names) <= seen:
                    break
                dead = [n for n, p in zip(names, procs, strict=True) if p.poll() is not None]
                if dead or time.monotonic() > deadline:
                    tails = {n: logs[n].read_text(errors="replace")[-800:] for n in names}
                    raise TimeoutError(
                        f"workers {sorted(set(names) - seen)} did not register with pool {pool} "
                        f"(exited: {dead}); log tails: {tails}"
                    )
                time.sleep(0.5)
        yield logs
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):  # a test may have killed it
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
