"""The remap check against real HTTPS servers started here (stdlib ThreadingHTTPServer + ssl on
loopback addresses, certificates from the lab's CA): the crawl's walk (relative links, a cycle,
redirects, resources it does not parse), what it asks for (SNI and Host = the name), its bound,
each site's certificate, and the command line end to end with real BIND masters."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from config.loader import load_site
from config.site import DnsServer, Tool
from config.site.secrets import SecretRef
from infra.lab.tls import issue_cert, make_ca
from infra.ports import free_port
from tasks.remap import ResolveFailed, certificates, check_remap, crawl, dns_resolve, page_links
from tests.conftest import require

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parent.parent
GEO_LAB = ROOT / "config" / "sites" / "geo-lab.yaml"
PORTAL, CIC = "portal.ops.handover.test", "cic.ops.handover.test"
SITE_A, SITE_B = "127.0.0.61", "127.0.0.62"

#: a page: (status, headers, body)
Page = tuple[int, dict[str, str], bytes]


def html(*links: str) -> Page:
    body = "".join(f'<a href="{link}">x</a>\n' for link in links)
    return 200, {"Content-Type": "text/html; charset=utf-8"}, f"<html><body>{body}".encode()


def redirect(status: int, location: str) -> Page:
    return status, {"Location": location}, b""


class Server:
    """An HTTPS server on one loopback address: `pages` by path (404 otherwise); records the
    (SNI, Host, path) of every request."""

    def __init__(self, address: str, port: int, cert: Path, key: Path, pages: dict[str, Page]):
        self.pages = pages
        self.requests: list[tuple[str | None, str, str]] = []
        #: the SNI of each connection, by the connection's id (that of a closed one is reused)
        self.sni: dict[int, str | None] = {}
        #: every SNI asked for, in order
        self.sni_seen: list[str | None] = []
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        ctx.sni_callback = self._sni
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                sni = owner.sni.get(id(self.connection))
                owner.requests.append((sni, self.headers["Host"], self.path))
                status, headers, body = owner.pages.get(
                    self.path, (404, {"Content-Type": "text/plain"}, b"not found")
                )
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer((address, port), Handler)
        self.httpd.daemon_threads = True
        self.httpd.socket = ctx.wrap_socket(
            self.httpd.socket, server_side=True, do_handshake_on_connect=False
        )
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def _sni(
        self, sock: ssl.SSLSocket | ssl.SSLObject, name: str | None, _: ssl.SSLContext
    ) -> None:
        self.sni[id(sock)] = name
        self.sni_seen.append(name)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def common_port(*addresses: str) -> int:
    """A port free on every one of `addresses`."""
    for _ in range(50):
        port = free_port(addresses[0])
        try:
            for a in addresses[1:]:
                with socket.socket() as s:
                    s.bind((a, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no port free on all of {addresses}")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The CA; site-a's certificate names the first name only, site-b's the whole zone; a
    certificate from another CA."""
    d = tmp_path_factory.mktemp("tls")
    ca, ca_key = make_ca(d / "ca")
    other, other_key = make_ca(d / "other", name="not the tool's CA")
    a = issue_cert(ca, ca_key, [PORTAL], [SITE_A], d, "site-a")
    b = issue_cert(ca, ca_key, ["*.ops.handover.test"], [SITE_B], d, "site-b")
    x = issue_cert(other, other_key, [PORTAL, CIC], [], d, "stranger")
    return {
        "ca": ca,
        "a": a[0],
        "a-key": a[1],
        "b": b[0],
        "b-key": b[1],
        "x": x[0],
        "x-key": x[1],
    }


def make_tool(port: int, ca: Path, **change: Any) -> Tool:
    """The geo lab's portal, its sites at `SITE_A` and `SITE_B` on `port`."""
    site = load_site(GEO_LAB)
    assert site.geo is not None
    tool = site.geo.tool("portal")
    placements = {
        "site-a": tool.sites["site-a"].model_copy(update={"address": SITE_A}),
        "site-b": tool.sites["site-b"].model_copy(update={"address": SITE_B}),
    }
    return tool.model_copy(update={"port": port, "ca_file": str(ca), "sites": placements, **change})


