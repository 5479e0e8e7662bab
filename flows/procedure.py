"""What every procedure's flow does around its plan: its Slack thread, the service lock, the
SSH connections it opened, and the state it ends in (with its report artifact).

Every procedure has the same skeleton:

    finish = Finisher(XResult, report_markdown, site=..., requested_by=who, started_at=started)
    with procedure_run(site, PROCEDURE, title, who, params) as run:
        finish.run = run
        return locked(site, PROCEDURE, finish, lambda: _x(run, request, finish))

and `_x` snapshots, plans (pure), approves (`Run.approve`), runs `Executor(...).execute()`,
verifies from a fresh snapshot and returns `finish(status, summary, **fields)`. A refusal of the
service lock ends the run ``refused`` naming the holder, with nothing changed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.client.schemas.objects import State
from prefect.states import Completed, Failed

from config.site import ProcedurePolicy, Site
from flows import progress
from flows.approval import ApprovalRecord, approve
from flows.attempt import check_not_crash_looping
from flows.notify import Mrkdwn, ProcedureThread, mrkdwn
from flows.plans.model import Plan
from flows.result import ProcedureResult
from flows.service_lock import ServiceLockError, service_lock
from tasks.outcome import now
from tasks.remote import SiteShell

#: a flow's `finish(status, summary, **fields)`: builds its result and ends the run
Finish = Callable[..., State[Any]]
#: statuses that end a run Failed (the others end it Completed)
FAILED = ("failed", "refused", "cancelled")


@dataclass
class Run:
    """What a procedure's run holds for its duration: its Slack thread and its SSH client."""

    thread: ProcedureThread
    shell: SiteShell

    def approve(
        self,
        policy: ProcedurePolicy,
        pause: bool | None,
        who: str,
        what: str,
        lines: list[Mrkdwn],
    ) -> ApprovalRecord:
        """`flows.approval.approve` with the request posted in the run's thread (`lines` under
        `what`; build them with `flows.notify.mrkdwn`) and the decision written back there."""
        return approve(
            policy,
            pause,
            who,
            what,
            announce=lambda: self.thread.request(what, lines, policy),
            conclude=self.thread.decided,
            slack=self.shell.site.slack,
        )


def unknown_host(site: Site, host: str) -> str | None:
    """The refusal of a procedure asked about a host the site does not have, naming the hosts
    it has (None: the site has it). Said before anything else is read or locked."""
    if host in {h.name for h in site.hosts}:
        return None
    return (
        f"refused: no host {host!r} in site {site.site} (hosts: {site.host_names()}); "
        "nothing changed"
    )


@contextlib.contextmanager
def procedure_run(
    site: Site, procedure: str, title: str, who: str, params: dict[str, Any]
) -> Iterator[Run]:
    """The run's Slack thread (fed by its progress events) and its own SSH client for the
    block; the client's connections are closed at its end.

    Raises:
        flows.attempt.CrashLoop: a run the crash recovery started, for a procedure that crashed
            too often with these parameters (`flows/attempt.py`).
    """
    check_not_crash_looping()
    thread = ProcedureThread.for_current_run(site, procedure, title, who, params)
    with progress.sink(thread), SiteShell(site) as shell:
        thread.open()
        yield Run(thread, shell)


@contextlib.contextmanager
def holding_service(
    site: Site,
    procedure: str,
    part: str = "",
    *,
    subject: str = "",
    wait_s: float = 0.0,
    behind: frozenset[str] = frozenset(),
) -> Iterator[None]:
    """Hold the site's service for the block (one procedure per service at a time).

    Args:
        site: the site.
        procedure: who holds it (named to a procedure refused meanwhile).
        part: a part of the service that procedures touch apart from the agents, with a lock of
            its own (``frontend``: the switch runs beside an emergency move of the same host).
        subject: what the procedure works on (a host), recorded with the holder.
        wait_s: wait up to this long while the same procedure holds the service for another
            subject, or while one of `behind` holds it (`flows.service_lock.service_lock`).
        behind: procedures waited for as well (short repairs).

    Raises:
        ServiceLockError: another procedure holds it, or the Prefect API did not answer; the
            message says which, and nothing was changed.
    """
    service = f"{site.service.name}-{part}" if part else site.service.name
    try:
        with service_lock(
            site.site, service, procedure, subject=subject, wait_s=wait_s, behind=behind
        ):
            yield
    except ServiceLockError as exc:
        get_run_logger().error("%s", exc)
        raise


