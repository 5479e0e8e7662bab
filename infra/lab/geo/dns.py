"""The geo lab's DNS: the zone's masters (one BIND9 primary per entry of each site's
``masters``) and the sites' caching resolvers (one per entry of ``resolvers``).

Every master is a primary of its own, not a secondary of another: it takes RFC 2136 updates
signed with the zone's TSIG key (handover changes each master with a compare-and-set), notifies
nobody and transfers the zone to nobody. All start from the same zone file: for each tool name
an A record at the address of the tool's first site (where it is active) and a TXT record
``epoch=1``, both with the zone's TTL. A master keeps its journal, so one that is killed and
started again serves the updates it had taken.

A resolver is a caching ``named`` that forwards the zone, and only the zone, to every master of
every site: it keeps an answer for its TTL and still answers while a master is down.

``named`` listens on interface addresses only, hence every server on 127.0.0.1 and a port each.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from config.site import DnsServer, Geo
from infra.lab.errors import LabError
from infra.lab.geo.paths import GeoPaths
from infra.lab.geo.procs import ProcRef, kill, spawn, wait_until

#: the epoch a fresh zone starts with
FIRST_EPOCH = 1
#: how long a server is given to answer once started
START_TIMEOUT_S = 20.0
_EPOCH = re.compile(r"^epoch=(\d+)$")


@dataclass(frozen=True)
class DnsRole:
    """One DNS server of the lab: a site's master or resolver."""

    site: str
    kind: Literal["master", "resolver"]
    index: int
    server: DnsServer

    @property
    def key(self) -> str:
        """Its name in the lab's record and state directory (``site-a-master0``)."""
        return f"{self.site}-{self.kind}{self.index}"

    @property
    def label(self) -> str:
        """How messages name it (``site-a's master 127.0.0.1:55453``)."""
        return f"{self.site}'s {self.kind} {self.server.address}:{self.server.port}"


def roles(geo: Geo) -> list[DnsRole]:
    """Every DNS server of the lab: per site (file order) its masters, then its resolvers."""
    out: list[DnsRole] = []
    for s in geo.sites:
        out += [DnsRole(s.name, "master", i, m) for i, m in enumerate(s.masters)]
        out += [DnsRole(s.name, "resolver", i, r) for i, r in enumerate(s.resolvers)]
    return out


def relative(name: str, zone: str) -> str:
    """`name` relative to `zone` (``portal`` for ``portal.ops.handover.test``)."""
    name, zone = name.rstrip(".").lower(), zone.rstrip(".").lower()
    return name[: -len(zone) - 1] if name.endswith("." + zone) else name + "."


def zone_text(geo: Geo) -> str:
    """The masters' first zone file: each tool's names at its first site, epoch 1."""
    zone, ttl = geo.zone.rstrip("."), geo.ttl_s
    lines = [
        f"$TTL {ttl}",
        f"@ IN SOA ns1.{zone}. hostmaster.{zone}. 1 60 30 86400 {ttl}",
        f"@ IN NS ns1.{zone}.",
        "ns1 IN A 127.0.0.1",
    ]
    for tool in geo.tools:
        active = next(iter(tool.sites.values())).address
        for name in tool.names:
            rel = relative(name, zone)
            lines += [f"{rel} {ttl} IN A {active}", f'{rel} {ttl} IN TXT "epoch={FIRST_EPOCH}"']
    return "\n".join(lines) + "\n"


def _options(here: Path, server: DnsServer, extra: str) -> str:
    return f"""controls {{ }};
options {{
    directory "{here}";
    pid-file "{here}/named.pid";
    session-keyfile "{here}/session.key";
    managed-keys-directory "{here}";
    listen-on port {server.port} {{ {server.address}; }};
    listen-on-v6 {{ none; }};
    automatic-interface-scan no;
    dnssec-validation no;
    minimal-responses no;
{extra}}};
logging {{ channel main {{ file "{here}/named.log"; severity info; print-time yes; }};
    category default {{ main; }}; }};
"""


def master_conf(geo: Geo, here: Path, server: DnsServer, secret: str) -> str:
    """A master's named.conf: a primary of its own for the zone, updated with the TSIG key."""
    key = geo.tsig_key_name.rstrip(".")
    return (
        f'key "{key}" {{ algorithm {geo.tsig_algorithm}; secret "{secret}"; }};\n'
        + _options(here, server, "    recursion no;\n    allow-query { any; };\n")
        + f'zone "{geo.zone.rstrip(".")}" {{ type primary; file "{here}/zone.db"; '
        f'allow-update {{ key "{key}"; }}; notify no; allow-transfer {{ none; }}; }};\n'
    )


