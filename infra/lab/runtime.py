"""What a lab host knows about itself: written by `handover lab up`, read inside the host.

Kept free of heavy imports: the commands that read it run on every `service` or
`glite-transfer-channel-set` call inside a lab host.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NotRequired, TypedDict

#: Where the runtime file lives inside a host (in the host's own /etc).
RUNTIME_FILE = Path("/etc/transfer-agents/lab.json")
#: Where agents keep their PID and state files inside a host (the host's own /run).
RUN_DIR = Path("/run/transfer-agents")
#: True in a command server's worker (`infra.lab.cmdserver`): the agent's modules are imported
#: there, so `service transfer-agents start` forks an agent instead of starting an interpreter
FORK_AGENTS = False


class AgentRuntime(TypedDict):
    """One agent configured on a host."""

    name: str
    channel: str | None
    vo: str | None
    #: the most transfers it runs at once (default: the host's `max_active`)
    max_active: NotRequired[int]


class HostRuntime(TypedDict):
    """Everything the host-side commands and agents need."""

    host: str
    address: str
    agents: list[AgentRuntime]
    db_address: str
    db_port: int
    db_password_file: str
    #: `LabPaths.ghost_ports`: source ports a new DB connection must not use
    ghost_ports_file: str
    lock_wait_s: float
    tick_s: float
    max_active: int
    agent_uid: int
    python: str
    log_dir: str
    disabled_file: str
    #: the web front end's port on this host (0: the host has no front end)
    frontend_port: int
    #: the lab's package repository (`infra.lab.software`)
    repo_dir: str


def load_runtime(path: Path | None = None) -> HostRuntime:
    """Read the host's runtime file (inside a lab host)."""
    p = path or Path(os.environ.get("HANDOVER_LAB_RUNTIME", str(RUNTIME_FILE)))
    data: HostRuntime = json.loads(p.read_text())
    return data


def ghost_ports(rt: HostRuntime) -> frozenset[int]:
    """The source ports of this host's dead DB sessions (a crash left them; the lab's firewall
    drops their packets, so a new connection from one of those ports would hang)."""
    path = rt.get("ghost_ports_file")  # absent from a runtime written before it existed
    if not path:
        return frozenset()
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return frozenset()
    return frozenset(int(p) for p in data.get(rt["address"], []))


def read_disabled(path: str) -> list[str]:
    """The agent names listed in the `.disabled` file (empty when it does not exist)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    return [line.strip() for line in text.splitlines() if line.strip()]


def state_file(name: str) -> Path:
    """An agent's state file (JSON: state, pid, backend_pid, reason)."""
    return RUN_DIR / f"{name}.state"


def write_state(name: str, **fields: object) -> None:
    """Replace an agent's state file atomically."""
    target = state_file(name)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(fields))
    os.replace(tmp, target)


def read_state(name: str, root: Path = Path("/")) -> dict[str, object] | None:
    """An agent's last state, read inside the host or through `/proc/PID/root` from outside."""
    try:
        data: dict[str, object] = json.loads((root / str(state_file(name)).lstrip("/")).read_text())
    except (OSError, ValueError):
        return None
    return data


def serves(state: dict[str, object] | None, nspid: int, live_backends: set[int]) -> bool:
    """Whether an agent serves: its state file says so, was written by this very process (its
    pid inside the host), and the DB session it serves from is alive. A frozen or cut-off agent
    cannot update its file, so the file alone can still say "serving" after its session died."""
    st = state or {}
    return (
        st.get("state") == "serving"
        and st.get("pid") == nspid
        and int(str(st.get("backend_pid", 0))) in live_backends
    )


def dispatch(prog: str, commands: dict[str, Callable[[list[str]], int]], argv: list[str]) -> int:
    """Run ``commands[argv[0]](argv[1:])``: the entry point of a module of host commands."""
    if not argv or argv[0] not in commands:
        what = f"unknown command {argv[0]}" if argv else "no command"
        print(f"{prog}: {what}; usage: {prog} {'|'.join(commands)} ...", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])
