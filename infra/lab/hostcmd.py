"""The commands a lab host offers, as on an FTS 2 agent box.

* ``service transfer-agents start|stop|restart|status [--instance NAME]`` (the init script
  ``/etc/init.d/transfer-agents`` runs ``python -m infra.lab.hostcmd service ...``). ``start``
  honours ``/etc/glite-data-transfer-agents.disabled`` and blocks while an agent waits for its DB
  lock, then reports each agent's outcome; ``stop`` is graceful (SIGTERM, then SIGKILL after 10 s);
  ``restart`` keeps the running transfers (the old instance hands them over to the new
  one); ``status`` shows each agent's software version and configuration digest.
* ``glite-transfer-channel-set -S Active|Inactive CHANNEL`` and ``glite-transfer-channel-list
  CHANNEL`` (state in the database).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from infra.lab import runtime
from infra.lab.runtime import (
    RUN_DIR,
    AgentRuntime,
    HostRuntime,
    dispatch,
    load_runtime,
    read_disabled,
    read_state,
    state_file,
    write_state,
)

EXIT_FAILED = 1
EXIT_NOT_RUNNING = 3
#: LSB: the program is dead and its state remains (it failed or died without being stopped)
EXIT_DEAD = 1
#: an agent's last states that say it was stopped on purpose (any other: it failed or died)
CLEAN_STOP_STATES = ("stopped", None)
STOP_GRACE_S = 10.0


def agent_pids(name: str) -> list[int]:
    """PIDs of processes on this host whose process title is `name`."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                title = f.read().split(b"\0", 1)[0].decode(errors="replace").strip()
        except OSError:
            continue
        if title == name:
            pids.append(int(entry))
    return pids


def _targets(rt: HostRuntime, instance: str | None) -> list[AgentRuntime]:
    if instance is None:
        return list(rt["agents"])
    for a in rt["agents"]:
        if a["name"] == instance:
            return [a]
    names = ", ".join(a["name"] for a in rt["agents"]) or "none"
    raise SystemExit(f"transfer-agents: {instance} is not configured on {rt['host']} ({names})")


class ForkedAgent:
    """An agent forked from this process (a command server's worker, which has the agent's
    modules imported): what `_spawn`'s callers use of a `subprocess.Popen`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    @classmethod
    def start(cls, log_path: Path, argv: list[str], takeover: bool) -> ForkedAgent:
        """Fork and run ``python -m infra.lab.agent ARGV`` in the child: its own session, stdin
        from /dev/null, output to the log, as the spawned interpreter had them."""
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        pid = os.fork()
        if pid:
            return cls(pid)
        code = 1
        try:
            os.setsid()
            null = os.open(os.devnull, os.O_RDONLY)
            log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(null, 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.closerange(3, 65536)
            sys.stdin = open(0, closefd=False)
            sys.stdout = open(1, "w", closefd=False, buffering=1)
            sys.stderr = open(2, "w", closefd=False, buffering=1)
            if takeover:
                os.environ["LAB_AGENT_TAKEOVER"] = "1"
            random.seed()  # not the forking process's sequence
            from infra.lab import agent

            code = agent.main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:  # noqa: BLE001 - what the interpreter prints for an uncaught error
            import traceback

            traceback.print_exc()
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(code)

    def poll(self) -> int | None:
        """The exit code once the agent has ended, else None."""
        if self.returncode is None:
            with contextlib.suppress(ChildProcessError):
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the agent to end (`subprocess.TimeoutExpired` after `timeout` seconds)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"agent pid {self.pid}", timeout or 0)
            time.sleep(0.01)
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        """SIGKILL the agent."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


def _spawn(
    rt: HostRuntime, name: str, takeover: bool = False
) -> subprocess.Popen[bytes] | ForkedAgent:
    with contextlib.suppress(FileNotFoundError):
        state_file(name + ".next" if takeover else name).unlink()
    log_path = Path(rt["log_dir"]) / f"{name}.log"
    if runtime.FORK_AGENTS and rt["python"] == sys.executable:
        return ForkedAgent.start(log_path, ["--name", name], takeover)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [rt["python"], "-m", "infra.lab.agent", "--name", name],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env={**os.environ, "LAB_AGENT_TAKEOVER": "1"} if takeover else None,
        )


def _prepare(rt: HostRuntime) -> None:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    os.chown(RUN_DIR, rt["agent_uid"], rt["agent_uid"])
    Path(rt["log_dir"]).mkdir(parents=True, exist_ok=True)


