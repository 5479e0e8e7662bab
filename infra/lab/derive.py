"""Lab sites derived from another: a generated site of N hosts (scale runs), and a copy with its
own name, addresses, DB port and state directory (tests and benchmarks never touch an operator's
lab)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from config.site import Site
from infra.lab.errors import LabError


def scaled_site(base: Site, hosts: int) -> Site:
    """A lab site with `hosts` hosts, each the primary of one channel agent, backed by the next."""
    if not 2 <= hosts <= 250:
        raise LabError(f"--hosts must be between 2 and 250, got {hosts}")
    assert base.lab is not None
    data = base.model_dump(mode="json", exclude_defaults=False)
    data["site"] = f"{base.site}-x{hosts}"
    data["hosts"] = [
        {
            "name": f"fts{101 + i}",
            "address": f"127.0.{2 + i // 200}.{1 + i % 200}",
            "port": base.hosts[0].port,
            "roles": ["channel-agents"],
        }
        for i in range(hosts)
    ]
    data["service"]["agents"] = [
        {
            "channel": f"CERN-T{i + 1:03d}",
            "primary": f"fts{101 + i}",
            "backup": f"fts{101 + (i + 1) % hosts}",
        }
        for i in range(hosts)
    ] + [{"vo": "atlas", "primary": "fts101", "backup": "fts102"}]
    for a in data["service"]["agents"]:
        a.pop("name", None)
    return Site.model_validate(data)


def derive_site_file(
    base_file: Path,
    out: Path,
    *,
    name: str,
    octet: int,
    db_port: int,
    state_dir: Path,
    lab: dict[str, Any] | None = None,
    procedures: dict[str, dict[str, Any]] | None = None,
    database: dict[str, Any] | None = None,
) -> Path:
    """Write a copy of a lab site with its own name, addresses (127.0.OCTET.x), DB port and state
    directory, so that tests and benchmarks never touch a lab an operator runs."""
    data = yaml.safe_load(base_file.read_text())
    data["site"] = name
    for h in data["hosts"]:
        h["address"] = f"127.0.{octet}.{h['address'].rsplit('.', 1)[1]}"
    data["ssh"]["key_file"] = str(state_dir / "ssh" / "id_ed25519")
    data["ssh"]["known_hosts"] = str(state_dir / "ssh" / "known_hosts")
    data["database"]["port"] = db_port
    data["database"]["password"] = {"file": str(state_dir / "secrets" / "db-password")}
    data["database"].update(database or {})
    data["lab"].update({"state_dir": str(state_dir), "db_port": db_port, **(lab or {})})
    if data.get("dns"):  # named listens on interface addresses only: own ports on 127.0.0.1
        dns = data["dns"]
        dns["port"] = 30000 + 4 * octet
        dns["secondaries"] = [
            {"address": "127.0.0.1", "port": 30001 + 4 * octet + i}
            for i in range(len(dns.get("secondaries", [])))
        ]
        dns["tsig_key"] = {"file": str(state_dir / "secrets" / "tsig-key")}
    move = data.get("procedures", {}).get("clean-move")
    if move is not None and "lock_wait_s" in data["lab"]:
        # the lab's agents give up waiting for their DB lock after lab.lock_wait_s
        move["agent_lock_wait_s"] = data["lab"]["lock_wait_s"]
    for proc, policy in (procedures or {}).items():
        data.setdefault("procedures", {}).setdefault(proc, {}).update(policy)
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def service_sites(base: Site, services: int) -> list[Site]:
    """A generated lab site (`scaled_site`) cut into `services` sites of consecutive hosts, each
    with its own site and service name (so its own service lock) and the agents whose primary
    and backup both lie in its hosts: several services of one lab that procedures may work on
    at once. Without front end, DNS, Slack and alerts (they belong to the whole lab).

    Raises:
        LabError: fewer than 4 hosts per service.
    """
    size = len(base.hosts) // services if services > 0 else 0
    if size < 4:
        raise LabError(
            f"{services} services need at least 4 hosts each; the site has {len(base.hosts)}"
        )
    data = base.model_dump(mode="json", exclude_defaults=True)
    for part in ("frontend", "dns", "slack", "alerts"):
        data.pop(part, None)
    out = []
    for k in range(services):
        hosts = base.hosts[k * size : (k + 1) * size]
        names = {h.name for h in hosts}
        out.append(
            Site.model_validate(
                {
                    **data,
                    "site": f"{base.site}-s{k + 1:02d}",
                    "hosts": [h.model_dump(mode="json", exclude_defaults=True) for h in hosts],
                    "service": {
                        **data["service"],
                        "name": f"{base.service.name}-s{k + 1:02d}",
                        "agents": [
                            a.model_dump(mode="json", exclude_defaults=True)
                            for a in base.service.agents
                            if a.primary in names and a.backup in names
                        ],
                    },
                }
            )
        )
    return out
