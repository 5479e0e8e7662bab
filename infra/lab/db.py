"""The lab's PostgreSQL server: create, start and stop the cluster, and connect to it.

The server runs as the `postgres` system user (PostgreSQL refuses to run as root), listens only on
the lab's loopback address, and trades durability for speed (fsync off): it is a test bed.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import subprocess
import time
from importlib import resources
from pathlib import Path
from typing import Any

import pg8000.native

from infra.lab.paths import LabPaths

DB_NAME = "fts"
DB_USER = "fts"


class LabDbError(RuntimeError):
    """The lab database could not be created, started or reached."""


def pg_bin_dir() -> Path | None:
    """The newest installed PostgreSQL server's bin directory, or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    return Path(found[-1]).parent if found else None


def connect(
    address: str,
    port: int,
    password: str,
    *,
    source_address: str | None = None,
    application_name: str | None = None,
    timeout: float = 5.0,
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
    """
    return pg8000.native.Connection(
        DB_USER,
        host=address,
        port=port,
        database=DB_NAME,
        password=password,
        source_address=(source_address, 0) if source_address else None,
        application_name=application_name,
        timeout=timeout,
    )


class LabDatabase:
    """The lab's PostgreSQL cluster under `<state_dir>/pg`."""

    def __init__(self, paths: LabPaths, address: str, port: int) -> None:
        self.paths = paths
        self.address = address
        self.port = port

    def _run_as_postgres(
        self, argv: list[str], *, timeout: float = 60, log: Path | None = None
    ) -> str:
        bindir = pg_bin_dir()
        if bindir is None:
            raise LabDbError("PostgreSQL server not found; apt-get install postgresql")
        cmd = ["runuser", "-u", "postgres", "--", str(bindir / argv[0]), *argv[1:]]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            # pg_ctl only says "examine the log output": say what the server logged
            logged = ""
            if log is not None and log.exists():
                tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
                logged = f"; the server logged ({log}): " + " | ".join(tail[-6:])
            raise LabDbError(
                f"lab database: {' '.join(argv[:2])} failed (exit {proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()[-800:]}{logged}"
            )
        return proc.stdout

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
        data = self.paths.pg_data
        if (data / "PG_VERSION").exists():
            return
        for d in (self.paths.pg_dir, data, self.paths.pg_socket_dir):
            d.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.paths.pg_dir, "postgres", "postgres")
        shutil.chown(data, "postgres", "postgres")
        shutil.chown(self.paths.pg_socket_dir, "postgres", "postgres")
        data.chmod(0o700)
        self._run_as_postgres(
            ["initdb", "-D", str(data), "-A", "peer", "-U", "postgres", "--no-sync", "-E", "UTF8"],
            timeout=120,
        )
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(
                "\n# handover lab\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "shared_buffers = 32MB\nmax_connections = 300\n"
                "log_min_messages = warning\nlog_connections = off\n"
            )
        (data / "pg_hba.conf").write_text(
            "local all postgres peer\nhost all all 127.0.0.0/8 scram-sha-256\n"
        )

    def pid(self) -> int | None:
        """The postmaster's PID when it runs, else None."""
        pidfile = self.paths.pg_data / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def start(self) -> None:
        """Start the server (idempotent) and wait until it accepts connections."""
        if self.pid() is None:
            log = self.paths.log_dir / "postgresql.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            log.touch()
            shutil.chown(log, "postgres", "postgres")
            opts = (
                f"-c listen_addresses={self.address} -p {self.port} -k {self.paths.pg_socket_dir}"
            )
            self._run_as_postgres(
                [
                    "pg_ctl",
                    "-D",
                    str(self.paths.pg_data),
                    "-o",
                    opts,
                    "-l",
                    str(log),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
                timeout=90,
                log=log,
            )

    def stop(self) -> None:
        """Stop the server at once (sessions are dropped; the lab keeps nothing across runs)."""
        if self.pid() is not None:
            self._run_as_postgres(
                [
                    "pg_ctl",
                    "-D",
                    str(self.paths.pg_data),
                    "-m",
                    "immediate",
                    "-w",
                    "-t",
                    "30",
                    "stop",
                ],
                timeout=60,
            )

    def psql_admin(self, sql: str) -> str:
        """Run SQL as the superuser over the Unix socket."""
        bindir = pg_bin_dir()
        assert bindir is not None
        cmd = [
            "runuser",
            "-u",
            "postgres",
            "--",
            str(bindir / "psql"),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(self.paths.pg_socket_dir),
            "-p",
            str(self.port),
            "-d",
            "postgres",
            "-c",
            sql,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0:
            raise LabDbError(f"lab database: admin SQL failed: {proc.stderr.strip()[-800:]}")
        return proc.stdout

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
