"""A lab that mirrors a real site (`handover lab twin`): its twin, to rehearse on.

`twin_site_data` turns a real site file into a lab site file that keeps what a procedure's plan
depends on and replaces what only the real site has:

* kept: the host names and roles, the service's name and agents (channels, VOs, primaries and
  backups), the front end's hosts and policies, the alias and its zone and TTL, the upgrade's
  settings (its target version is put in the lab's package repository) and the procedures'
  policies;
* mapped: each host's address into the lab's loopback block (``127.0.OCTET.N``, port 2222), the
  database to the lab's PostgreSQL (with the lab's queries), the DNS servers to the lab's BIND9,
  the SSH key and known hosts to the lab's;
* left out: Slack (a rehearsal asks nobody: a decision taken through the gateway only becomes
  one taken anywhere, and an upgrade does not stop for one after its canary), the site's
  secrets (the lab makes its own), maintenance windows and blackouts (a rehearsal runs now);
* from a snapshot of the real site (`handover snapshot --json`), when given: the most transfers
  each channel's agent runs at once, so the twin's load is shaped like the site's; from an
  upgrade's snapshot (`read_snapshot`), also the version each host runs.

A site the lab cannot mirror is refused with every reason (`TwinRefused`): a site of web tools
(its geo lab mirrors it), a command profile that differs from the FTS 2 commands the lab's hosts
implement (each command named), more hosts than the lab's block holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from config.invariants import Problem
from config.site import Site
from config.site.commands import Commands
from flows.plans.snapshot import SiteSnapshot

ROOT = Path(__file__).resolve().parents[2]
#: the lab site whose lab-only parts (timeouts, the database's queries, the lab section) a twin
#: takes
TEMPLATE = ROOT / "config" / "sites" / "lab.yaml"
MAX_HOSTS = 250


class TwinRefused(ValueError):
    """The lab cannot mirror this site; `problems` says which part and what to do."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: the lab cannot mirror it: {len(problems)} problem(s)\n{lines}")


def twin_problems(site: Site) -> list[Problem]:
    """What keeps the lab from mirroring `site` (empty: it can)."""
    problems = []
    if site.service.kind != "fts2-agents" or site.geo is not None:
        problems.append(
            Problem(
                "service.kind",
                "the twin mirrors a site of FTS 2 agents; tools replicated between sites are "
                "rehearsed on the geo lab",
                "use `handover lab up --geo`",
            )
        )
    default = Commands()
    for field in Commands.model_fields:
        mine, lab = getattr(site.commands, field), getattr(default, field)
        if mine != lab:
            problems.append(
                Problem(
                    f"commands.{field}",
                    f"the lab's hosts implement the FTS 2 profile ({lab!r}); this site's is "
                    f"{mine!r}",
                    "rehearse with the FTS 2 command, or teach the lab's hosts this one "
                    "(infra/lab/hostcmd.py)",
                )
            )
    if len(site.hosts) > MAX_HOSTS:
        problems.append(
            Problem(
                "hosts",
                f"{len(site.hosts)} hosts; the lab's address block holds {MAX_HOSTS}",
                "rehearse on a site file of the hosts the procedure touches",
            )
        )
    return problems


def busiest(snapshot: SiteSnapshot) -> dict[str, int]:
    """Per channel, the running transfers the snapshot saw (on whichever host)."""
    out: dict[str, int] = {}
    for h in snapshot.hosts:
        for channel, n in h.transfers.items():
            out[channel] = out.get(channel, 0) + n
    return out