def _await_serving(
    rt: HostRuntime, launched: dict[str, subprocess.Popen[bytes] | ForkedAgent]
) -> int:
    """Wait until each launched agent serves or fails (bounded by the lock wait); report each."""
    rc = 0
    deadline = time.monotonic() + rt["lock_wait_s"] + 15
    pending = dict(launched)
    while pending and time.monotonic() < deadline:
        for name, proc in list(pending.items()):
            st = read_state(name) or {}
            if st.get("pid") != proc.pid:
                # a restart's new instance writes its own file until it holds the lock
                st = read_state(name + ".next") or {}
            if st.get("state") == "serving" and st.get("pid") == proc.pid:
                print(f"Starting {name}: [  OK  ] (pid {proc.pid}, version {st.get('version')})")
                del pending[name]
            elif (st.get("state") == "failed" and st.get("pid") == proc.pid) or (
                proc.poll() is not None
            ):
                # a failed agent is gone when its start says so (it exits right after writing
                # its state: a process table read at once must not show it)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
                reason = st.get("reason") or f"exited with code {proc.poll()}"
                print(f"Starting {name}: [FAILED] {reason}")
                rc = EXIT_FAILED
                del pending[name]
        time.sleep(0.02)
    for name, proc in pending.items():
        print(f"Starting {name}: [FAILED] did not report serving in time; stopped")
        proc.kill()
        rc = EXIT_FAILED
    sys.stdout.flush()
    return rc


def start(rt: HostRuntime, instance: str | None) -> int:
    """Start agents; block until each serves or fails (bounded by the lock wait)."""
    disabled = set(read_disabled(rt["disabled_file"]))
    _prepare(rt)
    launched: dict[str, subprocess.Popen[bytes] | ForkedAgent] = {}
    rc = 0
    for a in _targets(rt, instance):
        name = a["name"]
        if name in disabled:
            print(f"{name}: disabled in {rt['disabled_file']}, not started")
            if instance is not None:
                rc = EXIT_FAILED
            continue
        running = agent_pids(name)
        if running:
            print(f"Starting {name}: already running (pid {running[0]})")
            continue
        launched[name] = _spawn(rt, name)
    return max(rc, _await_serving(rt, launched))


def restart(rt: HostRuntime, instance: str | None) -> int:
    """Restart agents without losing their running transfers.

    Each new instance is started first and waits for its DB lock; the old one is then asked
    (SIGHUP) to hand its running transfers over and release the lock, so the agent is down only
    for the handover. An old instance that does not go within the stop grace is killed (its
    transfers are then lost, as with any agent that dies). A disabled agent is only stopped.
    """
    disabled = set(read_disabled(rt["disabled_file"]))
    _prepare(rt)
    targets = [a["name"] for a in _targets(rt, instance)]
    plain_stop = [n for n in targets if n in disabled]
    for name in plain_stop:
        stop(rt, name)
    old = {n: agent_pids(n) for n in targets if n not in disabled}
    launched = {name: _spawn(rt, name, takeover=bool(pids)) for name, pids in old.items()}
    # the old instance goes when its successor is ready to take the lock (or failed to start:
    # a restart stops the old software whatever the new one does, as `stop; start` would)
    asked = {n for n, pids in old.items() if not pids}
    ready_by = time.monotonic() + STOP_GRACE_S
    while len(asked) < len(old):
        for name, pids in old.items():
            if name in asked:
                continue
            nxt = read_state(name + ".next") or {}
            gone = launched[name].poll() is not None
            if (
                gone
                or nxt.get("state") in ("waiting-lock", "failed")
                or time.monotonic() > ready_by
            ):
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGHUP)
                asked.add(name)
        time.sleep(0.01)
    deadline = time.monotonic() + STOP_GRACE_S
    while any(_alive(p) for pids in old.values() for p in pids):
        if time.monotonic() >= deadline:
            for name, pids in old.items():
                for pid in [p for p in pids if _alive(p)]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    print(f"Stopping {name}: killed after {STOP_GRACE_S:g} s (no handover)")
            break
        time.sleep(0.02)
    for name, pids in old.items():
        if pids:
            print(f"Stopping {name}: [  OK  ] (running transfers handed over)")
    return _await_serving(rt, launched)


