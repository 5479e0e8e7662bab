"""The geo lab (`infra.lab.geo`): two sites sharing a replicated tool, on real MariaDB (GTID
replication), real BIND9 masters and caching resolvers, and a real HTTPS tool. One lab for the
module (`tests.geo_lab`); each test leaves it as it found it: the tool active at the first site,
every process running."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql  # type: ignore[import-untyped]
import pytest
import yaml

from config.loader import load_site
from infra.lab.errors import LabError
from infra.lab.geo import procs
from infra.lab.geo.clients import Outcome, client_context, score, write_once
from infra.lab.geo.derive import derive_geo_site_file
from infra.lab.geo.dns import read_name
from infra.lab.geo.lab import GeoLab
from infra.lab.geo.mariadb import ER_OPTION_PREVENTS_STATEMENT
from tests.conftest import ROOT, wait_for
from tests.geo_lab import GEO_SITE, RunningGeoLab, derive_test_site, start_geo_lab


@pytest.fixture(scope="module")
def geo_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGeoLab]:
    """One geo lab for the module."""
    yield from start_geo_lab(tmp_path_factory)


def _write(g: RunningGeoLab, ident: str, via: str | None = None) -> Outcome:
    """One write through the tool's first name, resolved by `via`'s resolver (a real client)."""
    ctx = client_context(g.lab.ca_file())
    return write_once(ident, g.name, g.tool.port, g.resolver(via or g.sites[0]), ctx)


def _https(
    g: RunningGeoLab,
    site: str,
    method: str,
    path: str,
    *,
    host: str | None = None,
    body: bytes = b"",
) -> tuple[int, dict[str, str], bytes]:
    """One request to the tool at `site`, with SNI and Host `host` (default: its first name)."""
    host = host or g.name
    ctx = client_context(g.lab.ca_file())
    conn = http.client.HTTPSConnection(host, g.tool.port, context=ctx, timeout=5)
    raw = socket.create_connection((g.address(site), g.tool.port), timeout=5)
    conn.sock = ctx.wrap_socket(raw, server_hostname=host)
    try:
        conn.request(method, path, body=body or None, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _ids(g: RunningGeoLab, site: str) -> set[str]:
    return {r["id"] for r in g.lab.rows(site)}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={**os.environ, "COLUMNS": "400"},
    )


def _refused(address: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        try:
            s.connect((address, port))
        except ConnectionRefusedError:
            return True
    return False


# --- the lab ---------------------------------------------------------------------------------


@pytest.mark.lab
def test_a_write_through_the_name_lands_at_the_active_site_and_replicates(
    geo_lab: RunningGeoLab,
) -> None:
    a, b = geo_lab.sites
    o = _write(geo_lab, "first-write")
    assert (o.status, o.site, o.epoch, o.address) == (200, a, 1, geo_lab.address(a)), o
    assert "first-write" in _ids(geo_lab, a)
    wait_for(lambda: "first-write" in _ids(geo_lab, b), 10, "the write to replicate to site-b")
    status, _, body = _https(geo_lab, a, "GET", "/read?id=first-write")
    assert status == 200 and json.loads(body)["site"] == a
    assert _https(geo_lab, a, "GET", "/read?id=never-written")[0] == 404
    # clients in a process of their own, through site-b's resolver: every write lands at site-a
    load = geo_lab.lab.client(b, rate=10, process=True).start()
    try:
        wait_for(lambda: sum(o.ok for o in load.outcomes()) >= 3, 15, "3 writes from a process")
    finally:
        outcomes = load.stop()
    result = score(outcomes, geo_lab.lab.rows(a))
    assert result.acknowledged >= 3 and result.lost == 0, result
    assert {o.site for o in outcomes if o.ok} == {a}
    st = geo_lab.lab.status()
    dbs = {s.name: s.databases[0] for s in st.sites}
    assert dbs[a].read_only is False and dbs[a].replica_of is None
    assert dbs[b].read_only is True and dbs[b].replicating is True
    assert dbs[b].replica_of == f"{geo_lab.address(a)}:{geo_lab.tool.database.port}"


@pytest.mark.lab
def test_the_replica_refuses_writes(geo_lab: RunningGeoLab) -> None:
    a, b = geo_lab.sites
    # the tool's own account is bound by read_only at site-b (handover's is not)
    app = geo_lab.lab.paths.app_password.read_text().strip()
    with (
        contextlib.closing(
            pymysql.connect(
                host=geo_lab.address(b),
                port=geo_lab.tool.database.port,
                user="portal_app",
                password=app,
                database="portal",
                connect_timeout=5,
            )
        ) as conn,
        conn.cursor() as cur,
    ):
        with pytest.raises(pymysql.MySQLError) as refused:
            cur.execute("INSERT INTO writes VALUES ('at-b', 'site-b', 1, UTC_TIMESTAMP(6))")
    assert refused.value.args[0] == ER_OPTION_PREVENTS_STATEMENT
    # its tool says it is not writable, and sends a write to the active site
    status, _, body = _https(geo_lab, b, "GET", "/health")
    assert status == 503 and json.loads(body)["reason"] == "read-only"
    status, headers, body = _https(geo_lab, b, "POST", "/write", body=b'{"id": "sent-to-b"}')
    assert status == 307, body
    assert headers["location"] == f"https://{geo_lab.address(a)}:{geo_lab.tool.port}/write"
    assert json.loads(body) == {"error": "moved", "to": geo_lab.address(a), "epoch": 1}
    # a read-only active server (a planned failover's first step): the tool refuses, 503
    geo_lab.lab.sql(a, "SET GLOBAL read_only = ON")
    try:
        o = _write(geo_lab, "while-read-only")
    finally:
        geo_lab.lab.sql(a, "SET GLOBAL read_only = OFF")
    assert (o.status, o.error) == (503, "read-only"), o
    assert "while-read-only" not in _ids(geo_lab, a)
    assert _write(geo_lab, "writable-again").status == 200


@pytest.mark.lab
def test_the_resolvers_keep_an_answer_for_its_ttl_and_outlive_a_stopped_master(
    geo_lab: RunningGeoLab,
) -> None:
    a, b = geo_lab.sites
    second, ttl = geo_lab.tool.names[1], geo_lab.geo.ttl_s
    resolver = geo_lab.resolver(a)
    asked = time.monotonic()
    first = read_name(resolver, second)
    if (first.ttl_s or 0) < ttl - 1:  # cached a while ago: take a fresh answer
        time.sleep((first.ttl_s or 0) + 0.5)
        asked, first = time.monotonic(), read_name(resolver, second)
    assert first.addresses == [geo_lab.address(a)] and 0 < (first.ttl_s or 0) <= ttl
    geo_lab.set_address(second, geo_lab.address(b))
    try:
        # the masters answer the new address at once; the resolver keeps its answer for the TTL
        for m in geo_lab.masters():
            assert read_name(m, second).addresses == [geo_lab.address(b)]
        assert read_name(resolver, second).addresses == [geo_lab.address(a)]
        wait_for(
            lambda: read_name(resolver, second).addresses == [geo_lab.address(b)],
            ttl + 3,
            "the resolver to ask again once the TTL ran out",
        )
        assert time.monotonic() >= asked + (first.ttl_s or 0) - 1.0
        # site-a's master stopped, from another process: the resolvers ask site-b's
        res = _cli("lab", "geo-fault", "stop-master", a, "--site", str(geo_lab.site_file))
        assert res.returncode == 0 and f"stopped 1 master(s) of {a}" in res.stdout, res
        master_a = geo_lab.geo.site(a).masters[0]
        with pytest.raises(LabError):
            read_name(master_a, geo_lab.name, 0.5)
        time.sleep(ttl + 0.5)  # every answer cached before has expired
        for s in geo_lab.sites:
            assert read_name(geo_lab.resolver(s), geo_lab.name).addresses == [geo_lab.address(a)]
            assert read_name(geo_lab.resolver(s), second).addresses == [geo_lab.address(b)]
        res = _cli("lab", "geo-fault", "start-master", a, "--site", str(geo_lab.site_file))
        assert res.returncode == 0, res
        # started again from its zone and journal: it kept the update it had taken
        assert read_name(master_a, second).addresses == [geo_lab.address(b)]
    finally:
        geo_lab.lab.start_master(a)
        geo_lab.set_address(second, geo_lab.address(a))


@pytest.mark.lab
def test_a_killed_site_is_gone_at_once_and_comes_back_with_its_data(
    geo_lab: RunningGeoLab,
) -> None:
    a, b = geo_lab.sites
    lab = geo_lab.lab
    load = lab.client(a, rate=20).start()
    try:
        wait_for(lambda: sum(o.ok for o in load.outcomes()) >= 5, 10, "5 writes acknowledged")
        before = procs.refs_of(lab.record()["procs"])
        gone = {
            k: r
            for k, r in before.items()
            if k.endswith(f":{a}") or k.startswith(f"dns:{a}-master")
        }
        assert sorted(k.split(":")[0] for k in gone) == ["db", "dns", "tool"], gone
        said = lab.kill_site(a)
        assert said.startswith(f"site {a} lost at once: killed 3 processes"), said
        assert not any(r.running() for r in gone.values())
        assert _refused(geo_lab.address(a), geo_lab.tool.database.port)
        assert _refused(geo_lab.address(a), geo_lab.tool.port)
        with pytest.raises(LabError):
            read_name(geo_lab.geo.site(a).masters[0], geo_lab.name, 0.5)
        # its resolver stays (the clients' side) and answers from site-b's master
        assert read_name(geo_lab.resolver(a), geo_lab.name).addresses == [geo_lab.address(a)]
        wait_for(
            lambda: lab.status().sites[1].databases[0].replicating is False,
            10,
            "site-b's replica to notice its primary is gone",
        )
        assert lab.status().sites[0].killed
        acked = {o.id for o in load.outcomes() if o.ok}
        said = lab.restore_site(a, writable=True)
        assert "started 3 processes" in said and "writable" in said, said
        wait_for(
            lambda: sum(o.ok and o.id not in acked for o in load.outcomes()) >= 3,
            15,
            "writes acknowledged again after the restore",
        )
    finally:
        outcomes = load.stop()
        with contextlib.suppress(LabError):
            lab.restore_site(a, writable=True)
    # every acknowledged write survived the SIGKILL: acknowledged only after COMMIT
    result = score(outcomes, lab.rows(a))
    assert result.lost == 0 and result.fenced_accepts == 0, result
    assert result.failed > 0 and result.outage_max_s > 0, result
    assert acked <= _ids(geo_lab, a)
    wait_for(
        lambda: {o.id for o in outcomes if o.ok} <= _ids(geo_lab, b),
        15,
        "site-b to replicate again from the restored site-a",
    )
    st = lab.status()
    assert not st.sites[0].killed and st.sites[0].tools[0].status == 200


@pytest.mark.lab
def test_the_certificate_covers_the_first_name_and_not_the_second(geo_lab: RunningGeoLab) -> None:
    a = geo_lab.sites[0]
    ctx = client_context(geo_lab.lab.ca_file())
    first, second = geo_lab.tool.names[:2]
    host = f"tool-a.{a}.handover.test"

    def handshake(name: str) -> dict[str, Any]:
        with socket.create_connection((geo_lab.address(a), geo_lab.tool.port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname=name) as tls:
                return dict(tls.getpeercert() or {})

    cert = handshake(first)
    assert handshake(host) == cert
    assert sorted(cert["subjectAltName"]) == sorted(
        [("DNS", first), ("DNS", host), ("IP Address", geo_lab.address(a))]
    )
    with pytest.raises(ssl.SSLCertVerificationError, match="match"):
        handshake(second)


@pytest.mark.lab
def test_the_pages_plant_a_foreign_link_and_a_foreign_redirect(geo_lab: RunningGeoLab) -> None:
    a = geo_lab.sites[0]
    status, _, index = _https(geo_lab, a, "GET", "/")
    assert status == 200
    for href in (
        "/about",
        "/dashboard",
        "/health",
        f"https://{geo_lab.name}:{geo_lab.tool.port}/about",
    ):
        assert f"href='{href}'" in index.decode(), href
    assert _https(geo_lab, a, "GET", "/about")[0] == 200
    status, _, dashboard = _https(geo_lab, a, "GET", "/dashboard")
    assert status == 200
    assert "href='https://cic-old.site-a.handover.test/manage'" in dashboard.decode()
    assert "href='/legacy'" in dashboard.decode()
    status, headers, _ = _https(geo_lab, a, "GET", "/legacy")
    assert (status, headers["location"]) == (302, "https://tool-a.site-a.handover.test/legacy")


@pytest.mark.lab
def test_a_second_up_is_refused_and_the_command_line_shows_the_lab(geo_lab: RunningGeoLab) -> None:
    with pytest.raises(LabError, match="already up"):
        geo_lab.lab.up()
    res = _cli("lab", "status", "--site", str(geo_lab.site_file), "--json")
    assert res.returncode == 0, res.stderr
    st = json.loads(res.stdout)
    assert st["up"] and [s["name"] for s in st["sites"]] == geo_lab.sites
    assert [s["tools"][0]["status"] for s in st["sites"]] == [200, 503]
    assert [s["masters"][0]["epoch"] for s in st["sites"]] == [1, 1]


@pytest.mark.lab
def test_a_lab_that_cannot_start_says_what_and_leaves_nothing_running(
    geo_lab: RunningGeoLab, tmp_path: Path
) -> None:
    """Another geo lab beside the module's, whose second site's tool port is taken: `up` names
    the tool, shows its log and stops the databases and DNS servers it had started; the
    module's lab never noticed."""
    other = GeoLab.from_file(derive_test_site(tmp_path))
    tool = other.geo.tools[0]
    b = list(tool.sites)[1]
    with socket.socket() as squatter:
        squatter.bind((tool.sites[b].address, tool.port))
        squatter.listen()
        try:
            with pytest.raises(LabError) as failed:
                other.up()
        finally:
            down = other.down()
            other.remove_state()
    said = str(failed.value)
    assert f"{tool.name} at {b} did not serve https://{tool.sites[b].address}:{tool.port}" in said
    assert "exited" in said and "Address already in use" in said, said
    assert down["leftovers"] == [] and not other.is_up()
    assert not other.paths.record.exists()
    assert _https(geo_lab, geo_lab.sites[0], "GET", "/health")[0] == 200


