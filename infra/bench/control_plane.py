"""`handover bench control-plane`: kill any one part of handover's control plane, lose nothing.

A bench lab, and the control plane without a single server (`infra.control_plane`: PostgreSQL,
Redis, two API servers, the background services, HAProxy) of the bench's own; every deployment
in a work pool (`handover deploy`, with the crash-recovery automations), two `handover worker`
processes and two `handover gateway` processes sharing one incident book (in the lab's
PostgreSQL), all through the balancer's URL. Then, one row per part, in turn:

1. a pipelined clean move starts (from the host that runs the channel agents to the other);
2. an alert stream starts: a new incident every `INCIDENT_EVERY_S`, each sent `COPIES` times
   over both gateways (a sender tries the other gateway when one does not answer, and again
   until one does, as Alertmanager and the Pacemaker hook do);
3. once the move runs, the part is killed with SIGKILL (PostgreSQL: an immediate stop, then
   started again at once: a restart), and started again `RESTART_AFTER_S` later, as systemd's
   `Restart=on-failure` with `RestartSec=5` does. The worker killed is the one running the
   move (its process group: the worker, its fork server and the run), so the move is
   recovered by the crash-recovery automation on the other worker;
4. the alerts go on until the move has ended and `AFTER_S` more; then every run must end.

Each row says whether the move completed (or was recovered) and converged (every agent of the
pair on the target only, every channel Active), the jobs lost and agents ever serving twice
(from the lab's score), whether every incident has exactly one run (a run that crashed and
was started again by the crash recovery counts once, and is reported), whether the service lock
was left held, the alert -> flow start latency (p50/p95) of the incidents sent before the kill,
while the part was down and after it was back, and how long until every part served again (the
plane's parts, the balancer, both workers registered, both gateways answering).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from infra.bench.alert import spread, stack_env, stop_groups
from infra.lab.lab import Lab, derive_site_file
from infra.ports import free_port

ROOT = Path(__file__).resolve().parent.parent.parent
#: every part a row can kill, in the order the rows run
PARTS = ("api", "services", "worker", "gateway", "redis", "postgresql")
POOL = "handover-bench-plane"
#: the lab's octet and database port (no other bench or test uses them)
OCTET = 243
DB_PORT = 20243
#: seconds between new incidents, copies of each, the host they are about (it runs no agent:
#: its emergency move has nothing to move, and is refused while the clean move holds the lock)
INCIDENT_EVERY_S = 1.5
COPIES = 3
ALERT_HOST = "fts106"
#: a killed part is started again after this long (systemd's RestartSec of the units)
RESTART_AFTER_S = 5.0
#: alerts go on this long after the move has ended
AFTER_S = 15.0
#: the target for alert -> flow start once the part is back
AFTER_P95_TARGET_S = 2.0


class Procs:
    """handover's own processes of the bench (workers, gateways), each started again by name."""

    def __init__(self, work: Path, env: dict[str, str], site_file: Path) -> None:
        self.work = work
        self.env = env
        self.site_file = site_file
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.argv: dict[str, list[str]] = {}
        self.ports: dict[str, int] = {}

    def add_worker(self, name: str) -> None:
        """A `handover worker` of the pool, named `name`."""
        self.argv[name] = [
            *("worker", "--site", str(self.site_file), "--pool", POOL),
            *("--name", name, "--limit", "4"),
        ]

    def add_gateway(self, name: str, port: int) -> None:
        """A `handover gateway` on 127.0.0.1:`port` creating the runs itself."""
        self.ports[name] = port
        self.argv[name] = [
            *("gateway", "--site", str(self.site_file), "--port", str(port)),
            *("--runs-from", "gateway"),
        ]

    def start(self, name: str) -> None:
        """Start `name` (its output appended to `work/NAME.log`)."""
        home = self.work / name
        home.mkdir(mode=0o700, exist_ok=True)
        with open(self.work / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "infra.cli", *self.argv[name]],
                cwd=ROOT,
                env={**self.env, "PREFECT_HOME": str(home)},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self, name: str) -> None:
        """SIGKILL to `name`'s process group (the worker's runs die with it)."""
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def gateway_urls(self) -> list[str]:
        """The gateways' base URLs."""
        return [f"http://127.0.0.1:{p}" for p in self.ports.values()]

    def healthy(self) -> bool:
        """Whether every process runs, every gateway answers and every worker is registered
        (and heard from) with the pool."""
        from prefect.client.orchestration import get_client

        if any(p.poll() is not None for p in self.procs.values()):
            return False
        for url in self.gateway_urls():
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2):  # noqa: S310
                    pass
            except OSError:
                return False
        workers = {n for n in self.argv if n not in self.ports}
        try:
            with get_client(sync_client=True) as client:
                seen = {
                    w.name
                    for w in client.read_workers_for_work_pool(POOL)
                    if str(w.status).upper().endswith("ONLINE")
                }
        except Exception:  # noqa: BLE001 - the API is part of what is checked
            return False
        return workers <= seen

    def running_the_move(self, run_id: Any) -> str | None:
        """The worker whose log shows it took the run."""
        for name in self.argv:
            if name in self.ports:
                continue
            with contextlib.suppress(OSError):
                if str(run_id) in (self.work / f"{name}.log").read_text(errors="replace"):
                    return name
        return None

    def stop(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL)."""
        stop_groups(list(self.procs.values()))


class AlertStream:
    """New incidents about `ALERT_HOST` every `INCIDENT_EVERY_S`, each sent `COPIES` times over
    the gateways, in a thread; records when each was first sent and every answer."""

    def __init__(self, lab: Lab, urls: list[str], secret: bytes) -> None:
        self.lab = lab
        self.urls = urls
        self.secret = secret
        self.sent: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> AlertStream:
        """Start sending."""
        self._thread.start()
        return self

    def stop(self) -> list[dict[str, Any]]:
        """Stop after the incident being sent; returns every incident sent."""
        self._stop.set()
        self._thread.join(120)
        return self.sent

    def _post(self, body: bytes, first: int) -> dict[str, Any] | None:
        """Send until a gateway admits it (trying the next one after a failure), for 90 s."""
        from infra.send_alert import post_alert

        deadline = time.monotonic() + 90
        i = first
        while time.monotonic() < deadline:
            url = self.urls[i % len(self.urls)]
            i += 1
            try:
                status, answer = post_alert(url, self.secret, body, timeout_s=10)
            except OSError:
                time.sleep(0.2)
                continue
            if status == 202:
                return dict(answer["alerts"][0])
            time.sleep(0.2)
        return None

    def _run(self) -> None:
        from infra.send_alert import alert_body

        site = self.lab.site
        n = 0
        while not self._stop.is_set():
            when = dt.datetime.now(dt.UTC)
            body = alert_body(
                site.site, ALERT_HOST, site.service.name, "host_down", when=when, summary="bench"
            )
            sent_wall = time.time()
            answers = [self._post(body, n + c) for c in range(COPIES)]
            self.sent.append({"sent": sent_wall, "answers": answers})
            n += 1
            self._stop.wait(max(0.0, sent_wall + INCIDENT_EVERY_S - time.time()))


def _deployments_file(out: Path) -> Path:
    """deployments/prefect.yaml with the clean and emergency moves only: no scheduled run of
    another procedure starts in the middle of a row."""
    from infra.serve import DEPLOYMENTS_FILE

    data = yaml.safe_load(DEPLOYMENTS_FILE.read_text())
    data["deployments"] = [
        d for d in data["deployments"] if d["name"] in ("clean-move", "emergency-move")
    ]
    path = out / "prefect.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _from_host(lab: Lab) -> tuple[str, str]:
    """The clean move's direction: from the host running more of the channel agents."""
    serving = lab.serving(lab.site, lab.record())
    on = {h: sum(1 for hosts in serving.values() if hosts == {h}) for h in ("fts101", "fts102")}
    src = max(on, key=lambda h: on[h])
    return src, ("fts102" if src == "fts101" else "fts101")