def portal_pages(port: int) -> dict[str, Page]:
    """The portal: relative links and a cycle, an absolute link to another host on two pages,
    a protocol-relative one, a redirect away and one to its own name, a link to its second
    name, resources it must not parse."""
    own, cic = f"https://{PORTAL}:{port}", f"https://{CIC}:{port}"
    return {
        "/": (
            200,
            {"Content-Type": "text/html; charset=utf-8"},
            f"""<html><body><a href="/a">a</a> <a href='b.html'>b</a>
<link rel="stylesheet" href="/style.css"><img src="/logo.png">
<script src="//cdn.example.test/l.js"></script><form action="/search"></form>
<a href="https://other.example.test/x">x</a> <a href="{cic}/d">d</a>
<a href="mailto:ops@example.test">m</a> <a href="#top">t</a></body></html>""".encode(),
        ),
        "/a": html("/", "/old", "/moved", "https://other.example.test/x"),
        "/b.html": html("/a", "/data.json"),
        "/old": redirect(302, "https://old.example.test/new"),
        "/moved": redirect(301, f"{own}/target"),
        "/target": html("/a"),
        "/d": html("/a"),
        "/search": html(),
        "/style.css": (
            200,
            {"Content-Type": "text/css"},
            b"a{background:url(https://css.example.test/b.png)}",
        ),
        "/logo.png": (
            200,
            {"Content-Type": "image/png"},
            b"\x89PNG<a href='https://png.example.test/'>",
        ),
        "/data.json": (
            200,
            {"Content-Type": "application/json"},
            b'{"x": "<a href=\'https://json.example.test/\'>"}',
        ),
    }


@pytest.fixture
def sites(pki: dict[str, Path]) -> Iterator[tuple[int, Server, Server]]:
    """The portal served at both sites on one port."""
    port = common_port(SITE_A, SITE_B)
    a = Server(SITE_A, port, pki["a"], pki["a-key"], portal_pages(port))
    b = Server(SITE_B, port, pki["b"], pki["b-key"], portal_pages(port))
    yield port, a, b
    a.close()
    b.close()


def at(address: str) -> Any:
    return lambda name: address


def test_the_crawl_walks_the_tool_and_finds_what_would_not_follow_a_remap(
    sites: tuple[int, Server, Server], pki: dict[str, Path]
) -> None:
    port, a, _ = sites
    tool = make_tool(port, pki["ca"])
    found = crawl(tool, at(SITE_A), timeout_s=5)
    own, cic = f"https://{PORTAL}:{port}", f"https://{CIC}:{port}"
    urls = [f.url for f in found.fetches]
    assert len(urls) == len(set(urls)), urls  # the cycle / -> /a -> / is walked once
    assert set(urls) == {
        *(f"{own}{p}" for p in ("/", "/a", "/b.html", "/style.css", "/logo.png", "/search")),
        *(f"{own}{p}" for p in ("/old", "/moved", "/target", "/data.json")),
        f"{cic}/d",
        f"{cic}/a",
        f"{cic}/",
        f"{cic}/b.html",
        *(f"{cic}{p}" for p in ("/style.css", "/logo.png", "/search", "/old", "/moved")),
        f"{cic}/data.json",
    }
    assert urls[0] == f"{own}/" and not found.bounded_by
    assert found.resolved == {PORTAL: SITE_A, CIC: SITE_A}
    # SNI and Host are the name; the second name's page was fetched although the certificate
    # does not cover it (host names are not checked by the crawl)
    assert (PORTAL, f"{PORTAL}:{port}", "/") in a.requests
    assert (CIC, f"{CIC}:{port}", "/d") in a.requests
    by_url = {f.url: f for f in found.fetches}
    assert by_url[f"{cic}/d"].status == 200 and not by_url[f"{cic}/d"].error
    assert by_url[f"{own}/old"].location == "https://old.example.test/new"
    assert by_url[f"{own}/style.css"].links == by_url[f"{own}/data.json"].links == []

    report = check_remap(load_geo(tool), "portal", at(SITE_A), timeout_s=5)
    got = [(f.kind, f.site, f.target, f.pages) for f in report.findings]
    assert got == [
        ("certificate", "site-a", CIC, 0),
        ("redirect", None, "https://old.example.test/new", 2),  # through both names
        ("absolute-link", None, "https://other.example.test/x", 4),
        ("absolute-link", None, "//cdn.example.test/l.js", 2),
    ], got
    assert not report.ready and report.checked
    assert report.summary.startswith("portal is not ready to remap: 1 certificate problem, ")
    assert f"{PORTAL} was fetched from {SITE_A}, the address of site-a" in report.notes


def load_geo(tool: Tool) -> Any:
    """The geo lab's site with `tool` in place of its portal."""
    site = load_site(GEO_LAB)
    assert site.geo is not None
    geo = site.geo.model_copy(update={"tools": [tool]})
    return site.model_copy(update={"geo": geo})


