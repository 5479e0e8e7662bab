"""What the switches of a site wrote, kept as Prefect Variables: the last switch (what the drift
watch expects every authoritative server to answer) and the last automatic one (anti-flapping).

Both are best effort: a record that cannot be written is logged, never fails a switch that is
done; one that cannot be read counts as none.
"""

from __future__ import annotations

import datetime as dt

from prefect import get_run_logger
from prefect.exceptions import MissingContextError
from pydantic import BaseModel

from flows import progress
from tasks.outcome import now


class AutomaticSwitch(BaseModel):
    """The last automatic switch of a site (anti-flapping)."""

    at: dt.datetime
    master: str
    to: str
    run_id: str = ""


class LastSwitch(BaseModel):
    """What the last completed switch of a site wrote: the alias's address and epoch."""

    at: dt.datetime
    host: str
    address: str
    epoch: int
    run_id: str = ""


def _automatic_variable(site: str) -> str:
    return f"switch-last-automatic-{site}"


def _last_variable(site: str) -> str:
    return f"switch-last-{site}"


def get_record(name: str) -> object:
    """The Prefect Variable `name` (None: unset or unreadable)."""
    from prefect.variables import Variable

    try:
        return Variable.get(name)
    except Exception:  # noqa: BLE001 - unreadable: as if none
        return None


def set_record(name: str, value: BaseModel) -> None:
    """Keep `value` in the Prefect Variable `name`, best effort (a failure is logged)."""
    from prefect.variables import Variable

    try:
        Variable.set(name, value.model_dump(mode="json"), overwrite=True)
    except Exception as exc:  # noqa: BLE001 - the switch is done; say it, do not fail it
        try:
            get_run_logger().warning("could not record %s: %s", name, exc)
        except MissingContextError:
            pass


def last_automatic_switch(site: str) -> AutomaticSwitch | None:
    """The site's last automatic switch, or None (none yet, or it cannot be read)."""
    value = get_record(_automatic_variable(site))
    return AutomaticSwitch.model_validate(value) if isinstance(value, dict) else None


def remember_automatic_switch(site: str, master: str, to: str) -> None:
    """Record an automatic switch that completed."""
    run = progress.current_run_id() or ""
    set_record(
        _automatic_variable(site), AutomaticSwitch(at=now(), master=master, to=to, run_id=run)
    )


def last_switch(site: str) -> LastSwitch | None:
    """What the site's last completed switch wrote, or None."""
    value = get_record(_last_variable(site))
    return LastSwitch.model_validate(value) if isinstance(value, dict) else None


def remember_switch(site: str, host: str, address: str, epoch: int) -> None:
    """Record what a completed switch wrote (the drift watch's reference)."""
    run = progress.current_run_id() or ""
    set_record(
        _last_variable(site),
        LastSwitch(at=now(), host=host, address=address, epoch=epoch, run_id=run),
    )
