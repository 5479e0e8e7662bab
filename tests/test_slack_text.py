"""Text from outside reaches Slack as text: an alert's summary, a host's stderr, a name typed into
the Prefect UI's approval form are escaped once in what the real slack_sdk posts (to the fake Slack
Web API), while handover's own mentions and links still act."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from slack_sdk import WebClient

from config.loader import load_site
from flows import progress
from flows.approval import ApprovalRecord, approve, resume_with_input
from flows.notify import ProcedureThread, mrkdwn
from flows.result import StepRecord
from flows.seals import seal, seal_key
from infra.fakeslack import FakeSlack
from tasks.adapters.slack import SlackNotifier, reply_ephemeral
from tests.conftest import wait_for

LAB_SITE = Path(__file__).resolve().parent.parent / "config/sites/lab.yaml"
SITE = load_site(LAB_SITE)
TOKEN = "xoxb-escape-test"
SECRET = "3f1c0a9e77d54b2c8e6f0d1a2b3c4d5e"  # a test signing secret
SUMMARY = "<!channel> <https://x|Approve>"
SUMMARY_SHOWN = "&lt;!channel&gt; &lt;https://x|Approve&gt;"


@pytest.fixture
def slack(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSlack]:
    with FakeSlack(tokens={TOKEN}) as fake:
        monkeypatch.setenv("HANDOVER_SLACK_API_URL", fake.base_url)
        monkeypatch.setenv("HANDOVER_SLACK_BOT_TOKEN", TOKEN)
        monkeypatch.setenv("HANDOVER_SLACK_SIGNING_SECRET", SECRET)
        yield fake


def _texts(node: Any) -> list[str]:
    """Every text in a message's blocks (section, context, fields, buttons)."""
    if isinstance(node, list):
        return [t for n in node for t in _texts(n)]
    if not isinstance(node, dict):
        return []
    found = [node["text"]] if isinstance(node.get("text"), str) else []
    return found + [t for v in node.values() if isinstance(v, list | dict) for t in _texts(v)]


def _said(fake: FakeSlack) -> list[str]:
    """Everything the fake Slack received: each message's text and block texts, edits too."""
    out = []
    for m in fake.messages.values():
        out.append(m.text)
        out += _texts(m.blocks or [])
        for old in m.edits:
            out.append(old["text"])
            out += _texts(old.get("blocks") or [])
    return out


def _thread(fake: FakeSlack, who: str, params: dict[str, Any]) -> ProcedureThread:
    """A run's thread outside a flow run (no run id: nothing is recorded in Prefect)."""
    client = WebClient(token=TOKEN, base_url=fake.base_url, timeout=5)
    return ProcedureThread(
        SlackNotifier(SITE, client),
        SITE,
        "emergency-move",
        None,
        None,
        "fts101 failed",
        who,
        params,
    )


def test_an_alerts_summary_reaches_the_thread_as_text(slack: FakeSlack) -> None:
    """The alert's summary is in the run's requester and parameters (the deployments' triggers
    render ``requested_by: "alert from {source}: {summary}"``): the thread's first message, the
    approval request and a note show it, none mentions the channel or links."""
    who = f"alert from alertmanager: {SUMMARY}"
    thread = _thread(slack, who, {"host": "fts101", "requested_by": who})
    thread.open()
    thread.request(
        f"emergency move of 2 agents off fts101 ({SUMMARY})",
        [mrkdwn("Site *{}*, requested by {}.", SITE.site, who)],
    )
    thread.note(f"alert attached: {SUMMARY}")
    said = _said(slack)
    assert len(slack.messages) == 3
    hostile = [t for t in said if "<!channel>" in t or "<https://x|" in t]
    assert not hostile, hostile
    shown = [t for t in said if SUMMARY_SHOWN in t]
    # the root's context, the request's text, header and section, the note's text and block
    assert len(shown) == 6, said
    # handover's own formatting still acts (not escaped twice)
    assert any("*Approval needed*" in t for t in said)
    assert not any("&amp;lt;" in t for t in said)


