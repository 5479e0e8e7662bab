"""Approvals and notifications in Slack, through the gateway: end to end on the lab, with a real
Prefect server, a fake Slack Web API spoken to by the real slack_sdk, and requests signed exactly as
Slack signs them."""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from prefect.client.orchestration import get_client
from slack_sdk.socket_mode.request import SocketModeRequest

from config.loader import load_site
from config.site import Site
from flows import progress
from flows.approval import resume_with_input
from flows.clean_move import CleanMoveResult, clean_move
from flows.seals import seal, seal_key
from infra.fakeslack import FakeSlack, interaction_body, signed_headers
from infra.gateway.app import create_app
from infra.gateway.decide import Decider
from infra.gateway.socket_mode import make_listener
from infra.ports import free_port
from tasks.site_state import snapshot_site
from tests.conftest import RunningLab, place_on_primaries, reject_paused_runs, wait_for

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"  # a test signing secret
TOKEN = "xoxb-lab-test-token"
APPROVER, INTRUDER = "U0LABOPS1", "U0INTRUDER"
P = "glite-transfer-channel-agent-urlcopy-"


@pytest.fixture(scope="module")
def slack() -> Iterator[FakeSlack]:
    fake = FakeSlack(tokens={TOKEN}).start()
    saved = {
        k: os.environ.get(k)
        for k in (
            "HANDOVER_SLACK_API_URL",
            "HANDOVER_SLACK_BOT_TOKEN",
            "HANDOVER_SLACK_SIGNING_SECRET",
        )
    }
    os.environ.update(
        HANDOVER_SLACK_API_URL=fake.base_url,
        HANDOVER_SLACK_BOT_TOKEN=TOKEN,
        HANDOVER_SLACK_SIGNING_SECRET=SECRET,
    )
    try:
        yield fake
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        fake.stop()


