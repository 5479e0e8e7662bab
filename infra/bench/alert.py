"""`handover bench alert`: from a signed "host down" alert to the flow run and to the agents.

A bench lab (its own addresses, port and state directory) and a temporary Prefect server (its own
SQLite database, so an operator's deployments are never replaced) are started, then
`handover serve` (its default 0.5 s poll) and `handover gateway` as real processes. Each round
sends one signed alert for the host that runs the agents and measures, from the moment the
alert is sent:

* **run created**, **flow start**: the emergency-move run's creation and start times as Prefect
  records them (the gateway, the run's creation, the served process picking the run up);
* **first agent serving**: the first of the host's agents serving on its other host, as the lab
  records it (the flow's probe, snapshot and case-A work added).

Rounds alternate between fts101 and fts102 (each move puts the agents on the other host), with
the site's dedup window set to 1 s so that each round is a new incident. Medians and p95 over
`rounds` alerts, after a first alert right after `handover serve` and the gateway started, which
is reported apart (on SQLite serve's own start-up writes can still hold the database then).
Targets for the default mode: flow start p50 <= 1.2 s and p95 <= 2 s.

Each database's rounds run once per mode, on the same server one after the other: who creates
the run (`handover gateway --runs-from gateway`, the default: the gateway through the API;
`automations`: the gateway's event, Prefect's trigger and its run-deployment action, the path
through Prefect's automations that an event from elsewhere takes) and, with `--start both`, how
`handover serve` starts it (`forkserver`, its default, or `spawn`, Prefect's own). The ratios of
the flow start medians are printed.

The same rounds run against a Prefect server on PostgreSQL (a database in the bench lab's
server) and on SQLite, side by side: on SQLite, Prefect's run-deployment action loses a write
race with the trigger that fired it and its client retries after 2 s, which PostgreSQL avoids.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from infra.lab.lab import Lab, derive_site_file

ROOT = Path(__file__).resolve().parent.parent.parent
P50_TARGET_S = 1.2
P95_TARGET_S = 2.0


class ServeAndGateway:
    """`handover serve` and `handover gateway` for a site, as real processes (stopped by PID).

    Args:
        site_file: the site.
        port: the gateway's port on 127.0.0.1.
        env: their environment (PREFECT_API_URL, the secrets' variables).
    """

    def __init__(
        self,
        site_file: Path,
        port: int,
        env: dict[str, str],
        start: str = "forkserver",
        log_dir: Path | None = None,
        runs_from: str = "gateway",
    ) -> None:
        #: where their output goes (``serve.log``, ``gateway.log``: the gateway's audit lines);
        #: None discards it
        self.log_dir = log_dir
        self.site_file = site_file
        self.start_method = start
        self.runs_from = runs_from
        self.url = f"http://127.0.0.1:{port}"
        self.port = port
        self.env = env
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, timeout_s: float = 90.0) -> ServeAndGateway:
        """Start both and wait until the gateway answers and the trigger is registered."""
        site = str(self.site_file)
        for argv in (
            ["serve", "--site", site, "--start", self.start_method],
            ["gateway", "--site", site, "--port", str(self.port), "--runs-from", self.runs_from],
        ):
            out: Any = subprocess.DEVNULL
            if self.log_dir is not None:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                out = open(self.log_dir / f"{argv[0]}.log", "ab")
            try:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "infra.cli", *argv],
                        cwd=ROOT,
                        env=self.env,
                        stdout=out,
                        stderr=subprocess.STDOUT if self.log_dir is not None else out,
                        start_new_session=True,
                    )
                )
            finally:
                if self.log_dir is not None:
                    out.close()
        deadline = time.monotonic() + timeout_s
        try:
            while not self.ready():
                if time.monotonic() > deadline:
                    raise RuntimeError("handover serve / handover gateway did not become ready")
                time.sleep(0.5)
        except BaseException:
            self.stop()  # neither is left running when the other failed, or on Ctrl-C
            raise
        return self

    def ready(self) -> bool:
        """Whether the gateway answers and every deployment's triggers exist (an event sent
        before its automation exists starts nothing)."""
        from prefect.client.orchestration import get_client
        from prefect.exceptions import ObjectNotFound

        from config.loader import load_site
        from infra.serve import deployment_name, entry_applies, read_deployments

        for p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args!r} exited with {p.returncode}")
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=2):  # noqa: S310
                pass
        except OSError:
            return False
        site = load_site(self.site_file)
        triggered = [
            d["name"] for d in read_deployments() if d.get("triggers") and entry_applies(d, site)
        ]
        with get_client(sync_client=True) as client:
            for name in triggered:
                try:
                    dep = client.read_deployment_by_name(f"{name}/{deployment_name(name, site)}")
                except ObjectNotFound:
                    return False
                # registered by this serve process, not left by an earlier one with another site
                if dep.parameters.get("site_file") != str(self.site_file.resolve()):
                    return False
                if not client.read_resource_related_automations(f"prefect.deployment.{dep.id}"):
                    return False
            return True

    def gateway_lines(self, *words: str) -> list[str]:
        """The gateway's log lines that contain every one of `words` (empty without a log)."""
        if self.log_dir is None:
            return []
        try:
            text = (self.log_dir / "gateway.log").read_text(errors="replace")
        except OSError:
            return []
        return [ln for ln in text.splitlines() if all(w in ln for w in words)]

    def stop(self) -> None:
        """Stop both (SIGTERM to their process groups, then SIGKILL)."""
        stop_groups(self.procs)


