"""Hot standby: an agent's start launched on the target before its stop on the source.

An agent's start blocks on the DB lock while another session holds it, and takes it
the moment that session lets go. `start_standby` launches the profile's ``start_agent`` on the
target without waiting for it (the command runs on, in a thread, holding its SSH channel, until
the agent serves or gives up at its lock wait); `await_serving`, after the source's agent was
stopped, collects that start's word and, for an agent whose standby gave up (or was never
launched by this process: a re-run), starts it again the plain way, now that the lock is free.
Both verify against the host like every verb. Two agents never serve together: only the DB
lock's holder serves, and the standby waits for it.
"""

from __future__ import annotations

import shlex
import threading
import time
from concurrent.futures import Future

from flows.plans.words import count
from tasks.adapters.ssh import CommandResult
from tasks.agents import (
    START_TIMEOUT_S,
    _read,
    _tail,
    read_status,
    start_agents,
    startable,
    stop_agents,
)
from tasks.outcome import StepFailed, StepResult, listing, now, was
from tasks.remote import SiteShell

#: how long a launched start may take to show its agent's process
LAUNCH_TIMEOUT_S = 30.0

#: each launched start not yet collected: its outcome, and when it was launched (monotonic)
_pending: dict[tuple[int, str, str], tuple[Future[CommandResult], float]] = {}
_guard = threading.Lock()


def _key(shell: SiteShell, host: str, agent: str) -> tuple[int, str, str]:
    return (id(shell), host, agent)


def _launch(shell: SiteShell, host: str, agent: str) -> None:
    fut: Future[CommandResult] = Future()

    def run() -> None:
        try:
            fut.set_result(shell.run(host, "start_agent", agent=agent, timeout=START_TIMEOUT_S))
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting step
            fut.set_exception(exc)

    with _guard:
        _pending[_key(shell, host, agent)] = (fut, time.monotonic())
    threading.Thread(target=run, name=f"standby-{agent}", daemon=True).start()


def _stale(shell: SiteShell, host: str, agents: list[str], max_wait_s: float) -> list[str]:
    """The agents whose standby, launched by this run, has waited longer than `max_wait_s` and
    still waits (it would give up at its lock wait before the source lets go)."""
    out = []
    with _guard:
        for a in agents:
            fut, began = _pending.get(_key(shell, host, a), (None, 0.0))
            if fut is not None and not fut.done() and time.monotonic() - began > max_wait_s:
                out.append(a)
    return out


def start_standby(
    shell: SiteShell, host: str, agents: list[str], max_wait_s: float = 0.0
) -> StepResult:
    """Launch each agent's start on `host` without waiting for it to serve.

    Pre-condition: the agents are configured on the host and not listed in its `.disabled`
    file. An agent already running there is left alone (a standby launched before, or the
    agent itself), unless `max_wait_s` is set and its standby, launched by this run, has waited
    longer than that: it is stopped and launched again, so that its lock wait starts afresh.
    Post-condition: each agent's start runs, or the agent runs.
    """
    verb = "start-standby"
    started = now()
    snap = startable(shell, host, agents, verb)
    site = shell.site
    stale = _stale(shell, host, agents, max_wait_s) if max_wait_s > 0 else []
    if stale:
        # it waits for the lock the source still holds: stopping it changes nothing served
        stop_agents(shell, host, stale)
        with _guard:
            for a in stale:
                _pending.pop(_key(shell, host, a), None)
        snap = _read(shell, host, verb)
    launch = [a for a in agents if not snap.runs(a)]
    already = [a for a in agents if a not in launch]
    for a in launch:
        _launch(shell, host, a)
    _until_running(shell, host, launch)
    return StepResult(
        host=host,
        verb=verb,
        changed=launch,
        unchanged=already,
        sentence=(
            f"{host}: launched the start of {count(len(launch), 'agent')}{listing(launch)} "
            f"(each waits for its DB lock), {len(already)} {was(len(already))} already running"
            + (
                f"; {len(stale)} launched again, {listing(stale).strip(' ()')}, after waiting "
                f"over {max_wait_s:g} s"
                if stale
                else ""
            )
        ),
        commands=[shlex.join(site.commands.argv("start_agent", agent=a)) for a in launch],
        started_at=started,
        ended_at=now(),
    )


