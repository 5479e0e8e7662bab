"""Observing the lab: its hosts' processes, who serves, its status and its score."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from config.site import Site
from infra.lab.host import HostProc, alive, processes_by_namespace
from infra.lab.paths import EDGUSER_UID
from infra.lab.runtime import read_disabled, read_state, serves
from infra.lab.views import (
    AgentView,
    ChannelView,
    ClientScore,
    DnsView,
    FrontendView,
    HostView,
    LabStatus,
    Score,
    TwiceView,
)

if TYPE_CHECKING:
    from infra.lab.lab import Lab


def host_processes(lab: Lab, rec: dict[str, Any] | None = None) -> dict[str, list[HostProc]]:
    """Processes of each running host (one /proc scan)."""
    rec = rec if rec is not None else lab.record()
    by_ns = {int(h["ns"]): n for n, h in rec.get("hosts", {}).items() if h.get("ns")}
    procs = processes_by_namespace(set(by_ns))
    return {by_ns[ns]: plist for ns, plist in procs.items()}


def serving(lab: Lab, site: Site, rec: dict[str, Any]) -> dict[str, set[str]]:
    """Hosts on which each agent currently serves, as the score counts it (`serves`)."""
    names = {a.name for a in site.service.agents}
    with contextlib.closing(lab.db.connect()) as conn:
        live = {int(r[0]) for r in conn.run("SELECT pid FROM pg_stat_activity")}
    out: dict[str, set[str]] = {}
    for host, plist in host_processes(lab, rec).items():
        for p in plist:
            if p.title in names:
                st = read_state(p.title, Path(f"/proc/{p.pid}/root"))
                if serves(st, p.nspid, live):
                    out.setdefault(p.title, set()).add(host)
    return out


def status(lab: Lab) -> LabStatus:
    """Every host, its agents, transfers and disabled list; every channel's state."""
    rec = lab.record()
    site = lab.site
    agent_names = {a.name for a in site.service.agents}
    procs = host_processes(lab, rec) if rec else {}
    hosts: list[HostView] = []
    for h in site.hosts:
        hrec = rec.get("hosts", {}).get(h.name, {})
        plist = procs.get(h.name, [])
        up = bool(hrec) and alive(hrec.get("init_pid")) and bool(plist)
        agents = []
        transfers: dict[str, int] = {}
        sshd = False
        titles = {p.pid: p.title for p in plist}
        for p in plist:
            first = p.title.split(" ", 1)[0]
            if p.title in agent_names:
                if titles.get(p.ppid) == p.title:
                    # the agent forking a transfer: until its exec the child shows the agent's
                    # title; it is the same agent, not a second one
                    continue
                st = read_state(p.title, Path(f"/proc/{p.pid}/root")) or {}
                agents.append(
                    AgentView(
                        name=p.title,
                        pid=p.nspid,
                        user="edguser" if p.uid == EDGUSER_UID else str(p.uid),
                        state=str(st.get("state", "unknown")),
                        version=str(st.get("version") or ""),
                        config=str(st.get("config") or ""),
                    )
                )
            elif "__" in first and p.state != "Z":
                ch = first.split("__", 1)[0]
                transfers[ch] = transfers.get(ch, 0) + 1
            elif p.title.startswith("sshd: /usr/sbin/sshd"):
                sshd = True
        disabled_path = site.commands.disabled_file
        if up:
            root = Path(f"/proc/{hrec['init_pid']}/root")
            disabled = read_disabled(str(root / str(disabled_path).lstrip("/")))
        else:
            disabled = read_disabled(
                str(lab.paths.host_dir(h.name) / "etc.upper" / disabled_path.relative_to("/etc"))
            )
        hosts.append(
            HostView(
                name=h.name,
                address=h.address,
                port=h.port,
                up=up,
                fault=rec.get("faults", {}).get(h.name),
                sshd=sshd,
                agents=sorted(agents, key=lambda a: a.name),
                transfers=dict(sorted(transfers.items())),
                disabled=disabled,
                processes=len(plist),
            )
        )
    channels: dict[str, ChannelView] = {}
    db_state = "down"
    if rec and lab.db.pid() is not None:
        try:
            with contextlib.closing(lab.db.connect(timeout=3)) as conn:
                for name, state, pending, active in conn.run(
                    "SELECT c.name, c.state, count(*) FILTER (WHERE j.state = 'Pending'), "
                    "count(*) FILTER (WHERE j.state = 'Active') FROM channels c LEFT JOIN "
                    "jobs j ON j.channel = c.name GROUP BY c.name, c.state ORDER BY c.name"
                ):
                    channels[name] = ChannelView(state=state, pending=pending, active=active)
            db_state = f"up on {lab.db.address}:{lab.db.port}"
        except Exception as exc:  # noqa: BLE001 - status reports, it does not fail
            db_state = f"unreachable: {exc}"
    return LabStatus(
        site=site.site,
        site_file=str(lab.paths.site_file if rec else "(lab down)"),
        up=bool(rec) and lab.is_up(),
        database=db_state,
        database_fault=rec.get("db_fault"),
        labd=alive(rec.get("labd_pid")),
        hosts=hosts,
        channels=channels,
        dns=_dns_views(site) if rec else [],
        frontends=_frontend_views(lab, site, rec, procs),
    )


def _frontend_views(
    lab: Lab, site: Site, rec: dict[str, Any], procs: dict[str, list[HostProc]]
) -> list[FrontendView]:
    from infra.lab.frontend import TITLE, read_role

    if site.frontend is None:
        return []
    views = []
    for name in site.frontend.hosts:
        role = read_role(lab.paths.host_dir(name) / "etc.upper" / "fts-frontend.role")
        views.append(
            FrontendView(
                host=name,
                role=role.get("role"),
                epoch=role.get("epoch"),
                redirect=role.get("redirect"),
                running=any(p.title == TITLE for p in procs.get(name, [])),
            )
        )
    return views


