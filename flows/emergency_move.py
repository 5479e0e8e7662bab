"""Flow `emergency-move`: move every agent of a failed host to its backup now (seed 000).

Running transfers on the failed host are given up (their agent marks them failed when it starts
on the backup; the VO's retry policy retries them); there is no drain. The flow probes the host and
takes the seed's case on its own, saying which and why:

* **A**, the host answers SSH: write the `.disabled` entries, stop its agents, start them on the
  backup.
* **B**, the host answers on the network but SSH does not work (refused, or the login hangs): start
  the agents on the backup (their start blocks on the DB lock still held by the host's sessions),
  kill the host's DB sessions while they wait, then keep trying, with a bound, to stop the host's
  agents cleanly, and say so if it never could.
* **C**, the host does not answer at all: start the agents on the backup; those that do not start
  within the lock wait get case B's DB-session kill and are started again.

The site's policy says whether to run at once or to ask first; an emergency policy may proceed when
nobody answers within the approval timeout. The run has its Slack thread like every procedure.

Afterwards every agent runs on its backup and its channel is Active; the report says what was done
and what a human must still do (`fence-host` when the host comes back).
"""

from __future__ import annotations

import datetime as dt
import getpass
import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.client.schemas.objects import State
from prefect.exceptions import MissingContextError
from prefect.states import Completed, Failed
from pydantic import BaseModel, Field

from config.loader import load_site
from config.site import Site, short_name
from flows import progress
from flows.approval import ApprovalRecord, pre_approved, request_approval
from flows.notify import ProcedureThread
from flows.service_lock import ServiceLockError, service_lock
from tasks import remote
from tasks.agents import clear_disabled, start_agents, stop_agents, write_disabled
from tasks.channels import set_channels
from tasks.db_sessions import drop_sessions
from tasks.outcome import StepFailed, count
from tasks.site_state import HostSnapshot, SiteSnapshot, snapshot_host, snapshot_site
from tasks.ssh import SshError

PROCEDURE = "emergency-move"
Case = Literal["A", "B", "C"]
Reach = Literal["open", "refused", "silent"]


def probe_tcp(address: str, port: int, timeout_s: float) -> Reach:
    """Does the host answer on its SSH port: accepts, refuses (RST), or stays silent?"""
    try:
        with socket.create_connection((address, port), timeout=timeout_s):
            return "open"
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return "silent"


def classify(reach: Reach, ssh_ok: bool) -> tuple[Case, str]:
    """The seed's case from what the probe saw (pure)."""
    if ssh_ok:
        return "A", "the host answers SSH"
    if reach == "refused":
        return "B", "the host answers on the network but refuses SSH (sshd down)"
    if reach == "open":
        return "B", "the host accepts the connection but the SSH login fails or hangs"
    return "C", "the host does not answer on the network (down, or cut off)"


class EmergencyResult(BaseModel):
    """The typed result of an emergency move."""

    procedure: str = PROCEDURE
    site: str
    host: str
    case: Case | None = None
    why: str = ""
    status: Literal["completed", "failed", "refused", "rejected"]
    summary: str
    requested_by: str = ""
    alert_id: str = ""
    flow_run_id: str | None = None
    approval: ApprovalRecord | None = None
    actions: list[str] = Field(default_factory=list)
    agents: dict[str, list[str]] = Field(default_factory=dict)
    channels: dict[str, str] = Field(default_factory=dict)
    transfers_given_up: int | None = None
    sessions_killed: int = 0
    lock_wait_s: float | None = None
    human_actions: list[str] = Field(default_factory=list)
    notifications: str = ""
    started_at: dt.datetime
    ended_at: dt.datetime


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _say(actions: list[str], sentence: str) -> None:
    actions.append(sentence)
    try:
        get_run_logger().info("%s", sentence)
    except MissingContextError:  # a worker thread without the run's context
        logging.getLogger("handover.emergency_move").info("%s", sentence)
    progress.emit("step-sentence", sentence=sentence)


