"""The whole monitoring loop on real servers: the lab's host crashes, handover's
exporter sees it, Debian's Prometheus fires the shipped rule, Debian's Alertmanager sends it to
the gateway, and exactly one emergency move runs and moves the host's agents, with nothing typed;
the host was also the front end's master, so the switch moves the alias away from it.

On the same lab: the lab's Prometheus scrapes the exporter with its bearer token from a
``credentials_file`` (the shipped configuration), and a Prometheus without the token, or with a
wrong one, sees the target down with 401.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.alert_stack import (
    AM_TOKEN,
    Stack,
    alias_host,
    emergency_runs,
    stack_fixture,
    switch_runs,
)
from tests.conftest import (
    ROOT,
    RunningLab,
    forget_automatic_switches,
    reject_paused_runs,
    require,
    start_lab,
    stays,
    wait_for,
)

pytestmark = pytest.mark.monitoring

HOST, BACKUP = "fts101", "fts102"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningLab]:
    from infra.lab.monitoring import missing

    require(not missing(), "; ".join(missing()))
    yield from start_lab(tmp_path_factory, monitoring=True)


@pytest.fixture(scope="module")
def stack(
    lab: RunningLab, prefect_api: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    yield from stack_fixture(lab, prefect_api, tmp_path_factory)


def api(port: int, path: str, **params: str) -> Any:
    """The `data` of a Prometheus HTTP API answer (``/api/v1/...``) on 127.0.0.1:`port`."""
    url = f"http://127.0.0.1:{port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as r:
        answer = json.load(r)
    assert answer["status"] == "success", answer
    return answer["data"]


def up(port: int, job: str) -> list[str]:
    """The values of ``up{job=JOB}`` in the Prometheus on `port` (one per target)."""
    result = api(port, "query", query=f'up{{job="{job}"}}')["result"]
    return [r["value"][1] for r in result]


def exporter_status(port: int, authorization: str | None) -> int:
    """The HTTP status of a GET of the lab's exporter's /metrics."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if authorization is not None:
        req.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def wait_for_or_explain(
    lab: RunningLab, stack: Stack, host: str, predicate: Any, timeout: float, what: str
) -> Any:
    """`wait_for`, and on a timeout a failure that says where the loop stopped: what the
    exporter and Prometheus saw of `host`, the alerts Prometheus holds, and the gateway's
    audit lines about it."""
    try:
        return wait_for(predicate, timeout, what)
    except pytest.fail.Exception:
        prometheus = int(lab.lab.record()["monitoring"]["ports"]["prometheus"])
        seen: dict[str, Any] = {}
        for query in (
            f'handover_frontend_answers{{host="{host}"}}',
            f'handover_frontend_master{{host="{host}"}}',
            f'max_over_time(handover_frontend_master{{host="{host}"}}[5m])',
            "handover_sensor_age_seconds",
            "ALERTS",
        ):
            try:
                seen[query] = [
                    (r["metric"], r["value"])
                    for r in api(prometheus, "query", query=query)["result"]
                ]
            except OSError as exc:
                seen[query] = f"no answer: {exc}"
        lines = stack.gateway_lines(host)[-10:]
        pytest.fail(
            f"timed out after {timeout} s waiting for {what}; Prometheus: {seen}; "
            f"gateway lines about {host}: {lines}",
            pytrace=False,
        )


def settled(lab: RunningLab, stack: Stack, host: str, timeout: float = 420) -> None:
    """Wait for a quiet site before a fault of `host`: no alert about a host pending or firing
    in Prometheus, and no incident of `host` open in the gateway (one opened within the site's
    dedup window). An alert of the test then opens an incident of its own instead of attaching
    to the aftermath of an earlier test: a host seen down for a few scrapes under load opens an
    incident that the host's next alerts join for the whole window."""
    prometheus = int(lab.lab.record()["monitoring"]["ports"]["prometheus"])
    query = 'ALERTS{alertname=~"HandoverHostDown|HandoverFrontendDown"}'
    assert lab.site.alerts is not None
    window_s = lab.site.alerts.dedup_window_s

    def incident_open() -> bool:
        return time.time() - stack.opened(host) <= window_s + 1

    def quiet() -> bool:
        reject_paused_runs()  # an earlier test's run left waiting for a human holds its incident
        return not api(prometheus, "query", query=query)["result"] and not incident_open()

    try:
        # once a second: each look asks Prefect and Prometheus
        wait_for(quiet, timeout, f"no host alert in Prometheus and no incident of {host} open", 1.0)
    except pytest.fail.Exception:
        alerts = [r["metric"] for r in api(prometheus, "query", query=query)["result"]]
        pytest.fail(
            f"the site did not settle in {timeout} s: host alerts {alerts}; the gateway last "
            f"opened an incident of {host} {time.time() - stack.opened(host):.0f} s ago "
            f"(dedup window {window_s:g} s)",
            pytrace=False,
        )