def stop_groups(procs: list[subprocess.Popen[bytes]], grace_s: float = 20.0) -> None:
    """Stop processes started in their own sessions: SIGTERM to each group, SIGKILL after
    `grace_s`."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)


def stack_env(api: str, webhook_secret: str) -> dict[str, str]:
    """The environment of a bench's `handover serve` and `handover gateway`: the temporary
    Prefect API, a webhook secret of the bench's own, and no Slack (the bench times the path
    without it)."""
    env = {
        **os.environ,
        "PREFECT_API_URL": api,
        "HANDOVER_WEBHOOK_SECRET": webhook_secret,
        "HANDOVER_ALERTMANAGER_TOKEN": secrets.token_hex(8),
    }
    for k in ("HANDOVER_SLACK_BOT_TOKEN", "HANDOVER_SLACK_SIGNING_SECRET"):
        env.pop(k, None)
    return env


@contextmanager
def temporary_prefect(home: Path, port: int, db_url: str | None = None) -> Iterator[str]:
    """A temporary `prefect server start` (SQLite in `home`, or the PostgreSQL at `db_url`),
    stopped by its PID at the end; yields its API URL, also set for this process."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from infra.prefect_server import api_url, spawn, wait_healthy

    extra = {"PREFECT_API_DATABASE_CONNECTION_URL": db_url} if db_url else {}
    proc = spawn(home, "127.0.0.1", port, extra)
    url = api_url("127.0.0.1", port)
    try:
        wait_healthy(url, proc, home, 120)
        with temporary_settings({PREFECT_API_URL: url}):
            yield url
    finally:
        stop_groups([proc])


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return round(ordered[k], 3)


