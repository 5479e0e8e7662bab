"""A PostgreSQL cluster of handover's own: its data directory, started and stopped by pg_ctl.

Two users: the lab's database (`infra/lab/db.py`: fsync off, a test bed) and the Prefect server's
database (`infra/prefect_db.py`: durable, the production set-up of `handover server start --db
postgresql`). The server runs as the `postgres` system user (PostgreSQL refuses to run as root),
listens on one address and port and on a Unix socket in its own directory, and takes its settings
from what the caller appends to postgresql.conf at creation.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path


class PgClusterError(RuntimeError):
    """The cluster could not be created, started, stopped or queried; the message says why."""


def pg_bin_dir() -> Path | None:
    """The newest installed PostgreSQL server's bin directory, or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    return Path(found[-1]).parent if found else None


class PgCluster:
    """One PostgreSQL cluster in `base` (`base/data`, sockets in `base/run`), logging to `log`.

    Args:
        base: the cluster's directory (created, owned by the postgres user).
        log: the server's log file.
        address: the one address it listens on.
        port: its port.
        settings: postgresql.conf lines appended at creation (`name = value`).
        hba: pg_hba.conf's content, written at creation.
        what: how errors name it ("lab database", "Prefect's database").
    """

    def __init__(
        self,
        base: Path,
        log: Path,
        address: str,
        port: int,
        *,
        settings: dict[str, str],
        hba: str,
        what: str,
    ) -> None:
        self.base = base
        self.data = base / "data"
        self.socket_dir = base / "run"
        self.log = log
        self.address = address
        self.port = port
        self.settings = settings
        self.hba = hba
        self.what = what

    @classmethod
    def scratch(cls, base: Path, port: int, what: str) -> PgCluster:
        """A throw-away cluster on 127.0.0.1 (tests, benches): fsync off, password logins from
        loopback."""
        return cls(
            base / "pg",
            base / "pg.log",
            "127.0.0.1",
            port,
            settings={"fsync": "off", "max_connections": "100"},
            hba="local all postgres peer\nhost all all 127.0.0.1/32 scram-sha-256\n",
            what=what,
        )

    def _bin(self, name: str) -> str:
        bindir = pg_bin_dir()
        if bindir is None:
            raise PgClusterError(
                f"{self.what}: no PostgreSQL server is installed; apt-get install postgresql"
            )
        return str(bindir / name)

    def _run_as_postgres(self, argv: list[str], *, timeout: float = 60) -> str:
        cmd = ["runuser", "-u", "postgres", "--", self._bin(argv[0]), *argv[1:]]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            # pg_ctl only says "examine the log output": say what the server logged
            logged = ""
            if self.log.exists():
                tail = [ln for ln in self.log.read_text(errors="replace").splitlines() if ln]
                logged = f"; the server logged ({self.log}): " + " | ".join(tail[-6:])
            raise PgClusterError(
                f"{self.what}: {' '.join(argv[:2])} failed (exit {proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()[-800:]}{logged}"
            )
        return proc.stdout

    def exists(self) -> bool:
        """Whether the cluster was created (initdb ran)."""
        return (self.data / "PG_VERSION").exists()

    def ensure(self) -> bool:
        """Create the cluster once (initdb), owned by the postgres user; returns whether it
        was created now."""
        if self.exists():
            return False
        self._check_reachable()
        for d in (self.base, self.data, self.socket_dir):
            d.mkdir(parents=True, exist_ok=True)
            shutil.chown(d, "postgres", "postgres")
        self.data.chmod(0o700)
        self._run_as_postgres(
            [
                "initdb",
                "-D",
                str(self.data),
                "-A",
                "peer",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                *(["--no-sync"] if self.settings.get("fsync") == "off" else []),
            ],
            timeout=120,
        )
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("\n# handover\n")
            conf.writelines(f"{k} = {v}\n" for k, v in self.settings.items())
        (self.data / "pg_hba.conf").write_text(self.hba)
        return True

    def _check_reachable(self) -> None:
        """The server runs as `postgres`: every directory above `base` must let it through."""
        import pwd

        postgres_uid = pwd.getpwnam("postgres").pw_uid
        for parent in self.base.resolve().parents:
            st = parent.stat() if parent.exists() else None
            if st is not None and st.st_uid != postgres_uid and not st.st_mode & 0o001:
                raise PgClusterError(
                    f"{self.what}: the postgres user cannot reach {self.base}: {parent} is mode "
                    f"{st.st_mode & 0o777:04o}; put it under a directory others may traverse "
                    f"(such as /var/tmp) or chmod o+x {parent}"
                )

    def pid(self) -> int | None:
        """The postmaster's PID when it runs, else None."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def start(self) -> bool:
        """Start the server (idempotent) and wait until it accepts connections; returns whether
        this call started it.

        Raises:
            PgClusterError: it did not start; the message has the server's last log lines.
        """
        if self.pid() is not None:
            return False
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.log.touch()
        shutil.chown(self.log, "postgres", "postgres")
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.socket_dir, "postgres", "postgres")
        opts = f"-c listen_addresses={self.address} -p {self.port} -k {self.socket_dir}"
        self._run_as_postgres(
            [
                "pg_ctl",
                "-D",
                str(self.data),
                "-o",
                opts,
                "-l",
                str(self.log),
                "-w",
                "-t",
                "60",
                "start",
            ],
            timeout=90,
        )
        return True

    def stop(self, mode: str = "fast") -> bool:
        """Stop the server (`fast`: sessions rolled back, data kept; `immediate`: no shutdown
        checkpoint, for a test bed); returns whether it ran."""
        if self.pid() is None:
            return False
        self._run_as_postgres(
            ["pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"], timeout=90
        )
        return True

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser over the Unix socket; returns psql's unaligned output.

        The SQL goes to psql on its standard input, never on its command line (which every
        user can read in `ps`): a statement may carry a password (`ALTER ROLE ... PASSWORD`).
        Each statement of `sql` commits on its own.

        Raises:
            PgClusterError: the statement failed; the message has psql's error.
        """
        cmd = ["runuser", "-u", "postgres", "--", self._bin("psql"), "-X", "-q", "-A", "-t"]
        cmd += ["-v", "ON_ERROR_STOP=1", "-h", str(self.socket_dir), "-p", str(self.port)]
        cmd += ["-d", database, "-f", "-"]
        proc = subprocess.run(
            cmd, input=sql, capture_output=True, text=True, timeout=60, check=False
        )
        if proc.returncode != 0:
            raise PgClusterError(f"{self.what}: SQL failed: {proc.stderr.strip()[-800:]}")
        return proc.stdout
