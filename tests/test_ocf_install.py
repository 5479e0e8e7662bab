"""`handover ocf install`: the resource agents where Pacemaker looks for `ocf:handover:*`, as the
command line puts them (Pacemaker running them: `tests/test_service_ocf.py`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from infra.ocf import AGENTS
from tests.conftest import ROOT


def ocf(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", "ocf", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_install_puts_both_agents_where_pacemaker_finds_them_and_again_changes_nothing(
    tmp_path: Path,
) -> None:
    root = tmp_path / "ocf"
    for _ in range(2):  # a second install over the first (an upgrade) leaves the same files
        res = ocf("install", "--ocf-root", str(root))
        assert res.returncode == 0, res.stderr
        placed = root / "resource.d" / "handover"
        assert sorted(p.name for p in placed.iterdir()) == ["fts-agent", "fts-frontend"]
        for agent in AGENTS:
            target = placed / agent.name
            assert target.read_bytes() == agent.read_bytes()
            assert target.stat().st_mode & 0o777 == 0o755
            # one whole line each, the path unbroken (rich wraps at 80 columns off a terminal)
            line = f"installed {target}: Pacemaker runs it as ocf:handover:{agent.name}"
            assert line in res.stdout.splitlines(), res.stdout
    # the installed agent runs from there: its meta-data names it
    meta = subprocess.run(
        [str(root / "resource.d" / "handover" / "fts-agent"), "meta-data"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert meta.returncode == 0 and '<resource-agent name="fts-agent"' in meta.stdout, meta


def test_an_install_that_cannot_write_says_so_and_fails(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    res = ocf("install", "--ocf-root", str(blocker))
    assert res.returncode == 1
    assert "cannot install the resource agents" in res.stderr + res.stdout
    assert blocker.read_text() == ""
