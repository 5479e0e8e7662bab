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
* from a snapshot of the real site (`handover snapshot --json`), when given: the twin's load
  (`twin_load`): per channel, as many transfers at once as the site's agent runs, each lasting
  about as long as the site's do (estimated from their ages, `ps`'s elapsed time, and from
  the time they still need when the site's database tells it), on a time scale that keeps a
  rehearsal within minutes; from an upgrade's snapshot (`read_snapshot`), also the version
  each host runs.

A site the lab cannot mirror is refused with every reason (`TwinRefused`): a site of web tools
(its geo lab mirrors it), a command profile that differs from the FTS 2 commands the lab's hosts
implement (each command named), more hosts than the lab's block holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from config.invariants import Problem
from config.site import Site
from config.site.commands import Commands
from flows.plans.snapshot import SiteSnapshot

ROOT = Path(__file__).resolve().parents[2]
#: the lab site whose lab-only parts (timeouts, the database's queries, the lab section) a twin
#: takes
TEMPLATE = ROOT / "config" / "sites" / "lab.yaml"
MAX_HOSTS = 250
#: the longest transfer a twin runs (seconds; the lab's own long transfers last 4-8 s): a
#: site's transfers of an hour would make every rehearsal wait an hour for its drains; longer
#: ones are scaled down, all by one factor
MAX_TWIN_TRANSFER_S = 10.0
#: the shortest (`ps` gives ages to the second, and a scaled-down minute is short)
MIN_TWIN_TRANSFER_S = 0.5


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
        if field == "list_processes" and mine[:1] == ["ps"]:
            continue  # the lab's hosts run procps' ps: any of its listings parses the same
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


class TwinLoad(BaseModel):
    """The twin's load, shaped on a snapshot's running transfers (`twin_load`)."""

    #: per channel, the most transfers its agent runs at once: as many as the site ran
    active: dict[str, int] = {}
    #: per channel whose transfers' ages the snapshot gives, the site's transfer duration
    #: estimated from them (seconds)
    durations_s: dict[str, float] = {}
    #: how many times shorter than the site's the twin's transfers are (1: as long)
    scale: float = 1.0

    def twin_s(self, channel: str) -> float:
        """How long a transfer of `channel` lasts on the twin (its duration known)."""
        return round(max(MIN_TWIN_TRANSFER_S, self.durations_s[channel] / self.scale), 3)

    def sentence(self) -> str:
        """One line for the terminal and the rehearsal's report."""
        if not self.active:
            return "the twin's load: the lab's (no snapshot)"
        per = ", ".join(
            f"{c} {n}" + (f" of ~{self.twin_s(c):.1f} s" if c in self.durations_s else "")
            for c, n in sorted(self.active.items())
        )
        out = f"the twin's load, transfers at once per channel: {per}"
        if not self.durations_s:
            return out + " (the snapshot gives no ages: the lab's durations)"
        if self.scale > 1:
            out += (
                f"; {self.scale:.3g} times shorter than the site's (its longest "
                f"~{max(self.durations_s.values()):.0f} s), so a drain on the twin takes "
                f"1/{self.scale:.3g} of the site's"
            )
        return out


def channel_duration(ages: list[float], etas: list[float] | None) -> float:
    """A channel's transfer duration estimated from its running transfers' ages (and what they
    still need, when the site's database says): in a steady load, an age is uniform over a
    transfer's duration, so the oldest of n running transfers is n/(n+1) of it; with the
    remaining times, each running transfer's mean age plus mean remaining time is."""
    if etas:
        return sum(ages) / len(ages) + sum(etas) / len(etas)
    return max(ages) * (len(ages) + 1) / len(ages)


def twin_load(snapshot: SiteSnapshot) -> TwinLoad:
    """The twin's load from the real site's snapshot: per channel as many transfers at once as
    the site runs, each lasting about as long as the site's (from their ages), all scaled down
    by one factor when the longest would exceed `MAX_TWIN_TRANSFER_S`."""
    ages: dict[str, list[float]] = {}
    for h in snapshot.hosts:
        for t in h.transfer_processes:
            if t.age_s is not None:
                ages.setdefault(t.channel, []).append(t.age_s)
    etas = snapshot.transfer_eta or {}
    durations = {c: round(channel_duration(a, etas.get(c)), 3) for c, a in sorted(ages.items())}
    longest = max(durations.values(), default=0.0)
    return TwinLoad(
        active={c: max(1, n) for c, n in sorted(busiest(snapshot).items())},
        durations_s=durations,
        scale=round(max(1.0, longest / MAX_TWIN_TRANSFER_S), 3),
    )


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
        load = twin_load(snapshot)
        lab["active_per_channel"] = load.active
        for c in load.durations_s:
            # each around the site's duration (+-25 %, so the channel's transfers do not end
            # in step), on the twin's time scale
            span = [round(0.75 * load.twin_s(c), 3), round(1.25 * load.twin_s(c), 3)]
            lab["transfers"].setdefault("per_channel", {})[c] = {
                "short_s": span,
                "long_s": span,
                "long_fraction": 0.0,
            }
        said = load.sentence()
        data["description"] += f" {said[0].upper()}{said[1:]}."
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
