"""`handover bench hagd`: the HA group daemon's failover, manual takeover and heartbeat cost.

Real daemons (`handover hagd run`, one process each) on loopback addresses of their own
(127.OCTET.0.x), each with a service script that records, to the microsecond, when it started
and stopped the service:

* **failover**, for each setting of dT1/dT2 (1 s/1 s and 3 s/2 s by default): three providers
  (ranks 30, 20, 10); each round kills the master (SIGKILL: its box is gone) and times the kill
  to the next provider's service start, against dT1 + dT2 (the daemon's bound, plus the script);
  the killed provider then comes back as a backup;
* **manual takeover**: `takeover` on a backup: the service's gap between the old master's stop
  and the new one's start (the takeover waits dT2 for the stop);
* **heartbeat cost**: 50 providers of one group, full mesh of peers: datagrams each daemon
  receives per second and the CPU each uses (from /proc over a measured period);
* **on the lab** (`handover lab up --hagd`, the lab's dT1/dT2): each round crashes the host whose
  front end is the master (`lab fault HOST crash`) and times it to the backup's front end
  answering as the master (its daemon in mode master and ``/ready`` 200), against dT1 + dT2 +
  the start script's time + 1 s (the acceptance bound); the crashed host reboots, then a manual
  `takeover` hands the group back and the service gap (no front end answering as the master,
  polled every 10 ms) is measured.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from infra.bench.alert import spread
from infra.lab.lab import Lab, derive_site_file
from infra.lab.settings import lab_settings

ROOT = Path(__file__).resolve().parent.parent.parent
KEY = "bench-hagd-shared-key-0123456789abcdef"
LAB_OCTET = 244

SERVICE_SCRIPT = """#!/bin/sh
# the service of group $2 on this provider: a file says it runs; each start and stop is logged
# first, so that the file's state always has its line in the log; `fail-start` makes a start
# fail, `hang-start` (holding a number of seconds) makes it hang that long
D="$(dirname "$0")"
case "$1" in
  start) [ -e "$D/hang-start" ] && exec sleep "$(cat "$D/hang-start")"
         [ -e "$D/fail-start" ] && exit 1
         echo "start $(date +%s.%N)" >> "$D/service.log"; echo up > "$D/service-$2" ;;
  stop) echo "stop $(date +%s.%N)" >> "$D/service.log"; rm -f "$D/service-$2" ;;
  status) [ -e "$D/service-$2" ] ;;
esac
"""


@dataclass
class Provider:
    """One daemon of a test or bench cluster."""

    name: str
    address: str
    rank: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def control(self) -> str:
        """The daemon's control socket."""
        return str(self.dir / "hagd.sock")

    def serves(self, group: str = "fts") -> bool:
        """Whether its service of the group runs (the script's file)."""
        return (self.dir / f"service-{group}").exists()

    def status(self) -> dict[str, Any]:
        """`handover hagd status --json` of this daemon."""
        from infra.hagd.daemon import ask

        return ask(self.control, "status")

    def mode(self, group: str = "fts") -> str:
        """Its mode in the group (``down`` when the daemon does not answer)."""
        try:
            return str(self.status()["groups"][group]["mode"])
        except (OSError, ValueError, KeyError):
            return "down"

    def service_log(self) -> list[tuple[str, float]]:
        """Each start and stop of its service, with its time."""
        try:
            lines = (self.dir / "service.log").read_text().split("\n")
        except FileNotFoundError:
            return []
        return [(w[0], float(w[1])) for ln in lines if len(w := ln.split()) == 2]

    def start(self) -> None:
        """Start its daemon."""
        with open(self.dir / "hagd.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "infra.cli", "hagd", "run", "--config", str(self.config)],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop its daemon (SIGKILL: as if its box died)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    @property
    def config(self) -> Path:
        """Its configuration file."""
        return self.dir / "hagd.yaml"


def make_cluster(
    where: Path,
    octet: int,
    ranks: list[int],
    *,
    dt1: float,
    dt2: float,
    extra_peers: dict[str, str] | None = None,
    group: str = "fts",
    names: list[str] | None = None,
) -> list[Provider]:
    """Providers of one group on 127.OCTET.x.y (configured, not started); their ids are
    `names` (default p01, p02, ...); `extra_peers` (id -> address) are listed as members too."""
    names = names or [f"p{i + 1:02d}" for i in range(len(ranks))]
    where.mkdir(parents=True, exist_ok=True)
    keyfile = where / "key"
    keyfile.write_text(KEY)
    keyfile.chmod(0o600)
    ps = [
        Provider(names[i], f"127.{octet}.{1 + i // 200}.{1 + i % 200}", rank, where / names[i])
        for i, rank in enumerate(ranks)
    ]
    for p in ps:
        p.dir.mkdir(exist_ok=True)
        script = p.dir / "service.sh"
        script.write_text(SERVICE_SCRIPT)
        script.chmod(0o755)
        cfg = {
            "id": p.name,
            "address": p.address,
            "port": 3333,
            "peers": {q.name: q.address for q in ps if q is not p} | (extra_peers or {}),
            "group": {group: p.rank},
            "script": str(script),
            "timeout": 5,
            "debug": 3,
            "key": {"file": str(keyfile)},
            "dt1": dt1,
            "dt2": dt2,
            "interval": round(dt1 / 4, 3),
            "control": p.control,
        }
        p.config.write_text(yaml.safe_dump(cfg))
    return ps


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.005)


