"""handover's OCF resource agents for Pacemaker (`fts-agent`: one FTS transfer agent), and where
they are installed (`handover ocf install`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

#: the resource agent for one FTS transfer agent (POSIX sh)
FTS_AGENT = Path(__file__).resolve().with_name("fts-agent")
#: Pacemaker finds `ocf:PROVIDER:TYPE` under OCF_ROOT/resource.d/PROVIDER/TYPE
DEFAULT_OCF_ROOT = Path("/usr/lib/ocf")
PROVIDER = "handover"


def install(ocf_root: Path = DEFAULT_OCF_ROOT) -> Path:
    """Copy the agent to ``OCF_ROOT/resource.d/handover/fts-agent`` (atomically, mode 0755) so
    that Pacemaker runs it as ``ocf:handover:fts-agent``; returns where it is."""
    target = ocf_root / "resource.d" / PROVIDER / FTS_AGENT.name
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    shutil.copyfile(FTS_AGENT, tmp)
    tmp.chmod(0o755)
    os.replace(tmp, target)
    return target
