"""What a procedure says in Slack, in Block Kit: pure builders, and the glue to a run's events.

`ProcedureThread` is a progress sink for one flow run: it opens the run's thread, posts each step's
outcome sentence, keeps one progress message up to date while channels drain, posts the approval
request (with Approve and Reject buttons whose value is the flow run id), replaces it by the
decision, and closes the thread with the result.
"""

from __future__ import annotations

from typing import Any

from config.site import ProcedurePolicy, Site, short_name
from flows.approval import ApprovalRecord
from flows.plans.clean_move import MovePlan
from tasks.adapters.slack import SlackNotifier

Blocks = list[dict[str, Any]]
MAX_TEXT = 2900  # Slack refuses a section text over 3000 characters
ICON = {
    "done": ":white_check_mark:",
    "forced": ":warning:",
    "failed": ":x:",
    "compensation": ":leftwards_arrow_with_hook:",
    "recovered": ":arrows_counterclockwise:",
    "note": ":bell:",
}
STATUS_ICON = {
    "completed": ":white_check_mark:",
    "partial": ":warning:",
    "failed": ":x:",
    "refused": ":no_entry:",
    "rejected": ":no_entry_sign:",
    "dry-run": ":memo:",
    "cancelled": ":octagonal_sign:",
}


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 20] + "\n... (truncated)"


