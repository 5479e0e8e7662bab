"""A simulated FTS 2 agent daemon, run inside a lab host by `service transfer-agents start`.

Behaviour that the procedures depend on, as in seed 000:

* The agent takes a per-agent lock in the database (a PostgreSQL advisory lock held by its session)
  and cannot start while another session holds it: its start blocks for `lock_wait_s`, then fails.
* A channel agent starts transfers (child processes named ``<CHANNEL>__<job id>``) for Pending jobs
  of its channel while the channel is Active, and sweeps finished ones into the database.
* Stopped while transfers run, the agent loses their state: those jobs are marked Lost. A new
  instance of the agent marks any job still Active on its channel as Lost when it takes the lock.
* Its DB session killed, it keeps running and keeps trying to reconnect and retake the lock.
* A VO agent assigns its VO's Submitted jobs to their channels (Pending).

The process title is the real agent name, and it runs as `edguser`, so ``ps aux | grep
glite-transfer-channel-agent | grep edguser`` means on a lab host what it means on a real one.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pg8000.native

from infra.lab.db import connect
from infra.lab.runtime import RUN_DIR, AgentRuntime, HostRuntime, load_runtime, write_state

RECONNECT_S = 2.0
DB_ERRORS = (OSError, pg8000.native.InterfaceError, pg8000.native.DatabaseError)


class Agent:
    """One agent instance."""

    def __init__(self, rt: HostRuntime, spec: AgentRuntime, password: str) -> None:
        self.rt = rt
        self.spec = spec
        self.name = spec["name"]
        self.password = password
        self.conn: pg8000.native.Connection | None = None
        self.backend_pid = 0
        self.transfers: dict[int, subprocess.Popen[bytes]] = {}
        self.orphans: list[subprocess.Popen[bytes]] = []
        self.stopping = False
        self.last_reconnect = 0.0

    # --- state ---------------------------------------------------------------------------------

    def state(self, state: str, reason: str = "") -> None:
        write_state(
            self.name,
            state=state,
            pid=os.getpid(),
            backend_pid=self.backend_pid,
            reason=reason,
            since=time.time(),
        )

    def log(self, msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {self.name}: {msg}", flush=True)

    # --- database ------------------------------------------------------------------------------

    def _connect(self) -> pg8000.native.Connection:
        return connect(
            self.rt["db_address"],
            self.rt["db_port"],
            self.password,
            source_address=self.rt["address"],
            application_name=self.name,
            timeout=5,
        )

    def lock_holder(self) -> str:
        """Describe who holds our lock, for the failure message."""
        assert self.conn is not None
        rows = self.conn.run(
            "SELECT a.pid, host(a.client_addr), a.application_name FROM pg_locks l "
            "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
            "AND l.granted AND l.objid = (hashtext(:n)::bigint & 4294967295)::oid",
            n=self.name,
        )
        if not rows:
            return "no session holds it now"
        pid, addr, app = rows[0]
        return f"held by DB session {pid} from {addr} ({app})"

    def try_lock(self) -> bool:
        assert self.conn is not None
        rows = self.conn.run("SELECT pg_try_advisory_lock(hashtext(:n))", n=self.name)
        return bool(rows[0][0])

    def take_lock(self, wait_s: float) -> bool:
        """Block up to `wait_s` for the lock, as the real agent's start does."""
        deadline = time.monotonic() + wait_s
        self.conn = self._connect()
        self.backend_pid = int(self.conn.run("SELECT pg_backend_pid()")[0][0])
        self.state("waiting-lock")
        while not self.stopping:
            if self.try_lock():
                self.on_locked()
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)
        return False

    def on_locked(self) -> None:
        assert self.conn is not None
        if self.spec["channel"]:
            lost = self.conn.run(
                "UPDATE jobs SET state = 'Lost', finished_at = clock_timestamp(), "
                "lost_reason = 'the agent that ran it died; state lost' "
                "WHERE channel = :c AND state = 'Active' RETURNING id",
                c=self.spec["channel"],
            )
            if lost:
                self.log(f"marked {len(lost)} orphaned transfer(s) Lost")
        self.conn.run(
            "INSERT INTO agent_sessions (agent, host, pid, backend_pid) VALUES (:a, :h, :p, :b)",
            a=self.name,
            h=self.rt["host"],
            p=os.getpid(),
            b=self.backend_pid,
        )
        self.state("serving")
        self.log(f"serving (DB session {self.backend_pid})")

    # --- work ----------------------------------------------------------------------------------

    def tick(self) -> None:
        assert self.conn is not None
        conn = self.conn
        host, pid = self.rt["host"], os.getpid()
        conn.run(
            "UPDATE agent_sessions SET heartbeat_at = clock_timestamp() "
            "WHERE agent = :a AND backend_pid = :b",
            a=self.name,
            b=self.backend_pid,
        )
        if self.spec["vo"]:
            conn.run(
                "UPDATE jobs SET state = 'Pending' WHERE id IN (SELECT id FROM jobs WHERE "
                "vo = :v AND state = 'Submitted' ORDER BY id LIMIT 500 FOR UPDATE SKIP LOCKED)",
                v=self.spec["vo"],
            )
            return
        done = [jid for jid, p in self.transfers.items() if p.poll() is not None]
        if done:
            conn.run(
                "UPDATE jobs SET state = 'Done', finished_at = clock_timestamp() "
                "WHERE id = ANY(:ids) AND state = 'Active' AND host = :h AND agent_pid = :p",
                ids=done,
                h=host,
                p=pid,
            )
            for jid in done:
                del self.transfers[jid]
        free = self.rt["max_active"] - len(self.transfers)
        if free <= 0:
            return
        rows = conn.run(
            "UPDATE jobs SET state = 'Active', host = :h, agent_pid = :p, "
            "started_at = clock_timestamp() WHERE id IN (SELECT id FROM jobs WHERE channel = :c "
            "AND state = 'Pending' AND EXISTS (SELECT 1 FROM channels WHERE name = :c AND "
            "state = 'Active') ORDER BY id LIMIT :n FOR UPDATE SKIP LOCKED) "
            "RETURNING id, duration_s",
            h=host,
            p=pid,
            c=self.spec["channel"],
            n=free,
        )
        for jid, duration in rows:
            self.transfers[int(jid)] = subprocess.Popen(
                [f"{self.spec['channel']}__{jid}", f"{float(duration):.2f}"],
                executable="/bin/sleep",
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                close_fds=True,
            )

    def lose_session(self, exc: BaseException) -> None:
        self.log(f"lost its DB session ({exc}); retrying")
        with contextlib.suppress(Exception):
            if self.conn is not None:
                self.conn.close()
        self.conn = None
        # the transfers still run, but their state can no longer be swept: a new instance will
        # mark them Lost; keep reaping the processes
        self.orphans.extend(self.transfers.values())
        self.transfers.clear()
        self.state("db-lost", reason=str(exc)[:200])
        # a real agent backs off before reconnecting; an agent waiting for the lock elsewhere
        # (polling every 0.2 s) takes it first, as seed 000's emergency procedure relies on
        self.last_reconnect = time.monotonic()

    def reconnect(self) -> None:
        try:
            self.conn = self._connect()
            self.backend_pid = int(self.conn.run("SELECT pg_backend_pid()")[0][0])
            if self.try_lock():
                self.on_locked()
            else:
                self.conn.close()
                self.conn = None
        except DB_ERRORS as exc:
            self.conn = None
            self.log(f"reconnect failed: {exc}")

    def run(self) -> int:
        tick = self.rt["tick_s"]
        while not self.stopping:
            self.orphans = [p for p in self.orphans if p.poll() is None]
            if self.conn is None:
                if time.monotonic() - self.last_reconnect >= RECONNECT_S:
                    self.last_reconnect = time.monotonic()
                    self.reconnect()
            else:
                try:
                    self.tick()
                except DB_ERRORS as exc:
                    self.lose_session(exc)
            time.sleep(tick)
        return self.shutdown()

    def shutdown(self) -> int:
        self.state("stopping")
        running = [jid for jid, p in self.transfers.items() if p.poll() is None]
        if self.conn is not None:
            try:
                if running:
                    self.conn.run(
                        "UPDATE jobs SET state = 'Lost', finished_at = clock_timestamp(), "
                        "lost_reason = 'agent stopped while the transfer ran' "
                        "WHERE id = ANY(:ids) AND state = 'Active'",
                        ids=running,
                    )
                    self.log(
                        f"stopped with {len(running)} transfer(s) running: their state is lost"
                    )
                finished = [jid for jid in self.transfers if jid not in running]
                if finished:
                    self.conn.run(
                        "UPDATE jobs SET state = 'Done', finished_at = clock_timestamp() "
                        "WHERE id = ANY(:ids) AND state = 'Active'",
                        ids=finished,
                    )
                self.conn.run(
                    "UPDATE agent_sessions SET ended_at = clock_timestamp() "
                    "WHERE agent = :a AND backend_pid = :b",
                    a=self.name,
                    b=self.backend_pid,
                )
                self.conn.close()
            except DB_ERRORS as exc:
                self.log(f"could not record the stop: {exc}")
        self.state("stopped")
        return 0