def test_the_crawl_stops_at_its_bound_and_says_so(
    sites: tuple[int, Server, Server], pki: dict[str, Path]
) -> None:
    port, a, _ = sites
    a.pages.clear()
    # ten pages: / -> /p1 -> ... -> /p9, each linking back to /
    a.pages.update({"/": html("/p1"), "/p9": html("/")})
    a.pages.update({f"/p{i}": html(f"/p{i + 1}", "/") for i in range(1, 9)})
    tool = make_tool(port, pki["ca"], crawl_pages=3)
    found = crawl(tool, at(SITE_A))
    assert [f.url.rsplit("/", 1)[1] for f in found.fetches] == ["", "p1", "p2"]
    assert found.bounded_by.startswith(
        "the crawl stopped at its bound of 3 requests (geo.tools[portal].crawl_pages) with 1 more"
    )
    assert len(crawl(tool, at(SITE_A), max_pages=20).fetches) == 10
    report = check_remap(load_geo(tool), "portal", at(SITE_B), max_pages=3)
    assert report.crawl_bounded and report.pages_crawled == 3
    assert "the crawl stopped at its bound of 3 requests" in report.summary


def test_each_site_presents_its_certificate_for_each_name(
    sites: tuple[int, Server, Server], pki: dict[str, Path]
) -> None:
    port, a, b = sites
    seen = certificates(make_tool(port, pki["ca"]), timeout_s=5)
    assert [(c.site, c.server_name, c.names, c.chain_error, c.error) for c in seen] == [
        ("site-a", PORTAL, [PORTAL], "", ""),
        ("site-a", CIC, [PORTAL], "", ""),
        ("site-b", PORTAL, ["*.ops.handover.test"], "", ""),
        ("site-b", CIC, ["*.ops.handover.test"], "", ""),
    ]
    assert {PORTAL, CIC} <= set(a.sni_seen) and {PORTAL, CIC} <= set(b.sni_seen)
    assert certificates(make_tool(port, pki["ca"], scheme="http")) == []


def test_a_certificate_from_another_ca_and_a_site_that_does_not_answer(
    pki: dict[str, Path],
) -> None:
    port = common_port(SITE_A, SITE_B)
    a = Server(SITE_A, port, pki["x"], pki["x-key"], {"/": html("/a")})
    try:
        tool = make_tool(port, pki["ca"])
        found = crawl(tool, at(SITE_A), timeout_s=3)
        [page] = found.fetches
        assert page.error.startswith(f"the certificate at {SITE_A}:{port} does not verify against")
        seen = certificates(tool, timeout_s=3)
        assert (
            seen[0].names == [PORTAL, CIC] and "unable to get local issuer" in seen[0].chain_error
        )
        assert seen[2].site == "site-b" and "Connection refused" in seen[2].error
        report = check_remap(load_geo(tool), "portal", at(SITE_A), timeout_s=3)
        assert [(f.kind, f.site) for f in report.findings] == [
            ("certificate", "site-a"),
            ("unreachable", None),
            ("unreachable", "site-b"),
        ]
        assert not report.checked and report.summary.startswith("portal could not be checked")
    finally:
        a.close()


def test_links_come_from_href_src_and_action_each_once() -> None:
    page = """<base href="https://base.example.test/"><a href=" /a ">x</a><a href="/a">y</a>
    <img src="/i.png" alt="/not"><form action="/f"><input formaction="/no"></form>
    <a data-href="/no">z</a><a href="">empty</a><area href="/map"><p>href="/text"</p><a href="/b"""
    assert page_links(page) == ["https://base.example.test/", "/a", "/i.png", "/f", "/map"]


def test_a_name_nobody_answers_is_said_with_whom_was_asked(tmp_path: Path) -> None:
    site = load_site(GEO_LAB)
    assert site.geo is not None
    dead = [DnsServer(address="127.0.0.1", port=free_port()) for _ in range(2)]
    sites = [
        s.model_copy(update={"masters": [m], "resolvers": []})
        for s, m in zip(site.geo.sites, dead, strict=True)
    ]
    # a key of its own (the masters are asked with signed queries; no geo lab need have run)
    key_file = tmp_path / "tsig-key"
    key_file.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    key_file.chmod(0o600)
    key = SecretRef(file=key_file)
    geo = site.geo.model_copy(update={"sites": sites, "tsig_key": key})
    with pytest.raises(ResolveFailed) as caught:
        dns_resolve(geo, timeout_s=0.5)(PORTAL)
    said = str(caught.value)
    assert said.startswith("no resolver or master of geo.sites answered an address (master ")
    assert f"master 127.0.0.1:{dead[1].port} (site-b): DNS server" in said
    assert "ConnectionRefusedError" in said
    # the crawl says it of the page it could not fetch
    found = crawl(make_tool(443, GEO_LAB, ca_file=None), dns_resolve(geo, timeout_s=0.5))
    [page] = found.fetches
    assert page.error == f"{PORTAL} could not be resolved: {said}"


# --- the command line, and names resolved through real BIND masters --------------------------


