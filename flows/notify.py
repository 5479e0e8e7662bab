"""What a procedure says in Slack, in Block Kit: pure builders, and the glue to a run's events.

`ProcedureThread` is a progress sink for one flow run: it opens the run's thread, posts each step's
outcome sentence, keeps one progress message up to date while channels drain, posts the approval
request (with Approve and Reject buttons whose value is the flow run id), replaces it by the
decision, and closes the thread with the result.

Every message is handover's own mrkdwn template filled with values shown as text
(`tasks.adapters.slack.mrkdwn`): an outcome sentence quoting a host's stderr, a requester
typed into a form or taken from an alert, a run's parameters are escaped once; a gateway-sealed
approver stays a mention (`decision_text`).
"""

from __future__ import annotations

import re
from typing import Any

from config.site import ProcedurePolicy, Site, short_name
from flows.approval import ApprovalRecord
from flows.plans.clean_move import MovePlan
from tasks.adapters.slack import (
    Block,
    Mrkdwn,
    SlackNotifier,
    context,
    esc,
    mrkdwn,
    section,
)

__all__ = ["Mrkdwn", "ProcedureThread", "esc", "mrkdwn"]

Blocks = list[Block]
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


def impact_text(site: Site, plan: MovePlan) -> str:
    """What stops for users while the move runs, in words (and that no job is lost)."""
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
    """The thread's first message (who started it and the parameters are shown as text)."""
    head = mrkdwn(
        "{icon} *{procedure}* on site *{site}*: {title}",
        icon=Mrkdwn(STATUS_ICON.get(status or "", ":arrows_counterclockwise:")),
        procedure=procedure,
        site=site.site,
        title=title,
    )
    shown = ", ".join(f"{k}={v}" for k, v in params.items() if v not in (None, "", False))
    blocks = [section(head), context(mrkdwn("started by {} · {}", who, shown))]
    if run_url:
        blocks.append(context(mrkdwn("<{}|Prefect run>", run_url)))
    return blocks


def step_blocks(outcome: str, sentence: str) -> Blocks:
    """One step's outcome sentence (shown as text: it may quote a host's stderr)."""
    icon = Mrkdwn(ICON.get(outcome, ":small_blue_diamond:"))
    return [context(mrkdwn("{} {}", icon, sentence))]


def request_blocks(
    run_id: str, sections: list[Mrkdwn], timeout_s: float, on_timeout: str
) -> Blocks:
    """An approval request: its sections, what a timeout does, and Approve/Reject buttons whose
    value is the flow run id (what the gateway resumes)."""
    return [
        *(section(text) for text in sections),
        context(mrkdwn("No decision within {:.0f} s: {}.", timeout_s, on_timeout)),
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
            mrkdwn(
                ":raising_hand: *Approval needed*: {}\nSite *{}*, {} → {}, requested by {}.",
                what,
                site.site,
                plan.from_host,
                plan.to_host,
                requester,
            ),
            mrkdwn(
                "*Running transfers now*: {}\n*Estimated downtime*: {}; about {:.0f} s in all.",
                running or "none",
                downtime,
                plan.estimated_duration_s,
            ),
            mrkdwn("*Impact*: {}", impact_text(site, plan)),
            mrkdwn("*Plan*\n```{}```", "\n".join(lines)),
        ],
        timeout_s,
        on_timeout,
    )


#: who a gateway-sealed decision names: Slack mentions of the approvers it verified
#: (`infra.gateway.decide`)
_MENTIONS = re.compile(r"<@[A-Z0-9]+>(?: and <@[A-Z0-9]+>)*")


def approver_mrkdwn(record: ApprovalRecord) -> Mrkdwn:
    """Who decided, for Slack: the gateway's mentions stay mentions when its seal verified;
    anything else (typed into the Prefect UI's form, an OS login) is shown as text."""
    if record.sealed and _MENTIONS.fullmatch(record.who):
        return Mrkdwn(record.who)
    return esc(record.who)


def decision_text(record: ApprovalRecord) -> Mrkdwn:
    """``Approved by <@U0LABOPS1> at 14:03 UTC`` and the like."""
    icon = Mrkdwn(":white_check_mark:" if record.approved else ":no_entry_sign:")
    template, values = record.sentence_parts()
    values["who"] = approver_mrkdwn(record)
    return mrkdwn("{icon} " + template[0].upper() + template[1:], icon=icon, **values)


