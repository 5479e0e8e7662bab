"""The two-person rule at the gateway's decider, against runs paused on a real Prefect server: a
requester named in a run's parameters is a claim (two approvers), the monitoring is a verified
requester only for a run that carries the gateway's seal of its alert (one approver), and the
first approval counts for the pause it was given at only."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect import flow
from prefect.client.orchestration import get_client

from config.loader import load_site
from flows import progress
from flows.approval import approve
from flows.seals import alert_seal, alert_seal_key, seal_key
from infra.gateway.decide import Decider
from tests.conftest import LAB_SITE, wait_for

FIRST, SECOND = "U0LABOPS1", "U0LABOPS2"
WEBHOOK = "two-person-test-webhook-secret-0123"


@pytest.fixture
def site_file(tmp_path: Path) -> Path:
    data = yaml.safe_load(LAB_SITE.read_text())
    data["slack"].update(
        {"approvers": [FIRST, SECOND], "two_person_rule": True, "operators": {"alice": FIRST}}
    )
    path = tmp_path / "lab.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@flow(name="two-person-test", persist_result=False)
def _asks(
    site_file: str, host: str, alert_id: str, alert_seal: str, requested_by: str, asks: int
) -> list[str]:
    """A run with an alert-started run's parameters that asks `asks` times."""
    site = load_site(site_file)
    policy = site.policy("clean-move").model_copy(update={"approval": "required"})
    return [
        approve(policy, True, requested_by, f"decision {n + 1}", slack=None).decision
        for n in range(asks)
    ]


class Paused:
    """A run of `_asks` in a thread, and what it decided."""

    def __init__(self, site_file: Path, asks: int = 1, **params: str) -> None:
        self.box: dict[str, Any] = {}
        args = {"host": "fts101", "alert_id": "", "alert_seal": "", "requested_by": "", **params}

        def watch(kind: str, data: dict[str, Any]) -> None:
            if kind == "approval-wait":
                self.box["run_id"] = data["run_id"]

        def target() -> None:
            with progress.sink(watch):
                self.box["decisions"] = _asks(str(site_file), asks=asks, **args)

        self.thread = threading.Thread(target=target)
        self.thread.start()
        self.run_id = str(wait_for(lambda: self.box.get("run_id"), 60, "the approval request"))

    def pause_key(self) -> str | None:
        with get_client(sync_client=True) as client:
            st = client.read_flow_run(self.run_id).state
        return str(st.state_details.pause_key) if st is not None and st.is_paused() else None

    def end(self) -> list[str]:
        if self.thread.is_alive() and self.pause_key():
            from flows.approval import resume_with_input

            resume_with_input(self.run_id, run_input={"decision": "reject", "who": "teardown"})
        self.thread.join(60)
        return list(self.box.get("decisions") or [])


@pytest.fixture
def decider(site_file: Path, prefect_api: str) -> Iterator[Decider]:
    site = load_site(site_file)
    yield Decider(site, seal_key=seal_key("s" * 32), alert_key=alert_seal_key(WEBHOOK))


def _click(decider: Decider, user: str, run: Paused) -> Any:
    return decider.decide(
        user_id=user, user_name=user, action_id="approve", value=run.run_id, source="Slack"
    )


def test_a_requester_named_in_the_parameters_needs_two_approvers(
    decider: Decider, site_file: Path
) -> None:
    """alice is named as the requester: her Slack user may not approve, and another approver,
    who could have typed her name, may not approve alone."""
    run = Paused(site_file, requested_by="alice")
    try:
        wait_for(run.pause_key, 30, "the run to pause")
        assert _click(decider, FIRST, run).reason == "own-request"
        assert _click(decider, SECOND, run).reason == "second-approver-needed"
        assert run.pause_key()
    finally:
        assert run.end() == ["reject"]


def test_an_alerts_run_sealed_by_the_gateway_needs_one_approver(
    decider: Decider, site_file: Path
) -> None:
    sealed = alert_seal(alert_seal_key(WEBHOOK), "evt-1", "fts101", time.time())
    run = Paused(site_file, alert_id="evt-1", alert_seal=sealed, requested_by="alert from x")
    try:
        wait_for(run.pause_key, 30, "the run to pause")
        assert _click(decider, FIRST, run).resumed
    finally:
        assert run.end() == ["approve"]


def test_an_alerts_run_with_a_forged_seal_needs_two_approvers(
    decider: Decider, site_file: Path
) -> None:
    forged = alert_seal(alert_seal_key("not-the-webhook-secret"), "evt-2", "fts101", time.time())
    run = Paused(site_file, alert_id="evt-2", alert_seal=forged, requested_by="alert from x")
    try:
        wait_for(run.pause_key, 30, "the run to pause")
        assert _click(decider, FIRST, run).reason == "second-approver-needed"
        assert _click(decider, SECOND, run).resumed
    finally:
        assert run.end() == ["approve"]


def test_a_first_approval_counts_for_its_own_pause_only(decider: Decider, site_file: Path) -> None:
    """A run that asks twice: the first approver of the first pause is not the first approver
    of the second; each pause needs its two."""
    run = Paused(site_file, asks=2, requested_by="bob")
    try:
        first = wait_for(run.pause_key, 30, "the first pause")
        assert _click(decider, FIRST, run).reason == "second-approver-needed"
        assert _click(decider, SECOND, run).resumed
        wait_for(lambda: run.pause_key() not in (None, first), 30, "the second pause")
        assert _click(decider, SECOND, run).reason == "second-approver-needed"
        assert _click(decider, FIRST, run).resumed
    finally:
        assert run.end() == ["approve", "approve"]
