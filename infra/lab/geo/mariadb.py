"""One real MariaDB server per tool and site, and the replication between them (GTID).

Each server is ``mariadbd`` from Debian's mariadb-server, bound to its placement's ``db_host``
and the database's port, its data directory, socket and logs under the lab's state directory.
Its configuration is a production one made small: binary log in ROW format written through
(``sync_binlog=1``, ``innodb_flush_log_at_trx_commit=1``), replicas logging what they apply,
the same GTID domain everywhere and a distinct ``server_id`` each. Every server starts
read-only (``read_only=ON`` in its my.cnf), as on a real site: a server that comes back after a
crash takes no write before handover says so. The lab makes the first site's server writable.

The accounts (made on every server without being logged, so not replicated): handover's
(ALL PRIVILEGES WITH GRANT OPTION: it sets read_only, promotes and rebuilds), the replication
account (REPLICATION SLAVE) and the tool's own (SELECT, INSERT, UPDATE, DELETE on its schema
only, so read_only binds it). The schema is made on the active server, through its binary log,
so that every replica gets it by replication.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pymysql  # type: ignore[import-untyped]
import pymysql.cursors  # type: ignore[import-untyped]

from infra.lab.errors import LabError
from infra.lab.geo.procs import ProcRef, kill, spawn, tail, wait_until

#: the binaries, from Debian's mariadb-server
MARIADBD = "mariadbd"
INSTALL_DB = "mariadb-install-db"
#: how long a server is given to take connections (crash recovery included)
START_TIMEOUT_S = 60.0
#: the MariaDB error of a write refused by a read-only server
ER_OPTION_PREVENTS_STATEMENT = 1290
#: the longest unix socket path the kernel takes (sun_path, 108 bytes with its NUL)
MAX_SOCKET_PATH = 107

SCHEMA = (
    "CREATE TABLE `{db}`.writes (id VARCHAR(64) PRIMARY KEY, site VARCHAR(64) NOT NULL, "
    "epoch INT NOT NULL, at DATETIME(6) NOT NULL) ENGINE=InnoDB",
    "CREATE TABLE `{db}`.handover_fence (id TINYINT PRIMARY KEY, epoch INT NOT NULL, "
    "site VARCHAR(64) NOT NULL, at DATETIME(6) NOT NULL) ENGINE=InnoDB",
)


def connect(
    host: str,
    port: int,
    user: str,
    password: str,
    *,
    database: str | None = None,
    timeout_s: float = 5.0,
    autocommit: bool = True,
) -> pymysql.connections.Connection[Any]:
    """A TCP connection to a lab server (every operation bounded by `timeout_s`).

    Raises:
        pymysql.MySQLError: the server refused or did not answer.
    """
    return pymysql.connect(
        host=host,
        port=port,
        user=user,
        password=password,
        database=database,
        connect_timeout=max(1, int(timeout_s)),
        read_timeout=max(1, int(timeout_s)),
        write_timeout=max(1, int(timeout_s)),
        autocommit=autocommit,
        charset="utf8mb4",
    )


class DbServer:
    """The MariaDB server of one tool at one site (module docstring)."""

    def __init__(self, root: Path, *, what: str, host: str, port: int, server_id: int) -> None:
        self.root = root
        self.what = what
        self.host = host
        self.port = port
        self.server_id = server_id

    @property
    def cnf(self) -> Path:
        """Its configuration file (``--defaults-file``)."""
        return self.root / "my.cnf"

    @property
    def datadir(self) -> Path:
        """Its data directory (tables, binary and relay logs)."""
        return self.root / "data"

    @property
    def socket(self) -> Path:
        """Its unix socket (root's way in: unix_socket authentication)."""
        return self.root / "mariadb.sock"

    @property
    def error_log(self) -> Path:
        """Its error log."""
        return self.root / "error.log"

    @property
    def stdout_log(self) -> Path:
        """What the process itself printed."""
        return self.root / "mariadbd.out"

    def configure(self) -> None:
        """Write the server's my.cnf (module docstring).

        Raises:
            LabError: the socket's path is too long for the kernel.
        """
        if len(str(self.socket)) > MAX_SOCKET_PATH:
            raise LabError(f"{self.what}: socket path {self.socket} is too long; shorten state_dir")
        self.root.mkdir(parents=True, exist_ok=True)
        self.cnf.write_text(
            f"""# {self.what}: written by handover's geo lab (infra/lab/geo/mariadb.py)
[mariadbd]
datadir = {self.datadir}
socket = {self.socket}
pid-file = {self.root / "mariadbd.pid"}
log-error = {self.error_log}
tmpdir = {self.root}
bind-address = {self.host}
port = {self.port}
skip-name-resolve
server_id = {self.server_id}
gtid_domain_id = 0
log-bin = binlog
log-bin-index = binlog.index
relay-log = relay
relay-log-index = relay.index
binlog_format = ROW
log_slave_updates = ON
sync_binlog = 1
innodb_flush_log_at_trx_commit = 1
read_only = ON
slave_net_timeout = 5
innodb_buffer_pool_size = 16M
innodb_log_file_size = 8M
performance_schema = OFF
max_connections = 200
character-set-server = utf8mb4
"""
        )

    def _argv(self) -> list[str]:
        user = ["--user=root"] if os.geteuid() == 0 else []
        return [f"--defaults-file={self.cnf}", *user]

    def install(self) -> subprocess.Popen[bytes]:
        """Start ``mariadb-install-db`` on an empty data directory (what was there is removed);
        `finish_install` waits for it."""
        shutil.rmtree(self.datadir, ignore_errors=True)
        self.datadir.mkdir(parents=True)
        with open(self.root / "install-db.log", "wb") as log:
            return subprocess.Popen(
                [
                    INSTALL_DB,
                    *self._argv(),
                    "--auth-root-authentication-method=socket",
                    "--skip-test-db",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def finish_install(self, proc: subprocess.Popen[bytes], timeout_s: float = 120.0) -> None:
        """Wait for the ``mariadb-install-db`` of `install`.

        Raises:
            LabError: it failed or did not finish in time (with its log's tail).
        """
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
        if code != 0:
            raise LabError(
                f"{self.what}: {INSTALL_DB} "
                + ("did not finish in time" if code is None else f"failed (code {code})")
                + f"; log:\n{tail(self.root / 'install-db.log')}"
            )

    def start(self) -> ProcRef:
        """Start ``mariadbd`` from its data directory (a crashed one recovers first).

        Returns:
            The process, once it takes connections on its socket.

        Raises:
            LabError: it exited or did not take connections in time (with its logs' tails).
        """
        self.socket.unlink(missing_ok=True)
        ref = spawn([MARIADBD, *self._argv()], self.stdout_log, self.what)
        try:
            wait_until(
                self._answers,
                START_TIMEOUT_S,
                f"{self.what} at {self.host}:{self.port} did not take connections",
                proc=ref,
                logs=[self.error_log, self.stdout_log],
            )
        except LabError:
            kill([ref])
            raise
        return ref

    def _answers(self) -> bool:
        with contextlib.closing(self.root_connect(timeout_s=2.0)) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
            return True

    def root_connect(self, timeout_s: float = 5.0) -> pymysql.connections.Connection[Any]:
        """A connection as the server's root, through its unix socket (unix_socket auth)."""
        return pymysql.connect(
            unix_socket=str(self.socket),
            user="root",
            connect_timeout=max(1, int(timeout_s)),
            read_timeout=max(1, int(timeout_s)),
            autocommit=True,
        )

    def root_sql(self, *statements: tuple[str, tuple[Any, ...]] | str) -> None:
        """Run `statements` as root in one session, in order (each a string or (sql, args)).

        Raises:
            LabError: the server refused one (which, and why) or did not answer.
        """
        sql = ""
        try:
            with contextlib.closing(self.root_connect()) as conn, conn.cursor() as cur:
                for st in statements:
                    sql, args = (st, ()) if isinstance(st, str) else st
                    cur.execute(sql, args or None)
        except pymysql.MySQLError as exc:
            raise LabError(
                f"{self.what}: {sql.split(' IDENTIFIED ')[0] or 'connecting'} failed: {exc}; "
                f"log:\n{tail(self.error_log)}"
            ) from exc

    def make_accounts(
        self,
        *,
        schema: str,
        admin: tuple[str, str],
        replication: tuple[str, str],
        app: tuple[str, str],
    ) -> None:
        """Make the three accounts at ``127.%`` without logging them (module docstring).

        Args:
            schema: the tool's schema (the app account's only grant).
            admin: handover's account and password.
            replication: the replication account and password.
            app: the tool's own account and password.
        """
        where = "127.%"
        self.root_sql(
            "SET SESSION sql_log_bin = 0",
            ("CREATE OR REPLACE USER %s@%s IDENTIFIED BY %s", (admin[0], where, admin[1])),
            ("GRANT ALL PRIVILEGES ON *.* TO %s@%s WITH GRANT OPTION", (admin[0], where)),
            (
                "CREATE OR REPLACE USER %s@%s IDENTIFIED BY %s",
                (replication[0], where, replication[1]),
            ),
            ("GRANT REPLICATION SLAVE ON *.* TO %s@%s", (replication[0], where)),
            ("CREATE OR REPLACE USER %s@%s IDENTIFIED BY %s", (app[0], where, app[1])),
            (
                f"GRANT SELECT, INSERT, UPDATE, DELETE ON `{schema}`.* TO %s@%s",
                (app[0], where),
            ),
        )

    def make_schema(self, schema: str, site: str) -> None:
        """Make the tool's schema through the binary log (it replicates) with the fence row
        (epoch 1, `site`), and make this server writable: the active one."""
        self.root_sql(
            f"CREATE DATABASE `{schema}`",
            *(s.format(db=schema) for s in SCHEMA),
            (
                f"INSERT INTO `{schema}`.handover_fence (id, epoch, site, at) "  # noqa: S608 - a SqlName
                "VALUES (1, 1, %s, UTC_TIMESTAMP(6))",
                (site,),
            ),
            "SET GLOBAL read_only = OFF",
        )

    def replicate_from(self, primary: DbServer, user: str, password: str) -> None:
        """Make this server a replica of `primary` (GTID, from its first binary log)."""
        self.root_sql(
            (
                "CHANGE MASTER TO MASTER_HOST=%s, MASTER_PORT=%s, MASTER_USER=%s, "
                "MASTER_PASSWORD=%s, MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1",
                (primary.host, primary.port, user, password),
            ),
            "START SLAVE",
        )

    def replica_status(self) -> dict[str, Any] | None:
        """``SHOW SLAVE STATUS`` of this server (None: it replicates from nobody)."""
        with contextlib.closing(self.root_connect(timeout_s=2.0)) as conn:
            with conn.cursor(pymysql.cursors.DictCursor) as cur:
                cur.execute("SHOW SLAVE STATUS")
                row = cur.fetchone()
        return dict(row) if row else None

    def wait_applied(self, schema: str, timeout_s: float = 30.0) -> None:
        """Wait until this replica has applied its primary's schema and fence row.

        Raises:
            LabError: not in time; with the replication's own errors and the error log's tail.
        """

        def applied() -> bool:
            with contextlib.closing(self.root_connect(timeout_s=2.0)) as conn:
                with conn.cursor() as cur:
                    cur.execute(f"SELECT COUNT(*) FROM `{schema}`.handover_fence")  # noqa: S608
                    row = cur.fetchone()
            return bool(row and row[0] == 1)

        try:
            wait_until(applied, timeout_s, f"{self.what} did not apply the schema", interval_s=0.1)
        except LabError as exc:
            status: dict[str, Any] | None = None
            with contextlib.suppress(pymysql.MySQLError, OSError):
                status = self.replica_status()
            said = {
                k: (status or {}).get(k)
                for k in (
                    "Slave_IO_Running",
                    "Slave_SQL_Running",
                    "Last_IO_Error",
                    "Last_SQL_Error",
                )
            }
            raise LabError(f"{exc}; replication: {said}; log:\n{tail(self.error_log)}") from None