def decision_blocks(record: ApprovalRecord, what: str) -> Blocks:
    """The approval message once decided: no buttons any more."""
    return [section(mrkdwn("*Approval*: {}", what)), context(decision_text(record))]


def end_blocks(
    status: str,
    summary: str,
    human_actions: list[str],
    where: dict[str, list[str]],
    channels: dict[str, str],
) -> Blocks:
    """The last message: the outcome, the site's state, and what a human must still do."""
    icon = Mrkdwn(STATUS_ICON.get(status, ""))
    blocks = [section(mrkdwn("{} *{}*: {}", icon, status.upper(), summary))]
    if where:
        state = ", ".join(
            f"{short_name(a)} on {'+'.join(h) or 'nowhere'}" for a, h in where.items()
        )
        blocks.append(context(mrkdwn("Agents now: {}", state)))
    if channels:
        shown = ", ".join(f"{c} {s}" for c, s in channels.items())
        blocks.append(context(mrkdwn("Channels: {}", shown)))
    if human_actions:
        actions = Mrkdwn("\n").join(mrkdwn("• {}", h) for h in human_actions)
        blocks.append(section(mrkdwn("*A human must act:*\n{}", actions)))
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
        self.notifier = notifier
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
        self.notifier.start(
            mrkdwn("{} on {}: {}", self.procedure, self.site.site, self.title),
            root_blocks(self.procedure, self.site, self.title, self.who, self.params, self.run_url),
        )
        if self.run_id and self.notifier.root_ts:
            _remember_thread(
                self.run_id,
                self.notifier.channel_id or self.notifier.channel,
                self.notifier.root_ts,
            )

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        if data.get("run_id") != self.run_id:
            return  # another run's event (runs share the process in tests and `serve`)
        if kind == "step":
            rec = data["record"]
            self.notifier.step(esc(rec.sentence), step_blocks(rec.outcome, rec.sentence))
        elif kind == "step-sentence":
            self.notifier.step(esc(data["sentence"]), step_blocks("done", data["sentence"]))
        elif kind == "drain":
            busy = ", ".join(f"{c} {n}" for c, n in data["running"].items())
            self.notifier.progress(
                mrkdwn(":hourglass_flowing_sand: running transfers on {}: {}", data["host"], busy)
            )
        elif kind == "result":
            if self.run_id and self.notifier.root_ts:
                _remember_thread(self.run_id, None, None)
            r = data["result"]
            self.notifier.finish(
                mrkdwn("{}: {}", r.status, r.summary),
                end_blocks(
                    r.status,
                    r.summary,
                    r.human_actions,
                    r.where,
                    r.channels,
                ),
                mrkdwn("{} on {}: {}", self.procedure, self.site.site, r.status),
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
        self, what: str, sections: list[Mrkdwn], policy: ProcedurePolicy | None = None
    ) -> None:
        """Post an approval request for `what`, with its details (any procedure).

        Args:
            what: the one line the approver reads (shown as text).
            sections: its details (`mrkdwn`: outside values in them escaped).
            policy: the approval's own policy when it is not the procedure's (a switch's
                countdown), for what the message says a timeout does.
        """
        self.what = what
        pol = policy or self.site.policy(self.procedure)
        self.notifier.approval(
            mrkdwn("Approval needed: {}", what),
            request_blocks(
                self.run_id or "",
                [mrkdwn(":raising_hand: *Approval needed*: {}", what), *sections],
                pol.approval_timeout_s,
                self._on_timeout(pol),
            ),
        )

    def note(self, sentence: str) -> None:
        """Say one line in the thread (e.g. an alert attached to this run), as text."""
        self.notifier.step(esc(sentence), step_blocks("note", sentence))

    def request_approval(self, plan: MovePlan, requester: str) -> None:
        """Post the approval request for `plan`."""
        pol = self.site.policy(self.procedure)
        on_timeout = self._on_timeout(pol)
        self.what = (
            f"{self.procedure} of {len(plan.agents)} agent(s), {plan.from_host} → "
            f"{plan.to_host} ({plan.mode})"
        )
        self.notifier.approval(
            mrkdwn("Approval needed: {}", self.what),
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
        self.notifier.decided(decision_text(record), decision_blocks(record, self.what))


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
