"""One connection to the site's database, kept open for a verb's several statements.

A verb that polls the database (every few tens of milliseconds) and then writes cannot afford a
new connection for each statement: connecting costs a few round trips and the authentication,
tens of milliseconds on a loaded machine, and the write is what ends a channel's downtime.
`DbLink` opens one connection (bounded by the site's `database.timeout_s`) and runs on it:

* `sessions(...)`: the sessions from a machine, optionally of one program, with the site's
  `SessionBackend` (the same SQL as the drop-db-lock verb);
* `write_channel_states(...)`: the site's `database.channel_set_statement`, one commit;
* `channel_states()`: the site's `database.channel_states_query`.

Every statement is bounded by the driver's own timeout (pg8000's socket timeout, oracledb's
``call_timeout``, PyMySQL's read and write timeouts, all set to `database.timeout_s` by the
connector); a driver error becomes `DatabaseUnavailable`. Not thread-safe: one thread uses it.

`borrowed(site)` lends a link kept open by the process for a while (`IDLE_S`): a move writes
and reads channel states a few seconds apart, and the hand-over after a drain should not wait
for a login. A kept link is checked with one round trip before it is lent (the database may
have restarted meanwhile: a new link is opened then); a link whose statement failed is closed,
never lent again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from config.site import Database, Site
from tasks.adapters import db as dbmod
from tasks.adapters.db import (
    DatabaseUnavailable,
    DbSession,
    MySqlSessions,
    OracleSessions,
    PostgresSessions,
    SessionBackend,
    rows_of,
    write_states_on,
)

T = TypeVar("T")


class _Lent:
    """The link's connection lent to a backend, whose calls close what they open: closing it
    leaves the connection open."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def close(self) -> None:
        """Leave the link's connection open."""


class DbLink:
    """One open connection to the site's database (a context manager: closed on exit).

    Raises:
        DatabaseUnavailable: on opening, the database did not answer or refused the login.
    """

    def __init__(self, site: Site, application: str) -> None:
        db = site.database
        if db is None:
            raise ValueError(f"site {site.site} has no database section")
        self.db: Database = db
        self.conn = dbmod._bounded(
            db,
            dbmod._connector(db, application),
            "connecting from handover's machine",
            "failed the login (check that it is up and reachable from here, and the site's "
            "database.user and database.password)",
        )
        backends: dict[str, Callable[[Callable[[], Any]], SessionBackend]] = {
            "postgresql": PostgresSessions,
            "oracle": OracleSessions,
            "mariadb": MySqlSessions,
        }
        self._backend = backends[db.kind](lambda: _Lent(self.conn))
        #: a statement failed on it: closed, never lent again
        self.broken = False

    def __enter__(self) -> DbLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (an error closing it is of no interest)."""
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001, S110 - the connection is being dropped anyway
            pass

    def alive(self) -> bool:
        """Whether the connection still answers (one round trip). A kept connection may have
        been cut meanwhile: the database restarted, or a firewall dropped the idle session."""
        try:
            if self.db.kind == "postgresql":
                self.conn.run("SELECT 1")
            elif self.db.kind == "oracle":
                self.conn.ping()
            else:
                self.conn.ping(reconnect=False)
        except Exception:  # noqa: BLE001 - any failure means: open a new one
            return False
        return True

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (ValueError, DatabaseUnavailable):
            raise
        except Exception as exc:  # every driver's own errors
            self.broken = True
            raise DatabaseUnavailable(
                f"{what}: the {self.db.kind} database at {self.db.host}:{self.db.port} failed "
                f"or did not answer: {type(exc).__name__}: {exc}; check that it is up and "
                "reachable from here"
            ) from exc

    def sessions(
        self, machine_names: Sequence[str], address: str | None, program: str | None
    ) -> list[DbSession]:
        """The sessions from a machine (of one program when given), as the site's
        `SessionBackend` lists them."""
        return self._call(
            "listing sessions", lambda: self._backend.list_sessions(machine_names, address, program)
        )

    def write_channel_states(self, channels: Sequence[str], state: str) -> list[str]:
        """Run `database.channel_set_statement` for each channel, one commit; the channels it
        changed no row of."""
        if self.db.channel_set_statement is None:
            raise ValueError("the site has no database.channel_set_statement")
        return self._call(
            f"writing {', '.join(channels)} {state}",
            lambda: write_states_on(self.db, self.conn, channels, state),
        )

    def channel_states(self) -> dict[str, str]:
        """Every channel's state from `database.channel_states_query`."""
        query = self.db.channel_states_query
        if query is None:
            raise ValueError("the site has no database.channel_states_query")
        rows = self._call("reading the channel states", lambda: rows_of(self.db, self.conn, query))
        return {str(r[0]): str(r[1]) for r in rows}


#: how long an idle link is kept for the next borrower; an older one is closed instead
IDLE_S = 20.0
#: idle links kept per database
KEEP = 4
_idle: dict[tuple[object, ...], list[tuple[float, DbLink]]] = {}
_idle_lock = threading.Lock()


def _key(db: Database) -> tuple[object, ...]:
    return (db.kind, db.host, db.port, db.database, db.user)


@contextmanager
def borrowed(site: Site) -> Iterator[DbLink]:
    """A link to the site's database: an idle one of this process, or a new one. Given back
    when the block ends normally; closed when it raised.

    Raises:
        DatabaseUnavailable: a new link could not be opened.
    """
    db = site.database
    if db is None:
        raise ValueError(f"site {site.site} has no database section")
    key = _key(db)
    link = None
    stale: list[DbLink] = []
    with _idle_lock:
        idle = _idle.get(key, [])
        while idle and link is None:
            at, candidate = idle.pop()
            if time.monotonic() - at <= IDLE_S:
                link = candidate
            else:
                stale.append(candidate)
    if link is not None and not link.alive():
        stale.append(link)
        link = None
    for old in stale:
        old.close()
    if link is None:
        link = DbLink(site, "handover")
    # the same connection, but this site's statements (two site files may name one database)
    link.db = db
    try:
        yield link
    except BaseException:
        link.close()
        raise
    if link.broken:
        link.close()
        return
    with _idle_lock:
        idle = _idle.setdefault(key, [])
        if len(idle) < KEEP:
            idle.append((time.monotonic(), link))
            return
    link.close()


def close_idle() -> None:
    """Close every idle link of this process."""
    with _idle_lock:
        links = [link for idle in _idle.values() for _, link in idle]
        _idle.clear()
    for link in links:
        link.close()
