"""The fake Slack Web API answers the real slack_sdk like Slack, and signs like Slack."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier

from infra.fakeslack import FakeSlack, interaction_body, signed_headers, slack_signature


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    with FakeSlack(tokens={"xoxb-t"}, usergroups={"S0OPS": ["U1", "U2"]}) as f:
        yield f


def test_threads_updates_and_blocks(fake: FakeSlack) -> None:
    c = WebClient(token="xoxb-t", base_url=fake.base_url, timeout=3)
    root = c.chat_postMessage(
        channel="#fts-ops-lab",
        text="root",
        blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": "hi"}}],
    )
    assert root["channel"] == "C0LABOPS01"
    c.chat_postMessage(channel=root["channel"], thread_ts=root["ts"], text="reply")
    c.chat_update(channel=root["channel"], ts=root["ts"], text="root v2", blocks=[])
    thread = fake.thread(root["channel"], root["ts"])
    assert [m.text for m in thread] == ["root v2", "reply"]
    assert thread[0].edits[0]["blocks"][0]["type"] == "section"
    with pytest.raises(SlackApiError) as info:
        c.chat_update(channel=root["channel"], ts="1.000001", text="x")
    assert info.value.response["error"] == "message_not_found"
    assert c.usergroups_users_list(usergroup="S0OPS")["users"] == ["U1", "U2"]


def test_errors_like_slack(fake: FakeSlack) -> None:
    with pytest.raises(SlackApiError) as info:
        WebClient(token="xoxb-wrong", base_url=fake.base_url).auth_test()
    assert info.value.response["error"] == "invalid_auth"
    c = WebClient(token="xoxb-t", base_url=fake.base_url)
    with pytest.raises(SlackApiError) as info:
        c.chat_postMessage(channel="#nowhere", text="x")
    assert info.value.response["error"] == "channel_not_found"
    fake.fail_next("chat.postMessage", "fatal_error")
    with pytest.raises(SlackApiError):
        c.chat_postMessage(channel="#fts-ops-lab", text="x")
    assert c.chat_postMessage(channel="#fts-ops-lab", text="x")["ok"]


def test_unreachable_after_stop(fake: FakeSlack) -> None:
    c = WebClient(token="xoxb-t", base_url=fake.base_url, timeout=2)
    fake.stop()
    t0 = time.monotonic()
    with pytest.raises(Exception):  # noqa: B017 - urllib's connection error
        c.auth_test()
    assert time.monotonic() - t0 < 5


def test_response_url_records_posts(fake: FakeSlack) -> None:
    url = fake.response_url()
    req = urllib.request.Request(
        url,
        data=json.dumps({"text": "only you"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=3) as resp:
        assert resp.status == 200
    assert fake.responses[-1][1] == {"text": "only you"}


def test_signatures_and_interactions_as_slack_makes_them() -> None:
    body = interaction_body(user_id="U0LABOPS1", action_id="approve", value="run-1")
    h = signed_headers("s3cret", body)
    v = SignatureVerifier("s3cret")
    assert v.is_valid(body, h["X-Slack-Request-Timestamp"], h["X-Slack-Signature"])
    assert not v.is_valid(body + "x", h["X-Slack-Request-Timestamp"], h["X-Slack-Signature"])
    assert not SignatureVerifier("other").is_valid(
        body, h["X-Slack-Request-Timestamp"], h["X-Slack-Signature"]
    )
    assert slack_signature("s3cret", 1, "b").startswith("v0=")
    payload = json.loads(urllib.parse.parse_qs(body)["payload"][0])
    assert payload["type"] == "block_actions" and payload["user"]["id"] == "U0LABOPS1"
    assert payload["actions"][0]["action_id"] == "approve"
    assert payload["actions"][0]["value"] == "run-1"


def test_record_endpoint(fake: FakeSlack) -> None:
    WebClient(token="xoxb-t", base_url=fake.base_url).chat_postMessage(
        channel="#fts-ops-lab", text="hello"
    )
    url = fake.base_url.removesuffix("/api/") + "/_fake/record"
    with urllib.request.urlopen(url, timeout=3) as resp:
        data = json.loads(resp.read())
    assert data["messages"][0]["text"] == "hello"
    assert data["calls"][0]["method"] == "chat.postMessage"


def test_the_view_renders_threads_as_an_operator_sees_them(fake: FakeSlack) -> None:
    """`GET /_fake/view`: the thread under its first message, mrkdwn and buttons rendered, and
    text that only looks like markup (already escaped by the sender) shown as text."""
    from flows.notify import request_blocks
    from tasks.adapters.slack import Mrkdwn

    c = WebClient(token="xoxb-t", base_url=fake.base_url, timeout=3)
    root = c.chat_postMessage(channel="#fts-ops-lab", text="*clean move* fts101 → fts102")
    blocks = request_blocks(
        "run-1",
        [Mrkdwn(":raising_hand: *Approval needed*, asked of <@U1>: `a &lt;!channel&gt; b`")],
        900,
        "reject",
    )
    c.chat_postMessage(channel=root["channel"], thread_ts=root["ts"], text="x", blocks=blocks)
    base = fake.base_url.removesuffix("/api/")
    with urllib.request.urlopen(f"{base}/_fake/view", timeout=3) as resp:
        assert resp.headers["Content-Type"] == "text/html"
        html = resp.read().decode()
    assert '<div class="channel"># fts-ops-lab</div>' in html
    assert "<b>clean move</b> fts101 → fts102" in html
    assert html.index("clean move") < html.index("Approval needed")  # the reply under its root
    assert '<div class="msg reply">' in html
    assert "\U0001f64b <b>Approval needed</b>" in html
    assert '<span class="mention">@U1</span>' in html
    assert "<code>a &lt;!channel&gt; b</code>" in html  # text, not a channel-wide mention
    assert '<span class="button primary">Approve</span>' in html
    assert '<span class="button danger">Reject</span>' in html
    assert "No decision within 900 s: reject." in html