def main(argv: list[str] | None = None) -> int:
    """Run one agent: `python -m infra.lab.agent --name AGENT`."""
    ap = argparse.ArgumentParser(prog="lab-agent")
    ap.add_argument("--name", required=True)
    args = ap.parse_args(argv)
    rt = load_runtime()
    spec = next((a for a in rt["agents"] if a["name"] == args.name), None)
    if spec is None:
        print(f"{args.name}: not configured on {rt['host']}", file=sys.stderr)
        return 6
    try:
        from setproctitle import setproctitle

        setproctitle(spec["name"])
    except ImportError:  # pragma: no cover - the lab installs it
        pass
    with open(rt["db_password_file"]) as f:
        password = f.read().strip()
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    os.chown(RUN_DIR, rt["agent_uid"], rt["agent_uid"])
    (RUN_DIR / f"{spec['name']}.pid").write_text(f"{os.getpid()}\n")
    os.setgroups([])
    os.setgid(rt["agent_uid"])
    os.setuid(rt["agent_uid"])
    agent = Agent(rt, spec, password)

    def _stop(_signum: int, _frame: Any) -> None:
        agent.stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    agent.state("starting")
    try:
        locked = agent.take_lock(rt["lock_wait_s"])
    except DB_ERRORS as exc:
        agent.state("failed", reason=f"cannot reach the database: {exc}")
        agent.log(f"failed: cannot reach the database: {exc}")
        return 1
    if not locked:
        if agent.stopping:
            agent.state("stopped")
            return 0
        holder = agent.lock_holder()
        reason = f"could not take the DB lock within {rt['lock_wait_s']:g} s; {holder}"
        agent.state("failed", reason=reason)
        agent.log(f"failed: {reason}")
        return 1
    return agent.run()


if __name__ == "__main__":
    sys.exit(main())
