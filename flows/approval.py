"""Human approval of a risky step: the flow pauses with a typed input and resumes on a decision.

The pause uses Prefect's `pause_flow_run(wait_for_input=ApprovalInput)`, so the Prefect UI shows a
form (decision, who, comment) on the paused run, and any other front end (the Slack gateway) can
resume the run with the same input through the API (`resume_flow_run(id, run_input=...)`).
`request_approval` takes optional `announce`/`conclude` callbacks so a notifier can post the
request and update it after the decision; it never waits on them.

A pause that times out follows the policy: ``reject`` (default) or ``proceed`` (emergency
procedures only). Prefect can leave a timed-out run shown as Paused, so the outcome is set here.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any, Literal

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run, resume_flow_run
from prefect.input import RunInput
from prefect.states import Running
from pydantic import BaseModel, Field

from config.site import ProcedurePolicy, Site, Slack
from flows.seals import alert_seal_holds, is_sealed, site_alert_seal_key, site_seal_key


class ApprovalInput(RunInput):
    """What an approver gives to resume a paused procedure."""

    decision: Literal["approve", "reject"] = Field(
        description="approve to go ahead, reject to stop without changing anything"
    )
    who: str = Field(min_length=1, max_length=120, description="your name or user ID")
    comment: str = Field(default="", max_length=2000)
    source: str = Field(
        default="Prefect UI", max_length=60, description="where the decision was made"
    )
    seal: str = Field(
        default="", max_length=128, description="set by the handover gateway; leave it empty"
    )


#: Prefect's answer to a resume with input that arrives between the run's Paused state and the
#: saving of its input's schema (the pause proposes the state first, then saves the schema)
SCHEMA_NOT_YET = "Run input schema not found"


def resume_with_input(run_id: Any, run_input: dict[str, Any], *, wait_s: float = 5.0) -> None:
    """Resume a paused run with its approval input (Prefect's `resume_flow_run`), waiting out
    the moment after the run is Paused and before its input's schema is saved, in which Prefect
    refuses the input; any other refusal is raised at once.

    Args:
        run_id: the paused flow run.
        run_input: the `ApprovalInput` fields.
        wait_s: how long to retry the refusal of a schema not yet saved.

    Raises:
        RuntimeError: Prefect refused the resume (the run is not paused, or the input).
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            resume_flow_run(run_id, run_input=run_input)
            return
        except RuntimeError as exc:
            if SCHEMA_NOT_YET not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(0.1)


class ApprovalRecord(BaseModel):
    """The recorded decision: who, what, when, from where."""

    decision: Literal["approve", "reject", "timeout-reject", "timeout-proceed", "pre-approved"]
    who: str
    comment: str = ""
    source: str
    decided_at: dt.datetime
    waited_s: float = 0.0
    #: the gateway's seal verified: `who` is what the gateway wrote (its approvers' Slack
    #: mentions), not what someone typed
    sealed: bool = False

    @property
    def approved(self) -> bool:
        """Whether the procedure may go ahead."""
        return self.decision in ("approve", "timeout-proceed", "pre-approved")

    def sentence_parts(self) -> tuple[str, dict[str, object]]:
        """The sentence as a ``str.format`` template of handover's words and its values (who,
        the comment, ...: what people typed or chose), for a notifier to fill its own way
        (Slack shows the values as text)."""
        labels = {
            "approve": "approved by {who} at {when} ({source}){comment}",
            "reject": "rejected by {who} at {when} ({source}){comment}",
            "timeout-reject": "no decision within {waited_s:.0f} s: rejected by policy",
            "timeout-proceed": "no decision within {waited_s:.0f} s: proceeding by the "
            "emergency policy",
            "pre-approved": "approved up front by {who} ({source})",
        }
        return labels[self.decision], {
            "who": self.who,
            "when": f"{self.decided_at:%H:%M} UTC",
            "source": self.source,
            "comment": f': "{self.comment}"' if self.comment else "",
            "waited_s": self.waited_s,
        }

    def sentence(self) -> str:
        """E.g. ``approved by alice at 14:03 UTC (Prefect UI): "go"``."""
        template, values = self.sentence_parts()
        return template.format(**values)


def pre_approved(who: str, source: str) -> ApprovalRecord:
    """The record for a run started with the approval already given (e.g. `handover run --yes`)."""
    return ApprovalRecord(
        decision="pre-approved",
        who=who or "unknown",
        source=source,
        decided_at=dt.datetime.now(dt.UTC),
    )


def _next_pause_key() -> str:
    """A pause key no pause of this run has used: ``approval-N``, N counted from the keys the
    server has recorded for the run (Prefect refuses a keyed pause it has seen and hands back
    the input of the first, so a second approval under the first one's key would pass as
    approved by the first approver)."""
    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        raise RuntimeError("an approval can only be asked for inside a flow run")
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(ctx.flow_run.id)
    used = set(run.empirical_policy.pause_keys or ())
    n = len(used) + 1
    while f"approval-{n}" in used:
        n += 1
    return f"approval-{n}"


def _unstick_paused_run() -> None:
    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(
            ctx.flow_run.id, Running(message="approval timed out"), force=True
        )


def request_approval(
    policy: ProcedurePolicy,
    *,
    what: str,
    poll_interval_s: float = 1.0,
    announce: Callable[[], None] | None = None,
    conclude: Callable[[ApprovalRecord], None] | None = None,
    seal_key: bytes | None = None,
) -> ApprovalRecord:
    """Pause the current flow run until a human decides, or the policy's timeout passes.

    Every pause has a key of its own (`_next_pause_key`). A decision counts as the gateway's
    when it carries the gateway's seal for this run and this pause (`flows.seals`); any other is
    recorded as typed in the Prefect UI, and ignored when the policy says ``approval_via:
    gateway`` (the run pauses again, under a new key, until its timeout).

    Args:
        policy: the procedure's policy (approval timeout, what a timeout does, which decisions
            count).
        what: one line saying what is to be approved (logged; shown by notifiers).
        poll_interval_s: how often the paused run checks for the decision.
        announce: called once the run is about to pause (e.g. post the request to Slack).
        conclude: called with the decision (e.g. update the Slack message).
        seal_key: the site's seal key (None: no decision is sealed).

    Returns:
        The decision record; ``approved`` tells whether to go ahead.
    """
    from flows import progress

    logger = get_run_logger()
    logger.info("Waiting for approval (up to %.0f s): %s", policy.approval_timeout_s, what)
    if policy.approval_via == "gateway" and seal_key is None:
        logger.error(
            "This procedure accepts only the gateway's decisions, but the Slack signing secret "
            "cannot be read where this run executes (slack.signing_secret): no decision can be "
            "verified, so the run waits for its timeout. Make the secret readable here."
        )
    if announce is not None:
        announce()
    started = dt.datetime.now(dt.UTC)
    deadline = started + dt.timedelta(seconds=policy.approval_timeout_s)
    ctx = FlowRunContext.get()
    run_id = str(ctx.flow_run.id) if ctx is not None and ctx.flow_run is not None else ""
    record: ApprovalRecord | None = None
    while record is None:
        left = (deadline - dt.datetime.now(dt.UTC)).total_seconds()
        pause_key = _next_pause_key()
        try:
            if left < 1:
                raise FlowPauseTimeout("the approval timeout passed")
            answer = pause_flow_run(  # type: ignore[call-overload]  # a float poll is fine
                wait_for_input=ApprovalInput,
                timeout=int(left),
                poll_interval=poll_interval_s,
                key=pause_key,
            )
        except FlowPauseTimeout:
            _unstick_paused_run()
            waited = (dt.datetime.now(dt.UTC) - started).total_seconds()
            proceed = policy.on_approval_timeout == "proceed" and policy.emergency
            record = ApprovalRecord(
                decision="timeout-proceed" if proceed else "timeout-reject",
                who="policy",
                source="timeout",
                decided_at=dt.datetime.now(dt.UTC),
                waited_s=waited,
            )
            break
        assert answer is not None
        sealed = is_sealed(
            seal_key, run_id, pause_key, answer.decision, answer.who, answer.source, answer.seal
        )
        if not sealed and policy.approval_via == "gateway":
            logger.warning(
                "Ignored a decision (%s by %r) that did not come through the gateway: this "
                "site accepts approvals from its Slack approvers only; still waiting",
                answer.decision,
                answer.who,
            )
            progress.emit("approval-ignored", decision=answer.decision, who=answer.who)
            continue
        record = ApprovalRecord(
            decision=answer.decision,
            # what the form says is a claim: recorded as typed, and where it was typed
            who=answer.who if sealed else f"{answer.who} (as typed)",
            comment=answer.comment,
            source=answer.source if sealed else "Prefect UI",
            sealed=sealed,
            decided_at=dt.datetime.now(dt.UTC),
            waited_s=(dt.datetime.now(dt.UTC) - started).total_seconds(),
        )
    logger.info("Approval: %s", record.sentence())
    if conclude is not None:
        try:
            conclude(record)
        except Exception as exc:  # noqa: BLE001 - a notifier must never change the outcome
            logger.warning("could not publish the decision: %s", exc)
    return record


def approve(
    policy: ProcedurePolicy,
    pause: bool | None,
    who: str,
    what: str,
    *,
    announce: Callable[[], None] | None = None,
    conclude: Callable[[ApprovalRecord], None] | None = None,
    slack: Slack | None = None,
    **event: object,
) -> ApprovalRecord:
    """Go at once or ask a human, as the site's policy (or the run's `pause`) says.

    Args:
        policy: the procedure's policy.
        pause: the run's parameter: True asks, False goes (``--yes``), None follows the policy.
        who: who started the run (for a run that does not ask).
        what: the one line the approver reads.
        announce: posts the request (Slack).
        conclude: updates it with the decision.
        slack: the site's Slack section (its signing secret keys the gateway's seals).
        **event: extra data for the ``approval-wait`` progress event (e.g. the plan).

    Returns:
        The decision record (``pre-approved`` when nobody was asked).
    """
    from flows import progress

    if pause is False and policy.approval == "required" and progress.created_through_the_api():
        # `handover run --yes` is an operator at the site's terminal; a run created from a
        # deployment came through the Prefect API, where anyone who reaches it could say "no
        # approval": the site's policy wins
        get_run_logger().warning(
            "pause_for_approval=False ignored: this run was created through the Prefect API "
            "and the site's policy requires an approval"
        )
        pause = None
    if pause is False and policy.approval == "required" and policy.approval_via == "gateway":
        # the site takes decisions from its Slack approvers only: `--yes` is a claim typed at
        # a terminal (by whoever $LOGNAME says), recorded as such; the run still asks
        claim = f"started with --yes by {who or 'unknown'} (as typed)"
        get_run_logger().warning(
            "%s: ignored, this site accepts approvals through the gateway only "
            "(approval_via: gateway); asking in Slack",
            claim,
        )
        progress.emit("step-sentence", sentence=f"{claim}; asking the site's approvers")
        pause = None
    if not (policy.approval == "required" if pause is None else pause):
        return pre_approved(who, "no approval required" if pause is None else "started with --yes")
    progress.emit("approval-wait", what=what, **event)
    record = request_approval(
        policy,
        what=what,
        poll_interval_s=1.0,
        announce=announce,
        conclude=conclude,
        seal_key=site_seal_key(slack),
    )
    progress.emit("approval", record=record)
    return record


def automatic_policy(
    policy: ProcedurePolicy, countdown_s: float, flapping: str = ""
) -> tuple[ProcedurePolicy, bool | None]:
    """The approval policy of a run an automatic path started (a sensor's switch, the control
    switch's geo failover), and the run's `pause` argument.

    With `flapping` (why another automatic run was too recent) a human decides, and a request
    left unanswered is a no. Otherwise the site's countdown: announced, aborted by a Reject,
    gone ahead when nobody answers; with no countdown, at once without asking (the alert's word
    is the decision: a run created through the API would otherwise fall back on the site's
    policy).
    """
    if flapping:
        return policy.model_copy(
            update={"approval": "required", "on_approval_timeout": "reject"}
        ), True
    if countdown_s > 0:
        return (
            policy.model_copy(
                update={
                    "approval": "required",
                    "approval_timeout_s": float(countdown_s),
                    "on_approval_timeout": "proceed",
                    "emergency": True,
                }
            ),
            True,
        )
    return policy.model_copy(update={"approval": "none"}), None


def automatic_path_proven(site: Site, alert_id: str, alert_seal: str, subject: str) -> bool:
    """Whether this run may take an automatic path (an automatic switch's countdown, an
    emergency policy that proceeds when nobody answers): it was called in-process (an operator at
    the site's terminal, like ``--yes``), or it carries the gateway's seal of the alert `alert_id`
    about `subject` (a host's name, or `flows.seals.geo_site_subject`), and was created within the
    site's `alerts.max_age_s` of it (`flows.seals`). A run created through the Prefect API without
    that seal gets the site's approval policy, whatever its parameters say."""
    from flows import progress

    if not progress.created_through_the_api():
        return True
    ctx = FlowRunContext.get()
    created = ctx.flow_run.created if ctx is not None and ctx.flow_run is not None else None
    if created is None or site.alerts is None:
        return False
    return alert_seal_holds(
        site_alert_seal_key(site.alerts),
        alert_id,
        subject,
        alert_seal,
        created_at=created.timestamp(),
        max_age_s=site.alerts.max_age_s,
    )