# --- without a lab ---------------------------------------------------------------------------


def test_a_derived_site_file_has_its_own_addresses_ports_and_state(tmp_path: Path) -> None:
    out = derive_geo_site_file(GEO_SITE, tmp_path / "g.yaml", 77, 25000, state_dir=tmp_path / "st")
    site = load_site(out)
    assert site.geo is not None and site.lab == {"state_dir": str(tmp_path / "st")}
    assert [h.address for h in site.hosts] == ["127.0.77.11", "127.0.77.21"]
    ports = [(s.masters[0].port, s.resolvers[0].port) for s in site.geo.sites]
    assert ports == [(25000, 25001), (25002, 25003)]
    tool = site.geo.tools[0]
    assert (tool.port, tool.database.port) == (25004, 25005)
    assert {p.address for p in tool.sites.values()} == {"127.0.77.11", "127.0.77.21"}
    assert {p.db_host for p in tool.sites.values()} == {"127.0.77.11", "127.0.77.21"}
    text = out.read_text()
    assert "127.0.40." not in text and "/var/tmp/handover-lab/geo-lab" not in text
    assert tool.ca_file == str(tmp_path / "st" / "tls" / "ca.pem")
    assert site.geo.tsig_key.file == tmp_path / "st" / "secrets" / "tsig-key"
    with pytest.raises(LabError, match="octet 40"):
        derive_geo_site_file(GEO_SITE, tmp_path / "h.yaml", 40, 25000)
    assert yaml.safe_load(GEO_SITE.read_text())["site"] == "geo-lab"  # the base untouched


def _o(ident: str, sent: float, status: int | None, epoch: int | None = None) -> Outcome:
    return Outcome(id=ident, sent=sent, done=sent + 0.1, status=status, epoch=epoch)


def test_the_score_counts_lost_and_fenced_writes_and_the_outage() -> None:
    outcomes = [
        _o("w1", 0.0, 200, 1),
        _o("w2", 1.0, 200, 1),
        _o("w3", 2.0, None),
        _o("w4", 3.0, 503),
        _o("w5", 4.0, 200, 2),
        _o("w6", 5.0, 200, 1),  # acknowledged by the old side after epoch 2 was promoted
        _o("w7", 6.0, None),
    ]
    result = score(outcomes, [{"id": "w1"}, "w5", "w6"], promoted_at={2: 3.5})
    assert (result.sent, result.acknowledged, result.failed) == (7, 4, 3)
    assert result.lost_ids == ["w2"] and result.fenced_ids == ["w6"]
    # from w2's answer (1.1) to w5's (4.1), and from w6's (5.1) to the last answer (6.1)
    assert result.outage_max_s == 3.0 and result.failed_time_s == 4.0
    assert score([], []).sent == 0