def end(result: ProcedureResult, report: Callable[[Any], str]) -> State[Any]:
    """Publish the report artifact and the ``result`` progress event; the run's final state.

    The report is published best effort: the work is done by now, and a Prefect API that fails
    to store the artifact (a server process lost, Redis restarting) must not turn the run's
    outcome into a failure. The report then goes to the run's log instead.
    """
    markdown = report(result)
    try:
        create_markdown_artifact(
            key=f"{result.procedure}-report", markdown=markdown, description=result.summary
        )
    except Exception as exc:  # noqa: BLE001 - see the docstring
        logger = logging.getLogger("handover.report")
        logger.warning("the report could not be published as an artifact (%s); it is:", exc)
        logger.warning("%s", markdown)
    progress.emit("result", result=result)
    if result.status in FAILED:
        return Failed(message=result.summary, data=result)
    return Completed(message=result.summary, data=result)


class Finisher:
    """A flow's `finish(status, summary, **fields)`: its typed result from what the run knows,
    then the run's end (`end`: the report artifact, the ``result`` event, the final state).

    Args:
        result: the procedure's result model.
        report: its report (markdown) from the result.
        **base: the fields every result of the run has (site, who, when it started...).
    """

    def __init__(
        self, result: type[ProcedureResult], report: Callable[[Any], str], **base: Any
    ) -> None:
        self.result = result
        self.report = report
        self.base = base
        #: the procedure's run once it is open: its thread's run id and notifications go in
        self.run: Run | None = None

    def __call__(self, status: str, summary: str, **fields: Any) -> State[Any]:
        """Build the result and end the run with it."""
        known = dict(self.base)
        if self.run is not None:
            known.setdefault("flow_run_id", self.run.thread.run_id)
            known["notifications"] = self.run.thread.notifier.status()
        made = self.result(**known, status=status, summary=summary, ended_at=now(), **fields)
        return end(made, self.report)


def locked(
    site: Site,
    procedure: str,
    finish: Finish,
    body: Callable[[], State[Any]],
    *,
    part: str = "",
    subject: str = "",
    wait_s: float = 0.0,
    behind: frozenset[str] = frozenset(),
    **refused: Any,
) -> State[Any]:
    """Run `body` holding the service (`holding_service`); a refusal of the lock ends the run
    ``refused``, its message naming the holder (with the `refused` fields in the result)."""
    try:
        with holding_service(site, procedure, part, subject=subject, wait_s=wait_s, behind=behind):
            return body()
    except ServiceLockError as exc:
        return finish("refused", str(exc), **refused)


def show_plan(plan: Plan, markdown: str) -> None:
    """The plan as the run's ``<procedure>-plan`` artifact, and its notes as the run's first
    sentences (the thread and the terminal)."""
    create_markdown_artifact(key=f"{plan.procedure}-plan", markdown=markdown)
    for sentence in plan.notes:
        progress.emit("step-sentence", sentence=sentence)


def refused_or_dry_run(
    plan: Plan, finish: Finish, dry_run: bool, /, **known: Any
) -> State[Any] | None:
    """The run's end when the plan was refused (nothing changed) or is a dry run; None when
    the procedure goes on. A dry run the crash recovery started is held to the limit a real one
    is (`check_not_crash_looping`)."""
    if not plan.ok:
        return finish(
            "refused", "pre-checks failed, nothing changed: " + "; ".join(plan.problems), **known
        )
    if dry_run:
        check_not_crash_looping()
        return finish("dry-run", "dry run: " + plan.notes[0] + "; nothing changed", **known)
    return None


def request_lines(site: Site, who: str, reason: str, notes: list[str]) -> list[Mrkdwn]:
    """The opening of an approval request: the site, who asked and why, then `notes`."""
    return [
        mrkdwn(
            "Site *{}*, requested by {}.{}",
            site.site,
            who,
            mrkdwn(" Reason: {}.", reason) if reason else Mrkdwn(""),
        ),
        *[mrkdwn("- {}", n) for n in notes],
    ]
