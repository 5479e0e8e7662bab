"""A simulated FTS 2 agent daemon, run inside a lab host by `service transfer-agents start`.

Behaviour that the procedures depend on, as the real agent does:

* The agent takes a per-agent lock in the database (a PostgreSQL advisory lock held by its session)
  and cannot start while another session holds it: its start blocks for `lock_wait_s`, then fails.
* A channel agent starts transfers (child processes named ``<CHANNEL>__<job id>``) for Pending jobs
  of its channel while the channel is Active, and sweeps finished ones into the database.
* Stopped while transfers run, the agent loses their state: those jobs are marked Lost. A new
  instance of the agent marks any job still Active on its channel as Lost when it takes the lock.
* Its DB session killed, it keeps running and keeps trying to reconnect and retake the lock.
* A VO agent assigns its VO's Submitted jobs to their channels (Pending).
* It runs the installed software version with its rendered configuration (`infra.lab.software`):
  a broken version fails at start; each transfer records the version that started it.
* Restarted (SIGHUP, what ``service transfer-agents restart`` sends), it hands its running
  transfers over to the next instance on the same host instead of losing them (the transfers'
  state is on the box): it writes them to ``NAME.handoff`` and releases its lock; the instance
  that takes the lock adopts the ones still running and reports how long the agent was down.

The process title is the real agent name, and it runs as `edguser`, so ``ps aux | grep
glite-transfer-channel-agent | grep edguser`` means on a lab host what it means on a real one.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from typing import Any

import pg8000.native

from infra.lab.db import connect_from_host
from infra.lab.runtime import RUN_DIR, AgentRuntime, HostRuntime, load_runtime, write_state
from infra.lab.software import agent_release

RECONNECT_S = 2.0
#: how often a start waiting for its DB lock asks for it again
LOCK_POLL_S = 0.05
DB_ERRORS = (OSError, pg8000.native.InterfaceError, pg8000.native.DatabaseError)


class Agent:
    """One agent instance."""

    def __init__(
        self,
        rt: HostRuntime,
        spec: AgentRuntime,
        password: str,
        version: str = "",
        config: str = "",
    ) -> None:
        self.rt = rt
        self.version = version
        self.config = config
        #: set by SIGHUP: hand the running transfers over to the next instance
        self.restarting = False
        #: transfers adopted from the previous instance (not our children): job id -> pid
        self.adopted: dict[int, int] = {}
        #: how long the agent was down across its last restart (seconds; None: not restarted)
        self.missed_s: float | None = None
        #: started by a restart while its predecessor still serves (`infra.lab.hostcmd.restart`)
        self.takeover = bool(os.environ.get("LAB_AGENT_TAKEOVER"))
        self.locked = False
        self.spec = spec
        self.name = spec["name"]
        self.password = password
        self.conn: pg8000.native.Connection | None = None
        self.backend_pid = 0
        self.transfers: dict[int, subprocess.Popen[bytes]] = {}
        self.orphans: list[subprocess.Popen[bytes]] = []
        self.stopping = False
        self.last_reconnect = 0.0
        #: read end of the signal wake-up pipe (`main`): a signal ends the tick's wait at once
        self.wakeup: int | None = None

    # --- state ---------------------------------------------------------------------------------

    def state(self, state: str, reason: str = "") -> None:
        # a restart's new instance keeps its own file until it holds the lock: the agent's file
        # belongs to its predecessor, which serves meanwhile
        waiting = self.takeover and not self.locked
        write_state(
            self.name + (".next" if waiting else ""),
            state=state,
            pid=os.getpid(),
            backend_pid=self.backend_pid,
            reason=reason,
            since=time.time(),
            version=self.version,
            config=self.config,
            missed_s=self.missed_s,
        )

    def log(self, msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {self.name}: {msg}", flush=True)

    # --- database ------------------------------------------------------------------------------

    def _connect(self) -> pg8000.native.Connection:
        return connect_from_host(self.rt, self.password, application_name=self.name, timeout=5)

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
            # a waiting start takes the lock soon after it is released, as a blocking lock
            # request would (Oracle's DBMS_LOCK wakes its waiter); a restart's new instance
            # waits for its predecessor's handover: faster still
            time.sleep(0.02 if self.takeover else LOCK_POLL_S)
        return False

    def handoff_file(self) -> str:
        return str(RUN_DIR / f"{self.name}.handoff")

    def adopt(self) -> float | None:
        """Take over the transfers the previous instance on this host handed over; return when
        it stopped serving (None: there was no handoff)."""
        import json

        try:
            with open(self.handoff_file()) as f:
                data = json.load(f)
            os.unlink(self.handoff_file())
        except (OSError, ValueError):
            return None
        assert self.conn is not None
        channel = self.spec["channel"]
        ended = []
        for jid, pid in data.get("transfers", []):
            if not channel:
                continue
            if _title(int(pid)) != f"{channel}__{jid}":
                # it ended while no agent ran: its result is on the box, as the handover says
                ended.append(int(jid))
            else:
                rows = self.conn.run(
                    "UPDATE jobs SET agent_pid = :p WHERE id = :j AND state = 'Active' "
                    "AND channel = :c RETURNING id",
                    p=os.getpid(),
                    j=int(jid),
                    c=channel,
                )
                if rows:
                    self.adopted[int(jid)] = int(pid)
        if ended:
            self.conn.run(
                "UPDATE jobs SET state = 'Done', finished_at = clock_timestamp(), agent_pid = :p "
                "WHERE id = ANY(:ids) AND state = 'Active' AND channel = :c",
                ids=ended,
                p=os.getpid(),
                c=channel,
            )
        if self.adopted:
            self.log(f"adopted {len(self.adopted)} running transfer(s) from the previous instance")
        return float(data.get("stopped_at", 0)) or None

    def on_locked(self) -> None:
        assert self.conn is not None
        self.locked = True
        with contextlib.suppress(FileNotFoundError):
            os.unlink(RUN_DIR / f"{self.name}.next.state")
        stopped_at = self.adopt()
        if self.spec["channel"]:
            lost = self.conn.run(
                "UPDATE jobs SET state = 'Lost', finished_at = clock_timestamp(), "
                "lost_reason = 'the agent that ran it died; state lost' "
                "WHERE channel = :c AND state = 'Active' AND NOT (id = ANY(:kept)) RETURNING id",
                c=self.spec["channel"],
                kept=list(self.adopted) or [0],
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
        if stopped_at is not None:
            self.missed_s = round(max(0.0, time.time() - stopped_at), 3)
        self.state("serving")
        extra = f", down {self.missed_s:.2f} s across the restart" if stopped_at else ""
        self.log(f"serving version {self.version} (DB session {self.backend_pid}{extra})")

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
        gone = [
            jid
            for jid, pid in self.adopted.items()
            if _title(pid) != f"{self.spec['channel']}__{jid}"
        ]
        for jid in gone:
            del self.adopted[jid]
        done += gone
        if done:
            conn.run(
                "UPDATE jobs SET state = 'Done', finished_at = clock_timestamp() "
                "WHERE id = ANY(:ids) AND state = 'Active' AND host = :h AND agent_pid = :p",
                ids=done,
                h=host,
                p=pid,
            )
            for jid in done:
                self.transfers.pop(jid, None)
        most = self.spec.get("max_active", self.rt["max_active"])
        free = most - len(self.transfers) - len(self.adopted)
        if free <= 0:
            return
        rows = conn.run(
            "UPDATE jobs SET state = 'Active', host = :h, agent_pid = :p, agent_version = :v, "
            "started_at = clock_timestamp() WHERE id IN (SELECT id FROM jobs WHERE channel = :c "
            "AND state = 'Pending' AND EXISTS (SELECT 1 FROM channels WHERE name = :c AND "
            "state = 'Active') ORDER BY id LIMIT :n FOR UPDATE SKIP LOCKED) "
            "RETURNING id, duration_s",
            h=host,
            p=pid,
            c=self.spec["channel"],
            n=free,
            v=self.version,
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
        self.adopted.clear()
        self.state("db-lost", reason=str(exc)[:200])
        # a real agent backs off before reconnecting; an agent waiting for the lock elsewhere
        # (polling every LOCK_POLL_S) takes it first, as the emergency move relies on
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
            self.pause(tick)
        return self.shutdown()

    def pause(self, seconds: float) -> None:
        """Wait until the next tick; a stop or a restart (a signal) ends the wait at once."""
        deadline = time.monotonic() + seconds
        while not self.stopping and (left := deadline - time.monotonic()) > 0:
            if self.wakeup is None:
                time.sleep(min(left, 0.05))
                continue
            ready, _, _ = select.select([self.wakeup], [], [], left)
            if ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self.wakeup, 64)

    def hand_over(self, running: list[int]) -> None:
        """Write the running transfers for the next instance (before the lock is released)."""
        import json

        pids = {jid: p.pid for jid, p in self.transfers.items()} | self.adopted
        data = {"stopped_at": time.time(), "transfers": [[j, pids[j]] for j in running]}
        tmp = self.handoff_file() + ".tmp"
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, self.handoff_file())
        self.log(f"restarting: {len(running)} running transfer(s) handed over")

    def shutdown(self) -> int:
        self.state("stopping")
        channel = self.spec["channel"]
        running = [jid for jid, p in self.transfers.items() if p.poll() is None]
        running += [jid for jid, pid in self.adopted.items() if _title(pid) == f"{channel}__{jid}"]
        finished = [jid for jid in [*self.transfers, *self.adopted] if jid not in running]
        if self.conn is not None:
            try:
                if finished:
                    self.conn.run(
                        "UPDATE jobs SET state = 'Done', finished_at = clock_timestamp() "
                        "WHERE id = ANY(:ids) AND state = 'Active'",
                        ids=finished,
                    )
                if self.restarting:
                    # before the session ends: the lock is released only after the handoff
                    self.hand_over(running)
                elif running:
                    self.conn.run(
                        "UPDATE jobs SET state = 'Lost', finished_at = clock_timestamp(), "
                        "lost_reason = 'agent stopped while the transfer ran' "
                        "WHERE id = ANY(:ids) AND state = 'Active'",
                        ids=running,
                    )
                    self.log(
                        f"stopped with {len(running)} transfer(s) running: their state is lost"
                    )
                self.conn.run(
                    "UPDATE agent_sessions SET ended_at = clock_timestamp() "
                    "WHERE agent = :a AND backend_pid = :b",
                    a=self.name,
                    b=self.backend_pid,
                )
            except DB_ERRORS as exc:
                self.log(f"could not record the stop: {exc}")
        # the last word in the state file before the lock goes: the instance that takes the
        # lock next (a restart's) writes its own state after this one, never before
        self.state("stopped", reason="restarting" if self.restarting else "")
        if self.conn is not None:
            with contextlib.suppress(*DB_ERRORS):
                self.conn.close()
        return 0


def _title(pid: int) -> str:
    """The process title of a pid (empty when it is gone or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return ""
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0", 1)[0].decode(errors="replace")
    except (OSError, IndexError):
        return ""


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
    # a signal writes a byte to the pipe, so the agent's wait between ticks ends when it comes
    agent.wakeup, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)

    def _stop(_signum: int, _frame: Any) -> None:
        agent.stopping = True

    def _restart(_signum: int, _frame: Any) -> None:
        agent.restarting = agent.stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGHUP, _restart)
    agent.state("starting")
    try:
        agent.version, agent.config = agent_release(spec["name"], rt["host"])
    except RuntimeError as exc:
        agent.state("failed", reason=str(exc))
        agent.log(f"failed: {exc}")
        return 1
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