def _start_on_backups(
    site: Site, by_backup: dict[str, list[str]], actions: list[str], errors: dict[str, str]
) -> None:
    def one(item: tuple[str, list[str]]) -> None:
        backup, names = item
        try:
            _say(actions, clear_disabled(site, backup, names).sentence)
            _say(actions, start_agents(site, backup, names).sentence)
        except (StepFailed, SshError) as exc:
            errors[backup] = str(exc)

    with ThreadPoolExecutor(max_workers=max(1, len(by_backup))) as ex:
        list(ex.map(one, by_backup.items()))


@flow(name=PROCEDURE, persist_result=False)
def emergency_move(
    site_file: str,
    host: str,
    requested_by: str = "",
    pause_for_approval: bool | None = None,
    alert_id: str = "",
) -> State[Any]:
    """Move every agent whose primary is `host` to its backup now (see the module docstring).

    Args:
        site_file: the site file.
        host: the failed (or failing) host.
        requested_by: who or what asked (an operator, an alert).
        pause_for_approval: ask a human first (default: the site's policy for emergency-move;
            with an emergency policy, no answer within the timeout means proceed).
        alert_id: the id of the alert event that started the run (set by the deployment's
            trigger; the gateway attaches later alerts for the host to this run).

    Returns:
        A Completed state (completed, rejected) or a Failed one (failed, refused) whose data is
        the `EmergencyResult`.
    """
    started = _now()
    site = load_site(site_file)
    site.host(host)  # an unknown host is refused before anything else
    who = requested_by or getpass.getuser()
    thread = ProcedureThread.for_current_run(
        site, PROCEDURE, f"{host} failed", who, {"host": host, "alert": alert_id}
    )
    actions: list[str] = []
    human: list[str] = []
    res: dict[str, Any] = dict(
        site=site.site,
        host=host,
        started_at=started,
        requested_by=who,
        flow_run_id=thread.run_id,
        alert_id=alert_id,
    )

    def finish(status: str, summary: str, **kw: Any) -> State[Any]:
        result = EmergencyResult(
            **res,
            status=status,
            summary=summary,
            actions=actions,
            human_actions=human,
            ended_at=_now(),
            notifications=thread.n.status(),
            **kw,
        )
        create_markdown_artifact(
            key="emergency-move-report", markdown=report_markdown(result), description=summary
        )
        progress.emit("result", result=result)
        ok = status in ("completed", "rejected")
        return (Completed if ok else Failed)(message=summary, data=result)

    with progress.sink(thread):
        thread.open()
        return _emergency(site, host, who, pause_for_approval, thread, res, actions, human, finish)


class Move(BaseModel):
    """One agent leaving the failed host, and where it goes (its other configured host)."""

    agent: str
    channel: str | None = None
    to: str


def choose_moves(
    site: Site, host: str, host_snap: HostSnapshot | None, others: SiteSnapshot
) -> list[Move]:
    """Which agents leave `host`, and where they go (pure).

    An agent may run on `host` as its primary or as its backup (after an earlier move); it goes
    to its other host. With the host's own snapshot (case A) the agents that run there move.
    Without it (cases B and C) every agent that may run on `host` and does not run on its other
    host moves: it ran, or may have run, on the failed host, and nothing serves it now.
    """
    moves = []
    for a in site.agents_configured_on(host):
        to = a.backup if a.primary == host else a.primary
        if host_snap is not None:
            if not host_snap.runs(a.name):
                continue
        elif to in others.where(a.name):
            continue
        moves.append(Move(agent=a.name, channel=a.channel, to=to))
    return moves


