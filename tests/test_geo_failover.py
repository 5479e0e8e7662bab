"""The geo failover, failback and watch on the geo lab: real MariaDB replication (GTID), two
BIND masters, caching resolvers and the HTTPS tool, with clients writing through the tool's
name the whole time.

The tests run in file order on one lab and leave it as they found it (the tool active at its
first site, both masters agreeing): a planned failover and back; one master down; a killed
site failed over within its loss window, its return fenced, then the failback; the remap check.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flows.geo_failover import GeoResult, geo_failback, geo_failover
from flows.geo_records import last_lag
from flows.geo_watch import geo_watch
from infra.lab.geo.clients import Outcome, Score, client_context, score, write_once
from tasks.geo_dns import read_names
from tests.conftest import wait_for
from tests.geo_lab import RunningGeoLab, start_geo_lab

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def geo_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGeoLab]:
    yield from start_geo_lab(tmp_path_factory)


@pytest.fixture(autouse=True)
def _api(prefect_api: str) -> None:
    """Every test runs flows against the session's Prefect server."""


def run(flow: Any, g: RunningGeoLab, **kw: Any) -> GeoResult:
    state = flow(
        str(g.site_file),
        service=g.tool.name,
        pause_for_approval=False,
        return_state=True,
        **kw,
    )
    result = state.result(raise_on_failure=False)
    assert isinstance(result, GeoResult), result
    return result


def promoted_at(r: GeoResult) -> dict[int, dt.datetime]:
    """When the run's target was promoted, by its new epoch (for the fenced-accepts count)."""
    assert r.new_epoch is not None
    at = next(s.ended_at for s in r.steps if s.step in ("promote", "repoint-names"))
    return {r.new_epoch: at}


def scored(g: RunningGeoLab, outcomes: list[Outcome], site: str, r: GeoResult) -> Score:
    return score(outcomes, g.lab.rows(site), promoted_at(r))


def where(g: RunningGeoLab) -> list[tuple[str, list[str], int | None]]:
    return [(a.master, a.addresses, a.epoch) for a in read_names(g.geo, g.tool) if not a.error]


def serving_at(g: RunningGeoLab, site: str) -> None:
    """Wait until a write through the name lands at `site` (the resolvers followed)."""

    def lands() -> bool:
        o = write_once(
            f"probe-{site}-{time.monotonic_ns()}",
            g.name,
            g.tool.port,
            g.resolver(site),
            client_context(g.lab.ca_file()),
        )
        return o.ok and o.site == site

    wait_for(lands, g.geo.ttl_s + 10, f"a write through {g.name} to land at {site}")


def test_a_planned_failover_and_back_loses_no_write_and_no_fenced_side_accepts_one(
    geo_lab: RunningGeoLab,
) -> None:
    g = geo_lab
    a, b = g.sites
    load = g.lab.client(b, rate=20)
    load.start()
    try:
        wait_for(lambda: sum(o.ok for o in load.outcomes()) >= 10, 15, "writes acknowledged")
        there = run(geo_failover, g, to=b, reason="planned maintenance of " + a)
        assert there.status == "completed", there.summary
        assert there.mode == "planned" and (there.old_epoch, there.new_epoch) == (1, 2)
        assert {r.step for r in there.steps} >= {"source-read-only", "catch-up", "promote"}
        assert all(addrs == [g.address(b)] and e == 2 for _m, addrs, e in where(g))
        serving_at(g, b)
        wait_for(
            lambda: sum(o.ok and o.site == b for o in load.outcomes()) >= 10, 15, "writes at b"
        )
        # the old primary follows the new one
        back = run(geo_failback, g, to=a, reason="maintenance over")
        assert back.status == "completed", back.summary
        assert back.procedure == "geo-failback" and back.new_epoch == 3
        assert "rebuild" not in {r.step for r in back.steps}  # a healthy replica already
        serving_at(g, a)
        wait_for(
            lambda: sum(o.ok and o.site == a for o in load.outcomes()[-20:]) >= 5, 15, "back at a"
        )
    finally:
        outcomes = load.stop()
    s = score(outcomes, g.lab.rows(a), {**promoted_at(there), **promoted_at(back)})
    assert s.acknowledged > 40, s
    assert (s.lost, s.fenced_accepts) == (0, 0), s
    # both databases hold every acknowledged write: b replicates a again
    wait_for(
        lambda: {r["id"] for r in g.lab.rows(b)} >= {o.id for o in outcomes if o.ok},
        10,
        "site b to have replicated every write",
    )


