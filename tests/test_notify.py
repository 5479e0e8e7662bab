"""Slack messages of a procedure (pure Block Kit builders) and the notifier's failure contract."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from config.loader import load_site
from flows.approval import ApprovalRecord
from flows.notify import (
    approval_blocks,
    decision_blocks,
    decision_text,
    end_blocks,
    esc,
    impact_text,
)
from flows.plans.clean_move import MoveRequest, plan_clean_move
from tasks.adapters.slack import SlackNotifier
from tests.test_clean_move_plan import STEADY

SITE = load_site(Path(__file__).resolve().parent.parent / "config/sites/lab.yaml")
RUN = "6f1d7f7e-3a52-4d84-9c7a-4b1d2b6c0a11"


def _plan() -> object:
    return plan_clean_move(SITE, STEADY, MoveRequest(from_host="fts101", to_host="fts102"))


def test_approval_message_has_plan_estimate_impact_and_two_buttons() -> None:
    plan = _plan()
    blocks = approval_blocks(
        RUN,
        SITE,
        plan,
        "clean-move of 4 agent(s)",
        "alice",
        600,  # type: ignore[arg-type]
        "rejected",
    )
    actions = [b for b in blocks if b["type"] == "actions"]
    assert len(actions) == 1 and actions[0]["block_id"] == "approval"
    buttons = actions[0]["elements"]
    assert [(b["action_id"], b["value"]) for b in buttons] == [("approve", RUN), ("reject", RUN)]
    text = str(blocks)
    assert "Estimated downtime" in text and "CERN-CERN ~" in text
    assert "fts101" in text and "stop" in text and "No decision within 600 s: rejected" in text


def test_impact_says_what_stops_and_that_no_job_is_lost() -> None:
    text = impact_text(SITE, _plan())  # type: ignore[arg-type]
    assert "New transfers on CERN-CERN, CERN-RAL, CERN-FNAL, CERN-IN2P3 stop" in text
    assert "no job is lost" in text


def test_decision_replaces_the_buttons() -> None:
    rec = ApprovalRecord(
        decision="approve",
        who="<@U0LABOPS1>",
        source="Slack",
        sealed=True,
        decided_at=dt.datetime(2026, 11, 22, 14, 3, tzinfo=dt.UTC),
    )
    blocks = decision_blocks(rec, "clean-move")
    assert not any(b["type"] == "actions" for b in blocks)
    assert "Approved by <@U0LABOPS1> at 14:03 UTC (Slack)" in str(blocks)


def test_only_a_sealed_decisions_mentions_act() -> None:
    """The gateway's seal makes its approvers' mentions act; the same text unsealed, or anything
    but mentions under a seal, is shown as text."""
    at = dt.datetime(2026, 11, 22, 14, 3, tzinfo=dt.UTC)
    two = ApprovalRecord(
        decision="reject", who="<@U0A> and <@U0B>", source="Slack", sealed=True, decided_at=at
    )
    assert (
        decision_text(two) == ":no_entry_sign: Rejected by <@U0A> and <@U0B> at 14:03 UTC (Slack)"
    )
    for who, sealed in (("<@U0LABOPS1>", False), ("<!channel>", True), ("<@U0A> <!here>", True)):
        rec = ApprovalRecord(decision="approve", who=who, source="x", sealed=sealed, decided_at=at)
        assert esc(who) in decision_text(rec) and who not in decision_text(rec)


def test_end_message_says_what_a_human_must_do() -> None:
    blocks = end_blocks(
        "failed",
        "1 agent stranded",
        ["run `service transfer-agents start`"],
        {"glite-transfer-channel-agent-urlcopy-CERN-CERN": []},
        {"CERN-CERN": "Inactive"},
    )
    text = str(blocks)
    assert "FAILED" in text and "A human must act" in text and "CERN-CERN on nowhere" in text


def test_notifier_without_token_is_off_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HANDOVER_SLACK_BOT_TOKEN", raising=False)
    n = SlackNotifier.for_site(SITE)
    assert not n.enabled
    assert "HANDOVER_SLACK_BOT_TOKEN is not set" in n.status()
    n.step("x", [])  # no error: nothing is sent


def test_notifier_survives_an_unreachable_slack(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HANDOVER_SLACK_API_URL", "http://127.0.0.1:9/api/")
    monkeypatch.setenv("HANDOVER_SLACK_BOT_TOKEN", "xoxb-nowhere")
    n = SlackNotifier.for_site(SITE)
    n.start("hello", [])
    n.step("a step", [])
    assert n.root_ts is None and len(n.failures) == 2
    assert "unreachable" in n.status() and "xoxb-nowhere" not in n.status()


def test_text_from_outside_cannot_mention_or_link_in_slack() -> None:
    from flows.notify import esc, step_blocks

    hostile = "fts101: `cat` said <!channel> see <https://evil.example|the docs> & more"
    text = step_blocks("failed", hostile)[0]["elements"][0]["text"]
    assert "<!channel>" not in text and "<https://" not in text
    assert "&lt;!channel&gt;" in text and "&amp; more" in text
    blocks = end_blocks("failed", "<!here> it broke", ["run `x` <@U0ALL>"], {}, {})
    rendered = str(blocks)
    assert "<!here>" not in rendered and "<@U0ALL>" not in rendered
    assert esc("a < b > c & d") == "a &lt; b &gt; c &amp; d"


def test_the_drain_line_is_one_message_edited_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    """A draining move's running transfers, through the real slack_sdk to the fake Slack Web
    API: the first count posts one message in the run's thread, every later one edits that
    message (no new message per poll), and a later step is a message of its own."""
    from slack_sdk import WebClient

    from flows.notify import ProcedureThread
    from infra.fakeslack import FakeSlack
    from tasks.adapters import slack as slack_adapter

    monkeypatch.setattr(slack_adapter, "PROGRESS_EVERY_S", 0.0)  # every poll may edit
    with FakeSlack(tokens={"xoxb-t"}) as fake:
        notifier = SlackNotifier(SITE, WebClient(token="xoxb-t", base_url=fake.base_url, timeout=5))
        # no run id: the thread then records nothing in Prefect (no server needed)
        thread = ProcedureThread(notifier, SITE, "clean-move", None, None, "a move", "alice", {})
        thread.open()
        for left in (3, 2, 1):
            thread("drain", {"run_id": None, "host": "fts101", "running": {"CERN-RAL": left}})
        thread("step-sentence", {"run_id": None, "sentence": "stopped 1 agent (CERN-RAL)"})
        root = fake.roots()[-1]
        messages = fake.thread(root.channel, root.ts)
    drain = [m for m in messages if "running transfers on fts101" in m.text]
    assert len(drain) == 1, [m.text for m in messages]
    assert "CERN-RAL 1" in drain[0].text
    # the versions it replaced, oldest first
    assert [e["text"][-10:] for e in drain[0].edits] == ["CERN-RAL 3", "CERN-RAL 2"], drain[0].edits
    assert [m.text for m in messages][-1] == "stopped 1 agent (CERN-RAL)"
    assert not notifier.failures, notifier.failures
