"""Several sites and services on one Prefect server and one gateway: each site's deployments are
its own (`infra.serve.deployment_name`), with its own site file and triggers; the gateway routes
an alert to the site its labels name and checks it with that site's credentials only; the crash
recovery starts a crashed run's own site's deployment again. Against a real Prefect server (the
session's `prefect_api`); no lab: the runs are created, not executed."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

from config.loader import load_site
from config.site import Site
from infra.gateway.alerts import sign
from infra.gateway.decide import Decider
from infra.gateway.sites import AlertSecrets, Refused, SiteGateway, Sites, SitesError
from infra.gateway.starts import RunStarter, idempotency_key
from infra.serve import (
    DEPLOYMENTS_FILE,
    deployment_entry,
    deployment_name,
    entry_applies,
    read_deployments,
    site_triggers,
)
from tests.conftest import LAB_SITE, ROOT, wait_for

#: the two sites' credentials, each its own (the site files name them by environment variable)
SECRETS = {
    "a": {"webhook": "multi-a-webhook-secret-0123456789", "am": "multi-a-am-token-0123456789"},
    "b": {"webhook": "multi-b-webhook-secret-0123456789", "am": "multi-b-am-token-0123456789"},
}


def _site_file(directory: Path, which: str) -> Path:
    """The lab's site as site `multi-<which>`, service `fts-<which>`, with alerts signed with its
    own secrets and no Slack (its deployments are only registered here)."""
    data = yaml.safe_load(LAB_SITE.read_text())
    data["site"] = f"multi-{which}"
    data["service"]["name"] = f"fts-{which}"
    data.pop("slack")
    data["alerts"] = {
        "webhook_secret": {"env": f"HANDOVER_TEST_MULTI_{which.upper()}_WEBHOOK"},
        "alertmanager": {"bearer_token": {"env": f"HANDOVER_TEST_MULTI_{which.upper()}_AM"}},
        "dedup_window_s": 300,
    }
    path = directory / f"multi-{which}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Site A and site B's files, their secrets in the environment."""
    directory = tmp_path_factory.mktemp("sites")
    with pytest.MonkeyPatch.context() as mp:
        for which, s in SECRETS.items():
            mp.setenv(f"HANDOVER_TEST_MULTI_{which.upper()}_WEBHOOK", s["webhook"])
            mp.setenv(f"HANDOVER_TEST_MULTI_{which.upper()}_AM", s["am"])
        yield {which: _site_file(directory, which) for which in SECRETS}


# --- names, pure ------------------------------------------------------------------------------


def test_a_deployments_name_is_its_procedure_at_its_site_and_service() -> None:
    site = load_site(LAB_SITE)
    assert deployment_name("clean-move", site) == "clean-move@lab:fts-lab"
    assert deployment_entry("clean-move@lab:fts-lab") == "clean-move"
    assert deployment_entry("clean-move") == "clean-move"  # a name without its site


def test_each_sites_triggers_match_its_site_and_service_only() -> None:
    site = load_site(LAB_SITE)
    [entry] = [d for d in read_deployments(DEPLOYMENTS_FILE) if d["name"] == "emergency-move"]
    [trigger] = site_triggers(entry["name"], entry["triggers"], site)
    assert trigger.match["handover.site"] in ("lab", ["lab"])
    assert trigger.match["handover.service"] in ("fts-lab", ["fts-lab"])
    assert trigger.name == "emergency-move@lab:fts-lab: alert 1"


def test_one_site_and_service_given_twice_is_refused_before_anything(
    sites: dict[str, Path], tmp_path: Path
) -> None:
    """Two files of one site and service would register the same deployments: `handover serve`
    and `handover deploy` refuse them, naming both (and change nothing)."""
    from infra.serve import DeploymentsError, distinct_sites

    copy = tmp_path / "again.yaml"
    shutil.copy(sites["a"], copy)
    assert [s.site for s in distinct_sites([str(sites["a"]), str(sites["b"])])] == [
        "multi-a",
        "multi-b",
    ]
    with pytest.raises(DeploymentsError, match="both site multi-a, service fts-a"):
        distinct_sites([str(sites["a"]), str(copy)])
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "infra.cli",
            "deploy",
            "--site",
            str(sites["a"]),
            "--site",
            str(copy),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"},
    )
    assert done.returncode == 2 and "give each site and service once" in done.stderr, done.stderr


