"""``fts-frontend-ha start|stop|status GROUP``: the HA group daemon's script for the lab front end.

The daemon (`infra.hagd`) runs it on each front-end host (`handover lab up --hagd`):

* ``start``: make this host's front end the master. When it already answers as the master with
  the database's current epoch, nothing changes; otherwise it is enabled with the database's
  epoch plus one (`fts-frontend enable`), which fences every older master. Then, when the lab
  reports to a gateway (``HANDOVER_GATEWAY_URL`` in the daemon's `report` file), it runs
  `handover-switch start GROUP`, so that the switch flow moves the DNS alias here.
* ``stop``: become a slave (`fts-frontend disable`); the server keeps running as a slave (and
  `handover-switch stop GROUP` forgets the start, so the next start asks again).
* ``status``: exit 0 when this host serves as the master with the database's current epoch;
  3 (LSB "not running") with the reason otherwise: not running, a slave, or fenced by a newer
  master.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from infra.hooks.settings import read_config_file
from infra.lab import frontend
from infra.lab.runtime import HostRuntime, load_runtime

LSB_NOT_RUNNING = 3
SWITCH_HOOK = Path(__file__).resolve().parents[1] / "hooks" / "handover-switch"


def _state(rt: HostRuntime) -> dict[str, Any]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        frontend.status(rt)
    state: dict[str, Any] = json.loads(buf.getvalue())
    return state


def why_not_serving(state: dict[str, Any], *, own_fence_ok: bool = False) -> str | None:
    """Why the front end does not serve as the master (None: it does).

    With `own_fence_ok` (the status check), a newer epoch claimed *by this host* is not a
    reason: that is this very host being promoted. The switch flow fences from the new master,
    then enables it with that epoch; and `enable` claims the epoch in the database before it
    writes the role file (a status reading can also see the role file before an enable and the
    database after its claim). Giving up in either window would undo the promotion.
    """
    if not state["running"] or not state["answers"]:
        return "the front-end server does not run or does not answer"
    if state["role"] != "master":
        return "it is a slave"
    if state["db_epoch"] is None:
        return f"the database's epoch cannot be read: {state['db_error']}"
    promoting = own_fence_ok and state["db_holder"] in (
        state["host"],
        f"fenced from {state['host']}",
    )
    if state["epoch"] != state["db_epoch"] and not promoting:
        return (
            f"fenced: the database's epoch {state['db_epoch']} (held by {state['db_holder']}) "
            f"is newer than its own {state['epoch']}"
        )
    return None


def start(rt: HostRuntime, group: str) -> int:
    """Serve as the master, then ask for the alias (when the lab reports to a gateway)."""
    state = _state(rt)
    if why_not_serving(state) is None:
        print(
            f"fts-frontend-ha: {rt['host']} already serves as the master (epoch {state['epoch']})"
        )
    else:
        if state["db_epoch"] is None:
            print(f"fts-frontend-ha: cannot read the database's epoch: {state['db_error']}")
            return 1
        rc = frontend.enable(rt, int(state["db_epoch"]) + 1)
        if rc != 0:
            return rc
    _switch_hook("start", group)
    return 0


def _switch_hook(action: str, group: str) -> None:
    """Run `handover-switch ACTION GROUP` when the lab reports to a gateway."""
    report = os.environ.get("HANDOVER_HOOK_CONFIG", "")
    if not report or not read_config_file(report).get("HANDOVER_GATEWAY_URL"):
        return
    done = subprocess.run(
        [sys.executable, str(SWITCH_HOOK), action, group],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    print(f"fts-frontend-ha: handover-switch {action}: {(done.stderr or done.stdout).strip()}")


def stop(group: str) -> int:
    """Become a slave (the server runs on, answering 503); the switch hook forgets its start."""
    rc = frontend.disable("-", 0)
    _switch_hook("stop", group)
    return rc


def status(rt: HostRuntime) -> int:
    """0 when serving as the master with the current epoch, else 3 with the reason."""
    state = _state(rt)
    why = why_not_serving(state, own_fence_ok=True)
    if why is None:
        print(f"fts-frontend-ha: master with epoch {state['epoch']}")
        return 0
    print(f"fts-frontend-ha: not serving: {why}")
    return LSB_NOT_RUNNING


def main(argv: list[str] | None = None) -> int:
    """``python -m infra.lab.frontend_ha start|stop|status GROUP``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in ("start", "stop", "status"):
        print("usage: fts-frontend-ha start|stop|status GROUP", file=sys.stderr)
        return 2
    rt = load_runtime()
    if not rt.get("frontend_port"):
        print(f"fts-frontend-ha: no front end on {rt['host']}", file=sys.stderr)
        return 1
    if args[0] == "start":
        return start(rt, args[1])
    if args[0] == "stop":
        return stop(args[1])
    return status(rt)


if __name__ == "__main__":
    sys.exit(main())
