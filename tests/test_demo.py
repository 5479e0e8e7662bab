"""`make demo`, the README's first command: what it runs (`python -m infra.demo`) on a lab of
its own, with a Prefect server of its own (started by the demo on its embedded SQLite, as on a
fresh machine). It ends 0 only when the pipelined move lost no job and ran no agent twice, the
switch lost no submission and let no fenced master write, and the upgrade lost no job."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra.ports import free_port
from tests.conftest import ROOT, RunningLab


@pytest.mark.timeout(900)
def test_the_demo_runs_end_to_end_on_a_fresh_server(lab: RunningLab, tmp_path: Path) -> None:
    home = tmp_path / "prefect-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "PREFECT_HOME"))}
    env |= {
        "HANDOVER_SITE": str(lab.site_file),
        "HANDOVER_PREFECT_HOME": str(home),
        "HANDOVER_PREFECT_PORT": str(free_port()),
        "PREFECT_HOME": str(tmp_path / "prefect-client"),
        "COLUMNS": "200",
    }
    try:
        demo = subprocess.run(
            [sys.executable, "-m", "infra.demo"],
            capture_output=True,
            text=True,
            timeout=840,
            cwd=ROOT,
            env=env,
            check=False,
        )
    finally:
        subprocess.run(
            [sys.executable, "-m", "infra.cli", "server", "stop"],
            capture_output=True,
            timeout=60,
            cwd=ROOT,
            env=env,
            check=False,
        )
    out = demo.stdout
    assert demo.returncode == 0, (out[-4000:], demo.stderr[-4000:])
    assert "lab already up" in out  # the test's own lab, not the operator's
    assert "server started by the demo" in out
    for seen in ("pipelined clean move", "planned switch", "rolling upgrade to version 2"):
        assert seen in out, seen
    assert ", 0 lost; channel downtime" in out  # the move's score
    assert "agents serving on two hosts at once: 0" in out
    assert "writes by a fenced master: 0" in out