def test_an_incidents_runs_are_keyed_by_its_sites_deployment(sites: dict[str, Path]) -> None:
    """The same event id (the same alert sent to both sites' gateways) keys different runs."""
    a, b = (RunStarter(load_site(sites[w])) for w in "ab")
    key_a = idempotency_key("e1", a.name_of("emergency-move"))
    key_b = idempotency_key("e1", b.name_of("emergency-move"))
    assert key_a == "handover incident e1 emergency-move@multi-a:fts-a"
    assert key_a != key_b


def test_sites_sharing_alert_credentials_or_given_twice_are_refused(
    sites: dict[str, Path],
) -> None:
    a, b = (load_site(sites[w]) for w in "ab")

    def gw(site: Site, webhook: str, token: str = "t") -> SiteGateway:
        secrets = AlertSecrets(webhook.encode(), am_token=token)
        intake: Any = _NoIntake()
        return SiteGateway(site, None, Decider(site), intake=intake, alert_secrets=secrets)

    with pytest.raises(SitesError, match="share their webhook secret"):
        Sites([gw(a, "one-secret-0123456789"), gw(b, "one-secret-0123456789")])
    with pytest.raises(SitesError, match="Alertmanager bearer token"):
        Sites([gw(a, "secret-a-0123456789", "tok"), gw(b, "secret-b-0123456789", "tok")])
    with pytest.raises(SitesError, match="given twice"):
        Sites([gw(a, "secret-a-0123456789", "x"), gw(a, "secret-b-0123456789", "y")])


class _NoIntake:
    """Stands for an alert intake where only the routing is tested."""


def test_a_slack_click_is_verified_with_each_sites_own_signing_secret(
    sites: dict[str, Path],
) -> None:
    """A click signed with site A's signing secret is A's to decide, never B's; one signed with
    neither is refused (401); two sites of one Slack app both verify it (the run's site decides,
    `Decider.decide`)."""
    from slack_sdk.signature import SignatureVerifier

    a, b = (load_site(sites[w]) for w in "ab")
    ga = SiteGateway(a, "slack-secret-of-a-0123456789", Decider(a))
    gb = SiteGateway(b, "slack-secret-of-b-0123456789", Decider(b))
    both = Sites([ga, gb])
    now = int(time.time())
    body = b"payload=%7B%7D"

    def signed(secret: str) -> str:
        return str(SignatureVerifier(secret).generate_signature(timestamp=str(now), body=body))

    assert both.slack(str(now), signed("slack-secret-of-a-0123456789"), body, now) == [ga]
    assert both.slack(str(now), signed("slack-secret-of-b-0123456789"), body, now) == [gb]
    with pytest.raises(Refused) as refused:
        both.slack(str(now), signed("someone-elses-secret-0123456789"), body, now)
    assert refused.value.status == 401 and refused.value.reason == "bad signature"
    one_app = Sites([ga, SiteGateway(b, "slack-secret-of-a-0123456789", Decider(b))])
    assert len(one_app.slack(str(now), signed("slack-secret-of-a-0123456789"), body, now)) == 2


# --- on a real Prefect server -------------------------------------------------------------------


