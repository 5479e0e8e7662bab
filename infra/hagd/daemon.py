"""`handover hagd run`: the HA group daemon of one service provider (asyncio, UDP).

Every `interval` it ticks each group's state machine (`infra.hagd.group`), runs the script
actions that come out of it (``SCRIPT start|stop GROUP``, bounded by `timeout`: a script that
fails or hangs is a failed start, and the group elects another master), and sends one signed
heartbeat (`infra.hagd.protocol`) to its peers and broadcast addresses. What it receives is
verified (signature; with `peers`, the source address listed for the member it names; age
against dT1 + skew; sequence) before any group hears it, and a member's liveness counts from the
time its message was sent, not its arrival; what it drops is counted by reason. A Unix socket
(`control`, created mode 0600 under a umask: never open to others, not even for a moment)
answers ``status`` and takes ``takeover``, ``giveup`` and ``reset`` for a group
(`handover hagd ...`). On SIGTERM it stops the services it runs (a daemon
that is shut down is a provider going offline); a daemon that is killed leaves them running.

At start it runs ``SCRIPT stop GROUP`` for every group: a provider is not the master of anything
until its group elects it (a former master that reboots must not come back serving). While it
is a group's master it runs ``SCRIPT status GROUP`` every `check` seconds; a status that fails
(or hangs) makes it give up and stop standing (`infra.hagd.group`). Elections, members lost and
failures go to the gateway when `report` is set (`infra.hagd.report`). A group listed under
`pool` is a stateless pool: no election, every member serves, and the highest live rank keeps
the pool's round-robin name in DNS (`infra.hagd.pool_keeper`). A group listed under `watch` has
no service: its members (the agents' hosts) only watch each other, no script runs for it, and a
member lost is reported as a ``host_down`` about its host (`infra.hagd.report`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import time
from collections import Counter
from typing import Any

from infra.hagd.config import HagdConfig
from infra.hagd.group import Group
from infra.hagd.pool_keeper import PoolKeeper
from infra.hagd.protocol import (
    Freshness,
    Message,
    Rejected,
    check_source,
    decode,
    encode,
    group_digest,
)
from infra.hagd.report import Reporter

log = logging.getLogger("handover.hagd")
#: how often the groups' clocks are looked at (heartbeats go out every `interval`)
TICK_S = 0.05
LEVELS = {0: logging.CRITICAL, 1: logging.ERROR, 2: logging.WARNING, 3: logging.INFO}


def broadcast_addresses(ifaces: list[str]) -> list[str]:
    """The IPv4 broadcast addresses of the interfaces (`ip -j addr`)."""
    out = []
    for iface in ifaces:
        res = subprocess.run(
            ["ip", "-j", "-4", "addr", "show", "dev", iface],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        for link in json.loads(res.stdout or "[]"):
            out += [a["broadcast"] for a in link.get("addr_info", []) if a.get("broadcast")]
    return out


class BroadcastListener(asyncio.DatagramProtocol):
    """What is broadcast on one of the daemon's interfaces, handed to the daemon. The daemon's
    own socket is bound to its unicast address, and Linux delivers a datagram sent to a
    broadcast address only to sockets bound to that address (or to any address): without
    these, no daemon would ever hear a broadcast heartbeat."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.daemon.datagram_received(data, addr)


