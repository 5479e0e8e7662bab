"""`handover server start`'s Prefect server: on loopback, requiring its auth string, which
handover's commands send (a real server started and stopped by PID)."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from infra import prefect_server
from infra.bench.alert import stop_groups
from infra.ports import free_port
from tests.conftest import ROOT

pytestmark = pytest.mark.server


def _get(url: str, auth: str | None = None) -> int:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_local_server_requires_its_auth_string(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "prefect"
    port = free_port()
    monkeypatch.delenv("PREFECT_API_AUTH_STRING", raising=False)
    url, started = prefect_server.ensure_server("127.0.0.1", port, home=home)
    try:
        assert started
        auth = (home / "api-auth").read_text().strip()
        assert auth.startswith("handover:") and len(auth) > 30
        assert (home / "api-auth").stat().st_mode & 0o777 == 0o600
        # nothing the server keeps is open to other users: its SQLite database (run
        # parameters, Secret blocks), its log, its PID, the auth string
        assert (home / "prefect.db").exists()
        assert _not_private(home) == []
        assert os.environ["PREFECT_API_AUTH_STRING"] == auth
        assert _get(f"{url}/health") == 200  # probes need no credentials
        assert _get(f"{url}/flows/count") in (401, 405)  # nothing without them
        assert _get(f"{url}/admin/version") == 401
        assert _get(f"{url}/admin/version", auth) == 200
        assert _get(f"{url}/admin/version", "handover:guess") == 401
        # a client of handover's (here Prefect's own, in another process) gets in with it
        code = (
            "from prefect.client.orchestration import get_client\n"
            "with get_client(sync_client=True) as c:\n"
            "    print(c.api_healthcheck() is None and c.read_flows() is not None)\n"
        )
        env = {**os.environ, "PREFECT_API_URL": url}
        ok = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert ok.stdout.strip() == "True", ok.stderr[-1500:]
        env.pop("PREFECT_API_AUTH_STRING")
        denied = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert denied.returncode != 0 and "401" in denied.stderr
    finally:
        assert prefect_server.stop_server(home)


def _not_private(home: Path) -> list[str]:
    """Every path in `home` (and `home` itself) that another user may read or enter."""
    loose = [home, *home.rglob("*")]
    return [f"{p} {p.lstat().st_mode & 0o777:04o}" for p in loose if p.lstat().st_mode & 0o077]


def _handover(home: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HANDOVER_PREFECT_HOME": str(home), "COLUMNS": "400"}
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_API_AUTH_STRING", None)
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _client_call(url: str, home: Path, code: str) -> str:
    env = {
        **os.environ,
        "PREFECT_API_URL": url,
        "PREFECT_API_AUTH_STRING": (home / "api-auth").read_text().strip(),
    }
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-1500:]
    return done.stdout.strip()


MAKE_FLOW = (
    "from prefect.client.orchestration import get_client\n"
    "from prefect.client.schemas.actions import FlowCreate\n"
    "with get_client(sync_client=True) as c:\n"
    "    r = c._client.post('/flows/', json={'name': 'kept-across-restarts'})\n"
    "    r.raise_for_status()\n"
    "    print(r.json()['id'])\n"
)
READ_FLOWS = (
    "from prefect.client.orchestration import get_client\n"
    "with get_client(sync_client=True) as c:\n"
    "    print(','.join(sorted(f.name for f in c.read_flows())))\n"
)


class CommandLines:
    """Every distinct command line of the machine's processes, read from /proc as often as it
    can while the block runs (a short-lived psql included)."""

    def __init__(self) -> None:
        import threading

        self.seen: set[bytes] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        import time

        while not self._stop.is_set():
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        with open(f"/proc/{pid}/cmdline", "rb") as f:
                            self.seen.add(f.read())
                    except OSError:
                        pass  # gone meanwhile
            time.sleep(0.001)

    def __enter__(self) -> CommandLines:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def holding(self, secret: str) -> list[str]:
        """The command lines seen that hold `secret` (shown without it)."""
        return [
            c.replace(b"\0", b" ").decode(errors="replace").replace(secret, "<secret>")
            for c in self.seen
            if secret.encode() in c
        ]


@pytest.mark.lab
def test_server_on_a_postgresql_it_starts_keeps_its_data_and_stops_it(tmp_path: Path) -> None:
    from infra.pg_cluster import pg_bin_dir
    from infra.prefect_db import ServerDatabase
    from tests.conftest import require

    require(
        pg_bin_dir() is not None,
        "a PostgreSQL server (apt-get install postgresql)",
        need="lab",
    )
    # pytest's temporary directories are 0700; PostgreSQL runs as the postgres user
    refused = _handover(
        tmp_path / "home",
        *("server", "start", "--port", "1", "--db", "postgresql"),
        *("--pg-dir", str(tmp_path / "pg")),
    )
    assert refused.returncode == 2 and "the postgres user cannot reach" in refused.stdout
    base = Path(tempfile.mkdtemp(prefix="handover-test-pg-", dir="/var/tmp"))
    base.chmod(0o755)
    home, other = base / "prefect", base / "prefect-2"
    port, pg_port, port2 = free_port(), free_port(), free_port()
    url = f"http://127.0.0.1:{port}/api"
    start = ("server", "start", "--port", str(port), "--db", "postgresql")
    start_pg = (*start, "--pg-port", str(pg_port), "--pg-dir", str(base / "pg"))
    with CommandLines() as cmdlines:
        started = _handover(home, *start_pg)
    db = ServerDatabase(home, pg_port, base / "pg")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"started at {url}" in started.stdout
        assert f"postgresql+asyncpg://prefect:***@127.0.0.1:{pg_port}/prefect" in started.stdout
        assert (db.password_file.stat().st_mode & 0o777) == 0o600
        assert db.password_file.parent == home and _not_private(home) == []
        # the password is in neither the output nor the record status prints, nor on the
        # command line of any process the start ran (psql setting the role's password)
        password = db.password_file.read_text().strip()
        assert password not in started.stdout
        assert any(b"psql" in c for c in cmdlines.seen)  # the watch saw the short-lived psql
        assert cmdlines.holding(password) == []
        status = _handover(home, "server", "status", "--port", str(port))
        assert status.returncode == 0 and "healthy; database postgresql" in status.stdout
        assert password not in status.stdout
        # Prefect's own tables are in that PostgreSQL, not in a SQLite file
        assert db.cluster.psql("SELECT to_regclass('public.flow_run')", "prefect").strip()
        assert not (home / "prefect.db").exists()
        _client_call(url, home, MAKE_FLOW)
        # the same command again: one server, one database
        again = _handover(home, *start_pg)
        assert again.returncode == 0 and "already running" in again.stdout
        sqlite_asked = _handover(home, "server", "start", "--port", str(port))
        assert sqlite_asked.returncode == 1 and "server stop` first" in sqlite_asked.stdout

        # a second server (its own home) on the same database, named by URL in a private
        # file: the same flows, and the password on no command line
        url_file = base / "db-url"
        url_file.write_text(db.url().replace("postgresql+asyncpg://", "postgresql://") + "\n")
        url_file.chmod(0o600)
        second_start = ("server", "start", "--port", str(port2), "--db", "postgresql")
        with CommandLines() as cmdlines:
            second = _handover(other, *second_start, "--db-url-file", str(url_file))
        assert second.returncode == 0, second.stdout + second.stderr
        assert cmdlines.holding(password) == []
        second_url = f"http://127.0.0.1:{port2}/api"
        assert "kept-across-restarts" in _client_call(second_url, other, READ_FLOWS)
        assert "stopped" in _handover(other, "server", "stop").stdout
        assert db.pid() is not None  # not its database to stop

        stopped = _handover(home, "server", "stop")
        assert stopped.returncode == 0
        assert "Prefect server stopped; its PostgreSQL stopped (data kept)" in stopped.stdout
        assert db.pid() is None and not prefect_server.healthy(url)

        # started again: what was written before the stop is still there
        restarted = _handover(home, *start_pg)
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        assert "kept-across-restarts" in _client_call(url, home, READ_FLOWS)
    finally:
        _handover(other, "server", "stop")
        _handover(home, "server", "stop")
        db.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_server_refuses_a_database_url_it_cannot_use(tmp_path: Path) -> None:
    port = str(free_port())
    shared = tmp_path / "db-url"
    shared.write_text("postgresql://u:p@h/db\n")
    shared.chmod(0o644)
    for argv, said in (
        (("--db", "postgresql", "--db-url", "mysql://u@h/db"), "is not a PostgreSQL URL"),
        (("--db", "postgresql", "--db-url", "postgresql://u@h"), "needs a host and a database"),
        (("--db-url", "postgresql://u@h/db"), "--db-url goes with --db postgresql"),
        # a password on the command line: every user can read it in ps
        (
            ("--db", "postgresql", "--db-url", "postgresql://u:p@h/db"),
            "--db-url carries a password",
        ),
        (("--db", "postgresql", "--db-url-file", str(shared)), f"`chmod 600 {shared}`"),
        (("--db-url-file", str(shared)), "--db-url-file goes with --db postgresql"),
        (
            ("--db", "postgresql", "--db-url", "postgresql://u@h/db", "--db-url-file", str(shared)),
            "not both",
        ),
    ):
        done = _handover(tmp_path / "home", "server", "start", "--port", port, *argv)
        assert done.returncode == 2, done.stdout + done.stderr
        assert said in done.stdout
        assert not prefect_server.healthy(f"http://127.0.0.1:{port}/api")


def test_the_default_home_is_private_state_not_a_shared_temporary_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("HANDOVER_PREFECT_HOME", raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert prefect_server.default_home() == Path("/var/lib/handover/prefect")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_STATE_HOME", "/home/op/.state")
    assert prefect_server.default_home() == Path("/home/op/.state/handover/prefect")
    monkeypatch.setenv("HANDOVER_PREFECT_HOME", "/srv/prefect")
    assert prefect_server.default_home() == Path("/srv/prefect")


def _start_refused(home: Path, said: str) -> None:
    port = free_port()
    done = _handover(home, "server", "start", "--port", str(port))
    try:
        assert done.returncode == 2, done.stdout + done.stderr
        assert said in done.stdout, done.stdout
        assert not prefect_server.healthy(f"http://127.0.0.1:{port}/api")
    finally:
        if prefect_server.healthy(f"http://127.0.0.1:{port}/api"):  # started after all: stop it
            _handover(home, "server", "stop")


def test_a_home_that_is_not_private_is_refused_naming_the_fix(tmp_path: Path) -> None:
    """A home other users can enter, or one another user made first (in a shared directory it
    could be anyone's), is refused before anything is read from it or written to it."""
    open_home = tmp_path / "open"
    open_home.mkdir(mode=0o755)
    open_home.chmod(0o755)
    _start_refused(open_home, f"chmod 700 {open_home}")
    assert list(open_home.iterdir()) == []
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    # a planted auth string and logging configuration (Prefect loads logging.yml from its home)
    (theirs / "api-auth").write_text("handover:planted\n")
    (theirs / "logging.yml").write_text("version: 1\n")
    for p in (theirs, theirs / "api-auth", theirs / "logging.yml"):
        os.chown(p, 65534, 65534)  # nobody's
    _start_refused(theirs, f"chown root {theirs}")
    # a directory above the home that others may write
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    _start_refused(shared / "home", f"chmod go-w {shared}")
    assert not (shared / "home").exists()


def test_planted_files_in_a_private_home_are_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    auth = home / "api-auth"
    auth.write_text("handover:known-to-others\n")
    auth.chmod(0o644)
    _start_refused(home, f"chmod 600 {auth}")
    auth.unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("handover:someone-elses\n")
    elsewhere.chmod(0o600)
    auth.symlink_to(elsewhere)
    _start_refused(home, "symbolic link")
    auth.unlink()
    # the log as a link to a file the server would then write into
    target = tmp_path / "target"
    target.write_text("")
    (home / "server.log").symlink_to(target)
    _start_refused(home, "symbolic link")
    assert target.read_text() == ""
    # a database file made readable by others (an older install's)
    (home / "server.log").unlink()
    (home / "prefect.db").write_text("")
    (home / "prefect.db").chmod(0o644)
    _start_refused(home, f"chmod -R go= {home}")


def test_stop_signals_only_a_prefect_server_of_its_own(tmp_path: Path) -> None:
    """A PID file naming another process (planted, or a PID reused since) stops nothing."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        (home / "server.pid").write_text(f"{bystander.pid}\n")
        (home / "server.pid").chmod(0o600)
        done = _handover(home, "server", "stop")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "no Prefect server started by handover is running" in done.stdout
        assert bystander.poll() is None
        # a PID file other users may write is refused outright
        (home / "server.pid").write_text(f"{bystander.pid}\n")
        (home / "server.pid").chmod(0o666)
        refused = _handover(home, "server", "stop")
        assert refused.returncode == 2 and f"chmod 600 {home}/server.pid" in refused.stdout
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_a_server_of_another_user_at_the_address_never_gets_the_auth_string(
    tmp_path: Path,
) -> None:
    """Another local user who listens on the server's port first (a look-alike that answers
    the health check) is refused before any request carries the auth string."""
    port = free_port()
    # where the user nobody can reach (pytest's directories are 0700)
    shared = Path(tempfile.mkdtemp(prefix="handover-test-lookalike-", dir="/var/tmp"))
    shared.chmod(0o755)
    seen = shared / "seen"
    seen.touch()
    seen.chmod(0o666)
    fake = (
        "import http.server, sys\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        open(sys.argv[2], 'a').write(str(self.headers.get('Authorization')) + '\\n')\n"
        "        self.send_response(200); self.end_headers(); self.wfile.write(b'true')\n"
        "    def log_message(self, *a): pass\n"
        "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n"
    )
    script = shared / "fake.py"
    script.write_text(fake)
    script.chmod(0o644)
    proc = subprocess.Popen(
        ["runuser", "-u", "nobody", "--", "/usr/bin/python3", str(script), str(port), str(seen)],
        start_new_session=True,
    )
    try:
        from tests.conftest import wait_for

        wait_for(lambda: prefect_server.healthy(api_url(port)), 30, "the look-alike to listen")
        home = tmp_path / "home"
        done = _handover(home, "server", "start", "--port", str(port))
        assert done.returncode == 2, done.stdout + done.stderr
        assert "is served by user nobody, not by you" in done.stdout
        assert "Basic" not in seen.read_text()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
        shutil.rmtree(shared, ignore_errors=True)


def api_url(port: int) -> str:
    return prefect_server.api_url("127.0.0.1", port)


def test_a_served_schedule_gets_its_runs_from_handovers_server_and_the_first_runs(
    tmp_path: Path,
) -> None:
    """The server `handover server start` starts creates the runs of a deployment that handover
    serves with a schedule (the drift watch, from deployments/prefect.yaml with its interval
    cut to 15 s so that its first run comes soon), and the first one runs to its end. With
    SQLAlchemy 2.1, Prefect 3.8's scheduler created none."""
    import yaml

    from config.loader import load_site
    from infra.serve import DEPLOYMENTS_FILE, deployment_name
    from tests.conftest import LAB_SITE, wait_for

    home = tmp_path / "home"
    port = free_port()
    url = api_url(port)
    data = yaml.safe_load(LAB_SITE.read_text())
    for section in ("dns", "frontend"):
        data.pop(section)
    data["site"] = "scheduled"
    sites = tmp_path / "sites"
    sites.mkdir()
    site_file = sites / "scheduled.yaml"
    site_file.write_text(yaml.safe_dump(data, sort_keys=False))
    spec = yaml.safe_load(DEPLOYMENTS_FILE.read_text())
    [watch] = [d for d in spec["deployments"] if d["name"] == "drift-watch"]
    watch["interval"] = 15
    spec["deployments"] = [watch]
    deployments = tmp_path / "prefect.yaml"
    deployments.write_text(yaml.safe_dump(spec, sort_keys=False))
    started = _handover(home, "server", "start", "--port", str(port))
    assert started.returncode == 0, started.stdout + started.stderr
    env = {
        **os.environ,
        "PREFECT_API_URL": url,
        "PREFECT_API_AUTH_STRING": (home / "api-auth").read_text().strip(),
        "PREFECT_HOME": str(tmp_path / "client-home"),
    }
    serve_code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from infra.serve import serve_all\n"
        "serve_all(sys.argv[1], path=Path(sys.argv[2]))\n"
    )
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        serve = subprocess.Popen(
            [sys.executable, "-c", serve_code, str(site_file), str(deployments)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    auth = (home / "api-auth").read_text().strip()
    watch_name = deployment_name("drift-watch", load_site(site_file))

    def runs() -> list[list[object]]:
        # in this process (a client in a new one per poll cost a Prefect import each time)
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
        from prefect.settings import (
            PREFECT_API_AUTH_STRING,
            PREFECT_API_URL,
            temporary_settings,
        )

        with temporary_settings({PREFECT_API_URL: url, PREFECT_API_AUTH_STRING: auth}):
            with get_client(sync_client=True) as c:
                found = c.read_flow_runs(
                    deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[watch_name]))
                )
        return [
            [
                r.auto_scheduled,
                r.state_type.value if r.state_type else None,
                r.state_name,
                r.state.message if r.state else "",
            ]
            for r in found
        ]

    try:
        ran = wait_for(
            lambda: [r for r in runs() if r[0] and r[1] in ("COMPLETED", "FAILED", "CRASHED")],
            120,
            "the drift watch's first scheduled run to end",
            interval=2,
        )
        assert isinstance(ran, list)
        assert ran[0][1] == "COMPLETED", (ran, log.read_text()[-2000:])
        assert "has no DNS alias" in str(ran[0][3])
        # and the ones after it wait for their time
        assert any(r[0] and r[1] == "SCHEDULED" for r in runs())
        server_log = (home / "server.log").read_text()
        assert "Can't evaluate bulk DML statement" not in server_log
    finally:
        stop_groups([serve])
        _handover(home, "server", "stop")