def twin_site_data(
    site: Site,
    *,
    octet: int,
    state_dir: Path,
    snapshot: SiteSnapshot | None = None,
    installed: Mapping[str, str] | None = None,
    source: str = "",
) -> dict[str, Any]:
    """The lab site file (as data) of `site`'s twin (module docstring).

    Raises:
        TwinRefused: the lab cannot mirror the site.
    """
    problems = twin_problems(site)
    if snapshot is not None:
        strangers = sorted({h.host for h in snapshot.hosts} - {h.name for h in site.hosts})
        if strangers:
            problems.append(
                Problem(
                    "--snapshot",
                    f"hosts {', '.join(strangers)} are not the site's: a snapshot of another site",
                    "take it with `handover snapshot --site FILE --json` of this site",
                )
            )
    if problems:
        raise TwinRefused(source or f"site {site.site}", problems)
    data: dict[str, Any] = yaml.safe_load(TEMPLATE.read_text())
    real = site.model_dump(mode="json", exclude_defaults=True)
    data["site"] = f"{site.site}-twin"
    data["description"] = f"The lab's twin of site {site.site}: its hosts on loopback addresses."
    data["hosts"] = [
        {
            "name": h.name,
            "address": f"127.0.{octet}.{i + 1}",
            "port": 2222,
            "roles": [str(r) for r in h.roles],
        }
        for i, h in enumerate(site.hosts)
    ]
    data["service"] = real["service"]
    data["ssh"]["key_file"] = str(state_dir / "ssh" / "id_ed25519")
    data["ssh"]["known_hosts"] = str(state_dir / "ssh" / "known_hosts")
    db_port = 20000 + octet
    data["database"]["port"] = db_port
    data["database"]["password"] = {"file": str(state_dir / "secrets" / "db-password")}
    if site.dns is None:
        data.pop("dns", None)
    else:
        data["dns"].update(
            {
                "zone": site.dns.zone,
                "alias": site.dns.alias,
                "ttl_s": site.dns.ttl_s,
                "port": 30000 + 4 * octet,
                "secondaries": [{"address": "127.0.0.1", "port": 30001 + 4 * octet}],
                "tsig_key": {"file": str(state_dir / "secrets" / "tsig-key")},
            }
        )
    if site.frontend is None:
        data.pop("frontend", None)
    else:
        front = real["frontend"]
        front.pop("cluster_host", None)  # the lab runs no cluster
        data["frontend"] = {**data["frontend"], **front}
    data.pop("slack", None)
    if "upgrade" in real:
        data["upgrade"] = real["upgrade"]
        # a rehearsal asks nobody, after the canary either
        data["upgrade"]["approve_after_canary"] = False
    policies = real.get("procedures", {})
    for policy in policies.values():
        policy.pop("windows", None)  # a rehearsal runs now
        policy.pop("blackouts", None)
        if policy.get("approval_via") == "gateway":  # no Slack: whoever rehearses approves
            policy["approval_via"] = "any"
    data["procedures"] = policies
    lab = data["lab"]
    lab.update({"state_dir": str(state_dir), "db_port": db_port})
    move = data["procedures"].setdefault("clean-move", {})
    # the lab's agents give up waiting for their DB lock after lab.lock_wait_s
    move["agent_lock_wait_s"] = lab["lock_wait_s"]
    from infra.lab.software import VERSIONS

    versions = [site.upgrade.target_version, *(installed or {}).values()]
    extra = sorted({v for v in versions if v and v not in VERSIONS})
    if extra:
        lab["extra_versions"] = extra
    if installed:
        lab["installed"] = dict(installed)
    if snapshot is not None:
        counts = busiest(snapshot)
        lab["active_per_channel"] = {c: max(1, n) for c, n in sorted(counts.items())}
    return data


def read_snapshot(path: Path) -> tuple[SiteSnapshot, dict[str, str] | None]:
    """A recorded snapshot: a site's (`handover snapshot --json`), or an upgrade's (with each
    host's installed version, then also returned).

    Raises:
        ValueError: the file is neither.
    """
    from pydantic import ValidationError

    from flows.plans.rolling_upgrade import UpgradeSnapshot

    text = path.read_text()
    try:
        up = UpgradeSnapshot.model_validate_json(text)
    except ValidationError:
        return SiteSnapshot.model_validate_json(text), None
    return up.site, {h: u.installed for h, u in up.hosts.items() if u.installed}


def write_twin(
    site_file: Path,
    *,
    octet: int,
    out: Path,
    snapshot_file: Path | None = None,
    state_dir: Path | None = None,
) -> Path:
    """Write the twin's lab site file of the site in `site_file` to `out` (its state in
    `state_dir`, default /var/tmp/handover-lab/SITE-twin).

    Raises:
        config.loader.SiteConfigError: the site file is invalid.
        TwinRefused: the lab cannot mirror the site.
        ValueError: the snapshot file is not a snapshot.
    """
    from config.loader import load_site

    site = load_site(site_file)
    snapshot, installed = None, None
    if snapshot_file is not None:
        snapshot, installed = read_snapshot(snapshot_file)
    state_dir = state_dir or Path("/var/tmp/handover-lab") / f"{site.site}-twin"
    data = twin_site_data(
        site,
        octet=octet,
        state_dir=state_dir,
        snapshot=snapshot,
        installed=installed,
        source=str(site_file),
    )
    out.write_text(
        f"# the lab's twin of {site_file} (`handover lab twin`): regenerated, not edited\n"
        + yaml.safe_dump(data, sort_keys=False)
    )
    return out
