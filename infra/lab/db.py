"""The lab's PostgreSQL server: create, start and stop the cluster, and connect to it.

The server runs as the `postgres` system user (PostgreSQL refuses to run as root), listens only on
the lab's loopback address, and trades durability for speed (fsync off): it is a test bed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import time
from collections.abc import Callable
from importlib import resources
from typing import Any, TypeVar

import pg8000.native

from infra.lab.paths import LabPaths
from infra.lab.runtime import HostRuntime, ghost_ports
from infra.pg_cluster import PgCluster, PgClusterError, pg_bin_dir

__all__ = [
    "DB_NAME",
    "DB_USER",
    "LabDatabase",
    "LabDbError",
    "connect",
    "connect_from_host",
    "pg_bin_dir",
]

T = TypeVar("T")

DB_NAME = "fts"
DB_USER = "fts"


class LabDbError(PgClusterError):
    """The lab database could not be created, started or reached."""


def connect(
    address: str,
    port: int,
    password: str,
    *,
    source_address: str | None = None,
    application_name: str | None = None,
    timeout: float = 5.0,
    avoid_ports: frozenset[int] = frozenset(),
) -> pg8000.native.Connection:
    """Open a session on the lab database.

    Args:
        address: the server's address.
        port: its port.
        password: the `fts` account's password.
        source_address: bind the client socket to this address, so the session's `client_addr`
            names the lab host it comes from (as a real agent's session names its machine).
        application_name: shown in `pg_stat_activity.application_name`.
        timeout: connect and socket timeout in seconds.
        avoid_ports: source ports not to use (a crashed host's dead sessions': see
            `infra.lab.runtime.ghost_ports`); only with `source_address`.
    """
    sock = None
    if source_address and avoid_ports:
        sock = _client_socket(address, port, source_address, timeout, avoid_ports)
    return pg8000.native.Connection(
        DB_USER,
        host=address,
        port=port,
        database=DB_NAME,
        password=password,
        source_address=(source_address, 0) if source_address and not sock else None,
        application_name=application_name,
        timeout=timeout,
        sock=sock,
        # the lab's server has no TLS: by default pg8000 would build a TLS context (loading the
        # system's CA certificates: about 25 ms of CPU) at every connection, only to be told so
        ssl_context=False,
    )


def _client_socket(
    address: str, port: int, source: str, timeout: float, avoid: frozenset[int]
) -> socket.socket:
    """A TCP connection to the server from `source` on a port not in `avoid`.

    The kernel may hand out a port again once its old socket is gone; the ports a crashed host's
    dead sessions used stay dropped by the lab's firewall, so a connection from one would hang.
    """
    held: list[socket.socket] = []  # kept bound until the end, so bind() cannot offer them again
    try:
        for _ in range(len(avoid) + 8):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((source, 0))
            if sock.getsockname()[1] not in avoid:
                break
            held.append(sock)
        else:
            raise pg8000.native.InterfaceError(f"no free source port on {source}")
        try:
            sock.settimeout(timeout)
            sock.connect((address, port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        except OSError as exc:
            sock.close()
            raise pg8000.native.InterfaceError(
                f"Can't create a connection to host {address} and port {port} "
                f"(timeout is {timeout} and source_address is {(source, 0)})."
            ) from exc
        return sock
    finally:
        for h in held:
            h.close()


def connect_from_host(
    rt: HostRuntime, password: str, *, application_name: str | None = None, timeout: float = 5.0
) -> pg8000.native.Connection:
    """Open a session from inside a lab host: from its address, never from a port of a dead
    session of its (see `connect`)."""
    return connect(
        rt["db_address"],
        rt["db_port"],
        password,
        source_address=rt["address"],
        application_name=application_name,
        timeout=timeout,
        avoid_ports=ghost_ports(rt),
    )


class LabDatabase:
    """The lab's PostgreSQL cluster under `<state_dir>/pg` (see `infra.pg_cluster.PgCluster`)."""

    def __init__(self, paths: LabPaths, address: str, port: int) -> None:
        self.paths = paths
        self.address = address
        self.port = port
        self.cluster = PgCluster(
            paths.pg_dir,
            paths.log_dir / "postgresql.log",
            address,
            port,
            # a test bed: speed over durability
            settings={
                "fsync": "off",
                "synchronous_commit": "off",
                "full_page_writes": "off",
                "shared_buffers": "32MB",
                "max_connections": "300",
                "log_min_messages": "warning",
                "log_connections": "off",
            },
            hba="local all postgres peer\nhost all all 127.0.0.0/8 scram-sha-256\n",
            what="lab database",
        )

    def password(self) -> str:
        """The `fts` account's password, generated once per lab state directory."""
        pw_file = self.paths.db_password
        if not pw_file.exists():
            self.paths.secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(pw_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(24))
        return pw_file.read_text().strip()

    def ensure_cluster(self) -> None:
        """Create the cluster once (initdb), owned by the postgres user."""
        self._call(self.cluster.ensure)

    def pid(self) -> int | None:
        """The postmaster's PID when it runs, else None."""
        return self.cluster.pid()

    def start(self) -> None:
        """Start the server (idempotent) and wait until it accepts connections."""
        self._call(self.cluster.start)

    def stop(self) -> None:
        """Stop the server at once (sessions are dropped; the lab keeps nothing across runs)."""
        self._call(lambda: self.cluster.stop("immediate"))

    def psql_admin(self, sql: str) -> str:
        """Run SQL as the superuser over the Unix socket."""
        return self._call(lambda: self.cluster.psql(sql))

    @staticmethod
    def _call(fn: Callable[[], T]) -> T:
        try:
            return fn()
        except LabDbError:
            raise
        except PgClusterError as exc:
            raise LabDbError(str(exc)) from exc

    def reset(self, channels: list[str]) -> None:
        """Recreate the `fts` database with the lab schema and every channel Active."""
        pw = self.password().replace("'", "''")
        self.psql_admin(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        self.psql_admin(
            f"DO $$ BEGIN CREATE ROLE {DB_USER} LOGIN; EXCEPTION WHEN duplicate_object THEN "
            f"NULL; END $$; ALTER ROLE {DB_USER} LOGIN NOSUPERUSER PASSWORD '{pw}'; "
            # what handover's drop-db-lock needs on PostgreSQL, and nothing more
            f"GRANT pg_signal_backend, pg_read_all_stats TO {DB_USER}"
        )
        self.psql_admin(f"CREATE DATABASE {DB_NAME} OWNER {DB_USER}")
        schema = resources.files("infra.lab").joinpath("sql/schema.sql").read_text()
        with contextlib.closing(self.connect()) as conn:
            conn.run(schema)
            for ch in channels:
                conn.run("INSERT INTO channels (name) VALUES (:c)", c=ch)
                conn.run("INSERT INTO score_downtime (channel) VALUES (:c)", c=ch)

    def connect(self, **kwargs: Any) -> pg8000.native.Connection:
        """A session as the `fts` account (see `connect`)."""
        return connect(self.address, self.port, self.password(), **kwargs)

    def wait_ready(self, timeout: float = 30) -> None:
        """Bounded wait until a session can be opened."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                self.connect(timeout=2).close()
                return
            except (OSError, pg8000.native.InterfaceError) as exc:
                last = exc
                time.sleep(0.1)
        raise LabDbError(
            f"lab database at {self.address}:{self.port} not reachable after {timeout} s: {last}"
        )
