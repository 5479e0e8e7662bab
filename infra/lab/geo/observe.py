"""How the geo lab is seen from outside: each database as handover's account sees it, what each
master and resolver answers, each tool's health page (`GeoLab.status`)."""

from __future__ import annotations

import contextlib
import http.client
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pymysql  # type: ignore[import-untyped]
import pymysql.cursors  # type: ignore[import-untyped]

from infra.lab.errors import LabError
from infra.lab.geo import mariadb, procs
from infra.lab.geo.clients import client_context
from infra.lab.geo.dns import read_name
from infra.lab.geo.secrets import ca_file
from infra.lab.geo.views import DatabaseView, DnsServerView, GeoSiteView, GeoStatus, ToolView

if TYPE_CHECKING:
    from infra.lab.geo.lab import GeoLab

#: the bound of each question status asks
ASK_S = 1.0


def health(address: str, port: int, ca: Path, timeout_s: float) -> tuple[int | None, Any]:
    """``GET /health`` of a tool over HTTPS (its certificate checked for its address).

    Returns:
        (status, the JSON body) or (None, why there was no answer).
    """
    try:
        conn = http.client.HTTPSConnection(
            address, port, timeout=timeout_s, context=client_context(ca)
        )
        try:
            conn.request("GET", "/health")
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
    except (OSError, http.client.HTTPException) as exc:
        return None, str(exc) or type(exc).__name__
    try:
        return resp.status, json.loads(raw)
    except ValueError:
        return resp.status, {"body": raw[:200].decode(errors="replace")}


def database(lab: GeoLab, tool: str, site: str, running: bool) -> DatabaseView:
    """One database server, as handover's account sees it."""
    t = lab.geo.tool(tool)
    db = lab.db(site, tool)
    view = DatabaseView(tool=tool, server=f"{db.host}:{db.port}", running=running, up=False)
    try:
        conn = mariadb.connect(
            db.host, db.port, t.database.user, lab.admin_password(tool), timeout_s=ASK_S
        )
    except (pymysql.MySQLError, LabError, OSError) as exc:
        view.error = str(exc)
        return view
    with contextlib.closing(conn), conn.cursor(pymysql.cursors.DictCursor) as cur:
        try:
            cur.execute("SELECT @@global.read_only AS ro, @@global.gtid_current_pos AS pos")
            row = cur.fetchone() or {}
            view.up = True
            view.read_only = bool(row.get("ro"))
            view.gtid_current_pos = row.get("pos")
            cur.execute("SHOW SLAVE STATUS")
            slave = cur.fetchone()
            if slave:
                view.replica_of = f"{slave['Master_Host']}:{slave['Master_Port']}"
                view.replicating = (
                    slave["Slave_IO_Running"] == "Yes" and slave["Slave_SQL_Running"] == "Yes"
                )
                lag = slave.get("Seconds_Behind_Master")
                view.lag_s = None if lag is None else float(lag)
                errors = [slave.get("Last_IO_Error"), slave.get("Last_SQL_Error")]
                view.error = "; ".join(e for e in errors if e) or None
            schema = t.database.database
            cur.execute(f"SELECT epoch, site FROM `{schema}`.handover_fence WHERE id = 1")  # noqa: S608
            fence = cur.fetchone()
            if fence:
                view.fence_epoch, view.fence_site = int(fence["epoch"]), str(fence["site"])
            cur.execute(f"SELECT COUNT(*) AS n FROM `{schema}`.writes")  # noqa: S608
            view.writes = int((cur.fetchone() or {}).get("n", 0))
        except pymysql.MySQLError as exc:
            view.error = str(exc)
    return view


def status(lab: GeoLab, rec: dict[str, Any]) -> GeoStatus:
    """The whole lab (`GeoLab.status`)."""
    refs = procs.refs_of(rec.get("procs", {}))
    running = {k for k, r in refs.items() if r.running()}
    out = GeoStatus(
        site=lab.site.site,
        up=bool(running),
        state_dir=str(lab.paths.root),
        started=rec.get("started"),
    )
    if not rec:
        return out
    first = lab.geo.tools[0]
    name = first.names[0]
    roles = lab.dns.roles()
    for s in lab.geo.sites:
        dns_views: dict[str, list[DnsServerView]] = {"master": [], "resolver": []}
        for role in (r for r in roles if r.site == s.name):
            v = DnsServerView(
                role=role.key,
                server=f"{role.server.address}:{role.server.port}",
                running=f"dns:{role.key}" in running,
            )
            try:
                answer = read_name(role.server, name, ASK_S)
                v.addresses, v.epoch, v.ttl_s = answer.addresses, answer.epoch, answer.ttl_s
            except LabError as exc:
                v.error = str(exc)
            dns_views[role.kind].append(v)
        tools = []
        for t in lab.geo.tools:
            if s.name not in t.sites:
                continue
            address = t.sites[s.name].address
            code, body = health(address, t.port, ca_file(t, lab.paths), ASK_S)
            tools.append(
                ToolView(
                    tool=t.name,
                    url=f"https://{address}:{t.port}",
                    running=f"tool:{t.name}:{s.name}" in running,
                    status=code,
                    health=body if isinstance(body, dict) else {},
                    error=body if code is None else None,
                )
            )
        out.sites.append(
            GeoSiteView(
                name=s.name,
                killed=s.name in rec.get("killed", []),
                databases=[
                    database(lab, t.name, s.name, f"db:{t.name}:{s.name}" in running)
                    for t in lab.geo.tools
                    if s.name in t.sites
                ],
                masters=dns_views["master"],
                resolvers=dns_views["resolver"],
                tools=tools,
            )
        )
    return out