def test_with_one_master_down_the_names_move_and_the_watch_repairs_it(
    geo_lab: RunningGeoLab,
) -> None:
    g = geo_lab
    a, b = g.sites
    g.lab.stop_master(a)
    try:
        r = run(geo_failover, g, to=b)
        assert r.status == "completed", r.summary
        assert r.masters_behind and all(m.startswith(a + " ") for m in r.masters_behind)
        assert "left behind" in " ".join(s.sentence for s in r.steps)
    finally:
        g.lab.start_master(a)
    stale = [x for x in read_names(g.geo, g.tool) if x.site == a]
    assert all(x.addresses == [g.address(a)] for x in stale)  # it missed the change
    watch = geo_watch(str(g.site_file), return_state=True).result(raise_on_failure=False)
    assert any("repointed" in line for line in watch.repaired), watch.summary
    assert all(addrs == [g.address(b)] and e == r.new_epoch for _m, addrs, e in where(g))
    back = run(geo_failover, g, to=a)
    assert back.status == "completed", back.summary
    serving_at(g, a)


def test_a_killed_site_fails_over_within_its_window_and_comes_back_fenced(
    geo_lab: RunningGeoLab, tmp_path: Path
) -> None:
    g = geo_lab
    a, b = g.sites
    load = g.lab.client(b, rate=20)
    load.start()
    try:
        wait_for(lambda: sum(o.ok for o in load.outcomes()) >= 10, 15, "writes acknowledged")
        watch = geo_watch(str(g.site_file), return_state=True).result(raise_on_failure=False)
        assert watch.statuses, watch
        reading = last_lag(g.site.site, g.tool.name, b)
        assert reading is not None and reading.seconds is not None, reading
        # the link between the sites is cut after the reading, then site a is lost: what a
        # acknowledged meanwhile never reached b
        g.lab.sql(b, "STOP SLAVE IO_THREAD")
        # sent after the cut: a write sent before it and answered after may have reached b
        cut_at = time.time()
        wait_for(
            lambda: sum(o.ok and o.site == a and o.sent >= cut_at for o in load.outcomes()) >= 5,
            15,
            "writes sent after the cut and acknowledged by a",
        )
        g.lab.kill_site(a)
        # a write answered while the kill ran was acknowledged before the site was lost
        killed_at = dt.datetime.now(dt.UTC)
        r = run(geo_failover, g, to=b, max_lag_s=30)
        assert r.status == "completed", r.summary
        assert r.mode == "failover" and "behind" in r.loss_window
        serving_at(g, b)
        wait_for(
            lambda: sum(o.ok and o.site == b for o in load.outcomes()) >= 10, 15, "writes at b"
        )
    finally:
        outcomes = load.stop()
    s = scored(g, outcomes, b, r)
    assert s.fenced_accepts == 0, s
    # every lost write was acknowledged by a in the stated window: after the last reading's
    # replicated point, before it was lost
    window_start = reading.taken_at - dt.timedelta(seconds=reading.seconds or 0)
    lost = [o for o in outcomes if o.id in set(s.lost_ids)]
    assert len(lost) >= 5, s  # the writes a took after the cut
    assert all(o.site == a for o in lost), lost
    assert all(window_start.timestamp() - 1 <= o.done <= killed_at.timestamp() for o in lost), (
        window_start.timestamp(),
        killed_at.timestamp(),
        [(o.id, o.sent, o.done) for o in lost],
    )
    # a comes back from its data: its tool refuses writes (the masters name b, epoch 3)
    g.lab.restore_site(a, writable=True)
    direct = write_once(
        "after-return", g.name, g.tool.port, g.resolver(a), client_context(g.lab.ca_file())
    )
    assert direct.ok and direct.site == b  # its clients are sent to b
    watch = geo_watch(str(g.site_file), return_state=True).result(raise_on_failure=False)
    assert any("set read-only" in line for line in watch.repaired), watch.summary
    assert any("repointed" in line for line in watch.repaired), watch.summary
    back = run(geo_failback, g, to=a, keep_dir=str(tmp_path / "kept"))
    assert back.status == "completed", back.summary
    assert "rebuild" in {x.step for x in back.steps}
    kept = list((tmp_path / "kept").glob("*.sql"))
    assert len(kept) == 1 and b"CREATE TABLE" in kept[0].read_bytes()
    # the writes a took that b never received are not thrown away unseen: they are in the file
    assert all(o.id.encode() in kept[0].read_bytes() for o in lost)
    serving_at(g, a)
    assert {x["id"] for x in g.lab.rows(b)} <= {x["id"] for x in g.lab.rows(a)}


