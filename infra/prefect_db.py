"""The Prefect server's database when it is PostgreSQL: one that handover starts, or one named by
URL.

`handover server start --db postgresql` keeps a PostgreSQL cluster of its own (the Debian server
binaries the lab also uses) in a directory of the postgres user's (`--pg-dir`, default
`DEFAULT_PG_DIR`: the server's home is private to the user who runs handover, so PostgreSQL, which
runs as postgres, cannot live there): durable (fsync on, the defaults of PostgreSQL), listening on
127.0.0.1 and a Unix socket only, with a `prefect` role whose generated password is kept in the
server's private home (`postgresql-password`, 0600), as is the cluster's directory
(`postgresql-cluster`), for `server stop`. `--db-url` names a database run
elsewhere (the production set-up on several machines: every Prefect server process of the site
points at the same database). Why PostgreSQL at all: Prefect's server on SQLite serialises every
write, so with several workers, gateways and automations writing at once, runs wait on the
database; PostgreSQL takes them concurrently (`handover bench alert` shows the difference).
"""

from __future__ import annotations

import secrets
from pathlib import Path
from urllib.parse import quote, urlsplit

from config.private_files import ensure_private_dir, read_private_text, write_private_text
from infra.pg_cluster import PgCluster, PgClusterError

DB_NAME = "prefect"
DB_USER = "prefect"
DEFAULT_PG_PORT = 5442
#: where handover's own PostgreSQL for the Prefect server lives unless `--pg-dir` says
#: otherwise: beside Debian's clusters, in the postgres user's home
DEFAULT_PG_DIR = Path("/var/lib/postgresql/handover-prefect")
#: how handover records the database a server of its own uses (for `server status`)
DB_RECORD = "database"
#: files in the server's private home: the `prefect` role's password, the cluster's directory
PASSWORD_FILE = "postgresql-password"  # noqa: S105 - a file name
CLUSTER_RECORD = "postgresql-cluster"


class ServerDbError(PgClusterError):
    """The Prefect server's database could not be set up; the message says what to fix."""


def check_url(url: str) -> str:
    """The URL as Prefect's server takes it (`postgresql+asyncpg://...`).

    A plain `postgresql://` or `postgres://` URL is given the asyncpg driver Prefect uses.

    Raises:
        ServerDbError: it is not a PostgreSQL URL with a host and a database name.
    """
    parts = urlsplit(url)
    scheme = parts.scheme
    if scheme in ("postgresql", "postgres"):
        url = "postgresql+asyncpg" + url[len(scheme) :]
    elif scheme != "postgresql+asyncpg":
        raise ServerDbError(
            f"--db-url: {scheme or 'no scheme'}:// is not a PostgreSQL URL; give "
            "postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
        )
    if not parts.hostname or not parts.path.strip("/"):
        raise ServerDbError(
            "--db-url: the URL needs a host and a database name: "
            "postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
        )
    return url


def redact(url: str) -> str:
    """The URL without its password (for logs and `server status`)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


class ServerDatabase:
    """A PostgreSQL cluster of handover's own for the Prefect server kept in `home`.

    Args:
        home: the server's private home (the password and the cluster's directory are kept
            there).
        port: the port PostgreSQL listens on (127.0.0.1).
        pg_dir: the cluster's directory, which the postgres user must reach (default
            `DEFAULT_PG_DIR`).
    """

    def __init__(self, home: Path, port: int = DEFAULT_PG_PORT, pg_dir: Path | None = None) -> None:
        self.home = home
        self.port = port
        self.pg_dir = pg_dir or DEFAULT_PG_DIR
        self.cluster = PgCluster(
            self.pg_dir,
            self.pg_dir / "postgresql.log",
            "127.0.0.1",
            port,
            settings={
                # Prefect's server, its services and each worker hold a pool of connections
                "max_connections": "200",
                "log_min_messages": "warning",
            },
            hba=(f"local all postgres peer\nhost {DB_NAME} {DB_USER} 127.0.0.1/32 scram-sha-256\n"),
            what="Prefect's database",
        )

    @classmethod
    def of_home(cls, home: Path) -> ServerDatabase | None:
        """The database a server started from `home` with (None: it started none)."""
        try:
            base, port = read_private_text(home / CLUSTER_RECORD).strip().rsplit(" ", 1)
        except (OSError, ValueError):
            return None
        return cls(home, int(port), Path(base))

    @property
    def password_file(self) -> Path:
        """Where the `prefect` role's password is kept (mode 0600, in the private home)."""
        return self.home / PASSWORD_FILE

    def _password(self) -> str:
        path = self.password_file
        try:
            return read_private_text(path).strip()
        except FileNotFoundError:
            write_private_text(path, secrets.token_urlsafe(24))
        return read_private_text(path).strip()

    def url(self) -> str:
        """The server's connection URL (with the password)."""
        return (
            f"postgresql+asyncpg://{DB_USER}:{quote(self._password(), safe='')}"
            f"@127.0.0.1:{self.port}/{DB_NAME}"
        )

    def start(self) -> str:
        """Create the cluster, role and database once, start the server (idempotent); returns
        the connection URL.

        Raises:
            ServerDbError: PostgreSQL is not installed, or did not start (its log's tail).
            config.private_files.UnsafePathError: the home is not private.
        """
        ensure_private_dir(self.home)
        write_private_text(self.home / CLUSTER_RECORD, f"{self.pg_dir} {self.port}\n")
        try:
            self.cluster.ensure()
            self.cluster.start()
            pw = self._password().replace("'", "''")
            self.cluster.psql(
                f"DO $$ BEGIN CREATE ROLE {DB_USER} LOGIN; EXCEPTION WHEN duplicate_object "
                f"THEN NULL; END $$; ALTER ROLE {DB_USER} LOGIN NOSUPERUSER PASSWORD '{pw}'"
            )
            if not self.cluster.psql(
                f"SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}'"  # noqa: S608 - constants
            ):
                self.cluster.psql(f"CREATE DATABASE {DB_NAME} OWNER {DB_USER}")
        except ServerDbError:
            raise
        except PgClusterError as exc:
            raise ServerDbError(str(exc)) from exc
        return self.url()

    def stop(self) -> bool:
        """Stop the server cleanly (a shutdown checkpoint; nothing is lost); returns whether it
        ran."""
        return self.cluster.stop("fast")

    def pid(self) -> int | None:
        """The PostgreSQL server's PID when it runs."""
        return self.cluster.pid()
