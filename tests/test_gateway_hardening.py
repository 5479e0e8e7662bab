"""The gateway refuses to start on weak secrets, honours the site's limits on Slack requests,
follows response URLs only to Slack, and keeps bounded memory (pure: no Prefect, no lab)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from config.loader import load_site
from infra.fakeslack import interaction_body, signed_headers
from infra.gateway.app import create_app
from infra.gateway.decide import AUDIT_KEEP, Decider
from infra.gateway.server import GatewayError, build, build_intake
from tasks.adapters.slack import response_url_allowed
from tests.conftest import LAB_SITE

SIGNING = "a-signing-secret-of-32-characters"


def _site_file(tmp_path: Path, **changes: Any) -> Path:
    data = yaml.safe_load(LAB_SITE.read_text())
    for dotted, value in changes.items():
        node = data
        *path, last = dotted.split("__")
        for key in path:
            node = node.setdefault(key, {})
        node[last] = value
    out = tmp_path / "site.yaml"
    out.write_text(yaml.safe_dump(data))
    return out


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv("HANDOVER_SLACK_SIGNING_SECRET", SIGNING)
    monkeypatch.setenv("HANDOVER_SLACK_BOT_TOKEN", "xoxb-hardening")
    monkeypatch.setenv("HANDOVER_WEBHOOK_SECRET", "w" * 24)
    monkeypatch.setenv("HANDOVER_ALERTMANAGER_TOKEN", "t" * 24)
    return monkeypatch


def test_an_empty_signing_secret_stops_the_gateway(tmp_path: Path, env: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "signing.secret"
    empty.write_text("\n")
    empty.chmod(0o600)
    site_file = _site_file(tmp_path, slack__signing_secret={"file": str(empty)})
    with pytest.raises(
        GatewayError, match=r"slack.signing_secret \(file .*signing.secret\) is empty"
    ):
        build(str(site_file))


def test_a_webhook_secret_file_others_can_read_stops_the_gateway_naming_the_fix(
    tmp_path: Path, env: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "webhook.secret"
    shared.write_text("w" * 24 + "\n")
    shared.chmod(0o644)
    site_file = _site_file(tmp_path, alerts__webhook_secret={"file": str(shared)})
    site, decider, _ = build(str(site_file))
    with pytest.raises(GatewayError, match=rf"alerts.webhook_secret: .*`chmod 600 {shared}`"):
        build_intake(site, decider)
    shared.chmod(0o600)
    assert build_intake(site, decider) is not None


@pytest.mark.parametrize(
    ("variable", "reference"),
    [
        ("HANDOVER_SLACK_SIGNING_SECRET", "slack.signing_secret"),
        ("HANDOVER_WEBHOOK_SECRET", "alerts.webhook_secret"),
        ("HANDOVER_ALERTMANAGER_TOKEN", "alerts.alertmanager.bearer_token"),
        ("HANDOVER_SLACK_BOT_TOKEN", "slack.bot_token"),
    ],
)
def test_a_short_secret_stops_the_gateway_naming_it(
    env: pytest.MonkeyPatch, variable: str, reference: str
) -> None:
    env.setenv(variable, "short")
    with pytest.raises(GatewayError, match=rf"{reference} \(environment variable {variable}\)"):
        site, decider, _ = build(str(LAB_SITE))
        build_intake(site, decider)


def test_response_urls_are_followed_only_to_slack(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HANDOVER_SLACK_API_URL", raising=False)
    assert response_url_allowed("https://hooks.slack.com/actions/T0/1/abc")
    for url in (
        "http://hooks.slack.com/actions/T0/1/abc",  # not TLS
        "https://hooks.slack.com.evil.example/actions",
        "https://169.254.169.254/latest/meta-data",
        "https://evil.example/?https://hooks.slack.com/",
        "file:///etc/passwd",
    ):
        assert not response_url_allowed(url), url
    # a rehearsal against a fake Slack: its host only
    monkeypatch.setenv("HANDOVER_SLACK_API_URL", "http://127.0.0.1:8788/api/")
    assert response_url_allowed("http://127.0.0.1:8788/response/1")
    assert not response_url_allowed("http://127.0.0.1:9999/response/1")


def _client(site_file: Path) -> tuple[TestClient, Decider]:
    site = load_site(site_file)
    decider = Decider(site)
    return TestClient(create_app(site, SIGNING, decider)), decider


def test_slack_requests_follow_the_sites_window_and_size(
    tmp_path: Path, env: pytest.MonkeyPatch
) -> None:
    site_file = _site_file(tmp_path, alerts__signature_window_s=60, alerts__max_body_bytes=2048)
    client, _ = _client(site_file)
    with client:
        body = interaction_body(user_id="U0LABOPS1", action_id="approve", value="x")
        old = signed_headers(SIGNING, body, timestamp=int(time.time()) - 120)
        r = client.post("/slack/interactions", content=body, headers=old)
        assert r.status_code == 401 and "stale" in r.json()["error"]
        big = body + "&pad=" + "x" * 4096
        r = client.post("/slack/interactions", content=big, headers=signed_headers(SIGNING, big))
        assert r.status_code == 413 and "2048" in r.json()["error"]


def test_the_audit_kept_in_memory_is_bounded(env: pytest.MonkeyPatch) -> None:
    decider = Decider(load_site(LAB_SITE))
    for i in range(AUDIT_KEEP + 50):
        decider.record(result="refused", reason="bad signature", n=i)
    assert len(decider.audit) == AUDIT_KEEP and decider.audit[-1]["n"] == AUDIT_KEEP + 49


def test_a_failed_group_refresh_falls_back_to_the_listed_approvers(
    tmp_path: Path, env: pytest.MonkeyPatch
) -> None:
    import infra.gateway.decide as decide

    site = load_site(_site_file(tmp_path, slack__approver_group="S0OPS"))
    answers: list[Any] = [["U0ONCALL1"], RuntimeError("slack is down")]

    def members(_group: str) -> list[str]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return list(answer)

    decider = Decider(site, group_members=members)
    env.setattr(decide, "GROUP_CACHE_S", 0.0)
    assert decider.approvers() == {"U0LABOPS1", "U0ONCALL1"}
    assert decider.approvers() == {"U0LABOPS1"}  # not the members of before


def test_a_click_while_the_prefect_api_is_down_is_answered_503(env: pytest.MonkeyPatch) -> None:
    import socket
    import uuid

    from prefect.settings import PREFECT_API_URL, temporary_settings

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    site = load_site(LAB_SITE)
    app = create_app(site, SIGNING, Decider(site))
    body = interaction_body(user_id="U0LABOPS1", action_id="approve", value=str(uuid.uuid4()))
    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{dead}/api"}):
        with TestClient(app, raise_server_exceptions=False) as client:
            r = client.post(
                "/slack/interactions", content=body, headers=signed_headers(SIGNING, body)
            )
    assert r.status_code == 503 and "nothing was resumed" in r.json()["error"]
