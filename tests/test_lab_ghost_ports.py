"""A lab host's new DB connection never takes a source port of its dead sessions.

A crash leaves the host's DB sessions open on the server, and the lab's firewall drops their
packets for good. Once the kernel frees such a port it may hand it out again; a connection from
it would hang until its timeout (an agent's start then fails with "cannot reach the database").
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from infra.lab.runtime import HostRuntime, ghost_ports
from tests.conftest import require

#: runs in a network namespace of its own, whose kernel hands out only four ports
PROBE = textwrap.dedent(
    """
    import socket, subprocess, sys
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
        f.write("40000 40003")
    from infra.lab.db import _client_socket
    port = 5432  # outside the four ports
    server = socket.create_server(("127.0.0.1", port))
    avoid = frozenset({40000, 40001, 40002})
    used = []
    for _ in range(3):
        s = _client_socket("127.0.0.1", port, "127.0.0.1", 2.0, avoid)
        used.append(s.getsockname()[1])
        server.accept()[0].close()  # the server closes first: no TIME_WAIT on the client's port
        assert s.recv(1) == b""
        s.close()
    print(used)
    """
)


@pytest.mark.lab
def test_a_connection_skips_the_ports_to_avoid() -> None:
    require(
        os.geteuid() == 0 and shutil.which("unshare") is not None, "root and unshare(1)", need="lab"
    )
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[40003, 40003, 40003]"


def test_ghost_ports_are_read_per_host_address(tmp_path: Path) -> None:
    f = tmp_path / "ghost-ports.json"
    rt = {"address": "127.0.5.1", "ghost_ports_file": str(f)}
    assert ghost_ports(rt) == frozenset()  # type: ignore[arg-type]  # no crash yet: no file
    f.write_text(json.dumps({"127.0.5.1": [41000, 41001], "127.0.5.2": [42000]}))
    assert ghost_ports(rt) == {41000, 41001}  # type: ignore[arg-type]
    f.write_text("{not json")
    assert ghost_ports(rt) == frozenset()  # type: ignore[arg-type]
    partial: HostRuntime = {**rt, "ghost_ports_file": str(tmp_path / "none")}  # type: ignore[typeddict-item]
    assert ghost_ports(partial) == frozenset()
