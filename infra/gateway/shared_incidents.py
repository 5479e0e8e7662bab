"""The incident book shared by every gateway of a site, in PostgreSQL.

`Incidents` keeps the book in one gateway's memory. With several gateways (one per monitoring
network, or two behind one address), each would open its own incident for the same failure: still
one run (the run's idempotency key comes from the alert's identity), but the alerts of one failure
would be split over several books and a late alert at another gateway would start a second run.
`SharedIncidents` keeps the same book in a PostgreSQL database every gateway reaches
(`alerts.incident_store` in the site file: a secret reference to its URL), with the same rules:

* one row per (site, subject, procedure) (the column `host` holds the subject: a host's name or
  ``geo-site:NAME``): deciding new / attached is one transaction holding that
  row's lock, so two gateways admitting alerts of one failure at the same moment give one "new";
* time is the database's clock, the same for every gateway;
* notes for the run's log and Slack thread are rows claimed by whichever gateway's resolver
  comes first and deleted once it has written them; a note claimed by a gateway that died before
  confirming it is claimed again after `CLAIM_S`: written at least once, twice only when that
  gateway died after writing it (attached alerts are numbered, so a reader tells the two apart);
* a gateway killed in the middle of a storm loses nothing it answered: what it admitted was
  committed before its answer, and what it did not answer its senders send again (the hooks
  spool, Alertmanager retries) to a gateway that is up.
"""

# ruff: noqa: S608 - SQL texts are built from this module's constants; values are bound parameters
from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

import pg8000.native

from infra.gateway.alerts import Alert, event_id
from infra.gateway.incidents import Incident, Verdict, _sentence

SCHEMA = """
SELECT pg_advisory_xact_lock(7218063);
CREATE TABLE IF NOT EXISTS handover_incidents (
    site text NOT NULL,
    -- the incident's subject (Alert.subject): a host's name, or geo-site:NAME
    host text NOT NULL,
    procedure text NOT NULL,
    event_id uuid NOT NULL,
    opened_at timestamptz NOT NULL,
    first_alert jsonb NOT NULL,
    attached integer NOT NULL DEFAULT 0,
    sources jsonb NOT NULL DEFAULT '{}',
    run_id text,
    run_finished boolean NOT NULL DEFAULT false,
    PRIMARY KEY (site, host, procedure)
);
CREATE TABLE IF NOT EXISTS handover_incident_notes (
    id bigserial PRIMARY KEY,
    site text NOT NULL,
    host text NOT NULL,
    procedure text NOT NULL,
    event_id uuid NOT NULL,
    sentence text NOT NULL
);
ALTER TABLE handover_incident_notes ADD COLUMN IF NOT EXISTS claimed_at timestamptz;
"""

#: a note claimed this long ago and not yet written (its gateway died) is claimed again
CLAIM_S = 30.0

_COLUMNS = (
    "site, host, procedure, event_id, extract(epoch FROM opened_at), first_alert, attached, "
    "sources, run_id, run_finished"
)


class IncidentStoreError(RuntimeError):
    """The shared incident book could not be reached; the message names it (without its
    password)."""