def _until_running(shell: SiteShell, host: str, agents: list[str]) -> None:
    """Wait until each launched agent's process runs on the host (so that a stop sent after
    this cannot miss it), or fail with its start's own words when it ended first."""
    verb = "start-standby"
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    left = list(agents)
    while left:
        snap = _read(shell, host, verb)
        for a in list(left):
            with _guard:
                fut, _ = _pending.get(_key(shell, host, a), (None, 0.0))
            if snap.runs(a):
                left.remove(a)
            elif fut is not None and fut.done():
                exc = fut.exception()
                res = None if exc is not None else fut.result()
                if res is not None and res.ok:  # it took the lock at once and serves
                    left.remove(a)
                    continue
                with _guard:
                    _pending.pop(_key(shell, host, a), None)
                why = f"exited {res.exit_code}: {_tail(res)}" if res is not None else str(exc)
                raise StepFailed(f"{host}: the start of {a} failed: {why}", host=host, verb=verb)
        if left and time.monotonic() >= deadline:
            raise StepFailed(
                f"{host}: no process of {', '.join(left)} within {LAUNCH_TIMEOUT_S:g} s of its "
                "start; see the agents' log there",
                host=host,
                verb=verb,
            )
        if left:
            time.sleep(0.1)


def await_serving(shell: SiteShell, host: str, agents: list[str]) -> StepResult:
    """Wait for each agent's standby to serve on `host`; start again those whose standby gave
    up (or that this process never launched).

    An agent that already ran on `host` (a copy started by the host's boot, or by an earlier
    run) is waited for until it serves; a copy that only waits for a lock a stale session holds
    gives up at its lock wait, and the step fails so that its fallback kills that session.

    Pre-condition: the agents no longer run on the source (their lock is free or being
    released). Post-condition: each agent serves on `host`.
    """
    verb = "await-serving"
    started = now()
    served: list[str] = []
    gave_up: dict[str, str] = {}
    for a in agents:
        with _guard:
            fut, _ = _pending.pop(_key(shell, host, a), (None, 0.0))
        if fut is None:
            gave_up[a] = "no standby launched by this run"
            continue
        try:
            res = fut.result(timeout=START_TIMEOUT_S + 30)
        except Exception as exc:  # noqa: BLE001 - the plain start below decides
            gave_up[a] = f"its start failed: {exc}"
            continue
        if res.ok:
            served.append(a)
        else:
            gave_up[a] = f"`{res.command}` exited {res.exit_code}: {_tail(res)}"
    again: StepResult | None = None
    waited: dict[str, str] = {}
    ran: list[str] = []
    if gave_up:
        # the source's agent is stopped: the lock is free, a plain start takes it at once
        again = start_agents(shell, host, list(gave_up))
        # a copy that ran already (started by the host's boot, or by an earlier run) is left
        # alone by that start, and may only wait for a lock a stale session holds
        ran = [a for a in again.unchanged if a in gave_up]
        waited = _until_serving(shell, host, ran)
    after = _read(shell, host, verb)
    missing = [a for a in agents if not after.runs(a) or a in waited]
    if missing:
        raise StepFailed(
            f"{host}: {', '.join(missing)} not serving after its start; "
            + "; ".join(
                f"{a}: "
                + (
                    f"it runs but is {waited[a]} after {START_TIMEOUT_S:g} s"
                    if a in waited
                    else "the copy already running there waited for its DB lock and gave up"
                    if a in ran
                    else gave_up.get(a, "its standby reported serving")
                )
                for a in missing
            ),
            host=host,
            verb=verb,
        )
    sentence = f"{host}: {count(len(served), 'standby')}{listing(served)} took the DB lock"
    restarted = {a: why for a, why in gave_up.items() if a not in ran}
    if restarted:
        sentence += (
            f"; {len(restarted)} started again ("
            + "; ".join(f"{a}: {why}" for a, why in restarted.items())[:400]
            + ")"
        )
    if ran:
        sentence += f"; {len(ran)} already running there, now serving{listing(ran)}"
    return StepResult(
        host=host,
        verb=verb,
        changed=agents,
        unchanged=[],
        sentence=sentence,
        commands=again.commands if again else [],
        started_at=started,
        ended_at=now(),
    )


def _until_serving(shell: SiteShell, host: str, agents: list[str]) -> dict[str, str]:
    """Wait until each of `agents` that runs on the host serves, or runs no more (a copy that
    waited for its DB lock in vain gives up at its lock wait); those still running without
    serving after `START_TIMEOUT_S`, with the state their status gives."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while agents:
        statuses, _ = read_status(shell, host)
        by_name = {s.agent: s for s in statuses}
        snap = _read(shell, host, "await-serving")
        waiting = {
            a: by_name[a].state
            for a in agents
            if snap.runs(a) and a in by_name and not by_name[a].serving
        }
        if not waiting or time.monotonic() >= deadline:
            return waiting
        time.sleep(0.25)
    return {}


def forget(shell: SiteShell) -> None:
    """Drop the standbys this shell launched (the run ends; their threads end with their
    commands)."""
    with _guard:
        for k in [k for k in _pending if k[0] == id(shell)]:
            del _pending[k]
