"""The DB-lock verbs: find the sessions that come from a machine, and kill them.

The backends (PostgreSQL, MariaDB/MySQL, Oracle) are in `tasks.adapters.db`; see its contract.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from config.site import Site, short_name
from flows.plans.words import count
from tasks.adapters.db import (
    DatabaseUnavailable,
    DbSession,
    MySqlSessions,
    OracleSessions,
    PostgresSessions,
    SessionBackend,
    backend_for,
    check_names,
)
from tasks.outcome import StepFailed, StepResult, now

T = TypeVar("T")

__all__ = [
    "DatabaseUnavailable",
    "DbSession",
    "MySqlSessions",
    "OracleSessions",
    "PostgresSessions",
    "SessionBackend",
    "backend_for",
    "check_names",
    "drop_sessions",
    "find_sessions",
    "machine_identity",
]


def _where(site: Site) -> str:
    db = site.database
    return f"the {db.kind} database at {db.host}:{db.port}" if db else "the database"


def _driver_call(site: Site, doing: str, fn: Callable[[], T]) -> T:
    """`fn()`, with any driver failure (refused, reset, timed out, an error from the server)
    turned into `DatabaseUnavailable` saying what was being done and where."""
    try:
        return fn()
    except (ValueError, DatabaseUnavailable):
        raise  # a refused name, or already said
    except Exception as exc:  # every driver has its own error classes
        raise DatabaseUnavailable(
            f"{_where(site)} failed or did not answer while {doing}: "
            f"{type(exc).__name__}: {exc}; check that it is up and reachable from here, then "
            "retry"
        ) from exc


def machine_identity(site: Site, host: str) -> tuple[list[str], str | None]:
    """The names a database may record for a host's sessions, and its IP address if known."""
    import ipaddress

    h = site.host(host)
    try:
        ipaddress.ip_address(h.address)
        return [h.name], h.address
    except ValueError:
        return [h.name, h.address], None


def find_sessions(
    site: Site, host: str, agent: str | None = None, backend: SessionBackend | None = None
) -> list[DbSession]:
    """The DB sessions that come from `host` (and, optionally, from one agent)."""
    names, address = machine_identity(site, host)
    be = backend or backend_for(site)
    return _driver_call(
        site,
        f"listing the sessions from {host}",
        lambda: be.list_sessions(names, address, agent),
    )


def drop_sessions(
    site: Site,
    host: str,
    agent: str | None = None,
    backend: SessionBackend | None = None,
    verify_s: float = 10.0,
) -> StepResult:
    """Kill the DB sessions from `host` (optionally one agent's) and verify they are gone.

    Sessions of other machines are never touched: the list is re-read and only its sessions
    are killed. Post-condition: none of the sessions found is left. A session the host opens
    after the kill (a service that reconnects, such as a web front end) is a new one: it is
    named in the outcome sentence, not killed in a loop.
    """
    import time

    verb = "drop-db-sessions"
    started = now()
    be = backend or backend_for(site)
    found = find_sessions(site, host, agent, be)
    for i, s in enumerate(found):
        _driver_call(
            site,
            f"killing session {s.id} of {host} ({i} of {len(found)} killed before it)",
            lambda s=s: be.kill(s),  # type: ignore[misc]
        )
    killed = {s.id for s in found}
    deadline = time.monotonic() + verify_s
    now_open = find_sessions(site, host, agent, be) if found else []
    left = [s for s in now_open if s.id in killed]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        now_open = find_sessions(site, host, agent, be)
        left = [s for s in now_open if s.id in killed]
    if left:
        raise StepFailed(
            f"{host}: {count(len(left), 'DB session')} still open after the kill "
            f"({', '.join(s.id for s in left)}); check the account's privileges (see "
            "tasks/adapters/db.py) or kill them on the database by hand",
            host=host,
            verb=verb,
        )
    what = f" of {short_name(agent)}" if agent else ""
    sentence = (
        f"{host}: killed {count(len(found), 'DB session')}{what} "
        f"({', '.join(f'{s.id} {s.program}' for s in found)})"
        if found
        else f"{host}: no DB session{what} to kill"
    )
    reopened = [s for s in now_open if s.id not in killed]
    if reopened:
        sentence += (
            f"; {count(len(reopened), 'new session')} opened since "
            f"({', '.join(f'{s.id} {s.program}' for s in reopened)})"
        )
    return StepResult(
        host=host,
        verb=verb,
        changed=[s.id for s in found],
        sentence=sentence,
        started_at=started,
        ended_at=now(),
    )
