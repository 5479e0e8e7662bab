"""The faults the lab can inject into a host (`handover lab fault HOST KIND`), and their healing."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from infra.lab.errors import LabError
from infra.lab.host import kill_host, port_open, signal_all
from infra.lab.settings import lab_settings

if TYPE_CHECKING:
    from infra.lab.lab import Lab

#: sshd-down: host and agents up, SSH refused; frozen: every process stopped, SSH hangs; crash:
#: the host vanishes and its processes die (its DB sessions stay open); db-unreachable: its
#: packets to the database are dropped; slow: its processes run a quarter of the time;
#: frontend-down: its web front end killed (SIGKILL), the host and its agents run on; partition:
#: the HA group daemon's heartbeats to and from it dropped (everything else passes)
FaultKind = Literal[
    "sshd-down", "frozen", "crash", "db-unreachable", "slow", "frontend-down", "partition"
]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)


def inject(lab: Lab, host: str, kind: str) -> str:
    """Inject a fault into a host. Returns a sentence saying what was done.

    Kinds: ``sshd-down`` (sshd killed; the host and its agents run), ``frozen`` (every process
    stopped: TCP connects hang), ``crash`` (the host vanishes from the network, then every
    process dies; its DB sessions stay open on the server, as after a real crash),
    ``db-unreachable`` (the host's packets to the database are dropped), ``slow`` (its
    processes run a quarter of the time), ``frontend-down`` (its web front end killed with
    SIGKILL), ``partition`` (the HA group daemon's UDP heartbeats to and from it dropped).
    """
    if kind not in FAULT_KINDS:
        raise LabError(f"unknown fault kind {kind!r}; use one of {', '.join(FAULT_KINDS)}")
    rec = lab.require_up()
    site = lab.site
    h = site.host(host)
    hrec = rec["hosts"][h.name]
    current = rec.get("faults", {}).get(host)
    if current == kind:
        return f"{host}: already {kind}"
    if current is not None:
        raise LabError(f"{host} already has fault {current}; `handover lab heal {host}` first")
    procs = lab.host_processes(rec).get(host, [])
    if kind == "sshd-down":
        signal_all([p for p in procs if p.title.startswith("sshd:")], signal.SIGKILL)
        lab._wait(lambda: [host] if port_open(h.address, h.port) else [], 5, "sshd still up on")
        done = f"{host}: sshd killed; the host and its agents keep running"
    elif kind == "frozen":
        # a signal takes effect when the process next runs: on a busy machine, a moment later;
        # the fault holds when this returns (a process forked meanwhile is stopped too); a
        # zombie (Z, its parent stopped before it reaped it) or a dying process (X) runs no more
        def running() -> list[str]:
            left = [
                p for p in lab.host_processes(rec).get(host, []) if p.state not in ("T", "Z", "X")
            ]
            signal_all(left, signal.SIGSTOP)
            return [f"{p.pid} {p.title}" for p in left]

        signal_all(procs, signal.SIGSTOP)
        lab._wait(running, 5, f"{host}: processes not stopped yet:")
        done = f"{host}: every process stopped ({len(procs)}); connections to it hang"
    elif kind == "crash":
        faults = {**rec.get("faults", {}), host: kind}
        ghosts = rec.setdefault("ghost_ports", {})
        ghosts[host] = ghosts.get(host, []) + _db_client_ports(lab, h.address)
        lab._apply_firewall(faults, site, ghosts)
        kill_host(hrec["unshare_pid"], hrec["init_pid"])
        done = (
            f"{host}: crashed ({len(procs)} processes killed, its packets dropped; its DB "
            "sessions remain open on the server)"
        )
    elif kind == "db-unreachable":
        lab._apply_firewall({**rec.get("faults", {}), host: kind}, site, rec.get("ghost_ports"))
        done = f"{host}: its packets to the database are dropped"
    elif kind == "partition":
        lab._apply_firewall({**rec.get("faults", {}), host: kind}, site, rec.get("ghost_ports"))
        done = (
            f"{host}: its HA group heartbeats (UDP {lab_settings(site).hagd.port}) are dropped "
            "both ways; "
            "everything else passes"
        )
    elif kind == "frontend-down":
        from infra.lab.frontend import TITLE

        victims = [p for p in procs if p.title == TITLE]
        if not victims:
            raise LabError(f"{host} runs no front end")
        signal_all(victims, signal.SIGKILL)
        done = f"{host}: front end killed (pid {victims[0].nspid}); the host and its agents run on"
    else:
        control(lab, f"fault:{host}", "slow")
        done = f"{host}: slowed down (its processes run a quarter of the time)"
    rec.setdefault("faults", {})[host] = kind
    lab._save(rec)
    return done


def _wait_unthrottled(lab: Lab, rec: dict[str, Any], host: str) -> None:
    """Wait until the lab daemon no longer throttles `host`: it may have read its control
    before the heal, and stop the host's processes once more. Every stopped process is resumed
    until none has been seen stopped for two of the daemon's ticks (bounded)."""
    quiet_s = 2 * lab_settings(lab.site).tick_s
    deadline = time.monotonic() + quiet_s + 10
    calm_since = time.monotonic()
    while time.monotonic() < deadline:
        stopped = [p for p in lab.host_processes(rec).get(host, []) if p.state == "T"]
        if stopped:
            signal_all(stopped, signal.SIGCONT)
            calm_since = time.monotonic()
        elif time.monotonic() - calm_since >= quiet_s:
            return
        time.sleep(0.02)
    raise LabError(f"{host}: its processes were still being stopped {quiet_s + 10:g} s after heal")


def heal(lab: Lab, host: str) -> str:
    """Undo a host's fault (a crashed host reboots: sshd, then its enabled agents)."""
    rec = lab.require_up()
    site = lab.site
    h = site.host(host)
    kind = rec.get("faults", {}).pop(host, None)
    if kind is None:
        return f"{host}: no fault to heal"
    hrec = rec["hosts"][host]
    if kind == "sshd-down":
        os.kill(hrec["init_pid"], signal.SIGUSR1)
        lab._wait(
            lambda: [] if port_open(h.address, h.port) else [host],
            10,
            "sshd did not come back on",
        )
        done = f"{host}: sshd restarted"
    elif kind == "frozen":

        def stopped() -> list[str]:
            left = [p for p in lab.host_processes(rec).get(host, []) if p.state == "T"]
            signal_all(left, signal.SIGCONT)
            return [f"{p.pid} {p.title}" for p in left]

        signal_all(lab.host_processes(rec).get(host, []), signal.SIGCONT)
        lab._wait(stopped, 5, f"{host}: processes still stopped:")
        done = f"{host}: processes resumed"
    elif kind == "crash":
        lab._apply_firewall(rec["faults"], site, rec.get("ghost_ports"))
        rec["hosts"][host] = lab._launch(h, boot_agents=True)
        lab._wait(
            lambda: [] if port_open(h.address, h.port) else [host],
            20,
            "sshd did not come back on",
        )
        booted = lab.paths.host_dir(host) / "boot-agents.log"
        done = f"{host}: rebooted; it ran `service transfer-agents start` (see {booted})"
    elif kind == "frontend-down":
        res = lab.exec(host, ["service", "fts-frontend", "start"])
        if res.returncode != 0:
            raise LabError(f"{host}: the front end did not start: {res.stderr or res.stdout}")
        done = f"{host}: front end started again (in the role its role file says)"
    elif kind == "partition":
        lab._apply_firewall(rec["faults"], site, rec.get("ghost_ports"))
        done = f"{host}: its HA group heartbeats pass again"
    elif kind == "db-unreachable":
        lab._apply_firewall(rec["faults"], site, rec.get("ghost_ports"))
        done = (
            f"{host}: can reach the database again; the sessions it left on the server keep "
            "their locks until they are killed (drop-db-lock)"
        )
    else:
        control(lab, f"fault:{host}", None)
        _wait_unthrottled(lab, rec, host)
        done = f"{host}: runs at full speed again"
    lab._save(rec)
    return done


#: faults of the lab's database server (PostgreSQL): frozen: every server process stopped
#: (connections hang, sessions and their locks stay); crash: the server aborts at once (every
#: session and its locks are gone) and stays down until healed
DbFaultKind = Literal["frozen", "crash"]
DB_FAULT_KINDS: tuple[str, ...] = get_args(DbFaultKind)


def _server_processes(postmaster: int) -> list[int]:
    """The postmaster and all its descendants (backends, background workers)."""
    pids, todo = [], [postmaster]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        try:
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            kids = []
        todo += [int(k) for k in kids]
    return pids


def inject_database(lab: Lab, kind: str) -> str:
    """Inject a fault into the lab's database server; a sentence says what was done."""
    if kind not in DB_FAULT_KINDS:
        raise LabError(f"unknown database fault {kind!r}; use one of {', '.join(DB_FAULT_KINDS)}")
    rec = lab.require_up()
    current = rec.get("db_fault")
    if current == kind:
        return f"the database: already {kind}"
    if current is not None:
        raise LabError(f"the database already has fault {current}; heal it first")
    pid = lab.db.pid()
    if pid is None:
        raise LabError("the lab's database is not running")
    if kind == "frozen":
        pids = _server_processes(pid)
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGSTOP)
        done = f"the database: every server process stopped ({len(pids)}); connections hang"
    else:
        lab.db.stop()  # immediate: no clean shutdown, every session and lock gone
        done = "the database: crashed (aborted; every session and its locks are gone)"
    rec["db_fault"] = kind
    lab._save(rec)
    return done


