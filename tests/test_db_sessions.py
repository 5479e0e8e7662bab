"""drop-db-lock: the PostgreSQL backend for real on the lab; Oracle and MariaDB at the driver's
connection boundary (fake connections that check the SQL and the binds)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from config.loader import load_site
from flows.drop_db_lock import DropDbLockResult, drop_db_lock
from tasks.db_sessions import (
    DatabaseUnavailable,
    DbSession,
    MySqlSessions,
    OracleSessions,
    drop_sessions,
    find_sessions,
)
from tests.conftest import LAB_SITE, ROOT, RunningLab, db_sessions, wait_for

P = "glite-transfer-channel-agent-urlcopy-"


class FakeCursor:
    def __init__(self, conn: FakeConnection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Any = None) -> None:
        # the rows the database would answer are the test's: what the product's WHERE clause
        # keeps is checked on a real engine (test_oracles_where_clause_on_a_real_sql_engine)
        self.conn.executed.append((sql, params))
        self.result = self.conn.rows

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self.result


class FakeConnection:
    def __init__(self, rows: list[tuple[Any, ...]] | None = None) -> None:
        self.rows = rows or []
        self.executed: list[tuple[str, Any]] = []
        self.closed = False

    def cursor(self) -> FakeCursor:
        return FakeCursor(self)

    def close(self) -> None:
        self.closed = True


# rows shaped like gv$session: sid, serial#, inst_id, machine, program, module, username, status
GV_SESSION = [
    (
        123,
        4567,
        1,
        "fts101.cern.ch",
        f"{P}CERN-CERN@fts101 (TNS V1-V3)",
        None,
        "FTS_AGENT",
        "INACTIVE",
    ),
    (130, 88, 2, "fts101.cern.ch", "sqlplus@fts101", "SQL*Plus", "FTS_AGENT", "ACTIVE"),
    # other agents of the machine (the database, not this fake, leaves them out: see below)
    (131, 7, 1, "fts101.cern.ch", f"{P}CERN-CERN2@fts101 (TNS V1-V3)", None, "FTS_AGENT", "ACTIVE"),
    (132, 8, 1, "fts101.cern.ch", f"{P}CERN_CERN@fts101 (TNS V1-V3)", None, "FTS_AGENT", "ACTIVE"),
]


def test_oracle_lists_with_binds_and_kills_by_sid_serial_inst() -> None:
    conn = FakeConnection(GV_SESSION)
    be = OracleSessions(lambda: conn)
    found = be.list_sessions(["fts101", "fts101.cern.ch"], None, P + "CERN-CERN")
    sql, binds = conn.executed[0]
    assert "FROM gv$session" in sql and ":m1" in sql and ":prog" in sql
    assert "fts101" not in sql, "values only as binds"
    assert binds == {
        "m1": "fts101",
        "m2": "fts101.cern.ch",
        "prog": P + "CERN-CERN",
        "pat": P + "CERN-CERN@%",
    }
    # each row the database answers becomes a session: "sid,serial#,@inst_id", and the
    # program, or the module when the program is the driver's
    assert [s.id for s in found] == ["123,4567,@1", "130,88,@2", "131,7,@1", "132,8,@1"]
    assert (found[0].user, found[0].state) == ("FTS_AGENT", "INACTIVE")
    assert found[1].program.startswith("sqlplus")
    every = be.list_sessions(["fts101", "fts101.cern.ch"], None, None)
    assert conn.executed[-1][1]["prog"] is None and conn.executed[-1][1]["pat"] is None
    assert len(every) == len(GV_SESSION)
    be.kill(found[0])
    assert conn.executed[-1][0] == "ALTER SYSTEM KILL SESSION '123,4567,@1' IMMEDIATE"
    assert conn.closed


#: gv$session rows for the real-engine test: (sid, machine, program, module)
GV_ROWS = [
    (1, "fts101.cern.ch", f"{P}CERN-CERN@fts101 (TNS V1-V3)", None),
    (2, "FTS101", "JDBC Thin Client", f"{P}CERN-CERN"),  # named by its module; machine upper-case
    (3, "fts101.cern.ch", "sqlplus@fts101 (TNS V1-V3)", "SQL*Plus"),  # the operator, not an agent
    (4, "fts101.cern.ch", f"{P}CERN-CERN2@fts101 (TNS V1-V3)", None),  # a longer name
    (5, "fts101.cern.ch", f"{P}CERN_CERN@fts101 (TNS V1-V3)", None),  # "_" read as a wildcard
    (6, "fts1011.cern.ch", f"{P}CERN-CERN@fts1011 (TNS V1-V3)", None),  # another machine
    (7, "fts101", f"{P}A_B@fts101 (TNS V1-V3)", None),
    (8, "fts101", f"{P}A-B@fts101 (TNS V1-V3)", None),
    (9, "fts101", f"{P}AxB@fts101 (TNS V1-V3)", None),
    (10, "fts101", f"{P}A_B", None),  # the program exactly, without "@host"
    (11, "fts101.cern.ch", f"{P}A%B@fts101 (TNS V1-V3)", None),
]


@pytest.mark.parametrize(
    ("program", "expected"),
    [
        (P + "CERN-CERN", [1, 2]),
        (P + "A_B", [7, 10]),
        (P + "A-B", [8]),
        (None, [1, 2, 3, 4, 5, 7, 8, 9, 10, 11]),
    ],
)
def test_oracles_where_clause_on_a_real_sql_engine(
    lab: RunningLab, program: str | None, expected: list[int]
) -> None:
    """The product's own SELECT and binds (captured at the driver's boundary), evaluated by the
    lab's PostgreSQL against a table shaped like gv$session: `LIKE ... ESCAPE` with the
    product's escaping, so "_" in an agent's name is a literal and a name is not a prefix of
    another."""
    conn = FakeConnection()
    OracleSessions(lambda: conn).list_sessions(["fts101", "fts101.cern.ch"], None, program)
    [(sql, binds)] = conn.executed
    with contextlib.closing(lab.lab.db.connect()) as pg:
        pg.run(
            'CREATE TEMP TABLE "gv$session" (sid int, "serial#" int, inst_id int, machine text, '
            "program text, module text, username text, status text, type text)"
        )
        for sid, machine, prog, module in GV_ROWS:
            pg.run(
                "INSERT INTO \"gv$session\" VALUES (:sid, 1, 1, :m, :p, :mod, 'FTS', 'ACTIVE', "
                "'USER')",
                sid=sid,
                m=machine,
                p=prog,
                mod=module,
            )
        pg.run(
            "INSERT INTO \"gv$session\" VALUES (99, 1, 1, 'fts101', :p, NULL, 'SYS', 'ACTIVE', "
            "'BACKGROUND')",
            p=f"{P}CERN-CERN@fts101",
        )
        # two dialect differences, nothing else: Oracle's `serial#` column quoted, and the
        # bind tested only with IS NULL given the type Oracle infers and PostgreSQL cannot
        pg_sql = sql.replace("serial#", '"serial#"').replace(
            ":prog IS NULL", "CAST(:prog AS text) IS NULL"
        )
        assert pg_sql.count("CAST(") == 1
        rows = pg.run(pg_sql, **binds)
    assert sorted(int(r[0]) for r in rows) == expected


def test_oracle_refuses_malformed_names_before_any_sql() -> None:
    conn = FakeConnection()
    be = OracleSessions(lambda: conn)
    with pytest.raises(ValueError, match="not a host name"):
        be.list_sessions(["fts101'; DROP TABLE x; --"], None, None)
    with pytest.raises(ValueError, match="not an agent name"):
        be.list_sessions(["fts101"], None, "agent' OR '1'='1")
    with pytest.raises(ValueError, match="not an Oracle session id"):
        be.kill(DbSession(id="1,2,@3' IMMEDIATE; --", machine="x", program="y"))
    assert conn.executed == []


def test_mysql_lists_by_host_and_kills_by_id() -> None:
    conn = FakeConnection([(17, "fts101", "fts", "", "fts")])
    be = MySqlSessions(lambda: conn)
    found = be.list_sessions(["fts101"], "10.1.2.3", None)
    sql, params = conn.executed[0]
    assert "information_schema.PROCESSLIST" in sql and "%s" in sql
    assert params == ("fts101,10.1.2.3",)
    assert found[0].id == "17"
    be.kill(found[0])
    assert conn.executed[-1][0] == "KILL CONNECTION 17"


def test_lab_sessions_of_one_machine_and_one_agent(lab: RunningLab) -> None:
    h101, h102 = lab.site.host("fts101"), lab.site.host("fts102")
    mine = find_sessions(lab.site, "fts101")
    # the machine's sessions: its agents', and its front end's where it runs one
    agents = sorted(s.program for s in mine if s.program.startswith(P))
    assert agents == sorted(lab.agents_on("fts101"))
    assert {s.program for s in mine} - set(agents) <= {"fts-frontend"}, mine
    others_before = db_sessions(lab, h102.address)
    one = drop_sessions(lab.site, "fts101", P + "CERN-RAL")
    assert one.sentence.startswith("fts101: killed 1 DB session of CERN-RAL")
    left = {s.program for s in find_sessions(lab.site, "fts101")}
    assert P + "CERN-RAL" not in left and P + "CERN-CERN" in left
    assert db_sessions(lab, h102.address) == others_before, "other machines untouched"
    assert all(name != P + "CERN-RAL" for _, name in db_sessions(lab, h101.address))
    # the agent reconnects and takes its lock again (nobody else holds it)
    wait_for(
        lambda: any(s.program == P + "CERN-RAL" for s in find_sessions(lab.site, "fts101")),
        15,
        "CERN-RAL's agent to reconnect",
    )


def test_drop_db_lock_flow(lab: RunningLab, prefect_api: str) -> None:
    dry = drop_db_lock(str(lab.site_file), "fts105", dry_run=True)
    assert dry.dry_run and len(dry.found) == 2 and "nothing killed" in dry.sentence
    assert len(find_sessions(lab.site, "fts105")) == 2
    # from the command line, as an operator runs it (its own process: `handover run` sets
    # Prefect's console logging for itself, which must not leak into this test process)
    argv = ["run", "drop-db-lock", "--site", str(lab.site_file), "--host", "fts105", "--json"]
    cli = subprocess.run(
        [sys.executable, "-m", "infra.cli", *argv],
        cwd=ROOT,
        env={**os.environ, "PREFECT_API_URL": prefect_api},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert cli.returncode == 0, cli.stderr[-2000:]
    done = DropDbLockResult.model_validate_json(cli.stdout)
    assert done.status == "completed" and done.step is not None and len(done.step.changed) == 2
    assert "killed 2 DB sessions" in done.sentence
    wait_for(lambda: len(find_sessions(lab.site, "fts105")) == 2, 15, "the VO agents to reconnect")


def test_a_site_without_database_is_refused() -> None:
    site = load_site(Path(__file__).resolve().parent.parent / "config/sites/lab.yaml")
    bare = site.model_copy(update={"database": None})
    with pytest.raises(ValueError, match="no database section"):
        find_sessions(bare, "fts101")


@pytest.mark.parametrize("kind", ["postgresql", "mariadb", "oracle"])
def test_a_database_that_never_answers_is_bounded_by_the_site(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listener that accepts and then says nothing (a hung server, a half-open firewall): every
    backend gives up after `database.timeout_s` instead of holding an emergency move."""
    import socket
    import threading
    import time

    from config.site import Database
    from tasks.adapters.db import backend_for

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                held.append(srv.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    monkeypatch.setenv("HANDOVER_TEST_DB_PASSWORD", "unused")
    db = Database(
        kind=kind,  # type: ignore[arg-type]
        host="127.0.0.1",
        port=srv.getsockname()[1],
        database="fts",
        user="fts",
        password={"env": "HANDOVER_TEST_DB_PASSWORD"},  # type: ignore[arg-type]
        timeout_s=1.0,
    )
    site = load_site(LAB_SITE).model_copy(update={"database": db})
    started = time.monotonic()
    try:
        with pytest.raises(Exception) as failed:
            backend_for(site).list_sessions(["fts101"], "127.0.1.1", None)
        # the site says 1 s (the drivers used to wait 10 s, or for ever on Oracle)
        assert time.monotonic() - started < 8, "not bounded by the site's timeout"
        assert "time" in str(failed.value).lower() or isinstance(failed.value, TimeoutError)
        # the verb says which database did not answer, and never raises a TimeoutError (which
        # Prefect would report as the flow's own timeout)
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable) as said:
            find_sessions(site, "fts101")
        assert time.monotonic() - started < 8
        assert not isinstance(said.value, TimeoutError)
        assert f"{kind} database at 127.0.0.1:{db.port}" in str(said.value).lower()
        assert "did not answer" in str(said.value)
    finally:
        srv.close()
        for c in held:
            c.close()
