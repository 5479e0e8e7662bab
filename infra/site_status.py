"""Every site and service at a glance: what `handover status` reads and says; nothing is changed.

A site file is one site and service. An FTS site (`service.kind: fts2-agents`) is summed up from
one sensor reading (`tasks.sensors.read_sensors`: one SSH round trip per host): its hosts up,
where its agents serve, its channels' states. A site of replicated web tools (`web-tools`) gets
its tools' replication status (`tasks.geo`), as before. Each site is read on its own thread,
within `timeout_s`: a site that does not answer in time, whose hosts all fail to answer, or whose
file cannot be read is listed with the reason (its `ok` is None: nothing can be said of it),
and never holds the others.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from config.loader import SiteConfigError, allowed_site_dirs, load_site
from config.site import Site
from flows.plans.geo_status import GeoToolStatus

#: how long one site's reading may take (each host's SSH timeouts bound it below that)
TIMEOUT_S = 20.0


class FtsSummary(BaseModel):
    """An FTS site's state from one sensor reading (`fts_summary`)."""

    hosts: list[str]
    #: the hosts that did not answer, and why
    down: dict[str, str] = Field(default_factory=dict)
    #: per host that answered, the agents serving there
    serving: dict[str, list[str]] = Field(default_factory=dict)
    #: agents serving on no host
    nowhere: list[str] = Field(default_factory=list)
    #: agents serving on more than one host, and where
    twice: dict[str, list[str]] = Field(default_factory=dict)
    #: each channel's state, as read (a reading reads a few channels per host)
    channels: dict[str, str] = Field(default_factory=dict)
    #: the channels whose state this reading did not read
    channels_unread: list[str] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list)


class SiteStatus(BaseModel):
    """One site and service: its state, or why it cannot be said (`ok` None)."""

    file: str
    site: str | None = None
    service: str | None = None
    kind: str | None = None
    #: nothing wrong (True), something wrong (False), or nothing can be said (None)
    ok: bool | None = None
    #: why nothing can be said (the file, or no answer)
    error: str | None = None
    fts: FtsSummary | None = None
    tools: list[GeoToolStatus] = Field(default_factory=list)
    took_s: float = 0.0


def site_files(dirs: Sequence[Path] | None = None) -> list[Path]:
    """Every site file of the site directories (`config.loader.allowed_site_dirs`), a name once:
    the first directory that has ``<name>.yaml`` wins, as `config.loader.find_site` finds it."""
    seen: dict[str, Path] = {}
    for d in allowed_site_dirs() if dirs is None else dirs:
        if not d.is_dir():
            continue
        for f in sorted([*d.glob("*.yaml"), *d.glob("*.yml")]):
            seen.setdefault(f.stem, f)
    return sorted(seen.values(), key=lambda f: f.stem)


def fts_summary(site: Site, reading: Any) -> FtsSummary:
    """An FTS site's summary from a `tasks.sensors.SensorReading` (pure).

    An agent serves on a host where its process runs and its init script does not say it is
    otherwise (``serving``, or no state: ``running``), as the exporter counts it.
    """
    snap = reading.snapshot
    hosts = [h.name for h in site.hosts]
    out = FtsSummary(hosts=hosts)
    for h in hosts:
        hs = snap.host(h) if snap is not None and snap.has(h) else None
        if hs is None or not hs.reachable:
            out.down[h] = (hs.error if hs is not None else None) or "not read"
            continue
        states = reading.agent_states.get(h, {})
        out.serving[h] = [
            a.name for a in hs.agents if states.get(a.name, "running") in ("serving", "running")
        ]
    where: dict[str, list[str]] = {}
    for h, agents in out.serving.items():
        for a in agents:
            where.setdefault(a, []).append(h)
    for agent in site.service.agents:
        hosts_of = where.get(agent.name, [])
        if len(hosts_of) > 1:
            out.twice[agent.name] = hosts_of
        elif not hosts_of and {agent.primary, agent.backup} - set(out.down):
            out.nowhere.append(agent.name)
    if snap is not None:
        out.channels = dict(snap.channels)
    out.channels_unread = [c for c in site.channels if c not in out.channels]
    out.problems = [
        *(f"{h} does not answer: {why}" for h, why in out.down.items()),
        *(f"{a} serves on no host" for a in out.nowhere),
        *(f"{a} serves on {' and '.join(hs)} at once" for a, hs in out.twice.items()),
        *(f"channel {c} is {st}" for c, st in out.channels.items() if st != "Active"),
    ]
    return out