def _emergency(
    site: Site,
    host: str,
    who: str,
    pause: bool | None,
    thread: ProcedureThread,
    res: dict[str, Any],
    actions: list[str],
    human: list[str],
    finish: Callable[..., State[Any]],
) -> State[Any]:
    logger = get_run_logger()
    partners = sorted(
        {a.backup if a.primary == host else a.primary for a in site.agents_configured_on(host)}
    )
    try:
        with service_lock(site.site, site.service.name, PROCEDURE):
            h = site.host(host)
            reach = probe_tcp(h.address, h.port, site.ssh.connect_timeout_s)
            snap: HostSnapshot | None = None
            if reach == "open":
                snap = snapshot_host(site, host)
                if not snap.reachable:
                    snap = None
            case, why = classify(reach, snap is not None)
            others = snapshot_site(site, partners)
            moves = choose_moves(site, host, snap, others)
            transfers = sum(snap.transfers.get(m.channel or "", 0) for m in moves) if snap else None
            res.update(case=case, why=why, transfers_given_up=transfers)
            _say(
                actions,
                f"{host}: case {case}: {why}; "
                + (
                    "moving " + ", ".join(f"{short_name(m.agent)} to {m.to}" for m in moves)
                    if moves
                    else "no agent to move"
                ),
            )
            approval = _approve(site, host, case, why, moves, who, pause, thread)
            res["approval"] = approval
            if not approval.approved:
                return finish("rejected", f"{approval.sentence()}; nothing changed")
            by_target: dict[str, list[str]] = {}
            for m in moves:
                by_target.setdefault(m.to, []).append(m.agent)
            lock_wait: float | None = None
            killed = 0
            errors: dict[str, str] = {}
            names = [m.agent for m in moves]
            if not moves:
                pass
            elif case == "A":
                _say(actions, write_disabled(site, host, names).sentence)
                _say(actions, stop_agents(site, host, names).sentence)
                _start_on_backups(site, by_target, actions, errors)
            elif case == "B":
                # start first, so the agents are already waiting for their locks when the
                # primary's sessions go (seed 000: "with particular emphasis upon the agent that
                # is currently trying to start")
                t0 = time.monotonic()
                ctx_run = _context_runner()
                starter = threading.Thread(
                    target=ctx_run, args=(_start_on_backups, site, by_target, actions, errors)
                )
                starter.start()
                time.sleep(1.0)
                step = drop_sessions(site, host)
                killed = len(step.changed)
                _say(actions, step.sentence)
                starter.join()
                lock_wait = round(time.monotonic() - t0, 2)
                human += _stop_primary_bounded(site, host, names, actions)
            else:
                t0 = time.monotonic()
                _start_on_backups(site, by_target, actions, errors)
                if errors:
                    _say(
                        actions,
                        f"agents did not start within the lock wait on {', '.join(errors)}; "
                        f"killing the DB sessions of {host}",
                    )
                    step = drop_sessions(site, host)
                    killed = len(step.changed)
                    _say(actions, step.sentence)
                    errors.clear()
                    _start_on_backups(site, by_target, actions, errors)
                lock_wait = round(time.monotonic() - t0, 2)
                human.append(
                    f"{host} is down: its .disabled file could not be written, so its agents may "
                    f"try to start when it comes back (they cannot serve: the backups hold the "
                    f"locks). When it is up, run `handover run fence-host --host {host}`"
                )
            chans = [m.channel for m in moves if m.channel]
            if chans:
                try:
                    _say(actions, set_channels(site, moves[0].to, chans, "Active").sentence)
                except (StepFailed, SshError) as exc:
                    human.append(f"set the channels Active: {exc}")
            after = snapshot_site(site, sorted(by_target)) if by_target else None
            where = {
                m.agent: [m.to] if after and after.host(m.to).runs(m.agent) else [] for m in moves
            }
            ok = all(where[m.agent] == [m.to] for m in moves) and not errors
            for b, e in errors.items():
                human.append(f"{b}: {e}")
            summary = (
                f"{host} (case {case}): "
                + (
                    f"{count(sum(1 for v in where.values() if v), 'agent')} of {len(moves)} "
                    "moved off it"
                    if moves
                    else "no agent of it needed moving"
                )
                + (f"; {killed} DB session(s) of {host} killed" if killed else "")
                + (f"; {transfers} running transfer(s) given up" if transfers else "")
                + ("; a human must act" if human else "")
            )
            return finish(
                "completed" if ok else "failed",
                summary,
                agents=where,
                channels={c: after.channels.get(c, "?") for c in chans} if after else {},
                sessions_killed=killed,
                lock_wait_s=lock_wait,
            )
    except ServiceLockError as exc:
        logger.error("%s", exc)
        return finish("refused", str(exc))
    finally:
        remote.close_pools()


