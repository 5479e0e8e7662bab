"""Exactly one run per host (or geo site) and procedure: the gateway's incident book.

An incident is what one failure of one host, or the loss of one geo site, is to handover: the first
alert opens it and becomes the Prefect event that starts the procedure; every alert that reports the
same failure while the incident is open (within the dedup window, or for as long as its run has not
finished) is attached to it instead: counted, noted in the run's log and Slack thread, and never
sent to Prefect as a new start. A `recovered` alert, or any kind that starts no procedure (the HA
group daemon's ``ha_event``), never opens an incident; it is noted on an open one.

This book lives in the gateway's memory; `shared_incidents.SharedIncidents` keeps the same book
in PostgreSQL for several gateways (`alerts.incident_store`). Prefect keeps the guarantee across
gateway restarts and between gateways with books of their own: event ids are derived from the
alert's identity (Prefect evaluates an id once), and the deployment triggers fire once per host
within the same window (a reactive trigger with threshold 1 and `within`). See
docs/how-to/alerts.md.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from infra.gateway.alerts import Alert, event_id


@dataclass
class Incident:
    """One failure of one host (or the loss of a geo site), and the run it started."""

    site: str
    #: what failed: a host's name, or ``geo-site:NAME`` (`Alert.subject`)
    subject: str
    procedure: str
    event_id: uuid.UUID
    opened_at: float
    first: Alert
    attached: int = 0
    sources: Counter[str] = field(default_factory=Counter)
    run_id: str | None = None
    run_finished: bool = False
    #: sentences not yet written to the run's log / Slack thread
    pending: list[str] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, str]:
        """What identifies the incident: site, subject, procedure."""
        return (self.site, self.subject, self.procedure)


Verdict = Literal["new", "attached", "noted", "ignored"]


class IncidentBook(Protocol):
    """What the gateway needs of an incident book (`Incidents`, `SharedIncidents`)."""

    window_s: float
    clock: Callable[[], float]
    #: whether its calls wait on a server (the gateway then makes them off its event loop)
    remote: bool

    def admit(self, alert: Alert, procedure: str | None) -> tuple[Verdict, Incident | None]: ...
    def set_run(self, inc: Incident, run_id: str | None) -> None: ...
    def set_finished(self, inc: Incident, finished: bool) -> None: ...
    def forget(self, inc: Incident) -> None: ...
    def open_incidents(self) -> list[Incident]: ...
    def take_pending(self, inc: Incident) -> list[str]: ...
    def notes_written(self, inc: Incident) -> None: ...


class Incidents:
    """The open incidents of a gateway (thread-safe).

    Args:
        window_s: alerts for a host within this many seconds of the first attach to its incident;
            after it, they attach while the incident's run has not finished.
        clock: a monotonic clock (tests pass their own).
    """

    remote = False

    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self._open: dict[tuple[str, str, str], Incident] = {}
        self._lock = threading.Lock()

    def _is_open(self, inc: Incident, now: float) -> bool:
        within = now - inc.opened_at < self.window_s
        return within or (inc.run_id is not None and not inc.run_finished)

    def admit(self, alert: Alert, procedure: str | None) -> tuple[Verdict, Incident | None]:
        """Decide what an alert does: open an incident (``new``: send its event), attach to the
        open one, note a recovery on it, or nothing (``ignored``: a recovery with nothing open)."""
        now = self.clock()
        with self._lock:
            if procedure is None:  # a recovery or a report: note it where a run is going on
                for inc in self._open.values():
                    if (inc.site, inc.subject) == (alert.site, alert.subject) and self._is_open(
                        inc, now
                    ):
                        inc.sources[alert.source] += 1
                        what = "recovery reported" if alert.kind == "recovered" else "noted"
                        inc.pending.append(_sentence(what, alert))
                        return "noted", inc
                return "ignored", None
            key = (alert.site, alert.subject, procedure)
            held = self._open.get(key)
            if held is not None and self._is_open(held, now):
                held.attached += 1
                held.sources[alert.source] += 1
                # numbered: a reader of the run's log can tell a note written twice (a gateway
                # killed between writing its notes and confirming them) from two alerts
                held.pending.append(_sentence(f"alert attached #{held.attached}", alert))
                return "attached", held
            inc = Incident(
                site=alert.site,
                subject=alert.subject,
                procedure=procedure,
                event_id=event_id(alert),
                opened_at=now,
                first=alert,
            )
            inc.sources[alert.source] += 1
            self._open[key] = inc
            return "new", inc

    def set_run(self, inc: Incident, run_id: str | None) -> None:
        """Record the incident's run (found or created)."""
        inc.run_id = run_id

    def set_finished(self, inc: Incident, finished: bool) -> None:
        """Record whether the incident's run has finished."""
        inc.run_finished = finished

    def forget(self, inc: Incident) -> None:
        """Drop an incident whose event could not be sent (the sender will retry)."""
        with self._lock:
            if self._open.get(inc.key) is inc:
                del self._open[inc.key]

    def open_incidents(self) -> list[Incident]:
        """The incidents still open (for the background resolver)."""
        now = self.clock()
        with self._lock:
            for k, inc in list(self._open.items()):
                if not self._is_open(inc, now) and not inc.pending:
                    del self._open[k]
            return list(self._open.values())

    def take_pending(self, inc: Incident) -> list[str]:
        """The sentences to write now (and forget)."""
        with self._lock:
            out, inc.pending = inc.pending, []
            return out

    def notes_written(self, inc: Incident) -> None:
        """Nothing to do: `take_pending` already forgot them (a gateway that dies loses its
        memory book whole)."""


def _sentence(what: str, alert: Alert) -> str:
    summary = f": {alert.summary}" if alert.summary else ""
    return (
        f"{what}: {alert.kind} for {alert.geo_site or alert.host} from {alert.source} "
        f"({alert.severity}, {alert.time:%H:%M:%S} UTC){summary}"
    )