def _read(site: Site, tools: list[str] | None, timeout_s: float) -> tuple[Any, Any]:
    """The site's reading: (FTS summary or None, tool statuses)."""
    from tasks.geo import snapshot_geo

    statuses = []
    if site.geo is not None:
        from flows.plans.geo_status import geo_status

        statuses = [
            geo_status(t, snapshot_geo(site, t.name))
            for t in site.geo.tools
            if tools is None or t.name in tools
        ]
    if site.service.kind == "web-tools":
        return None, statuses
    from tasks.remote import SiteShell
    from tasks.sensors import read_sensors

    with SiteShell(site) as shell:
        reading = read_sensors(shell, timeout_s)
    return fts_summary(site, reading), statuses


def read_status(path: Path, service: str | None = None, timeout_s: float = TIMEOUT_S) -> SiteStatus:
    """One site file's status: for `service` its service's, or only the replicated tool of that
    name (None: the service and every tool; `wanted` says whether the file is for `service`).

    Never raises for the site: what cannot be read is said in `error`.
    """
    started = time.monotonic()
    status = SiteStatus(file=str(path))
    try:
        site = load_site(path)
    except SiteConfigError as exc:
        status.error = f"cannot read the site file: {exc.problems[0]}"
        return status
    status.site, status.service, status.kind = site.site, site.service.name, site.service.kind
    tools = None if service in (None, site.service.name) else [service]
    holder: dict[str, Any] = {}

    def work() -> None:
        try:
            holder["result"] = _read(site, tools, timeout_s)
        except Exception as exc:  # noqa: BLE001 - said for this site; the others go on
            holder["error"] = f"{type(exc).__name__}: {exc}"

    # a daemon thread: a site whose reading hangs past its bound neither holds the others nor
    # the command's exit (its SSH timeouts end it)
    thread = threading.Thread(target=work, name=f"status-{site.site}", daemon=True)
    thread.start()
    thread.join(timeout_s + 5)
    status.took_s = round(time.monotonic() - started, 2)
    if "result" not in holder:
        status.error = holder.get("error") or f"no answer within {timeout_s + 5:g} s"
        return status
    fts, status.tools = holder["result"]
    status.fts = fts
    if fts is not None and fts.hosts and len(fts.down) == len(fts.hosts):
        first = next(iter(fts.down.items()))
        status.error = f"no host answers ({len(fts.hosts)} hosts; {first[0]}: {first[1]})"
        return status
    problems = (fts.problems if fts is not None else []) + [
        p for t in status.tools for p in t.problems
    ]
    status.ok = not problems
    return status


def services_of(path: Path) -> list[str]:
    """The names `--service` may give for a site file: its service's, then its replicated
    tools' (none for a file that cannot be read)."""
    try:
        site = load_site(path)
    except SiteConfigError:
        return []
    return (
        [site.service.name, *(t.name for t in site.geo.tools)] if site.geo else [site.service.name]
    )


def wanted(path: Path, service: str | None) -> bool:
    """Whether a site file is for `service` (its service's name or one of its tools'); a file
    that cannot be read is kept (it may be; its block says why it cannot be read)."""
    if service is None:
        return True
    names = services_of(path)
    return not names or service in names


def read_statuses(
    paths: Sequence[Path], service: str | None = None, timeout_s: float = TIMEOUT_S
) -> list[SiteStatus]:
    """Each site file's status (`read_status`), the sites read at once, in the files' order."""
    from concurrent.futures import ThreadPoolExecutor

    if not paths:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(paths))) as ex:
        return list(ex.map(lambda p: read_status(p, service, timeout_s), paths))


def exit_code(statuses: Sequence[SiteStatus]) -> int:
    """0 nothing wrong, 1 something is wrong somewhere, 2 nothing wrong seen but a site could
    not be said."""
    if any(s.ok is False for s in statuses):
        return 1
    return 2 if any(s.ok is None for s in statuses) else 0
