"""The geo lab's processes: started in sessions of their own, recognised and stopped by PID.

A process is recorded as its PID and its start time (``/proc/PID/stat`` field 22, in clock
ticks since boot), so a later `GeoLab.down`, from another process perhaps long after, signals the
process the lab started and never one that got its PID since.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from infra.lab.errors import LabError

#: how long a stopped process is given to exit before it is killed
GRACE_S = 8.0


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of process `pid`, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def start_ticks(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot), or None when there is none.

    A zombie (its first thread exited, not yet reaped) counts as none.
    """
    stat = _stat(pid)
    return None if stat is None or stat[0] == "Z" else stat[1]


def _threads(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


class ProcRef(BaseModel):
    """A process the lab started: what it is, its PID and its start time."""

    what: str
    pid: int
    start: int

    def running(self) -> bool:
        """Whether this very process still runs (not one that took its PID since).

        A process is gone only once all its threads are: a killed multi-threaded server's
        first thread turns zombie while the others still hold its sockets open.
        """
        try:  # our child: reaped only once every thread of it has exited
            reaped, _ = os.waitpid(self.pid, os.WNOHANG)
        except OSError:  # not our child (another process started the lab): see /proc
            reaped = -1
        if reaped == self.pid:
            return False
        stat = _stat(self.pid)
        if stat is None or stat[1] != self.start:
            return False
        if stat[0] != "Z" or reaped == 0:
            return True
        return _threads(self.pid) > 1  # a zombie leader: its other threads may still exit

    def signal(self, sig: signal.Signals) -> bool:
        """Send `sig` to the process's group (its session: it and its children); False when it
        no longer runs."""
        if not self.running():
            return False
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            return False
        except PermissionError:  # not a group leader after all: the process alone
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
        return True


def spawn(
    argv: Sequence[str],
    log: Path,
    what: str,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> ProcRef:
    """Start `argv` in a session of its own, stdout and stderr appended to `log`.

    Raises:
        LabError: the program could not be started (with the reason).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=dict(env) if env is not None else None,
                start_new_session=True,
            )
    except OSError as exc:
        raise LabError(f"{what}: could not start {argv[0]}: {exc}") from exc
    ticks = start_ticks(proc.pid)
    if ticks is None:  # gone already: its log says why
        proc.wait()
        raise LabError(f"{what} exited at once (code {proc.returncode}); log:\n{tail(log)}")
    return ProcRef(what=what, pid=proc.pid, start=ticks)


def tail(path: Path, chars: int = 1500) -> str:
    """The last `chars` characters of a log (or why it cannot be read)."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"({path}: {exc.strerror or exc})"
    return text[-chars:].strip() or f"({path} is empty)"


def wait_until(
    ready: Callable[[], bool],
    timeout_s: float,
    what: str,
    *,
    proc: ProcRef | None = None,
    logs: Sequence[Path] = (),
    interval_s: float = 0.1,
) -> None:
    """Poll `ready()` until it holds, for at most `timeout_s`.

    Raises:
        LabError: `proc` exited first, or the time is up; the message says `what` did not
            happen and shows the tail of each of `logs`.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(Exception):  # not ready yet: asked again until the deadline
            if ready():
                return
        if proc is not None and not proc.running():
            why = f"{what}: {proc.what} (PID {proc.pid}) exited"
            break
        if time.monotonic() >= deadline:
            why = f"{what}: not within {timeout_s:g} s"
            break
        time.sleep(interval_s)
    tails = "".join(f"\n--- {log} ---\n{tail(log)}" for log in logs)
    raise LabError(why + tails)


def stop(refs: Iterable[ProcRef], *, grace_s: float = GRACE_S) -> list[str]:
    """Stop processes: SIGTERM, SIGKILL those still running after `grace_s`.

    Returns:
        What still runs afterwards (``"PID what"``), expected empty.
    """
    return _end(list(refs), signal.SIGTERM, grace_s)


def kill(refs: Iterable[ProcRef]) -> list[str]:
    """Kill processes at once (SIGKILL: a machine lost), and wait until they are gone.

    Returns:
        What still runs afterwards (``"PID what"``), expected empty.
    """
    return _end(list(refs), signal.SIGKILL, 0.0)


def _end(refs: list[ProcRef], sig: signal.Signals, grace_s: float) -> list[str]:
    for ref in refs:
        ref.signal(sig)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(r.running() for r in refs):
        time.sleep(0.05)
    for ref in refs:
        ref.signal(signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(r.running() for r in refs):
        time.sleep(0.02)
    return [f"{r.pid} {r.what}" for r in refs if r.running()]


def refs_of(data: Mapping[str, Any]) -> dict[str, ProcRef]:
    """The processes of a record's ``procs`` mapping (entries that do not parse are left out)."""
    out: dict[str, ProcRef] = {}
    for key, value in data.items():
        with contextlib.suppress(ValueError, TypeError):
            out[key] = ProcRef.model_validate(value)
    return out
