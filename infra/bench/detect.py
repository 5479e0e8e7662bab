"""`handover bench detect`: from a fault to the service restored, by each detection path.

Each round starts a fresh lab, routes its detector to a real `handover gateway` beside
`handover serve` on a temporary Prefect server, crashes the VO agents' host, and times, from the
crash: the gateway's incident opened (its audit line, to the millisecond), the emergency move's run
created and started (Prefect's times), and the host's agents serving again on their backup (the
lab's own count, polled every 0.2 s); and the emergency move alone, from its run's start.
Nothing is typed between the crash and the end. The detection paths (`PATHS`):

* ``exporter``: handover's exporter (its fast reachability probe), Debian's Prometheus and
  Alertmanager with the site's rules (`infra.lab.monitoring`);
* ``hagd``: the HA group daemon on the agents' host and its backup, in a watch group
  (`lab.hagd.watch`): the backup's daemon reports the host lost as ``host_down`` after dT1;
* ``pacemaker``: a one-node Pacemaker cluster (Debian's corosync and pacemaker) watching one of
  the host's agents through `ocf:handover:fts-agent` (unmanaged: it monitors, handover moves);
  its alert agent reports the failed monitor. A crashed host's agents vanish with it, so the
  monitor fails on its next run. (A cluster of several nodes reports a lost node as well; the
  lab's one node stands for the host.)

Targets: crash -> restored p50 <= 8 s and p95 <= 12 s through the fastest path, the move alone
p50 <= 3 s on every path. Then the sensors' own cost: one reading (`tasks.sensors.read_sensors`)
of the 4-host lab and of a generated 50-host lab, 3 readings each.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import pwd
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
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
#: the detection paths, in the order they run
PATHS = ("exporter", "hagd", "pacemaker")
PACEMAKER_TOOLS = ("corosync", "pacemakerd", "cibadmin", "crm_resource", "nsenter")


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
    # the agents' host and its backup watch each other when their daemons run (`hagd` path)
    data["lab"].setdefault("hagd", {})["watch"] = [HOST, BACKUP]
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


def missing(path: str) -> str | None:
    """Why a detection path cannot run on this machine (None: it can)."""
    if path == "pacemaker":
        absent = [t for t in PACEMAKER_TOOLS if shutil.which(t) is None]
        if absent:
            return f"{', '.join(absent)} not found (Debian packages corosync pacemaker)"
        if os.geteuid() != 0:
            return "Pacemaker's daemons need root"
    return None


@contextlib.contextmanager
def _detector(path: str, lab: Lab, stack: ServeAndGateway, tmp: Path) -> Iterator[None]:
    """The path's detector, reporting to the stack's gateway, for one round."""
    if path == "exporter":
        lab.monitoring_to(stack.url, tmp / "am.token")
        time.sleep(3)  # the exporter's first readings, Prometheus' first scrapes
        yield
        return
    if path == "hagd":
        from infra.hagd.daemon import ask

        lab.report_to(stack.url, tmp / "webhook.secret")
        deadline = time.monotonic() + 30
        while True:  # the backup's daemon hears the host: a loss can be seen
            with contextlib.suppress(OSError, KeyError):
                groups = ask(str(lab.paths.hagd_control(BACKUP)), "status")["groups"]
                if any(g["members"].get(HOST, {}).get("alive") for g in groups.values()):
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{BACKUP}'s HA group daemon never heard {HOST}")
            time.sleep(0.2)
        yield
        return
    yield from _pacemaker(lab, stack, tmp)


def _pacemaker(lab: Lab, stack: ServeAndGateway, tmp: Path) -> Iterator[None]:
    """A one-node cluster watching one of the host's agents (unmanaged), its alert agent
    reporting to the gateway as the host."""
    from infra.lab.pacemaker import OneNodeCluster
    from infra.ocf import install

    installed = install()
    hacluster = pwd.getpwnam("hacluster")
    work = Path(f"/var/tmp/handover-lab/bench-detect-pcmk-{os.getpid()}")
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)
    secret, spool = work / "webhook.secret", work / "spool"
    secret.write_bytes((tmp / "webhook.secret").read_bytes())
    spool.mkdir(exist_ok=True)
    for f in (secret, spool):
        os.chown(f, hacluster.pw_uid, hacluster.pw_gid)
    secret.chmod(0o600)
    site = lab.site
    agent = site.agents_on(HOST)[0].name
    init_pid = lab.record()["hosts"][HOST]["init_pid"]
    cluster = OneNodeCluster(
        str(ROOT / "infra" / "hooks" / "pacemaker_alert.py"),
        workdir=str(work / "cluster"),
        alert_env={
            "HANDOVER_GATEWAY_URL": stack.url,
            "HANDOVER_SITE": site.site,
            "HANDOVER_SERVICE": site.service.name,
            "HANDOVER_WEBHOOK_SECRET_FILE": str(secret),
            "HANDOVER_SPOOL_DIR": str(spool),
            "HANDOVER_HOST_MAP": f"{os.uname().nodename}={HOST}",
        },
        resource_id="fts-agent-watch",
        resource_type="ocf:handover:fts-agent",
        resource_params={"instance": agent, "exec_prefix": f"nsenter -t {init_pid} -u -p -m --"},
        # watched, never started or stopped by Pacemaker: handover moves the agents
        resource_meta={"is-managed": "false"},
        monitor_interval="1s",
    )
    try:
        cluster.start(timeout_s=90)
        deadline = time.monotonic() + 60
        while not cluster.resource_running("fts-agent-watch"):
            if time.monotonic() > deadline:
                raise RuntimeError("Pacemaker never saw the watched agent running")
            time.sleep(0.2)
        time.sleep(2)  # a monitor or two pass: the watch is in its steady state
        yield
    finally:
        cluster.stop()
        for f in installed:
            f.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)


def _round(
    path: str,
    site_file: Path,
    stack: ServeAndGateway,
    tmp: Path,
    i: int,
    progress: Callable[[str], None],
) -> dict[str, float]:
    lab = Lab.from_file(site_file)
    lab.up(monitoring=path == "exporter", hagd=path == "hagd")
    try:
        site = lab.site
        moved = [a.name for a in site.agents_on(HOST)]
        with _detector(path, lab, stack, tmp):
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
            raise RuntimeError(f"{path} round {i + 1}: {HOST}'s agents did not serve on {BACKUP}")
        runs = _runs_since(since)
        if len(runs) != 1:
            raise RuntimeError(f"{path} round {i + 1}: {len(runs)} emergency moves, not 1")
        run = runs[0]
        opened = [
            json.loads(ln.split("handover.audit ", 1)[1])
            for ln in stack.gateway_lines('"result": "new"', f'"host": "{HOST}"')
        ]
        at = max(dt.datetime.fromisoformat(a["at"]).timestamp() for a in opened)
        started = run.start_time.timestamp() if run.start_time else restored
        out = {
            "fault_to_gateway_s": round(at - t0, 2),
            "fault_to_run_created_s": round(run.created.timestamp() - t0, 2),
            "fault_to_flow_start_s": round(started - t0, 2),
            "fault_to_restored_s": round(restored - t0, 2),
            # the emergency move alone: the run's start to the last agent serving
            "flow_start_to_restored_s": round(restored - started, 2),
        }
        progress(
            f"{path} round {i + 1}: crash -> gateway {out['fault_to_gateway_s']:.2f} s, run "
            f"created {out['fault_to_run_created_s']:.2f} s, flow start "
            f"{out['fault_to_flow_start_s']:.2f} s, agents serving on {BACKUP} "
            f"{out['fault_to_restored_s']:.2f} s"
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
    *,
    rounds: int = 5,
    paths: tuple[str, ...] = PATHS,
    progress: Callable[[str], None] = lambda m: None,
) -> dict[str, Any]:
    """The figures (module docstring): `rounds` crashes through each of `paths`."""
    tmp = Path(tempfile.mkdtemp(prefix="handover-bench-detect-"))
    site_file = _site(tmp)
    out: dict[str, Any] = {"rounds": rounds, "paths": {}, "not_run": {}}
    runnable = []
    for path in paths:
        why = missing(path)
        if why:
            out["not_run"][path] = why
            progress(f"{path}: not run: {why}")
        else:
            runnable.append(path)
    if not runnable:
        raise RuntimeError(f"no detection path can run here: {out['not_run']}")
    progress("temporary Prefect server")
    am_token, webhook_secret = secrets.token_hex(8), secrets.token_hex(16)
    (tmp / "am.token").write_text(am_token)
    (tmp / "webhook.secret").write_text(webhook_secret)
    with temporary_prefect(tmp / "prefect", 20470) as api:
        env = {**stack_env(api, webhook_secret), "HANDOVER_ALERTMANAGER_TOKEN": am_token}
        stack = ServeAndGateway(site_file, 20471, env=env, log_dir=tmp / "stack")
        stack.start()
        try:
            for path in runnable:
                rows = [_round(path, site_file, stack, tmp, i, progress) for i in range(rounds)]
                out["paths"][path] = {k: spread([r[k] for r in rows]) for k in rows[0]}
        finally:
            stack.stop()
    progress("the sensors' cost: 4 hosts, then 50")
    out["cost"] = [_reading_cost(site_file, None, 3), _reading_cost(site_file, 50, 3)]
    cost = out["cost"]
    ratio = cost[1]["read_s"]["p50"] / cost[0]["read_s"]["p50"]
    out["cost_ratio_50_to_4"] = round(ratio, 2)
    measured = out["paths"]
    fastest = min(measured, key=lambda p: measured[p]["fault_to_restored_s"]["p50"])
    out["fastest"] = fastest
    out["summary"] = [
        f"a crash of {HOST} to its agents serving on {BACKUP}, {rounds} rounds per "
        "path (p50, p95; min-max):"
    ]
    for path, loop in measured.items():
        out["summary"].append(f"  {path}{' (fastest)' if path == fastest else ''}:")
        out["summary"] += [
            f"    {k.removesuffix('_s').replace('_', ' ')}: p50 {v['p50']:.2f} s, "
            f"p95 {v['p95']:.2f} s ({v['min']:.2f}-{v['max']:.2f})"
            for k, v in loop.items()
        ]
    out["summary"] += [f"  {p}: not run: {why}" for p, why in out["not_run"].items()]
    out["summary"].append(
        f"  one sensor reading: {cost[0]['hosts']} hosts p50 {cost[0]['read_s']['p50']:.2f} s, "
        f"{cost[1]['hosts']} hosts p50 {cost[1]['read_s']['p50']:.2f} s (ratio {ratio:.2f})"
    )
    restored = measured[fastest]["fault_to_restored_s"]
    out["targets"] = {
        "fault_to_restored_p50_s": RESTORED_P50_S,
        "fault_to_restored_p95_s": RESTORED_P95_S,
        "flow_start_to_restored_p50_s": MOVE_P50_S,
    }
    out["ok"] = (
        restored["p50"] <= RESTORED_P50_S
        and restored["p95"] <= RESTORED_P95_S
        and all(m["flow_start_to_restored_s"]["p50"] <= MOVE_P50_S for m in measured.values())
    )
    out["summary"].append(
        f"  targets: crash -> restored p50 <= {RESTORED_P50_S:g} s and p95 <= "
        f"{RESTORED_P95_S:g} s through the fastest path ({fastest}), the emergency move alone "
        f"p50 <= {MOVE_P50_S:g} s on every path: " + ("met" if out["ok"] else "MISSED")
    )
    return out
