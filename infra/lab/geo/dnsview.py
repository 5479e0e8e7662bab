"""Where the tool reads it is active: its first name's A and TXT records on every master.

Every `POLL_S` the tool asks every master of every site, directly (not through a resolver:
nothing cached), for its first name. Each master's newest answer is kept, also when it stops
answering; the view is the answer with the highest epoch among them. A site that was failed away
from thus sees the new epoch, and stops taking writes, as soon as one master that has moved
answers it, even if its own master never heard of the failover. Two masters answering the same
epoch with different addresses is a disagreement no failover makes: the view then names no
address, and the tool takes no write.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from config.site import DnsServer
from infra.lab.errors import LabError
from infra.lab.geo.dns import read_name

#: how often the masters are asked
POLL_S = 0.5
#: how long one master is waited for
TIMEOUT_S = 0.5


@dataclass(frozen=True)
class MasterReading:
    """One master's newest answer for the name."""

    server: str
    address: str | None
    epoch: int | None
    #: when it answered (monotonic seconds), or None when it never did
    at: float | None
    #: why the last question got no answer (None: it answered)
    error: str | None = None


@dataclass(frozen=True)
class View:
    """Where the masters say the tool is active."""

    #: the address of the highest epoch (None: no master answered yet, or two disagree)
    address: str | None
    #: that epoch (0: none known)
    epoch: int
    #: whether any master has answered since the tool started
    answered: bool
    #: why there is no address, when there is none
    problem: str | None = None
    readings: list[MasterReading] = field(default_factory=list)


def best(readings: Sequence[MasterReading]) -> View:
    """The view of the masters' newest answers (module docstring)."""
    known = [r for r in readings if r.at is not None and r.epoch is not None]
    if not known:
        answered = any(r.at is not None for r in readings)
        return View(
            None,
            0,
            answered,
            "no DNS master answered yet" if not answered else "no master answered an epoch",
            list(readings),
        )
    top = max(r.epoch or 0 for r in known)
    addresses = sorted({r.address or "" for r in known if r.epoch == top})
    if len(addresses) > 1:
        return View(
            None,
            top,
            True,
            f"masters disagree at epoch {top}: {', '.join(a or 'no address' for a in addresses)}",
            list(readings),
        )
    return View(
        addresses[0] or None, top, True, None if addresses[0] else "no address", list(readings)
    )


class DnsView:
    """Polls every master in a thread of its own; `current` is the view (module docstring)."""

    def __init__(self, masters: Sequence[DnsServer], name: str) -> None:
        self.masters = list(masters)
        self.name = name
        self._lock = threading.Lock()
        self._readings = {
            self._key(m): MasterReading(self._key(m), None, None, None, "not asked yet")
            for m in self.masters
        }
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(self.masters)))
        self._thread = threading.Thread(target=self._run, name="dns-view", daemon=True)

    @staticmethod
    def _key(m: DnsServer) -> str:
        return f"{m.address}:{m.port}"

    def start(self) -> None:
        """Start polling (the first round is asked at once)."""
        self._thread.start()

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()
        self._thread.join(timeout=2 * (POLL_S + TIMEOUT_S))
        self._pool.shutdown(wait=False, cancel_futures=True)

    def current(self) -> View:
        """The view now."""
        with self._lock:
            return best(list(self._readings.values()))

    def poll_once(self) -> None:
        """Ask every master once (in parallel) and keep the answers."""
        for reading in self._pool.map(self._ask, self.masters):
            with self._lock:
                old = self._readings[reading.server]
                if reading.at is None:  # no answer: its last answer stands, with the error
                    reading = MasterReading(
                        old.server, old.address, old.epoch, old.at, reading.error
                    )
                self._readings[reading.server] = reading

    def _ask(self, master: DnsServer) -> MasterReading:
        key = self._key(master)
        try:
            answer = read_name(master, self.name, TIMEOUT_S)
        except LabError as exc:
            return MasterReading(key, None, None, None, str(exc))
        address = answer.addresses[0] if answer.addresses else None
        return MasterReading(key, address, answer.epoch, time.monotonic())

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.poll_once()
            self._stop.wait(max(0.0, POLL_S - (time.monotonic() - started)))
