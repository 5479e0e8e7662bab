"""Remap readiness of a geo tool, read from the tool itself (`handover check remap`).

Before a geo failover remaps a tool's names, this reads what the remap cannot move
(`flows.plans.remap` says what counts and why):

* `crawl` walks the tool's pages through its names, breadth first from ``/`` on its first name:
  each request goes to the address `resolve` gives for the name, over the tool's scheme and
  port, with the name as ``Host`` and as TLS SNI. The chain is verified against the tool's
  ``ca_file`` (else the system's CAs) but the host name is not checked: a certificate that does
  not cover a name is a finding of `certificates`, never a failed crawl. Redirects are recorded
  and followed only to the tool's own names; links are read from the ``href``, ``src`` and
  ``action`` attributes of ``text/html`` pages. Every request is bounded by `timeout_s` (and
  its body by `MAX_BODY`), the crawl by `max_pages` and `total_s`.
* `certificates` asks every site's placement address, for each of the tool's names as SNI, for
  the certificate it presents, and reads its subjectAltName.
* `check_remap` ties them together for a site and a tool, resolving the names through the geo
  sites' resolvers (else the masters, newest epoch first) unless given a `resolve`.

Nothing here changes anything: it only reads.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from html.parser import HTMLParser
from urllib.parse import quote as url_quote
from urllib.parse import urljoin, urlsplit

from pydantic import BaseModel, Field

from config.site import Geo, Site, Tool
from flows.plans.remap import (
    REDIRECT_STATUSES,
    CertificateSeen,
    PageFetch,
    RemapReport,
    find_remap_problems,
    normal_host,
    remap_markdown,
)

__all__ = [
    "Crawl",
    "RemapCheckRefused",
    "Resolve",
    "ResolveFailed",
    "certificates",
    "check_remap",
    "crawl",
    "dns_resolve",
    "remap_markdown",
]

#: the bound of each request (connection, TLS handshake, answer)
TIMEOUT_S = 5.0
#: the bound of the whole crawl
CRAWL_S = 120.0
#: the most of a page's body that is read and parsed
MAX_BODY = 2 * 1024 * 1024
#: the bound of each DNS query of the default resolver
DNS_TIMEOUT_S = 2.0
USER_AGENT = "handover-remap-check"
HTML_TYPES = ("text/html", "application/xhtml+xml")
#: a link's characters kept as they are when it is requested (the rest percent-encoded)
URL_SAFE = "/%:@!$&'()*+,;=-._~?"

#: a tool name -> the address to connect to for it
Resolve = Callable[[str], str]


class ResolveFailed(RuntimeError):
    """A name could not be resolved; the message says who was asked and what they said."""


class RemapCheckRefused(ValueError):
    """The check cannot run at all (no geo section, an unknown tool, an unreadable CA file); the
    message names the fix."""


class Crawl(BaseModel):
    """What `crawl` fetched."""

    fetches: list[PageFetch]
    #: why it stopped before it saw every page (empty: it saw them all)
    bounded_by: str = ""
    #: the address each name resolved to
    resolved: dict[str, str] = Field(default_factory=dict)


class _Links(HTMLParser):
    """The values of a page's ``href``, ``src`` and ``action`` attributes, in page order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("href", "src", "action") and value and value.strip():
                self.links.append(value.strip())


def page_links(html: str) -> list[str]:
    """The links of an HTML page, each once, in page order (unparseable markup is skipped)."""
    parser = _Links()
    try:
        parser.feed(html)
        parser.close()
    except (AssertionError, ValueError):  # markup the parser gives up on: the links so far
        pass
    return list(dict.fromkeys(parser.links))


def _context(tool: Tool, *, verify: bool = True) -> ssl.SSLContext:
    """A client context: the chain verified against the tool's CA (or not at all), the host name
    never checked (a certificate's names are checked by `flows.plans.remap.covers`)."""
    ctx = (
        ssl.create_default_context(cafile=tool.ca_file) if verify else ssl.create_default_context()
    )
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED if verify else ssl.CERT_NONE
    return ctx