@pytest.fixture(scope="module")
def deployed(sites: dict[str, Path], prefect_api: str) -> dict[str, dict[str, Any]]:
    """`handover deploy --site A`, then `--site B`, on one server: each site's deployments by
    entry (the geo ones are not the lab's)."""
    from infra.serve import deploy_all

    for which in "ab":
        deploy_all(str(sites[which]))
    out: dict[str, dict[str, Any]] = {}
    with get_client(sync_client=True) as client:
        for which in "ab":
            site = load_site(sites[which])
            out[which] = {
                d["name"]: client.read_deployment_by_name(
                    f"{d['name']}/{deployment_name(d['name'], site)}"
                )
                for d in read_deployments(DEPLOYMENTS_FILE)
                if entry_applies(d, site)
            }
    return out


def test_two_sites_deployed_on_one_server_keep_their_own_deployments_and_triggers(
    sites: dict[str, Path], deployed: dict[str, dict[str, Any]]
) -> None:
    """B's deploy left A's deployments as A made them: their own site file, tags and triggers
    (each automation matches its own site and service)."""
    for which in "ab":
        site = load_site(sites[which])
        for entry, dep in deployed[which].items():
            assert dep.name == f"{entry}@multi-{which}:fts-{which}"
            assert dep.parameters["site_file"] == str(sites[which].resolve()), dep.name
            assert {f"site:multi-{which}", f"service:fts-{which}"} <= set(dep.tags), dep.tags
        with get_client(sync_client=True) as client:
            for entry in ("emergency-move", "switch"):
                dep = deployed[which][entry]
                [automation] = client.read_resource_related_automations(
                    f"prefect.deployment.{dep.id}"
                )
                match = automation.trigger.match
                assert match["handover.site"] in (site.site, [site.site]), automation.name
                assert match["handover.service"] in (
                    site.service.name,
                    [site.service.name],
                ), automation.name
                assert automation.name.startswith(dep.name), automation.name
    assert {d.id for d in deployed["a"].values()}.isdisjoint(d.id for d in deployed["b"].values())


def test_deploying_a_site_retires_its_deployments_named_as_before(
    sites: dict[str, Path], deployed: dict[str, dict[str, Any]]
) -> None:
    """A server that ran handover before its deployments were named per site has `clean-move`
    and the like: `handover deploy --site A` deletes those whose site is A (their triggers would
    still start runs nothing serves), and leaves one whose site is another's."""
    from infra.serve import deploy_all, load_flow

    [entry] = [d for d in read_deployments(DEPLOYMENTS_FILE) if d["name"] == "fence-host"]
    old = load_flow(entry["entrypoint"]).to_deployment(
        name="fence-host", parameters={"site_file": str(sites["a"].resolve())}
    )
    old_id = old.apply()
    lines = deploy_all(str(sites["a"]))
    assert f"fence-host/fence-host {old_id} deleted: named as before per site" in lines
    with get_client(sync_client=True) as client:
        assert not client.read_deployments(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[old_id]))
        )
    other = load_flow(entry["entrypoint"]).to_deployment(
        name="fence-host", parameters={"site_file": str(LAB_SITE.resolve())}
    )
    other_id = other.apply()
    assert not any("deleted" in line for line in deploy_all(str(sites["a"])))
    with get_client(sync_client=True) as client:
        assert client.read_deployment(other_id).name == "fence-host"
        client.delete_deployment(other_id)


def _body(which: str, host: str = "fts105", **over: Any) -> bytes:
    data = {
        "site": f"multi-{which}",
        "host": host,
        "service": f"fts-{which}",
        "kind": "host_down",
        "time": dt.datetime.now(dt.UTC).isoformat(),
        "summary": f"{host} of site {which} down",
        **over,
    }
    return json.dumps(data).encode()


def _post(client: Any, body: bytes, secret: str) -> Any:
    ts = int(time.time())
    return client.post(
        "/alerts/webhook",
        content=body,
        headers={
            "X-Handover-Timestamp": str(ts),
            "X-Handover-Signature": sign(secret.encode(), ts, body),
        },
    )


def _runs_of(dep: Any, alert_id: str) -> list[Any]:
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id]))
        )
    return [r for r in runs if r.parameters.get("alert_id") == alert_id]