def heal_database(lab: Lab) -> str:
    """Undo the database's fault: resume its processes, or start it again after a crash."""
    rec = lab.require_up()
    kind = rec.pop("db_fault", None)
    if kind is None:
        return "the database: no fault to heal"
    if kind == "frozen":
        pid = lab.db.pid()
        for p in _server_processes(pid) if pid is not None else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGCONT)
        done = "the database: processes resumed"
    else:
        lab.db.start()
        lab.db.wait_ready()
        rec["pg_pid"] = lab.db.pid()
        done = "the database: started again (the agents reconnect and take their locks)"
    lab._save(rec)
    return done


def _db_client_ports(lab: Lab, address: str) -> list[int]:
    with contextlib.closing(lab.db.connect(timeout=5)) as conn:
        rows = conn.run(
            "SELECT client_port FROM pg_stat_activity WHERE host(client_addr) = :a", a=address
        )
    return [int(r[0]) for r in rows]


def control(lab: Lab, key: str, value: str | None) -> None:
    """Set (or, with None, delete) a key of the lab daemon's control table."""
    with contextlib.closing(lab.db.connect(timeout=5)) as conn:
        if value is None:
            conn.run("DELETE FROM lab_control WHERE key = :k", k=key)
        else:
            conn.run(
                "INSERT INTO lab_control VALUES (:k, :v) ON CONFLICT (key) DO UPDATE SET "
                "value = EXCLUDED.value",
                k=key,
                v=value,
            )
