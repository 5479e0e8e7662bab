"""A copy of a geo site file at other addresses, ports and state directory.

Tests and benchmarks run geo labs of their own beside an operator's (`config/sites/geo-lab.yaml`
at 127.0.40.x): each copy takes its own loopback block 127.0.OCTET.x, its own block of ports
(the DNS servers listen on 127.0.0.1, where only the port tells them apart) and its own state
directory, where its secrets, keys and CA are made.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from infra.lab.errors import LabError

#: the loopback block of the lab's own geo site file
BASE_BLOCK = "127.0.40."
#: where derived copies keep their state by default
STATE_ROOT = Path("/var/tmp/handover-lab")


def port_count(data: dict[str, Any]) -> int:
    """How many ports a copy of the geo site `data` takes from its ``port_base``."""
    geo = data["geo"]
    n = sum(len(s.get("masters", [])) + len(s.get("resolvers", [])) for s in geo["sites"])
    return n + 2 * len(geo["tools"])


def derive_geo_site_file(
    base: Path,
    out: Path,
    octet: int,
    port_base: int,
    *,
    state_dir: Path | None = None,
    name: str | None = None,
) -> Path:
    """Write a copy of the geo site file `base` to `out`, for a geo lab of its own.

    Every address ``127.0.40.x`` becomes ``127.0.OCTET.x``; the DNS servers (every master and
    resolver of every site, in file order), then each tool's port and its database's port take
    ``port_base``, ``port_base + 1``, ...; every path under the base's state directory (the
    secrets, the SSH files, the CA) moves under the copy's.

    Args:
        base: a geo site file (with ``geo:`` and ``lab.state_dir``).
        out: where the copy is written.
        octet: the copy's loopback block (1-254, not 40: the base's own).
        port_base: its first port; `port_count` ports from it are used.
        state_dir: its state directory (default: ``/var/tmp/handover-lab/SITE-OCTET-PORT``).
        name: its site name (default: the base's name and the octet).

    Returns:
        `out`.

    Raises:
        LabError: the base is not a geo lab site, or the octet or ports are out of range.
    """
    data = yaml.safe_load(base.read_text())
    if (
        not isinstance(data, dict)
        or "geo" not in data
        or "state_dir" not in (data.get("lab") or {})
    ):
        raise LabError(f"{base}: not a geo lab site file (it needs `geo:` and `lab.state_dir`)")
    if not 1 <= octet <= 254 or octet == 40:
        raise LabError(f"octet {octet}: use 1-254 other than 40 (the base site's own block)")
    count = port_count(data)
    if not 1024 <= port_base <= 65535 - count:
        raise LabError(f"port_base {port_base}: {count} ports from it must lie in 1024-65535")
    old_state = str(data["lab"]["state_dir"]).rstrip("/")
    site = name or f"{data['site']}-{octet}"
    new_state = str(state_dir or STATE_ROOT / f"{site}-{port_base}")
    data = _rewrite(data, octet, old_state, new_state)
    data["site"] = site
    data["lab"]["state_dir"] = new_state
    ports = iter(range(port_base, port_base + count))
    for s in data["geo"]["sites"]:
        for server in [*s.get("masters", []), *s.get("resolvers", [])]:
            server["port"] = next(ports)
    for tool in data["geo"]["tools"]:
        tool["port"] = next(ports)
        tool["database"]["port"] = next(ports)
        for placement in tool["sites"].values():
            placement.pop("db_port", None)  # every site's server on the database's port
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def _rewrite(value: Any, octet: int, old_state: str, new_state: str) -> Any:
    """`value` with its addresses moved to the octet's block and its state paths re-rooted."""
    if isinstance(value, dict):
        return {k: _rewrite(v, octet, old_state, new_state) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite(v, octet, old_state, new_state) for v in value]
    if isinstance(value, str):
        if re.fullmatch(re.escape(BASE_BLOCK) + r"\d{1,3}", value):
            return f"127.0.{octet}.{value.rsplit('.', 1)[1]}"
        if value == old_state or value.startswith(old_state + "/"):
            return new_state + value[len(old_state) :]
    return value