def test_the_labs_prometheus_scrapes_the_exporter_with_its_token(lab: RunningLab) -> None:
    mon = lab.lab.record()["monitoring"]
    exporter, prometheus = int(mon["ports"]["exporter"]), int(mon["ports"]["prometheus"])
    assert exporter_status(exporter, None) == 401
    token_file = Path(mon["exporter_token_file"])
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    assert exporter_status(exporter, f"Bearer {token[:-1]}x") == 401
    assert exporter_status(exporter, f"Bearer {token}") == 200
    # Prometheus reads the same file (`authorization.credentials_file`): the target is up
    assert wait_for(lambda: up(prometheus, "handover") == ["1"], 30, "up == 1 in Prometheus")
    # and stores what the exporter read
    wanted = {h.name for h in lab.site.hosts}

    def hosts() -> set[str]:
        result = api(prometheus, "query", query='handover_host_up{job="handover"}')["result"]
        return {r["metric"]["host"] for r in result}

    wait_for(lambda: hosts() == wanted, 30, "handover_host_up of every host in Prometheus")


def test_a_prometheus_without_the_token_sees_the_exporter_down(
    lab: RunningLab, tmp_path: Path
) -> None:
    """Debian's Prometheus with the shipped scrape job, once without `authorization` and once
    with a wrong token: both targets are down, with the exporter's 401."""
    from infra.ports import free_port

    prometheus = shutil.which("prometheus")
    require(prometheus is not None, "prometheus (Debian package prometheus)")
    assert prometheus is not None
    mon = lab.lab.record()["monitoring"]
    target = f"127.0.0.1:{mon['ports']['exporter']}"
    wrong = tmp_path / "wrong.token"
    wrong.write_text("not-the-exporters-token-0123456789\n")
    wrong.chmod(0o600)
    shipped_file = ROOT / "infra" / "monitoring" / "prometheus.yml"
    [shipped] = [
        job
        for job in yaml.safe_load(shipped_file.read_text())["scrape_configs"]
        if job["job_name"] == "handover"
    ]
    without = {**shipped, "job_name": "without", "static_configs": [{"targets": [target]}]}
    del without["authorization"]
    wrong_job = {
        **shipped,
        "job_name": "wrong",
        "authorization": {"type": "Bearer", "credentials_file": str(wrong)},
        "static_configs": [{"targets": [target]}],
    }
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {"global": {"scrape_interval": "1s"}, "scrape_configs": [without, wrong_job]}
        )
    )
    port = free_port()
    with open(tmp_path / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(
            [
                prometheus,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def scraped() -> dict[str, dict[str, Any]]:
            try:
                targets = api(port, "targets")["activeTargets"]
            except OSError:  # not listening yet
                return {}
            seen = {t["labels"]["job"]: t for t in targets if t["health"] != "unknown"}
            return seen if len(seen) == 2 else {}

        seen = wait_for(scraped, 60, "the first scrapes of both jobs")
        assert isinstance(seen, dict)
        for job in ("without", "wrong"):
            assert seen[job]["health"] == "down", seen[job]
            assert "401" in seen[job]["lastError"], seen[job]
            assert wait_for(lambda j=job: up(port, j) == ["0"], 30, f"up == 0 for {job}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# the waits of a fault test add up: the settle (at most 420 s), the run's start and its end
@pytest.mark.timeout(420 + 120 + 240 + 60 + 180)
def test_a_crashed_host_starts_one_emergency_move_with_nothing_typed(
    lab: RunningLab, stack: Stack, tmp_path: Path
) -> None:
    token = tmp_path / "am.token"
    token.write_text(AM_TOKEN)
    lab.lab.monitoring_to(stack.url, token)
    settled(lab, stack, HOST)
    assert alias_host(lab) == HOST
    # after the settle: a switch during it would make this test's switch wait for a human
    forget_automatic_switches(lab)
    moved = [a.name for a in lab.site.agents_on(HOST)]
    since = dt.datetime.now(dt.UTC)

    def runs() -> list[object]:
        return [r for r in emergency_runs(HOST) if r.created and r.created >= since]

    lab.lab.fault(HOST, "crash")
    try:
        # the sensors' reading: the silent host is found by the probe of its slow read, not
        # waited for to the reading's bound; every other host is read
        from tasks.remote import SiteShell
        from tasks.sensors import read_sensors

        with SiteShell(lab.site) as shell:
            reading = read_sensors(shell, 20)
        assert reading.snapshot is not None
        by_host = {h.host: h for h in reading.snapshot.hosts}
        assert not by_host[HOST].reachable
        assert by_host[HOST].error == (
            f"its SSH port did not answer within {lab.site.ssh.probe_timeout_s:g} s"
        )
        assert all(h.reachable for n, h in by_host.items() if n != HOST), reading.errors
        [run] = wait_for(runs, 120, f"an emergency move of {HOST} from Alertmanager's alert")
        done = stack.wait_final(run.id, 240)
        assert done.state is not None and done.state.is_completed(), done.state
        serving = lab.lab.serving(lab.site, lab.lab.record())
        assert all(serving.get(a) == {BACKUP} for a in moved), serving
        stays(lambda: len(runs()) == 1, 10, "one emergency move")
        assert stack.gateway_lines('"source": "alertmanager"', '"result": "new"', HOST)
        # the master's front end went down with its host: the switch moved the alias
        [switched] = wait_for(lambda: switch_runs(HOST, since), 60, "the switch run")
        stack.wait_final(switched.id, 180)
        assert alias_host(lab) == BACKUP
    finally:
        lab.lab.heal(HOST)


@pytest.mark.timeout(2 * 420 + 120 + 180)
def test_a_killed_front_end_starts_one_switch_and_no_move(lab: RunningLab, stack: Stack) -> None:
    """The host lives on; only its front end, the master, dies: the alias moves, nothing else."""
    master = alias_host(lab)
    settled(lab, stack, master)
    while alias_host(lab) != master:  # an earlier incident's switch moved it meanwhile
        master = alias_host(lab)
        settled(lab, stack, master)
    # after the settle: an automatic switch during it (the one just waited out) would make this
    # test's switch wait for a human, and the run would never end
    forget_automatic_switches(lab)
    other = HOST if master == BACKUP else BACKUP
    since = dt.datetime.now(dt.UTC)
    lab.lab.fault(master, "frontend-down")
    try:
        [run] = wait_for_or_explain(
            lab, stack, master, lambda: switch_runs(master, since), 120, "the switch from the alert"
        )
        done = stack.wait_final(run.id, 180)
        assert done.state is not None and done.state.is_completed(), done.state
        assert alias_host(lab) == other
        assert stack.gateway_lines('"source": "alertmanager"', '"kind": "frontend_down"', master)

        def extra() -> list[str]:
            """The runs for the master beyond the one switch, each with who asked for it."""
            more = switch_runs(master, since)[1:] + [
                r for r in emergency_runs(master) if r.created and r.created >= since
            ]
            return [
                f"{r.name} {r.created} {r.parameters.get('requested_by')!r}"
                f" {r.state.name if r.state else '?'}"
                for r in more
            ]

        try:
            stays(lambda: not extra(), 10, "one switch and no emergency move")
        except pytest.fail.Exception:
            pytest.fail(
                f"more runs for {master} than its one switch: {extra()}; gateway lines about "
                f"{master}: {stack.gateway_lines(master)[-12:]}",
                pytrace=False,
            )
    finally:
        lab.lab.heal(master)