def test_the_gateway_starts_an_alerts_runs_on_the_site_it_names_only(
    sites: dict[str, Path], deployed: dict[str, dict[str, Any]]
) -> None:
    """`handover gateway --site A --site B`: an alert for A starts A's emergency move only, one
    for B B's only (once, however often it is sent); one for a site it does not serve is refused
    (422, audited) to a sender holding a site's secret, and as a bad signature (401) to anyone
    else; an alert for B signed with A's secret is refused (401)."""
    from fastapi.testclient import TestClient

    from infra.gateway.app import create_sites_app
    from infra.gateway.server import build_sites

    both = build_sites([str(sites["a"]), str(sites["b"])])
    with TestClient(create_sites_app(both)) as client:
        answers = {}
        bodies = {which: _body(which) for which in "ab"}
        for which in "ab":
            resp = _post(client, bodies[which], SECRETS[which]["webhook"])
            assert resp.status_code == 202, resp.text
            [answers[which]] = resp.json()["alerts"]
            assert answers[which]["result"] == "new", answers[which]
        for which, other in (("a", "b"), ("b", "a")):
            event = answers[which]["event_id"]
            [run] = _runs_of(deployed[which]["emergency-move"], event)
            assert str(run.id) == answers[which]["run_id"]
            assert run.parameters["site_file"] == str(sites[which].resolve())
            assert run.parameters["host"] == "fts105"
            assert _runs_of(deployed[other]["emergency-move"], event) == []
        # the same alert again: attached to its incident, no second run
        again = _post(client, bodies["a"], SECRETS["a"]["webhook"])
        assert again.status_code == 202 and again.json()["alerts"][0]["result"] == "attached"
        assert len(_runs_of(deployed["a"]["emergency-move"], answers["a"]["event_id"])) == 1
        refused = _post(client, _body("c"), SECRETS["a"]["webhook"])
        assert refused.status_code == 422, refused.text
        assert "unknown site 'multi-c'" in refused.json()["error"]
        assert "multi-a (service fts-a), multi-b (service fts-b)" in refused.json()["error"]
        stranger = _post(client, _body("c"), "not-a-site-secret-0123456789")
        assert stranger.status_code == 401 and stranger.json()["error"] == "bad signature"
        crossed = _post(client, _body("b", host="fts106"), SECRETS["a"]["webhook"])
        assert crossed.status_code == 401 and crossed.json()["error"] == "bad signature"
    # each refusal is an audit line of the site it concerns (B's for the crossed alert), and
    # the crossed alert reached no book
    audit_a = [e for e in both.gateways[0].decider.audit if e.get("result") == "refused"]
    assert any("unknown site 'multi-c'" in e["reason"] for e in audit_a), audit_a
    audit_b = [e for e in both.gateways[1].decider.audit if e.get("result") == "refused"]
    assert [e["status"] for e in audit_b] == [401], audit_b
    assert not any(e.get("host") == "fts106" for e in both.gateways[1].decider.audit)


