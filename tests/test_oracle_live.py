"""drop-db-lock's Oracle backend against a real Oracle database.

There is no Oracle server to be had on the project's machines, so this module is collected only
when ``HANDOVER_ORACLE_DSN`` names one (see tests/conftest.py); CI tests the backend at the
`oracledb` connection boundary (tests/test_db_sessions.py). To run it:

    HANDOVER_ORACLE_DSN=dbhost:1521/FREEPDB1 HANDOVER_ORACLE_USER=handover \\
    HANDOVER_ORACLE_PASSWORD=... .venv/bin/python -m pytest tests/test_oracle_live.py

The account needs what the README names: ``SELECT`` on ``GV_$SESSION`` and ``ALTER SYSTEM``.
The test opens sessions that claim to come from the made-up machines ``fts901.handover-test``
and ``fts902.handover-test`` (thin mode lets a client name its machine and program), kills one
agent's session of fts901 and checks that the others still answer.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from typing import Any

import oracledb
import pytest

from tasks.db_sessions import OracleSessions

DSN = os.environ.get("HANDOVER_ORACLE_DSN", "")
USER = os.environ.get("HANDOVER_ORACLE_USER", "")
PASSWORD = os.environ.get("HANDOVER_ORACLE_PASSWORD", "")


def _connect(machine: str | None = None, program: str | None = None) -> Callable[[], Any]:
    extra: dict[str, str] = {}
    if machine:
        extra["machine"] = machine
    if program:
        extra["program"] = program
    return lambda: oracledb.connect(user=USER, password=PASSWORD, dsn=DSN, **extra)


def _alive(conn: Any) -> bool:
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM dual")
            return bool(cur.fetchone()[0] == 1)
    except oracledb.Error:
        return False


def test_a_machine_s_agent_session_is_found_and_killed_and_no_other() -> None:
    assert DSN and USER and PASSWORD, "set HANDOVER_ORACLE_DSN, _USER and _PASSWORD"
    tag = uuid.uuid4().hex[:6].upper()
    victim = f"glite-transfer-channel-agent-urlcopy-T{tag}-A"
    sibling = f"glite-transfer-channel-agent-urlcopy-T{tag}-B"
    conns = {
        "victim": _connect("fts901.handover-test", victim)(),
        "sibling": _connect("fts901.handover-test", sibling)(),
        "other machine": _connect("fts902.handover-test", victim)(),
    }
    try:
        backend = OracleSessions(_connect())
        names = ["fts901", "fts901.handover-test"]
        mine = backend.list_sessions(names, None, f"glite-transfer-channel-agent-urlcopy-T{tag}")
        assert sorted(s.program for s in mine) == sorted([victim, sibling])
        assert all(s.machine.lower().startswith("fts901") for s in mine)
        target = backend.list_sessions(names, None, victim)
        assert [s.program for s in target] == [victim]
        backend.kill(target[0])
        assert backend.list_sessions(names, None, victim) == []
        backend.kill(target[0])  # a session already gone is not an error
        assert not _alive(conns["victim"])
        assert _alive(conns["sibling"]) and _alive(conns["other machine"])
    finally:
        for conn in conns.values():
            try:
                conn.close()
            except oracledb.Error:
                pass


def test_a_malformed_machine_name_reaches_no_sql() -> None:
    backend = OracleSessions(lambda: pytest.fail("connected for a malformed name"))
    with pytest.raises(ValueError, match="is not a host name"):
        backend.list_sessions(["fts901'; --"], None, None)
