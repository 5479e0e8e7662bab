"""`handover bench detect`: from a fault to the service restored, through the monitoring loop.

Each round starts a fresh lab with `--monitoring` (handover's exporter, Debian's Prometheus and
Alertmanager; `infra.lab.monitoring`), routes its Alertmanager to a real `handover gateway` beside
`handover serve` on a temporary Prefect server, crashes the VO agents' host, and times, from the
crash: the gateway's incident opened (its audit line, to the second), the emergency move's run
created and started (Prefect's times), and the host's agents serving again on their backup (the
lab's own count, polled every 0.2 s); and the emergency move alone, from its run's start. Targets:
crash -> restored p50 <= 8 s and p95 <= 12 s, the move alone p50 <= 3 s. Nothing is typed between
the crash and the end. Then the sensors' own cost: one reading (`tasks.sensors.read_sensors`) of the
4-host lab and of a generated 50-host lab, 3 readings each.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from infra.bench.alert import ServeAndGateway, spread, stack_env, temporary_prefect
from infra.lab.lab import Lab, derive_site_file

ROOT = Path(__file__).resolve().parent.parent.parent
OCTET = 247
#: a crashed agents' host -> its agents serving on the backup: p50 and p95 targets, and the
#: emergency move alone (its run's start -> the last agent serving), p50
RESTORED_P50_S, RESTORED_P95_S, MOVE_P50_S = 8.0, 12.0, 3.0
HOST, BACKUP = "fts105", "fts106"


def _site(tmp: Path) -> Path:
    site_file = derive_site_file(
        ROOT / "config" / "sites" / "lab.yaml",
        tmp / "benchdetect.yaml",
        name="benchdetect",
        octet=OCTET,
        db_port=20000 + OCTET,
        state_dir=Path(f"/var/tmp/handover-lab/bench-detect-{os.getpid()}"),
    )
    data = yaml.safe_load(site_file.read_text())
    # each round is a new failure of the same host: the dedup window must not join them
    data["alerts"]["dedup_window_s"] = 5
    site_file.write_text(yaml.safe_dump(data, sort_keys=False))
    return site_file


def _runs_since(since: dt.datetime) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["emergency-move"]))
        )
    return [
        r for r in runs if r.parameters.get("host") == HOST and r.created and r.created >= since
    ]


def _round(
    site_file: Path, stack: ServeAndGateway, token: Path, i: int, progress: Callable[[str], None]
) -> dict[str, float]:
    lab = Lab.from_file(site_file)
    lab.up(monitoring=True)
    try:
        lab.monitoring_to(stack.url, token)
        site = lab.site
        moved = [a.name for a in site.agents_on(HOST)]
        time.sleep(3)  # the exporter's first readings, Prometheus' first scrapes
        since = dt.datetime.now(dt.UTC)
        t0 = time.time()
        lab.fault(HOST, "crash")
        restored = None
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            serving = lab.serving(site, lab.record())
            if all(serving.get(a) == {BACKUP} for a in moved):
                restored = time.time()
                break
            time.sleep(0.2)
        if restored is None:
            raise RuntimeError(f"round {i + 1}: {HOST}'s agents did not serve on {BACKUP}")
        runs = _runs_since(since)
        if len(runs) != 1:
            raise RuntimeError(f"round {i + 1}: {len(runs)} emergency moves, not 1")
        run = runs[0]
        opened = [
            json.loads(ln.split("handover.audit ", 1)[1])
            for ln in stack.gateway_lines('"result": "new"', f'"host": "{HOST}"')
        ]
        at = max(dt.datetime.fromisoformat(a["at"]).timestamp() for a in opened)
        out = {
            "fault_to_gateway_s": round(at - t0, 1),
            "fault_to_run_created_s": round(run.created.timestamp() - t0, 2),
            "fault_to_flow_start_s": round(
                (run.start_time.timestamp() if run.start_time else restored) - t0, 2
            ),
            "fault_to_restored_s": round(restored - t0, 2),
            # the emergency move alone: the run's start to the last agent serving
            "flow_start_to_restored_s": round(
                restored - (run.start_time.timestamp() if run.start_time else restored), 2
            ),
        }
        progress(
            f"round {i + 1}: crash -> gateway ~{out['fault_to_gateway_s']:.0f} s, run created "
            f"{out['fault_to_run_created_s']:.2f} s, flow start {out['fault_to_flow_start_s']:.2f} "
            f"s, agents serving on {BACKUP} {out['fault_to_restored_s']:.2f} s"
        )
        return out
    finally:
        lab.down()
        lab.remove_state()


def _reading_cost(site_file: Path, hosts: int | None, n: int) -> dict[str, Any]:
    from tasks.remote import SiteShell
    from tasks.sensors import read_sensors

    lab = Lab.from_file(site_file)
    lab.up(hosts=hosts)
    try:
        site = lab.site
        with SiteShell(site) as shell:
            read_sensors(shell, 60)  # connections opened
            took = [read_sensors(shell, 60).duration_s for _ in range(n)]
        return {"hosts": len(site.hosts), "read_s": spread(took)}
    finally:
        lab.down()
        lab.remove_state()


def bench_detect(
    *, rounds: int = 5, progress: Callable[[str], None] = lambda m: None
) -> dict[str, Any]:
    """The figures (module docstring)."""
    tmp = Path(tempfile.mkdtemp(prefix="handover-bench-detect-"))
    site_file = _site(tmp)
    token_value = secrets.token_hex(8)
    out: dict[str, Any] = {"rounds": rounds}
    progress("temporary Prefect server")
    with temporary_prefect(tmp / "prefect", 20470) as api:
        env = {**stack_env(api, secrets.token_hex(16)), "HANDOVER_ALERTMANAGER_TOKEN": token_value}
        token = tmp / "am.token"
        token.write_text(token_value)
        stack = ServeAndGateway(site_file, 20471, env=env, log_dir=tmp / "stack")
        stack.start()
        try:
            rows = [_round(site_file, stack, token, i, progress) for i in range(rounds)]
        finally:
            stack.stop()
    out["loop"] = {k: spread([r[k] for r in rows]) for k in rows[0]}
    progress("the sensors' cost: 4 hosts, then 50")
    out["cost"] = [_reading_cost(site_file, None, 3), _reading_cost(site_file, 50, 3)]
    loop, cost = out["loop"], out["cost"]
    ratio = cost[1]["read_s"]["p50"] / cost[0]["read_s"]["p50"]
    out["cost_ratio_50_to_4"] = round(ratio, 2)
    out["summary"] = [
        f"monitoring loop, {rounds} rounds (crash of {HOST}; p50, p95; min-max):",
        *(
            f"  {k.removesuffix('_s').replace('_', ' ')}: p50 {v['p50']:.2f} s, "
            f"p95 {v['p95']:.2f} s ({v['min']:.2f}-{v['max']:.2f})"
            for k, v in loop.items()
        ),
        f"  one sensor reading: {cost[0]['hosts']} hosts p50 {cost[0]['read_s']['p50']:.2f} s, "
        f"{cost[1]['hosts']} hosts p50 {cost[1]['read_s']['p50']:.2f} s (ratio {ratio:.2f})",
    ]
    restored, move = loop["fault_to_restored_s"], loop["flow_start_to_restored_s"]
    out["targets"] = {
        "fault_to_restored_p50_s": RESTORED_P50_S,
        "fault_to_restored_p95_s": RESTORED_P95_S,
        "flow_start_to_restored_p50_s": MOVE_P50_S,
    }
    out["ok"] = (
        restored["p50"] <= RESTORED_P50_S
        and restored["p95"] <= RESTORED_P95_S
        and move["p50"] <= MOVE_P50_S
    )
    out["summary"].append(
        f"  targets: crash -> restored p50 <= {RESTORED_P50_S:g} s and p95 <= "
        f"{RESTORED_P95_S:g} s, the emergency move alone p50 <= {MOVE_P50_S:g} s: "
        + ("met" if out["ok"] else "MISSED")
    )
    return out
