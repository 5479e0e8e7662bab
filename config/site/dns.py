"""The service's DNS alias, its authoritative servers and the TSIG key of its updates."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import (
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from config.site.base import SiteModel
from config.site.secrets import SecretRef


def dns_server_address(v: str) -> str:
    """A DNS server's address: an IP address, so that an update never depends on resolving a
    name (and dnspython sends queries to addresses only).

    Raises:
        ValueError: `v` is not an IP address.
    """
    try:
        ipaddress.ip_address(v)
    except ValueError:
        raise ValueError(
            f"{v!r} is not an IP address (a DNS server is given by its address, so that an "
            "update never depends on resolving it)"
        ) from None
    return v


#: a DNS name (absolute or not): labels of letters, digits and hyphens (length checked by the
#: pattern's repetition bounds; Rust's regex engine, which pydantic uses, has no look-ahead)
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
DNS_NAME_RE = rf"^{_LABEL}(?:\.{_LABEL}){{0,126}}\.?$"
DnsName = Annotated[str, StringConstraints(pattern=DNS_NAME_RE, max_length=254)]


class DnsServer(SiteModel):
    """One authoritative DNS server."""

    #: the server's address
    address: str
    #: the server's port
    port: int = Field(default=53, ge=1, le=65535)

    _address = field_validator("address")(classmethod(lambda cls, v: dns_server_address(v)))


class Dns(SiteModel):
    """The DNS alias of the service and the TSIG key used for RFC 2136 updates."""

    #: the primary: where updates go
    server: str
    #: the primary's port
    port: int = Field(default=53, ge=1, le=65535)
    #: the other authoritative servers (they transfer the zone from the primary); a switch
    #: checks that every one of them answers what it wrote
    secondaries: list[DnsServer] = Field(default_factory=list)
    #: the zone the alias is in
    zone: DnsName
    #: the name clients use; it points at the master front end
    alias: DnsName
    #: the alias's TTL: how long a client may keep the old address after a switch
    ttl_s: int = Field(default=60, ge=1, le=86400)
    #: the name of the TSIG key allowed to update the zone
    tsig_key_name: DnsName
    #: the TSIG key's algorithm
    tsig_algorithm: Literal["hmac-sha256", "hmac-sha512", "hmac-sha384"] = "hmac-sha256"
    #: the TSIG key's secret (a reference, never the value)
    tsig_key: SecretRef

    _server = field_validator("server")(classmethod(lambda cls, v: dns_server_address(v)))

    @model_validator(mode="after")
    def _alias_in_zone(self) -> Dns:
        zone, alias = self.zone.rstrip(".").lower(), self.alias.rstrip(".").lower()
        if not alias.endswith("." + zone):
            raise ValueError(
                f"alias {self.alias!r} is not inside zone {self.zone!r}: the update that moves "
                "it goes to the zone's primary"
            )
        return self

    def servers(self) -> list[DnsServer]:
        """Every authoritative server: the primary first."""
        return [DnsServer(address=self.server, port=self.port), *self.secondaries]
