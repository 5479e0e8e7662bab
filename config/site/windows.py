"""Maintenance windows (cron, duration, time zone) and blackouts (change freezes)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import (
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from config.site.base import SiteModel


def _check_timezone(name: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r}; use an IANA name such as UTC or Europe/Zurich"
        ) from None
    return name


class MaintenanceWindow(SiteModel):
    """A window: it opens at each time the cron expression names (in `timezone`) and lasts
    `duration_s`.

    Example:
        ``{cron: "0 8 * * 2", duration_s: 7200, timezone: Europe/Zurich}`` (Tuesdays 08:00-10:00)
    """

    #: when the window opens, as a cron expression (five fields)
    cron: Annotated[str, StringConstraints(pattern=r"^(\S+\s+){4}\S+$")]
    #: how long it stays open
    duration_s: float = Field(gt=0, le=7 * 86400)
    #: the time zone `cron` is read in
    timezone: str = "UTC"

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        from cronsim import CronSim, CronSimError

        try:
            CronSim(v, dt.datetime(2026, 1, 1))
        except CronSimError as exc:
            raise ValueError(
                f"invalid cron expression {v!r} ({exc}); five fields: minute hour day month "
                "weekday, e.g. '0 8 * * 2'"
            ) from None
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        return _check_timezone(v)


class Blackout(SiteModel):
    """Days on which no window opens (a change freeze), from `start` to `end` included, in
    `timezone`.

    Example:
        ``{start: 2026-12-21, end: 2027-01-04, reason: "year-end freeze"}``
    """

    #: the first day of the freeze
    start: dt.date
    #: the last day of the freeze (included)
    end: dt.date
    #: why (shown when a run is refused)
    reason: str = ""
    #: the time zone of `start` and `end`
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        return _check_timezone(v)

    @model_validator(mode="after")
    def _order(self) -> Blackout:
        if self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}")
        return self
