"""The gateway's approver set: the listed approvers plus the members of the approver group, read
through the gateway's own wiring (slack_sdk against the fake Slack Web API)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from infra.fakeslack import FakeSlack
from infra.gateway.server import build
from tests.conftest import LAB_SITE


def test_group_members_are_approvers_through_the_gateway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = yaml.safe_load(LAB_SITE.read_text())
    data["slack"]["approver_group"] = "S0OPS"
    site_file = tmp_path / "group.yaml"
    site_file.write_text(yaml.safe_dump(data))
    with FakeSlack(tokens={"xoxb-group"}, usergroups={"S0OPS": ["U0ONCALL1", "U0ONCALL2"]}) as f:
        monkeypatch.setenv("HANDOVER_SLACK_API_URL", f.base_url)
        monkeypatch.setenv("HANDOVER_SLACK_BOT_TOKEN", "xoxb-group")
        monkeypatch.setenv("HANDOVER_SLACK_SIGNING_SECRET", "s" * 32)
        _site, decider, _secret = build(str(site_file))
        assert decider.approvers() == {"U0LABOPS1", "U0ONCALL1", "U0ONCALL2"}
        assert "U0INTRUDER" not in decider.approvers()


def test_without_a_group_only_the_listed_approvers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HANDOVER_SLACK_SIGNING_SECRET", "s" * 32)
    _site, decider, _secret = build(str(LAB_SITE))
    assert decider.approvers() == {"U0LABOPS1"}