def spread(values: list[float]) -> dict[str, float]:
    """p50, p95, min and max of the values (empty: none), as the benches print them."""
    import statistics

    if not values:
        return {}
    return {
        "p50": round(statistics.median(values), 3),
        "p95": _pct(values, 0.95),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def _backend_rounds(
    lab: Lab,
    site_file: Path,
    tmp: Path,
    backend: str,
    modes: list[tuple[str, str]],
    rounds: int,
    port: int,
    progress: Callable[[str], None],
) -> dict[str, list[dict[str, Any]]]:
    """Rounds against a fresh Prefect server on one database backend, for each mode (start
    method of `handover serve`, who creates the run), one after the other on the same server."""
    from infra.send_alert import alert_body, post_alert

    db_url = None
    if backend == "postgresql":
        name = f"prefect_{os.getpid()}"
        lab.db.psql_admin(f"CREATE ROLE {name} LOGIN PASSWORD '{name}'")
        lab.db.psql_admin(f"CREATE DATABASE {name} OWNER {name}")
        db_url = f"postgresql+asyncpg://{name}:{name}@{lab.db.address}:{lab.db.port}/{name}"
    secret = secrets.token_hex(16)
    samples: dict[str, list[dict[str, Any]]] = {}
    progress(f"{backend}: temporary Prefect server")
    with temporary_prefect(tmp / f"prefect-{backend}", port, db_url) as api:
        env = stack_env(api, secret)
        for start, runs_from in modes:
            mode = f"{start}/{runs_from}"
            stack = ServeAndGateway(site_file, port + 100, env, start, runs_from=runs_from)
            progress(
                f"{backend}: handover serve --start {start}, handover gateway --runs-from "
                f"{runs_from}"
            )
            stack.start()
            got = samples.setdefault(mode, [])
            try:
                # round 0: the first alert after serve and the gateway started, reported apart
                # (serve's own start-up writes still contend with the run's creation on SQLite)
                for i in range(rounds + 1):
                    # the agents alternate: whichever host runs them now is the one that fails
                    host = _host_serving(lab)
                    s = _round(lab, stack, host, secret.encode(), alert_body, post_alert)
                    s["first_after_start"] = i == 0
                    got.append(s)
                    progress(
                        f"{backend} {mode} round {i}/{rounds}: {host} down -> run started "
                        f"{s['flow_start_s']:.2f} s (run created {s['run_created_s']:.2f} s), "
                        f"first agent serving {s['first_serving_s']:.2f} s"
                    )
            finally:
                stack.stop()
    return samples


def _host_serving(lab: Lab) -> str:
    serving = lab.serving(lab.site, lab.record())
    for host in ("fts101", "fts102"):
        if any(hosts == {host} for hosts in serving.values()):
            return host
    raise RuntimeError("no agent serves on fts101 or fts102: the bench lab is not as expected")


def _figures(all_samples: list[dict[str, Any]]) -> dict[str, Any]:
    samples = [s for s in all_samples if not s.get("first_after_start")]

    def stats(key: str) -> dict[str, float]:
        values = [s[key] for s in samples]
        return {
            "p50": round(statistics.median(values), 3),
            "p95": _pct(values, 0.95),
            "max": round(max(values), 3),
        }

    out: dict[str, Any] = {
        "run_created_s": stats("run_created_s"),
        "flow_start_s": stats("flow_start_s"),
        "first_agent_serving_s": stats("first_serving_s"),
        "first_after_start": next((s for s in all_samples if s.get("first_after_start")), None),
        "samples": samples,
    }
    fs = out["flow_start_s"]
    out["meets_targets"] = fs["p50"] <= P50_TARGET_S and fs["p95"] <= P95_TARGET_S
    return out


def bench_alert(
    *,
    rounds: int = 10,
    backends: tuple[str, ...] = ("postgresql", "sqlite"),
    starts: tuple[str, ...] = ("forkserver",),
    runs_froms: tuple[str, ...] = ("gateway", "automations"),
    progress: Callable[[str], None] = lambda m: None,
) -> dict[str, Any]:
    """Send `rounds` alerts per Prefect database backend and mode (start method of `handover
    serve` x who creates the run); return latencies (p50, p95) and the ratios of the modes."""
    tmp = Path(tempfile.mkdtemp(prefix="handover-bench-alert-"))
    site_file = derive_site_file(
        ROOT / "config" / "sites" / "lab.yaml",
        tmp / "benchalert.yaml",
        name="benchalert",
        octet=249,
        db_port=20249,  # below the ephemeral port range, as the tests' labs
        state_dir=Path(f"/var/tmp/handover-lab/bench-alert-{os.getpid()}"),
    )
    data = yaml.safe_load(site_file.read_text())
    data["alerts"]["dedup_window_s"] = 1
    site_file.write_text(yaml.safe_dump(data, sort_keys=False))
    lab = Lab.from_file(site_file)
    progress("bench lab up")
    lab.up()
    modes = [(s, r) for s in starts for r in runs_froms]
    names = [f"{s}/{r}" for s, r in modes]
    default = names[0]
    out: dict[str, Any] = {
        "rounds": rounds,
        "targets": {"flow_start_p50_s": P50_TARGET_S, "flow_start_p95_s": P95_TARGET_S},
        "default_mode": default,
    }
    try:
        for i, backend in enumerate(backends):
            by_mode = _backend_rounds(
                lab, site_file, tmp, backend, modes, rounds, 20350 + i, progress
            )
            out[backend] = {mode: _figures(samples) for mode, samples in by_mode.items()}
            ratios = {}
            for start in starts:
                pair = [f"{start}/gateway", f"{start}/automations"]
                if all(m in by_mode for m in pair):
                    gw, am = (out[backend][m]["flow_start_s"]["p50"] for m in pair)
                    ratios[f"{start}: gateway / automations"] = round(gw / am, 3)
            for runs_from in runs_froms:
                pair = [f"forkserver/{runs_from}", f"spawn/{runs_from}"]
                if all(m in by_mode for m in pair):
                    fork, spawn = (out[backend][m]["flow_start_s"]["p50"] for m in pair)
                    ratios[f"{runs_from}: forkserver / spawn"] = round(fork / spawn, 3)
            out[backend]["flow_start_p50_ratios"] = ratios
    finally:
        lab.down()
        lab.remove_state()
    out["ok"] = all(out[b][default]["meets_targets"] for b in backends)
    out["summary"] = [
        f"signed 'host down' alert -> emergency move (case A), {rounds} alerts per Prefect "
        f"database and mode (serve's start / who creates the run); targets for the flow start "
        f"in the default mode ({default}): p50 <= {P50_TARGET_S} s, p95 <= {P95_TARGET_S} s",
    ]
    for b in backends:
        for mode in names:
            f = out[b][mode]
            rc, fs, fa = f["run_created_s"], f["flow_start_s"], f["first_agent_serving_s"]
            verdict = "meets" if f["meets_targets"] else "misses"
            out["summary"] += [
                f"  Prefect on {b}, {mode}:",
                f"    alert -> run created:          p50 {rc['p50']:.2f} s, p95 {rc['p95']:.2f} s",
                f"    alert -> flow run started:     p50 {fs['p50']:.2f} s, p95 {fs['p95']:.2f} s "
                f"(max {fs['max']:.2f}; {verdict} the targets)",
                f"    alert -> first agent serving:  p50 {fa['p50']:.2f} s, p95 {fa['p95']:.2f} s",
            ]
            first = f["first_after_start"]
            if first is not None:
                out["summary"].append(
                    f"    (the first alert after the start, not counted: run created "
                    f"{first['run_created_s']:.2f} s, flow run started "
                    f"{first['flow_start_s']:.2f} s)"
                )
        for what, ratio in out[b]["flow_start_p50_ratios"].items():
            out["summary"].append(f"  on {b}: flow start p50, {what} = {ratio:.2f}")
    return out


def final_run_of_alert(event: str, deadline: float, procedure: str) -> Any:
    """The run of `procedure` an alert started, once it is final (re-read in full), or None
    by `deadline` (`time.monotonic`). (A front-end host's alert starts two: the emergency move
    and the switch.)"""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterId,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    only = FlowFilter(name=FlowFilterName(any_=[procedure]))
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = [
                r
                for r in client.read_flow_runs(
                    flow_filter=only, limit=20, sort=FlowRunSort.EXPECTED_START_TIME_DESC
                )
                if r.parameters.get("alert_id") == event
            ]
            if runs and runs[0].state and runs[0].state.is_final():
                return client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[runs[0].id]))
                )[0]
            time.sleep(0.2)
    return None


