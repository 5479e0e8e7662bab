"""`handover server start`'s Prefect server: on loopback, requiring its auth string, which
handover's commands send (a real server started and stopped by PID)."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from infra import prefect_server
from infra.ports import free_port
from tests.conftest import ROOT


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


def test_server_on_a_postgresql_it_starts_keeps_its_data_and_stops_it(tmp_path: Path) -> None:
    from infra.pg_cluster import pg_bin_dir
    from infra.prefect_db import ServerDatabase
    from tests.conftest import require

    require(pg_bin_dir() is not None, "a PostgreSQL server (apt-get install postgresql)")
    # pytest's temporary directories are 0700; PostgreSQL runs as the postgres user
    refused = _handover(tmp_path / "home", "server", "start", "--port", "1", "--db", "postgresql")
    assert refused.returncode == 2 and "the postgres user cannot reach" in refused.stdout
    base = Path(tempfile.mkdtemp(prefix="handover-test-pg-", dir="/var/tmp"))
    base.chmod(0o755)
    home, other = base / "prefect", base / "prefect-2"
    port, pg_port, port2 = free_port(), free_port(), free_port()
    url = f"http://127.0.0.1:{port}/api"
    start = ("server", "start", "--port", str(port), "--db", "postgresql")
    with CommandLines() as cmdlines:
        started = _handover(home, *start, "--pg-port", str(pg_port))
    db = ServerDatabase(home, pg_port)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"started at {url}" in started.stdout
        assert f"postgresql+asyncpg://prefect:***@127.0.0.1:{pg_port}/prefect" in started.stdout
        assert (db.password_file.stat().st_mode & 0o777) == 0o600
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
        again = _handover(home, *start, "--pg-port", str(pg_port))
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
        restarted = _handover(home, *start, "--pg-port", str(pg_port))
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
