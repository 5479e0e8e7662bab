"""The lab daemon: submits transfers, keeps the score, and slows down hosts marked slow.

One process per lab, started by `handover lab up` and stopped by `handover lab down`.

* Load: each channel receives jobs at `jobs_per_second_per_channel`, durations drawn from the lab's
  seeded mixture of short and long transfers. Jobs go to their VO agent first (Submitted) when the
  site has VO agents, else straight to their channel (Pending). Backlog is capped per channel.
* Score, sampled every tick: per-channel downtime (time with pending work while the channel is
  Inactive or no agent serves it), and agents seen serving on two hosts at once (never expected)
  or alive on two hosts (an unreachable host still running an agent that lost its DB session).
  An agent serves when its state file says so and its DB session is alive.
* Slow hosts: every tick, all processes of the host are stopped for 3/4 of the tick.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pg8000.native

from config.loader import load_site
from infra.lab.db import connect
from infra.lab.host import HostProc, processes_by_namespace, signal_all
from infra.lab.paths import LabPaths
from infra.lab.runtime import read_state, serves
from infra.lab.settings import lab_settings
from infra.lab.workload import Workload

BACKLOG_CAP = 40
SLOW_DUTY = 0.75


class LabDaemon:
    """State of the running daemon."""

    def __init__(self, paths: LabPaths) -> None:
        self.paths = paths
        self.site = load_site(paths.site_file)
        self.lab = lab_settings(self.site)
        self.conn = connect(
            self.lab.db_address, self.lab.db_port, paths.db_password.read_text().strip()
        )
        self.workload = Workload(self.site)
        self.owed: dict[str, float] = dict.fromkeys(self.site.channels, 0.0)
        self.hosts: dict[str, dict[str, Any]] = {}
        self.hosts_mtime = 0.0
        self.twice_open: dict[tuple[str, str], int] = {}
        self.stopping = False

    def reload_hosts(self) -> None:
        try:
            mtime = self.paths.state_file.stat().st_mtime
            if mtime == self.hosts_mtime:
                return
            self.hosts = json.loads(self.paths.state_file.read_text()).get("hosts", {})
            self.hosts_mtime = mtime
        except (OSError, ValueError):
            return

    def control(self) -> dict[str, str]:
        return {k: v for k, v in self.conn.run("SELECT key, value FROM lab_control")}

    # --- load ----------------------------------------------------------------------------------

    def submit(self, dt: float, ctl: dict[str, str]) -> None:
        if ctl.get("load", "on" if self.lab.load_on_start else "off") != "on":
            return
        rate = float(ctl.get("rate", self.lab.jobs_per_second_per_channel))
        backlog = dict(
            self.conn.run(
                "SELECT channel, count(*) FROM jobs WHERE state IN ('Submitted', 'Pending') "
                "GROUP BY channel"
            )
        )
        rows: list[tuple[str, str | None, str, float, float]] = []
        for ch in self.site.channels:
            self.owed[ch] += rate * dt
            n = int(self.owed[ch])
            self.owed[ch] -= n
            if backlog.get(ch, 0) >= BACKLOG_CAP:
                continue
            for _ in range(n):
                vo, duration = self.workload.next_job(ch)
                eta = self.workload.eta_factor(ch)
                rows.append((ch, vo, "Submitted" if vo else "Pending", duration, eta))
        if rows:
            self.conn.run(
                "INSERT INTO jobs (channel, vo, state, duration_s, eta_factor) SELECT * FROM "
                "unnest(CAST(:c AS text[]), CAST(:v AS text[]), CAST(:s AS text[]), "
                "CAST(:d AS real[]), CAST(:e AS real[]))",
                c=[r[0] for r in rows],
                v=[r[1] for r in rows],
                s=[r[2] for r in rows],
                d=[r[3] for r in rows],
                e=[r[4] for r in rows],
            )

    # --- score ---------------------------------------------------------------------------------

    def agents_seen(self) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
        """Hosts where each agent is alive, and where it serves."""
        by_ns = {int(h["ns"]): name for name, h in self.hosts.items() if h.get("ns")}
        procs = processes_by_namespace(set(by_ns))
        live_backends = {int(r[0]) for r in self.conn.run("SELECT pid FROM pg_stat_activity")}
        names = {a.name for a in self.site.service.agents}
        alive: dict[str, set[str]] = {}
        serving: dict[str, set[str]] = {}
        for ns, plist in procs.items():
            host = by_ns[ns]
            for p in plist:
                if p.title in names and p.state != "Z":
                    alive.setdefault(p.title, set()).add(host)
                    st = read_state(p.title, Path(f"/proc/{p.pid}/root"))
                    if serves(st, p.nspid, live_backends):
                        serving.setdefault(p.title, set()).add(host)
        return alive, serving

    def record_twice(self, kind: str, seen: dict[str, set[str]]) -> None:
        now_twice = {a: hosts for a, hosts in seen.items() if len(hosts) > 1}
        for key in [k for k in self.twice_open if k[0] == kind and k[1] not in now_twice]:
            del self.twice_open[key]
        for agent, hosts in now_twice.items():
            key = (kind, agent)
            if key in self.twice_open:
                self.conn.run(
                    "UPDATE score_twice SET last_seen = clock_timestamp(), hosts = :h "
                    "WHERE id = :i",
                    h=",".join(sorted(hosts)),
                    i=self.twice_open[key],
                )
            else:
                rows = self.conn.run(
                    "INSERT INTO score_twice (kind, agent, hosts, first_seen, last_seen) "
                    "VALUES (:k, :a, :h, clock_timestamp(), clock_timestamp()) RETURNING id",
                    k=kind,
                    a=agent,
                    h=",".join(sorted(hosts)),
                )
                self.twice_open[key] = int(rows[0][0])

    def score(self, dt: float) -> None:
        alive, serving = self.agents_seen()
        self.record_twice("alive", alive)
        self.record_twice("serving", serving)
        served = {
            a.channel
            for a in self.site.service.agents
            if a.channel is not None and serving.get(a.name)
        }
        rows = self.conn.run(
            "SELECT c.name, c.state, (SELECT count(*) FROM jobs j WHERE j.channel = c.name "
            "AND j.state = 'Pending') FROM channels c"
        )
        down = [
            name
            for name, state, pending in rows
            if pending > 0 and (state != "Active" or name not in served)
        ]
        if down:
            self.conn.run(
                "UPDATE score_downtime SET seconds = seconds + :dt WHERE channel = ANY(:c)",
                dt=dt,
                c=down,
            )

    # --- slow hosts ----------------------------------------------------------------------------

    def throttle(self, ctl: dict[str, str], tick: float) -> None:
        slow = [
            k.split(":", 1)[1] for k, v in ctl.items() if k.startswith("fault:") and v == "slow"
        ]
        nss = {int(self.hosts[h]["ns"]) for h in slow if h in self.hosts}
        if not nss:
            return
        procs: list[HostProc] = [p for plist in processes_by_namespace(nss).values() for p in plist]
        signal_all(procs, signal.SIGSTOP)
        try:
            time.sleep(tick * SLOW_DUTY)
        finally:
            signal_all(procs, signal.SIGCONT)

    def run(self) -> int:
        tick = self.lab.tick_s
        last = time.monotonic()
        while not self.stopping:
            start = time.monotonic()
            dt, last = start - last, start
            try:
                self.reload_hosts()
                ctl = self.control()
                self.submit(dt, ctl)
                self.score(dt)
                self.throttle(ctl, tick)
            except (OSError, pg8000.native.InterfaceError, pg8000.native.DatabaseError) as exc:
                print(f"labd: {exc}; reconnecting", flush=True)
                time.sleep(1)
                with contextlib.suppress(OSError, pg8000.native.InterfaceError):
                    self.conn = connect(
                        self.lab.db_address,
                        self.lab.db_port,
                        self.paths.db_password.read_text().strip(),
                    )
            time.sleep(max(0.0, tick - (time.monotonic() - start)))
        return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m infra.lab.labd --state-dir DIR``."""
    ap = argparse.ArgumentParser(prog="labd")
    ap.add_argument("--state-dir", required=True, type=Path)
    args = ap.parse_args(argv)
    daemon = LabDaemon(LabPaths(args.state_dir))

    def _stop(_s: int, _f: Any) -> None:
        daemon.stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        from setproctitle import setproctitle

        setproctitle(f"handover-labd {daemon.site.site}")
    except ImportError:  # pragma: no cover
        pass
    return daemon.run()


if __name__ == "__main__":
    sys.exit(main())
