"""The faults the lab can inject into a host (`handover lab fault HOST KIND`)."""

from __future__ import annotations

from typing import Literal, get_args

#: sshd-down: host and agents up, SSH refused; frozen: every process stopped, SSH hangs; crash:
#: the host vanishes and its processes die (its DB sessions stay open); db-unreachable: its
#: packets to the database are dropped; slow: its processes run a quarter of the time
FaultKind = Literal["sshd-down", "frozen", "crash", "db-unreachable", "slow"]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)