def _converged(lab: Lab, to_host: str) -> list[str]:
    from tasks.remote import SiteShell
    from tasks.site_state import snapshot_site

    wrong = []
    serving = lab.serving(lab.site, lab.record())
    pair = [a for a in lab.site.service.agents if {a.primary, a.backup} == {"fts101", "fts102"}]
    for agent in pair:
        if serving.get(agent.name) != {to_host}:
            wrong.append(f"{agent.name} serves on {sorted(serving.get(agent.name) or [])}")
    with SiteShell(lab.site) as shell:
        snap = snapshot_site(shell, ["fts101", "fts102"])
    for agent in pair:
        if agent.channel and snap.channels.get(agent.channel) != "Active":
            wrong.append(f"channel {agent.channel} is {snap.channels.get(agent.channel)}")
    return wrong


def _runs(procedure: str, since: dt.datetime) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[procedure])),
            limit=200,
        )
    return [r for r in runs if r.created is not None and r.created >= since]


def _wait_quiet(timeout_s: float) -> None:
    """Wait until no run is pending, running, paused or being cancelled."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState
    from prefect.client.schemas.filters import FlowRunFilterStateType as T
    from prefect.client.schemas.objects import StateType

    busy = [StateType.PENDING, StateType.RUNNING, StateType.PAUSED, StateType.CANCELLING]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=T(any_=busy)))
            )
        if not runs:
            return
        time.sleep(1)
    raise RuntimeError(f"runs still going after {timeout_s:.0f} s: {[r.name for r in runs]}")


def _move_outcome(first: Any, timeout_s: float) -> tuple[str, Any]:
    """Wait for the move (or the run the recovery automation started for it) to end."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(first.id)
        if run.state is not None and run.state.is_final() and not run.state.is_crashed():
            return ("completed" if run.state.is_completed() else str(run.state.name).lower()), run
        if run.state is not None and run.state.is_crashed():
            again = [
                r
                for r in _runs("clean-move", first.created)
                if r.id != first.id and r.parameters == first.parameters
            ]
            if again and again[0].state is not None and again[0].state.is_final():
                outcome = "recovered" if again[0].state.is_completed() else "recovery failed"
                return outcome, again[0]
        time.sleep(1)
    return "did not end", None


