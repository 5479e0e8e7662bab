"""`handover serve` serves the deployments of deployments/prefect.yaml from one process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.flow_runs import resume_flow_run

from infra.serve import DEPLOYMENTS_FILE, read_deployments
from tests.conftest import ROOT, RunningLab, wait_for


def test_prefect_yaml_declares_the_procedures() -> None:
    names = {d["name"]: d for d in read_deployments(DEPLOYMENTS_FILE)}
    assert names["clean-move"]["entrypoint"] == "flows/clean_move.py:clean_move"
    assert "site-snapshot" in names


@contextlib.contextmanager
def serving(lab: RunningLab, prefect_api: str, *extra: str) -> Iterator[subprocess.Popen[bytes]]:
    """`handover serve` for the lab's site, until its deployments are registered by it."""
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
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
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:

        def deployed() -> bool:
            # registered by this serve process: an earlier one (another test module) may have
            # left the same deployment with its own site
            # every deployment the tests run, not only the first registered
            with get_client(sync_client=True) as client:
                try:
                    deps = [
                        client.read_deployment_by_name(name)
                        for name in ("clean-move/clean-move", "site-snapshot/site-snapshot")
                    ]
                except ObjectNotFound:
                    return False
            site = str(lab.site_file.resolve())
            return all(d.parameters.get("site_file") == site for d in deps)

        wait_for(deployed, 60, "handover serve to register the deployment")
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def test_served_clean_move_runs_from_the_api(lab: RunningLab, prefect_api: str) -> None:
    with serving(lab, prefect_api):
        run = run_deployment(
            "clean-move/clean-move",
            parameters={"from_host": "fts101", "to_host": "fts102", "dry_run": True},
            timeout=120,
        )
        assert run.state is not None and run.state.is_completed(), run.state
        assert run.state.message and "dry run: would move 4 agents" in run.state.message
        assert run.parameters["site_file"] == str(lab.site_file.resolve())


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return ""


@pytest.mark.parametrize("start", ["forkserver", "spawn"])
def test_a_served_run_starts_as_its_start_method_says(
    lab: RunningLab, prefect_api: str, start: str
) -> None:
    """forkserver: the run's process is forked by the serve process's fork server, which has
    imported Prefect and the flows; spawn: it is a fresh interpreter started by serve itself."""
    with serving(lab, prefect_api, "--start", start) as proc:
        # the site requires an approval: a run created through the API cannot switch it off
        run = run_deployment(
            "clean-move/clean-move",
            parameters={"from_host": "fts101", "to_host": "fts102", "pause_for_approval": False},
            timeout=0,
        )
        try:

            def paused() -> bool:
                with get_client(sync_client=True) as client:
                    st = client.read_flow_run(run.id).state
                return bool(st and st.is_paused())

            wait_for(paused, 60, "the served run to pause for approval")
            servers = [
                c for c in _children(proc.pid) if "multiprocessing.forkserver" in _cmdline(c)
            ]
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
            resume_flow_run(run.id, run_input={"decision": "reject", "who": "test"})

        def final() -> bool:
            with get_client(sync_client=True) as client:
                st = client.read_flow_run(run.id).state
            return bool(st and st.is_final())

        wait_for(final, 60, "the rejected run to end")
        with get_client(sync_client=True) as client:
            st = client.read_flow_run(run.id).state
        assert st is not None and st.is_completed() and "rejected by test" in (st.message or "")


def test_a_served_flow_is_pickled_by_reference() -> None:
    """The runner hands a run's process the flow object, cloudpickled: by value, the flow's
    parameter annotations (clean-move's `mode: Mode`) would not resolve there."""
    import cloudpickle

    from flows.clean_move import clean_move
    from infra.serve import pickle_flows_by_reference

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
    lab: RunningLab, prefect_api: str, tmp_path: Path
) -> None:
    """The deployment's site_file parameter pointed at a file outside the site directories
    (here a copy of the lab's own site elsewhere): the run refuses it before reading it."""
    import shutil

    elsewhere = tmp_path / "not-reviewed" / "site.yaml"
    elsewhere.parent.mkdir()
    shutil.copy(lab.site_file, elsewhere)
    with serving(lab, prefect_api):
        run = run_deployment(
            "site-snapshot/site-snapshot",
            parameters={"site_file": str(elsewhere)},
            timeout=120,
        )
        # the same site by name: its file is in a site directory (serve's --site directory)
        named = run_deployment(
            "site-snapshot/site-snapshot",
            parameters={"site_file": lab.site_file.stem},
            timeout=120,
        )
    assert run.state is not None and run.state.is_failed(), run.state
    assert "site directories" in (run.state.message or ""), run.state.message
    assert named.state is not None and named.state.is_completed(), named.state


def test_the_drift_watch_is_scheduled_and_the_switch_triggered() -> None:
    from infra.serve import build_deployments

    deps = {d.name: d for d in build_deployments(str(ROOT / "config" / "sites" / "lab.yaml"))}
    [schedule] = deps["drift-watch"].schedules
    assert schedule.schedule.interval.total_seconds() == 300
    [trigger] = deps["switch"].triggers
    assert "handover.alert.frontend_down" in trigger.expect
    assert "handover.alert.frontend_down" not in deps["emergency-move"].triggers[0].expect


def test_a_dead_front_end_host_also_starts_the_switch() -> None:
    from infra.serve import build_deployments

    deps = {d.name: d for d in build_deployments(str(ROOT / "config" / "sites" / "lab.yaml"))}
    [trigger] = deps["switch"].triggers
    assert "handover.alert.host_down" in trigger.expect
    assert trigger.match["handover.frontend"] in ("true", ["true"])
    assert "handover.alert.host_down" in deps["emergency-move"].triggers[0].expect