def test_alertmanager_alerts_go_to_their_sites_with_that_sites_credentials(
    sites: dict[str, Path], deployed: dict[str, dict[str, Any]]
) -> None:
    """One notification with A's token: A's alert is taken, B's is refused (its credentials
    were not given), an alert without a site label is A's (the only site whose credentials
    were given), and a token of no site is refused whole (401)."""
    from fastapi.testclient import TestClient

    from infra.gateway.app import create_sites_app
    from infra.gateway.server import build_sites

    now = dt.datetime.now(dt.UTC).isoformat()

    def item(labels: dict[str, str]) -> dict[str, Any]:
        return {
            "status": "firing",
            "labels": {"alertname": "HostDown", "handover_kind": "host_down", **labels},
            "annotations": {"summary": "down"},
            "startsAt": now,
            "fingerprint": json.dumps(labels, sort_keys=True),
        }

    payload = {
        "version": "4",
        "status": "firing",
        "alerts": [
            item({"site": "multi-a", "service": "fts-a", "host": "fts106"}),
            item({"site": "multi-b", "service": "fts-b", "host": "fts106"}),
            item({"host": "fts102"}),
        ],
    }
    both = build_sites([str(sites["a"]), str(sites["b"])])
    with TestClient(create_sites_app(both)) as client:
        resp = client.post(
            "/alerts/alertmanager",
            json=payload,
            headers={"Authorization": f"Bearer {SECRETS['a']['am']}"},
        )
        assert resp.status_code == 202, resp.text
        data = resp.json()
        assert [a["host"] for a in data["alerts"]] == ["fts106", "fts102"], data
        [refusal] = data["refused"]
        assert refusal.startswith("alerts[1]") and "multi-b (service fts-b)" in refusal
        for answer in data["alerts"]:
            assert _runs_of(deployed["a"]["emergency-move"], answer["event_id"]), answer
            assert not _runs_of(deployed["b"]["emergency-move"], answer["event_id"]), answer
        nobody = client.post(
            "/alerts/alertmanager", json=payload, headers={"Authorization": "Bearer nope"}
        )
        assert nobody.status_code == 401


def test_one_handover_serve_serves_both_sites(
    sites: dict[str, Path], deployed: dict[str, dict[str, Any]], prefect_api: str, tmp_path: Path
) -> None:
    """`handover serve --site A --site B`: one process registers and polls both sites'
    deployments (Prefect marks each polled)."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    from infra.bench.alert import stop_groups

    every = [d for which in "ab" for d in deployed[which].values()]
    # the schedules' runs due now (the drift watch's, the window notice's) are not this test's:
    # served, they would run against hosts that are not there
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=60)
    with get_client(sync_client=True) as client:
        for run in client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[d.id for d in every])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
                expected_start_time=FlowRunFilterExpectedStartTime(before_=soon),
            ),
        ):
            client.delete_flow_run(run.id)
    since = dt.datetime.now(dt.UTC)
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "infra.cli", "serve", "--poll-interval", "1"),
                *("--site", str(sites["a"]), "--site", str(sites["b"])),
            ],
            cwd=ROOT,
            env={**os.environ, "PREFECT_API_URL": prefect_api},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def polled() -> bool:
            assert proc.poll() is None, log.read_text()[-2000:]
            with get_client(sync_client=True) as client:
                now = [client.read_deployment(d.id) for d in every]
            return all(d.last_polled is not None and d.last_polled >= since for d in now)

        wait_for(polled, 120, "handover serve to poll both sites' deployments", interval=1)
    finally:
        stop_groups([proc])
    said = log.read_text()
    assert "clean-move@multi-a:fts-a" in said and "clean-move@multi-b:fts-b" in said, said


def test_a_crashed_run_of_a_site_is_started_again_on_that_sites_deployment(
    sites: dict[str, Path], deployed: dict[str, dict[str, Any]]
) -> None:
    """The recovery automation infers the deployment from the crashed run: B's crashed dry run
    is started again from B's deployment, with B's site file; A's deployment gets nothing."""
    from prefect.states import Crashed, Running

    marker = f"crash-of-b-{time.time_ns()}"
    params = {"from_host": "fts101", "to_host": "fts102", "dry_run": True, "requested_by": marker}
    dep_b, dep_a = deployed["b"]["clean-move"], deployed["a"]["clean-move"]
    with get_client(sync_client=True) as client:
        run = client.create_flow_run_from_deployment(dep_b.id, parameters=params, state=Running())
        client.set_flow_run_state(run.id, Crashed(message="test: crashed"), force=True)

    def rerun(dep: Any) -> list[Any]:
        with get_client(sync_client=True) as client:
            found = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id]))
            )
        return [r for r in found if r.parameters.get("requested_by") == marker and r.id != run.id]

    [again] = wait_for(lambda: rerun(dep_b) or None, 60, "the recovery of B's crashed run")
    assert again.parameters["site_file"] == str(sites["b"].resolve())
    assert rerun(dep_a) == []