def _round(
    lab: Lab,
    stack: ServeAndGateway,
    host: str,
    secret: bytes,
    alert_body: Any,
    post_alert: Any,
) -> dict[str, Any]:

    site = lab.site
    other = "fts102" if host == "fts101" else "fts101"
    before = lab.serving(site, lab.record())
    moving = sorted(a for a, hosts in before.items() if hosts == {host})
    if not moving:
        raise RuntimeError(f"no agent serves on {host}: the bench lab is not as expected")
    time.sleep(1.2)  # the previous incident's dedup window (1 s) has passed
    body = alert_body(site.site, host, site.service.name, "host_down", summary="bench")
    sent_wall = time.time()
    sent = time.monotonic()
    status, answer = post_alert(stack.url, secret, body)
    if status != 202 or answer["alerts"][0]["result"] != "new":
        raise RuntimeError(f"the gateway did not open an incident: {status} {answer}")
    first_serving = None
    deadline = sent + 60
    while first_serving is None and time.monotonic() < deadline:
        now = lab.serving(site, lab.record())
        if any(now.get(a) == {other} for a in moving):
            first_serving = time.monotonic() - sent
        else:
            time.sleep(0.05)
    if first_serving is None:
        raise RuntimeError(f"no agent of {host} served on {other} within 60 s")
    event = answer["alerts"][0]["event_id"]
    run = final_run_of_alert(event, deadline, "emergency-move")
    if run is None or run.start_time is None:
        raise RuntimeError(f"the run of alert {event} did not finish within 60 s")
    assert run.start_time is not None
    flow_start = run.start_time.timestamp() - sent_wall
    created = run.created.timestamp() - sent_wall if run.created else float("nan")
    if not (run.state and run.state.is_completed()):
        raise RuntimeError(f"the emergency move of {host} did not complete: {run.state}")
    return {
        "host": host,
        "at": dt.datetime.fromtimestamp(sent_wall, dt.UTC).isoformat(timespec="seconds"),
        "run_created_s": round(created, 3),
        "flow_start_s": round(flow_start, 3),
        "first_serving_s": round(first_serving, 3),
        "agents": len(moving),
    }