def test_the_control_switch_leaves_a_live_site_alone_and_a_lost_sites_alert_fails_it_over(
    geo_lab: RunningGeoLab, prefect_api: str, tmp_path: Path
) -> None:
    """The monitoring path end to end: Alertmanager's HandoverGeoSiteDown at the gateway, the
    incident and its sealed event, the served `geo-site-down` run, and its failover taking the
    automatic path (the site's policy asks a human for a failover by hand)."""
    from flows.geo_site_down import SiteDownResult, geo_site_down
    from infra.bench.alert import ServeAndGateway
    from infra.fakeslack import FakeSlack
    from infra.ports import free_port
    from tests.conftest import wait_final_or_explain

    g = geo_lab
    a, b = g.sites
    # site a answers: the monitoring path's word alone changes nothing
    alive = geo_site_down(str(g.site_file), geo_site=a, return_state=True)
    out = alive.result(raise_on_failure=False)
    assert isinstance(out, SiteDownResult), out
    assert out.status == "refused" and not out.plan.confirmed and out.failovers == []
    assert "not lost by handover's own reading" in out.summary
    assert all(addrs == [g.address(a)] for _m, addrs, _e in where(g))
    geo_watch(str(g.site_file), return_state=True)  # a reading on record: the loss window
    since = dt.datetime.now(dt.UTC)
    logs = tmp_path / "stack"
    with FakeSlack(tokens={"xoxb-geo-test"}) as slack:
        stack = ServeAndGateway(
            g.site_file,
            free_port(),
            log_dir=logs,
            env={
                **os.environ,
                "PREFECT_API_URL": prefect_api,
                "HANDOVER_WEBHOOK_SECRET": "geo-test-webhook-secret-0123456789",
                "HANDOVER_ALERTMANAGER_TOKEN": AM_TOKEN,
                "HANDOVER_SLACK_API_URL": slack.base_url,
                "HANDOVER_SLACK_BOT_TOKEN": "xoxb-geo-test",
                "HANDOVER_SLACK_SIGNING_SECRET": "geo-test-slack-signing-secret",
            },
        ).start()
        try:
            g.lab.kill_site(a)
            try:
                status, answer = post_alertmanager(stack.url, lost(g, a, "1"))
                assert status == 202, answer
                [first] = answer["alerts"]
                assert (first["result"], first["starts"]) == ("new", "geo-site-down"), first
                # the loss reported again (another fingerprint): one incident per geo site
                status, again = post_alertmanager(stack.url, lost(g, a, "2"))
                assert [x["result"] for x in again["alerts"]] == ["attached"], again
                done = wait_final_or_explain(
                    first["run_id"], 300, {n: logs / f"{n}.log" for n in ("serve", "gateway")}
                )
                assert done.state is not None and done.state.is_completed(), done.state
                assert done.parameters["geo_site"] == a and done.parameters["alert_seal"]
                serving_at(g, b)
                # its failover took the automatic path: the seal held, nobody approved
                [failover] = geo_failover_runs(since)
                assert failover.parameters["automatic"] is True, failover.parameters
                assert failover.parameters["to"] == b
            finally:
                g.lab.restore_site(a, writable=True)
        finally:
            stack.stop()
    back = run(geo_failback, g, to=a, keep_dir=str(tmp_path / "kept"))
    assert back.status == "completed", back.summary
    serving_at(g, a)


