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

from config.loader import load_site
from infra.bench.alert import stop_groups
from infra.install import ROLES, InstallError, Settings, units
from infra.ports import free_port
from infra.serve import deployment_name
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
        if name in ("handover-worker.service", "handover-serve.service"):
            # their runs (a paused one waiting for its approval) outlive a restart
            assert _lines(text, "KillMode") == ["process"], name
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
        if Path(argv[0]).name == "haproxy":
            assert "-Ws" in argv and argv[-1].endswith("/haproxy.cfg"), name
            continue
        if Path(argv[0]).name != "handover":
            assert argv[:3] == [sys.executable, "-m", "prefect"], name
            continue
        assert Path(argv[0]) == Path(sys.executable).parent / "handover"
        args = build_parser().parse_args(argv[1:])  # exits (fails the test) on a bad option
        assert args.command == COMMANDS[name], name


def test_the_serve_worker_and_gateway_units_serve_every_site_given() -> None:
    """`handover install --site A --site B`: one serve, worker and gateway for both sites (each
    site's deployments are its own); the exporter, which reads one site, is refused with
    several and installed site by site."""
    from infra.cli import build_parser

    geo = ROOT / "config" / "sites" / "geo-lab.yaml"
    s = _settings(more_sites=((geo, "geo-lab"),))
    written = units(["serve", "worker", "gateway"], s)
    for name, text in written.items():
        [start] = _lines(text, "ExecStart")
        args = build_parser().parse_args(shlex.split(start)[1:])
        assert args.site == [str(LAB_SITE.resolve()), str(geo)], name
        assert _lines(text, "Description")[0].endswith("sites lab, geo-lab"), name
    with pytest.raises(InstallError, match="reads one site"):
        units(["exporter"], s)
    out = subprocess.run(
        [
            *(sys.executable, "-m", "infra.cli", "install", "--dry-run"),
            *("--site", "lab", "--site", "geo-lab"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "handover-exporter.service" not in out.stdout
    assert "# /etc/systemd/system/handover-gateway.service" in out.stdout


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


def _unit_env(text: str, files: dict[str, str]) -> dict[str, str]:
    """The environment a unit gives its command: this process's (PATH, HOME) without Prefect's
    settings, then its EnvironmentFile (`files`: each file's content), then its Environment
    lines, as systemd applies them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    for path in _lines(text, "EnvironmentFile"):
        for line in files[Path(path).name].splitlines():
            if line and not line.startswith("#"):
                key, value = line.split("=", 1)
                env[key] = value
    for assignment in _lines(text, "Environment"):
        key, value = assignment.split("=", 1)
        env[key] = value
    return env


def _http_ok(url: str, token: str | None = None) -> bool:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=3) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def test_each_units_command_runs_with_the_units_environment(tmp_path: Path) -> None:
    """Every unit's ExecStart, run with the unit's environment (its files and lines), in the
    order systemd starts them: the migration, the API, the background services, then handover's
    own processes against that API. The HA group daemon's unit runs `handover hagd run
    --config`, the command the lab starts on each front end (tests/test_hagd.py)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    port, gw_port, ex_port = free_port(), free_port(), free_port()
    s = _settings(
        port=port,
        state=tmp_path / "state",
        etc=tmp_path / "etc",
        pool="pool-install",
        gateway_port=gw_port,
        exporter_port=ex_port,
    )
    written = units(["server", "serve", "worker", "gateway", "exporter"], s)
    auth = "handover:test-install-0123456789"
    token = "exporter-token-0123456789abcdef"
    files = {
        "prefect-server.env": f"PREFECT_SERVER_API_AUTH_STRING={auth}\n",
        "client.env": f"PREFECT_API_URL={s.api_url}\nPREFECT_API_AUTH_STRING={auth}\n",
    }
    (tmp_path / "etc" / "secrets").mkdir(parents=True, mode=0o700)
    (tmp_path / "etc" / "secrets" / "exporter-token").write_text(token + "\n")
    (tmp_path / "etc" / "secrets" / "exporter-token").chmod(0o600)
    secrets_env = {
        "HANDOVER_SLACK_BOT_TOKEN": "xoxb-test-install",
        "HANDOVER_SLACK_SIGNING_SECRET": "signing-secret-test-install",
        "HANDOVER_WEBHOOK_SECRET": "webhook-secret-test-install",
        "HANDOVER_ALERTMANAGER_TOKEN": "alertmanager-token-test-install",
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs = tmp_path / "logs"
    logs.mkdir()

    def start(name: str) -> subprocess.Popen[bytes]:
        text = written[f"{name}.service"]
        env = {**_unit_env(text, files), **secrets_env}
        Path(env["PREFECT_HOME"]).mkdir(parents=True, mode=0o700, exist_ok=True)
        [argv] = _lines(text, "ExecStart")
        with open(logs / f"{name}.log", "wb") as log:
            procs[name] = subprocess.Popen(
                shlex.split(argv),
                env=env,
                cwd=tmp_path,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return procs[name]

    def alive(name: str) -> bool:
        assert procs[name].poll() is None, (logs / f"{name}.log").read_text()[-2000:]
        return True

    try:
        migrate = start("handover-prefect-migrate")
        assert migrate.wait(300) == 0, (logs / "handover-prefect-migrate.log").read_text()[-2000:]
        start("handover-prefect-api")
        wait_for(
            lambda: alive("handover-prefect-api") and _http_ok(f"{s.api_url}/health"),
            120,
            "the API unit's command to answer /api/health",
            interval=0.5,
        )
        for name in ("services", "serve", "worker", "gateway", "exporter"):
            start(f"handover-prefect-{name}" if name == "services" else f"handover-{name}")
        wait_for(
            lambda: (
                alive("handover-prefect-services")
                and "Starting services" in (logs / "handover-prefect-services.log").read_text()
            ),
            120,
            "the background services' command to start them",
            interval=0.5,
        )
        wait_for(
            lambda: alive("handover-gateway") and _http_ok(f"http://127.0.0.1:{gw_port}/healthz"),
            120,
            "the gateway unit's command to answer /healthz",
            interval=0.5,
        )
        wait_for(
            lambda: (
                alive("handover-exporter")
                and _http_ok(f"http://127.0.0.1:{ex_port}/metrics", token)
            ),
            120,
            "the exporter unit's command to serve /metrics with its token",
            interval=0.5,
        )
        assert not _http_ok(f"http://127.0.0.1:{ex_port}/metrics")  # not without it
        with temporary_settings({PREFECT_API_URL: s.api_url, PREFECT_API_AUTH_STRING: auth}):

            def served() -> bool:
                alive("handover-serve")
                with get_client(sync_client=True) as client:
                    wanted = deployment_name("clean-move", load_site(LAB_SITE))
                    return any(d.name == wanted for d in client.read_deployments())

            def worker_up() -> bool:
                alive("handover-worker")
                with get_client(sync_client=True) as client:
                    try:
                        return bool(client.read_workers_for_work_pool("pool-install"))
                    except ObjectNotFound:  # the worker makes its pool
                        return False

            wait_for(served, 180, "the serve unit's command to serve clean-move", interval=1)
            wait_for(worker_up, 180, "the worker unit's command to join its pool", interval=1)
    finally:
        stop_groups(list(procs.values()))


def test_with_ha_the_servers_share_redis_and_the_clients_use_the_balancer(
    tmp_path: Path,
) -> None:
    from infra.install import ENV_FILES, HA_ENV

    s = _settings(ha=True, balancer=("10.0.0.9", 4200), port=4201)
    assert s.api_url == "http://10.0.0.9:4200/api"
    for name, text in units(["server"], s).items():
        if name != "handover-prefect-migrate.service":
            assert "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=prefect_redis.lease_storage" in _lines(
                text, "Environment"
            ), name
            assert "PREFECT_API_DATABASE_MIGRATE_ON_START=false" in _lines(text, "Environment")
    assert "PREFECT_MESSAGING_BROKER=prefect_redis.messaging" in HA_ENV
    server_env = ENV_FILES["prefect-server.env"].format(auth="x", api_url=s.api_url, ha=HA_ENV)
    assert "PREFECT_SERVER_DOCKET_URL=redis://" in server_env
    # one server keeps its leases on disk
    [one] = [t for n, t in units(["server"], _settings()).items() if "api" in n]
    assert "prefect_redis" not in one
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "infra.cli",
            "install",
            "--dry-run",
            "--ha",
            "--role",
            "balancer",
            "--api-servers",
            "127.0.0.1:4301,127.0.0.1:4302",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    cfg = out.stdout.split("# /etc/handover/haproxy.cfg\n", 1)[1]
    assert "server api-2 127.0.0.1:4302 check" in cfg
    require(shutil.which("haproxy") is not None, "haproxy (apt-get install haproxy)")
    (tmp_path / "haproxy.cfg").write_text(cfg)
    check = subprocess.run(
        ["haproxy", "-c", "-f", str(tmp_path / "haproxy.cfg")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