def test_remote_stderr_in_a_step_sentence_reaches_slack_as_text(slack: FakeSlack) -> None:
    """A failed step's sentence quotes the host's stderr (`tasks.adapters.ssh.CommandFailed`):
    the step's message (its text, what a notification shows, and its block) shows it as text."""
    stderr = "<!here> run <https://evil.example/fix|this> & retry"
    sentence = (
        "fts101: stop-agents: fts101 (127.0.0.1:22): `service transfer-agents stop` failed "
        f"with exit code 1; stderr: {stderr}; fix the cause on the host"
    )
    now = dt.datetime.now(dt.UTC)
    rec = StepRecord(
        step="stop",
        verb="stop-agents",
        host="fts101",
        outcome="failed",
        sentence=sentence,
        started_at=now,
        ended_at=now,
    )
    thread = _thread(slack, "alice", {})
    thread.open()
    thread("step", {"run_id": None, "record": rec})
    [step] = [m for m in slack.messages.values() if m.thread_ts is not None]
    for text in [step.text, *_texts(step.blocks)]:
        assert "<!here>" not in text and "<https://evil" not in text, text
        assert "&lt;!here&gt; run &lt;https://evil.example/fix|this&gt; &amp; retry" in text


def test_an_ephemeral_reply_shows_the_runs_words_as_text(slack: FakeSlack) -> None:
    """The gateway's replies quote a run's name and requester, which the Prefect API lets anyone
    set: the reply on the response URL shows them as text."""
    reply_ephemeral(slack.response_url(), f"Run {SUMMARY} is not waiting for a decision.")
    [(_, body)] = slack.responses
    assert body["text"] == f"Run {SUMMARY_SHOWN} is not waiting for a decision."


@flow(name="slack-text-approval", persist_result=False)
def _asks_for_approval() -> ApprovalRecord:
    """A run that asks for an approval in its Slack thread, as every procedure does."""
    thread = ProcedureThread.for_current_run(SITE, "clean-move", "a test", "tester", {})
    thread.open()
    return approve(
        SITE.policy("clean-move"),
        True,
        "tester",
        "a test of the decision's words",
        announce=lambda: thread.request("a test of the decision's words", []),
        conclude=thread.decided,
        slack=SITE.slack,
    )


def _decide(run_input: dict[str, Any]) -> ApprovalRecord:
    """Start the flow, wait for its pause, resume it with `run_input`; its record."""
    box: dict[str, Any] = {}

    def watch(kind: str, data: dict[str, Any]) -> None:
        if kind == "approval-wait":
            box["run_id"] = data["run_id"]

    def target() -> None:
        with progress.sink(watch):
            box["record"] = _asks_for_approval()

    th = threading.Thread(target=target)
    th.start()
    run_id = str(wait_for(lambda: box.get("run_id"), 60, "the approval request"))

    def paused() -> bool:
        with get_client(sync_client=True) as client:
            st = client.read_flow_run(run_id).state
        return bool(st and st.is_paused())

    wait_for(paused, 30, "the run to pause")
    decided = dict(run_input)
    if decided.pop("sealed", False):
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(run_id).state
        assert state is not None
        decided["seal"] = seal(
            seal_key(SECRET),
            run_id,
            str(state.state_details.pause_key),
            decided["decision"],
            decided["who"],
            decided["source"],
        )
    resume_with_input(run_id, run_input=decided)
    th.join(60)
    assert not th.is_alive(), "the run did not end after its decision"
    record: ApprovalRecord = box["record"]
    return record


def _decision_texts(fake: FakeSlack) -> list[str]:
    return [t for t in _said(fake) if "pproved by" in t]


def test_a_decision_typed_into_the_ui_form_is_shown_as_text(
    slack: FakeSlack, prefect_api: str
) -> None:
    record = _decide(
        {"decision": "approve", "who": "<!channel>", "comment": "<https://x|Approve> & go"}
    )
    assert record.who == "<!channel> (as typed)" and not record.sealed
    texts = _decision_texts(slack)
    # the request replaced by the decision (text and block), and the decision in the thread
    assert len(texts) >= 4, _said(slack)
    for text in texts:
        assert "<!channel>" not in text and "<https://x|" not in text, text
        assert "&lt;!channel&gt; (as typed)" in text, text
        assert '"&lt;https://x|Approve&gt; &amp; go"' in text, text


def test_a_gateway_sealed_approver_stays_a_mention(slack: FakeSlack, prefect_api: str) -> None:
    record = _decide(
        {"decision": "approve", "who": "<@U0LABOPS1>", "source": "Slack", "sealed": True}
    )
    assert record.sealed and record.source == "Slack"
    texts = _decision_texts(slack)
    assert len(texts) >= 4, _said(slack)
    for text in texts:
        assert "Approved by <@U0LABOPS1> at " in text and "&lt;@" not in text, text