def _master(ps: list[Provider]) -> Provider | None:
    live = [p for p in ps if p.proc is not None and p.serves()]
    return live[0] if len(live) == 1 else None


def _failover(
    where: Path, octet: int, dt1: float, dt2: float, rounds: int, progress: Callable[[str], None]
) -> dict[str, Any]:
    ps = make_cluster(where, octet, [30, 20, 10], dt1=dt1, dt2=dt2)
    bound = dt1 + dt2
    times: list[float] = []
    gaps: list[float] = []
    try:
        for p in ps:
            p.start()
        _wait(lambda: _master(ps) is not None, 10 * bound + 10, "a first master")
        for i in range(rounds):
            old = _master(ps)
            assert old is not None
            progress(f"dT1 {dt1:g} s, dT2 {dt2:g} s: round {i + 1}/{rounds}, killing {old.name}")
            t0 = time.time()
            old.stop(signal.SIGKILL)
            (old.dir / "service-fts").unlink()
            _wait(lambda: _master(ps) is not None, 5 * bound + 10, "the next master")
            new = _master(ps)
            assert new is not None
            started = max(t for what, t in new.service_log() if what == "start")
            assert started > t0, f"{new.name}'s start is not in its log"
            times.append(round(started - t0, 3))
            old.start()  # back as a backup

            def back(p: Provider = old) -> bool:
                return p.mode() == "normal"

            _wait(back, 5 * bound + 10, f"{old.name} back")
        # a manual takeover by a backup: the old master stops first
        for _ in range(rounds):
            cur = _master(ps)
            assert cur is not None
            backup = next(p for p in ps if p is not cur)
            from infra.hagd.daemon import ask

            asked = time.time()
            ask(backup.control, "takeover", "fts")

            def taken(b: Provider = backup, c: Provider = cur) -> bool:
                return b.serves() and not c.serves()

            _wait(taken, 5 * bound + 10, "the takeover")
            stopped = max(t for what, t in cur.service_log() if what == "stop")
            started = max(t for what, t in backup.service_log() if what == "start")
            assert stopped > asked and started > asked, "a start or stop missing from a log"
            gaps.append(round(started - stopped, 3))
    finally:
        for p in ps:
            p.stop(signal.SIGKILL)
    return {
        "dt1_s": dt1,
        "dt2_s": dt2,
        "failover_s": spread(times),
        "failover_vs_bound": round(statistics.median(times) / bound, 3),
        "manual_takeover_gap_s": spread(gaps),
    }