AM_TOKEN = "geo-test-am-token"


def lost(g: RunningGeoLab, geo_site: str, fingerprint: str) -> bytes:
    """Alertmanager's notification of HandoverGeoSiteDown for `geo_site` (the rule's labels)."""
    return json.dumps(
        {
            "version": "4",
            "status": "firing",
            "receiver": "handover",
            "groupKey": "{}:{}",
            "alerts": [
                {
                    "status": "firing",
                    "labels": {
                        "alertname": "HandoverGeoSiteDown",
                        "site": g.site.site,
                        "tool": g.tool.name,
                        "geo_site": geo_site,
                        "handover_kind": "site_down",
                        "severity": "critical",
                    },
                    "annotations": {"summary": f"site {geo_site} is lost for {g.tool.name}"},
                    "startsAt": dt.datetime.now(dt.UTC).isoformat(),
                    "fingerprint": fingerprint,
                }
            ],
        }
    ).encode()


def post_alertmanager(url: str, body: bytes) -> tuple[int, dict[str, Any]]:
    """POST a notification to the gateway's Alertmanager endpoint; its status and answer."""
    req = urllib.request.Request(
        url + "/alerts/alertmanager",
        data=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {AM_TOKEN}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def geo_failover_runs(since: dt.datetime) -> list[Any]:
    """The geo-failover runs created after `since`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["geo-failover"]))
        )
    return [r for r in runs if r.created is not None and r.created >= since]


def test_a_loss_window_nobody_can_state_waits_for_a_human_and_a_rejection_changes_nothing(
    geo_lab: RunningGeoLab,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from prefect.variables import Variable

    from tests.conftest import reject_paused_runs

    g = geo_lab
    a, b = g.sites
    # no reading of b's lag on record: the loss window is unknown
    Variable.unset(f"geo-lag-{g.site.site}-{g.tool.name}-{b}")
    before = where(g)
    g.lab.kill_site(a)
    try:
        with ThreadPoolExecutor(1) as ex:
            # the site's policy would approve nothing by itself here: a human must decide
            running = ex.submit(
                lambda: geo_failover(
                    str(g.site_file), service=g.tool.name, to=b, return_state=True
                ).result(raise_on_failure=False)
            )
            wait_for(lambda: reject_paused_runs() or running.done(), 30, "the paused failover")
            r = running.result(timeout=60)
        assert isinstance(r, GeoResult) and r.status == "rejected", r
        assert "unknown: no replication reading" in r.loss_window
        # nothing changed: the names where they were, b still a read-only replica
        assert [x for x in where(g) if x[0] != f"127.0.0.1:{g.geo.sites[0].masters[0].port}"] == [
            x for x in before if x[0] != f"127.0.0.1:{g.geo.sites[0].masters[0].port}"
        ]
        assert g.lab.sql(b, "SELECT @@global.read_only") == [(1,)]
    finally:
        g.lab.restore_site(a, writable=True)
    serving_at(g, a)


def test_the_remap_check_lists_the_planted_link_and_the_certificate_mismatch(
    geo_lab: RunningGeoLab,
) -> None:
    from tasks.remap import check_remap

    report = check_remap(geo_lab.site, geo_lab.tool.name)
    kinds = {(f.kind, f.target) for f in report.findings}
    assert not report.ready
    assert ("absolute-link", "https://cic-old.site-a.handover.test/manage") in kinds, kinds
    assert any(k == "redirect" for k, _t in kinds), kinds
    assert any(k == "certificate" and "cic." in t for k, t in kinds), kinds