def resolver_conf(geo: Geo, here: Path, server: DnsServer) -> str:
    """A resolver's named.conf: caching, forwarding the zone only to every master."""
    forwarders = " ".join(f"{m.address} port {m.port};" for _, m in geo.masters())
    return (
        _options(
            here,
            server,
            "    recursion yes;\n    allow-recursion { 127.0.0.0/8; };\n"
            "    allow-query { 127.0.0.0/8; };\n",
        )
        + f'zone "{geo.zone.rstrip(".")}" {{ type forward; forward only; '
        f"forwarders {{ {forwarders} }}; }};\n"
    )


def ask(server: DnsServer, name: str, rdtype: str, timeout_s: float = 1.0) -> dns.message.Message:
    """One UDP query to `server` (no retry).

    Raises:
        dns.exception.DNSException, OSError: no answer in time, or a refused port.
    """
    q = dns.message.make_query(name.rstrip(".") + ".", rdtype)
    return dns.query.udp(q, server.address, port=server.port, timeout=timeout_s)


@dataclass(frozen=True)
class NameAnswer:
    """What a server answers for a tool name: its addresses, its epoch and the A record's TTL."""

    addresses: list[str]
    epoch: int | None
    ttl_s: int | None


def epoch_of(texts: list[str]) -> int | None:
    """The epoch of a name's TXT strings (``epoch=N``), or None."""
    for t in texts:
        m = _EPOCH.match(t)
        if m:
            return int(m.group(1))
    return None


def read_name(server: DnsServer, name: str, timeout_s: float = 1.0) -> NameAnswer:
    """The A and TXT records of `name` at `server`.

    Raises:
        LabError: the server did not answer, or answered with an error code.
    """
    answers = {}
    for rdtype in ("A", "TXT"):
        try:
            r = ask(server, name, rdtype, timeout_s)
        except (dns.exception.DNSException, OSError) as exc:
            raise LabError(
                f"{server.address}:{server.port}: no answer ({exc or type(exc).__name__})"
            ) from exc
        if r.rcode() != dns.rcode.NOERROR:
            raise LabError(f"{server.address}:{server.port}: {dns.rcode.to_text(r.rcode())}")
        answers[rdtype] = [
            rrset for rrset in r.answer if rrset.rdtype == dns.rdatatype.from_text(rdtype)
        ]
    a = answers["A"]
    texts = [b"".join(rd.strings).decode() for rrset in answers["TXT"] for rd in rrset]
    return NameAnswer(
        addresses=sorted(rd.address for rrset in a for rd in rrset),
        epoch=epoch_of(texts),
        ttl_s=a[0].ttl if a else None,
    )


class GeoDns:
    """The lab's masters and resolvers (module docstring)."""

    def __init__(self, paths: GeoPaths, geo: Geo) -> None:
        self.paths = paths
        self.geo = geo

    def roles(self) -> list[DnsRole]:
        """Every server of the lab (`roles`)."""
        return roles(self.geo)

    def prepare(self, secret: str) -> None:
        """Write every server's configuration and every master's first zone (a fresh start:
        zones and journals of an earlier lab are removed)."""
        shutil.rmtree(self.paths.root / "dns", ignore_errors=True)
        zone = zone_text(self.geo)
        for role in self.roles():
            here = self.paths.dns_dir(role.key)
            here.mkdir(parents=True)
            if role.kind == "master":
                (here / "named.conf").write_text(master_conf(self.geo, here, role.server, secret))
                (here / "zone.db").write_text(zone)
            else:
                (here / "named.conf").write_text(resolver_conf(self.geo, here, role.server))
            (here / "named.conf").chmod(0o600)  # a master's holds the TSIG secret

    def start(self, role: DnsRole) -> ProcRef:
        """Start one server from its configuration (a master from its zone and journal) and
        wait until it answers the zone's SOA (a resolver: through a master).

        Raises:
            LabError: it exited or did not answer in time (with its logs' tails).
        """
        here = self.paths.dns_dir(role.key)
        ref = spawn(
            ["named", "-f", "-c", str(here / "named.conf")], here / "named.stderr", role.label
        )

        def answers() -> bool:
            r = ask(role.server, self.geo.zone, "SOA", 0.5)
            return r.rcode() == dns.rcode.NOERROR and bool(r.answer)

        try:
            wait_until(
                answers,
                START_TIMEOUT_S,
                f"DNS {role.label} did not answer the zone's SOA",
                proc=ref,
                logs=[here / "named.stderr", here / "named.log"],
            )
        except LabError:
            with contextlib.suppress(Exception):
                kill([ref])
            raise
        return ref
