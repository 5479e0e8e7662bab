"""Progress events of a running procedure, for whoever watches it in this process.

A procedure calls `emit(kind, **data)` at each milestone. The events always go to the run's log;
`handover run` also registers a sink that draws them in the terminal, and tests register sinks to
act at a precise moment of a procedure (e.g. inject a fault right after the agents have stopped).
Sinks must be quick and must not raise; a failing sink is dropped from that event, never the run.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

Sink = Callable[[str, dict[str, Any]], None]

_sinks: list[Sink] = []
_lock = threading.Lock()


def add_sink(sink: Sink) -> None:
    """Register a sink for every event emitted in this process."""
    with _lock:
        _sinks.append(sink)


def remove_sink(sink: Sink) -> None:
    """Unregister a sink (no error if it was not registered)."""
    with _lock, contextlib.suppress(ValueError):
        _sinks.remove(sink)


@contextlib.contextmanager
def sink(fn: Sink) -> Iterator[None]:
    """Register `fn` for the duration of a block."""
    add_sink(fn)
    try:
        yield
    finally:
        remove_sink(fn)


def current_run_id() -> str | None:
    """The id of the flow run this code runs in (None outside a flow run)."""
    try:
        from prefect.context import FlowRunContext

        ctx = FlowRunContext.get()
    except ImportError:  # pragma: no cover - prefect is a dependency
        return None
    return str(ctx.flow_run.id) if ctx and ctx.flow_run else None


def created_through_the_api() -> bool:
    """Whether the current flow run was created from a deployment (the UI, the API, a trigger)
    rather than called in-process (`handover run` at the site's terminal, a test)."""
    try:
        from prefect.context import FlowRunContext

        ctx = FlowRunContext.get()
    except ImportError:  # pragma: no cover - prefect is a dependency
        return False
    return bool(ctx and ctx.flow_run and ctx.flow_run.deployment_id)


def emit(kind: str, **data: Any) -> None:
    """Send an event to every sink; `run_id` (the current flow run's) is added to the data."""
    data.setdefault("run_id", current_run_id())
    with _lock:
        sinks = list(_sinks)
    for s in sinks:
        with contextlib.suppress(Exception):
            s(kind, data)
