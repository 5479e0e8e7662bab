"""Emergency moves at once over two workers (`handover bench scale`, issue: beyond one machine).

On a generated lab (`handover lab up --hosts 50`) cut into services of consecutive hosts
(`infra.lab.derive.service_sites`: 10 services of 5 hosts, each its own site file, so its own
service lock), with a Prefect server of the bench's own on PostgreSQL (the production set-up),
the emergency-move deployment in a work pool and two `handover worker` processes:

* **one move alone**, `solo` times: a host of one service crashes (the lab's `crash` fault: its
  address dropped, its processes killed, its DB sessions and locks left behind) and a run of
  emergency-move is created for it; timed from the run's creation until it is final;
* **the moves at once**: the first host of every service crashes and one run per service is
  created at the same moment; the makespan is the time from the first creation until the last
  run is final.

Every run must complete, each crashed host's agents must serve on their backups only, the
backups' channels must be Active, and the lab must never have seen an agent serve on two hosts.
The figures: one move's time (median and spread), the makespan, their ratio (1.0 would be ten
moves in the time of one), and how many runs each worker ran.
"""

from __future__ import annotations

import contextlib
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from infra.bench.alert import spread
from infra.lab.derive import service_sites
from infra.lab.lab import Lab

#: the work pool of the bench's own server
POOL = "handover-bench-moves"
DEPLOYMENT = "emergency-move"


def _write_sites(lab: Lab, services: int, out: Path) -> list[tuple[Path, Any]]:
    """Each service's site file in `out` (a directory the workers allow), with its site."""
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for site in service_sites(lab.site, services):
        path = out / f"{site.site}.yaml"
        path.write_text(
            yaml.safe_dump(site.model_dump(mode="json", exclude_defaults=True), sort_keys=False)
        )
        files.append((path, site))
    return files


def _deployments_file(out: Path) -> Path:
    """deployments/prefect.yaml with the emergency move only (no scheduled runs in the way)."""
    from infra.serve import DEPLOYMENTS_FILE

    data = yaml.safe_load(DEPLOYMENTS_FILE.read_text())
    data["deployments"] = [d for d in data["deployments"] if d["name"] == "emergency-move"]
    path = out / "prefect.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _wait_final(ids: list[Any], timeout_s: float, logs: Path) -> dict[Any, float]:
    """Poll until every run is final; returns when each was first seen final (monotonic)."""
    from prefect.client.orchestration import get_client

    done: dict[Any, float] = {}
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while len(done) < len(ids):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{len(ids) - len(done)} of {len(ids)} moves did not end within "
                    f"{timeout_s:.0f} s; the workers' logs are in {logs}"
                )
            for run_id in ids:
                if run_id in done:
                    continue
                state = client.read_flow_run(run_id).state
                if state is not None and state.is_final():
                    done[run_id] = time.monotonic()
            time.sleep(0.1)
    return done


def _converged(lab: Lab, site: Any, host: str) -> list[str]:
    """What is wrong after the move of `host`'s agents in service `site` (empty: converged)."""
    from tasks.remote import SiteShell
    from tasks.site_state import snapshot_site

    wrong = []
    serving = lab.serving(lab.site, lab.record())
    backups = sorted({a.backup for a in site.agents_on(host)})
    for agent in site.agents_on(host):
        if serving.get(agent.name) != {agent.backup}:
            wrong.append(f"{agent.name} serves on {sorted(serving.get(agent.name) or [])}")
    with SiteShell(site) as shell:
        snap = snapshot_site(shell, backups)
    for agent in site.agents_on(host):
        if agent.channel and snap.channels.get(agent.channel) != "Active":
            wrong.append(f"channel {agent.channel} is {snap.channels.get(agent.channel)}")
    return wrong


def _check(lab: Lab, runs: list[tuple[Any, Any, str]]) -> list[str]:
    """Every run completed and converged; each problem as a sentence."""
    from prefect.client.orchestration import get_client

    problems = []
    with get_client(sync_client=True) as client:
        for run_id, site, host in runs:
            state = client.read_flow_run(run_id).state
            if state is None or not state.is_completed():
                problems.append(f"the move of {host} ended {state and state.name}: {state}")
            problems += [f"{host}: {w}" for w in _converged(lab, site, host)]
    return problems


