"""Prefect without a single server: the control plane Prefect documents for a self-hosted site
that must survive the loss of any one of its processes.

Its parts, each a process of its own that can die and be started again alone:

* ``postgresql``: the database every other part shares (`infra.prefect_db.ServerDatabase`, or
  one run elsewhere, named by URL);
* ``redis``: Prefect's messaging (events between the API servers and the services), the
  events' causal ordering, the background services' coordination (Docket) and the concurrency
  leases (the service lock's), through the `prefect-redis` integration. Its append-only file
  is synced before each write is answered, so a restarted Redis knows every lease it granted;
* ``api-1`` ... ``api-N``: `prefect server start --no-services`, each with a home of its own;
* ``services``: `prefect server services start` (scheduler, automations, lease repossessor);
* ``balancer``: HAProxy in front of the API servers (`infra.plane_config`); clients, workers
  and gateways use its URL.

The schema is migrated once, before any API server starts: two servers migrating at once would
race. `handover server start --ha` runs the plane on this machine (every part on loopback), as
the tests and `handover bench control-plane` do; a site runs the same parts as system services
(`handover install --role server --ha`, `--role balancer`). The plane is recorded in its
private home (`control-plane.json`), so that `server stop` and `server status` find every part.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from config.private_files import (
    ensure_private_dir,
    open_private_append,
    read_private_text,
    write_private_text,
)
from infra.plane_config import haproxy_config, redis_config
from infra.ports import free_port
from infra.prefect_server import healthy, server_argv

if TYPE_CHECKING:
    from infra.prefect_db import ServerDatabase

#: the record of a plane in its home
RECORD = "control-plane.json"
#: the lease storage of a plane: in Redis, which every API server and the services share
LEASE_STORAGE = "prefect_redis.lease_storage"
#: the parts in the order they start (the API servers are `api-1` ... `api-N`)
PARTS = ("postgresql", "redis", "api", "services", "balancer")


class ControlPlaneError(RuntimeError):
    """A part of the plane could not be set up or started; the message names it and says why."""


@dataclass
class PlaneSpec:
    """Where each part of a plane listens and keeps its state (the record in its home).

    Args:
        host: the balancer's address (what clients use).
        port: the balancer's port.
        api_ports: one port per API server (on 127.0.0.1).
        redis_port: Redis's port (127.0.0.1).
        pg_port: with handover's own PostgreSQL, its port (127.0.0.1).
        pg_dir: with handover's own PostgreSQL, its directory (the postgres user must reach it).
        db_url_given: the database is run elsewhere (its URL is kept in the home, 0600).
        extra_env: settings added to every Prefect server process (tests, benches).
        metrics_port: the balancer's `/metrics` port on 127.0.0.1 (None: no metrics).
    """

    host: str
    port: int
    api_ports: list[int]
    redis_port: int
    pg_port: int | None = None
    pg_dir: str | None = None
    db_url_given: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)
    #: where the balancer's Prometheus metrics answer (127.0.0.1)
    metrics_port: int | None = None


class ControlPlane:
    """One plane: its parts' processes, started and stopped by PID, state in `home` (private).

    Args:
        home: the plane's private home: the record, the auth string, Redis's password and
            data, every part's log and PID, each API server's own Prefect home.
        spec: where its parts listen (see `PlaneSpec`).
        db_url: a database run elsewhere (else handover starts its own PostgreSQL).
    """

    def __init__(self, home: Path, spec: PlaneSpec, db_url: str | None = None) -> None:
        self.home = home
        self.spec = spec
        self._db_url = db_url
        #: each part's log size when this object last started it
        self._log_from: dict[str, int] = {}

    # ---- construction -------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        home: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 4200,
        api_servers: int = 2,
        api_ports: list[int] | None = None,
        redis_port: int | None = None,
        db_url: str | None = None,
        pg_port: int | None = None,
        pg_dir: Path | None = None,
        extra_env: dict[str, str] | None = None,
        metrics_port: int | None = None,
    ) -> ControlPlane:
        """A plane to start from `home` (free loopback ports where none is given).

        Raises:
            ControlPlaneError: fewer than two API servers, or ports given that do not match.
        """
        from infra import prefect_db

        if api_servers < 2:
            raise ControlPlaneError(
                f"--api-servers {api_servers}: a plane without a single server runs at least 2"
            )
        if api_ports is not None and len(api_ports) != api_servers:
            raise ControlPlaneError(
                f"--api-ports names {len(api_ports)} ports for {api_servers} API servers"
            )
        spec = PlaneSpec(
            host=host,
            port=port,
            api_ports=api_ports or [free_port() for _ in range(api_servers)],
            redis_port=redis_port or free_port(),
            pg_port=None if db_url else (pg_port or prefect_db.DEFAULT_PG_PORT),
            pg_dir=None if db_url else str(pg_dir or prefect_db.DEFAULT_PG_DIR),
            db_url_given=db_url is not None,
            extra_env=dict(extra_env or {}),
            metrics_port=metrics_port or free_port(),
        )
        return cls(home, spec, db_url)

    @classmethod
    def of_home(cls, home: Path) -> ControlPlane | None:
        """The plane last started from `home`, or None when it holds none."""
        try:
            data = json.loads(read_private_text(home / RECORD))
        except (OSError, ValueError):
            return None
        return cls(home, PlaneSpec(**data))

    # ---- what the parts share -----------------------------------------------------------

    @property
    def url(self) -> str:
        """The balancer's API URL: what clients, workers and gateways use."""
        return f"http://{self.spec.host}:{self.spec.port}/api"

    def api_url(self, index: int) -> str:
        """API server `index`'s own URL (1-based), bypassing the balancer."""
        return f"http://127.0.0.1:{self.spec.api_ports[index - 1]}/api"

    @property
    def metrics_url(self) -> str | None:
        """The balancer's Prometheus metrics (each API server's state), or None."""
        if self.spec.metrics_port is None:
            return None
        return f"http://127.0.0.1:{self.spec.metrics_port}/metrics"

    @property
    def api_names(self) -> list[str]:
        """The API servers' part names."""
        return [f"api-{i}" for i in range(1, len(self.spec.api_ports) + 1)]

    @property
    def part_names(self) -> list[str]:
        """Every part's name, in the order they start."""
        return ["postgresql", "redis", *self.api_names, "services", "balancer"]

    def _secret(self, name: str) -> str:
        path = self.home / name
        try:
            return read_private_text(path).strip()
        except FileNotFoundError:
            write_private_text(path, secrets.token_urlsafe(24) + "\n")
        return read_private_text(path).strip()

    def database(self) -> ServerDatabase | None:
        """Handover's own PostgreSQL of this plane (None when the database is run elsewhere)."""
        from infra.prefect_db import ServerDatabase

        if self.spec.db_url_given or self.spec.pg_port is None:
            return None
        return ServerDatabase(
            self.home, self.spec.pg_port, Path(self.spec.pg_dir) if self.spec.pg_dir else None
        )

    def _database_url(self) -> str:
        if self._db_url is not None:
            return self._db_url
        if self.spec.db_url_given:
            return read_private_text(self.home / "database-url").strip()
        db = self.database()
        assert db is not None
        return str(db.url())

    def redis_password(self) -> str:
        """Redis's password (made on first use, kept in the home, 0600)."""
        return self._secret("redis-password")

    def server_env(self, part: str) -> dict[str, str]:
        """The environment of a Prefect server process of this plane (`part`'s own home)."""
        from infra.prefect_server import api_auth

        rp = self.redis_password()
        return {
            "PREFECT_HOME": str(self.home / part),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_API_DATABASE_CONNECTION_URL": self._database_url(),
            "PREFECT_API_DATABASE_MIGRATE_ON_START": "false",
            "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
            "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
            "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
            "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": LEASE_STORAGE,
            "PREFECT_REDIS_MESSAGING_HOST": "127.0.0.1",
            "PREFECT_REDIS_MESSAGING_PORT": str(self.spec.redis_port),
            "PREFECT_REDIS_MESSAGING_DB": "0",
            "PREFECT_REDIS_MESSAGING_PASSWORD": rp,
            "PREFECT_SERVER_DOCKET_URL": f"redis://:{rp}@127.0.0.1:{self.spec.redis_port}/1",
            "PREFECT_SERVER_API_AUTH_STRING": api_auth(self.home),
            "PREFECT_UI_API_URL": self.url,
            "PREFECT_UI_ENABLED": "true",
            **self.spec.extra_env,
        }

    # ---- processes ----------------------------------------------------------------------

    def _argv(self, part: str) -> list[str]:
        if part == "redis":
            return [_binary("redis-server"), str(self.home / "redis" / "redis.conf")]
        if part == "balancer":
            return [_binary("haproxy"), "-db", "-f", str(self.home / "haproxy.cfg")]
        if part == "services":
            return [sys.executable, "-m", "prefect", "server", "services", "start"]
        if part in self.api_names:
            port = self.spec.api_ports[int(part.split("-")[1]) - 1]
            return server_argv("127.0.0.1", port, "--no-services")
        raise ControlPlaneError(f"no part {part}; the parts are {', '.join(self.part_names)}")

    def _env(self, part: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        if part in ("redis", "balancer"):
            return base
        return {**base, **self.server_env(part)}

    def pid(self, part: str) -> int | None:
        """The PID of `part` when it runs (PostgreSQL's postmaster included), else None."""
        if part == "postgresql":
            db = self.database()
            return db.pid() if db is not None else None
        try:
            pid = int(read_private_text(self.home / f"{part}.pid").strip())
        except (OSError, ValueError):
            return None
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        # the PID may have been given to another process since: it must still be this part
        want = self._argv(part)
        got = [a.decode(errors="replace") for a in argv]
        if part == "redis":
            # Redis rewrites its command line ("redis-server 127.0.0.1:PORT")
            if not got or not got[0] or Path(got[0].split()[0]).name != "redis-server":
                return None
        elif got[: len(want)] != want:
            return None
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                return None
        return pid

    def running(self) -> dict[str, bool]:
        """Whether each part runs."""
        return {part: self.pid(part) is not None for part in self.part_names}

    def start_part(self, part: str, timeout: float = 120.0) -> None:
        """Start `part` if it is not running, and wait (bounded) until it serves.

        Raises:
            ControlPlaneError: it exited or did not serve in time (its log's tail).
        """
        if self.pid(part) is not None:
            return
        if part == "postgresql":
            db = self.database()
            if db is not None:
                from infra.pg_cluster import PgClusterError

                try:
                    db.start()
                except PgClusterError as exc:
                    raise ControlPlaneError(f"postgresql: {exc}") from exc
            return
        if part in self.api_names or part == "services":
            ensure_private_dir(self.home / part)
        log_path = self.home / f"{part}.log"
        # what this start writes: an earlier start's lines must not read as this one's
        self._log_from[part] = log_path.stat().st_size if log_path.exists() else 0
        log = open_private_append(log_path)
        try:
            proc = subprocess.Popen(
                self._argv(part),
                env=self._env(part),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                umask=0o077,
                cwd=self.home,
            )
        finally:
            os.close(log)
        write_private_text(self.home / f"{part}.pid", f"{proc.pid}\n")
        self._wait_serving(part, proc, timeout)

    def _serves(self, part: str) -> bool:
        if part in self.api_names:
            return healthy(self.api_url(int(part.split("-")[1])))
        if part == "balancer":
            return healthy(self.url)
        if part == "redis":
            return self.redis_ping()
        if part == "services":
            # the services have no port: they serve once their process has imported Prefect
            # and opened the database (their log says so)
            return "Starting services" in self._log_since_start(part)
        return True

    def _wait_serving(self, part: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._serves(part):
                return
            if proc.poll() is not None:
                break
            time.sleep(0.25)
        raise ControlPlaneError(
            f"{part} of the control plane did not start (exit {proc.poll()}); "
            f"its log ({self.home / (part + '.log')}):\n{self.log_tail(part)}"
        )

    def _log_since_start(self, part: str) -> str:
        try:
            with open(self.home / f"{part}.log", "rb") as f:
                f.seek(self._log_from.get(part, 0))
                return f.read(65536).decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, part: str, chars: int = 1500) -> str:
        """The end of `part`'s log."""
        try:
            return read_private_text(self.home / f"{part}.log")[-chars:]
        except (OSError, UnicodeDecodeError):
            return ""

    def redis_ping(self) -> bool:
        """Whether Redis answers (with the plane's password)."""
        import redis

        try:
            client = redis.Redis(
                host="127.0.0.1",
                port=self.spec.redis_port,
                password=self.redis_password(),
                socket_timeout=2,
                socket_connect_timeout=2,
            )
            with client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def kill(self, part: str, sig: int = signal.SIGKILL) -> bool:
        """Send `sig` to `part`'s process group (PostgreSQL: an immediate stop, as a crash
        leaves it); returns whether it ran. For tests and `handover bench control-plane`."""
        if part == "postgresql":
            db = self.database()
            return db is not None and db.cluster.stop("immediate")
        pid = self.pid(part)
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        return True

    def stop_part(self, part: str) -> bool:
        """Stop `part` cleanly (SIGTERM; PostgreSQL: a fast shutdown, data kept); returns
        whether it ran."""
        if part == "postgresql":
            db = self.database()
            return db is not None and db.stop()
        stopped = self.kill(part, signal.SIGTERM)
        (self.home / f"{part}.pid").unlink(missing_ok=True)
        return stopped

    # ---- the whole plane ----------------------------------------------------------------

    def _prepare(self) -> None:
        ensure_private_dir(self.home)
        for binary in ("redis-server", "haproxy"):
            _binary(binary)
        record = asdict(self.spec)
        write_private_text(self.home / RECORD, json.dumps(record, indent=2) + "\n")
        if self._db_url is not None:
            write_private_text(self.home / "database-url", self._db_url + "\n")
        ensure_private_dir(self.home / "redis")
        write_private_text(
            self.home / "redis" / "redis.conf",
            redis_config(self.spec.redis_port, self.home / "redis", self.redis_password()),
        )
        write_private_text(
            self.home / "haproxy.cfg",
            haproxy_config(
                self.spec.host,
                self.spec.port,
                [("127.0.0.1", p) for p in self.spec.api_ports],
                ("127.0.0.1", self.spec.metrics_port) if self.spec.metrics_port else None,
            ),
        )

    def migrate(self) -> None:
        """Bring the database's schema to this Prefect's (once, before any server starts).

        Raises:
            ControlPlaneError: the migration failed (its output in the message).
        """
        ensure_private_dir(self.home / "migrate")
        proc = subprocess.run(
            [sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"],
            env={**self._env("migrate"), "PREFECT_API_DATABASE_TIMEOUT": "600"},
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
            cwd=self.home,
        )
        if proc.returncode != 0:
            raise ControlPlaneError(
                "the Prefect database's migration failed: "
                f"{(proc.stderr or proc.stdout).strip()[-1500:]}"
            )

    def start(self, timeout: float = 180.0) -> str:
        """Start every part that is not running (database, Redis, migration, API servers,
        services, balancer) and wait until the balancer serves; returns its URL.

        Raises:
            ControlPlaneError: a part did not start (named, with its log's tail).
            config.private_files.UnsafePathError: the home is not private.
        """
        from infra import prefect_db
        from infra.prefect_server import URL_FILE

        self._prepare()
        self.start_part("postgresql")
        self.start_part("redis")
        self.migrate()
        for part in [*self.api_names, "services", "balancer"]:
            self.start_part(part, timeout)
        write_private_text(self.home / URL_FILE, self.url + "\n")
        db = prefect_db.redact(self._database_url())
        write_private_text(
            self.home / prefect_db.DB_RECORD,
            f"postgresql {db}; {len(self.api_names)} API servers, Redis, HAProxy\n",
        )
        return self.url

    def stop(self) -> list[str]:
        """Stop every part, the balancer first and the database last (data kept); returns the
        parts that ran."""
        ran = []
        for part in reversed(self.part_names):
            if self.stop_part(part):
                ran.append(part)
        return ran

    def status(self) -> list[str]:
        """One line per part: running or not, and where it serves."""
        lines = []
        for part in self.part_names:
            pid = self.pid(part)
            where = {
                "balancer": self.url,
                "redis": f"127.0.0.1:{self.spec.redis_port}",
                "postgresql": (
                    f"127.0.0.1:{self.spec.pg_port}" if self.spec.pg_port else "run elsewhere"
                ),
            }.get(part, "")
            if part in self.api_names:
                where = self.api_url(int(part.split("-")[1]))
            state = f"running (pid {pid})" if pid else "not running"
            if part in self.api_names or part == "balancer":
                if pid and not self._serves(part):
                    state += ", not answering"
            lines.append(f"{part:<11} {state:<26} {where}")
        return lines


def _binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if found is None:
        package = {"redis-server": "redis-server", "haproxy": "haproxy"}[name]
        raise ControlPlaneError(
            f"{name} is not installed; a control plane without a single server needs it: "
            f"apt-get install {package}"
        )
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            return False
    return True


@contextlib.contextmanager
def temporary_plane(work: Path, api_servers: int = 2, **kwargs: object) -> Iterator[ControlPlane]:
    """A plane of one's own for tests and benches: its home in `work/plane`, its PostgreSQL in
    `work/pg` (the postgres user must be able to enter `work`), every port free on loopback.
    Stops every part on exit.

    Raises:
        ControlPlaneError: a part did not start.
    """
    plane = ControlPlane.create(
        work / "plane",
        port=free_port(),
        api_servers=api_servers,
        pg_port=free_port(),
        pg_dir=work / "pg",
        **kwargs,  # type: ignore[arg-type]
    )
    try:
        plane.start()
        yield plane
    finally:
        plane.stop()
