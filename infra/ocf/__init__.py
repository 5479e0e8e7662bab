"""handover's OCF resource agents for Pacemaker, and where they are installed
(`handover ocf install`): `fts-agent` (one FTS transfer agent, POSIX sh) and `fts-frontend` (the
web front end serving as the master, Python 3's standard library)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: the resource agent for one FTS transfer agent
FTS_AGENT = HERE / "fts-agent"
#: the resource agent for the master role of the FTS front end
FTS_FRONTEND = HERE / "fts-frontend"
AGENTS = (FTS_AGENT, FTS_FRONTEND)
#: Pacemaker finds `ocf:PROVIDER:TYPE` under OCF_ROOT/resource.d/PROVIDER/TYPE
DEFAULT_OCF_ROOT = Path("/usr/lib/ocf")
PROVIDER = "handover"


def install(ocf_root: Path = DEFAULT_OCF_ROOT) -> list[Path]:
    """Copy the agents to ``OCF_ROOT/resource.d/handover/`` (each atomically, mode 0755) so
    that Pacemaker runs them as ``ocf:handover:fts-agent`` and ``ocf:handover:fts-frontend``;
    returns where they are."""
    done = []
    for agent in AGENTS:
        target = ocf_root / "resource.d" / PROVIDER / agent.name
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}")
        shutil.copyfile(agent, tmp)
        tmp.chmod(0o755)
        os.replace(tmp, target)
        done.append(target)
    return done
