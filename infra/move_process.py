"""A clean move in a process of its own, as an operator types it (`handover run clean-move ...
--yes --json`): for the benches and tests that kill it, restart its server under it, or read its
JSON report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def clean_move_argv(
    site_file: str | Path, from_host: str, to_host: str, mode: str | None = None
) -> list[str]:
    """The command line of `handover run clean-move ... --yes --json`."""
    argv = [sys.executable, "-m", "infra.cli", "run", "clean-move", "--site", str(site_file)]
    argv += ["--from", from_host, "--to", to_host]
    if mode is not None:
        argv += ["--mode", mode]
    return [*argv, "--yes", "--json"]


def start_clean_move(
    site_file: str | Path,
    from_host: str,
    to_host: str,
    *,
    mode: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    """Start the move in its own session (stop it with `os.killpg`), its JSON report on stdout
    (piped) and its progress discarded."""
    return subprocess.Popen(
        clean_move_argv(site_file, from_host, to_host, mode),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
