"""A tool's MariaDB database at one site, and its replication (GTID): read, fence, promote,
rebuild.

Contract (every call opens one connection as the tool's `database.user`, bounded by
`database.timeout_s` for the connect and each statement, and raises `ReplicationError` with a
sentence naming the site, the server and what to do):

* `read_database(tool, site)` reads, never writes: whether the server answers, `read_only`,
  the GTID positions (`gtid_binlog_pos`, `gtid_current_pos`, `gtid_slave_pos`), the replica's
  status (`SHOW SLAVE STATUS`: both threads, seconds behind, the last error, its source, the
  position it has received) and the fencing epoch in ``handover_fence``. A server that does
  not answer is a `DatabaseState` with ``reachable`` False and the error, not an exception.
* `set_read_only(tool, site, on)` sets the global ``read_only``: the tool's own account can no
  longer commit (the tool answers read-only). Idempotent.
* `wait_applied(tool, site, position, timeout_s)` waits on `site` (a replica) until it has
  applied every transaction of `position` (``MASTER_GTID_WAIT``); False when the bound passed.
* `promote(tool, site, epoch)`: stop the replica's receiving thread, wait (bounded) until what
  it received is applied, stop replicating and forget its source, write the epoch and the site
  in ``handover_fence`` (only ever raised: a fence newer than `epoch` is `ReplicationError`),
  and leave the server writable. Idempotent: a server already primary with that epoch is left
  alone.
* `replicate_from(tool, site, source)`: make `site` (read-only first) a replica of `source`
  from its own position (``MASTER_USE_GTID=current_pos``), and start it. Used after a planned
  failover, where the old primary has nothing the new one lacks.
* `rebuild_replica(tool, site, source, keep)`: for a site that may hold transactions its
  source never received (a failover of an unreachable site): its schema is first dumped to
  `keep` (nothing is thrown away unseen), then it is loaded from a consistent dump of `source`
  with the GTID position of that dump, its own binary log is reset, and it replicates from
  `source`. Uses Debian's ``mariadb-dump`` and ``mariadb`` clients.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.plans.geo_state import DatabaseState

if TYPE_CHECKING:
    from config.site import Tool

#: the table that holds the tool's fencing epoch (one row, id 1)
FENCE_TABLE = "handover_fence"


class ReplicationError(RuntimeError):
    """A database operation failed; the message says which site, which server and what to do."""


def _where(tool: Tool, site: str) -> tuple[str, int]:
    p = tool.sites[site]
    return p.db_host, p.db_port or tool.database.port


def _password(tool: Tool) -> str:
    return tool.database.password.resolve().get_secret_value()


@contextlib.contextmanager
def _connect(
    tool: Tool, site: str, what: str, read_timeout_s: float | None = None
) -> Iterator[Any]:
    """One connection; `read_timeout_s` bounds each statement (default: the tool's bound; a
    statement that itself waits needs more)."""
    import pymysql  # type: ignore[import-untyped]

    host, port = _where(tool, site)
    db = tool.database
    try:
        conn = pymysql.connect(
            user=db.user,
            password=_password(tool),
            host=host,
            port=port,
            database=db.database,
            connect_timeout=db.timeout_s,
            read_timeout=read_timeout_s or db.timeout_s,
            write_timeout=db.timeout_s,
            autocommit=True,
        )
    except Exception as exc:
        raise ReplicationError(
            f"{what}: the database of {tool.name} at {site} ({host}:{port}) did not answer: "
            f"{exc}; check that it runs and that {db.user} may connect"
        ) from exc
    try:
        yield conn
    except ReplicationError:
        raise
    except Exception as exc:
        raise ReplicationError(
            f"{what}: the database of {tool.name} at {site} ({host}:{port}) failed: {exc}"
        ) from exc
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def _one(cur: Any, sql: str, *args: object) -> Any:
    cur.execute(sql, args or None)
    row = cur.fetchone()
    return row[0] if row else None


def read_database(tool: Tool, site: str) -> DatabaseState:
    """The database of `tool` at `site` (module docstring); never raises for a silent server."""
    host, port = _where(tool, site)
    taken = dt.datetime.now(dt.UTC)
    base: dict[str, Any] = dict(site=site, server=f"{host}:{port}", taken_at=taken)
    try:
        with _connect(tool, site, "reading the replication status") as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT @@global.read_only, @@global.gtid_binlog_pos, "
                "@@global.gtid_current_pos, @@global.gtid_slave_pos"
            )
            ro, binlog, current, slave = cur.fetchone()
            state = DatabaseState(
                **base,
                reachable=True,
                read_only=bool(ro),
                binlog_pos=binlog or "",
                current_pos=current or "",
                slave_pos=slave or "",
            )
            cur.execute("SHOW SLAVE STATUS")
            row = cur.fetchone()
            if row is not None:
                cols = {d[0]: v for d, v in zip(cur.description, row, strict=True)}
                state.is_replica = bool(cols.get("Master_Host"))
                state.io_running = str(cols.get("Slave_IO_Running") or "")
                state.sql_running = str(cols.get("Slave_SQL_Running") or "")
                behind = cols.get("Seconds_Behind_Master")
                state.seconds_behind = int(behind) if behind is not None else None
                state.last_error = str(
                    cols.get("Last_SQL_Error") or cols.get("Last_IO_Error") or ""
                )
                state.source = f"{cols.get('Master_Host')}:{cols.get('Master_Port')}"
                state.io_pos = str(cols.get("Gtid_IO_Pos") or "")
            with contextlib.suppress(Exception):  # a schema without the fence: no epoch yet
                cur.execute(f"SELECT epoch, site FROM {FENCE_TABLE} WHERE id = 1")  # noqa: S608
                fence = cur.fetchone()
                if fence is not None:
                    state.fence_epoch, state.fence_site = int(fence[0]), str(fence[1])
            return state
    except ReplicationError as exc:
        return DatabaseState(**base, reachable=False, error=str(exc))


def set_read_only(tool: Tool, site: str, on: bool) -> bool:
    """Set `read_only` on the database of `tool` at `site`; True when it changed."""
    what = "setting read-only" if on else "clearing read-only"
    with _connect(tool, site, what) as conn, conn.cursor() as cur:
        was = bool(_one(cur, "SELECT @@global.read_only"))
        if was == on:
            return False
        cur.execute(f"SET GLOBAL read_only = {'ON' if on else 'OFF'}")
        return True


def wait_applied(tool: Tool, site: str, position: str, timeout_s: float) -> bool:
    """Wait until the replica at `site` has applied `position`; False when `timeout_s` passed."""
    if not position:
        return True
    bound = timeout_s + tool.database.timeout_s  # the statement itself waits
    with (
        _connect(tool, site, "waiting for the replica to apply", bound) as conn,
        conn.cursor() as cur,
    ):
        result = _one(cur, "SELECT MASTER_GTID_WAIT(%s, %s)", position, timeout_s)
        return bool(result == 0)


def promote(tool: Tool, site: str, epoch: int) -> bool:
    """Make the database at `site` the tool's primary with `epoch` (module docstring); True when
    something changed.

    Raises:
        ReplicationError: the server did not answer, the applied position could not be
            reached within the tool's `database.timeout_s` times 4, or its fence holds a newer
            epoch than `epoch`.
    """
    bound = 4 * tool.database.timeout_s
    with (
        _connect(tool, site, "promoting the replica", bound + tool.database.timeout_s) as conn,
        conn.cursor() as cur,
    ):
        cur.execute(f"SELECT epoch, site FROM {FENCE_TABLE} WHERE id = 1")  # noqa: S608
        fence = cur.fetchone()
        cur.execute("SHOW SLAVE STATUS")
        slave = cur.fetchone()
        slave_cols = {d[0]: v for d, v in zip(cur.description, slave, strict=True)} if slave else {}
        writable = not bool(_one(cur, "SELECT @@global.read_only"))
        if (
            fence is not None
            and int(fence[0]) == epoch
            and fence[1] == site
            and not slave_cols.get("Master_Host")
            and writable
        ):
            return False
        if fence is not None and int(fence[0]) > epoch:
            raise ReplicationError(
                f"the database of {tool.name} at {site} already holds epoch {fence[0]} "
                f"(site {fence[1]}), newer than {epoch}: another failover happened; read "
                "`handover status --service " + tool.name + "` and plan again"
            )
        if slave_cols.get("Master_Host"):
            cur.execute("STOP SLAVE IO_THREAD")
            cur.execute("SHOW SLAVE STATUS")
            row = cur.fetchone()
            cols = {d[0]: v for d, v in zip(cur.description, row, strict=True)} if row else {}
            received = str(cols.get("Gtid_IO_Pos") or "")
            if received and _one(cur, "SELECT MASTER_GTID_WAIT(%s, %s)", received, bound) != 0:
                raise ReplicationError(
                    f"the replica of {tool.name} at {site} did not apply what it had received "
                    f"({received}) within {bound:g} s; its last error: "
                    f"{cols.get('Last_SQL_Error') or 'none'}; nothing was promoted"
                )
            cur.execute("STOP SLAVE")
            cur.execute("RESET SLAVE ALL")
        if fence is None:
            cur.execute(
                f"INSERT INTO {FENCE_TABLE} (id, epoch, site, at) VALUES (1, %s, %s, NOW(6))",  # noqa: S608
                (epoch, site),
            )
        else:
            cur.execute(
                f"UPDATE {FENCE_TABLE} SET epoch = %s, site = %s, at = NOW(6) WHERE id = 1",  # noqa: S608
                (epoch, site),
            )
        cur.execute("SET GLOBAL read_only = OFF")
        return True


def _change_master(tool: Tool, source: str, use_gtid: str) -> tuple[str, tuple[object, ...]]:
    host, port = _where(tool, source)
    return (
        "CHANGE MASTER TO MASTER_HOST = %s, MASTER_PORT = %s, MASTER_USER = %s, "
        f"MASTER_PASSWORD = %s, MASTER_USE_GTID = {use_gtid}, MASTER_CONNECT_RETRY = 1",
        (
            host,
            port,
            tool.database.replication_user,
            tool.database.replication_password.resolve().get_secret_value(),
        ),
    )


def replicate_from(tool: Tool, site: str, source: str) -> bool:
    """Make the (read-only) database at `site` a replica of `source` from its own position;
    True when something changed (module docstring)."""
    host, port = _where(tool, source)
    with _connect(tool, site, f"making it a replica of {source}") as conn, conn.cursor() as cur:
        cur.execute("SHOW SLAVE STATUS")
        row = cur.fetchone()
        cols = {d[0]: v for d, v in zip(cur.description, row, strict=True)} if row else {}
        if (
            cols.get("Master_Host") == host
            and int(cols.get("Master_Port") or 0) == port
            and cols.get("Slave_IO_Running") == "Yes"
            and cols.get("Slave_SQL_Running") == "Yes"
        ):
            return False
        cur.execute("SET GLOBAL read_only = ON")
        if cols:
            cur.execute("STOP SLAVE")
        sql, args = _change_master(tool, source, "current_pos")
        cur.execute(sql, args)
        cur.execute("START SLAVE")
        return True


def _defaults_file(tool: Tool, site: str, directory: Path) -> Path:
    host, port = _where(tool, site)
    path = directory / f"{site}.cnf"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        pw = _password(tool).replace("\\", "\\\\").replace('"', '\\"')
        f.write(
            f'[client]\nuser="{tool.database.user}"\npassword="{pw}"\n'
            f"host={host}\nport={port}\nprotocol=TCP\n"
        )
    return path


def _clients() -> tuple[str, str]:
    dump, client = shutil.which("mariadb-dump"), shutil.which("mariadb")
    if dump is None or client is None:
        raise ReplicationError(
            "rebuilding a replica needs the mariadb-dump and mariadb clients: as root, "
            "apt-get install -y mariadb-client"
        )
    return dump, client


def rebuild_replica(tool: Tool, site: str, source: str, keep: Path, timeout_s: float = 600) -> Path:
    """Rebuild the database at `site` as a replica of `source` (module docstring).

    Returns:
        The file where the site's schema was kept before it was replaced.

    Raises:
        ReplicationError: a server did not answer, a client is missing, or a dump or load
            failed (the site is left read-only; the kept file says what it held).
    """
    dump, client = _clients()
    schema = tool.database.database
    keep.mkdir(parents=True, exist_ok=True, mode=0o700)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    kept = keep / f"{tool.name}-{site}-{stamp}.sql"
    set_read_only(tool, site, True)
    with tempfile.TemporaryDirectory(prefix="handover-rebuild-") as tmp:
        here, there = _defaults_file(tool, site, Path(tmp)), _defaults_file(tool, source, Path(tmp))

        def run(argv: list[str], what: str, **kw: Any) -> None:
            try:
                proc = subprocess.run(
                    argv,
                    stdout=kw.pop("stdout", subprocess.PIPE),
                    stderr=subprocess.PIPE,
                    timeout=timeout_s,
                    **kw,
                )
            except subprocess.TimeoutExpired as exc:
                raise ReplicationError(f"{what} took more than {timeout_s:g} s") from exc
            if proc.returncode != 0:
                raise ReplicationError(
                    f"{what} failed: {proc.stderr.decode(errors='replace').strip()[-500:]}"
                )

        fd = os.open(kept, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            run(
                [
                    dump,
                    f"--defaults-extra-file={here}",
                    "--single-transaction",
                    "--databases",
                    schema,
                ],
                f"keeping the schema {schema} of {site} in {kept}",
                stdout=out,
            )
        with _connect(tool, site, "stopping its replication") as conn, conn.cursor() as cur:
            cur.execute("STOP SLAVE")
            cur.execute("RESET SLAVE ALL")
        fresh = Path(tmp) / "source.sql"
        with open(fresh, "wb") as out:
            run(
                [
                    dump,
                    f"--defaults-extra-file={there}",
                    "--single-transaction",
                    "--gtid",
                    "--master-data=2",
                    "--databases",
                    schema,
                ],
                f"dumping {schema} from {source}",
                stdout=out,
            )
        position = _dumped_position(fresh)
        with _connect(tool, site, "resetting its binary log") as conn, conn.cursor() as cur:
            cur.execute("SET SESSION sql_log_bin = 0")
            cur.execute(f"DROP DATABASE IF EXISTS `{schema}`")
            cur.execute("RESET MASTER")
        with open(fresh, "rb") as inp:
            run(
                [client, f"--defaults-extra-file={here}", "--init-command=SET sql_log_bin=0"],
                f"loading {source}'s dump into {site}",
                stdin=inp,
            )
        with _connect(tool, site, f"replicating from {source}") as conn, conn.cursor() as cur:
            cur.execute("SET GLOBAL gtid_slave_pos = %s", (position,))
            sql, args = _change_master(tool, source, "slave_pos")
            cur.execute(sql, args)
            cur.execute("START SLAVE")
    return kept


def _dumped_position(dump_file: Path) -> str:
    """The GTID position a `mariadb-dump --gtid --master-data=2` file was taken at (the client
    writes it, commented out, at the end of the dump)."""
    import re

    with open(dump_file, "rb") as f:
        f.seek(max(0, dump_file.stat().st_size - 65536))
        tail = f.read().decode(errors="replace")
    found = re.findall(r"gtid_slave_pos\s*=\s*'([^']*)'", tail)
    if not found:
        raise ReplicationError(
            f"the dump {dump_file} names no GTID position (mariadb-dump --gtid --master-data)"
        )
    return str(found[-1])