def _which_worker(logs: dict[str, Path], run_ids: list[Any]) -> dict[str, int]:
    """How many of the runs each worker's log shows it ran (the run's own process logs its
    URL into its worker's log)."""
    texts = {name: log.read_text(errors="replace") for name, log in logs.items()}
    return {
        name: sum(f"/runs/flow-run/{r}" in text for r in run_ids) for name, text in texts.items()
    }


def measure_moves(
    lab: Lab,
    *,
    services: int = 10,
    solo: int = 3,
    workers: int = 2,
    say: Callable[[str], None] = lambda m: None,
) -> dict[str, Any]:
    """The figures of the module docstring, on `lab` (up, a generated site of at least
    4 x `services` hosts; its hosts are crashed and left so: bring it down afterwards).

    Raises:
        RuntimeError: a move did not end, or a server or worker did not start.
    """
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from infra.prefect_server import server_on_postgresql
    from infra.serve import deploy_all, deployment_name
    from infra.worker import worker_processes

    work = Path(tempfile.mkdtemp(prefix="handover-bench-moves-", dir="/var/tmp"))
    work.chmod(0o755)  # the server's PostgreSQL runs as postgres: it must reach work/pg
    sites = _write_sites(lab, services, work / "sites")
    solo = min(solo, services)
    servers = contextlib.ExitStack()
    try:
        srv = servers.enter_context(server_on_postgresql(work))
        say(
            f"moves: Prefect server on PostgreSQL at {srv.url}; {services} services of "
            f"{len(sites[0][1].hosts)} hosts"
        )
        with temporary_settings(updates={PREFECT_API_URL: srv.url}):
            deploy_all(str(sites[0][0]), POOL, _deployments_file(work))
            names = [f"bench-worker-{i + 1}" for i in range(workers)]
            limit = -(-services // workers)
            with worker_processes(
                srv.url, sites[0][0], POOL, names, work / "workers", limit=limit
            ) as logs:
                with get_client(sync_client=True) as client:
                    deployment_id = client.read_deployment_by_name(
                        f"{DEPLOYMENT}/{deployment_name(DEPLOYMENT, sites[0][1])}"
                    ).id

                def create(path: Path, host: str) -> Any:
                    with get_client(sync_client=True) as client:
                        return client.create_flow_run_from_deployment(
                            deployment_id, parameters={"site_file": str(path), "host": host}
                        ).id

                alone: list[float] = []
                solo_runs = []
                for path, site in sites[:solo]:
                    host = site.hosts[2].name
                    lab.fault(host, "crash")
                    t0 = time.monotonic()
                    run_id = create(path, host)
                    alone.append(_wait_final([run_id], 300, work / "workers")[run_id] - t0)
                    solo_runs.append((run_id, site, host))
                    say(f"moves: {host} alone in {alone[-1]:.2f} s")
                problems = _check(lab, solo_runs)

                failed = [(path, site, site.hosts[0].name) for path, site in sites]
                for _, _, host in failed:
                    lab.fault(host, "crash")
                t0 = time.monotonic()
                created = [(create(path, host), site, host) for path, site, host in failed]
                ended = _wait_final([r for r, _, _ in created], 600, work / "workers")
                makespan = max(ended.values()) - t0
                each = [ended[r] - t0 for r, _, _ in created]
                say(f"moves: {services} at once, makespan {makespan:.2f} s")
                problems += _check(lab, created)
                per_worker = _which_worker(logs, [r for r, _, _ in created])
        twice = lab.score().agents_running_twice
        if twice:
            problems.append(f"agents served on two hosts: {twice}")
    finally:
        servers.close()
    if problems:
        problems.append(f"the server's and workers' logs: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    one = statistics.median(alone)
    return {
        "services": services,
        "hosts_per_service": len(sites[0][1].hosts),
        "workers": workers,
        "worker_limit": limit,
        "database": "postgresql",
        "one_move_s": spread(alone),
        "at_once_makespan_s": round(makespan, 3),
        "at_once_each_s": spread(each),
        "makespan_to_one_move": round(makespan / one, 2),
        "runs_per_worker": per_worker,
        "converged": not problems,
        "problems": problems,
    }
