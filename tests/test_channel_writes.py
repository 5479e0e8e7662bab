"""`write_channel_states` with the DB-API drivers (MariaDB's PyMySQL, Oracle's python-oracledb),
faked at the connection: each gets the site's statement in its own bind style, one execution
per channel, one commit; a channel whose statement changed no row is handed back; a driver
error commits nothing and says which statement failed. (PostgreSQL runs for real on the lab:
`tests/test_lab.py`.)"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from config.loader import load_site
from config.site import Database
from tasks.adapters import db as dbmod
from tasks.adapters.db import DatabaseUnavailable, write_channel_states
from tasks.adapters.db_link import borrowed, close_idle
from tests.conftest import LAB_SITE

STATEMENT = "UPDATE t_channel SET state = :state WHERE channel_name = :channel AND note LIKE 'x%'"


class FakeCursor:
    def __init__(self, conn: FakeConnection) -> None:
        self.conn = conn
        self.rowcount = -1

    def execute(self, sql: str, params: dict[str, str]) -> None:
        if self.conn.fail:
            raise RuntimeError("ORA-00942: table or view does not exist")
        self.conn.executed.append((sql, dict(params)))
        self.rowcount = 0 if params["channel"] in self.conn.unknown else 1

    def close(self) -> None:
        pass


class FakeConnection:
    def __init__(self, unknown: set[str], fail: bool) -> None:
        self.unknown = unknown
        self.fail = fail
        self.executed: list[tuple[str, dict[str, str]]] = []
        self.commits = 0
        self.closed = False
        self.logins = 0
        self.dead = False

    def cursor(self) -> FakeCursor:
        return FakeCursor(self)

    def commit(self) -> None:
        self.commits += 1

    def ping(self, reconnect: bool = False) -> None:
        if self.closed or self.dead:
            raise ConnectionResetError("the server closed the connection")

    def close(self) -> None:
        self.closed = True


def _site(kind: str) -> Any:
    db = Database(
        kind=kind,  # type: ignore[arg-type]
        host="127.0.0.1",
        port=1521,
        database="fts",
        user="fts",
        password={"env": "HANDOVER_TEST_DB_PASSWORD"},  # type: ignore[arg-type]
        timeout_s=2.0,
        channel_states_query="SELECT channel_name, state FROM t_channel",
        channel_set_statement=STATEMENT,
    )
    return load_site(LAB_SITE).model_copy(update={"database": db})


@pytest.fixture(autouse=True)
def no_kept_connections() -> Iterator[None]:
    yield
    close_idle()


def _fake(
    monkeypatch: pytest.MonkeyPatch, unknown: set[str] | None = None, fail: bool = False
) -> FakeConnection:
    conn = FakeConnection(unknown or set(), fail)

    def connect() -> FakeConnection:
        conn.logins += 1
        return conn

    monkeypatch.setattr(dbmod, "_connector", lambda db, application="": connect)
    return conn


@pytest.mark.parametrize(
    ("kind", "sql"),
    [
        ("oracle", STATEMENT),
        (
            "mariadb",
            "UPDATE t_channel SET state = %(state)s WHERE channel_name = %(channel)s "
            "AND note LIKE 'x%%'",
        ),
    ],
)
def test_each_driver_gets_its_bind_style_and_one_commit(
    kind: str, sql: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = _fake(monkeypatch, unknown={"CERN-FNAL"})
    missed = write_channel_states(_site(kind), ["CERN-RAL", "CERN-FNAL"], "Inactive")
    assert missed == ["CERN-FNAL"]
    assert conn.executed == [
        (sql, {"state": "Inactive", "channel": "CERN-RAL"}),
        (sql, {"state": "Inactive", "channel": "CERN-FNAL"}),
    ]
    assert conn.commits == 1 and not conn.closed
    # the next write takes the connection the process kept: no second login
    assert write_channel_states(_site(kind), ["CERN-RAL"], "Active") == []
    assert conn.logins == 1 and conn.commits == 2
    close_idle()
    assert conn.closed


def test_a_refused_statement_commits_nothing_and_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = _fake(monkeypatch, fail=True)
    with pytest.raises(DatabaseUnavailable) as failed:
        write_channel_states(_site("oracle"), ["CERN-RAL"], "Active")
    assert STATEMENT in str(failed.value) and "ORA-00942" in str(failed.value)
    assert conn.commits == 0 and conn.closed


def test_a_site_without_the_statement_is_refused() -> None:
    site = load_site(LAB_SITE)
    with pytest.raises(ValueError, match=r"no database\.channel_set_statement"):
        write_channel_states(site, ["CERN-RAL"], "Active")


def test_a_kept_connection_runs_the_borrowing_sites_statements(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two site files may name one database: the connection one opened is lent to the other,
    with the other's statement (and none where it has none)."""
    conn = _fake(monkeypatch)
    first = _site("oracle")
    assert first.database is not None
    other = first.model_copy(
        update={
            "database": first.database.model_copy(
                update={
                    "channel_set_statement": "UPDATE t_channel SET state = :state "
                    "WHERE channel_name = :channel"
                }
            )
        }
    )
    write_channel_states(first, ["CERN-RAL"], "Active")
    write_channel_states(other, ["CERN-RAL"], "Active")
    assert conn.logins == 1
    assert [sql for sql, _ in conn.executed] == [STATEMENT, other.database.channel_set_statement]
    with borrowed(
        first.model_copy(
            update={
                "database": first.database.model_copy(
                    update={"channel_set_statement": None, "channel_states_query": None}
                )
            }
        )
    ) as link:
        with pytest.raises(ValueError, match=r"no database\.channel_set_statement"):
            link.write_channel_states(["CERN-RAL"], "Active")
    assert conn.logins == 1


def test_a_kept_connection_that_no_longer_answers_is_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The database restarted between two writes: the kept connection fails its check and a
    new one is opened, instead of the write failing over to the tool on the host."""
    opened: list[FakeConnection] = []

    def connect() -> FakeConnection:
        opened.append(FakeConnection(set(), False))
        return opened[-1]

    monkeypatch.setattr(dbmod, "_connector", lambda db, application="": connect)
    write_channel_states(_site("mariadb"), ["CERN-RAL"], "Inactive")
    write_channel_states(_site("mariadb"), ["CERN-RAL"], "Active")
    assert len(opened) == 1  # kept, checked, reused
    opened[0].dead = True
    assert write_channel_states(_site("mariadb"), ["CERN-RAL"], "Inactive") == []
    assert len(opened) == 2 and opened[0].closed
    assert [p["state"] for _, p in opened[1].executed] == ["Inactive"]
