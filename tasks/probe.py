"""Does a host answer on its SSH port: accepts, refuses (RST), or stays silent; and does its sshd
greet (a frozen host's kernel accepts the connection, but nothing answers)?"""

from __future__ import annotations

import socket

from flows.plans.emergency_move import Reach


def probe_tcp(address: str, port: int, timeout_s: float) -> Reach:
    """One TCP connection to the port, bounded by `timeout_s`.

    Returns:
        ``open`` (accepted), ``refused`` (the host answered with a reset: up, port closed) or
        ``silent`` (no answer within the bound: down, frozen in the kernel, or cut off).
    """
    try:
        with socket.create_connection((address, port), timeout=timeout_s):
            return "open"
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return "silent"


def sshd_greets(address: str, port: int, timeout_s: float) -> bool:
    """Whether an sshd answers there with its banner (``SSH-...``) within `timeout_s`."""
    try:
        with socket.create_connection((address, port), timeout=timeout_s) as s:
            s.settimeout(timeout_s)
            return s.recv(4).startswith(b"SSH-")
    except OSError:
        return False