def _url(tool: Tool, name: str, target: str) -> str:
    default = 443 if tool.scheme == "https" else 80
    port = "" if tool.port == default else f":{tool.port}"
    return f"{tool.scheme}://{name}{port}{target}"


def _target_of(url: str, names: dict[str, str]) -> tuple[str, str] | None:
    """(compared host, path and query) of a URL on one of the tool's names, else None."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not host or normal_host(host) not in names:
        return None
    target = url_quote(parts.path or "/", safe=URL_SAFE)
    if parts.query:
        target += "?" + url_quote(parts.query, safe=URL_SAFE)
    return normal_host(host), target


def _connect(
    address: str, port: int, name: str, ctx: ssl.SSLContext | None, timeout_s: float
) -> socket.socket:
    raw = socket.create_connection((address, port), timeout=timeout_s)
    if ctx is None:
        return raw
    try:
        return ctx.wrap_socket(raw, server_hostname=name)
    except BaseException:
        raw.close()
        raise


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the request's time bound ran out")
    return left


def _fetch(
    tool: Tool, name: str, address: str, target: str, ctx: ssl.SSLContext | None, deadline: float
) -> PageFetch:
    """One GET of `target` through `name` at `address`, bounded by `deadline`."""
    url = _url(tool, name, target)
    default = 443 if tool.scheme == "https" else 80
    host = name if tool.port == default else f"{name}:{tool.port}"
    where = f"{address}:{tool.port}"
    try:
        left = _remaining(deadline)
        sock = _connect(address, tool.port, name, ctx, left)
        conn = http.client.HTTPConnection(name, tool.port, timeout=left)
        conn.sock = sock
        try:
            conn.putrequest("GET", target, skip_host=True, skip_accept_encoding=True)
            for header, value in (
                ("Host", host),
                ("User-Agent", USER_AGENT),
                ("Accept", "text/html, */*;q=0.1"),
                ("Connection", "close"),
            ):
                conn.putheader(header, value)
            conn.endheaders()
            # each read from here on is bounded by this timeout, the body as a whole by the
            # deadline, checked between reads
            sock.settimeout(_remaining(deadline))
            resp = conn.getresponse()
            links: list[str] = []
            ctype = resp.headers.get_content_type()
            if 200 <= resp.status < 300 and ctype in HTML_TYPES:
                body = b""
                while len(body) < MAX_BODY:
                    _remaining(deadline)
                    chunk = resp.read(min(65536, MAX_BODY - len(body)))
                    if not chunk:
                        break
                    body += chunk
                charset = resp.headers.get_content_charset() or "utf-8"
                try:
                    text = body.decode(charset, errors="replace")
                except LookupError:
                    text = body.decode("utf-8", errors="replace")
                links = page_links(text)
            return PageFetch(
                url=url,
                status=resp.status,
                location=resp.getheader("Location"),
                content_type=resp.getheader("Content-Type") or "",
                links=links,
            )
        finally:
            conn.close()
    except ssl.SSLCertVerificationError as exc:
        ca = tool.ca_file or "the system's CAs"
        why = f"the certificate at {where} does not verify against {ca} ({exc.verify_message})"
    except TimeoutError as exc:
        why = f"no answer from {where} in time ({exc or 'timed out'})"
    except (OSError, http.client.HTTPException) as exc:
        why = f"{type(exc).__name__} from {where}: {exc}"
    return PageFetch(url=url, error=why)


def crawl(
    tool: Tool,
    resolve: Resolve,
    *,
    timeout_s: float = TIMEOUT_S,
    max_pages: int | None = None,
    total_s: float = CRAWL_S,
) -> Crawl:
    """Walk the tool's pages through its names, breadth first from ``/`` on its first name.

    Args:
        tool: the tool.
        resolve: the address to connect to for a name (`ResolveFailed` or `OSError` when it
            has none: that page is unreachable).
        timeout_s: the bound of each request.
        max_pages: at most this many requests (default: the tool's `crawl_pages`).
        total_s: the bound of the whole crawl.

    Returns:
        Every request in crawl order, why the crawl stopped early if it did, and the address
        each name resolved to.

    Raises:
        OSError: the tool's CA file cannot be read.
        ssl.SSLError: the tool's CA file holds no certificate.
    """
    names = {normal_host(n): n for n in tool.names}
    limit = max_pages or tool.crawl_pages
    ctx = _context(tool) if tool.scheme == "https" else None
    deadline = time.monotonic() + total_s
    first = (normal_host(tool.names[0]), "/")
    queue: deque[tuple[str, str]] = deque([first])
    seen = {first}
    addresses: dict[str, str] = {}
    unresolved: dict[str, str] = {}
    fetches: list[PageFetch] = []
    bounded_by = ""
    while queue:
        if len(fetches) >= limit:
            bounded_by = (
                f"the crawl stopped at its bound of {limit} requests (geo.tools[{tool.name}]."
                f"crawl_pages) with {len(queue)} more known: pages beyond it were not checked"
            )
            break
        if time.monotonic() >= deadline:
            bounded_by = (
                f"the crawl stopped at its time bound of {total_s:g} s after {len(fetches)} "
                f"requests with {len(queue)} more known: pages beyond it were not checked"
            )
            break
        key, target = queue.popleft()
        name = names[key]
        if name not in addresses and name not in unresolved:
            try:
                addresses[name] = resolve(name)
            except (ResolveFailed, OSError, LookupError) as exc:
                unresolved[name] = str(exc)
        if name in unresolved:
            fetches.append(
                PageFetch(
                    url=_url(tool, name, target),
                    error=f"{name} could not be resolved: {unresolved[name]}",
                )
            )
            continue
        request_deadline = min(deadline, time.monotonic() + timeout_s)
        page = _fetch(tool, name, addresses[name], target, ctx, request_deadline)
        fetches.append(page)
        follow = list(page.links)
        if page.status in REDIRECT_STATUSES and page.location:
            follow.append(page.location)
        for link in follow:
            nxt = _target_of(urljoin(page.url, link.strip()), names)
            if nxt is not None and nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return Crawl(fetches=fetches, bounded_by=bounded_by, resolved=addresses)


def _peer_der(address: str, port: int, name: str, ctx: ssl.SSLContext, timeout_s: float) -> bytes:
    with _connect(address, port, name, ctx, timeout_s) as sock:
        assert isinstance(sock, ssl.SSLSocket)
        der = sock.getpeercert(binary_form=True)
    if not der:
        raise ssl.SSLError("the server presented no certificate")
    return der


def _san_names(der: bytes) -> list[str]:
    """The DNS names of a DER certificate's subjectAltName.

    Raises:
        ValueError: the certificate does not parse.
    """
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [str(n) for n in san.value.get_values_for_type(x509.DNSName)]


def certificates(tool: Tool, *, timeout_s: float = TIMEOUT_S) -> list[CertificateSeen]:
    """The certificate every site's placement presents for each of the tool's names (TLS SNI),
    with the DNS names of its subjectAltName; none for an http tool.

    A certificate whose chain does not verify against the tool's CA is read anyway (its names
    still count) and says why (`CertificateSeen.chain_error`); a server that does not answer
    says why (`CertificateSeen.error`).

    Raises:
        OSError: the tool's CA file cannot be read.
        ssl.SSLError: the tool's CA file holds no certificate.
    """
    if tool.scheme != "https":
        return []
    verified, unverified = _context(tool), _context(tool, verify=False)
    out = []
    for site, placement in tool.sites.items():
        where = f"{placement.address}:{tool.port}"
        for name in tool.names:
            seen = CertificateSeen(site=site, address=where, server_name=name)
            try:
                try:
                    der = _peer_der(placement.address, tool.port, name, verified, timeout_s)
                except ssl.SSLCertVerificationError as exc:
                    seen.chain_error = exc.verify_message or str(exc)
                    der = _peer_der(placement.address, tool.port, name, unverified, timeout_s)
                seen.names = _san_names(der)
            except TimeoutError:
                seen.error = f"no answer within {timeout_s:g} s"
            except (OSError, ValueError) as exc:
                seen.error = f"{type(exc).__name__}: {exc}"
            out.append(seen)
    return out


def dns_resolve(geo: Geo, *, timeout_s: float = DNS_TIMEOUT_S) -> Resolve:
    """A `Resolve` through DNS: the first of the geo sites' resolvers that answers an address,
    else the masters themselves, taking the address of the newest epoch (the TXT record
    ``epoch=N`` beside the name) among those that answered.

    Args:
        geo: the site's `geo` section.
        timeout_s: the bound of each query.
    """
    from flows.plans.geo_failover import current_answer
    from tasks.geo_dns import read_name, resolvers_answer

    def resolve(name: str) -> str:
        problems: list[str] = []
        for where, got in resolvers_answer(geo, name, timeout_s).items():
            if isinstance(got, list) and got:
                return got[0]
            problems.append(f"resolver {where}: {got or 'no address'}")
        answers = read_name(geo, name, timeout_s)
        best = current_answer(answers, name)
        if best is not None:
            return best.addresses[0]
        problems += [f"master {a.master} ({a.site}): {a.error or 'no address'}" for a in answers]
        raise ResolveFailed(
            f"no resolver or master of geo.sites answered an address ({'; '.join(problems)})"
        )

    return resolve


def check_remap(
    site: Site,
    tool_name: str,
    resolve: Resolve | None = None,
    *,
    timeout_s: float = TIMEOUT_S,
    max_pages: int | None = None,
    total_s: float = CRAWL_S,
) -> RemapReport:
    """Whether the tool `tool_name` of `site` is ready for its names to be remapped.

    Args:
        site: the site, with its `geo` section.
        tool_name: the tool (`geo.tools[].name`).
        resolve: the address to connect to for a name (default: `dns_resolve`).
        timeout_s: the bound of each request.
        max_pages: the crawl's bound (default: the tool's `crawl_pages`).
        total_s: the crawl's time bound.

    Returns:
        The report (`flows.plans.remap.RemapReport`).

    Raises:
        RemapCheckRefused: the site has no `geo` section, no such tool, or the tool's CA file
            cannot be read; nothing was asked.

    Example:
        >>> report = check_remap(load_site("config/sites/geo-lab.yaml"), "portal")
        >>> print(report.summary)
    """
    if site.geo is None:
        raise RemapCheckRefused(
            f"site {site.site} has no geo section: a remap check needs the tool's names and "
            "sites (geo.tools); use the site file that describes the geo tools (for the lab: "
            "config/sites/geo-lab.yaml) or add a geo section"
        )
    try:
        tool = site.geo.tool(tool_name)
    except KeyError as exc:
        raise RemapCheckRefused(f"{exc.args[0]}; name one of them (--service)") from None
    if tool.scheme == "https" and tool.ca_file:
        try:
            _context(tool)
        except (OSError, ssl.SSLError) as exc:
            raise RemapCheckRefused(
                f"geo.tools[{tool.name}].ca_file: {tool.ca_file} cannot be used as a CA file "
                f"({exc}); fix the path, or create the CA that signed the tool's certificates"
            ) from None
    found = crawl(
        tool,
        resolve or dns_resolve(site.geo),
        timeout_s=timeout_s,
        max_pages=max_pages,
        total_s=total_s,
    )
    seen = certificates(tool, timeout_s=timeout_s)
    return find_remap_problems(
        tool, found.fetches, seen, bounded_by=found.bounded_by, resolved=found.resolved
    )
