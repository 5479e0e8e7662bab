"""Free TCP ports for the servers handover's tests, benches and lab start on loopback."""

from __future__ import annotations

import os
import random
import re
import socket
import threading

#: where `free_port` looks: below the kernel's ephemeral range (32768-60999), where any client
#: socket on the machine may take a port between its choice and the server's bind, and clear
#: of the labs' DB ports (20000-20255) and DNS ports (30000-31023)
FREE_PORTS = range(24000, 30000)
#: a narrower block for this process (``24000-26999``): processes that pick ports at the same
#: time (the test groups of `tests/run-groups`) each take their own block, so one cannot be
#: handed the port the other chose and has not bound yet
RANGE_ENV = "HANDOVER_FREE_PORTS"

_given: set[int] = set()
_lock = threading.Lock()


def port_range() -> range:
    """This process's block: `RANGE_ENV` when set, else `FREE_PORTS`.

    Raises:
        ValueError: `RANGE_ENV` is not ``LOW-HIGH`` within `FREE_PORTS`.
    """
    text = os.environ.get(RANGE_ENV, "").strip()
    if not text:
        return FREE_PORTS
    m = re.fullmatch(r"(\d+)-(\d+)", text)
    low, high = (int(m.group(1)), int(m.group(2))) if m else (0, -1)
    if not (m and FREE_PORTS.start <= low < high < FREE_PORTS.stop):
        raise ValueError(
            f"{RANGE_ENV}={text!r}: give LOW-HIGH within {FREE_PORTS.start}-"
            f"{FREE_PORTS.stop - 1}, e.g. 24000-26999"
        )
    return range(low, high + 1)


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at `address` now (checked by a bind, then closed), never
    one this process handed out before: three servers started together get three ports.

    Raises:
        RuntimeError: none of 200 random ports of the block could be bound.
    """
    ports = port_range()
    with _lock:
        for port in random.sample(ports, min(200, len(ports))):
            if port in _given:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind((address, port))
                except OSError:
                    continue
            _given.add(port)
            return port
    raise RuntimeError(f"no free port in {ports.start}-{ports.stop - 1} on {address}")


def _free_everywhere(address: str, port: int) -> bool:
    """Whether nothing holds `port` at `address`, over TCP or UDP (a DNS server takes both)."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((address, port))
            except OSError:
                return False
    return True


def free_port_block(count: int, address: str = "127.0.0.1") -> int:
    """The first of `count` consecutive ports, each free at `address` over TCP and UDP now and
    none handed out by this process before; all of them are handed out (`free_port` never gives
    one of them later, so a server of the block that restarts finds its port).

    Raises:
        RuntimeError: no such block in 200 random starts within the block.
    """
    ports = port_range()
    starts = range(ports.start, ports.stop - count + 1)
    with _lock:
        for base in random.sample(starts, min(200, len(starts))):
            block = range(base, base + count)
            if any(p in _given for p in block):
                continue
            if all(_free_everywhere(address, p) for p in block):
                _given.update(block)
                return base
    raise RuntimeError(
        f"no {count} consecutive free ports in {ports.start}-{ports.stop - 1} on {address}"
    )