def _cost(
    where: Path, octet: int, n: int, measure_s: float, progress: Callable[[str], None]
) -> dict[str, Any]:
    dt1 = 3.0
    ps = make_cluster(where, octet, list(range(n, 0, -1)), dt1=dt1, dt2=2.0)
    try:
        progress(f"heartbeat cost: {n} providers")
        for p in ps:
            p.start()
        _wait(lambda: _master(ps) is not None, 60, "a master among the 50")
        time.sleep(2)
        before = {p.name: (_cpu_s(p), p.status()["counts"].get("accepted", 0)) for p in ps}
        t0 = time.monotonic()
        time.sleep(measure_s)
        took = time.monotonic() - t0
        cpu = []
        recv = []
        for p in ps:
            c0, a0 = before[p.name]
            cpu.append(100 * (_cpu_s(p) - c0) / took)
            recv.append((p.status()["counts"].get("accepted", 0) - a0) / took)
    finally:
        for p in ps:
            p.stop(signal.SIGKILL)
    return {
        "providers": n,
        "interval_s": dt1 / 4,
        "received_per_s_per_daemon": round(statistics.median(recv), 1),
        "cpu_percent_per_daemon": spread([round(c, 2) for c in cpu]),
    }


def _cpu_s(p: Provider) -> float:
    assert p.proc is not None
    fields = Path(f"/proc/{p.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _lab_rounds(tmp: Path, rounds: int, progress: Callable[[str], None]) -> dict[str, Any]:
    from infra.hagd.daemon import ask
    from infra.lab.lab import hagd_group
    from tasks.http_probe import ask_ready

    site_file = derive_site_file(
        ROOT / "config" / "sites" / "lab.yaml",
        tmp / "benchhagd.yaml",
        name="benchhagd",
        octet=LAB_OCTET,
        db_port=20000 + LAB_OCTET,
        state_dir=Path(f"/var/tmp/handover-lab/bench-hagd-{os.getpid()}"),
    )
    lab = Lab.from_file(site_file)
    progress("lab: up with --hagd")
    lab.up(hagd=True)
    site = lab.site
    assert site.frontend is not None
    cfg, group = lab_settings(site).hagd, hagd_group(site)
    fronts = site.frontend.hosts[:2]

    def view(host: str) -> dict[str, Any]:
        try:
            g: dict[str, Any] = ask(str(lab.paths.hagd_control(host)), "status")["groups"][group]
        except (OSError, ValueError, KeyError):
            return {}
        return g

    def serves(host: str) -> bool:
        answer = ask_ready(site.host(host).address, site.frontend.port, 0.5)  # type: ignore[union-attr]
        return answer is not None and answer[0] == 200 and view(host).get("mode") == "master"

    failover: list[float] = []
    bounds: list[float] = []
    gaps: list[float] = []
    try:
        _wait(lambda: any(serves(h) for h in fronts), 30, "a first master on the lab")
        for i in range(rounds):
            master = next(h for h in fronts if serves(h))
            backup = next(h for h in fronts if h != master)
            t0 = time.monotonic()
            lab.fault(master, "crash")
            _wait(lambda b=backup: serves(b), 60, f"{backup} serving")  # type: ignore[misc]
            failover.append(round(time.monotonic() - t0, 3))
            start_s = float(view(backup).get("script_s", {}).get("start", 0.0))
            bounds.append(round(cfg.dt1_s + cfg.dt2_s + start_s + 1.0, 3))
            progress(
                f"lab round {i + 1}/{rounds}: {master} crashed -> {backup} serving in "
                f"{failover[-1]:.2f} s (bound {bounds[-1]:.2f} s)"
            )
            lab.heal(master)
            _wait(lambda m=master: view(m).get("mode") == "normal", 60, f"{master} back")  # type: ignore[misc]
            # hand the group back by hand: the gap when no front end serves as the master
            ask(str(lab.paths.hagd_control(master)), "takeover", group)
            last_backup = time.monotonic()
            deadline = last_backup + 60
            while time.monotonic() < deadline:
                answer = ask_ready(site.host(master).address, site.frontend.port, 0.5)
                if answer is not None and answer[0] == 200:
                    break
                b = ask_ready(site.host(backup).address, site.frontend.port, 0.5)
                if b is not None and b[0] == 200:
                    last_backup = time.monotonic()
                time.sleep(0.01)
            else:
                raise RuntimeError(f"{master} did not take the group back")
            gaps.append(round(time.monotonic() - last_backup, 3))
            _wait(lambda m=master: serves(m), 30, f"{master} master again")  # type: ignore[misc]
    finally:
        lab.down()
        lab.remove_state()
    return {
        "dt1_s": cfg.dt1_s,
        "dt2_s": cfg.dt2_s,
        "crash_to_serving_s": spread(failover),
        "bound_s": spread(bounds),
        "within_bound": sum(f <= b for f, b in zip(failover, bounds, strict=True)),
        "manual_takeover_gap_s": spread(gaps),
    }


def bench_hagd(
    *,
    rounds: int = 5,
    settings: tuple[tuple[float, float], ...] = ((1.0, 1.0), (3.0, 2.0)),
    providers: int = 50,
    measure_s: float = 10.0,
    lab: bool = True,
    progress: Callable[[str], None] = lambda m: None,
) -> dict[str, Any]:
    """The figures (module docstring)."""
    tmp = Path(tempfile.mkdtemp(prefix="handover-bench-hagd-"))
    out: dict[str, Any] = {"rounds": rounds, "settings": []}
    for i, (dt1, dt2) in enumerate(settings):
        out["settings"].append(_failover(tmp / f"s{i}", 243, dt1, dt2, rounds, progress))
    out["cost"] = _cost(tmp / "cost", 242, providers, measure_s, progress)
    if lab:
        out["lab"] = _lab_rounds(tmp, rounds, progress)
    lines = [f"HA group daemon, {rounds} rounds per setting (p50, p95; min-max)"]
    ok = True
    for s in out["settings"]:
        f, g = s["failover_s"], s["manual_takeover_gap_s"]
        bound = s["dt1_s"] + s["dt2_s"]
        # the daemon's bound plus the script's time and a heartbeat's
        ok = ok and f["p95"] <= bound + 1.0
        lines += [
            f"  dT1 {s['dt1_s']:g} s, dT2 {s['dt2_s']:g} s: master killed -> next master serving "
            f"p50 {f['p50']:.2f} s, p95 {f['p95']:.2f} s ({f['min']:.2f}-{f['max']:.2f}); "
            f"p50 / (dT1 + dT2) {s['failover_vs_bound']:.3f}",
            f"    manual takeover: service gap p50 {g['p50']:.3f} s, p95 {g['p95']:.3f} s",
        ]
    c = out["cost"]
    lines.append(
        f"  heartbeats at {c['providers']} providers (interval {c['interval_s']:g} s, full mesh): "
        f"{c['received_per_s_per_daemon']:.0f} datagrams/s received per daemon, CPU per daemon "
        f"p50 {c['cpu_percent_per_daemon']['p50']:.2f} % "
        f"(max {c['cpu_percent_per_daemon']['max']:.2f} %)"
    )
    if lab:
        lr = out["lab"]
        f, b, g = lr["crash_to_serving_s"], lr["bound_s"], lr["manual_takeover_gap_s"]
        ok = ok and lr["within_bound"] == rounds
        lines += [
            f"  lab (dT1 {lr['dt1_s']:g} s, dT2 {lr['dt2_s']:g} s): master's host crashed -> "
            f"backup's front end serving p50 {f['p50']:.2f} s, p95 {f['p95']:.2f} s "
            f"({f['min']:.2f}-{f['max']:.2f}); bound dT1 + dT2 + start script + 1 s p50 "
            f"{b['p50']:.2f} s; {lr['within_bound']}/{rounds} rounds within it",
            f"    manual takeover back: no master serving for p50 {g['p50']:.3f} s, "
            f"p95 {g['p95']:.3f} s",
        ]
    out["ok"] = ok
    out["summary"] = lines
    return out
