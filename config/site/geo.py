"""Geo failover: tools replicated between sites, moved from one site to another through DNS.

A tool (a portal, a site database, a monitoring page) is a web application and its MariaDB
database. It is active at one site and replicated to the others with MariaDB's own replication
(GTID). Its names live in one zone served by several DNS masters, one or more per site, each a
primary of its own (not a primary and its secondaries): handover changes the names on every
master, each with a compare-and-set signed with the zone's TSIG key. Clients reach the tool
through caching resolvers that honour the names' TTL.

The site whose address a tool's names hold, with the newest epoch (the TXT record
``epoch=N`` beside each name), is where the tool is active. The active site's database carries
the same epoch (`handover_fence`), and the tool accepts a write only when its own database's
epoch is the newest the masters answer and names its own address: a site that was failed away
from refuses writes as soon as it can read one master that has moved, even if it never heard of
the failover.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from config.site.base import HostName, SiteModel
from config.site.dns import DnsName, DnsServer, dns_server_address
from config.site.secrets import SecretRef

SqlName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]


class GeoSite(SiteModel):
    """One site a tool can be active at: its DNS masters, its resolvers and its machines."""

    #: the site's name (`handover run geo-failover --to NAME`)
    name: HostName
    #: the site's authoritative DNS masters for the zone; each is updated by handover
    masters: list[DnsServer] = Field(min_length=1)
    #: how many of this site's masters must take a change for it to count (a site none of whose
    #: masters answers is reported behind and repaired by the drift watch when it answers again)
    min_masters: int = Field(default=1, ge=0)
    #: the caching resolvers the site's clients use: a failover is verified through them
    resolvers: list[DnsServer] = Field(default_factory=list)
    #: the hosts of `hosts:` that are this site's machines (their loss counts toward the site's
    #: death, for the automatic switch)
    hosts: list[HostName] = Field(default_factory=list)

    @model_validator(mode="after")
    def _minimum(self) -> GeoSite:
        if self.min_masters > len(self.masters):
            raise ValueError(
                f"min_masters is {self.min_masters} but site {self.name} has "
                f"{len(self.masters)} master(s); lower min_masters or list more masters"
            )
        return self


class ToolDatabase(SiteModel):
    """The tool's MariaDB database, the same at every site (one account, one schema)."""

    #: the database server's kind (MariaDB: GTID replication)
    kind: Literal["mariadb"] = "mariadb"
    #: the schema the tool writes to; handover keeps its fencing epoch there (`handover_fence`)
    database: SqlName
    #: handover's account: it reads the replication status, sets read-only, promotes a replica
    #: and rebuilds one (REPLICATION SLAVE ADMIN, READ_ONLY ADMIN, BINLOG MONITOR, SUPER)
    user: SqlName
    #: that account's password (a reference, never the value)
    password: SecretRef
    #: the account a replica connects to its primary as (REPLICATION SLAVE)
    replication_user: SqlName
    #: that account's password
    replication_password: SecretRef
    #: the port of every site's database server (a placement may override it)
    port: int = Field(default=3306, ge=1, le=65535)
    #: the bound of each connection and statement
    timeout_s: float = Field(default=5.0, gt=0, le=120)


class ToolPlacement(SiteModel):
    """Where a tool runs at one site."""

    #: the address the tool's names point at while it is active at this site
    address: str
    #: the database server at this site (its address)
    db_host: str
    #: its port (default: the tool's `database.port`)
    db_port: int | None = Field(default=None, ge=1, le=65535)

    _address = field_validator("address", "db_host")(
        classmethod(lambda cls, v: dns_server_address(v))
    )


class Tool(SiteModel):
    """A replicated tool: its names, its web application and its database at each site."""

    #: the tool's name (`--service NAME`)
    name: HostName
    #: the DNS names clients use, each inside `geo.zone`; a failover moves them all
    names: list[DnsName] = Field(min_length=1)
    #: how clients reach the web application
    scheme: Literal["http", "https"] = "https"
    #: its port
    port: int = Field(default=443, ge=1, le=65535)
    #: the CA file that signed the tool's certificates (https; default: the system's CAs)
    ca_file: str | None = None
    #: a page that answers 200 when the tool serves (the failover's verification)
    health_path: str = Field(default="/", pattern=r"^/[^\s]*$")
    #: the database
    database: ToolDatabase
    #: where it runs, by site name (at least two sites)
    sites: dict[HostName, ToolPlacement] = Field(min_length=2)
    #: a failover of an unreachable site promotes the replica without asking only when its lag
    #: at the last reading was at most this; beyond it, a human approves the stated loss window
    max_lag_s: float = Field(default=30.0, ge=0, le=86400)
    #: the remap check's crawl: at most this many pages through the tool's name
    crawl_pages: int = Field(default=50, ge=1, le=10000)

    def site_of(self, address: str) -> str | None:
        """The site whose placement has `address`, or None."""
        return next((s for s, p in self.sites.items() if p.address == address), None)


