"""The service's database: list and kill the sessions that come from a machine (its agents' DB
lock), read every channel's state in one query (`read_channel_states`, for snapshots), set
channels' states (`write_channel_states`, where the site allows it), and how long each running
transfer still needs (`read_transfer_eta`, for a clean move's cut-over).

One small interface, three backends. Contract of a `SessionBackend`:
    * `list_sessions(machine_names, address, program)` returns the sessions whose client is that
      machine (by any of its names, or its address where the database records one), optionally
      only those of one program (the agent's name); it never returns sessions of other machines.
    * `kill(session)` asks the database to end one session; killing a session that has already
      gone is not an error (the verb verifies afterwards).
    * Every value reaches the database as a bind variable, except where the SQL grammar forbids
      it (Oracle's ``ALTER SYSTEM KILL SESSION`` and MySQL's ``KILL``): there the values are
      integers checked before use.
    * Each call opens one connection and closes it before it returns; connecting and every
      statement are bounded by the site's `database.timeout_s`. (The channel reads and writes
      and the site's queries run on a connection the process keeps for a while:
      `tasks.adapters.db_link.borrowed`.)

Privileges the account needs: PostgreSQL, membership of ``pg_signal_backend`` and
``pg_read_all_stats``; MariaDB/MySQL, ``PROCESS`` and ``CONNECTION ADMIN`` (or ``SUPER``);
Oracle, ``SELECT`` on ``GV_$SESSION`` and ``ALTER SYSTEM``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from contextlib import closing
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from config.site import Database, Site

T = TypeVar("T")

MACHINE_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$")
PROGRAM_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class DatabaseUnavailable(RuntimeError):
    """The database did not answer, or its driver failed, within the site's bound.

    Not a `TimeoutError`: Prefect takes a flow that raises one for a flow that ran past its own
    timeout, and says "TimedOut" where the database was the one that did not answer.
    """


def within(seconds: float, what: str, fn: Callable[[], T]) -> T:
    """`fn()`, or `DatabaseUnavailable` after `seconds` (the call goes on in a daemon thread,
    unseen). For a driver call that has no bound of its own.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    worker = threading.Thread(target=run, name="handover-db-connect", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise DatabaseUnavailable(
            f"{what} did not answer within {seconds:g} s (database.timeout_s); check that the "
            "database is up and reachable, then retry"
        )
    if "error" in box:
        raise box["error"]
    result: T = box["value"]
    return result


def like_escape(text: str) -> str:
    """`text` as a literal in a SQL LIKE pattern with ``ESCAPE '\\'``."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class DbSession(BaseModel):
    """One database session."""

    id: str  # PostgreSQL backend pid, MySQL connection id, Oracle "sid,serial#,@inst_id"
    machine: str
    program: str
    user: str = ""
    state: str = ""


class SessionBackend(Protocol):
    """List and kill sessions of one database (see the module's contract)."""

    def list_sessions(
        self, machine_names: Sequence[str], address: str | None, program: str | None
    ) -> list[DbSession]:
        """Sessions from the machine (optionally of one program)."""
        ...

    def kill(self, session: DbSession) -> None:
        """End one session."""
        ...


def check_names(machine_names: Sequence[str], program: str | None) -> None:
    """Refuse names that are not plain host names / program names.

    Raises:
        ValueError: naming the bad value.
    """
    for m in machine_names:
        if not MACHINE_RE.fullmatch(m):
            raise ValueError(f"machine name {m!r} is not a host name")
    if program is not None and not PROGRAM_RE.fullmatch(program):
        raise ValueError(f"program name {program!r} is not an agent name")


class PostgresSessions:
    """PostgreSQL: `pg_stat_activity` by client address (and application name)."""

    def __init__(self, connect: Callable[[], Any]) -> None:
        self.connect = connect

    def list_sessions(
        self, machine_names: Sequence[str], address: str | None, program: str | None
    ) -> list[DbSession]:
        check_names(machine_names, program)
        with closing(self.connect()) as conn:
            rows = conn.run(
                "SELECT pid, host(client_addr), coalesce(client_hostname, ''), application_name, "
                "usename, coalesce(state, '') FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
                " AND (host(client_addr) = :addr OR client_hostname = ANY(CAST(:names AS text[])))"
                " AND (CAST(:prog AS text) IS NULL OR application_name = :prog) ORDER BY pid",
                addr=address or "",
                names=list(machine_names),
                prog=program,
            )
        return [
            DbSession(id=str(r[0]), machine=r[2] or r[1], program=r[3], user=r[4], state=r[5])
            for r in rows
        ]

    def kill(self, session: DbSession) -> None:
        with closing(self.connect()) as conn:
            conn.run("SELECT pg_terminate_backend(CAST(:pid AS integer))", pid=int(session.id))


class MySqlSessions:
    """MariaDB/MySQL: `information_schema.PROCESSLIST` by client host, `KILL CONNECTION id`."""

    def __init__(self, connect: Callable[[], Any]) -> None:
        self.connect = connect

    def list_sessions(
        self, machine_names: Sequence[str], address: str | None, program: str | None
    ) -> list[DbSession]:
        check_names(machine_names, program)
        hosts = [*machine_names, *([address] if address else [])]
        # HOST is "name:port"; MySQL has no per-connection program name, so sessions are matched
        # by machine only (names are validated: no commas for FIND_IN_SET)
        sql = (
            "SELECT ID, SUBSTRING_INDEX(HOST, ':', 1), USER, COALESCE(STATE, ''), "
            "COALESCE(DB, '') FROM information_schema.PROCESSLIST "
            "WHERE FIND_IN_SET(SUBSTRING_INDEX(HOST, ':', 1), %s) AND ID <> CONNECTION_ID() "
            "ORDER BY ID"
        )
        with closing(self.connect()) as conn:
            cur = conn.cursor()
            cur.execute(sql, (",".join(hosts),))
            rows = cur.fetchall()
        return [
            DbSession(id=str(int(r[0])), machine=r[1], program=program or "", user=r[2], state=r[3])
            for r in rows
        ]

    def kill(self, session: DbSession) -> None:
        with closing(self.connect()) as conn:
            conn.cursor().execute(f"KILL CONNECTION {int(session.id)}")


class OracleSessions:
    """Oracle (oracledb, thin mode): `gv$session` by machine and program or module; killed with
    ``ALTER SYSTEM KILL SESSION 'sid,serial#,@inst_id' IMMEDIATE``."""

    # an agent's session has its name as module, or as program followed by "@host" (thin
    # clients: "NAME@fts101 (TNS V1-V3)"); LIKE patterns escape "_" and "%", so CERN-CERN
    # matches neither CERN-CERN2 nor CERN_CERN
    SELECT = (
        "SELECT sid, serial#, inst_id, machine, program, module, username, status "
        "FROM gv$session WHERE type = 'USER' AND (LOWER(machine) = LOWER(:m1) OR "
        "LOWER(machine) LIKE LOWER(:m1) || '.%' OR LOWER(machine) = LOWER(:m2)) AND "
        "(:prog IS NULL OR program = :prog OR module = :prog OR "
        "program LIKE :pat ESCAPE '\\') "
        "ORDER BY inst_id, sid"
    )

    def __init__(self, connect: Callable[[], Any]) -> None:
        self.connect = connect

    def list_sessions(
        self, machine_names: Sequence[str], address: str | None, program: str | None
    ) -> list[DbSession]:
        check_names(machine_names, program)
        short, full = machine_names[0], machine_names[-1]
        with closing(self.connect()) as conn:
            cur = conn.cursor()
            pat = None if program is None else like_escape(program) + "@%"
            cur.execute(self.SELECT, {"m1": short, "m2": full, "prog": program, "pat": pat})
            rows = cur.fetchall()
        return [
            DbSession(
                id=f"{int(sid)},{int(serial)},@{int(inst)}",
                machine=str(machine),
                program=str(prog or module or ""),
                user=str(user or ""),
                state=str(status or ""),
            )
            for sid, serial, inst, machine, prog, module, user, status in rows
        ]

    def kill(self, session: DbSession) -> None:
        m = re.fullmatch(r"(\d+),(\d+),@(\d+)", session.id)
        if m is None:
            raise ValueError(f"not an Oracle session id: {session.id!r}")
        sid, serial, inst = (int(x) for x in m.groups())
        with closing(self.connect()) as conn:
            # identifiers cannot be bound in DDL: three integers, checked above
            conn.cursor().execute(f"ALTER SYSTEM KILL SESSION '{sid},{serial},@{inst}' IMMEDIATE")


def backend_for(site: Site) -> SessionBackend:
    """The site's session backend, connecting with the site's credentials (read when used)."""
    db = site.database
    if db is None:
        raise ValueError(f"site {site.site} has no database section")
    return _backend(db)


def _connector(db: Database, application: str = "handover-drop-db-lock") -> Callable[[], Any]:
    """How to open one bounded connection to the database (pg8000's native interface for
    PostgreSQL, DB-API connections for Oracle and MariaDB)."""

    def password() -> str:
        return db.password.resolve().get_secret_value()

    if db.kind == "postgresql":
        import pg8000.native

        return lambda: pg8000.native.Connection(
            db.user,
            host=db.host,
            port=db.port,
            database=db.database,
            password=password(),
            # a socket timeout: it bounds the connect and every read of each call
            timeout=db.timeout_s,
            application_name=application,
        )
    if db.kind == "oracle":
        import oracledb

        def oracle() -> Any:
            # thin mode bounds the TCP connect only: a listener that accepts and never answers
            # holds `connect` for ever (python-oracledb has no connect timeout), so the connect
            # is bounded from outside
            conn = within(
                db.timeout_s,
                f"the Oracle database at {db.host}:{db.port}",
                lambda: oracledb.connect(
                    user=db.user,
                    password=password(),
                    host=db.host,
                    port=db.port,
                    service_name=db.database,
                    tcp_connect_timeout=db.timeout_s,
                ),
            )
            conn.call_timeout = int(db.timeout_s * 1000)  # every round trip, in milliseconds
            return conn

        return oracle
    import pymysql  # type: ignore[import-untyped]

    return lambda: pymysql.connect(
        user=db.user,
        password=password(),
        host=db.host,
        port=db.port,
        database=db.database,
        connect_timeout=db.timeout_s,
        read_timeout=db.timeout_s,
        write_timeout=db.timeout_s,
    )


def _backend(db: Database) -> SessionBackend:
    connect = _connector(db)
    if db.kind == "postgresql":
        return PostgresSessions(connect)
    if db.kind == "oracle":
        return OracleSessions(connect)
    return MySqlSessions(connect)


def _bounded(db: Database, fn: Callable[[], T], what: str, failed: str) -> T:
    """`fn()` (one connection's work) bounded by twice the site's `database.timeout_s`; a
    driver's error becomes `DatabaseUnavailable`: "<what>: the <kind> database at <host:port>
    <failed>: <the driver's message>"."""
    where = f"the {db.kind} database at {db.host}:{db.port}"
    try:
        return within(db.timeout_s * 2, where, fn)
    except DatabaseUnavailable:
        raise
    except Exception as exc:  # every driver's own errors
        raise DatabaseUnavailable(f"{what}: {where} {failed}: {exc}") from exc


def rows_of(db: Database, conn: Any, query: str) -> list[Any]:
    """The rows of one SELECT on an open connection of the site's driver."""
    if db.kind == "postgresql":
        return list(conn.run(query))
    cur = conn.cursor()
    try:
        cur.execute(query)
        rows = list(cur.fetchall())
    finally:
        cur.close()
    if db.kind == "mariadb":
        # ends the read's snapshot (InnoDB's repeatable read): a connection kept for the next
        # read must see what was committed meanwhile
        conn.commit()
    return rows


def write_states_on(db: Database, conn: Any, channels: Sequence[str], state: str) -> list[str]:
    """Run the site's `channel_set_statement` for each channel on an open connection and
    commit once; the channels it changed no row of."""
    statement = db.channel_set_statement
    assert statement is not None
    missed: list[str] = []
    if db.kind == "postgresql":  # pg8000's native interface binds :name itself
        conn.run("START TRANSACTION")
        for c in channels:
            conn.run(statement, state=state, channel=c)
            if conn.row_count < 1:
                missed.append(c)
        conn.run("COMMIT")
        return missed
    # oracledb binds :name; PyMySQL wants %(name)s
    sql = (
        statement
        if db.kind == "oracle"
        else re.sub(r":(state|channel)\b", r"%(\1)s", statement.replace("%", "%%"))
    )
    cur = conn.cursor()
    try:
        for c in channels:
            cur.execute(sql, {"state": state, "channel": c})
            if cur.rowcount < 1:
                missed.append(c)
        conn.commit()
    finally:
        cur.close()
    return missed


def _select(site: Site, query: str, what: str) -> list[Any]:
    """The rows of one site-configured SELECT (one connection, one query, bounded by the
    site's `database.timeout_s`).

    Raises:
        DatabaseUnavailable: the database did not answer or refused the query.
    """
    from tasks.adapters.db_link import borrowed

    db = site.database
    assert db is not None

    def fetch() -> list[Any]:
        with borrowed(site) as link:
            return rows_of(db, link.conn, query)

    return _bounded(db, fetch, what, f"did not answer `{query}`")


def read_channel_states(site: Site) -> dict[str, str]:
    """Every channel's state from the site's `database.channel_states_query`.

    Raises:
        DatabaseUnavailable: the database did not answer or refused the query.
    """
    db = site.database
    if db is None or db.channel_states_query is None:
        raise ValueError(f"site {site.site} has no database.channel_states_query")
    rows = _select(site, db.channel_states_query, "channel states")
    return {str(r[0]): str(r[1]) for r in rows}


def write_channel_states(site: Site, channels: Sequence[str], state: str) -> list[str]:
    """Set each channel's state with the site's `database.channel_set_statement` (one
    connection, one statement per channel, one commit, bounded by `database.timeout_s`).

    Returns:
        The channels the statement changed no row of (unknown to the database, say): the caller
        sets those another way.

    Raises:
        DatabaseUnavailable: the database did not answer or refused the statement (then
            nothing was committed).
    """
    db = site.database
    if db is None or db.channel_set_statement is None:
        raise ValueError(f"site {site.site} has no database.channel_set_statement")
    from tasks.adapters.db_link import borrowed

    statement = db.channel_set_statement

    def write() -> list[str]:
        with borrowed(site) as link:
            return write_states_on(db, link.conn, channels, state)

    return _bounded(db, write, "channel states", f"refused `{statement}`")


def read_transfer_eta(site: Site) -> dict[str, list[float]]:
    """Per channel, the seconds each running transfer still needs (longest first), from the
    site's `database.transfer_eta_query`.

    Raises:
        DatabaseUnavailable: the database did not answer, refused the query, or answered rows
            that are not (channel, seconds).
    """
    db = site.database
    if db is None or db.transfer_eta_query is None:
        raise ValueError(f"site {site.site} has no database.transfer_eta_query")
    rows = _select(site, db.transfer_eta_query, "transfer times")
    out: dict[str, list[float]] = {}
    try:
        for r in rows:
            out.setdefault(str(r[0]), []).append(max(0.0, float(r[1])))
    except (TypeError, ValueError, IndexError) as exc:
        raise DatabaseUnavailable(
            f"transfer times: `{db.transfer_eta_query}` must return (channel, seconds) rows; "
            f"got {rows[:1]!r}: {exc}"
        ) from exc
    return {c: sorted(v, reverse=True) for c, v in out.items()}
