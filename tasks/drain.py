"""The drain wait: until no transfer of some channels runs on a host, with a bound.

One `DrainMonitor` polls the host (one `ps` per poll, whatever the number of channels) and keeps
the running-transfer count of each channel; each waiter blocks until a poll that began after its
channel was set Inactive shows zero transfers for it, or until its deadline; a new waiter starts
a poll at once. The monitor calls `on_poll` after every poll (the flow publishes progress from
there).

Drained also means that the database answers from the host: an agent whose transfers ended
records their results in the database, and one stopped while it cannot (the database hangs, or
the host is cut off from it) leaves them Active, to be marked lost by its next instance. So a
channel counts as drained when a poll shows none of its transfers and the database answered from
the host (a channel state read, bounded by the command's own timeout) in a check begun at most
`db_fresh_s` before that poll, and the last check worked. Until every channel has been seen
drained, a thread of the monitor repeats that check every `db_fresh_s / 2`, so the poll that
sees the last transfer gone is not held up by it; without that thread (or with no fresh answer),
the poll reads it itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from flows.plans.words import count
from tasks.adapters.db import DatabaseUnavailable
from tasks.adapters.ssh import SshError
from tasks.outcome import StepResult, now
from tasks.remote import SiteShell
from tasks.site_state import read_channel_state, read_host

_log = logging.getLogger("handover.drain")

if TYPE_CHECKING:
    from flows.plans.verbs import WaitDrained
    from tasks.run_context import RunContext

#: extra drain polls after the moment the last running transfer is expected to end (its
#: process exits a little after the end its start time and duration give)
DRAIN_END_POLLS_S = (0.02, 0.07, 0.15)


class DrainTimeout(RuntimeError):
    """Channels still ran transfers at the deadline. `running` has the last counts."""

    def __init__(
        self, host: str, running: dict[str, int], timeout_s: float, error: str | None = None
    ) -> None:
        self.host = host
        self.running = running
        self.timeout_s = timeout_s
        busy = ", ".join(
            f"{c} ({n} running)" if n >= 0 else f"{c} (never read)" for c, n in running.items() if n
        ) or ", ".join(f"{c} (no transfer runs, but the database did not answer)" for c in running)
        seen = f"; the last look at {host} failed: {error}" if error else ""
        super().__init__(
            f"{host}: {busy} did not drain within {timeout_s:.0f} s{seen}; their agents stay on "
            f"{host} and their channels are set Active again. Re-run the move later, or force "
            "it (running transfers then lose their state)"
        )


class HostLost(RuntimeError):
    """The drained host could not be reached for longer than the bound: the drain cannot be
    watched, so it is given up (a forced move does not go on either: it could not stop the
    agents)."""

    def __init__(self, host: str, channels: list[str], lost_s: float, error: str | None) -> None:
        self.host = host
        super().__init__(
            f"{host} could not be reached for {lost_s:.0f} s while {', '.join(channels)} "
            f"drained ({error or 'no answer'}); the drain is given up: their agents stay on "
            f"{host} and their channels are set Active again (from another host if need be). "
            f"Re-run the move once {host} answers"
        )


class Cancelled(RuntimeError):
    """The procedure was asked to stop."""


class DrainMonitor:
    """Polls a host's transfers per channel while waiters wait for their channels to drain."""

    def __init__(
        self,
        shell: SiteShell,
        host: str,
        channels: list[str],
        poll_s: float,
        cancel: threading.Event,
        on_poll: Callable[[dict[str, int]], None] | None = None,
        lost_after_s: float = 30.0,
        db_fresh_s: float = 1.5,
    ) -> None:
        self.shell = shell
        self.db_fresh_s = db_fresh_s
        #: monotonic time at which the last database check began, and whether it worked
        self.db_checked_at = float("-inf")
        self.db_ok = False
        self.db_error: str | None = None
        #: the channels no waiter has seen drained yet (the database check thread runs for them)
        self._undrained = set(channels)
        #: set by a new waiter: the next poll begins at once instead of at the end of the period
        self._wake = threading.Event()
        #: a waiter wants a poll now (`_wake` is also set by `expect`, for a new moment)
        self._poll_now = False
        self._db_thread: threading.Thread | None = None
        self.lost_after_s = lost_after_s
        #: monotonic time of the first of the failed polls in a row (None: the last one worked)
        self.unreachable_since: float | None = None
        self.host = host
        self.channels = channels
        self.poll_s = poll_s
        self.cancel = cancel
        self.on_poll = on_poll
        self.running: dict[str, int] = dict.fromkeys(channels, -1)
        self.polled_at = 0.0  # monotonic time at which the last good poll began
        self.error: str | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: monotonic moments at which a transfer is expected to end: a poll begins at each
        self._expected: list[float] = []

    def start(self, runner: Callable[[Callable[[], None]], threading.Thread] | None = None) -> None:
        """Start polling, and the database check, each in a thread made by `runner` (which may
        wrap the target, e.g. to run it in a copy of a context: one copy per thread)."""
        make = runner or (lambda f: threading.Thread(target=f, daemon=True))
        self._thread = make(self._loop)
        self._thread.start()
        self._db_thread = make(self._db_loop)
        self._db_thread.start()

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()
        self._wake.set()
        with self._cond:
            self._cond.notify_all()
        for t in (self._thread, self._db_thread):
            if t is not None:
                t.join(timeout=self.poll_s + 35)

    def check_db(self) -> bool:
        """Read a channel's state on the host (its database answers from there); keep when the
        check began and whether it worked."""
        began = time.monotonic()
        error: str | None = None
        try:
            read_channel_state(self.shell, self.host, self.channels[0])
        except SshError as exc:
            error = f"the database did not answer from {self.host}: {exc}"
        with self._cond:
            if began >= self.db_checked_at:
                self.db_checked_at, self.db_ok, self.db_error = began, error is None, error
            self._cond.notify_all()
        return error is None

    def _db_fresh(self, at: float) -> bool:
        """Whether the last database check worked and began at most `db_fresh_s` before `at`."""
        return self.db_ok and at - self.db_checked_at <= self.db_fresh_s

    def poll_once(self) -> None:
        """One poll of the host (also usable without the thread)."""
        began = time.monotonic()
        snap = read_host(self.shell, self.host)[0]
        if (
            snap.reachable
            and self.channels
            and any(snap.running_transfers(c) == 0 for c in self.channels)
            and not self._db_fresh(began)
        ):
            self.check_db()
        with self._cond:
            if snap.reachable:
                self.running = {c: snap.running_transfers(c) for c in self.channels}
                self.polled_at = began
                self.error = None
                self.unreachable_since = None
            else:
                self.error = snap.error
                if self.unreachable_since is None:
                    self.unreachable_since = began
            self._cond.notify_all()
        if self.on_poll is not None and snap.reachable:
            try:
                self.on_poll(dict(self.running))
            except Exception as exc:  # noqa: BLE001 - see below
                # the callback publishes progress (a call to the Prefect API): its failure
                # must not end the polling, or the wait would time out on stale counts
                _log.warning("the drain's progress could not be reported (%s); polling on", exc)

    def _db_loop(self) -> None:
        """Keep the database answer fresh until every channel has been seen drained."""
        while not self._stop.is_set():
            with self._cond:
                due = bool(self._undrained) and (
                    time.monotonic() - self.db_checked_at >= self.db_fresh_s / 2
                )
            if due:
                self.check_db()
            self._stop.wait(0.05)

    def expect(self, moments: list[float]) -> None:
        """Poll at these monotonic moments too (when transfers are expected to end), besides
        every `poll_s`: the last transfer's end is then seen within a poll's round trip, not
        up to a period later."""
        with self._cond:
            self._expected = sorted([*self._expected, *moments])
        # the loop may be asleep until the end of its period: it works out its next poll again
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                self.poll_once()
            except Exception as exc:  # noqa: BLE001 - the thread must outlive any one poll
                _log.warning("a drain poll of %s failed (%r); polling on", self.host, exc)
            while not self._stop.is_set():
                nxt = start + self.poll_s
                with self._cond:
                    self._expected = [t for t in self._expected if t > start]
                    if self._expected:
                        nxt = min(nxt, self._expected[0])
                self._wake.wait(max(0.0, nxt - time.monotonic()))
                self._wake.clear()
                with self._cond:
                    asked, self._poll_now = self._poll_now, False
                # a waiter asked for a poll now, or its moment came; else `expect` woke the
                # loop: the next moment is worked out again
                if asked or time.monotonic() >= nxt:
                    break

    def wait(self, channels: list[str], since: float, timeout_s: float) -> dict[str, int]:
        """Block until `channels` run no transfer in a poll begun after `since` (monotonic).

        Returns:
            The counts of the poll that showed them drained (all zero).

        Raises:
            DrainTimeout: at the deadline, with the last counts.
            HostLost: the host could not be reached for `lost_after_s` in a row.
            Cancelled: when the procedure is cancelled while waiting.
        """
        deadline = since + timeout_s
        with self._cond:
            self._poll_now = True
        self._wake.set()  # a poll begun before `since` would not count: one begins now
        with self._cond:
            drained = self._wait(channels, since, timeout_s, deadline)
            self._undrained.difference_update(channels)
            return drained

    def _wait(
        self, channels: list[str], since: float, timeout_s: float, deadline: float
    ) -> dict[str, int]:
        """`wait`'s loop (the condition's lock held)."""
        while True:
            if self.cancel.is_set():
                raise Cancelled("cancelled while waiting for the drain")
            fresh = self.polled_at > since
            # a database check begun just after that poll counts too
            if (
                fresh
                and self._db_fresh(self.polled_at)
                and all(self.running.get(c, 0) == 0 for c in channels)
            ):
                return {c: 0 for c in channels}
            lost = self.unreachable_since
            if lost is not None and time.monotonic() - lost >= self.lost_after_s:
                raise HostLost(self.host, channels, time.monotonic() - lost, self.error)
            left = deadline - time.monotonic()
            if left <= 0:
                raise DrainTimeout(
                    self.host,
                    {c: self.running.get(c, -1) for c in channels},
                    timeout_s,
                    self.error or (None if self.db_ok else self.db_error),
                )
            self._cond.wait(timeout=min(left, 0.5))