def _parse(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
        raise IncidentStoreError(
            "alerts.incident_store: the URL must be postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
        )
    return {
        "user": unquote(parts.username or ""),
        "password": unquote(parts.password or "") or None,
        "host": parts.hostname,
        "port": parts.port or 5432,
        "database": parts.path.strip("/") or None,
    }


class SharedIncidents:
    """The incident book in PostgreSQL (the interface of `Incidents`).

    Args:
        url: postgresql://USER:PASSWORD@HOST:PORT/DATABASE.
        window_s: as for `Incidents`.
        clock: a monotonic clock for the gateway's own pacing (Slack notes); the book's times
            are the database's.
    """

    remote = True

    def __init__(
        self, url: str, window_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._params = _parse(url)
        self._where = f"{self._params['host']}:{self._params['port']}/{self._params['database']}"
        self.window_s = window_s
        self.clock = clock
        self._lock = threading.Lock()
        self._conn: pg8000.native.Connection | None = None
        self._claimed: dict[str, list[int]] = {}  # event id -> notes claimed, not yet written
        self._run(lambda c: [c.run(stmt) for stmt in _statements()])

    # --- the connection ---------------------------------------------------------------------

    def _connect(self) -> pg8000.native.Connection:
        try:
            return pg8000.native.Connection(
                **self._params, timeout=5, application_name="handover-gateway"
            )
        except (OSError, pg8000.native.InterfaceError, pg8000.native.DatabaseError) as exc:
            raise IncidentStoreError(
                f"the shared incident book at {self._where} cannot be reached: {exc}"
            ) from None

    def _run(self, fn: Callable[[pg8000.native.Connection], Any]) -> Any:
        """Run `fn` in one transaction on the (re)opened connection; one retry on a connection
        that turned out dead."""
        with self._lock:
            for attempt in (1, 2):
                if self._conn is None:
                    self._conn = self._connect()
                conn = self._conn
                try:
                    conn.run("BEGIN")
                    out = fn(conn)
                    conn.run("COMMIT")
                    return out
                except (OSError, pg8000.native.InterfaceError) as exc:
                    self._conn = None
                    if attempt == 2:
                        raise IncidentStoreError(
                            f"the shared incident book at {self._where} failed: {exc}"
                        ) from None
                except BaseException:
                    try:
                        conn.run("ROLLBACK")
                    except Exception:  # noqa: BLE001 - the connection is dropped below
                        self._conn = None
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(Exception):  # closing a dead connection
                    self._conn.close()
                self._conn = None

    # --- the book ---------------------------------------------------------------------------

    def _open_sql(self) -> str:
        return (
            f"(opened_at > clock_timestamp() - make_interval(secs => {float(self.window_s)}) "
            "OR (run_id IS NOT NULL AND NOT run_finished))"
        )

    def _incident(self, row: list[Any], pending: list[str] | None = None) -> Incident:
        first = row[5] if isinstance(row[5], dict) else json.loads(row[5])
        sources = row[7] if isinstance(row[7], dict) else json.loads(row[7])
        return Incident(
            site=row[0],
            subject=row[1],
            procedure=row[2],
            event_id=uuid.UUID(str(row[3])),
            opened_at=float(row[4]),
            first=Alert.model_validate(first),
            attached=int(row[6]),
            sources=Counter({k: int(v) for k, v in sources.items()}),
            run_id=row[8],
            run_finished=bool(row[9]),
            pending=list(pending or []),
        )

    def admit(self, alert: Alert, procedure: str | None) -> tuple[Verdict, Incident | None]:
        """As `Incidents.admit`, atomically for every gateway of the store."""

        def note(conn: Any, row: list[Any], what: str) -> None:
            conn.run(
                "INSERT INTO handover_incident_notes (site, host, procedure, event_id, sentence) "
                "VALUES (:s, :h, :p, :e, :t)",
                s=row[0],
                h=row[1],
                p=row[2],
                e=str(row[3]),
                t=_sentence(what, alert),
            )

        def count_source(conn: Any, key: tuple[str, str, str], extra: int) -> list[Any]:
            rows = conn.run(
                "UPDATE handover_incidents SET attached = attached + :x, sources = jsonb_set("
                "sources, ARRAY[:src], to_jsonb(COALESCE((sources->>:src)::int, 0) + 1)) "
                f"WHERE site = :s AND host = :h AND procedure = :p RETURNING {_COLUMNS}",
                x=extra,
                src=alert.source,
                s=key[0],
                h=key[1],
                p=key[2],
            )
            return list(rows[0])

        def decide(conn: Any) -> tuple[Verdict, Incident | None]:
            if procedure is None:
                rows = conn.run(
                    f"SELECT {_COLUMNS} FROM handover_incidents WHERE site = :s AND host = :h "
                    f"AND {self._open_sql()} ORDER BY opened_at DESC LIMIT 1 FOR UPDATE",
                    s=alert.site,
                    h=alert.subject,
                )
                if not rows:
                    return "ignored", None
                row = count_source(conn, (rows[0][0], rows[0][1], rows[0][2]), 0)
                note(conn, row, "recovery reported" if alert.kind == "recovered" else "noted")
                return "noted", self._incident(row)
            key = (alert.site, alert.subject, procedure)
            new_id = str(event_id(alert))
            first = alert.model_dump_json()
            inserted = conn.run(
                "INSERT INTO handover_incidents (site, host, procedure, event_id, opened_at, "
                "first_alert, sources) VALUES (:s, :h, :p, :e, clock_timestamp(), "
                "CAST(:f AS jsonb), jsonb_build_object(CAST(:src AS text), 1)) "
                f"ON CONFLICT DO NOTHING RETURNING {_COLUMNS}",
                s=key[0],
                h=key[1],
                p=key[2],
                e=new_id,
                f=first,
                src=alert.source,
            )
            if inserted:
                return "new", self._incident(list(inserted[0]))
            held = conn.run(
                "SELECT "
                + self._open_sql()
                + " FROM handover_incidents WHERE site = :s AND host = :h AND procedure = :p "
                "FOR UPDATE",
                s=key[0],
                h=key[1],
                p=key[2],
            )
            if held and held[0][0]:
                row = count_source(conn, key, 1)
                note(conn, row, f"alert attached #{row[6]}")  # numbered as in Incidents
                return "attached", self._incident(row)
            # the last incident is over: this alert opens the next
            rows = conn.run(
                "UPDATE handover_incidents SET event_id = :e, opened_at = clock_timestamp(), "
                "first_alert = CAST(:f AS jsonb), attached = 0, "
                "sources = jsonb_build_object(CAST(:src AS text), 1), run_id = NULL, "
                "run_finished = false WHERE site = :s AND host = :h AND procedure = :p "
                f"RETURNING {_COLUMNS}",
                e=new_id,
                f=first,
                src=alert.source,
                s=key[0],
                h=key[1],
                p=key[2],
            )
            return "new", self._incident(list(rows[0]))

        result: tuple[Verdict, Incident | None] = self._run(decide)
        return result

    def forget(self, inc: Incident) -> None:
        """Drop an incident whose event could not be sent (the sender will retry)."""
        self._run(
            lambda c: c.run(
                "DELETE FROM handover_incidents WHERE site = :s AND host = :h AND procedure = :p "
                "AND event_id = :e",
                s=inc.site,
                h=inc.subject,
                p=inc.procedure,
                e=str(inc.event_id),
            )
        )

    def set_run(self, inc: Incident, run_id: str | None) -> None:
        """Record the incident's run (found or created)."""
        inc.run_id = run_id
        self._update(inc, "run_id", run_id)

    def set_finished(self, inc: Incident, finished: bool) -> None:
        """Record whether the incident's run has finished."""
        if inc.run_finished != finished:
            inc.run_finished = finished
            self._update(inc, "run_finished", finished)

    def _update(self, inc: Incident, column: str, value: Any) -> None:
        assert column in ("run_id", "run_finished")
        self._run(
            lambda c: c.run(
                f"UPDATE handover_incidents SET {column} = :v WHERE site = :s AND host = :h AND "
                "procedure = :p AND event_id = :e",
                v=value,
                s=inc.site,
                h=inc.subject,
                p=inc.procedure,
                e=str(inc.event_id),
            )
        )

    def open_incidents(self) -> list[Incident]:
        """The incidents still open, or with notes not yet written (for the resolver)."""

        def read(conn: Any) -> list[Incident]:
            rows = conn.run(
                f"SELECT {_COLUMNS} FROM handover_incidents i WHERE {self._open_sql()} OR "
                "EXISTS (SELECT 1 FROM handover_incident_notes n WHERE n.site = i.site AND "
                "n.host = i.host AND n.procedure = i.procedure AND n.event_id = i.event_id)"
            )
            return [self._incident(list(r)) for r in rows]

        result: list[Incident] = self._run(read)
        return result

    def take_pending(self, inc: Incident) -> list[str]:
        """The incident's notes to write now, claimed in the store (so no other gateway writes
        them too); `notes_written` deletes them once written. Notes another gateway claimed
        over `CLAIM_S` ago and never wrote are claimed again."""
        rows = self._run(
            lambda c: c.run(
                "UPDATE handover_incident_notes SET claimed_at = clock_timestamp() WHERE site = :s "
                "AND host = :h AND procedure = :p AND event_id = :e AND (claimed_at IS NULL OR "
                "claimed_at < clock_timestamp() - make_interval(secs => CAST(:c AS double "
                "precision))) RETURNING id, sentence",
                s=inc.site,
                h=inc.subject,
                p=inc.procedure,
                e=str(inc.event_id),
                c=CLAIM_S,
            )
        )
        with self._lock:
            self._claimed.setdefault(str(inc.event_id), []).extend(int(r[0]) for r in rows)
        return [str(r[1]) for r in sorted(rows, key=lambda r: int(r[0]))]

    def notes_written(self, inc: Incident) -> None:
        """The notes `take_pending` gave for the incident are written: delete them."""
        with self._lock:
            ids = self._claimed.pop(str(inc.event_id), [])
        if ids:
            self._run(
                lambda c: c.run(
                    "DELETE FROM handover_incident_notes WHERE id = ANY(CAST(:i AS bigint[]))",
                    i=ids,
                )
            )


def _statements() -> list[str]:
    return [s.strip() for s in SCHEMA.split(";") if s.strip()]