def stop(rt: HostRuntime, instance: str | None) -> int:
    """Stop agents gracefully; an agent already stopped is not an error."""
    victims: dict[str, list[int]] = {}
    for a in _targets(rt, instance):
        pids = agent_pids(a["name"])
        if not pids:
            last = read_state(a["name"])
            if last is not None and last.get("state") not in CLEAN_STOP_STATES:
                # as an init script removes a dead program's stale pid file
                write_state(a["name"], state="stopped", reason=f"cleared: it was {last['state']}")
                print(f"Stopping {a['name']}: not running (it had died: {last.get('state')})")
                continue
            print(f"Stopping {a['name']}: not running")
            continue
        victims[a["name"]] = pids
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while victims and time.monotonic() < deadline:
        for name in [n for n, pids in victims.items() if not any(_alive(p) for p in pids)]:
            print(f"Stopping {name}: [  OK  ]")
            del victims[name]
        time.sleep(0.01)
    for name, pids in victims.items():
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        print(f"Stopping {name}: [  OK  ] (killed after {STOP_GRACE_S:g} s)")
    return 0


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def status(rt: HostRuntime, instance: str | None) -> int:
    """Print each agent's status, as an LSB init script does: exit 0 when every enabled agent
    runs, 1 when one is dead (it failed to start, or died without being stopped: its state file
    remains with another state than ``stopped``), else 3 when one is stopped."""
    disabled = set(read_disabled(rt["disabled_file"]))
    rc = 0
    dead = False
    for a in _targets(rt, instance):
        pids = agent_pids(a["name"])
        st = (read_state(a["name"]) or {}).get("state", "unknown")
        if pids:
            full = read_state(a["name"]) or {}
            about = [str(st)]
            if full.get("version"):
                about.append(f"version {full['version']}, config {full.get('config')}")
            if full.get("missed_s") is not None:
                about.append(f"down {float(str(full['missed_s'])):.3f} s at its last restart")
            print(f"{a['name']} (pid {pids[0]}) is running ({', '.join(about)})")
        elif a["name"] in disabled:
            print(f"{a['name']} is stopped (disabled)")
        elif (last := read_state(a["name"]) or {}).get("state") not in CLEAN_STOP_STATES:
            why = str(last.get("reason") or "") or f"it was {last.get('state')}; no process"
            print(f"{a['name']} is dead ({last.get('state')}: {why})")
            dead = True
        else:
            print(f"{a['name']} is stopped")
            rc = EXIT_NOT_RUNNING
    return EXIT_DEAD if dead else rc


def service(argv: list[str]) -> int:
    """``service transfer-agents ACTION [--instance NAME]``."""
    ap = argparse.ArgumentParser(prog="transfer-agents")
    ap.add_argument("action", choices=["start", "stop", "restart", "status"])
    ap.add_argument("--instance")
    args = ap.parse_args(argv)
    rt = load_runtime()
    if args.action == "start":
        return start(rt, args.instance)
    if args.action == "stop":
        return stop(rt, args.instance)
    if args.action == "restart":
        return restart(rt, args.instance)
    return status(rt, args.instance)


def _db(rt: HostRuntime) -> object:
    from infra.lab.db import connect_from_host  # pg8000 only for the commands that need it

    with open(rt["db_password_file"]) as f:
        pw = f.read().strip()
    return connect_from_host(rt, pw, timeout=5)


def channel_set(argv: list[str]) -> int:
    """``glite-transfer-channel-set -S STATE CHANNEL``."""
    ap = argparse.ArgumentParser(prog="glite-transfer-channel-set")
    ap.add_argument("-S", dest="state", required=True, choices=["Active", "Inactive"])
    ap.add_argument("channel")
    args = ap.parse_args(argv)
    conn = _db(load_runtime())
    try:
        rows = conn.run(  # type: ignore[attr-defined]
            "UPDATE channels SET state = :s, changed_at = clock_timestamp() WHERE name = :c "
            "RETURNING name",
            s=args.state,
            c=args.channel,
        )
    finally:
        conn.close()  # type: ignore[attr-defined]
    if not rows:
        print(f"glite-transfer-channel-set: no such channel: {args.channel}", file=sys.stderr)
        return EXIT_FAILED
    print(f"Channel {args.channel}: state set to {args.state}")
    return 0


def channel_list(argv: list[str]) -> int:
    """``glite-transfer-channel-list CHANNEL``: prints ``State: Active`` among other lines."""
    ap = argparse.ArgumentParser(prog="glite-transfer-channel-list")
    ap.add_argument("channel")
    args = ap.parse_args(argv)
    conn = _db(load_runtime())
    try:
        rows = conn.run(  # type: ignore[attr-defined]
            "SELECT c.state, (SELECT count(*) FROM jobs j WHERE j.channel = c.name AND "
            "j.state = 'Active'), (SELECT count(*) FROM jobs j WHERE j.channel = c.name AND "
            "j.state = 'Pending') FROM channels c WHERE c.name = :c",
            c=args.channel,
        )
    finally:
        conn.close()  # type: ignore[attr-defined]
    if not rows:
        print(f"glite-transfer-channel-list: no such channel: {args.channel}", file=sys.stderr)
        return EXIT_FAILED
    state, active, pending = rows[0]
    print(f"Channel: {args.channel}\nState: {state}\nActive: {active}\nPending: {pending}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Dispatch: ``python -m infra.lab.hostcmd service|channel-set|channel-list ARGS``."""
    # one line at a time, as an init script writes them: a boot log read while a start still
    # waits shows what it has done so far
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    return dispatch(
        "hostcmd",
        {"service": service, "channel-set": channel_set, "channel-list": channel_list},
        list(sys.argv[1:] if argv is None else argv),
    )


if __name__ == "__main__":
    sys.exit(main())
