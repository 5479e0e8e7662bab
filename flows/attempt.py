"""Whether this process is still the one running its procedure (crash recovery's other half).

`infra/crash_recovery.py` marks a run Crashed when its heartbeats stop and starts the same
procedure again as a new run. Two guards keep that safe:

* `check_current()`, before every step of the executor: a run already marked Crashed (its process
  was only frozen, then thawed) raises `Superseded`; the executor stops without compensating, so
  the process that lost its run never touches the site again while the new run works on it.
* `check_not_crash_looping()`, when a procedure starts: a run that the recovery automation
  started refuses to start when the same deployment with the same parameters crashed
  `MAX_CRASHES` times within `CRASH_WINDOW_S`.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from typing import Any

#: the recovery automation's name (what `created_by` of the runs it starts says)
RESUME_NAME = "handover: a crashed procedure's run -> the same procedure again"
#: crashes of one procedure with the same parameters after which the automation's run refuses
MAX_CRASHES = 3
CRASH_WINDOW_S = 3600

#: a run's state is read before a step at most this often (a crash mark comes after 50 s of
#: silence: a few seconds more before the zombie stops change nothing, an API call per step does)
CHECK_EVERY_S = 5.0

_log = logging.getLogger(__name__)
_checked: dict[Any, float] = {}
_checked_lock = threading.Lock()


class Superseded(BaseException):
    """This run was marked Crashed (its heartbeats stopped) and the procedure started again as
    another run; this process must not change the site any more. A BaseException: it is no
    ordinary step failure, so nothing compensates for it."""


class CrashLoop(RuntimeError):
    """The procedure crashed too often with these parameters to be started again automatically."""


def _current_run() -> Any:
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return ctx.flow_run if ctx is not None else None


def check_current() -> None:
    """Raise `Superseded` when this process's flow run is no longer running (marked Crashed);
    the state is read at most every `CHECK_EVERY_S` seconds per run.

    Outside a flow run, or when the API does not answer, nothing is raised: an unreachable API
    must not stop a procedure in the middle.
    """
    run = _current_run()
    if run is None:
        return
    now = time.monotonic()
    with _checked_lock:
        if now - _checked.get(run.id, -CHECK_EVERY_S) < CHECK_EVERY_S:
            return
        _checked[run.id] = now
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(run.id).state
    except Exception as exc:  # noqa: BLE001 - see the docstring
        _log.warning("could not read this run's state before a step (%s); going on", exc)
        return
    if state is not None and state.is_crashed():
        raise Superseded(
            f"this run ({run.name}) was marked Crashed ({state.message or 'no message'}) and "
            "its procedure started again as another run: this process stops here and leaves "
            "the site to that run"
        )


def check_not_crash_looping() -> None:
    """Refuse to start a run of the recovery automation when its procedure, with the same
    parameters, crashed `MAX_CRASHES` times in the last `CRASH_WINDOW_S` seconds.

    Raises:
        CrashLoop: the message says how often and what to look at.
    """
    run = _current_run()
    if run is None or run.created_by is None or run.deployment_id is None:
        return
    if str(run.created_by.type).upper() != "AUTOMATION":
        return
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterStartTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=CRASH_WINDOW_S)
    with get_client(sync_client=True) as client:
        crashed = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.CRASHED])),
                start_time=FlowRunFilterStartTime(after_=since),
            ),
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[run.deployment_id])),
        )
    reason = crash_loop(run.id, run.parameters, [(r.id, r.name, r.parameters) for r in crashed])
    if reason:
        raise CrashLoop(reason)


def crash_loop(
    run_id: Any, parameters: dict[str, Any], crashed: list[tuple[Any, str, dict[str, Any]]]
) -> str | None:
    """Why a run of the recovery automation must not start (pure): the runs of its deployment
    that crashed in the window (id, name, parameters) include `MAX_CRASHES` with its parameters.
    """
    same = [name for rid, name, params in crashed if params == parameters and rid != run_id]
    if len(same) < MAX_CRASHES:
        return None
    return (
        f"not started again: this procedure crashed {len(same)} times with these parameters "
        f"in the last {CRASH_WINDOW_S // 60} min ({', '.join(same[:MAX_CRASHES])}); look at "
        "those runs' logs, then start it by hand"
    )
