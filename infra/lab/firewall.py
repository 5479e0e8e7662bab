"""The lab's firewall: the nftables rules of the faults that cut a host off the network."""

from __future__ import annotations

import subprocess

from config.site import Site
from infra.lab.errors import LabError
from infra.lab.settings import lab_settings


def table_name(site_name: str) -> str:
    """The nftables table of a lab."""
    return f"handover_lab_{site_name.replace('-', '_')}"


def apply(
    table: str, faults: dict[str, str], site: Site, ghosts: dict[str, list[int]] | None = None
) -> None:
    """Replace the lab's table with the rules of its current faults (crash: every packet of the
    host; db-unreachable: its packets to the database; partition: the HA group daemon's UDP
    heartbeats to and from it) and its crashed hosts' dead connections."""
    lab = lab_settings(site)
    rules = []
    # the TCP connections of a crashed host are dead for good, even after it reboots: the
    # database server must never hear them close (it would release their locks)
    for host, ports in (ghosts or {}).items():
        if ports:
            addr = site.host(host).address
            plist = ", ".join(str(p) for p in sorted(set(ports)))
            rules.append(f"ip saddr {addr} tcp sport {{ {plist} }} drop")
    for host, kind in faults.items():
        addr = site.host(host).address
        if kind == "crash":
            rules += [f"ip daddr {addr} drop", f"ip saddr {addr} drop"]
        elif kind == "partition":  # the HA group daemon's heartbeats, both ways
            port = lab.hagd.port
            rules += [
                f"ip saddr {addr} udp dport {port} drop",
                f"ip daddr {addr} udp dport {port} drop",
            ]
        elif kind == "db-unreachable":
            rules += [
                f"ip saddr {addr} ip daddr {lab.db_address} tcp dport {lab.db_port} drop",
            ]
    script = (
        f"table inet {table}\ndelete table inet {table}\n"
        f"table inet {table} {{\n chain out {{\n  type filter hook output priority 0; "
        "policy accept;\n" + "".join(f"  {r}\n" for r in rules) + " }\n}\n"
    )
    proc = subprocess.run(
        ["nft", "-f", "-"],
        input=script,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    if proc.returncode != 0:
        raise LabError(f"lab: nft failed: {proc.stderr.strip()}")


def delete(table: str) -> None:
    """Remove the lab's table (nothing left behind by `lab down`)."""
    subprocess.run(
        ["nft", "-f", "-"],
        input=f"table inet {table}\ndelete table inet {table}\n",
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