def _approve(
    site: Site,
    host: str,
    case: Case,
    why: str,
    moves: list[Move],
    who: str,
    pause: bool | None,
    thread: ProcedureThread,
) -> ApprovalRecord:
    """The site's policy: go at once, or ask (an emergency policy proceeds on timeout)."""
    policy = site.policy(PROCEDURE)
    if not (policy.approval == "required" if pause is None else pause):
        return pre_approved(who, "no approval required" if pause is None else "started with --yes")
    what = f"emergency move of {count(len(moves), 'agent')} off {host} (case {case})"
    shown = ", ".join(f"{short_name(m.agent)} → {m.to}" for m in moves) or "none"
    progress.emit("approval-wait", what=what)
    return request_approval(
        policy,
        what=what,
        poll_interval_s=1.0,
        announce=lambda: thread.request(
            what,
            [
                f"Site *{site.site}*, requested by {who}. Case {case}: {why}.",
                f"*Moves*: {shown}",
                "*Impact*: transfers running on the failed host are marked failed and retried "
                "by the VO's retry policy; the channels stay Active.",
            ],
        ),
        conclude=thread.decided,
    )


def _context_runner() -> Any:
    import contextvars

    ctx = contextvars.copy_context()
    return lambda fn, *args: ctx.run(fn, *args)


def _stop_primary_bounded(
    site: Site, host: str, names: list[str], actions: list[str], bound_s: float = 10.0
) -> list[str]:
    """Case B's last step: stop the host's agents cleanly as soon as SSH lets us, with a bound."""
    deadline = time.monotonic() + bound_s
    last = ""
    while time.monotonic() < deadline:
        try:
            _say(actions, write_disabled(site, host, names).sentence)
            _say(actions, stop_agents(site, host, names).sentence)
            return []
        except (StepFailed, SshError) as exc:
            last = str(exc)
            remote.pool_for(site).drop(host)
            time.sleep(2.0)
    return [
        f"{host}: could not stop its agents within {bound_s:.0f} s ({last}); they keep trying to "
        f"reconnect to the DB and cannot serve (the backups hold the locks). When {host} is "
        f"reachable, run `handover run fence-host --host {host}`"
    ]


def report_markdown(r: EmergencyResult) -> str:
    """The report as markdown (pure)."""
    lines = [f"# Emergency move of {r.host}: {r.status.upper()}", "", r.summary, ""]
    if r.case:
        lines += [f"Case **{r.case}**: {r.why}.", ""]
    if r.human_actions:
        lines += ["## A human must act", ""] + [f"- {h}" for h in r.human_actions] + [""]
    lines += ["## What was done", ""] + [f"1. {a}" for a in r.actions]
    if r.agents:
        lines += ["", "## Agents", ""] + [
            f"- {short_name(a)}: {', '.join(h) or 'nowhere'}" for a, h in r.agents.items()
        ]
    return "\n".join(lines)


@flow(name="fence-host", persist_result=False)
def fence_host(site_file: str, host: str) -> State[Any]:
    """A host that comes back after an emergency move must not run its agents again: list them in
    its `.disabled` file and stop those that run there while their backup runs them too."""
    site = load_site(site_file)
    actions: list[str] = []
    configured = site.agents_configured_on(host)
    try:
        snap = snapshot_host(site, host)
        if not snap.reachable:
            return Failed(
                message=f"{host} is not reachable ({snap.error}); run fence-host again when it is"
            )
        other = {a.name: a.backup if a.primary == host else a.primary for a in configured}
        others = snapshot_site(site, sorted(set(other.values())))
        moved = [n for n, o in other.items() if o in others.where(n)]
        listed: list[str] = []
        if moved:
            step = write_disabled(site, host, moved)
            listed = step.changed
            _say(actions, step.sentence)
        else:
            _say(actions, f"{host}: no agent of it runs on a backup; nothing to fence")
        twice = [n for n in moved if snap.runs(n)]
        if twice:
            _say(actions, stop_agents(site, host, twice).sentence)
        summary = (
            f"{host} fenced: {count(len(moved), 'agent')} served elsewhere are listed in "
            f"{site.commands.disabled_file} ({len(listed)} newly), "
            f"{count(len(twice), 'agent')} stopped there"
            if moved
            else f"{host}: nothing to fence ({len(configured)} agents, none moved)"
        )
        return Completed(message=summary, data={"host": host, "actions": actions})
    finally:
        remote.close_pools()
