"""`handover bench alert --storm N`: one failure reported N times in 10 s, spread over gateways.

What a monitoring storm does to the gateways: every monitor, hook and Alertmanager retry reports
the same host down, over and over, to whichever gateway it knows. The bench starts a temporary
Prefect server (SQLite, the default; the deployments registered by `handover deploy`), a
PostgreSQL of its own for the shared incident book (`alerts.incident_store`) and `--gateways`
real `handover gateway` processes, then sends N identical signed "fts105 down" alerts at an even
pace over 10 s, round-robin over the gateways, each as a hook sends it (a new
connection and a fresh HMAC signature per alert). It measures:

* **runs started**: the emergency-move runs for the host afterwards (must be 1);
* **answers**: each gateway's verdicts (one `new`, the rest `attached`) and HTTP statuses;
* **latency**: from sending an alert to its answer, p50/p95/p99/max, all and per gateway
  (target p99 < 50 ms);
* **memory**: each gateway's resident set before the storm and at its peak.

No lab is started: a storm's cost is the gateways', the book's and Prefect's; the run is created,
not executed (no `handover serve`).
"""

from __future__ import annotations

import datetime as dt
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from infra.bench.alert import ROOT, stack_env, stop_groups, temporary_prefect
from infra.lab.derive import derive_site_file
from infra.pg_cluster import PgCluster
from infra.ports import free_port

P99_TARGET_MS = 50.0
STORM_S = 10.0
HOST = "fts105"


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _latency(ms: list[float]) -> dict[str, float]:
    if not ms:
        return {}
    return {
        "p50": round(statistics.median(ms), 2),
        "p95": round(_pct(ms, 0.95), 2),
        "p99": round(_pct(ms, 0.99), 2),
        "max": round(max(ms), 2),
    }


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=2):  # noqa: S310 - loopback
            return True
    except OSError:
        return False


