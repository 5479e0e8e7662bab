"""Maintenance windows: is a procedure allowed to act now, until when, and when next (pure).

A procedure's policy may list windows (cron + duration + time zone) and blackouts (whole days in
a time zone). A window is open from each time its cron expression names until `duration_s`
later; a window whose opening falls on a blackout day does not open, and no window is open on a
blackout day. A procedure without windows may act at any time.

`check_window(policy, now)` says which: ``open`` (and when it closes), ``closed`` (and when the
next window opens, and why it is closed: outside every window, or a blackout), or ``always``.
`fits(check, now, estimate_s)` says whether a step of that estimate ends before the window closes.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal
from zoneinfo import ZoneInfo

from cronsim import CronSim
from pydantic import BaseModel

from config.site import Blackout, MaintenanceWindow, ProcedurePolicy

#: how far ahead `next_opening` looks (a cron that names no time within it opens never)
HORIZON = dt.timedelta(days=400)


class WindowCheck(BaseModel):
    """Whether a procedure may act now."""

    status: Literal["open", "closed", "always"]
    #: open: when the current window closes
    closes_at: dt.datetime | None = None
    #: open: the window that is open (its cron and time zone)
    window: str = ""
    #: closed: when the next window opens (None: none within the horizon)
    next_opens_at: dt.datetime | None = None
    next_window: str = ""
    #: closed: why (outside every window, or the blackout that covers now)
    reason: str = ""

    def sentence(self) -> str:
        """The check in words."""
        if self.status == "always":
            return "no maintenance window is configured: the procedure may run at any time"
        if self.status == "open":
            assert self.closes_at is not None
            return f"in the maintenance window {self.window}, which closes at {_at(self.closes_at)}"
        nxt = (
            f"the next window opens at {_at(self.next_opens_at)} ({self.next_window})"
            if self.next_opens_at
            else f"no window opens within {HORIZON.days} days"
        )
        return f"{self.reason}; {nxt}"


def _at(t: dt.datetime | None) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC") if t else "never"


def describe(w: MaintenanceWindow) -> str:
    """``'0 8 * * 2' Europe/Zurich for 2 h``."""
    hours = w.duration_s / 3600
    length = f"{hours:g} h" if hours >= 1 else f"{w.duration_s / 60:g} min"
    return f"'{w.cron}' {w.timezone} for {length}"


def blackout_at(blackouts: list[Blackout], t: dt.datetime) -> Blackout | None:
    """The blackout that covers the instant `t` (its day in the blackout's time zone)."""
    for b in blackouts:
        day = t.astimezone(ZoneInfo(b.timezone)).date()
        if b.start <= day <= b.end:
            return b
    return None


def _last_opening(w: MaintenanceWindow, now: dt.datetime) -> dt.datetime | None:
    local = now.astimezone(ZoneInfo(w.timezone))
    # cronsim's reverse iteration starts strictly before its start: one second after now
    # includes a window that opens exactly now
    it = CronSim(w.cron, local + dt.timedelta(seconds=1), reverse=True)
    try:
        return next(it).astimezone(dt.UTC)
    except StopIteration:
        return None


def _openings(w: MaintenanceWindow, after: dt.datetime) -> CronSim:
    return CronSim(w.cron, after.astimezone(ZoneInfo(w.timezone)))


def check_window(policy: ProcedurePolicy, now: dt.datetime) -> WindowCheck:
    """Whether the procedure may act at `now` (an aware datetime)."""
    if not policy.windows:
        return WindowCheck(status="always")
    blackout = blackout_at(policy.blackouts, now)
    if blackout is None:
        open_now: list[tuple[dt.datetime, MaintenanceWindow]] = []
        for w in policy.windows:
            began = _last_opening(w, now)
            if began is None or blackout_at(policy.blackouts, began) is not None:
                continue
            closes = began + dt.timedelta(seconds=w.duration_s)
            if began <= now < closes:
                open_now.append((closes, w))
        if open_now:
            closes, w = max(open_now, key=lambda x: x[0])
            return WindowCheck(status="open", closes_at=closes, window=describe(w))
    nxt = next_opening(policy, now)
    reason = (
        f"in the blackout {blackout.start} to {blackout.end}"
        + (f" ({blackout.reason})" if blackout.reason else "")
        if blackout
        else "outside every maintenance window"
    )
    return WindowCheck(
        status="closed",
        reason=reason,
        next_opens_at=nxt[0] if nxt else None,
        next_window=describe(nxt[1]) if nxt else "",
    )


def next_opening(
    policy: ProcedurePolicy, now: dt.datetime
) -> tuple[dt.datetime, MaintenanceWindow] | None:
    """The next time a window opens after `now` outside the blackouts, and which window."""
    best: tuple[dt.datetime, MaintenanceWindow] | None = None
    for w in policy.windows:
        for local in _openings(w, now):
            t = local.astimezone(dt.UTC)
            if t - now > HORIZON or (best is not None and t >= best[0]):
                break
            if blackout_at(policy.blackouts, t) is None:
                best = (t, w)
                break
    return best


def fits(check: WindowCheck, now: dt.datetime, estimate_s: float) -> bool:
    """Whether work of `estimate_s` started at `now` ends before the window closes."""
    if check.status == "always":
        return True
    if check.status == "closed" or check.closes_at is None:
        return False
    return now + dt.timedelta(seconds=estimate_s) <= check.closes_at