def _zone(address: str, epoch: int) -> str:
    lines = [
        "$TTL 5",
        "@ IN SOA ns1.ops.handover.test. hostmaster.ops.handover.test. 1 60 30 86400 5",
        "@ IN NS ns1",
        "ns1 IN A 127.0.0.1",
    ]
    for label in ("portal", "cic"):
        lines += [f"{label} IN A {address}", f'{label} IN TXT "epoch={epoch}"']
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def named(where: Path, port: int, address: str, epoch: int, secret: str) -> Iterator[None]:
    """A BIND master for ops.handover.test on 127.0.0.1:`port`: both names at `address`; it
    has the TSIG key `secret` (handover signs its reads of a master, and trusts only answers
    signed with the key)."""
    where.mkdir(parents=True)
    (where / "zone.db").write_text(_zone(address, epoch))
    (where / "named.conf").write_text(
        f"""key "handover-geo" {{ algorithm hmac-sha256; secret "{secret}"; }};
controls {{ }};
options {{
    directory "{where}"; pid-file "{where}/named.pid"; session-keyfile "{where}/session.key";
    managed-keys-directory "{where}";
    listen-on port {port} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }};
    automatic-interface-scan no; recursion no; dnssec-validation no; allow-query {{ any; }};
}};
zone "ops.handover.test" {{ type primary; file "{where}/zone.db"; notify no; }};
"""
    )
    with open(where / "named.out", "wb") as log:
        proc = subprocess.Popen(
            ["named", "-f", "-c", str(where / "named.conf")],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        import dns.message
        import dns.query

        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, (where / "named.out").read_text()
            with contextlib.suppress(Exception):
                q = dns.message.make_query("ops.handover.test.", "SOA")
                if dns.query.udp(q, "127.0.0.1", port=port, timeout=0.5).answer:
                    break
            assert time.monotonic() < deadline, (where / "named.out").read_text()
            time.sleep(0.1)
        yield
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.mark.lab
def test_the_command_line_resolves_through_the_masters_newest_epoch(
    sites: tuple[int, Server, Server], pki: dict[str, Path], tmp_path: Path
) -> None:
    """No resolver configured: the masters are asked, and the newer epoch wins (site-b's)."""
    require(shutil.which("named") is not None, "named (apt-get install bind9)", need="lab")
    port, _, b = sites
    qa, qb = free_port(), free_port()
    data = yaml.safe_load(GEO_LAB.read_text())
    geo = data["geo"]
    geo["sites"][0].update(masters=[{"address": "127.0.0.1", "port": qa}], resolvers=[])
    geo["sites"][1].update(masters=[{"address": "127.0.0.1", "port": qb}], resolvers=[])
    geo["tools"][0].update(port=port, ca_file=str(pki["ca"]))
    geo["tools"][0]["sites"]["site-a"].update(address=SITE_A, db_host=SITE_A)
    geo["tools"][0]["sites"]["site-b"].update(address=SITE_B, db_host=SITE_B)
    secret = base64.b64encode(os.urandom(32)).decode()
    key_file = tmp_path / "tsig-key"
    key_file.write_text(secret + "\n")
    key_file.chmod(0o600)
    geo["tsig_key"] = {"file": str(key_file)}
    site_file = tmp_path / "geo.yaml"
    site_file.write_text(yaml.safe_dump(data))
    with (
        named(tmp_path / "a", qa, SITE_A, 4, secret),
        named(tmp_path / "b", qb, SITE_B, 5, secret),
    ):
        site = load_site(site_file)
        assert site.geo is not None
        assert dns_resolve(site.geo)(PORTAL) == SITE_B
        # a resolver that answers comes first (after one that does not): site-a's master
        # stands in for a resolver here, and answers its own, older, address
        dead, live = (
            DnsServer(address="127.0.0.1", port=free_port()),
            DnsServer(address="127.0.0.1", port=qa),
        )
        first = site.geo.sites[0].model_copy(update={"resolvers": [dead, live]})
        geo = site.geo.model_copy(update={"sites": [first, site.geo.sites[1]]})
        assert dns_resolve(geo, timeout_s=0.5)(CIC) == SITE_A
        cmd = [sys.executable, "-m", "infra.cli", "check", "remap", "--service", "portal"]
        env = {**os.environ, "COLUMNS": "200"}
        res = subprocess.run(
            [*cmd, "--site", str(site_file), "--json"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            env=env,
        )
        assert res.returncode == 1, res.stderr
        report = json.loads(res.stdout)
        assert report["resolved"] == {PORTAL: SITE_B, CIC: SITE_B}
        assert [f["kind"] for f in report["findings"]][:2] == ["certificate", "redirect"]
        assert any(r[2] == "/" for r in b.requests)
        res = subprocess.run(
            [*cmd, "--site", str(site_file)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            env=env,
        )
    assert res.returncode == 1, res.stderr
    assert "portal: not ready to remap" in res.stdout
    assert "https://other.example.test/x" in res.stdout
    assert report["summary"] in " ".join(res.stdout.split())