def _row(
    part: str,
    lab: Lab,
    plane: Any,
    procs: Procs,
    secret: bytes,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    from flows.service_lock import lock_name

    _wait_quiet(300)
    before = lab.score()
    src, dst = _from_host(lab)
    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    move: FlowRun = run_deployment(  # type: ignore[assignment]  # sync here: a FlowRun
        "clean-move/clean-move",
        parameters={"site_file": str(procs.site_file), "from_host": src, "to_host": dst},
        timeout=0,
    )
    lock = lock_name(lab.site.site, lab.site.service.name)
    deadline = time.monotonic() + 120
    while True:
        # the alerts start once the move holds the service: their runs are refused meanwhile
        # (an emergency move that took the lock first would make the move refused instead)
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(move.id).state
            held = state is not None and state.is_running()
            if held:
                with contextlib.suppress(ObjectNotFound):
                    held = client.read_global_concurrency_limit_by_name(lock).active_slots == 1
        if held:
            break
        if time.monotonic() > deadline or (state is not None and state.is_final()):
            raise RuntimeError(f"the clean move did not take the service within 120 s: {state}")
        time.sleep(0.2)
    stream = AlertStream(lab, procs.gateway_urls(), secret).start()
    time.sleep(2.0)  # mid-move: its first agents are being handed over
    victim = part
    progress(f"{part}: clean move {src} -> {dst} running; killing {part}")
    killed = time.monotonic()
    killed_wall = time.time()
    if part == "api":
        victim = "api-1"
        plane.kill(victim)
    elif part in ("services", "redis"):
        plane.kill(part)
    elif part == "postgresql":
        plane.kill("postgresql")
    elif part == "worker":
        victim = procs.running_the_move(move.id) or "worker-1"
        procs.kill(victim)
    elif part == "gateway":
        victim = "gateway-1"
        procs.kill(victim)
    if part != "postgresql":
        time.sleep(RESTART_AFTER_S)
    if part in ("worker", "gateway"):
        procs.start(victim)
    else:
        plane.start_part(victim)
    back_wall = time.time()
    progress(f"{part}: {victim} started again after {time.monotonic() - killed:.1f} s")
    healthy_s = None
    limit = time.monotonic() + 180
    while time.monotonic() < limit:
        if all(plane.running().values()) and procs.healthy():
            healthy_s = round(time.monotonic() - killed, 2)
            break
        time.sleep(0.25)
    # the alerts go on until the move has ended (a killed worker's move is recovered about a
    # minute later: the incidents of that minute attach to the one whose run died with it), and
    # AFTER_S more
    outcome, final = _move_outcome(move, 420)
    progress(f"{part}: the move {outcome}")
    time.sleep(AFTER_S)
    sent = stream.stop()
    with contextlib.suppress(RuntimeError):
        _wait_quiet(180)
    after = lab.score()
    wrong = _converged(lab, dst)
    runs = _runs("emergency-move", since)
    by_incident: dict[str, list[Any]] = {}
    for r in runs:
        by_incident.setdefault(str(r.parameters.get("alert_id", "")), []).append(r)
    #: alert -> flow start of the incidents sent before the kill, while the part was down, and
    #: after it was back
    before_kill: list[float] = []
    during: list[float] = []
    later: list[float] = []
    not_one: list[str] = []
    seen: set[str] = set()
    #: incidents whose first run crashed and was started again by the crash recovery
    recovered: list[str] = []
    #: each incident's (seconds since the kill, alert -> flow start)
    samples: list[list[float]] = []
    unanswered = 0
    for s in sent:
        answers = [a for a in s["answers"] if a is not None]
        unanswered += len(s["answers"]) - len(answers)
        for inc in {a.get("incident") for a in answers if a.get("incident")} - seen:
            seen.add(inc)
            got = by_incident.get(str(inc), [])
            # a run whose process crashed is started again by the crash recovery with the same
            # parameters: the incident's one procedure, in two runs
            crashed = [r for r in got if r.state is not None and r.state.is_crashed()]
            if crashed:
                recovered.append(str(inc))
            if len(got) - len(crashed) != 1:
                not_one.append(f"incident {inc}: {len(got)} runs ({len(crashed)} crashed)")
        new = [a for a in answers if a.get("result") == "new"]
        if not new:
            continue
        started = sorted(
            (r for r in by_incident.get(str(new[0].get("incident")), []) if r.start_time),
            key=lambda r: r.start_time,
        )
        if started:
            # the incident's first run that started (after a crash: its recovery's run)
            latency = started[0].start_time.timestamp() - s["sent"]
            if s["sent"] < killed_wall:
                before_kill.append(latency)
            else:
                (during if s["sent"] < back_wall else later).append(latency)
            samples.append([round(s["sent"] - killed_wall, 2), round(latency, 3)])
    with get_client(sync_client=True) as client:
        slots_after = client.read_global_concurrency_limit_by_name(lock).active_slots
    lost = after.jobs_lost - before.jobs_lost
    twice = len(after.agents_running_twice) - len(before.agents_running_twice)
    after_p95 = spread(later).get("p95")
    ok = (
        outcome in ("completed", "recovered")
        and not wrong
        and lost == 0
        and twice == 0
        and not not_one
        and unanswered == 0
        and slots_after == 0
        and after_p95 is not None
        and after_p95 <= AFTER_P95_TARGET_S
    )
    return {
        "part": part,
        "killed": victim,
        "move": outcome,
        "move_run": str(final.id) if final is not None else None,
        "converged": not wrong,
        "not_converged": wrong,
        "jobs_lost": lost,
        "agents_serving_twice": twice,
        "incidents": len(sent),
        "incidents_without_exactly_one_run": not_one,
        "incidents_recovered_after_a_crash": recovered,
        "alerts_never_admitted": unanswered,
        "lock_held_after": slots_after,
        "flow_start_s_before": spread(before_kill),
        "flow_start_s_while_down": spread(during),
        "flow_start_s_after": spread(later),
        "healthy_after_s": healthy_s,
        "samples": samples,
        "ok": ok,
    }


@contextlib.contextmanager
def _auth(value: str) -> Iterator[None]:
    old = os.environ.get("PREFECT_API_AUTH_STRING")
    os.environ["PREFECT_API_AUTH_STRING"] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PREFECT_API_AUTH_STRING", None)
        else:
            os.environ["PREFECT_API_AUTH_STRING"] = old


def bench_control_plane(
    *, parts: tuple[str, ...] = PARTS, progress: Callable[[str], None] = lambda m: None
) -> dict[str, Any]:
    """One row per part of `parts` (see the module's docstring)."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    from infra.control_plane import temporary_plane
    from infra.prefect_server import api_auth
    from infra.serve import deploy_all

    work = Path(tempfile.mkdtemp(prefix="handover-bench-plane-", dir="/var/tmp"))
    work.chmod(0o755)  # the plane's PostgreSQL runs as postgres: it must reach work/pg
    site_file = derive_site_file(
        ROOT / "config" / "sites" / "lab.yaml",
        work / "benchplane.yaml",
        name="benchplane",
        octet=OCTET,
        db_port=DB_PORT,
        state_dir=Path(f"/var/tmp/handover-lab/bench-plane-{os.getpid()}"),
    )
    data = yaml.safe_load(site_file.read_text())
    data["alerts"]["dedup_window_s"] = 1
    data["alerts"]["incident_store"] = {"env": "HANDOVER_INCIDENT_STORE"}
    data["procedures"]["clean-move"]["approval"] = "none"
    site_file.write_text(yaml.safe_dump(data, sort_keys=False))
    lab = Lab.from_file(site_file)
    progress("bench lab up")
    lab.up()
    rows: list[dict[str, Any]] = []
    procs: Procs | None = None
    keep = False
    try:
        book = "handover_incidents"
        lab.db.psql_admin(f"CREATE DATABASE {book} OWNER fts")
        password = urllib.parse.quote(lab.db.password(), safe="")
        store = f"postgresql://fts:{password}@{lab.db.address}:{lab.db.port}/{book}"
        progress("control plane: PostgreSQL, Redis, 2 API servers, services, HAProxy")
        with temporary_plane(work) as plane:
            auth = api_auth(plane.home)
            secret = secrets.token_hex(16)
            env = {
                **stack_env(plane.url, secret),
                "PREFECT_API_AUTH_STRING": auth,
                "HANDOVER_INCIDENT_STORE": store,
                "PREFECT_LOGGING_LEVEL": "INFO",
            }
            with (
                _auth(auth),
                temporary_settings({PREFECT_API_URL: plane.url, PREFECT_API_AUTH_STRING: auth}),
            ):
                progress("handover deploy: the clean and emergency moves, with their automations")
                deploy_all(str(site_file), POOL, _deployments_file(work))
                procs = Procs(work, env, site_file)
                for i in (1, 2):
                    procs.add_worker(f"worker-{i}")
                    procs.add_gateway(f"gateway-{i}", free_port())
                for name in procs.argv:
                    procs.start(name)
                deadline = time.monotonic() + 120
                while not procs.healthy():
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the workers and gateways did not start; logs: {work}")
                    time.sleep(0.5)
                for part in parts:
                    rows.append(_row(part, lab, plane, procs, secret.encode(), progress))
                    r = rows[-1]
                    progress(
                        f"{part}: move {r['move']}, lost {r['jobs_lost']}, twice "
                        f"{r['agents_serving_twice']}, healthy after {r['healthy_after_s']} s, "
                        f"flow start after p95 {r['flow_start_s_after'].get('p95')} s"
                    )
    except BaseException:
        keep = True
        raise
    finally:
        if procs is not None:
            procs.stop()
        lab.down()
        lab.remove_state()
        if not keep and all(r["ok"] for r in rows):
            shutil.rmtree(work, ignore_errors=True)
    out: dict[str, Any] = {
        "parts": list(parts),
        "restart_after_s": RESTART_AFTER_S,
        "incident_every_s": INCIDENT_EVERY_S,
        "copies": COPIES,
        "targets": {"flow_start_p95_after_s": AFTER_P95_TARGET_S},
        "rows": rows,
        "ok": bool(rows) and all(r["ok"] for r in rows),
    }
    if not out["ok"]:
        out["logs"] = str(work)
    out["summary"] = [
        "control plane: 2 API servers, services, Redis, PostgreSQL behind HAProxy; 2 workers, "
        f"2 gateways; each part killed (SIGKILL) mid-move and started again {RESTART_AFTER_S:g} s "
        f"later (PostgreSQL: restarted); a new incident every {INCIDENT_EVERY_S:g} s, "
        f"{COPIES} copies each",
    ]
    for r in rows:
        d, a = r["flow_start_s_while_down"], r["flow_start_s_after"]
        out["summary"].append(
            f"  {r['part']:<10} move {r['move']}{'' if r['converged'] else ' (NOT converged)'}, "
            f"lost {r['jobs_lost']}, twice {r['agents_serving_twice']}, incidents "
            f"{r['incidents']} ({len(r['incidents_without_exactly_one_run'])} without exactly "
            f"one run, {len(r['incidents_recovered_after_a_crash'])} recovered after a crash), "
            f"lock held after {r['lock_held_after']}; flow start while down p50 "
            f"{d.get('p50', '-')} p95 {d.get('p95', '-')} s, after p50 {a.get('p50', '-')} "
            f"p95 {a.get('p95', '-')} s; healthy after {r['healthy_after_s']} s: "
            f"{'ok' if r['ok'] else 'MISSES'}"
        )
    if not out["ok"]:
        out["summary"].append(f"  logs: {work}")
    return out
