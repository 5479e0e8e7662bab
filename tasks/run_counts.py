"""The procedures' runs as Prefect has them: how many, in which state, and how many wait for a
human (Paused: an approval). What `handover exporter` publishes as handover's own metrics."""

from __future__ import annotations

import datetime as dt
from collections import Counter

from pydantic import BaseModel, Field

#: the flows that are handover's procedures (their run names are the flows' names)
PROCEDURES = (
    "clean-move",
    "emergency-move",
    "switch",
    "rolling-upgrade",
    "fence-host",
    "drop-db-lock",
    "site-snapshot",
    "drift-watch",
    "window-notice",
)


class RunCounts(BaseModel):
    """Runs expected to start in the last `window_s` seconds, by procedure and state name."""

    window_s: float
    runs: dict[str, dict[str, int]] = Field(default_factory=dict)
    #: runs paused for a decision, by procedure (whenever they started)
    waiting: dict[str, int] = Field(default_factory=dict)
    #: per work pool of the procedures' deployments, its workers that are online (a site
    #: served by `handover serve` has no pool, so none)
    workers: dict[str, int] = Field(default_factory=dict)


#: the Prefect API's largest page of runs
PAGE = 200


def read_run_counts(window_s: float = 86400.0, limit: int = 1000) -> RunCounts:
    """Ask the Prefect API (the process's `PREFECT_API_URL`) once (at most `limit` runs of
    each kind, read in pages).

    Raises:
        Exception: whatever the Prefect client raises when the API does not answer.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import FlowRun, StateType

    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=window_s)
    ours = FlowFilter(name=FlowFilterName(any_=list(PROCEDURES)))
    with get_client(sync_client=True) as client:
        flows = {f.id: f.name for f in client.read_flows(flow_filter=ours, limit=PAGE)}

        def runs(which: FlowRunFilter) -> list[FlowRun]:
            out: list[FlowRun] = []
            while len(out) < limit:
                page = client.read_flow_runs(
                    flow_filter=ours, flow_run_filter=which, limit=PAGE, offset=len(out)
                )
                out += page
                if len(page) < PAGE:
                    break
            return out

        recent = runs(
            FlowRunFilter(expected_start_time=FlowRunFilterExpectedStartTime(after_=since))
        )
        paused = runs(
            FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
            )
        )
        pools = {
            d.work_pool_name
            for d in client.read_deployments(flow_filter=ours, limit=PAGE)
            if d.work_pool_name
        }
        workers = {
            pool: sum(
                1
                for w in client.read_workers_for_work_pool(pool)
                if str(w.status).upper().endswith("ONLINE")
            )
            for pool in sorted(pools)
        }
    by: dict[str, Counter[str]] = {}
    for r in recent:
        name = flows.get(r.flow_id, "unknown")
        by.setdefault(name, Counter())[(r.state.name if r.state else None) or "Unknown"] += 1
    waiting: Counter[str] = Counter(flows.get(r.flow_id, "unknown") for r in paused)
    return RunCounts(
        window_s=window_s,
        runs={p: dict(c) for p, c in sorted(by.items())},
        waiting=dict(waiting),
        workers=workers,
    )
