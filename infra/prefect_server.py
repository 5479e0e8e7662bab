"""A local Prefect server: on its embedded SQLite for the demo and for operators trying handover,
or on PostgreSQL (`infra/prefect_db.py`) for a site that runs handover on several machines.

`ensure_server()` reuses a server already answering at the address, or starts one in the
background and waits, with a bound, until it is healthy. It listens on loopback unless told
otherwise and requires authentication: whoever reaches the API could otherwise start procedures,
resume paused ones or post events. The auth string is kept in the server's home and sent by
handover's commands.

The home is private (`config.private_files`): a directory of the user who runs the server,
mode 0700 (default ``/var/lib/handover/prefect`` for root, ``~/.local/state/handover/prefect``
for another user, or ``$HANDOVER_PREFECT_HOME``), every file in it that user's and mode 0600
(the server runs with umask 077, so its SQLite database, run parameters and Secret blocks
included, is born so), no symbolic link in it. A home that another user made or can read, an
auth string or PID file that is not private, or a link planted there is refused before anything
is read from it or written to it, with the command that fixes it: Prefect loads
``logging.yml`` from its home and the stop signals the PID it finds there. A server that answers
at the address but listens as another user is refused too, before the auth string is sent to it.

Why not `prefect server start --background` and `prefect server stop`: those keep one server per
PREFECT_HOME profile and return before it is healthy, with no handle on the process. The benches
run several temporary servers at once (SQLite and PostgreSQL, each with its own home and port)
and must see one exit early to print its log; `spawn` gives them the process, and the operator's
server is started the same way so that both paths are the one that is tested.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from config.private_files import (
    UnsafePathError,
    check_private_tree,
    ensure_private_dir,
    open_private_append,
    read_private_text,
    write_private_text,
)
from infra.ports import free_port

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4200
#: Prefect's file-based lease storage (its default keeps leases in the server's memory); the
#: service lock names it too (`flows.service_lock.LEASE_STORAGE`), but this module must not
#: import Prefect: `ensure_server` sets the API's URL and auth string before Prefect reads its
#: settings, which it does once, when first imported
LEASE_STORAGE = "prefect.server.concurrency.lease_storage.filesystem"
#: the files of a home
AUTH_FILE = "api-auth"
PID_FILE = "server.pid"
LOG_FILE = "server.log"
#: the API URL of the server last started from the home (handover's commands pointed at it
#: send the home's auth string)
URL_FILE = "api-url"


def default_home() -> Path:
    """Where the server keeps its state: ``$HANDOVER_PREFECT_HOME``, else
    ``/var/lib/handover/prefect`` for root, else ``$XDG_STATE_HOME/handover/prefect`` (by
    default ``~/.local/state/handover/prefect``)."""
    given = os.environ.get("HANDOVER_PREFECT_HOME")
    if given:
        return Path(given)
    if os.geteuid() == 0:
        return Path("/var/lib/handover/prefect")
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "handover" / "prefect"


HOME = default_home()


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


def listener_uid(host: str, port: int) -> int | None:
    """The user ID owning the TCP socket that listens at host:port on this machine (IPv4, from
    /proc/net/tcp), or None when none is seen there (another machine, IPv6, no /proc)."""
    try:
        want = ipaddress.IPv4Address(host)
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except (ValueError, OSError):
        return None
    for line in lines:
        fields = line.split()
        local, state, uid = fields[1], fields[3], fields[7]
        addr_hex, port_hex = local.split(":")
        if state != "0A" or int(port_hex, 16) != port:  # 0A: LISTEN
            continue
        addr = ipaddress.IPv4Address(int.from_bytes(bytes.fromhex(addr_hex), "little"))
        if addr in (want, ipaddress.IPv4Address(0)):
            return int(uid)
    return None


def _refuse_foreign_listener(host: str, port: int) -> None:
    uid = listener_uid(host, port)
    if uid is not None and uid != os.geteuid():
        import pwd

        try:
            owner = pwd.getpwuid(uid).pw_name
        except KeyError:
            owner = str(uid)
        raise UnsafePathError(
            f"the Prefect API at {api_url(host, port)} is served by user {owner}, not by you: "
            "handover does not send it this home's auth string. Stop that server, or start "
            "handover's on another --port"
        )


def server_argv(host: str, port: int, *options: str) -> list[str]:
    """The command line of a Prefect API server at host:port (this interpreter's Prefect)."""
    argv = [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)]
    return [*argv, *options]


