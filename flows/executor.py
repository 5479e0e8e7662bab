"""The one executor: runs any procedure's plan, step by step, and keeps what happened.

`Executor(site, plan, ...).execute()` runs the plan's phases in order; the chains of a phase run
at the same time, each as a Prefect task; the steps of a chain run in order, each verb's act a
Prefect task with the one retry rule (`tasks.verbs.run_step`). The executor knows no verb by
name: what a verb does, what it needs of the run (`tasks.run_context.RunContext`: the one drain
monitor, the transfers' remaining times, the run's bounds) and what it leaves in the ledger are
the verb's own (`flows.plans.verbs`, `tasks.verbs`). For every step it:

* waits the step's `delay_s` first (cancellable);
* retries a failed step until its `retry_for_s` bound, runs its `fallback` when it fails, and then
  aborts the chain, ends it, or goes on, as the step's `if_fails` says, noting its `human` action;
* records an outcome sentence (`StepRecord`: ``forced`` when a forced run went past a bound),
  updates the `Ledger`, emits a progress event and moves the run's progress artifact.

When a chain aborts (a failed step, a drain timeout, cancellation, a lost terminal, SIGTERM), the
procedure's compensation (a pure function of the plan and the ledger) says what to do for the
chain's agents, and the executor runs it; interrupts are re-raised after it. Without compensation
the failure is recorded and becomes a human action.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError

from config.site import Site
from flows import progress
from flows.attempt import Superseded, check_current
from flows.plans.model import AnyStep, Chain, Failure, Ledger, Phase, Plan, Remedy
from flows.result import AgentOutcome, Outcome, StepRecord
from tasks.adapters.ssh import SshError
from tasks.drain import Cancelled, DrainMonitor
from tasks.outcome import StepResult, now
from tasks.remote import SiteShell
from tasks.run_context import RunContext
from tasks.verbs import end_run, step_task

#: a procedure's compensation, `compensate_<procedure>(site, plan, ledger, failure)`: what to
#: do for the agents of a failed chain, from what the run has done (pure)
Compensate = Callable[[Site, Any, Ledger, Failure], list[Remedy]]
#: pause between two tries of a step that has a `retry_for_s` bound
RETRY_PAUSE_S = 2.0


class _ChainEnded(Exception):
    """A step whose failure ends its chain (``if_fails="end-chain"``) failed."""


def _log(sentence: str) -> None:
    try:
        get_run_logger().info("%s", sentence)
    except MissingContextError:  # a thread without the run's context
        import logging

        logging.getLogger("handover.executor").info("%s", sentence)


class Executor:
    """The state of one plan's execution (shared by its chains).

    Args:
        shell: the run's SSH client (its site is the plan's).
        plan: the plan (``ok``).
        poll_s: how often the drain monitor looks at the source host.
        drain_timeout_s: the bound of every ``wait-drained`` step.
        drain_host_lost_s: how long the drained host may stay unreachable before a
            ``wait-drained`` step gives up (`tasks.drain.HostLost`).
        force: go on after a drain timeout (the running transfers lose their state).
        compensate: the procedure's compensation, or None (failures become human actions).
    """

    def __init__(
        self,
        shell: SiteShell,
        plan: Plan,
        *,
        poll_s: float = 2.0,
        drain_timeout_s: float = 900.0,
        drain_host_lost_s: float = 30.0,
        force: bool = False,
        compensate: Compensate | None = None,
        before_phase: Callable[[Phase], str | None] | None = None,
    ) -> None:
        self.shell = shell
        #: asked before each phase: a reason not to start it (the run stops there), or None
        self.before_phase = before_phase
        #: why the phases from `stopped_before` on were not started ("" when all ran)
        self.stop_reason = ""
        self.stopped_before: list[str] = []
        self._progress_at = 0.0
        self.site = shell.site
        self.plan = plan
        self.poll_s = poll_s
        self.drain_timeout_s = drain_timeout_s
        self.force = force
        self.compensate_fn = compensate
        self.lock = threading.Lock()
        self.records: list[StepRecord] = []
        self.ledger = Ledger()
        self.inactive_at: dict[str, dt.datetime] = {}
        self.active_at: dict[str, dt.datetime] = {}
        self.outcomes: dict[str, AgentOutcome] = {}
        self.human: list[str] = []
        self.failed_chains: list[str] = []
        self.phase_s: dict[str, float] = {}
        self.jobs_lost = 0
        self.forced = False
        self.cancel = threading.Event()
        self.steps_total = max(1, len(plan.steps))
        self.steps_done = 0
        self.progress_id: Any = None
        waits = [s for s in plan.steps if s.WATCHES_DRAIN]
        self.drain_host = waits[0].host if waits else ""
        self.monitor = DrainMonitor(
            shell,
            self.drain_host,
            list(dict.fromkeys(c for s in waits for c in s.channels)),
            poll_s,
            self.cancel,
            on_poll=self._on_poll,
            lost_after_s=drain_host_lost_s,
            # asked again every max(0.75 s, poll) while a drain is waited for
            db_fresh_s=max(1.5, 2 * poll_s),
        )
        self._last_table: dict[str, int] | None = None
        self._last_table_at = 0.0
        #: what the verbs use of the run (its monitors, bounds and moments)
        self.ctx = RunContext(
            shell,
            cancel=self.cancel,
            poll_s=poll_s,
            drain_timeout_s=drain_timeout_s,
            force=force,
            monitor=self.monitor,
        )

    # --- bookkeeping ---------------------------------------------------------------------------

    def _record(
        self,
        step: AnyStep,
        outcome: Outcome,
        sentence: str,
        started: dt.datetime,
        *,
        res: StepResult | None = None,
        remote_s: float = 0.0,
        counts: bool = True,
    ) -> None:
        rec = StepRecord(
            step=step.id,
            verb=step.verb,
            host=step.host,
            agents=step.agents,
            channels=step.channels,
            outcome=outcome,
            sentence=sentence,
            commands=res.commands if res else [],
            changed=res.changed if res else [],
            started_at=started,
            ended_at=now(),
            remote_s=round(remote_s, 3),
            report=res.report if res else [],
            measures=res.measures if res else {},
        )
        with self.lock:
            self.records.append(rec)
            if counts and outcome in ("done", "forced"):
                self.steps_done += 1
        _log(sentence)
        progress.emit("step", record=rec, done=self.steps_done, total=self.steps_total)
        if counts:
            self._update_progress()

    def _update_progress(self, final: bool = False) -> None:
        """Move the progress artifact: a call to the API, so at most one a second (and the
        last one), not one per step."""
        if self.progress_id is None:
            return
        mono = time.monotonic()
        if not final and mono - self._progress_at < 1.0 and self.steps_done < self.steps_total:
            return
        self._progress_at = mono
        try:
            update_progress_artifact(self.progress_id, 100.0 * self.steps_done / self.steps_total)
        except Exception:  # noqa: BLE001, S110 - progress display must not fail a procedure
            pass

    def _on_poll(self, running: dict[str, int]) -> None:
        progress.emit("drain", host=self.drain_host, running=running)
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
        try:
            create_table_artifact(
                key=f"{self.plan.procedure}-drain",
                table=rows,
                description=f"Running transfers per channel on {self.drain_host}",
            )
        except Exception as exc:  # noqa: BLE001 - progress display must not fail a procedure
            logging.getLogger("handover.executor").warning(
                "the drain table could not be published (%s); the drain goes on", exc
            )

    def _succeeded(self, step: AnyStep, res: StepResult) -> None:
        with self.lock:
            self.ledger.record(step)
            self.human.extend(res.human)
            # the moment of the change, not of the check after it: a drain poll begun during
            # that check already counts
            at = res.acted_at or res.ended_at
            if step.SETS_CHANNELS == "Inactive":
                for c in step.channels:
                    self.inactive_at[c] = at
                    self.ctx.inactive_mono[c] = time.monotonic() - max(
                        0.0, (now() - at).total_seconds()
                    )
            elif step.SETS_CHANNELS == "Active":
                for c in step.channels:
                    self.active_at[c] = at
            if res.forced_lost is not None:
                self.jobs_lost += res.forced_lost
                self.forced = True

    def _partly_done(self, step: AnyStep, exc: BaseException) -> None:
        """Note what a failed step did before it failed (a hand-over whose stop worked)."""
        with self.lock:
            step.partly_done(self.ledger, exc)

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

    # --- one step ------------------------------------------------------------------------------

    def _verb(self, step: AnyStep) -> StepResult:
        """Run a step's verb; with `retry_for_s`, try again (any error) until the bound."""
        if not step.retry_for_s:
            result: StepResult = step_task(step)(self.ctx, step)
            return result
        deadline = time.monotonic() + step.retry_for_s
        once = step_task(step, retries=False)
        while True:
            try:
                result = once(self.ctx, step)
                return result
            except Exception:
                if time.monotonic() + RETRY_PAUSE_S >= deadline:
                    raise
                self.shell.drop(step.host)  # a hung connection: open a new one
                if self.cancel.wait(RETRY_PAUSE_S):
                    raise Cancelled("cancelled while retrying a step") from None

    def _attempt(self, step: AnyStep, started: dt.datetime) -> StepResult | None:
        """The step's verb, or its fallback when it fails (None: the fallback did the work and
        its steps are recorded); raises when both failed."""
        try:
            return self._verb(step)
        except Exception as exc:
            self._partly_done(step, exc)
            if not step.fallback:
                raise
            self._record(
                step,
                "recovered",
                f"{exc}; now: " + ", ".join(f"{f.verb} on {f.host}" for f in step.fallback),
                started,
                counts=False,
            )
        for f in step.fallback:
            f_started = now()
            res = self._verb(f)
            self._succeeded(f, res)
            self._record(
                f,
                "done",
                res.sentence,
                f_started,
                res=res,
                remote_s=(res.ended_at - res.started_at).total_seconds(),
                counts=False,
            )
        return None

    def _human(self, step: AnyStep, exc: BaseException) -> None:
        with self.lock:
            self.human.append(f"{step.human} (last error: {exc})" if step.human else str(exc))

    def do_step(self, step: AnyStep) -> None:
        """Run one step of a chain (see the module docstring)."""
        if self.cancel.is_set():
            raise Cancelled("the procedure was cancelled")
        if step.delay_s and self.cancel.wait(step.delay_s):
            raise Cancelled("the procedure was cancelled")
        check_current()  # a run marked Crashed and started again elsewhere stops here
        progress.emit("step-start", step=step)
        started = now()
        try:
            res = self._attempt(step, started)
        except Exception as exc:
            if step.if_fails == "abort":
                raise
            self._record(step, "failed", f"{step.host}: {step.verb}: {exc}", started)
            self._human(step, exc)
            if step.if_fails == "end-chain":
                raise _ChainEnded(str(exc)) from exc
            return
        if res is None:  # done by its fallback
            with self.lock:
                self.steps_done += 1
            return
        self._succeeded(step, res)
        self._record(
            step,
            "forced" if res.forced_lost is not None else "done",
            res.sentence,
            started,
            res=res,
            remote_s=(res.ended_at - res.started_at).total_seconds(),
        )

    # --- one chain -----------------------------------------------------------------------------

    def run_chain(self, chain: Chain) -> None:
        """Run a chain's steps in order; on an error, compensate for its agents, then re-raise
        what is not an ordinary error (interrupts, cancellation signals)."""
        failed = chain.steps[0]
        try:
            for step in chain.steps:
                failed = step
                self.do_step(step)
        except _ChainEnded:
            return
        except Superseded:
            raise  # another run has the site now: nothing to compensate from here
        except BaseException as exc:
            get_run_logger().exception("%s failed", chain.name)
            with self.lock:
                self.failed_chains.append(chain.name)
                if isinstance(exc, SshError):  # the command may have run: its outcome is unknown
                    self.ledger.record_in_doubt(failed)
            self._record(
                failed,
                "failed",
                f"{chain.name}: {exc}",
                now(),
                counts=False,
            )
            if self.compensate_fn is None:
                with self.lock:
                    self.human.append(str(exc))
            else:
                with self.lock:
                    ledger = self.ledger.model_copy(deep=True)
                failure = Failure.of(chain, exc)
                for remedy in self.compensate_fn(self.shell.site, self.plan, ledger, failure):
                    self.remedy(remedy)
            if not isinstance(exc, Exception):
                raise

    def remedy(self, r: Remedy) -> None:
        """Run one agent's compensation; never raises for an ordinary error."""
        result, note = r.result, r.note
        running_on = r.running_on
        for st in r.steps:
            started = now()
            try:
                res = self._attempt(st, started)
            except Exception as exc:  # noqa: BLE001 - compensation records and goes on
                self._record(
                    st, "failed", f"compensation failed: {st.verb}: {exc}", started, counts=False
                )
                if st.human:
                    self._human(st, exc)
                if st.if_fails == "abort":
                    if r.failed_result is not None:
                        result, note, running_on = r.failed_result, r.failed_note, []
                    break
                continue
            if res is not None:
                self._succeeded(st, res)
                self._record(st, "compensation", res.sentence, started, res=res, counts=False)
        with self.lock:
            self.human.extend(r.human)
        self.outcomes[r.agent] = AgentOutcome(
            agent=r.agent, channel=r.channel, result=result, running_on=running_on, note=note
        )

    # --- the whole plan ------------------------------------------------------------------------

    def execute(self) -> None:
        """Run every phase; chains of a phase run concurrently as Prefect tasks."""
        self.progress_id = create_progress_artifact(
            0.0,
            key=f"{self.plan.procedure}-progress",
            description=f"{self.plan.procedure} on {self.plan.site}",
        )
        self.ctx.acting_since = time.monotonic()
        if self.monitor.channels:
            self.monitor.start(context_thread)
        try:
            for i, phase in enumerate(self.plan.phases):
                reason = self.before_phase(phase) if self.before_phase else None
                if reason:
                    self.stop_reason = reason
                    self.stopped_before = [p.name for p in self.plan.phases[i:]]
                    break
                progress.emit("phase", name=phase.name)
                began = time.monotonic()
                if len(phase.chains) == 1:
                    self.run_chain(phase.chains[0])
                else:
                    futures = [chain_task.submit(self, c, c.name) for c in phase.chains]
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
                self.phase_s[phase.name] = round(time.monotonic() - began, 3)
                if self.cancel.is_set():
                    break
        except BaseException:
            self.cancel.set()
            raise
        finally:
            self.monitor.stop()
            end_run(self.shell)
            self._update_progress(final=True)


def context_thread(target: Callable[[], None]) -> threading.Thread:
    """A daemon thread running `target` in a copy of the caller's context (the run's logger and
    client): a copy of its own, since a context can be entered by one thread at a time."""
    return threading.Thread(target=contextvars.copy_context().run, args=(target,), daemon=True)


def _run_chain(executor: Executor, chain: Chain, chain_name: str) -> None:
    executor.run_chain(chain)


chain_task = task(  # type: ignore[call-overload]
    _run_chain,
    name="chain",
    task_run_name="{chain_name}",
    cache_policy=NO_CACHE,
)