class Gateway:
    """A real gateway (uvicorn on loopback) for a site, stopped at the end."""

    def __init__(self, site: Site) -> None:
        self.decider = Decider(site, seal_key=seal_key(SECRET))
        self.port = free_port()
        config = uvicorn.Config(
            create_app(site, SECRET, self.decider),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, 20, "the gateway to start")
        self.url = f"http://127.0.0.1:{self.port}/slack/interactions"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def post(self, body: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        req = urllib.request.Request(self.url, data=body.encode(), headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def click(
        self,
        user: str,
        action: str,
        value: str,
        response_url: str,
        *,
        secret: str = SECRET,
        age_s: int = 0,
    ) -> tuple[int, dict[str, Any]]:
        body = interaction_body(
            user_id=user, action_id=action, value=value, response_url=response_url
        )
        headers = signed_headers(secret, body, timestamp=int(time.time()) - age_s)
        return self.post(body, headers)


@pytest.fixture(scope="module")
def gateway(lab: RunningLab, slack: FakeSlack, prefect_api: str) -> Iterator[Gateway]:
    gw = Gateway(lab.site)
    yield gw
    gw.stop()


@pytest.fixture(autouse=True)
def on_primaries(lab: RunningLab, prefect_api: str) -> Iterator[None]:
    place_on_primaries(lab)
    yield
    reject_paused_runs()


def _start_move(lab: RunningLab, **kw: Any) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def watch(kind: str, data: dict[str, Any]) -> None:
        if kind == "approval-wait":
            box["run_id"] = data["run_id"]

    def target() -> None:
        params: dict[str, Any] = dict(
            site_file=str(lab.site_file),
            from_host="fts101",
            to_host="fts102",
            agents=[P + "CERN-IN2P3"],
        )
        params.update(kw)
        with progress.sink(watch):
            state = clean_move(**params, return_state=True)
        box["result"] = state.result(raise_on_failure=False)

    th = threading.Thread(target=target)
    th.start()
    return th, box


def _paused(run_id: str) -> bool:
    with get_client(sync_client=True) as client:
        st = client.read_flow_run(run_id).state
    return bool(st and st.is_paused())


def _wait_for_approval(box: dict[str, Any]) -> str:
    run_id = str(wait_for(lambda: box.get("run_id"), 60, "the approval request"))
    wait_for(lambda: _paused(run_id), 30, "the run to pause")
    return run_id


def _approval_message(slack: FakeSlack, run_id: str) -> Any:
    for m in slack.messages.values():
        for b in m.blocks or []:
            if b.get("type") == "actions" and any(
                e.get("value") == run_id for e in b.get("elements", [])
            ):
                return m
        for old in m.edits:
            for b in old.get("blocks") or []:
                if b.get("type") == "actions" and any(
                    e.get("value") == run_id for e in b.get("elements", [])
                ):
                    return m
    return None


def test_approved_in_slack_the_move_completes(
    lab: RunningLab, slack: FakeSlack, gateway: Gateway
) -> None:
    roots_before = len(slack.roots())
    th, box = _start_move(lab)
    run_id = _wait_for_approval(box)
    msg = wait_for(lambda: _approval_message(slack, run_id), 10, "the approval message")
    actions = next(b for b in msg.blocks if b["type"] == "actions")
    assert {e["action_id"] for e in actions["elements"]} == {"approve", "reject"}
    assert "Impact" in json.dumps(msg.blocks) and "CERN-IN2P3" in json.dumps(msg.blocks)
    status, answer = gateway.click(APPROVER, "approve", run_id, slack.response_url())
    assert status == 200 and answer["ok"], answer
    th.join(120)
    result: CleanMoveResult = box["result"]
    assert result.status == "completed", result.summary
    assert result.approval is not None and result.approval.source == "Slack"
    assert result.approval.who == f"<@{APPROVER}>"
    assert snapshot_site(lab.shell, ["fts102"]).hosts[0].runs(P + "CERN-IN2P3")
    # one thread for the run: root, steps, the approval (updated in place), the end
    assert len(slack.roots()) == roots_before + 1
    root = slack.roots()[-1]
    thread = slack.thread(root.channel, root.ts)
    texts = [m.text for m in thread]
    assert any("stopped 1 agent (CERN-IN2P3)" in t for t in texts)
    assert any(t.startswith("completed:") for t in texts)
    msg = _approval_message(slack, run_id)
    assert msg.edits, "the approval message was updated in place"
    assert not any(b["type"] == "actions" for b in msg.blocks), "the buttons are gone"
    assert f"Approved by <@{APPROVER}>" in msg.text
    assert root.edits and "completed" in root.text
    # a second click after the decision resumes nothing and tells the user why
    url = slack.response_url()
    status, answer = gateway.click(APPROVER, "approve", run_id, url)
    assert status == 200 and not answer["ok"]
    assert "not waiting for a decision" in answer["result"]
    wait_for(
        lambda: any(r[0] == url.rsplit("/", 1)[-1] for r in slack.responses),
        5,
        "the ephemeral reply",
    )
    # no secret anywhere Slack saw, in the run's logs or in its artifacts
    seen = json.dumps([c.params for c in slack.calls])
    assert SECRET not in seen and TOKEN not in seen
    with get_client(sync_client=True) as client:
        from prefect.client.schemas.filters import (
            ArtifactFilter,
            ArtifactFilterFlowRunId,
            LogFilter,
            LogFilterFlowRunId,
        )

        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
    blob = json.dumps([x.message for x in logs]) + json.dumps([str(a.data) for a in arts])
    assert logs and arts
    assert SECRET not in blob and TOKEN not in blob


def test_forged_stale_malformed_and_unauthorised_clicks_resume_nothing(
    lab: RunningLab, slack: FakeSlack, gateway: Gateway
) -> None:
    before = {a.name: snapshot_site(lab.shell).where(a.name) for a in lab.site.service.agents}
    th, box = _start_move(lab)
    run_id = _wait_for_approval(box)
    url = slack.response_url()
    # signed with another secret
    status, answer = gateway.click(APPROVER, "approve", run_id, url, secret="not-the-secret")
    assert status == 401 and answer["error"] == "bad signature"
    # replayed six minutes later
    status, answer = gateway.click(APPROVER, "approve", run_id, url, age_s=360)
    assert status == 401 and "stale" in answer["error"]
    # malformed payload, correctly signed
    body = "payload=" + "%7Bnot-json"
    status, answer = gateway.post(body, signed_headers(SECRET, body))
    assert status == 400 and "malformed" in answer["error"]
    # an unknown run
    status, answer = gateway.click(APPROVER, "approve", "2b6f0cb4-0000-4000-8000-000000000000", url)
    assert status == 200 and not answer["ok"] and "No run" in answer["result"]
    # someone who is not an approver
    status, answer = gateway.click(INTRUDER, "approve", run_id, url)
    assert status == 200 and not answer["ok"] and "not an approver" in answer["result"]
    assert _paused(run_id), "nothing resumed the run"
    reasons = [e.get("reason") for e in gateway.decider.audit]
    for r in ("bad signature", "unknown-run", "not-an-approver"):
        assert r in reasons
    # Socket Mode takes the same path: a reject over it ends the run, nothing changed
    acks: list[Any] = []

    class Client:
        def send_socket_mode_response(self, response: Any) -> None:
            acks.append(response)

    payload = json.loads(
        __import__("urllib.parse").parse.parse_qs(
            interaction_body(user_id=APPROVER, action_id="reject", value=run_id, response_url=url)
        )["payload"][0]
    )
    make_listener(gateway.decider)(
        Client(), SocketModeRequest(type="interactive", envelope_id="env-1", payload=payload)
    )
    assert acks and acks[0].envelope_id == "env-1"
    th.join(60)
    result: CleanMoveResult = box["result"]
    assert result.status == "rejected" and result.steps == []
    assert {
        a.name: snapshot_site(lab.shell).where(a.name) for a in lab.site.service.agents
    } == before


def _two_person_site(lab: RunningLab, **slack: Any) -> Any:
    assert lab.site.slack is not None
    return lab.site.model_copy(
        update={"slack": lab.site.slack.model_copy(update={"two_person_rule": True, **slack})}
    )


def test_two_person_rule_never_lets_one_approver_decide_a_named_requesters_run(
    lab: RunningLab, slack: FakeSlack, prefect_api: str
) -> None:
    """The run names its requester ("alice", whom the site maps to a Slack user), but a name
    given with a run is a claim, not an identity: alice's Slack user may not approve it, and
    another approver, who might have named alice, may not approve it alone."""
    second = "U0LABOPS2"
    gw = Gateway(_two_person_site(lab, operators={"alice": APPROVER}, approvers=[APPROVER, second]))
    try:
        th, box = _start_move(lab, requested_by="alice")
        run_id = _wait_for_approval(box)
        status, answer = gw.click(APPROVER, "approve", run_id, slack.response_url())
        assert status == 200 and not answer["ok"] and "Two-person rule" in answer["result"]
        assert _paused(run_id)
        status, answer = gw.click(second, "approve", run_id, slack.response_url())
        assert status == 200 and not answer["ok"], answer
        assert "second approver" in answer["result"]
        assert _paused(run_id)
    finally:
        if "run_id" in box:
            resume_with_input(box["run_id"], run_input={"decision": "reject", "who": "test"})
        th.join(60)
        gw.stop()
    assert box["result"].status == "rejected"


def test_two_person_rule_needs_two_approvers_for_an_unverified_requester(
    lab: RunningLab, slack: FakeSlack, prefect_api: str
) -> None:
    """A requester nobody can verify (free text from the API, an alert, a login the site does
    not map): two distinct approvers must approve, and one approving twice is not two."""
    second = "U0LABOPS2"
    gw = Gateway(_two_person_site(lab, approvers=[APPROVER, second]))
    try:
        th, box = _start_move(lab, requested_by="U0LABOPS2 (typed into the UI)")
        run_id = _wait_for_approval(box)
        status, answer = gw.click(APPROVER, "approve", run_id, slack.response_url())
        assert status == 200 and not answer["ok"] and "second approver" in answer["result"]
        assert _paused(run_id)
        status, answer = gw.click(APPROVER, "approve", run_id, slack.response_url())
        assert not answer["ok"] and "approved this run already" in answer["result"]
        assert _paused(run_id)
        status, answer = gw.click(second, "approve", run_id, slack.response_url())
        assert status == 200 and answer["ok"], answer
        th.join(120)
    finally:
        if "run_id" in box and _paused(str(box["run_id"])):
            resume_with_input(box["run_id"], run_input={"decision": "reject", "who": "test"})
        th.join(60)
        gw.stop()
    result: CleanMoveResult = box["result"]
    assert result.status == "completed", result.summary
    assert result.approval is not None
    assert result.approval.who == f"<@{APPROVER}> and <@{second}>"


def test_ui_approval_works_with_slack_down(
    lab: RunningLab, slack: FakeSlack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HANDOVER_SLACK_API_URL", "http://127.0.0.1:9/api/")
    th, box = _start_move(lab)
    run_id = _wait_for_approval(box)
    resume_with_input(
        run_id,
        run_input={
            "decision": "approve",
            "who": "carol",
            "comment": "Slack is down, approving from the UI",
        },
    )
    th.join(120)
    result: CleanMoveResult = box["result"]
    assert result.status == "completed", result.summary
    # the form's "who" is a claim: recorded as typed, and where
    assert result.approval is not None and result.approval.who == "carol (as typed)"
    assert result.approval.source == "Prefect UI"
    assert "Slack notification failed" in result.notifications


def test_a_site_that_requires_the_gateway_ignores_forms_typed_into_the_ui(
    lab: RunningLab, slack: FakeSlack, gateway: Gateway, tmp_path: Any
) -> None:
    """`approval_via: gateway`: a decision resumed through Prefect's API without the gateway's
    seal (a form claiming to be Slack, a seal copied from another run) is ignored and the run
    keeps waiting; the Slack approver's click, sealed by the gateway, decides."""
    import yaml

    data = yaml.safe_load(lab.site_file.read_text())
    data["procedures"]["clean-move"]["approval_via"] = "gateway"
    gated = tmp_path / "gateway-only.yaml"
    gated.write_text(yaml.safe_dump(data))
    ignored: list[dict[str, Any]] = []

    def watch(kind: str, data: dict[str, Any]) -> None:
        if kind == "approval-ignored":
            ignored.append(data)

    with progress.sink(watch):
        th, box = _start_move(lab, site_file=str(gated))
        run_id = _wait_for_approval(box)
        forged = {"decision": "approve", "who": f"<@{APPROVER}>", "source": "Slack"}
        other_run = "2b6f0cb4-0000-4000-8000-000000000000"
        for attempt in (
            forged,
            {
                **forged,
                "seal": seal(
                    seal_key(SECRET), other_run, "approval-1", "approve", forged["who"], "Slack"
                ),
            },
            {**forged, "seal": "0" * 64},
        ):
            seen = len(ignored)
            resume_with_input(run_id, run_input=attempt)
            wait_for(lambda seen=seen: len(ignored) > seen, 30, "the decision to be ignored")
            wait_for(lambda: _paused(run_id), 30, "the run to pause again")
        status, answer = gateway.click(APPROVER, "approve", run_id, slack.response_url())
        assert status == 200 and answer["ok"], answer
        th.join(120)
    result: CleanMoveResult = box["result"]
    assert len(ignored) == 3
    assert result.status == "completed", result.summary
    assert result.approval is not None and result.approval.source == "Slack"
    assert result.approval.who == f"<@{APPROVER}>"


def test_yes_on_a_site_that_requires_the_gateway_is_a_claim_and_the_run_still_asks(
    lab: RunningLab, slack: FakeSlack, gateway: Gateway, tmp_path: Any
) -> None:
    """`handover run --yes` (pause_for_approval=False, in-process) says "approved" as whoever
    $LOGNAME names: on a site that takes the gateway's decisions only, the run records the
    claim and asks in Slack all the same; the approver's click decides."""
    import yaml

    data = yaml.safe_load(lab.site_file.read_text())
    data["procedures"]["clean-move"]["approval_via"] = "gateway"
    gated = tmp_path / "gateway-only-yes.yaml"
    gated.write_text(yaml.safe_dump(data))
    said: list[str] = []

    def watch(kind: str, data: dict[str, Any]) -> None:
        if kind == "step-sentence":
            said.append(str(data.get("sentence")))

    with progress.sink(watch):
        th, box = _start_move(
            lab, site_file=str(gated), pause_for_approval=False, requested_by="mallory"
        )
        run_id = _wait_for_approval(box)
        assert any("started with --yes by mallory (as typed)" in s for s in said), said
        status, answer = gateway.click(APPROVER, "approve", run_id, slack.response_url())
        assert status == 200 and answer["ok"], answer
        th.join(120)
    result: CleanMoveResult = box["result"]
    assert result.status == "completed", result.summary
    assert result.approval is not None and result.approval.source == "Slack"
    assert result.approval.who == f"<@{APPROVER}>"


def test_approval_timeout_rejects_and_changes_nothing(
    lab: RunningLab, slack: FakeSlack, tmp_path: Any
) -> None:
    import yaml

    data = yaml.safe_load(lab.site_file.read_text())
    data["procedures"]["clean-move"]["approval_timeout_s"] = 3
    short = tmp_path / "short-approval.yaml"
    short.write_text(yaml.safe_dump(data))
    load_site(short)
    before = {a.name: snapshot_site(lab.shell).where(a.name) for a in lab.site.service.agents}
    th, box = _start_move(lab, site_file=str(short))
    th.join(90)
    result: CleanMoveResult = box["result"]
    assert result.status == "rejected" and result.approval is not None
    assert result.approval.decision == "timeout-reject"
    assert {
        a.name: snapshot_site(lab.shell).where(a.name) for a in lab.site.service.agents
    } == before
    msg = _approval_message(slack, box["run_id"])
    assert msg is not None and "rejected by policy" in msg.text
    assert not any(b["type"] == "actions" for b in msg.blocks)


def test_an_automatic_switch_counts_down_in_slack_and_reject_aborts_it(
    lab: RunningLab, slack: FakeSlack, gateway: Gateway, tmp_path: Path
) -> None:
    """The countdown of a switch started by a sensor: a message in Slack saying what will
    happen in how long unless aborted; an approver's Reject aborts it, and nothing changes."""
    import yaml

    from flows.switch import SwitchResult, switch
    from tasks.adapters.dns import read_alias

    data = yaml.safe_load(lab.site_file.read_text())
    data["frontend"].update({"countdown_s": 120, "block_s": 0})
    site_file = tmp_path / "countdown.yaml"
    site_file.write_text(yaml.safe_dump(data))
    dns = lab.site.dns
    assert dns is not None
    before = [read_alias(dns, s).addresses for s in dns.servers()]
    master = next(h.name for h in lab.site.hosts if [h.address] == before[0])
    box: dict[str, Any] = {}

    def watch(kind: str, data: dict[str, Any]) -> None:
        if kind == "approval-wait":
            box["run_id"] = data["run_id"]

    def target() -> None:
        with progress.sink(watch):
            state = switch(str(site_file), failed_host=master, return_state=True)
        box["result"] = state.result(raise_on_failure=False)

    th = threading.Thread(target=target)
    th.start()
    run_id = _wait_for_approval(box)
    msg = wait_for(lambda: _approval_message(slack, run_id), 10, "the countdown message")
    shown = json.dumps(msg.blocks)
    assert "in 120 s unless aborted" in shown and "proceed" in shown, shown
    status, answer = gateway.click(APPROVER, "reject", run_id, slack.response_url())
    assert status == 200 and answer["ok"], answer
    th.join(120)
    result = box["result"]
    assert isinstance(result, SwitchResult) and result.status == "rejected", result
    assert [read_alias(dns, s).addresses for s in dns.servers()] == before
