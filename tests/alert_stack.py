"""What the alert-triggered tests share: `handover serve` and `handover gateway` as real
processes for a test lab (`Stack`), and how to read the runs they start."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import FlowRun

from infra.bench.alert import ServeAndGateway
from infra.fakeslack import FakeSlack
from infra.ports import free_port
from infra.send_alert import alert_body, post_alert
from tests.conftest import RunningLab, wait_final_or_explain

SECRET = b"alert-test-webhook-secret-0123456789"
AM_TOKEN = "alert-test-am-token"
SLACK_TOKEN = "xoxb-alert-test"


class Stack(ServeAndGateway):
    """`handover serve` and `handover gateway` for the test lab, and their environment."""

    def __init__(
        self, lab: RunningLab, prefect_api: str, slack: FakeSlack, log_dir: Path | None = None
    ) -> None:
        super().__init__(
            lab.site_file,
            free_port(),
            log_dir=log_dir,
            env={
                **os.environ,
                "PREFECT_API_URL": prefect_api,
                "HANDOVER_WEBHOOK_SECRET": SECRET.decode(),
                "HANDOVER_ALERTMANAGER_TOKEN": AM_TOKEN,
                "HANDOVER_SLACK_API_URL": slack.base_url,
                "HANDOVER_SLACK_BOT_TOKEN": SLACK_TOKEN,
                "HANDOVER_SLACK_SIGNING_SECRET": "alert-test-slack-signing-secret",
                # for sites with `alerts.incident_store: {env: HANDOVER_INCIDENT_STORE}`
                "HANDOVER_INCIDENT_STORE": incident_store(lab),
            },
        )
        self.lab = lab
        self.slack = slack
        #: when this test process last sent an alert about each host (`time.time`)
        self.alerted: dict[str, float] = {}

    def opened(self, host: str) -> float:
        """When the gateway last opened an incident for `host` (`time.time`, from its audit
        lines; 0 when it never did). Alerts from the lab's Pacemaker reach it a few seconds
        after the test caused them, and the windows count from their arrival."""
        latest = 0.0
        for line in self.gateway_lines(f'"host": "{host}"', '"result": "new"'):
            audit = json.loads(line.split("handover.audit ", 1)[1])
            # a second's margin: the alert's event reaches Prefect's triggers after the line
            latest = max(latest, dt.datetime.fromisoformat(audit["at"]).timestamp() + 1)
        return latest

    def quiet(self, host: str) -> None:
        """Wait until the triggers' window (the dedup window) of the last alert about `host`
        has passed: a trigger that fired for a host ignores its events for that long (and the
        gateway attaches them to its incident), so a test's alert would otherwise be swallowed
        by an earlier test's."""
        assert self.lab.site.alerts is not None
        window = self.lab.site.alerts.dedup_window_s + 1
        last = max(self.alerted.get(host, 0.0), self.opened(host))
        left = last + window - time.time()
        if left > 0:
            time.sleep(left)

    def wait_final(self, run_id: Any, timeout: float) -> FlowRun:
        """Wait for a run of this stack to end and return it; on a timeout, fail with the run's
        states and last log lines and the tails of `handover serve`'s and the gateway's logs."""
        logs = (
            {}
            if self.log_dir is None
            else {name: self.log_dir / f"{name}.log" for name in ("serve", "gateway")}
        )
        run: FlowRun = wait_final_or_explain(run_id, timeout, logs)
        return run

    def send(self, host: str, kind: str = "host_down", **kw: Any) -> tuple[int, dict[str, Any]]:
        self.alerted[host] = time.time()
        body = alert_body(self.lab.site.site, host, self.lab.site.service.name, kind, **kw)
        # what is asserted is how alerts are counted, not how fast they are answered (the bench
        # measures that): a loaded machine may take longer than a hook's 5 s with 16 at once
        return post_alert(self.url, SECRET, body, timeout_s=60)


def incident_store(lab: RunningLab) -> str:
    """The URL of a shared incident book in the lab's PostgreSQL (created empty once)."""
    db = lab.lab.db
    if not db.psql_admin("SELECT 1 FROM pg_database WHERE datname = 'handover_incidents'").strip():
        db.psql_admin("CREATE DATABASE handover_incidents OWNER fts")
    password = urllib.parse.quote(db.password(), safe="")
    return f"postgresql://fts:{password}@{db.address}:{db.port}/handover_incidents"


def stack_fixture(
    lab: RunningLab, prefect_api: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The body of a module's `stack` fixture: started for the module, stopped after it."""
    with FakeSlack(tokens={SLACK_TOKEN}) as slack:
        s = Stack(lab, prefect_api, slack, log_dir=tmp_path_factory.mktemp("stack"))
        s.start()
        try:
            yield s
        finally:
            s.stop()


def emergency_runs(host: str | None = None) -> list[FlowRun]:
    """The emergency moves of every site's deployment (of `host` only, when given)."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["emergency-move"]))
        )
    return [r for r in runs if host is None or r.parameters.get("host") == host]


def switch_runs(failed_host: str, since: dt.datetime) -> list[FlowRun]:
    """The switch runs an alert for `failed_host` started after `since` (a host that dies
    also starts one: earlier tests' runs are not this test's)."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["switch"])))
    return [
        r
        for r in runs
        if r.parameters.get("failed_host") == failed_host and r.created and r.created >= since
    ]


def alias_host(lab: RunningLab) -> str:
    """The host the service alias points at (on the primary)."""
    from tasks.adapters.dns import read_alias

    assert lab.site.dns is not None
    [address] = read_alias(lab.site.dns, lab.site.dns.servers()[0]).addresses
    return next(h.name for h in lab.site.hosts if h.address == address)


def run_logs(run_id: Any) -> list[str]:
    """Every log message of the run (read a page of 200 at a time)."""
    out: list[str] = []
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])),
                limit=200,
                offset=len(out),
            )
            out += [entry.message for entry in page]
            if len(page) < 200:
                return out
