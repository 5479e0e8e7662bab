"""Remap readiness of a geo tool (pure): what would keep clients at the old site, or warn them,
once the tool's names point at another site.

A geo failover moves a tool by remapping its DNS names (`config.site.geo`). What the names
cannot move:

* an **absolute link** in a page (``https://host/...`` or ``//host/...``) whose host is not one
  of the tool's names: it keeps sending clients to that host, often the old site's own address;
* a **redirect** whose ``Location`` names another host, for the same reason;
* a site's **certificate** that does not cover one of the tool's names (RFC 6125: the name
  itself, or a wildcard ``*`` as its whole left-most label standing for exactly one label):
  once the name points at that site, clients get a certificate warning;
* a page or a site that could not be fetched (**unreachable**): nothing can be said of it.

`find_remap_problems` turns what the crawl fetched (`PageFetch`) and the certificates each site
presented (`CertificateSeen`) into a `RemapReport`: deduplicated findings (the same link on
forty pages is one finding that says forty pages and lists a few), each with a sentence saying
what is wrong and what to do, a summary sentence and a verdict. `remap_markdown` renders it for a
Prefect artifact or an approval message, with everything taken from a page inside code spans.

Nothing here does I/O or imports Prefect.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urljoin, urlsplit

from pydantic import BaseModel, Field

from config.site import Tool

FindingKind = Literal["absolute-link", "redirect", "certificate", "unreachable"]
#: the order findings are listed in
KIND_ORDER: tuple[FindingKind, ...] = ("certificate", "redirect", "absolute-link", "unreachable")
#: how many of the pages a finding was seen on it lists (it says how many in all)
PAGES_LISTED = 3
#: the statuses whose ``Location`` a client follows (304 Not Modified is not one)
REDIRECT_STATUSES = frozenset({300, 301, 302, 303, 307, 308})
#: the longest text quoted from a page in a message or a Markdown cell
QUOTE_MAX = 200


class PageFetch(BaseModel):
    """One request of the crawl: a page through one of the tool's names, and what it held."""

    #: the URL asked for (the tool's name, its scheme and port)
    url: str
    #: the HTTP status (None: no answer)
    status: int | None = None
    #: the ``Location`` header of a redirect, as sent
    location: str | None = None
    #: the ``Content-Type`` header
    content_type: str = ""
    #: the links of an HTML page (``href``, ``src``, ``action``), as written in it
    links: list[str] = Field(default_factory=list)
    #: why there is no answer (empty: there is one)
    error: str = ""


class CertificateSeen(BaseModel):
    """The certificate one site's server presented for one of the tool's names."""

    #: the site (a key of the tool's `sites`)
    site: str
    #: where it was asked (``address:port``)
    address: str
    #: the name it was asked for (TLS SNI); None: it stands for every name of the tool
    server_name: str | None = None
    #: the DNS names of its subjectAltName
    names: list[str] = Field(default_factory=list)
    #: why its chain does not verify against the tool's CA (empty: it does)
    chain_error: str = ""
    #: why no certificate was read (empty: one was)
    error: str = ""


class RemapFinding(BaseModel):
    """One thing that is not ready to be remapped."""

    kind: FindingKind
    #: the pages it was found on (at most `PAGES_LISTED`), or the site's name
    found_on: list[str]
    #: how many pages it was found on (0: a site's finding)
    pages: int = 0
    #: the site, for a certificate or a site that could not be asked
    site: str | None = None
    #: the link, the redirect's target, the name a certificate misses, or what was unreachable
    target: str
    #: what is wrong and what to do, in one sentence
    message: str
    #: what to do, in handover's own words (no text from a page)
    fix: str


class RemapReport(BaseModel):
    """Whether a tool's names can be remapped without leaving clients behind."""

    tool: str
    names: list[str]
    scheme: str
    #: the requests the crawl made (pages, redirects, resources)
    pages_crawled: int
    #: the address each name was fetched from
    resolved: dict[str, str] = Field(default_factory=dict)
    #: the crawl stopped at its bound (pages or time) before it saw every page
    crawl_bounded: bool = False
    #: the certificates read (https)
    certificates: list[CertificateSeen] = Field(default_factory=list)
    findings: list[RemapFinding] = Field(default_factory=list)
    #: what else a reader must know (the crawl's bound, nothing to check over http)
    notes: list[str] = Field(default_factory=list)
    summary: str
    #: at least one page answered: the check could look at the tool
    checked: bool
    #: checked, and nothing found
    ready: bool


