"""`handover install`: the systemd units of every role, filled in for this machine, pass
`systemd-analyze verify`; their command lines are ones handover's parser accepts; the Prefect
API unit's command, run with the unit's environment, serves."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from infra.bench.alert import stop_groups
from infra.install import ROLES, Settings, units
from infra.ports import free_port
from tests.conftest import LAB_SITE, ROOT, require, wait_for

pytestmark = pytest.mark.server


#: the command each of handover's own units runs
COMMANDS = {
    "handover-serve.service": "serve",
    "handover-worker.service": "worker",
    "handover-gateway.service": "gateway",
    "handover-exporter.service": "exporter",
    "handover-hagd.service": "hagd",
}


def _settings(**kw: object) -> Settings:
    return Settings(site=LAB_SITE.resolve(), site_name="lab", **kw)  # type: ignore[arg-type]


def _lines(text: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(f"{key}=")]


def test_every_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    require(
        shutil.which("systemd-analyze") is not None, "systemd-analyze (apt-get install systemd)"
    )
    written = units(list(ROLES), _settings())
    assert set(written) == {f"{u}.service" for role in ROLES.values() for u in role}
    for name, text in written.items():
        assert "${" not in text, name
        (tmp_path / name).write_text(text)
    done = subprocess.run(
        ["systemd-analyze", "verify", *sorted(str(p) for p in tmp_path.iterdir())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # a wrong key is only a warning for systemd: any output is a defect
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), (
        done.stdout + done.stderr
    )
    broken = tmp_path / "broken.service"
    broken.write_text(written["handover-gateway.service"].replace("NoNewPrivileges", "NoNewPriv"))
    said = subprocess.run(
        ["systemd-analyze", "verify", str(broken)], capture_output=True, text=True, timeout=60
    )
    assert "Unknown key 'NoNewPriv'" in said.stderr  # the check above can fail


def test_every_unit_but_the_daemons_own_is_hardened_and_restarts() -> None:
    for name, text in units(list(ROLES), _settings()).items():
        assert _lines(text, "Restart") == ["on-failure"], name
        assert _lines(text, "PrivateTmp") == ["yes"], name
        if name == "handover-hagd.service":
            assert _lines(text, "KillMode") == ["process"]  # its services outlive a restart
            continue
        assert _lines(text, "User") == ["handover"], name
        assert _lines(text, "NoNewPrivileges") == ["yes"], name
        assert _lines(text, "ProtectSystem") == ["strict"], name
        assert _lines(text, "StateDirectoryMode") == ["0700"], name


def test_handovers_command_lines_are_ones_its_parser_accepts() -> None:
    from infra.cli import build_parser

    for name, text in units(list(ROLES), _settings(pool="pool-a")).items():
        [start] = _lines(text, "ExecStart")
        argv = shlex.split(start)
        if Path(argv[0]).name != "handover":
            assert argv[:3] == [sys.executable, "-m", "prefect"], name
            continue
        assert Path(argv[0]) == Path(sys.executable).parent / "handover"
        args = build_parser().parse_args(argv[1:])  # exits (fails the test) on a bad option
        assert args.command == COMMANDS[name], name


def test_the_dry_run_prints_each_roles_units() -> None:
    for role, names in ROLES.items():
        out = subprocess.run(
            [sys.executable, "-m", "infra.cli", "install", "--dry-run", "--role", role],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        for unit in names:
            assert f"# /etc/systemd/system/{unit}.service" in out.stdout
        assert "[Install]" in out.stdout and "${" not in out.stdout


def test_writing_units_needs_root_or_says_so(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "infra.cli",
            "install",
            "--unit-dir",
            str(tmp_path / "units"),
            "--etc",
            str(tmp_path / "etc"),
            "--role",
            "gateway",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if os.geteuid() != 0:
        assert out.returncode == 2 and "needs root" in out.stderr
        return
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "units" / "handover-gateway.service").exists()
    for env in ("client.env", "prefect-server.env"):
        path = tmp_path / "etc" / env
        assert path.stat().st_mode & 0o777 == 0o600, env
    assert "systemctl enable --now handover-gateway.service" in out.stdout


def test_the_api_units_command_serves_with_the_units_environment(tmp_path: Path) -> None:
    port = free_port()
    text = units(["server"], _settings(port=port, state=tmp_path))["handover-prefect-api.service"]
    env = {**os.environ, "PREFECT_SERVER_API_AUTH_STRING": "handover:test-install-0123456789"}
    env.pop("PREFECT_API_URL", None)
    for assignment in _lines(text, "Environment"):
        key, value = assignment.split("=", 1)
        env[key] = value
    (tmp_path / "prefect").mkdir(mode=0o700)
    [start] = _lines(text, "ExecStart")
    proc = subprocess.Popen(
        shlex.split(start),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        wait_for(healthy, 90, "the API unit's command to answer /api/health", interval=0.5)
        assert proc.poll() is None
    finally:
        stop_groups([proc])
