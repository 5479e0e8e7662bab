"""`handover serve` serves the deployments of deployments/prefect.yaml from one process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound

from infra.serve import DEPLOYMENTS_FILE, read_deployments
from tests.conftest import ROOT, RunningLab, wait_for


def test_prefect_yaml_declares_the_procedures() -> None:
    names = {d["name"]: d for d in read_deployments(DEPLOYMENTS_FILE)}
    assert names["clean-move"]["entrypoint"] == "flows/clean_move.py:clean_move"
    assert "site-snapshot" in names


def test_served_clean_move_runs_from_the_api(lab: RunningLab, prefect_api: str) -> None:
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
            with get_client(sync_client=True) as client:
                try:
                    dep = client.read_deployment_by_name("clean-move/clean-move")
                except ObjectNotFound:
                    return False
            return bool(dep.parameters.get("site_file") == str(lab.site_file.resolve()))

        wait_for(deployed, 60, "handover serve to register the deployment")
        run = run_deployment(
            "clean-move/clean-move",
            parameters={"from_host": "fts101", "to_host": "fts102", "dry_run": True},
            timeout=120,
        )
        assert run.state is not None and run.state.is_completed(), run.state
        assert run.state.message and "dry run: would move 4 agents" in run.state.message
        assert run.parameters["site_file"] == str(lab.site_file.resolve())
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