def bench_storm(
    *, alerts: int = 1000, gateways: int = 2, progress: Callable[[str], None] = lambda m: None
) -> dict[str, Any]:
    """Send `alerts` identical alerts in 10 s over `gateways` gateways sharing one book."""
    from infra.send_alert import alert_body, post_alert

    tmp = Path(tempfile.mkdtemp(prefix="handover-bench-storm-", dir="/var/tmp"))
    tmp.chmod(0o755)
    site_file = derive_site_file(
        ROOT / "config" / "sites" / "lab.yaml",
        tmp / "benchstorm.yaml",
        name="benchstorm",
        octet=249,
        db_port=20249,
        state_dir=tmp / "lab-unused",
    )
    data = yaml.safe_load(site_file.read_text())
    data["alerts"]["incident_store"] = {"env": "HANDOVER_INCIDENT_STORE"}
    site_file.write_text(yaml.safe_dump(data, sort_keys=False))
    pg_port = free_port()
    book = PgCluster.scratch(tmp, pg_port, "the bench's incident book")
    secret = secrets.token_hex(16)
    procs: list[subprocess.Popen[bytes]] = []
    out: dict[str, Any] = {"alerts": alerts, "gateways": gateways, "storm_s": STORM_S}
    try:
        progress("incident book: a PostgreSQL of the bench's own")
        book.ensure()
        book.start()
        book.psql("CREATE ROLE book LOGIN PASSWORD 'book'")
        book.psql("CREATE DATABASE book OWNER book")
        progress("temporary Prefect server (SQLite)")
        with temporary_prefect(tmp / "prefect", free_port()) as api:
            env = {
                **stack_env(api, secret),
                "HANDOVER_INCIDENT_STORE": f"postgresql://book:book@127.0.0.1:{pg_port}/book",
            }
            deployed = subprocess.run(
                [sys.executable, "-m", "infra.cli", "deploy", "--site", str(site_file)],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            if deployed.returncode != 0:
                raise RuntimeError(f"handover deploy failed: {deployed.stderr[-1500:]}")
            urls = []
            for _ in range(gateways):
                port = free_port()
                procs.append(
                    subprocess.Popen(
                        [
                            *(sys.executable, "-m", "infra.cli", "gateway"),
                            *("--site", str(site_file), "--port", str(port)),
                        ],
                        cwd=ROOT,
                        env=env,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                )
                urls.append(f"http://127.0.0.1:{port}")
            deadline = time.monotonic() + 60
            while not all(_healthy(u) for u in urls):
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    raise RuntimeError("the gateways did not start")
                time.sleep(0.2)
            time.sleep(1.0)  # their start-up work (deployment ids) is done within it
            rss_before = [_rss_mb(p.pid) for p in procs]
            rss_peak = list(rss_before)
            stop_sampling = threading.Event()

            def sample() -> None:
                while not stop_sampling.wait(0.2):
                    for i, p in enumerate(procs):
                        rss_peak[i] = max(rss_peak[i], _rss_mb(p.pid))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            when = dt.datetime.now(dt.UTC)
            from config.loader import load_site

            site = load_site(site_file)
            body = alert_body(
                site.site, HOST, site.service.name, "host_down", when=when, summary=f"{HOST} down"
            )
            progress(f"storm: {alerts} identical alerts in {STORM_S:g} s over {gateways} gateways")
            start = time.monotonic() + 0.5

            def send(i: int) -> tuple[int, int, float, str]:
                delay = start + i * STORM_S / alerts - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                g = i % gateways
                t0 = time.perf_counter()
                try:
                    status, answer = post_alert(urls[g], secret.encode(), body, timeout_s=30)
                except OSError as exc:
                    return g, 0, (time.perf_counter() - t0) * 1000, f"error: {exc}"
                ms = (time.perf_counter() - t0) * 1000
                verdict = answer.get("alerts", [{}])[0].get("result", "?") if status == 202 else "?"
                return g, status, ms, verdict

            with ThreadPoolExecutor(max_workers=64) as ex:
                results = list(ex.map(send, range(alerts)))
            stop_sampling.set()
            sampler.join()
            time.sleep(3.0)  # a late creation would show by now
            out["runs_started"] = _runs_for(HOST)
    finally:
        stop_groups(procs)
        book.stop("immediate")
        shutil.rmtree(tmp, ignore_errors=True)
    all_ms = [ms for _, _, ms, _ in results]
    out["statuses"] = dict(Counter(str(s) for _, s, _, _ in results))
    out["verdicts"] = dict(Counter(v for _, _, _, v in results))
    out["latency_ms"] = _latency(all_ms)
    out["per_gateway"] = [
        {
            "latency_ms": _latency([ms for g, _, ms, _ in results if g == i]),
            "verdicts": dict(Counter(v for g, _, _, v in results if g == i)),
            "rss_mb_before": rss_before[i],
            "rss_mb_peak": rss_peak[i],
        }
        for i in range(gateways)
    ]
    out["targets"] = {"runs_started": 1, "latency_p99_ms": P99_TARGET_MS}
    out["ok"] = (
        out["runs_started"] == 1
        and out["statuses"] == {"202": alerts}
        and out["latency_ms"]["p99"] < P99_TARGET_MS
    )
    lat = out["latency_ms"]
    out["summary"] = [
        f"alert storm: {alerts} identical signed alerts for {HOST} in {STORM_S:g} s, round-robin "
        f"over {gateways} gateways sharing one incident book (PostgreSQL)",
        f"  runs started: {out['runs_started']} (target 1); answers {out['statuses']}, "
        f"verdicts {out['verdicts']}",
        f"  answer latency: p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms, p99 "
        f"{lat['p99']:.1f} ms (target < {P99_TARGET_MS:g}), max {lat['max']:.1f} ms",
    ]
    for i, g in enumerate(out["per_gateway"]):
        gl = g["latency_ms"]
        out["summary"].append(
            f"  gateway {i + 1}: p50 {gl['p50']:.1f} ms, p99 {gl['p99']:.1f} ms; resident "
            f"memory {g['rss_mb_before']:.0f} MB before, {g['rss_mb_peak']:.0f} MB at its peak"
        )
    return out


def _runs_for(host: str) -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["emergency-move"]))
        )
    return sum(1 for r in runs if r.parameters.get("host") == host)
