"""Free TCP ports for the servers handover's tests, benches and lab start on loopback."""

from __future__ import annotations

import random
import socket

#: where `free_port` looks: below the kernel's ephemeral range (32768-60999), where any client
#: socket on the machine may take a port between its choice and the server's bind, and clear
#: of the labs' DB ports (20000-20255) and DNS ports (30000-31023)
FREE_PORTS = range(24000, 30000)


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at `address` now (checked by a bind, then closed).

    Raises:
        RuntimeError: none of 200 random ports of `FREE_PORTS` could be bound.
    """
    for port in random.sample(FREE_PORTS, 200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((address, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {FREE_PORTS.start}-{FREE_PORTS.stop - 1} on {address}")
