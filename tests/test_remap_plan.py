"""The remap check's verdict (pure), from crawls and certificates recorded from a geo tool: what
counts as a link or a redirect to another host, which certificate names cover which tool names
(RFC 6125), how findings are deduplicated, and the Markdown that quotes page text safely."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from config.loader import load_site
from config.site import Tool
from flows.plans.remap import (
    CertificateSeen,
    PageFetch,
    covers,
    find_remap_problems,
    host_of,
    md_code,
    remap_markdown,
)

ROOT = Path(__file__).resolve().parent.parent
TOOL: Tool = load_site(ROOT / "config" / "sites" / "geo-lab.yaml").geo.tool("portal")  # type: ignore[union-attr]
BASE = "https://portal.ops.handover.test:8443"

#: a crawl of the lab portal as `tasks.remap.crawl` recorded it: every link internal or to the
#: tool's own names (in any case, with a trailing dot, any port), plus what is not a host link
CLEAN = [
    PageFetch(
        url=f"{BASE}/",
        status=200,
        content_type="text/html; charset=utf-8",
        links=[
            "/about",
            "news/today.html",
            "https://cic.ops.handover.test:8443/stats",
            "HTTPS://Portal.Ops.Handover.Test.:9443/x",
            "//portal.ops.handover.test/static/app.js",
            "mailto:ops@example.org",
            "javascript:void(0)",
            "data:image/png;base64,AAAA",
            "#top",
            "?page=2",
        ],
    ),
    PageFetch(url=f"{BASE}/about", status=200, content_type="text/html", links=["/"]),
    PageFetch(url=f"{BASE}/old", status=302, location="/about"),
    PageFetch(url=f"{BASE}/login", status=301, location="https://cic.ops.handover.test/login"),
    PageFetch(url=f"{BASE}/static/app.js", status=200, content_type="text/javascript"),
]
#: what each site presented for each name: site-a's certificate names only the first name,
#: site-b's is a wildcard for the zone
CERTS = [
    CertificateSeen(
        site="site-a",
        address="127.0.40.11:8443",
        server_name=n,
        names=["portal.ops.handover.test"],
    )
    for n in TOOL.names
] + [
    CertificateSeen(
        site="site-b", address="127.0.40.21:8443", server_name=n, names=["*.ops.handover.test"]
    )
    for n in TOOL.names
]
GOOD_CERTS = [
    c.model_copy(update={"names": ["portal.ops.handover.test", "CIC.ops.handover.test."]})
    for c in CERTS
]


def test_a_tool_with_only_its_own_links_and_covering_certificates_is_ready() -> None:
    r = find_remap_problems(TOOL, CLEAN, GOOD_CERTS)
    assert r.findings == [] and r.ready and r.checked, r.findings
    assert r.pages_crawled == 5 and not r.crawl_bounded
    assert r.summary == (
        "portal is ready to remap: 5 requests through portal.ops.handover.test, "
        "cic.ops.handover.test found links only to its own names, and every site's certificate "
        "covers every name"
    )


@pytest.mark.parametrize(
    ("link", "host"),
    [
        ("https://Old.Example.ORG:8443/a?b#c", "old.example.org"),
        ("//cdn.example.org/lib.js", "cdn.example.org"),
        ("http://user:pw@127.0.40.11/x", "127.0.40.11"),
        ("https://[::1]:8443/", "::1"),
        ("  https://trailing.example.  ", "trailing.example"),
        ("/relative", None),
        ("relative/page.html", None),
        ("mailto:ops@example.org", None),
        ("https:no-host", None),
        ("http://[::1/", None),
    ],
)
def test_the_host_a_link_names(link: str, host: str | None) -> None:
    assert host_of(link) == host


@pytest.mark.parametrize(
    ("pattern", "name", "ok"),
    [
        ("portal.ops.handover.test", "portal.ops.handover.test", True),
        ("PORTAL.ops.handover.test.", "portal.OPS.handover.test", True),
        ("*.ops.handover.test", "portal.ops.handover.test", True),
        ("*.ops.handover.test", "ops.handover.test", False),
        ("*.ops.handover.test", "a.portal.ops.handover.test", False),
        ("*.handover.test", "portal.ops.handover.test", False),
        ("*.test", "handover.test", False),
        ("p*.ops.handover.test", "portal.ops.handover.test", False),
        ("portal.*.handover.test", "portal.ops.handover.test", False),
        ("*.*.handover.test", "portal.ops.handover.test", False),
        ("cic.ops.handover.test", "portal.ops.handover.test", False),
        ("", "portal.ops.handover.test", False),
    ],
)
def test_which_certificate_names_cover_a_tool_name(pattern: str, name: str, ok: bool) -> None:
    assert covers(pattern, name) is ok


def test_the_same_link_on_many_pages_is_one_finding_that_counts_them() -> None:
    old = "https://127.0.40.11:8443/reports"
    pages = [
        PageFetch(url=f"{BASE}/p{i}", status=200, content_type="text/html", links=[old, old])
        for i in range(6)
    ]
    r = find_remap_problems(TOOL, CLEAN + pages, GOOD_CERTS)
    [f] = r.findings
    assert (f.kind, f.target, f.pages) == ("absolute-link", old, 6)
    assert f.found_on == [f"{BASE}/p0", f"{BASE}/p1", f"{BASE}/p2"]
    assert f.message == (
        "6 pages link to https://127.0.40.11:8443/reports, on 127.0.40.11 (the address of "
        "site-a), not one of the tool's names: it keeps sending clients there after the remap; "
        "make the link relative or use portal.ops.handover.test"
    )
    assert not r.ready and r.checked
    assert r.summary == (
        "portal is not ready to remap: 1 absolute link to another host (11 requests through "
        "portal.ops.handover.test, cic.ops.handover.test); fix each finding and check again"
    )


def test_redirects_to_another_host_are_findings_and_to_the_tools_names_are_not() -> None:
    fetches = [
        *CLEAN,
        PageFetch(url=f"{BASE}/sso", status=302, location="https://sso.example.org/start"),
        PageFetch(url=f"{BASE}/sso2", status=307, location="https://sso.example.org/start"),
        PageFetch(url=f"{BASE}/proto", status=301, location="//mirror.example.org/"),
        PageFetch(url=f"{BASE}/none", status=302),
        PageFetch(url=f"{BASE}/notmodified", status=304, location="https://x.example.org/"),
    ]
    r = find_remap_problems(TOOL, fetches, GOOD_CERTS)
    assert [(f.kind, f.target, f.pages) for f in r.findings] == [
        ("redirect", "https://sso.example.org/start", 2),
        ("redirect", "//mirror.example.org/", 1),
    ]
    assert "redirect (302) to https://sso.example.org/start, on sso.example.org" in (
        r.findings[0].message
    )


def test_each_name_a_sites_certificate_misses_is_a_finding_naming_the_site() -> None:
    r = find_remap_problems(TOOL, CLEAN, CERTS)
    assert [(f.kind, f.site, f.target) for f in r.findings] == [
        ("certificate", "site-a", "cic.ops.handover.test")
    ]
    assert r.findings[0].message == (
        "the certificate site-a presents at 127.0.40.11:8443 for cic.ops.handover.test does not "
        "cover cic.ops.handover.test (it names portal.ops.handover.test): clients get a "
        "certificate warning once cic.ops.handover.test points at site-a; add "
        "cic.ops.handover.test to its subjectAltName"
    )
    # one certificate read without a name asked for stands for every name
    anon = [CertificateSeen(site="site-b", address="127.0.40.21:8443", names=[])]
    r = find_remap_problems(TOOL, CLEAN, anon)
    assert [(f.site, f.target) for f in r.findings] == [
        ("site-b", "portal.ops.handover.test"),
        ("site-b", "cic.ops.handover.test"),
    ]
    assert "it names no DNS name in its subjectAltName" in r.findings[0].message


def test_an_untrusted_chain_and_a_silent_site_are_said() -> None:
    certs = [
        GOOD_CERTS[0].model_copy(update={"chain_error": "self-signed certificate"}),
        GOOD_CERTS[1].model_copy(update={"chain_error": "self-signed certificate"}),
    ] + [
        CertificateSeen(
            site="site-b", address="127.0.40.21:8443", server_name=n, error="ConnectionRefused"
        )
        for n in TOOL.names
    ]
    r = find_remap_problems(TOOL, CLEAN, certs)
    assert [(f.kind, f.site, f.target) for f in r.findings] == [
        ("certificate", "site-a", "127.0.40.11:8443"),
        ("unreachable", "site-b", "127.0.40.21:8443"),
    ]
    assert "does not verify against /var/tmp/handover-lab/geo-lab/tls/ca.pem" in (
        r.findings[0].message
    )
    assert r.findings[1].message == (
        "site-b's server at 127.0.40.21:8443 gave no certificate (asked for "
        "portal.ops.handover.test, cic.ops.handover.test): ConnectionRefused; its certificate "
        "was not checked: make it answer and check again"
    )


def test_a_page_that_does_not_answer_is_unreachable_and_none_answering_is_not_checked() -> None:
    down = PageFetch(url=f"{BASE}/reports", error="TimeoutError from 127.0.40.11:8443")
    broken = PageFetch(url=f"{BASE}/api", status=503, content_type="text/html")
    missing = PageFetch(url=f"{BASE}/gone", status=404, content_type="text/html")
    r = find_remap_problems(TOOL, [*CLEAN, down, broken, missing], GOOD_CERTS)
    assert [(f.kind, f.target) for f in r.findings] == [
        ("unreachable", f"{BASE}/reports"),
        ("unreachable", f"{BASE}/api"),
    ]
    assert "it answered HTTP 503" in r.findings[1].message
    r = find_remap_problems(TOOL, [PageFetch(url=f"{BASE}/", error="ConnectionRefused")], [])
    assert not r.checked and not r.ready
    assert r.summary == (
        "portal could not be checked: no page answered through portal.ops.handover.test, "
        "cic.ops.handover.test (ConnectionRefused); make the tool answer through its names and "
        "check again"
    )


def test_a_bounded_crawl_an_http_tool_and_the_resolved_site_are_said() -> None:
    bound = "the crawl stopped at its bound of 5 requests"
    plain = TOOL.model_copy(update={"scheme": "http", "port": 80})
    r = find_remap_problems(
        plain, CLEAN, [], bounded_by=bound, resolved={"portal.ops.handover.test": "127.0.40.21"}
    )
    assert r.ready and r.crawl_bounded
    assert r.summary.endswith(f"no certificate to check (http); but {bound}")
    assert r.notes == [
        "the tool is served over http: there is no certificate to check",
        bound,
        "portal.ops.handover.test was fetched from 127.0.40.21, the address of site-b",
    ]


#: a page whose links try to break out of the Markdown: a table cell, a link, HTML, code spans
HOSTILE = [
    "https://evil.example/a|b",
    "https://evil.example/`x``y`",
    "https://evil.example/<script>alert(1)</script>",
    "https://evil.example/[click](javascript:alert(1))",
    "https://evil.example/**bold**\n| x | y |",
]


def test_the_markdown_quotes_page_text_in_code_spans_and_keeps_the_table_whole() -> None:
    fetches = [PageFetch(url=f"{BASE}/", status=200, content_type="text/html", links=HOSTILE)]
    r = find_remap_problems(TOOL, fetches, CERTS)
    md = remap_markdown(r)
    assert md.startswith("## Remap readiness of portal: not ready\n")
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + len(r.findings) == 1 + 1 + len(HOSTILE)
    for row in rows:
        assert len(re.findall(r"(?<!\\)\|", row)) == 6, row
    # every hostile link is inside a code span: outside them, nothing of it is left
    outside = re.sub(r"(`+) ?.*? ?\1", "", md)
    assert "evil" not in outside and "<script>" not in outside and "javascript" not in outside


def test_a_code_span_holds_any_text() -> None:
    assert md_code("plain") == "`plain`"
    assert md_code("a`b") == "``a`b``"
    assert md_code("`edge`") == "`` `edge` ``"
    assert md_code("a|b") == "`a\\|b`"
    assert md_code("x" * 500).endswith("…`") and len(md_code("x" * 500)) == 202