class Daemon(asyncio.DatagramProtocol):
    """One provider's daemon."""

    def __init__(self, cfg: HagdConfig, key: bytes) -> None:
        self.cfg = cfg
        self.key = key
        self.boot = secrets.token_hex(8)
        self.seq = 0
        now = time.time()
        self.reporter = Reporter(cfg.report, cfg.id, watch=frozenset(cfg.watch))
        self.groups = {
            name: Group(
                name=name,
                digest=group_digest(key, name),
                me=cfg.id,
                rank=rank,
                dt1=cfg.dt1,
                dt2=cfg.dt2,
                started_at=now,
                preempt=cfg.preempt,
                skew=cfg.skew,
                check_failures=cfg.check_failures,
            )
            for name, rank in cfg.group.items()
            if name not in cfg.pool
        }
        self.by_digest = {g.digest: g for g in self.groups.values()}
        self.pools = {
            name: PoolKeeper(
                name=name,
                digest=group_digest(key, name),
                me=cfg.id,
                rank=cfg.group[name],
                address=cfg.pool_address(name),
                allowed=cfg.pool_allowed(name),
                dns=p.dns,
                dt1=cfg.dt1,
                skew=cfg.skew,
                check=cfg.check,
                reporter=self.reporter,
                started_at=now,
            )
            for name, p in cfg.pool.items()
        }
        self.pool_by_digest = {p.digest: p for p in self.pools.values()}
        # a message older than dT1 + skew could not make its sender alive: it is stale
        self.fresh = Freshness(max_age_s=cfg.dt1 + cfg.skew, max_ahead_s=cfg.skew)
        self.counts: Counter[str] = Counter()
        self.transport: asyncio.DatagramTransport | None = None
        #: the broadcast addresses of its interfaces (`iface`): heartbeats go there, and are
        #: heard there
        self.broadcasts = broadcast_addresses(cfg.iface)
        self.targets = [(p, cfg.port) for p in cfg.peers.values()] + [
            (b, cfg.port) for b in self.broadcasts
        ]
        self.stopping = asyncio.Event()
        self.logged = {name: 0 for name in self.groups}
        #: per group: the members alive at the last tick, the last other master, the next check
        self.was_alive: dict[str, set[str]] = {name: set() for name in self.groups}
        self.other_master: dict[str, str | None] = {name: None for name in self.groups}
        self.next_check: dict[str, float] = {name: 0.0 for name in self.groups}
        #: per group, how long each action's script took the last time (seconds)
        self.script_s: dict[str, dict[str, float]] = {name: {} for name in self.groups}

    # --- network -------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        now = time.time()
        try:
            msg = decode(data, self.key)
            if msg.sender == self.cfg.id:
                return  # our own broadcast
            # before the sequence check: a datagram from the wrong address never advances it
            check_source(msg, addr[0], self.cfg.peers)
            self.fresh.check(msg, now)
        except Rejected as exc:
            reason = str(exc).split(" (", 1)[0].split(":", 1)[0]
            self.counts[f"dropped: {reason}"] += 1
            log.info("dropped a datagram from %s: %s", addr[0], exc)
            return
        self.counts["accepted"] += 1
        for st in msg.groups:
            g = self.by_digest.get(st.digest)
            if g is not None:
                g.heard(msg.sender, st, now, sent=msg.time)
            p = self.pool_by_digest.get(st.digest)
            if p is not None:
                p.heard(msg.sender, st, now, sent=msg.time)

    def send(self) -> None:
        if self.transport is None:
            return
        self.seq += 1
        msg = Message(
            sender=self.cfg.id,
            boot=self.boot,
            seq=self.seq,
            time=time.time(),
            groups=tuple(g.state() for g in self.groups.values())
            + tuple(p.state() for p in self.pools.values()),
        )
        data = encode(msg, self.key)
        for target in self.targets:
            with contextlib.suppress(OSError):
                self.transport.sendto(data, target)
        self.counts["sent"] += 1

    # --- scripts -------------------------------------------------------------------------------

    async def script(self, action: str, group: str) -> tuple[bool, str]:
        """Run ``SCRIPT ACTION GROUP`` within the timeout: (exit 0 in time, what it said).

        Its environment says who runs it and who was the group's master (``HAGD_ID``,
        ``HAGD_GROUP``, ``HAGD_MASTER``): `handover-switch` asks for the switch away from it.
        """
        if group in self.cfg.watch:
            return True, "a watch group: nothing to run"
        assert self.cfg.script is not None  # checked at load for every group but watch ones
        g = self.groups.get(group)  # None: a stateless pool (no master)
        env = {
            **os.environ,
            "HAGD_ID": self.cfg.id,
            "HAGD_GROUP": group,
            "HAGD_MASTER": g.master if g and g.master and g.master != self.cfg.id else "",
        }
        try:
            proc = await asyncio.create_subprocess_exec(
                str(self.cfg.script),
                action,
                group,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        except OSError as exc:
            return False, f"cannot run {self.cfg.script}: {exc}"
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), self.cfg.timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            return False, f"{action} did not finish within {self.cfg.timeout:g} s"
        text = out.decode(errors="replace").strip()[-300:]
        if proc.returncode != 0:
            return False, f"{action} exited {proc.returncode}: {text or 'no output'}"
        return True, text

    async def act(self, g: Group, action: str) -> None:
        t0 = time.monotonic()
        ok, detail = await self.script(action, g.name)
        self.script_s[g.name][action] = round(time.monotonic() - t0, 3)
        now = time.time()
        if action == "start":
            g.started(ok, now, detail)
            self.next_check[g.name] = now + self.cfg.check
        elif action == "status":
            g.checked(ok, now, detail)
            self.next_check[g.name] = now + self.cfg.check
        else:
            g.stopped(ok, now, detail)
        self.send()  # say the new mode at once

    def _spawn(self, tasks: set[asyncio.Task[None]], g: Group, action: str) -> None:
        self._spawn_coro(tasks, self.act(g, action))

    @staticmethod
    def _spawn_coro(tasks: set[asyncio.Task[None]], coro: Any) -> None:
        t = asyncio.create_task(coro)
        tasks.add(t)
        t.add_done_callback(tasks.discard)

    def _watch(self, g: Group, now: float, tasks: set[asyncio.Task[None]]) -> None:
        """Members lost and back, the last other master, the master's status check."""
        alive = set(g.alive(now))
        for gone in sorted(self.was_alive[g.name] - alive):
            m = g.members[gone]
            detail = f"{gone} (rank {m.rank}, {m.mode}) not heard for {g.dt1:g} s"
            log.warning("%s: %s", g.name, detail)
            self.reporter.report(g.name, gone, "lost", detail)
        for back in sorted(alive - self.was_alive[g.name]):
            log.info(
                "%s: %s heard (rank %d, %s)",
                g.name,
                back,
                g.members[back].rank,
                g.members[back].mode,
            )
        self.was_alive[g.name] = alive
        if g.master and g.master != self.cfg.id:
            self.other_master[g.name] = g.master
        if (
            g.mode == "master"
            and not g.busy
            and self.cfg.check > 0
            and now >= self.next_check[g.name]
        ):
            g.busy = True
            self._spawn(tasks, g, "status")

    # --- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.cfg.iface:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.bind((self.cfg.address, self.cfg.port))
        await loop.create_datagram_endpoint(lambda: self, sock=sock)
        for address in self.broadcasts:
            heard = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            heard.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            heard.bind((address, self.cfg.port))
            await loop.create_datagram_endpoint(lambda: BroadcastListener(self), sock=heard)
        server = await self._control()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        log.warning(
            "hagd %s on %s:%d, groups %s, peers %s",
            self.cfg.id,
            self.cfg.address,
            self.cfg.port,
            ", ".join(f"{n} (rank {r})" for n, r in self.cfg.group.items()),
            ", ".join(f"{a}:{p}" for a, p in self.targets),
        )
        tasks: set[asyncio.Task[None]] = set()
        reporter = asyncio.create_task(self.reporter.run())
        # nothing is served here until the group elects this provider
        for name, (ok, detail) in zip(
            self.groups,
            await asyncio.gather(*(self.script("stop", n) for n in self.groups)),
            strict=True,
        ):
            log.warning(
                "%s: at start: service stopped (%s)", name, detail if ok else f"failed: {detail}"
            )
        next_send = 0.0
        while not self.stopping.is_set():
            # the groups tick more often than heartbeats go out: a dead master is seen dT1
            # after its last heartbeat, not up to a heartbeat period later
            now = time.time()
            modes = self._modes()
            for g in self.groups.values():
                for action in g.tick(now):
                    self._spawn(tasks, g, action)
                self._watch(g, now, tasks)
                self._log_events(g)
            for p in self.pools.values():
                p.step(now, self.script, lambda coro: self._spawn_coro(tasks, coro))
            if now >= next_send or modes != self._modes():
                self.send()
                next_send = now + self.cfg.interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), min(TICK_S, self.cfg.interval))
        await self._shutdown(tasks)
        reporter.cancel()
        server.close()
        with contextlib.suppress(FileNotFoundError):
            self.cfg.control.unlink()

    def _modes(self) -> list[str]:
        return [g.mode for g in self.groups.values()] + [
            str(p.serving) for p in self.pools.values()
        ]

    async def _shutdown(self, tasks: set[asyncio.Task[None]]) -> None:
        for t in tasks:
            t.cancel()
        for g in self.groups.values():
            if g.mode in ("master", "takeover", "giveup"):
                ok, detail = await self.script("stop", g.name)
                log.warning("%s: shutting down: service stopped (%s)", g.name, detail or ok)
                g._to("failure", time.time(), "daemon shut down")
        self.send()

    def _log_events(self, g: Group) -> None:
        fresh = min(g.event_count - self.logged[g.name], len(g.events))
        for e in g.events[len(g.events) - fresh :]:
            log.warning("%s: %s", g.name, e)
            mode = e.split(":", 1)[0]
            if mode == "master":
                # about the master it replaces, so the gateway notes it on that host's incident
                about = self.other_master[g.name] or self.cfg.id
                self.reporter.report(g.name, about, "master", f"{self.cfg.id} is master: {e}")
            elif mode in ("failure", "giveup"):
                self.reporter.report(g.name, self.cfg.id, mode, e)  # type: ignore[arg-type]
        self.logged[g.name] = g.event_count

    # --- control -------------------------------------------------------------------------------

    async def _control(self) -> asyncio.AbstractServer:
        """The control socket, created mode 0600 (0700 for a directory it makes).

        The umask is set around the bind, not a chmod after it: between a bind and a chmod
        another local user could connect to a socket created with the usual umask and keep
        that connection. The umask is the process's: this runs at start, before any thread.
        """
        path = self.cfg.control
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o077)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            os.umask(0o177)
            sock.bind(str(path))
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old)
        return await asyncio.start_unix_server(self._serve, sock=sock)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            req = json.loads(line or b"{}")
            answer = self.command(str(req.get("cmd", "")), str(req.get("group", "")))
        except (ValueError, TimeoutError) as exc:
            answer = {"ok": False, "error": f"bad request: {exc}"}
        writer.write(json.dumps(answer).encode() + b"\n")
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    def command(self, cmd: str, group: str) -> dict[str, Any]:
        """Answer one control request."""
        if cmd == "status":
            return {"ok": True, **self.status()}
        g = self.groups.get(group)
        if g is None:
            why = (
                "is a stateless pool: every member serves, nothing to take over or give up"
                if group in self.pools
                else f"is not one here (groups: {', '.join(self.groups)})"
            )
            return {"ok": False, "error": f"group {group!r} {why}"}
        now = time.time()
        if cmd == "takeover":
            said = g.takeover(now)
        elif cmd == "giveup":
            said = g.giveup(now)
        elif cmd == "reset":
            said = g.reset(now)
        else:
            return {
                "ok": False,
                "error": f"unknown command {cmd!r} (status, takeover, giveup, reset)",
            }
        self.send()
        return {"ok": True, "said": said}

    def status(self) -> dict[str, Any]:
        """What `handover hagd status --json` prints."""
        now = time.time()
        return {
            "id": self.cfg.id,
            "address": f"{self.cfg.address}:{self.cfg.port}",
            "groups": {
                g.name: {
                    "rank": g.rank,
                    "mode": g.mode,
                    "for_s": round(now - g.since, 3),
                    "master": g.master,
                    "yields": g.yields,
                    "members": {
                        k: {
                            "rank": m.rank,
                            "mode": m.mode,
                            "heard_s_ago": round(now - m.heard_at, 3),
                            "alive": now - m.heard_at <= g.dt1,
                        }
                        for k, m in sorted(g.members.items())
                    },
                    "events": g.events[-10:],
                    "event_count": g.event_count,
                    "script_s": self.script_s[g.name],
                }
                for g in self.groups.values()
            }
            | {name: p.status(now) for name, p in self.pools.items()},
            "counts": dict(self.counts),
            "reports": dict(self.reporter.outcomes),
        }


def run_daemon(cfg: HagdConfig) -> int:
    """Run until SIGTERM; the exit code."""
    logging.basicConfig(
        level=LEVELS.get(cfg.debug, logging.DEBUG),
        format="%(asctime)s hagd %(levelname)s %(message)s",
    )
    key = cfg.key.resolve().get_secret_value().encode()
    if len(key) < 16:
        log.critical("the key (%s) is shorter than 16 bytes", cfg.key.describe())
        return 2
    asyncio.run(Daemon(cfg, key).run())
    return 0


def ask(control: str, cmd: str, group: str = "", timeout_s: float = 5.0) -> dict[str, Any]:
    """Send one request to a running daemon's control socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(control)
        s.sendall(json.dumps({"cmd": cmd, "group": group}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    answer: dict[str, Any] = json.loads(data or b"{}")
    return answer