def _expect_drain_end(ctx: RunContext, monitor: DrainMonitor, channels: list[str]) -> None:
    """Have the drain's poll look when the channels' last running transfer is expected to
    end (where the site's database tells how long each still needs)."""
    db = ctx.site.database
    if db is None or db.transfer_eta_query is None:
        return
    try:
        eta = ctx.eta().read()
    except DatabaseUnavailable:
        return  # the regular polls see the drain
    ends = [r for c in channels for r in eta.get(c, [])]
    if ends:
        at = time.monotonic() + max(ends)
        monitor.expect([at + d for d in DRAIN_END_POLLS_S])


def wait_drained(ctx: RunContext, step: WaitDrained) -> StepResult:
    """Wait until no transfer of the step's channels runs on its host, on the run's monitor.

    The wait counts from the moment the run set the channels Inactive and is bounded by the
    run's drain timeout; a forced run goes on after it, saying how many running transfers lose
    their state (`StepResult.forced_lost`).

    Raises:
        ValueError: the run has no drain monitor.
        DrainTimeout: the bound passed (and the run is not forced).
        HostLost: the host could not be reached for too long.
        Cancelled: the run was cancelled meanwhile.
    """
    monitor = ctx.monitor
    if monitor is None:
        raise ValueError(f"step {step.id}: the run has no drain monitor")
    started = now()
    since = max(ctx.inactive_mono[c] for c in step.channels)
    _expect_drain_end(ctx, monitor, step.channels)
    began = time.monotonic()
    try:
        monitor.wait(step.channels, since, ctx.drain_timeout_s)
    except DrainTimeout as exc:
        if not ctx.force:
            raise
        lost = sum(max(0, n) for n in exc.running.values())
        sentence = (
            f"{step.host}: FORCED after {exc.timeout_s:.0f} s: "
            f"{count(lost, 'running transfer')} of {', '.join(step.channels)} will lose "
            "their state"
        )
        return StepResult(
            host=step.host,
            verb=step.verb,
            sentence=sentence,
            started_at=started,
            ended_at=now(),
            forced_lost=lost,
        )
    waited = time.monotonic() - began
    return StepResult(
        host=step.host,
        verb=step.verb,
        sentence=f"{step.host}: {', '.join(step.channels)} drained after {waited:.1f} s",
        started_at=started,
        ended_at=now(),
    )