class Geo(SiteModel):
    """The tools replicated between sites, their zone and its masters (module docstring)."""

    #: the zone every tool name is in
    zone: DnsName
    #: the names' TTL: how long a client may keep the old address after a failover
    ttl_s: int = Field(default=60, ge=1, le=86400)
    #: the name of the TSIG key every master accepts for the zone's updates
    tsig_key_name: DnsName
    #: the TSIG key's algorithm
    tsig_algorithm: Literal["hmac-sha256", "hmac-sha512", "hmac-sha384"] = "hmac-sha256"
    #: the TSIG key's secret (a reference, never the value)
    tsig_key: SecretRef
    #: the sites (at least two)
    sites: list[GeoSite] = Field(min_length=2)
    #: the replicated tools
    tools: list[Tool] = Field(min_length=1)
    #: how long a planned failover waits for the target to apply everything its source wrote
    catch_up_s: float = Field(default=60.0, gt=0, le=3600)
    #: how long beyond the TTL the resolvers may take to answer the new address, and how long
    #: (at least 2 s) the target's health page may take to answer 200 once the names moved
    verify_margin_s: float = Field(default=5.0, ge=0, le=3600)
    #: the automatic control switch: a site is dead once the monitoring path has said so for
    #: this long (its hosts and its DNS masters all alerting)
    dead_after_s: int = Field(default=120, ge=0, le=86400)
    #: an automatic failover announces itself and waits this long for an abort (0: at once)
    countdown_s: int = Field(default=300, ge=0, le=86400)
    #: a second automatic failover of a tool within this period waits for a human (anti-flapping)
    block_s: int = Field(default=3600, ge=0, le=7 * 86400)

    @model_validator(mode="after")
    def _references(self) -> Geo:
        sites = [s.name for s in self.sites]
        if len(set(sites)) != len(sites):
            raise ValueError(f"geo.sites: a site name is used twice ({', '.join(sites)})")
        tools = [t.name for t in self.tools]
        if len(set(tools)) != len(tools):
            raise ValueError(f"geo.tools: a tool name is used twice ({', '.join(tools)})")
        zone = self.zone.rstrip(".").lower()
        seen: dict[str, str] = {}
        for t in self.tools:
            for name in t.names:
                n = name.rstrip(".").lower()
                if not n.endswith("." + zone):
                    raise ValueError(
                        f"geo.tools[{t.name}].names: {name!r} is not inside zone {self.zone!r}; "
                        "every master serves that zone only"
                    )
                if n in seen:
                    raise ValueError(
                        f"geo.tools[{t.name}].names: {name!r} is also a name of {seen[n]}"
                    )
                seen[n] = t.name
            unknown = sorted(set(t.sites) - set(sites))
            if unknown:
                raise ValueError(
                    f"geo.tools[{t.name}].sites: {', '.join(unknown)} not in geo.sites "
                    f"({', '.join(sites)}); add the site or fix the name"
                )
            addresses = [p.address for p in t.sites.values()]
            if len(set(addresses)) != len(addresses):
                raise ValueError(
                    f"geo.tools[{t.name}].sites: two sites share an address; the address the "
                    "names hold is how handover tells where the tool is active"
                )
        masters = [(m.address, m.port) for s in self.sites for m in s.masters]
        if len(set(masters)) != len(masters):
            raise ValueError("geo.sites: a DNS master is listed twice (address and port)")
        return self

    def site(self, name: str) -> GeoSite:
        """The site called `name`.

        Raises:
            KeyError: with the known site names.
        """
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(f"no geo site {name!r}; sites: {', '.join(s.name for s in self.sites)}")

    def tool(self, name: str) -> Tool:
        """The tool called `name`.

        Raises:
            KeyError: with the known tool names.
        """
        for t in self.tools:
            if t.name == name:
                return t
        raise KeyError(
            f"no tool {name!r} in geo.tools; tools: {', '.join(t.name for t in self.tools)}"
        )

    def masters(self) -> list[tuple[str, DnsServer]]:
        """(site name, master) of every master, in file order."""
        return [(s.name, m) for s in self.sites for m in s.masters]
