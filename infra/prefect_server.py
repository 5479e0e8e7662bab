"""A local Prefect server: on its embedded SQLite for the demo and for operators trying handover,
or on PostgreSQL (`infra/prefect_db.py`) for a site that runs handover on several machines.

`ensure_server()` reuses a server already answering at the address, or starts one in the
background (state under /var/tmp/handover-prefect) and waits, with a bound, until it is healthy.
It listens on loopback unless told otherwise and requires authentication: whoever reaches the API
could otherwise start procedures, resume paused ones or post events. The auth string is kept in
the server's home (mode 0600) and sent by handover's commands.

Why not `prefect server start --background` and `prefect server stop`: those keep one server per
PREFECT_HOME profile and return before it is healthy, with no handle on the process. The benches
run several temporary servers at once (SQLite and PostgreSQL, each with its own home and port)
and must see one exit early to print its log; `spawn` gives them the process, and the operator's
server is started the same way so that both paths are the one that is tested.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Literal

from infra.ports import free_port

HOME = Path(os.environ.get("HANDOVER_PREFECT_HOME", "/var/tmp/handover-prefect"))
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4200
#: Prefect 3.8's file-based lease storage (its default keeps leases in the server's memory)
LEASE_STORAGE = "prefect.server.concurrency.lease_storage.filesystem"


def api_url(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> str:
    """The API URL of a server at host:port."""
    return f"http://{host}:{port}/api"


def healthy(url: str) -> bool:
    """Whether a Prefect API answers its health check."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:  # noqa: S310 - http only
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def spawn(
    home: Path, host: str, port: int, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start `prefect server start` in its own session with its state (and log) in `home`."""
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # the service locks' leases outlive a restart (see flows/service_lock.py)
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": LEASE_STORAGE,
        **(extra_env or {}),
    }
    env.pop("PREFECT_API_URL", None)
    with open(home / "server.log", "ab") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                host,
                "--port",
                str(port),
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_healthy(url: str, proc: subprocess.Popen[bytes], home: Path, timeout: float) -> None:
    """Wait, with a bound, until the server answers.

    Raises:
        RuntimeError: it exited or did not answer in time; the message has its log's tail.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if healthy(url):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    log = home / "server.log"
    tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
    raise RuntimeError(f"the Prefect server did not become healthy at {url}; log tail:\n{tail}")


def api_auth(home: Path = HOME) -> str:
    """The API's basic-auth string of the server kept in `home` (``user:secret``, made on first
    use, mode 0600): the server requires it, and handover's commands send it."""
    path = home / "api-auth"
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        value = ""
    if not value:
        home.mkdir(parents=True, exist_ok=True)
        value = f"handover:{secrets.token_urlsafe(24)}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(value + "\n")
    return value


def ensure_server(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    timeout: float = 120.0,
    home: Path = HOME,
    *,
    db: Literal["sqlite", "postgresql"] = "sqlite",
    db_url: str | None = None,
    pg_port: int | None = None,
) -> tuple[str, bool]:
    """Make sure a local server answers; returns (API URL, whether this call started it).

    The server requires authentication (Prefect's ``PREFECT_SERVER_API_AUTH_STRING``) with the
    string kept in `home`; this process (and what it starts) sends it
    (``PREFECT_API_AUTH_STRING``), so call this before Prefect reads its settings.

    Args:
        host: the address it listens on.
        port: its port.
        timeout: how long to wait until it is healthy.
        home: its home (state, log, auth string, PID; the SQLite file or PostgreSQL cluster).
        db: `sqlite` (the embedded default, for the demo and one machine) or `postgresql`.
        db_url: with `postgresql`, a database run elsewhere; without it, handover starts a
            PostgreSQL of its own in `home` (`infra.prefect_db.ServerDatabase`).
        pg_port: the port of that PostgreSQL (default `prefect_db.DEFAULT_PG_PORT`).

    Raises:
        RuntimeError: the server did not become healthy (its log's tail in the message).
        infra.prefect_db.ServerDbError: the database could not be set up.
    """
    from infra import prefect_db

    url = api_url(host, port)
    auth = api_auth(home)
    os.environ["PREFECT_API_AUTH_STRING"] = auth
    if healthy(url):
        return url, False
    extra = {"PREFECT_UI_ENABLED": "true", "PREFECT_SERVER_API_AUTH_STRING": auth}
    if db == "postgresql":
        if db_url:
            conn = prefect_db.check_url(db_url)
        else:
            conn = prefect_db.ServerDatabase(home, pg_port or prefect_db.DEFAULT_PG_PORT).start()
        extra["PREFECT_API_DATABASE_CONNECTION_URL"] = conn
        record = prefect_db.redact(conn)
    elif db_url:
        raise prefect_db.ServerDbError("--db-url goes with --db postgresql")
    else:
        record = f"sqlite {home / 'prefect.db'}"
    home.mkdir(parents=True, exist_ok=True)
    (home / prefect_db.DB_RECORD).write_text(record + "\n")
    proc = spawn(home, host, port, extra)
    (home / "server.pid").write_text(f"{proc.pid}\n")
    wait_healthy(url, proc, home, timeout)
    return url, True


def stop_server(home: Path = HOME) -> bool:
    """Stop the server this module started (by its recorded PID). Returns whether one ran."""
    pid_file = home / "server.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink(missing_ok=True)
        return False
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    return True


def database_of(home: Path = HOME) -> str | None:
    """The database the server last started from `home` uses (`sqlite PATH` or `postgresql
    URL` without its password), or None."""
    from infra.prefect_db import DB_RECORD

    try:
        return (home / DB_RECORD).read_text().strip() or None
    except OSError:
        return None


def stop_database(home: Path = HOME) -> bool:
    """Stop the PostgreSQL that `ensure_server(db="postgresql")` started in `home` (cleanly; its
    data stays for the next start). Returns whether it ran."""
    from infra.prefect_db import ServerDatabase

    db = ServerDatabase(home)
    return db.cluster.exists() and db.stop()


class RestartableServer:
    """A temporary server of one's own (tests, benches), stopped and started again by PID with
    the same home: what a restart of the operator's server does to the runs that use it."""

    def __init__(self, home: Path, extra_env: dict[str, str] | None = None) -> None:
        self.home = home
        self.port = free_port()
        self.url = api_url(DEFAULT_HOST, self.port)
        self.env = dict(extra_env or {})
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 120) -> None:
        """Start it and wait until it is healthy.

        Raises:
            RuntimeError: it exited or stayed unhealthy (see `wait_healthy`).
        """
        self.proc = spawn(self.home, DEFAULT_HOST, self.port, self.env)
        wait_healthy(self.url, self.proc, self.home, timeout_s)

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL after 30 s); nothing when it is not running."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
