"""Flow `clean-move`: move agents from one host to another without losing a job (seed 000).

Snapshot -> pure plan (`flows.clean_move_plan`) -> approval -> act -> verify -> report.

* Pre-checks (in the plan): both hosts reachable, the agents configured on the target and running
  on the source, none already running on the target; and no other procedure for the service
  (`service_lock`). A failed pre-check changes nothing and says why.
* Modes: ``full`` and ``staged`` are seed 000's procedures; ``pipelined`` moves each agent as soon
  as its own channel has drained.
* Compensation: a channel the flow set Inactive whose agent still runs on the source is set Active
  again (drain timeout, failure, cancellation); an agent stopped on the source is started on the
  target, and if the target cannot start it, back on the source. Whatever cannot be repaired is
  in the report with the exact commands to run.
* A re-run converges: the plan is derived from a fresh snapshot and every verb is idempotent.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import getpass
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.states import Completed, Failed
from pydantic import BaseModel, Field

from config.loader import load_site
from config.site import ProcedurePolicy, Site, short_name
from flows import progress
from flows.approval import ApprovalRecord, pre_approved, request_approval
from flows.clean_move_plan import (
    AgentMove,
    Chain,
    Mode,
    MovePlan,
    MoveRequest,
    PlannedStep,
    plan_clean_move,
    plan_markdown,
)
from flows.notify import ProcedureThread
from flows.service_lock import ServiceLockError, service_lock
from tasks import remote
from tasks.agents import (
    clear_disabled,
    clear_disabled_task,
    start_agents,
    start_agents_task,
    stop_agents_task,
    write_disabled_task,
)
from tasks.channels import set_channels, set_channels_task
from tasks.drain import Cancelled, DrainMonitor, DrainTimeout
from tasks.outcome import StepResult, count
from tasks.site_state import SiteSnapshot, snapshot_site, snapshot_site_task
from tasks.ssh import shell_command

PROCEDURE = "clean-move"
Finish = Callable[..., State[Any]]
Status = Literal["completed", "partial", "failed", "refused", "rejected", "dry-run", "cancelled"]


class StepRecord(BaseModel):
    """One executed step: its outcome sentence and its times."""

    step: str
    verb: str
    host: str
    agents: list[str] = Field(default_factory=list)
    channels: list[str] = Field(default_factory=list)
    outcome: Literal["done", "failed", "compensation", "forced"]
    sentence: str
    commands: list[str] = Field(default_factory=list)
    started_at: dt.datetime
    ended_at: dt.datetime
    #: time spent in the remote commands (or the necessary wait) of the step itself, without
    #: the orchestration around it
    remote_s: float = 0.0


class Timing(BaseModel):
    """Where the time went: the flow against the remote work it could not avoid."""

    flow_wall_s: float
    act_wall_s: float
    critical_path_s: float
    snapshots_s: float
    human_wait_s: float = 0.0

    @property
    def overhead_ratio(self) -> float:
        """Flow wall time (less any wait for a human) over remote commands + necessary waits
        (1.0 = no overhead)."""
        need = self.critical_path_s + self.snapshots_s
        return round((self.flow_wall_s - self.human_wait_s) / need, 3) if need > 0 else 0.0


class AgentOutcome(BaseModel):
    """Where an agent ended, and how."""

    agent: str
    channel: str | None
    result: Literal["moved", "finished", "left-on-source", "rolled-back", "stranded"]
    running_on: list[str]
    note: str = ""


class CleanMoveResult(BaseModel):
    """The typed result of a clean move (also rendered as the run's markdown report)."""

    procedure: str = PROCEDURE
    site: str
    from_host: str
    to_host: str
    mode: Mode
    dry_run: bool
    forced: bool
    status: Status
    summary: str
    plan: MovePlan | None = None
    approval: ApprovalRecord | None = None
    steps: list[StepRecord] = Field(default_factory=list)
    agents: list[AgentOutcome] = Field(default_factory=list)
    downtime_s: dict[str, float] = Field(default_factory=dict)
    downtime_total_s: float = 0.0
    downtime_max_s: float = 0.0
    jobs_lost: int = 0
    channels: dict[str, str] = Field(default_factory=dict)
    where: dict[str, list[str]] = Field(default_factory=dict)
    human_actions: list[str] = Field(default_factory=list)
    notifications: str = ""
    timing: Timing | None = None
    started_at: dt.datetime
    ended_at: dt.datetime
    flow_run_id: str | None = None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --- tasks that only exist in this flow ---------------------------------------------------------


def _wait_drained(
    monitor: DrainMonitor, host: str, channels: list[str], since: float, timeout_s: float
) -> tuple[str, float]:
    started = time.monotonic()
    monitor.wait(channels, since, timeout_s)
    waited = time.monotonic() - started
    return f"{host}: {', '.join(channels)} drained after {waited:.1f} s", waited


wait_drained_task = task(  # type: ignore[call-overload]
    _wait_drained,
    name="wait-drained",
    task_run_name="wait-drained-{host}",
    cache_policy=NO_CACHE,
)


# --- the executor -------------------------------------------------------------------------------


class MoveRun:
    """The mutable state of one clean move while it acts (shared by its chains)."""

    def __init__(self, site: Site, plan: MovePlan, poll_s: float) -> None:
        self.site = site
        self.plan = plan
        self.poll_s = poll_s
        self.src, self.dst = plan.from_host, plan.to_host
        self.lock = threading.Lock()
        self.records: list[StepRecord] = []
        self.inactive_at: dict[str, dt.datetime] = {}
        self.inactive_mono: dict[str, float] = {}
        self.active_at: dict[str, dt.datetime] = {}
        self.stopped: set[str] = set()
        self.started: set[str] = set()
        self.outcomes: dict[str, AgentOutcome] = {}
        self.human: list[str] = []
        self.jobs_lost = 0
        self.forced = False
        self.cancel = threading.Event()
        self.steps_total = max(1, len(plan.steps))
        self.steps_done = 0
        self.progress_id: Any = None
        drain_channels = [m.channel for m in plan.agents if m.channel and m.action == "move"]
        self.monitor = DrainMonitor(
            site, self.src, drain_channels, poll_s, self.cancel, on_poll=self._on_poll
        )
        self._last_table: dict[str, int] | None = None
        self._last_table_at = 0.0

    # --- bookkeeping ---------------------------------------------------------------------------

    def _record(
        self,
        step: PlannedStep | None,
        outcome: str,
        sentence: str,
        started: dt.datetime,
        *,
        verb: str = "",
        host: str = "",
        agents: list[str] | None = None,
        channels: list[str] | None = None,
        commands: list[str] | None = None,
        remote_s: float = 0.0,
    ) -> None:
        rec = StepRecord(
            step=step.id if step else f"compensation/{verb}",
            verb=step.verb if step else verb,
            host=step.host if step else host,
            agents=step.agents if step else (agents or []),
            channels=step.channels if step else (channels or []),
            outcome=outcome,
            sentence=sentence,
            commands=commands or [],
            started_at=started,
            ended_at=_now(),
            remote_s=round(remote_s, 3),
        )
        with self.lock:
            self.records.append(rec)
            if step is not None and outcome in ("done", "forced"):
                self.steps_done += 1
        get_run_logger().info("%s", sentence)
        progress.emit("step", record=rec, done=self.steps_done, total=self.steps_total)
        if self.progress_id is not None and step is not None:
            try:
                update_progress_artifact(
                    self.progress_id, 100.0 * self.steps_done / self.steps_total
                )
            except Exception:  # noqa: BLE001, S110 - progress display must not fail a move
                pass

    def _on_poll(self, running: dict[str, int]) -> None:
        progress.emit("drain", host=self.src, running=running)
        # the table artifact is a call to the API: at most one a second, and only on change
        if running == self._last_table or time.monotonic() - self._last_table_at < 1.0:
            return
        self._last_table = running
        self._last_table_at = time.monotonic()
        rows = [
            {
                "channel": c,
                "running transfers": n,
                "state": "moved"
                if c in self.active_at
                else ("draining" if c in self.inactive_at else "waiting"),
            }
            for c, n in running.items()
        ]
        create_table_artifact(
            key="clean-move-drain",
            table=rows,
            description=f"Running transfers per channel on {self.src}",
        )

    def _done(self, step: PlannedStep, res: StepResult) -> None:
        self._record(
            step,
            "done",
            res.sentence,
            res.started_at,
            commands=res.commands,
            remote_s=(res.ended_at - res.started_at).total_seconds(),
        )

    def critical_path_s(self) -> float:
        """The remote work the plan could not avoid: phases in sequence, the slowest chain of
        each phase, the steps of a chain in sequence."""
        by_step = {r.step: r.remote_s for r in self.records if r.outcome in ("done", "forced")}
        return round(
            sum(
                max((sum(by_step.get(st.id, 0.0) for st in c.steps) for c in p.chains), default=0.0)
                for p in self.plan.phases
            ),
            3,
        )

    # --- steps ---------------------------------------------------------------------------------

    def run_step(self, step: PlannedStep) -> None:
        if self.cancel.is_set():
            raise Cancelled("the move was cancelled")
        progress.emit("step-start", step=step)
        started = _now()
        site = self.site
        if step.verb == "set-inactive":
            res = set_channels_task(site, step.host, step.channels, "Inactive")
            with self.lock:
                for c in step.channels:
                    self.inactive_at[c] = res.ended_at
                    self.inactive_mono[c] = time.monotonic()
            self._done(step, res)
        elif step.verb == "wait-drained":
            since = max(self.inactive_mono[c] for c in step.channels)
            try:
                sentence, waited = wait_drained_task(
                    self.monitor, step.host, step.channels, since, self.plan.drain_timeout_s
                )
                self._record(step, "done", sentence, started, remote_s=waited)
            except DrainTimeout as exc:
                if not self.plan.force:
                    raise
                lost = sum(max(0, n) for n in exc.running.values())
                with self.lock:
                    self.jobs_lost += lost
                    self.forced = True
                self._record(
                    step,
                    "forced",
                    f"{step.host}: FORCED after "
                    f"{exc.timeout_s:.0f} s: {count(lost, 'running transfer')} of "
                    f"{', '.join(step.channels)} will lose their state",
                    started,
                    remote_s=exc.timeout_s,
                )
        elif step.verb == "write-disabled":
            self._done(step, write_disabled_task(site, step.host, step.agents))
        elif step.verb == "stop":
            res = stop_agents_task(site, step.host, None if step.all_agents else step.agents)
            with self.lock:
                self.stopped |= set(step.agents)
            self._done(step, res)
        elif step.verb == "clear-disabled":
            self._done(step, clear_disabled_task(site, step.host, step.agents))
        elif step.verb == "start":
            res = start_agents_task(site, step.host, step.agents)
            with self.lock:
                self.started |= set(step.agents)
            self._done(step, res)
        else:
            res = set_channels_task(site, step.host, step.channels, "Active")
            with self.lock:
                for c in step.channels:
                    self.active_at[c] = res.ended_at
            self._done(step, res)

    def run_chain(self, chain: Chain) -> None:
        """Run a chain's steps in order; on any error, compensate for its agents, then re-raise
        what is not an ordinary error (interrupts, cancellation signals)."""
        try:
            for step in chain.steps:
                self.run_step(step)
        except BaseException as exc:
            get_run_logger().exception("%s failed", chain.name)
            self._record(
                None, "failed", f"{chain.name}: {exc}", _now(), verb="error", host=self.src
            )
            self.compensate(self._moves_of(chain), exc)
            if not isinstance(exc, Exception):
                raise

    def _moves_of(self, chain: Chain) -> list[AgentMove]:
        names = {a for s in chain.steps for a in s.agents}
        chans = {c for s in chain.steps for c in s.channels}
        return [m for m in self.plan.agents if m.agent in names or (m.channel in chans)]

    # --- compensation --------------------------------------------------------------------------

    def _try(self, what: str, fn: Any, *args: Any) -> StepResult | None:
        started = _now()
        try:
            res: StepResult = fn(*args)
        except Exception as exc:  # noqa: BLE001 - compensation records and goes on
            self._record(
                None,
                "failed",
                f"compensation failed: {what}: {exc}",
                started,
                verb=what,
                host=str(args[1]),
            )
            return None
        self._record(
            None,
            "compensation",
            res.sentence,
            started,
            verb=what,
            host=res.host,
            commands=res.commands,
        )
        return res

    def compensate(self, moves: list[AgentMove], exc: BaseException) -> None:
        """Leave each agent of a failed chain running once, with its channel Active."""
        site, src, dst = self.site, self.src, self.dst
        reason = type(exc).__name__
        for m in moves:
            a, ch = m.agent, m.channel
            with self.lock:
                # an agent the plan only had to finish already runs on the target
                started_on_target = a in self.started or m.action == "finish"
                stopped = a in self.stopped or m.action == "start"
                inactive = ch is not None and ch in self.inactive_at and ch not in self.active_at
            if started_on_target:
                if ch and ch not in self.active_at:
                    ok = self._try("set-active", set_channels, site, dst, [ch], "Active")
                    if ok is None:
                        ok = self._try("set-active", set_channels, site, src, [ch], "Active")
                    if ok is None:
                        self._human_channel(ch)
                    else:
                        with self.lock:
                            self.active_at[ch] = _now()
                self.outcomes[a] = AgentOutcome(
                    agent=a, channel=ch, result="moved", running_on=[dst], note=f"after {reason}"
                )
            elif stopped:
                # the target could not take it: start it back where it came from
                ok = self._try("clear-disabled", clear_disabled, site, src, [a]) and self._try(
                    "start", start_agents, site, src, [a]
                )
                if ok and ch:
                    if self._try("set-active", set_channels, site, src, [ch], "Active") is None:
                        self._human_channel(ch)
                    else:
                        with self.lock:
                            self.active_at[ch] = _now()
                if ok:
                    self.outcomes[a] = AgentOutcome(
                        agent=a,
                        channel=ch,
                        result="rolled-back",
                        running_on=[src],
                        note=f"{dst} could not start it ({reason}); started again on {src}",
                    )
                else:
                    self.outcomes[a] = AgentOutcome(
                        agent=a,
                        channel=ch,
                        result="stranded",
                        running_on=[],
                        note=f"runs nowhere after {reason}",
                    )
                    self._human_agent(a, ch)
            else:
                if inactive and ch:
                    if self._try("set-active", set_channels, site, src, [ch], "Active") is None:
                        self._human_channel(ch)
                    else:
                        with self.lock:
                            self.active_at[ch] = _now()
                self._try("clear-disabled", clear_disabled, site, src, [a])
                self.outcomes[a] = AgentOutcome(
                    agent=a,
                    channel=ch,
                    result="left-on-source",
                    running_on=[src],
                    note=str(exc)[:300],
                )

    def _human_channel(self, ch: str) -> None:
        cmd = shell_command(
            self.site.commands.argv("set_channel_state", channel=ch, state="Active")
        )
        self.human.append(
            f"channel {ch} may still be Inactive: on {self.dst} or {self.src} run `{cmd}`"
        )

    def _human_agent(self, a: str, ch: str | None) -> None:
        start = shell_command(self.site.commands.argv("start_agent", agent=a))
        msg = (
            f"{a} runs nowhere: on {self.dst} (or {self.src}) remove it from "
            f"{self.site.commands.disabled_file} and run `{start}`"
        )
        if ch:
            msg += (
                "; then `"
                + shell_command(
                    self.site.commands.argv("set_channel_state", channel=ch, state="Active")
                )
                + "`"
            )
        self.human.append(msg)

    # --- the whole act phase -------------------------------------------------------------------

    def execute(self) -> None:
        """Run every phase; chains of a phase run concurrently as Prefect tasks."""
        self.progress_id = create_progress_artifact(
            0.0,
            key="clean-move-progress",
            description=f"clean move {self.src} -> {self.dst} ({self.plan.mode})",
        )
        if self.monitor.channels:
            ctx = contextvars.copy_context()
            self.monitor.start(lambda f: threading.Thread(target=ctx.run, args=(f,), daemon=True))
        try:
            for phase in self.plan.phases:
                progress.emit("phase", name=phase.name)
                if len(phase.chains) == 1:
                    self.run_chain(phase.chains[0])
                    continue
                futures = [move_chain_task.submit(self, c, c.name) for c in phase.chains]
                try:
                    for f in futures:
                        f.wait()
                except BaseException:
                    self.cancel.set()
                    for f in futures:
                        f.wait(timeout=300)
                    raise
                for f in futures:
                    f.result(raise_on_failure=False)
                if self.cancel.is_set():
                    break
        except BaseException:
            self.cancel.set()
            raise
        finally:
            self.monitor.stop()


def _run_chain(run: MoveRun, chain: Chain, chain_name: str) -> None:
    run.run_chain(chain)


move_chain_task = task(  # type: ignore[call-overload]
    _run_chain,
    name="move-chain",
    task_run_name="move-{chain_name}",
    cache_policy=NO_CACHE,
)


# --- verify and report --------------------------------------------------------------------------


def _why(exc: BaseException) -> str:
    """Why a move stopped, in words (``terminated by SIGTERM``, ``interrupted``, ...)."""
    sig = getattr(exc, "signal", None)
    if isinstance(sig, int):
        return f"terminated by {signal.Signals(sig).name}"
    if isinstance(exc, KeyboardInterrupt):
        return f"interrupted{': ' + str(exc) if str(exc) else ''}"
    return f"{type(exc).__name__}: {exc}"


def _downtime(run: MoveRun) -> dict[str, float]:
    out = {}
    for ch, t0 in run.inactive_at.items():
        t1 = run.active_at.get(ch)
        if t1 is not None:
            out[ch] = round((t1 - t0).total_seconds(), 2)
    return out


def _finalise(run: MoveRun, snap: SiteSnapshot) -> tuple[Status, list[AgentOutcome]]:
    outcomes = []
    status: Status = "completed"
    for m in run.plan.agents:
        where = snap.where(m.agent)
        o = run.outcomes.get(m.agent)
        if o is None:
            result = "finished" if m.action == "finish" else "moved"
            o = AgentOutcome(
                agent=m.agent,
                channel=m.channel,
                result=result,
                running_on=where,
            )
        o = o.model_copy(update={"running_on": where})
        outcomes.append(o)
        if len(where) != 1 or (m.channel and snap.channels.get(m.channel) != "Active"):
            status = "failed"
            if len(where) > 1:
                stop = shell_command(run.site.commands.argv("stop_agent", agent=m.agent))
                run.human.append(
                    f"{m.agent} runs on {' and '.join(where)}: on {run.src} run `{stop}`"
                )
            if m.channel and snap.channels.get(m.channel) != "Active":
                run._human_channel(m.channel)
        elif o.result in ("left-on-source", "rolled-back") and status == "completed":
            status = "partial"
        elif o.result == "stranded":
            status = "failed"
    return status, outcomes


def report_markdown(r: CleanMoveResult) -> str:
    """The final report as markdown (pure)."""
    lines = [f"# Clean move {r.from_host} -> {r.to_host}: {r.status.upper()}", "", r.summary, ""]
    if r.approval:
        lines += [f"Approval: {r.approval.sentence()}", ""]
    if r.human_actions:
        lines += ["## A human must act", ""] + [f"- {h}" for h in r.human_actions] + [""]
    if r.agents:
        lines += [
            "## Agents",
            "",
            "| agent | result | runs on | downtime | note |",
            "|---|---|---|---|---|",
        ]
        for a in r.agents:
            dt_s = r.downtime_s.get(a.channel or "", None)
            lines.append(
                f"| {a.agent} | {a.result} | {', '.join(a.running_on) or 'nowhere'} | "
                f"{'-' if dt_s is None else f'{dt_s:.1f} s'} | {a.note} |"
            )
        lines.append("")
    if r.channels:
        lines += [
            "Channels now: " + ", ".join(f"{c} {s}" for c, s in sorted(r.channels.items())),
            "",
        ]
    if r.steps:
        lines += ["## Steps", "", "| start | end | outcome | step |", "|---|---|---|---|"]
        for s in r.steps:
            lines.append(
                f"| {s.started_at:%H:%M:%S} | {s.ended_at:%H:%M:%S} | {s.outcome} | {s.sentence} |"
            )
    if r.plan is not None and (r.status in ("dry-run", "refused") or not r.steps):
        lines += ["", plan_markdown(r.plan)]
    return "\n".join(lines)


def _result_state(result: CleanMoveResult) -> State[Any]:
    create_markdown_artifact(
        key="clean-move-report", markdown=report_markdown(result), description=result.summary
    )
    progress.emit("result", result=result)
    if result.status in ("failed", "refused", "cancelled"):
        return Failed(message=result.summary, data=result)
    return Completed(message=result.summary, data=result)


# --- the flow -----------------------------------------------------------------------------------


@flow(name=PROCEDURE, log_prints=False, persist_result=False)
def clean_move(
    site_file: str,
    from_host: str,
    to_host: str,
    agents: list[str] | None = None,
    mode: Mode = "pipelined",
    drain_timeout_s: float | None = None,
    poll_interval_s: float | None = None,
    dry_run: bool = False,
    pause_for_approval: bool | None = None,
    force_after_drain_timeout: bool = False,
    requested_by: str = "",
) -> State[Any]:
    """Move agents from `from_host` to `to_host`, as seed 000's clean move, without losing a job.

    Args:
        site_file: the site file (validated when it loads).
        from_host: the host the agents leave.
        to_host: the host they go to (their configured backup).
        agents: which agents (default: every agent of the pair that runs on `from_host`).
        mode: ``pipelined`` (recommended), ``full`` or ``staged``.
        drain_timeout_s: how long to wait for running transfers (default: the site's policy).
        poll_interval_s: how often to look at running transfers (default: the site's policy).
        dry_run: show the plan and change nothing.
        pause_for_approval: pause for a human decision after showing the plan (default: the
            site's policy for clean-move).
        force_after_drain_timeout: proceed after the drain timeout, accepting that the
            transfers still running lose their state (reported as such).
        requested_by: who asked (shown in the report and the approval record).

    Returns:
        A Completed state (completed, partial, dry-run, rejected) or a Failed one (failed,
        refused, cancelled), whose data is the `CleanMoveResult`.
    """
    logger = get_run_logger()
    started = _now()
    run_id = progress.current_run_id()
    site = load_site(site_file)
    policy = site.policy(PROCEDURE)
    req = MoveRequest(
        from_host=from_host,
        to_host=to_host,
        agents=agents,
        mode=mode,
        drain_timeout_s=drain_timeout_s or policy.drain_timeout_s,
        force=force_after_drain_timeout,
        expected_transfer_s=policy.expected_transfer_s,
        expected_restart_s=policy.expected_restart_s,
    )
    poll_s = poll_interval_s or policy.poll_interval_s
    base: dict[str, Any] = dict(
        site=site.site,
        from_host=from_host,
        to_host=to_host,
        mode=mode,
        dry_run=dry_run,
        forced=force_after_drain_timeout,
        started_at=started,
        flow_run_id=run_id,
    )

    def finish(status: Status, summary: str, **kw: Any) -> State[Any]:
        return _result_state(
            CleanMoveResult(**base, status=status, summary=summary, ended_at=_now(), **kw)
        )

    if dry_run:
        try:
            return _plan_only(site, req, finish)
        finally:
            remote.close_pools()
    who = requested_by or getpass.getuser()
    thread = ProcedureThread.for_current_run(
        site,
        PROCEDURE,
        f"{from_host} → {to_host} ({mode})",
        who,
        {
            "agents": ",".join(short_name(a) for a in agents or []) or "all",
            "mode": mode,
            "force": force_after_drain_timeout,
        },
    )

    def finish_noted(status: Status, summary: str, **kw: Any) -> State[Any]:
        return finish(status, summary, notifications=thread.n.status(), **kw)

    with progress.sink(thread):
        thread.open()
        try:
            with service_lock(site.site, site.service.name, PROCEDURE):
                return _move(
                    site,
                    req,
                    policy,
                    poll_s,
                    who,
                    pause_for_approval,
                    finish_noted,
                    started,
                    thread,
                )
        except ServiceLockError as exc:
            logger.error("%s", exc)
            return finish_noted("refused", str(exc))
        finally:
            remote.close_pools()


def _snapshot_and_plan(
    site: Site, req: MoveRequest, finish: Finish
) -> tuple[SiteSnapshot, MovePlan, State[Any] | None]:
    """Snapshot both hosts, plan, publish the plan; the refusal state when a pre-check failed."""
    snap = snapshot_site_task(site, [req.from_host, req.to_host])
    plan = plan_clean_move(site, snap, req)
    progress.emit("plan", plan=plan)
    create_markdown_artifact(key="clean-move-plan", markdown=plan_markdown(plan))
    refused = None
    if not plan.ok:
        refused = finish(
            "refused", "pre-checks failed, nothing changed: " + "; ".join(plan.problems), plan=plan
        )
    return snap, plan, refused


def _plan_only(site: Site, req: MoveRequest, finish: Finish) -> State[Any]:
    snap, plan, refused = _snapshot_and_plan(site, req, finish)
    if refused is not None:
        return refused
    n = len(plan.agents)
    return finish(
        "dry-run",
        f"dry run: would move {count(n, 'agent')} from {req.from_host} to "
        f"{req.to_host} in {req.mode} mode in about {plan.estimated_duration_s:.0f} s "
        f"({len(plan.steps)} steps); nothing changed",
        plan=plan,
        channels=snap.channels,
        where={m.agent: snap.where(m.agent) for m in plan.agents},
    )


def _move(
    site: Site,
    req: MoveRequest,
    policy: ProcedurePolicy,
    poll_s: float,
    requested_by: str,
    pause: bool | None,
    finish: Finish,
    flow_started: dt.datetime,
    thread: ProcedureThread | None = None,
) -> State[Any]:
    logger = get_run_logger()
    snap, plan, refused = _snapshot_and_plan(site, req, finish)
    if refused is not None:
        return refused
    if not plan.agents:
        return finish(
            "completed",
            f"nothing to move from {req.from_host} to {req.to_host}",
            plan=plan,
            channels=snap.channels,
        )
    needs = policy.approval == "required" if pause is None else pause
    if needs:
        progress.emit("approval-wait", plan=plan)
        approval = request_approval(
            policy,
            what=f"clean move of {count(len(plan.agents), 'agent')} {req.from_host} -> "
            f"{req.to_host} ({req.mode}), est. {plan.estimated_duration_s:.0f} s",
            poll_interval_s=1.0,
            announce=(lambda: thread.request_approval(plan, requested_by)) if thread else None,
            conclude=thread.decided if thread else None,
        )
        progress.emit("approval", record=approval)
        if not approval.approved:
            return finish(
                "rejected",
                f"{approval.sentence()}; nothing changed",
                plan=plan,
                approval=approval,
                channels=snap.channels,
            )
    else:
        approval = pre_approved(
            requested_by,
            "no approval required" if pause is None else "started with --yes",
        )
    run = MoveRun(site, plan, poll_s)
    status: Status
    act_started = time.monotonic()
    try:
        run.execute()
    except BaseException as exc:
        logger.error("clean move interrupted: %r", exc)
        after = snapshot_site(site, [req.from_host, req.to_host])
        _, outcomes = _finalise(run, after)
        finish(
            "cancelled",
            f"cancelled ({_why(exc)}); agents now: "
            + ", ".join(f"{o.agent} on {','.join(o.running_on) or 'nowhere'}" for o in outcomes),
            plan=plan,
            approval=approval,
            steps=run.records,
            agents=outcomes,
            human_actions=run.human,
            channels=after.channels,
            where={o.agent: o.running_on for o in outcomes},
            downtime_s=_downtime(run),
        )
        raise
    act_wall = time.monotonic() - act_started
    after = snapshot_site_task(site, [req.from_host, req.to_host])
    status, outcomes = _finalise(run, after)
    downtime = _downtime(run)
    timing = Timing(
        flow_wall_s=round((_now() - flow_started).total_seconds(), 3),
        act_wall_s=round(act_wall, 3),
        critical_path_s=run.critical_path_s(),
        snapshots_s=round(snap.duration_s + after.duration_s, 3),
        human_wait_s=round(approval.waited_s, 3),
    )
    moved = [o for o in outcomes if o.result in ("moved", "finished")]
    total = sum(downtime.values())
    summary = (
        f"{req.from_host} -> {req.to_host} ({req.mode}): "
        f"{count(len(moved), 'agent')} of {len(outcomes)} on {req.to_host}"
        + (f", {len(outcomes) - len(moved)} not moved" if len(moved) < len(outcomes) else "")
        + f"; channel downtime max {max(downtime.values(), default=0):.1f} s, total {total:.1f} s; "
        f"{count(run.jobs_lost, 'job')} lost"
        + ("; FORCED after drain timeout" if run.forced else "")
        + ("; a human must act" if run.human else "")
    )
    return finish(
        status,
        summary,
        plan=plan,
        approval=approval,
        steps=run.records,
        agents=outcomes,
        downtime_s=downtime,
        downtime_total_s=round(total, 2),
        downtime_max_s=max(downtime.values(), default=0.0),
        jobs_lost=run.jobs_lost,
        channels=after.channels,
        where={o.agent: o.running_on for o in outcomes},
        human_actions=run.human,
        timing=timing,
    )