def normal_host(host: str) -> str:
    """A host name as compared: lower case, without a trailing dot."""
    return host.strip().rstrip(".").lower()


def host_of(url: str) -> str | None:
    """The host an absolute URL (``scheme://host/...`` or ``//host/...``) names, compared form;
    None for a relative URL, one without a host (``mailto:``, ``data:``) or one that does not
    parse."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname if parts.netloc else None
    except ValueError:
        return None
    return normal_host(host) if host else None


def covers(pattern: str, name: str) -> bool:
    """Whether a certificate's DNS name `pattern` covers `name` (RFC 6125 section 6.4): the
    same name (case-insensitive, trailing dot ignored), or ``*.rest`` where ``*`` stands for
    exactly one label of `name` and `rest` has at least two labels; a ``*`` anywhere else
    matches nothing.

    Example:
        >>> covers("*.ops.handover.test", "portal.ops.handover.test")
        True
        >>> covers("*.handover.test", "portal.ops.handover.test")
        False
    """
    p, n = normal_host(pattern), normal_host(name)
    if not p or not n:
        return False
    if "*" not in p:
        return p == n
    first, _, rest = p.partition(".")
    if first != "*" or "*" in rest or rest.count(".") < 1:
        return False
    label, _, n_rest = n.partition(".")
    return bool(label) and n_rest == rest


def quote(text: str) -> str:
    """Text from outside (a page, a server) as quoted in a sentence: one line, bounded."""
    one = " ".join(text.split())
    return one if len(one) <= QUOTE_MAX else one[: QUOTE_MAX - 1] + "…"


def _where(host: str, tool: Tool) -> str:
    site = tool.site_of(host)
    return f"{host} (the address of {site})" if site else host


#: how the summary counts each kind of finding: (one, several)
KIND_WORDS: dict[FindingKind, tuple[str, str]] = {
    "certificate": ("certificate problem", "certificate problems"),
    "redirect": ("redirect to another host", "redirects to another host"),
    "absolute-link": ("absolute link to another host", "absolute links to another host"),
    "unreachable": ("unreachable page or site", "unreachable pages or sites"),
}


def _plural(n: int, word: str, words: str = "") -> str:
    return f"{n} {word}" if n == 1 else f"{n} {words or word + 's'}"


class _Seen:
    """Occurrences of one finding on pages, in crawl order."""

    def __init__(self) -> None:
        self.pages: list[str] = []

    def add(self, page: str) -> None:
        if page not in self.pages:
            self.pages.append(page)


def _page_findings(tool: Tool, fetches: list[PageFetch]) -> list[RemapFinding]:
    names = {normal_host(n) for n in tool.names}
    first = tool.names[0]
    links: dict[str, _Seen] = {}
    redirects: dict[str, tuple[int, _Seen]] = {}
    out: list[RemapFinding] = []
    for f in fetches:
        failed = f.error or (f"it answered HTTP {f.status}" if (f.status or 0) >= 500 else "")
        if failed:
            out.append(
                RemapFinding(
                    kind="unreachable",
                    found_on=[f.url],
                    pages=1,
                    target=f.url,
                    message=f"{f.url} could not be fetched: {quote(failed)}; its links were not "
                    "checked: make it answer (or fix the link to it) and check again",
                    fix="make the page answer, then check again",
                )
            )
            continue
        if f.status in REDIRECT_STATUSES and f.location:
            host = host_of(urljoin(f.url, f.location.strip()))
            if host is not None and host not in names:
                _, seen = redirects.setdefault(f.location.strip(), (f.status, _Seen()))
                seen.add(f.url)
        for link in f.links:
            host = host_of(link)
            if host is not None and host not in names:
                links.setdefault(link.strip(), _Seen()).add(f.url)
    for location, (status, seen) in redirects.items():
        host = host_of(urljoin(seen.pages[0], location)) or ""
        out.append(
            RemapFinding(
                kind="redirect",
                found_on=seen.pages[:PAGES_LISTED],
                pages=len(seen.pages),
                target=location,
                message=f"{_plural(len(seen.pages), 'page')} redirect ({status}) to "
                f"{quote(location)}, on {_where(host, tool)}, not one of the tool's names: "
                f"clients follow it there whatever the names point at; redirect to a relative "
                f"path or to {first}",
                fix=f"redirect to a relative path or to {first}",
            )
        )
    for link, seen in links.items():
        host = host_of(link) or ""
        out.append(
            RemapFinding(
                kind="absolute-link",
                found_on=seen.pages[:PAGES_LISTED],
                pages=len(seen.pages),
                target=link,
                message=f"{_plural(len(seen.pages), 'page')} link to {quote(link)}, on "
                f"{_where(host, tool)}, not one of the tool's names: it keeps sending clients "
                f"there after the remap; make the link relative or use {first}",
                fix=f"make the link relative or use {first}",
            )
        )
    return out


def _certificate_findings(tool: Tool, certificates: list[CertificateSeen]) -> list[RemapFinding]:
    out: list[RemapFinding] = []
    missing: dict[tuple[str, str], CertificateSeen] = {}
    unreachable: dict[tuple[str, str], list[CertificateSeen]] = {}
    untrusted: dict[tuple[str, str, str], None] = {}
    for c in certificates:
        if c.error:
            unreachable.setdefault((c.site, c.address), []).append(c)
            continue
        if c.chain_error:
            untrusted[(c.site, c.address, c.chain_error)] = None
        asked = [c.server_name] if c.server_name else list(tool.names)
        for name in asked:
            if not any(covers(p, name) for p in c.names):
                missing.setdefault((c.site, normal_host(name)), c)
    for (site, name), c in missing.items():
        held = ", ".join(quote(n) for n in c.names) or "no DNS name in its subjectAltName"
        out.append(
            RemapFinding(
                kind="certificate",
                found_on=[site],
                site=site,
                target=name,
                message=f"the certificate {site} presents at {c.address} for {name} does not "
                f"cover {name} (it names {held}): clients get a certificate warning once "
                f"{name} points at {site}; add {name} to its subjectAltName",
                fix=f"add {name} to the subjectAltName of {site}'s certificate",
            )
        )
    for site, address, why in untrusted:
        ca = tool.ca_file or "the system's CAs"
        out.append(
            RemapFinding(
                kind="certificate",
                found_on=[site],
                site=site,
                target=address,
                message=f"the certificate {site} presents at {address} does not verify against "
                f"{ca} ({quote(why)}): clients refuse it once the names point at {site}; install "
                f"a certificate signed by {ca}",
                fix=f"install a certificate for {site} signed by {ca}",
            )
        )
    for (site, address), seen in unreachable.items():
        asked_for = ", ".join(c.server_name or "every name" for c in seen)
        out.append(
            RemapFinding(
                kind="unreachable",
                found_on=[site],
                site=site,
                target=address,
                message=f"{site}'s server at {address} gave no certificate (asked for "
                f"{asked_for}): {quote(seen[0].error)}; its certificate was not checked: make "
                "it answer and check again",
                fix=f"make the tool answer at {site}, then check again",
            )
        )
    return out


def find_remap_problems(
    tool: Tool,
    fetches: list[PageFetch],
    certificates: list[CertificateSeen],
    *,
    bounded_by: str = "",
    resolved: dict[str, str] | None = None,
) -> RemapReport:
    """What in `tool` is not ready for its names to be remapped (the module docstring).

    Args:
        tool: the tool, from the site's `geo.tools`.
        fetches: every request of the crawl, in crawl order.
        certificates: what each site presented for each name (empty for an http tool).
        bounded_by: why the crawl stopped before it saw every page (empty: it saw them all).
        resolved: the address each name was fetched from (said in the notes, with its site).

    Returns:
        The report: findings sorted by kind (certificates, redirects, links, unreachable),
        then by how many pages, its summary sentence and its verdict.

    Example:
        >>> tool = site.geo.tool("portal")  # names: portal.ops.handover.test, ...
        >>> page = PageFetch(url="https://portal.ops.handover.test:8443/", status=200,
        ...                  links=["/about", "https://127.0.40.11:8443/old"])
        >>> [f.kind for f in find_remap_problems(tool, [page], []).findings]
        ['absolute-link']
    """
    findings = _certificate_findings(tool, certificates) + _page_findings(tool, fetches)
    findings.sort(key=lambda f: (KIND_ORDER.index(f.kind), -f.pages))
    notes = []
    if tool.scheme == "http":
        notes.append("the tool is served over http: there is no certificate to check")
    if bounded_by:
        notes.append(bounded_by)
    for name, address in (resolved or {}).items():
        at = tool.site_of(address)
        notes.append(
            f"{name} was fetched from {address}"
            + (f", the address of {at}" if at else ", the address of no site of the tool")
        )
    answered = [f for f in fetches if not f.error]
    checked = bool(answered)
    names = ", ".join(tool.names)
    crawled = f"{_plural(len(fetches), 'request')} through {names}"
    if not checked:
        why = quote(fetches[0].error) if fetches else "nothing was fetched"
        summary = (
            f"{tool.name} could not be checked: no page answered through {names} ({why}); "
            "make the tool answer through its names and check again"
        )
    elif not findings:
        certs = (
            "every site's certificate covers every name"
            if tool.scheme == "https"
            else "no certificate to check (http)"
        )
        summary = (
            f"{tool.name} is ready to remap: {crawled} found links only to its own names, and "
            f"{certs}" + (f"; but {bounded_by}" if bounded_by else "")
        )
    else:
        counts = ", ".join(
            _plural(n, *KIND_WORDS[k])
            for k in KIND_ORDER
            if (n := sum(f.kind == k for f in findings))
        )
        summary = (
            f"{tool.name} is not ready to remap: {counts} ({crawled}"
            + (f"; {bounded_by}" if bounded_by else "")
            + "); fix each finding and check again"
        )
    return RemapReport(
        tool=tool.name,
        names=list(tool.names),
        scheme=tool.scheme,
        pages_crawled=len(fetches),
        resolved=dict(resolved or {}),
        crawl_bounded=bool(bounded_by),
        certificates=certificates,
        findings=findings,
        notes=notes,
        summary=summary,
        checked=checked,
        ready=checked and not findings,
    )


def md_text(text: str) -> str:
    """Text as Markdown that renders exactly as it reads: one line, every punctuation mark that
    Markdown or HTML could take for syntax escaped."""
    out = []
    for ch in " ".join(text.split()):
        if ch == "&":
            out.append("&amp;")
        elif ch == "<":
            out.append("&lt;")
        elif ch == ">":
            out.append("&gt;")
        elif ch in "\\`*_{}[]()#+-.!|~:":
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def md_code(text: str) -> str:
    """Text from outside as a Markdown code span (never a link, emphasis or HTML), one line,
    bounded, safe inside a table cell."""
    one = quote(text).replace("|", "\\|")
    longest, run = 0, 0
    for ch in one:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * (longest + 1)
    pad = " " if one.startswith("`") or one.endswith("`") or not one.strip() else ""
    return f"{fence}{pad}{one}{pad}{fence}"


def remap_markdown(report: RemapReport) -> str:
    """The report as Markdown, for a Prefect artifact or an approval message: the verdict, the
    summary, and a table of the findings. Every link, page and name taken from outside is in a
    code span; handover's own words are escaped."""
    verdict = "ready" if report.ready else ("not checked" if not report.checked else "not ready")
    lines = [
        f"## Remap readiness of {md_text(report.tool)}: {verdict}",
        "",
        md_text(report.summary),
        "",
    ]
    if report.findings:
        lines += ["| kind | found on | pages | target | what to do |", "|---|---|---|---|---|"]
        for f in report.findings:
            where = "<br>".join(md_code(p) for p in f.found_on)
            if f.pages > len(f.found_on):
                where += f"<br>and {f.pages - len(f.found_on)} more"
            lines.append(
                f"| {f.kind} | {where} | {f.pages or '-'} | {md_code(f.target)} | "
                f"{md_text(f.fix)} |"
            )
        lines.append("")
    lines += [f"- {md_text(n)}" for n in report.notes]
    return "\n".join(lines).rstrip() + "\n"