def spawn(
    home: Path, host: str, port: int, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start `prefect server start` in its own session, with umask 077, its state (and log)
    in the private directory `home` (made if missing).

    Raises:
        config.private_files.UnsafePathError: `home` is not private (the message has the fix).
    """
    ensure_private_dir(home)
    check_private_tree(home)
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # the service locks' leases outlive a restart (see flows/service_lock.py)
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": LEASE_STORAGE,
        # the UI's pages call the API at this address; Prefect's default names port 4200
        # whatever port the server listens on
        "PREFECT_UI_API_URL": api_url(host, port),
        **(extra_env or {}),
    }
    env.pop("PREFECT_API_URL", None)
    log = open_private_append(home / LOG_FILE)
    try:
        return subprocess.Popen(
            server_argv(host, port),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            umask=0o077,
        )
    finally:
        os.close(log)


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
    try:
        tail = read_private_text(home / LOG_FILE)[-1500:]
    except (OSError, UnicodeDecodeError):
        tail = ""
    raise RuntimeError(f"the Prefect server did not become healthy at {url}; log tail:\n{tail}")


def read_api_auth(home: Path = HOME) -> str | None:
    """The auth string kept in `home`, or None when there is none yet.

    Raises:
        config.private_files.UnsafePathError: the home or the file is not private.
    """
    if not os.path.lexists(home):
        return None
    try:
        value = read_private_text(home / AUTH_FILE).strip()
    except FileNotFoundError:
        return None
    return value or None


def auth_for(url: str, home: Path = HOME) -> str | None:
    """The auth string to send to `url` when it is the server kept in `home` (the one
    `ensure_server` last started from it, or the default address), else None.

    Raises:
        config.private_files.UnsafePathError: the home or its files are not private, or the
            server answering there listens as another user.
    """
    if not os.path.lexists(home):
        return None
    try:
        recorded = read_private_text(home / URL_FILE).strip()
    except FileNotFoundError:
        recorded = api_url()
    if url.rstrip("/") != recorded:
        return None
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.hostname and parts.port:
        _refuse_foreign_listener(parts.hostname, parts.port)
    return read_api_auth(home)


def api_auth(home: Path = HOME) -> str:
    """The API's basic-auth string of the server kept in `home` (``user:secret``, made on first
    use, mode 0600): the server requires it, and handover's commands send it.

    Raises:
        config.private_files.UnsafePathError: the home or the file is not private.
    """
    ensure_private_dir(home)
    value = read_api_auth(home)
    if value is None:
        value = f"handover:{secrets.token_urlsafe(24)}"
        write_private_text(home / AUTH_FILE, value + "\n")
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
    pg_dir: Path | None = None,
) -> tuple[str, bool]:
    """Make sure a local server answers; returns (API URL, whether this call started it).

    The server requires authentication (Prefect's ``PREFECT_SERVER_API_AUTH_STRING``) with the
    string kept in `home`; this process (and what it starts) sends it
    (``PREFECT_API_AUTH_STRING``), so call this before Prefect reads its settings.

    Args:
        host: the address it listens on.
        port: its port.
        timeout: how long to wait until it is healthy.
        home: its private home (state, log, auth string, PID, the SQLite file).
        db: `sqlite` (the embedded default, for the demo and one machine) or `postgresql`.
        db_url: with `postgresql`, a database run elsewhere; without it, handover starts a
            PostgreSQL of its own (`infra.prefect_db.ServerDatabase`).
        pg_port: the port of that PostgreSQL (default `prefect_db.DEFAULT_PG_PORT`).
        pg_dir: that PostgreSQL's directory (default `prefect_db.DEFAULT_PG_DIR`).

    Raises:
        RuntimeError: the server did not become healthy (its log's tail in the message).
        infra.prefect_db.ServerDbError: the database could not be set up.
        config.private_files.UnsafePathError: the home is not private, or another user's
            server answers at the address (the message has the fix).
    """
    from infra import prefect_db

    url = api_url(host, port)
    auth = api_auth(home)
    if healthy(url):
        _refuse_foreign_listener(host, port)
        os.environ["PREFECT_API_AUTH_STRING"] = auth
        return url, False
    os.environ["PREFECT_API_AUTH_STRING"] = auth
    extra = {"PREFECT_UI_ENABLED": "true", "PREFECT_SERVER_API_AUTH_STRING": auth}
    if db == "postgresql":
        if db_url:
            conn = prefect_db.check_url(db_url)
        else:
            conn = prefect_db.ServerDatabase(
                home, pg_port or prefect_db.DEFAULT_PG_PORT, pg_dir
            ).start()
        extra["PREFECT_API_DATABASE_CONNECTION_URL"] = conn
        record = prefect_db.redact(conn)
    elif db_url:
        raise prefect_db.ServerDbError("--db-url goes with --db postgresql")
    else:
        record = f"sqlite {home / 'prefect.db'}"
    write_private_text(home / prefect_db.DB_RECORD, record + "\n")
    write_private_text(home / URL_FILE, url + "\n")
    proc = spawn(home, host, port, extra)
    write_private_text(home / PID_FILE, f"{proc.pid}\n")
    wait_healthy(url, proc, home, timeout)
    return url, True


def _is_prefect_server(pid: int) -> bool:
    """Whether `pid` is a `prefect server start` of this user's."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        uid = Path(f"/proc/{pid}").stat().st_uid
    except OSError:
        return False
    # as `spawn` starts it: python -m prefect server start ...
    return uid == os.geteuid() and argv[1:5] == [b"-m", b"prefect", b"server", b"start"]


def stop_server(home: Path = HOME) -> bool:
    """Stop the server this module started (by its recorded PID, once it is known to be a
    Prefect server of this user's). Returns whether one ran.

    Raises:
        config.private_files.UnsafePathError: the home or its PID file is not private.
    """
    try:
        text = read_private_text(home / PID_FILE)
    except FileNotFoundError:
        return False
    try:
        pid = int(text.strip())
    except ValueError:
        (home / PID_FILE).unlink(missing_ok=True)
        return False
    if not _is_prefect_server(pid):
        # gone, or the PID was given to another process since: nothing of ours to stop
        (home / PID_FILE).unlink(missing_ok=True)
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        (home / PID_FILE).unlink(missing_ok=True)
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
    (home / PID_FILE).unlink(missing_ok=True)
    return True


def database_of(home: Path = HOME) -> str | None:
    """The database the server last started from `home` uses (`sqlite PATH` or `postgresql
    URL` without its password), or None."""
    from infra.prefect_db import DB_RECORD

    try:
        return read_private_text(home / DB_RECORD).strip() or None
    except OSError:
        return None


def stop_database(home: Path = HOME) -> bool:
    """Stop the PostgreSQL that `ensure_server(db="postgresql")` started for `home` (cleanly;
    its data stays for the next start). Returns whether it ran."""
    from infra.prefect_db import ServerDatabase

    db = ServerDatabase.of_home(home)
    return db is not None and db.cluster.exists() and db.stop()


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


@contextlib.contextmanager
def server_on_postgresql(work: Path) -> Iterator[RestartableServer]:
    """A temporary server of one's own (tests, benches) on a PostgreSQL of its own, as a site
    with several workers runs it: the server's home in `work/prefect`, the database in
    `work/pg` (the postgres user must be able to enter `work`). Yields the started server;
    stops it, then its database, on exit.

    Raises:
        infra.prefect_db.ServerDbError: the database could not be set up.
        RuntimeError: the server did not become healthy (see `wait_healthy`).
    """
    from infra.prefect_db import ServerDatabase

    db = ServerDatabase(work / "prefect", free_port(), work / "pg")
    srv = RestartableServer(work / "prefect", {"PREFECT_API_DATABASE_CONNECTION_URL": db.start()})
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()
        db.stop()
