"""The lab's own section of a site file (``lab:``): how the lab simulates the site on one machine.

The lab is test equipment, so its settings are no part of the production schema: `config.site.Site`
keeps the section as given, and the lab reads and checks it here with its own models. A lab site
file is loaded with `load_lab_site`, which reports a malformed section the way the site loader
reports any other field (``lab.tick_s: ...; fix: ...``), together with what only a lab site must
satisfy (hosts on 127.0.0.0/8, a state directory the hosts can see).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

from pydantic import Field, StringConstraints, ValidationError, model_validator

from config.invariants import Problem
from config.loader import SiteConfigError, load_site, problems_from_validation
from config.site import Site, SiteModel


class TransferProfile(SiteModel):
    """Durations of transfers: a mixture of short and long ones (uniform within each range)."""

    short_s: tuple[float, float] = (0.5, 2.0)
    long_s: tuple[float, float] = (4.0, 8.0)
    long_fraction: float = Field(default=0.2, ge=0, le=1)

    @model_validator(mode="after")
    def _ranges(self) -> TransferProfile:
        for name in ("short_s", "long_s"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name}: need 0 < min <= max, got ({lo}, {hi})")
        return self


class LabTransfers(TransferProfile):
    """Durations of lab transfers, drawn with a fixed seed; channels may have their own profile
    (a transatlantic link carries longer transfers than a local one)."""

    seed: int = 42
    per_channel: dict[str, TransferProfile] = Field(default_factory=dict)
    #: how far off the site's estimate of each transfer's end is: the lab's
    #: `database.transfer_eta_query` reads each running transfer's end as its duration times a
    #: factor drawn per transfer, uniformly in [1 - eta_error, 1 + eta_error] (0: exact, which a
    #: real site never is: it estimates from size and rate)
    eta_error: float = Field(default=0.0, ge=0, lt=1)

    def profile(self, channel: str) -> TransferProfile:
        """The profile of one channel."""
        return self.per_channel.get(channel, self)


class LabHagd(SiteModel):
    """The HA group daemon on the lab's front-end hosts (`handover lab up --hagd`): the group's
    timings in seconds. The group is the front end's; ranks follow `frontend.hosts` (first
    highest). Hosts listed in `watch` run it too, in a watch group of their own."""

    port: int = Field(default=3333, ge=1024, le=65535)
    #: agents' hosts whose daemons watch each other (group ``SERVICE-agents``, no service): a
    #: host among them lost is reported by the others as ``host_down``, which starts its
    #: emergency move (a detection path beside the monitoring's)
    watch: list[str] = Field(default_factory=list)
    dt1_s: float = Field(default=2.0, gt=0, le=60)
    dt2_s: float = Field(default=1.0, ge=0, le=60)
    interval_s: float = Field(default=0.3, gt=0, le=10)
    check_s: float = Field(default=1.0, ge=0, le=60)
    timeout_s: float = Field(default=10.0, gt=0, le=120)

    @model_validator(mode="after")
    def _heartbeats(self) -> LabHagd:
        if self.interval_s * 3 > self.dt1_s:
            raise ValueError(
                f"interval_s: {self.interval_s:g} leaves fewer than 3 heartbeats in dt1_s "
                f"({self.dt1_s:g}); lower interval_s or raise dt1_s"
            )
        return self


class LabSettings(SiteModel):
    """How the lab simulates this site on one machine (only for lab sites)."""

    state_dir: Path
    db_address: str = "127.0.0.1"
    db_port: int = Field(default=55432, ge=1024, le=65535)
    lock_wait_s: float = Field(default=8.0, gt=0, le=600)
    max_active_per_channel: int = Field(default=4, ge=1, le=1000)
    jobs_per_second_per_channel: float = Field(default=1.0, ge=0, le=100)
    #: jobs the lab's clients submit through the service alias each second (sites with a
    #: `frontend:`; `infra/lab/clients.py`)
    clients_per_second: float = Field(default=4.0, ge=0, le=200)
    load_on_start: bool = True
    tick_s: float = Field(default=0.2, gt=0, le=5)
    transfers: LabTransfers = Field(default_factory=LabTransfers)
    hagd: LabHagd = Field(default_factory=LabHagd)
    #: versions the lab's package repository carries beside its own (1 to 5), all sound: a
    #: twin's site's upgrade target (`infra.lab.twin`)
    extra_versions: list[
        Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][\w.+~]{0,39}$")]
    ] = Field(default_factory=list)
    #: per host, the version a new lab's host runs (default 1; one of the repository's): a
    #: twin's hosts run their site's versions
    installed: dict[str, str] = Field(default_factory=dict)
    #: per channel, the most transfers its agent runs at once (default
    #: `max_active_per_channel`): a twin's load shaped like its site's snapshot
    active_per_channel: dict[str, Annotated[int, Field(ge=1, le=1000)]] = Field(
        default_factory=dict
    )


def lab_problems(site: Site, lab: LabSettings) -> list[Problem]:
    """What a lab site must satisfy beside its section's fields: hosts on 127.0.0.0/8, a state
    directory the hosts can see."""
    p: list[Problem] = []
    for i, h in enumerate(site.hosts):
        try:
            address = ipaddress.ip_address(h.address)
        except ValueError:
            address = None
        if address is None or not address.is_loopback or address.version != 4:
            p.append(
                Problem(
                    f"hosts[{i}].address",
                    f"lab host {h.name} has address {h.address}, outside 127.0.0.0/8",
                    "lab hosts live on loopback addresses such as 127.0.1.1",
                )
            )
    names = {h.name for h in site.hosts}
    for i, w in enumerate(lab.hagd.watch):
        if w not in names:
            p.append(
                Problem(
                    f"lab.hagd.watch[{i}]",
                    f"{w} is not a host of the site",
                    f"name hosts of `hosts:` ({', '.join(sorted(names))})",
                )
            )
    from infra.lab.software import VERSIONS

    carried = {*VERSIONS, *lab.extra_versions}
    for host, version in lab.installed.items():
        if host not in names:
            p.append(
                Problem(
                    f"lab.installed.{host}", "not a host of the site", "name a host of `hosts:`"
                )
            )
        if version not in carried:
            p.append(
                Problem(
                    f"lab.installed.{host}",
                    f"version {version} is not in the lab's repository "
                    f"({', '.join(sorted(carried))})",
                    "add it to lab.extra_versions",
                )
            )
    if len(lab.hagd.watch) == 1:
        p.append(
            Problem(
                "lab.hagd.watch",
                "one host has nobody to watch it",
                "list at least two hosts (a host and its agents' backup), or none",
            )
        )
    if not lab.state_dir.is_absolute():
        p.append(Problem("lab.state_dir", "must be an absolute path", "e.g. /var/tmp/handover-lab"))
    elif str(lab.state_dir).startswith(("/tmp/", "/run/")):
        p.append(
            Problem(
                "lab.state_dir",
                "lab hosts mount their own /tmp and /run, which would hide this directory",
                "use a directory under /var/tmp or /var/lib",
            )
        )
    return p


def lab_settings(site: Site, source: str | None = None) -> LabSettings:
    """The lab's settings of a site, read from its ``lab:`` section with the lab's model.

    Args:
        site: a loaded site.
        source: what to name in an error (the site file); default: the site's name.

    Returns:
        The settings, checked.

    Raises:
        SiteConfigError: the site has no ``lab:`` section, or it is malformed, or the site
            breaks what a lab site must satisfy (each problem with its field path and fix).
    """
    where = source or f"site {site.site}"
    if site.lab is None:
        raise SiteConfigError(
            where,
            [
                Problem(
                    "lab",
                    "the site has no `lab:` section; the lab runs only lab sites",
                    "use a lab site (e.g. config/sites/lab.yaml) or add a `lab:` section",
                )
            ],
        )
    try:
        lab = LabSettings.model_validate(site.lab)
    except ValidationError as exc:
        problems = [
            Problem(f"lab.{p.path}" if p.path != "(top level)" else "lab", p.message, p.fix)
            for p in problems_from_validation(exc)
        ]
        raise SiteConfigError(where, problems) from None
    problems = lab_problems(site, lab)
    if problems:
        raise SiteConfigError(where, problems)
    return lab


def load_lab_site(path: str | Path) -> tuple[Site, LabSettings]:
    """Read and validate a lab site file: the site, and its lab section with the lab's model.

    Raises:
        SiteConfigError: the file is invalid as a site or as a lab site (every problem listed).
    """
    site = load_site(path)
    return site, lab_settings(site, str(path))