def esc(text: str) -> str:
    """Text from outside (an outcome sentence with a host's stderr, an alert's summary) as
    literal Slack mrkdwn: ``<!channel>`` or ``<https://evil|a link>`` is shown, never acted on."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _clip(text)}}


def _context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": _clip(text)}]}


def impact_text(site: Site, plan: MovePlan) -> str:
    """What stops for users while the move runs, in words (seed 002's component notes)."""
    chans = [m.channel for m in plan.agents if m.channel]
    vos = [m.vo for m in plan.agents if m.vo]
    parts = []
    if chans:
        parts.append(
            f"New transfers on {', '.join(chans)} stop, retries included, from the moment each "
            "channel is set Inactive until its agent serves on the backup (bandwidth is lost "
            "meanwhile). Transfers can still be submitted and queried; jobs already transferred "
            "complete normally; no job is lost."
        )
    if vos:
        parts.append(
            f"For VO {', '.join(vos)}: transfers can be submitted but are not assigned to "
            "channels nor retried, and VO actions (catalog updates) wait until the agent is "
            "back; nothing is lost, jobs stall and then complete."
        )
    return " ".join(parts) or "No agent is moved."


def root_blocks(
    procedure: str,
    site: Site,
    title: str,
    who: str,
    params: dict[str, Any],
    run_url: str | None,
    status: str | None = None,
) -> Blocks:
    """The thread's first message."""
    head = f"{STATUS_ICON.get(status or '', ':arrows_counterclockwise:')} *{procedure}* on "
    head += f"site *{site.site}*: {title}"
    shown = ", ".join(f"{k}={v}" for k, v in params.items() if v not in (None, "", False))
    blocks = [_section(head), _context(f"started by {who} · {shown}")]
    if run_url:
        blocks.append(_context(f"<{run_url}|Prefect run>"))
    return blocks


def step_blocks(outcome: str, sentence: str) -> Blocks:
    """One step's outcome sentence."""
    return [_context(f"{ICON.get(outcome, ':small_blue_diamond:')} {esc(sentence)}")]


def request_blocks(run_id: str, sections: list[str], timeout_s: float, on_timeout: str) -> Blocks:
    """An approval request: its sections, what a timeout does, and Approve/Reject buttons whose
    value is the flow run id (what the gateway resumes)."""
    return [
        *(_section(text) for text in sections),
        _context(f"No decision within {timeout_s:.0f} s: {on_timeout}."),
        {
            "type": "actions",
            "block_id": "approval",
            "elements": [
                {
                    "type": "button",
                    "action_id": "approve",
                    "style": "primary",
                    "value": run_id,
                    "text": {"type": "plain_text", "text": "Approve"},
                },
                {
                    "type": "button",
                    "action_id": "reject",
                    "style": "danger",
                    "value": run_id,
                    "text": {"type": "plain_text", "text": "Reject"},
                },
            ],
        },
    ]


def approval_blocks(
    run_id: str,
    site: Site,
    plan: MovePlan,
    what: str,
    requester: str,
    timeout_s: float,
    on_timeout: str,
) -> Blocks:
    """A clean move's approval request: what, where, the plan, the estimate, the impact."""
    est = plan.estimated_downtime_s
    downtime = ", ".join(f"{c} ~{s:.0f} s" for c, s in est.items()) or "none"
    lines = []
    for phase in plan.phases:
        for chain in phase.chains:
            for st in chain.steps:
                who = ", ".join(short_name(a) for a in st.agents) or ", ".join(st.channels)
                lines.append(f"{st.host:8} {st.verb:14} {who}")
    running = ", ".join(f"{m.channel}: {m.running_transfers}" for m in plan.agents if m.channel)
    return request_blocks(
        run_id,
        [
            f":raising_hand: *Approval needed*: {what}\nSite *{site.site}*, "
            f"{plan.from_host} → {plan.to_host}, requested by {requester}.",
            f"*Running transfers now*: {running or 'none'}\n*Estimated downtime*: "
            f"{downtime}; about {plan.estimated_duration_s:.0f} s in all.",
            f"*Impact*: {impact_text(site, plan)}",
            "*Plan*\n```" + "\n".join(lines) + "```",
        ],
        timeout_s,
        on_timeout,
    )


def decision_text(record: ApprovalRecord) -> str:
    """``Approved by <@U0LABOPS1> at 14:03 UTC`` and the like."""
    icon = ":white_check_mark:" if record.approved else ":no_entry_sign:"
    sentence = record.sentence()
    return f"{icon} {sentence[0].upper()}{sentence[1:]}"


def decision_blocks(record: ApprovalRecord, what: str) -> Blocks:
    """The approval message once decided: no buttons any more."""
    return [_section(f"*Approval*: {what}"), _context(decision_text(record))]


def end_blocks(
    status: str,
    summary: str,
    human_actions: list[str],
    where: dict[str, list[str]],
    channels: dict[str, str],
) -> Blocks:
    """The last message: the outcome, the site's state, and what a human must still do."""
    blocks = [_section(f"{STATUS_ICON.get(status, '')} *{status.upper()}*: {esc(summary)}")]
    if where:
        state = ", ".join(
            f"{short_name(a)} on {'+'.join(h) or 'nowhere'}" for a, h in where.items()
        )
        blocks.append(_context(f"Agents now: {state}"))
    if channels:
        blocks.append(_context("Channels: " + ", ".join(f"{c} {s}" for c, s in channels.items())))
    if human_actions:
        blocks.append(
            _section("*A human must act:*\n" + "\n".join(f"• {esc(h)}" for h in human_actions))
        )
    return blocks


def run_url(run_id: str | None) -> str | None:
    """The run's page in the Prefect UI (from PREFECT_UI_URL or the API URL)."""
    if run_id is None:
        return None
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

    ui = PREFECT_UI_URL.value() or (str(PREFECT_API_URL.value() or "").removesuffix("/api"))
    return f"{ui}/runs/flow-run/{run_id}" if ui else None


class ProcedureThread:
    """The Slack thread of one run, fed by the run's progress events (a progress sink)."""

    @classmethod
    def for_current_run(
        cls, site: Site, procedure: str, title: str, who: str, params: dict[str, Any]
    ) -> ProcedureThread:
        """The thread of the flow run this code runs in, with the site's notifier."""
        from flows.progress import current_run_id

        run_id = current_run_id()
        return cls(
            SlackNotifier.for_site(site),
            site,
            procedure,
            run_id,
            run_url(run_id),
            title,
            who,
            params,
        )

    def __init__(
        self,
        notifier: SlackNotifier,
        site: Site,
        procedure: str,
        run_id: str | None,
        run_url: str | None,
        title: str,
        who: str,
        params: dict[str, Any],
    ) -> None:
        self.n = notifier
        self.site = site
        self.procedure = procedure
        self.run_id = run_id
        self.run_url = run_url
        self.title = title
        self.who = who
        self.params = params
        self.what = title

    def open(self) -> None:
        """Post the thread's first message, and say where the thread is (a Prefect Variable
        named after the run) so that the gateway can note alerts attached to the run in it."""
        self.n.start(
            f"{self.procedure} on {self.site.site}: {self.title}",
            root_blocks(self.procedure, self.site, self.title, self.who, self.params, self.run_url),
        )
        if self.run_id and self.n.root_ts:
            _remember_thread(self.run_id, self.n.channel_id or self.n.channel, self.n.root_ts)

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        if data.get("run_id") != self.run_id:
            return  # another run's event (runs share the process in tests and `serve`)
        if kind == "step":
            rec = data["record"]
            self.n.step(rec.sentence, step_blocks(rec.outcome, rec.sentence))
        elif kind == "step-sentence":
            self.n.step(data["sentence"], step_blocks("done", data["sentence"]))
        elif kind == "drain":
            busy = ", ".join(f"{c} {n}" for c, n in data["running"].items())
            self.n.progress(f":hourglass_flowing_sand: running transfers on {data['host']}: {busy}")
        elif kind == "result":
            if self.run_id and self.n.root_ts:
                _remember_thread(self.run_id, None, None)
            r = data["result"]
            self.n.finish(
                f"{r.status}: {r.summary}",
                end_blocks(
                    r.status,
                    r.summary,
                    r.human_actions,
                    r.where,
                    r.channels,
                ),
                f"{self.procedure} on {self.site.site}: {r.status}",
                root_blocks(
                    self.procedure,
                    self.site,
                    self.title,
                    self.who,
                    self.params,
                    self.run_url,
                    status=r.status,
                ),
            )

    def _on_timeout(self, pol: ProcedurePolicy) -> str:
        if pol.on_approval_timeout == "proceed" and pol.emergency:
            return "proceed (emergency policy)"
        return "rejected"

    def request(
        self, what: str, sections: list[str], policy: ProcedurePolicy | None = None
    ) -> None:
        """Post an approval request for `what`, with its details (any procedure).

        Args:
            what: the one line the approver reads.
            sections: its details.
            policy: the approval's own policy when it is not the procedure's (a switch's
                countdown), for what the message says a timeout does.
        """
        self.what = what
        pol = policy or self.site.policy(self.procedure)
        self.n.approval(
            f"Approval needed: {what}",
            request_blocks(
                self.run_id or "",
                [f":raising_hand: *Approval needed*: {what}", *sections],
                pol.approval_timeout_s,
                self._on_timeout(pol),
            ),
        )

    def note(self, sentence: str) -> None:
        """Say one line in the thread (e.g. an alert attached to this run)."""
        self.n.step(sentence, step_blocks("note", sentence))

    def request_approval(self, plan: MovePlan, requester: str) -> None:
        """Post the approval request for `plan`."""
        pol = self.site.policy(self.procedure)
        on_timeout = self._on_timeout(pol)
        self.what = (
            f"{self.procedure} of {len(plan.agents)} agent(s), {plan.from_host} → "
            f"{plan.to_host} ({plan.mode})"
        )
        self.n.approval(
            f"Approval needed: {self.what}",
            approval_blocks(
                self.run_id or "",
                self.site,
                plan,
                self.what,
                requester,
                pol.approval_timeout_s,
                on_timeout,
            ),
        )

    def decided(self, record: ApprovalRecord) -> None:
        """Replace the request by the decision, and say it in the thread."""
        self.n.decided(decision_text(record), decision_blocks(record, self.what))


def thread_variable(run_id: str) -> str:
    """The Prefect Variable in which a run keeps where its Slack thread is."""
    return f"slack-thread-{run_id}"


def _remember_thread(run_id: str, channel: str | None, ts: str | None) -> None:
    """Keep (or, with None, forget) where a run's Slack thread is; best effort."""
    import logging

    from prefect.variables import Variable

    name = thread_variable(run_id)
    try:
        if channel and ts:
            Variable.set(name, {"channel": channel, "ts": ts}, overwrite=True)
        else:
            Variable.unset(name)
    except Exception as exc:  # noqa: BLE001 - a notifier must never change the outcome
        logging.getLogger("handover.notify").warning("could not record the Slack thread: %s", exc)