def _dns_views(site: Site) -> list[DnsView]:
    from tasks.adapters.dns import DnsError, read_alias

    if site.dns is None:
        return []
    views = []
    for i, srv in enumerate(site.dns.servers()):
        where, role = f"{srv.address}:{srv.port}", "primary" if i == 0 else "secondary"
        try:
            st = read_alias(site.dns, srv, timeout_s=2)
        except DnsError as exc:
            views.append(
                DnsView(
                    server=where, role=role, addresses=[], epoch=None, serial=None, error=str(exc)
                )
            )
        else:
            views.append(
                DnsView(
                    server=where,
                    role=role,
                    addresses=st.addresses,
                    epoch=st.epoch,
                    serial=st.serial,
                )
            )
    return views


def score(lab: Lab, *, reset: bool = False) -> Score:
    """The score since the lab started (or since the last reset, which `reset` performs)."""
    lab.require_up()
    with contextlib.closing(lab.db.connect(timeout=5)) as conn:
        if reset:
            conn.run("UPDATE score_downtime SET seconds = 0")
            conn.run("DELETE FROM score_twice")
            conn.run(
                "UPDATE score_clients SET accepted = 0, refused = 0, failed = 0, lost = 0, "
                "outages = 0, outage_max_s = 0, outage_last_s = 0"
            )
            conn.run(
                "INSERT INTO lab_control VALUES ('score_since', clock_timestamp()::text) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
            )
        since_rows = conn.run("SELECT value FROM lab_control WHERE key = 'score_since'")
        since = since_rows[0][0] if since_rows else "1970-01-01 00:00:00+00"
        counts = dict(conn.run("SELECT state, count(*) FROM jobs GROUP BY state"))
        done, lost = conn.run(
            "SELECT count(*) FILTER (WHERE state = 'Done'), count(*) FILTER (WHERE state = "
            "'Lost') FROM jobs WHERE finished_at >= CAST(:s AS timestamptz)",
            s=since,
        )[0]
        downtime = {
            c: round(float(s), 2)
            for c, s in conn.run("SELECT channel, seconds FROM score_downtime ORDER BY channel")
        }
        twice: dict[str, list[TwiceView]] = {"serving": [], "alive": []}
        for kind, agent, hosts, first, last in conn.run(
            "SELECT kind, agent, hosts, first_seen, last_seen FROM score_twice ORDER BY id"
        ):
            twice[kind].append(
                TwiceView(
                    agent=agent,
                    hosts=hosts.split(","),
                    first_seen=first.isoformat(timespec="milliseconds"),
                    last_seen=last.isoformat(timespec="milliseconds"),
                )
            )
        # how long each agent was down between one instance's end and the next one's start on
        # the same host (a restart), as the database saw it: independent of what the agents say
        gaps: dict[str, list[float]] = {}
        for agent, gap in conn.run(
            "SELECT agent, EXTRACT(EPOCH FROM started_at - prev_end) FROM (SELECT agent, host, "
            "started_at, lag(ended_at) OVER (PARTITION BY agent, host ORDER BY started_at) AS "
            "prev_end FROM agent_sessions) s WHERE prev_end IS NOT NULL AND started_at >= "
            "CAST(:s AS timestamptz) ORDER BY agent, started_at",
            s=since,
        ):
            gaps.setdefault(agent, []).append(round(max(0.0, float(gap)), 3))
        versions = dict(
            conn.run(
                "SELECT agent_version, count(*) FROM jobs WHERE started_at >= CAST(:s AS "
                "timestamptz) AND agent_version IS NOT NULL GROUP BY agent_version",
                s=since,
            )
        )
        clients = None
        if lab.site.frontend is not None:
            acc, ref, fail, wait, lost_s, outs, omax, olast = conn.run(
                "SELECT accepted, refused, failed, waiting, lost, outages, outage_max_s, "
                "outage_last_s FROM score_clients WHERE id = 1"
            )[0]
            fenced = conn.run(
                "SELECT count(*) FROM submissions s WHERE s.accepted_at >= CAST(:s AS "
                "timestamptz) AND EXISTS (SELECT 1 FROM epoch_history e WHERE e.epoch > s.epoch "
                "AND e.began_at <= s.accepted_at)",
                s=since,
            )[0][0]
            epoch, holder = conn.run("SELECT epoch, holder FROM service_epoch WHERE id = 1")[0]
            clients = ClientScore(
                accepted=int(acc),
                refused=int(ref),
                failed=int(fail),
                waiting=int(wait),
                lost=int(lost_s),
                outages=int(outs),
                outage_max_s=round(float(omax), 3),
                outage_last_s=round(float(olast), 3),
                writes_by_fenced_master=int(fenced),
                epoch=int(epoch),
                epoch_holder=str(holder),
            )
    return Score(
        clients=clients,
        since=str(since),
        jobs={s: int(counts.get(s, 0)) for s in ("Submitted", "Pending", "Active", "Done", "Lost")},
        jobs_done=int(done),
        jobs_lost=int(lost),
        downtime_s=downtime,
        downtime_total_s=round(sum(downtime.values()), 2),
        downtime_max_s=max(downtime.values(), default=0.0),
        agents_running_twice=twice["serving"],
        agents_alive_on_two_hosts=twice["alive"],
        restart_gaps_s=gaps,
        transfers_by_version={str(k): int(v) for k, v in versions.items()},
    )
