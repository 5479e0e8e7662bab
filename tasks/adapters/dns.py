"""The service alias in DNS: read it on each authoritative server, and move it with one RFC 2136
update signed with TSIG whose prerequisite is the address and the epoch it holds now
(compare-and-set).

Contract:
    * `read_alias(dns, server, key_secret=...)` asks one authoritative server (no resolver, no
      cache) for the alias's A records, its epoch (the TXT record ``epoch=N`` beside it) and the
      zone's SOA serial. With the key, every query is signed with it and every answer must be
      signed with it too: an answer that is not (a spoofed one, or a server without the key) is
      `UnsignedAnswer`, a key the server refuses `TsigRefused`. Without the key the answers are
      taken as they come (the lab's displays and diagnostics only).
    * `move_alias(dns, key, expect, to, epoch, expect_epoch=...)` sends one UPDATE to the
      primary: prerequisites "the alias's A RRset is exactly `expect`" and "its TXT RRset is
      exactly ``epoch=<expect_epoch>``" (none at all when `expect_epoch` is None), then the A
      record and the epoch replaced, in one atomic update. Because each switch writes a new
      epoch, an UPDATE captured on the wire and replayed later (within TSIG's time window) fails
      its prerequisite once any later switch happened, even one back to the same address.
      Somebody else changed the alias: `AliasChanged`, with what it holds now, and nothing is
      changed. The key refused (wrong secret, unknown name): `TsigRefused`, naming the key and
      the server. No answer within `timeout_s`: `DnsUnavailable`.
    * `replace_addresses(dns, key, expect, addresses)` is the same compare-and-set for a
      round-robin name (several A records, no epoch; `expect` empty: the name has no A record).
    * `check_key(dns, key)` sends the primary an UPDATE whose only content is a prerequisite
      that cannot hold: a server that accepts the key answers NXRRSET and changes nothing; one
      that refuses it says so (`TsigRefused`).
    * Every call is bounded by `timeout_s` and goes over TCP (an update must not be retried by a
      UDP timeout into a second, different update).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from dns.name import Name
    from dns.rcode import Rcode

    from config.site import Dns, DnsServer

EPOCH_RE = re.compile(r'^"?epoch=(\d+)"?$')


class DnsError(RuntimeError):
    """A DNS operation failed; the message says which server and what to do."""


class DnsUnavailable(DnsError):
    """The server did not answer, or answered with an error that is not about the request."""


class TsigRefused(DnsError):
    """The server refused the TSIG key (unknown name, wrong secret or algorithm, clock skew)."""


class UnsignedAnswer(DnsError):
    """A signed query got an answer not signed with the key: it is not trusted."""


class AliasChanged(DnsError):
    """The compare-and-set's prerequisite failed: the alias no longer holds what was expected."""

    def __init__(self, message: str, now: AliasState) -> None:
        super().__init__(message)
        self.now = now


class AliasState(BaseModel):
    """What one authoritative server answers for the alias."""

    server: str
    addresses: list[str]
    epoch: int | None
    serial: int
    ttl_s: int | None = None


def _fqdn(name: str) -> str:
    return name if name.endswith(".") else name + "."


def _keyring(dns_cfg: Dns, key_secret: str) -> dict[Name, Any]:
    import dns.tsigkeyring

    return dns.tsigkeyring.from_text({dns_cfg.tsig_key_name: key_secret})


def _tsig_refused(dns_cfg: Dns, where: str, what: str, exc: BaseException) -> TsigRefused:
    return TsigRefused(
        f"{where} refused the TSIG key {dns_cfg.tsig_key_name!r} on {what} "
        f"({type(exc).__name__}); check dns.tsig_key_name, dns.tsig_algorithm and the secret "
        "dns.tsig_key points at; nothing was changed"
    )


def read_alias(
    dns_cfg: Dns,
    server: DnsServer,
    timeout_s: float = 3.0,
    *,
    key_secret: str | None = None,
) -> AliasState:
    """The alias as `server` answers it (authoritatively).

    Args:
        dns_cfg: the site's `dns` section.
        server: the authoritative server to ask.
        timeout_s: the bound of each query.
        key_secret: the TSIG secret (base64): sign each query and accept only answers signed
            with it. None: unsigned queries, answers taken as they come.

    Raises:
        DnsUnavailable: no answer within `timeout_s`, or an error answer.
        TsigRefused: the server refused the key.
        UnsignedAnswer: an answer to a signed query that is not signed with the key.
    """
    import dns.exception
    import dns.message
    import dns.name
    import dns.query
    import dns.rcode
    import dns.rdatatype
    import dns.tsig

    alias, zone = _fqdn(dns_cfg.alias), _fqdn(dns_cfg.zone)
    where = f"DNS server {server.address}:{server.port}"
    keyring = _keyring(dns_cfg, key_secret) if key_secret is not None else None

    def ask(name: str, rdtype: str) -> dns.message.Message:
        q = dns.message.make_query(name, rdtype)
        what = f"a {rdtype} query for {name}"
        if keyring is not None:
            q.use_tsig(
                keyring,
                keyname=dns.name.from_text(dns_cfg.tsig_key_name),
                algorithm=dns_cfg.tsig_algorithm,
            )
        try:
            r = dns.query.tcp(q, server.address, port=server.port, timeout=timeout_s)
        except dns.tsig.PeerError as exc:
            raise _tsig_refused(dns_cfg, where, what, exc) from exc
        except (dns.tsig.BadSignature, dns.message.UnknownTSIGKey, dns.exception.FormError) as exc:
            if keyring is None:
                raise DnsUnavailable(f"{where} sent a malformed answer to {what}: {exc}") from exc
            raise UnsignedAnswer(
                f"{where} answered {what} (signed with the TSIG key "
                f"{dns_cfg.tsig_key_name!r}) without a valid signature from that key "
                f"({type(exc).__name__}: {exc}): the answer is not trusted; check that this "
                f"server has the key (a `key` clause in its named.conf) and that nothing else "
                f"answers on {server.address}:{server.port}"
            ) from exc
        except (dns.exception.DNSException, OSError) as exc:
            raise DnsUnavailable(
                f"{where} did not answer {what} within {timeout_s:g} s "
                f"({type(exc).__name__}: {exc}); check that it runs and is reachable"
            ) from exc
        if r.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            raise DnsUnavailable(
                f"{where} answered {dns.rcode.to_text(r.rcode())} to {what}; "
                "is it authoritative for the zone?"
            )
        return r

    def rrset(r: dns.message.Message, name: str, rdtype: str) -> list[str]:
        for rs in r.answer:
            if rs.name.to_text() == name and rs.rdtype == dns.rdatatype.from_text(rdtype):
                return sorted(rd.to_text() for rd in rs)
        return []

    a = ask(alias, "A")
    ttl = next((rs.ttl for rs in a.answer if rs.rdtype == dns.rdatatype.A), None)
    txt = rrset(ask(alias, "TXT"), alias, "TXT")
    soa = rrset(ask(zone, "SOA"), zone, "SOA")
    epochs = [int(m.group(1)) for t in txt if (m := EPOCH_RE.match(t))]
    return AliasState(
        server=f"{server.address}:{server.port}",
        addresses=rrset(a, alias, "A"),
        epoch=max(epochs) if epochs else None,
        serial=int(soa[0].split()[2]) if soa else 0,
        ttl_s=ttl,
    )


def _update(dns_cfg: Dns, key_secret: str) -> tuple[object, str, str]:
    import dns.name
    import dns.update

    zone, alias = _fqdn(dns_cfg.zone), _fqdn(dns_cfg.alias)
    upd = dns.update.UpdateMessage(
        zone,
        keyring=_keyring(dns_cfg, key_secret),
        keyname=dns.name.from_text(dns_cfg.tsig_key_name),
        keyalgorithm=dns_cfg.tsig_algorithm,
    )
    return upd, zone, alias


def _send(dns_cfg: Dns, upd: object, what: str, timeout_s: float) -> Rcode:
    """Send an update to the primary; its rcode (TsigRefused, DnsUnavailable as documented)."""
    import dns.exception
    import dns.query
    import dns.rcode
    import dns.tsig

    where = f"DNS server {dns_cfg.server}:{dns_cfg.port}"
    key = dns_cfg.tsig_key_name
    try:
        r = dns.query.tcp(upd, dns_cfg.server, port=dns_cfg.port, timeout=timeout_s)  # type: ignore[arg-type]
    except (dns.tsig.PeerError, dns.tsig.BadSignature) as exc:
        raise _tsig_refused(dns_cfg, where, what, exc) from exc
    except (dns.exception.DNSException, OSError) as exc:
        raise DnsUnavailable(
            f"{where} did not answer {what} within {timeout_s:g} s "
            f"({type(exc).__name__}: {exc}); read the alias again before retrying"
        ) from exc
    rcode = r.rcode()
    if rcode in (dns.rcode.NOTAUTH, dns.rcode.REFUSED):
        raise TsigRefused(
            f"{where} answered {dns.rcode.to_text(rcode)} to an update signed with the TSIG key "
            f"{key!r}: the key is not allowed to update {dns_cfg.zone} there (or is wrong); "
            "nothing was changed"
        )
    return rcode


def check_key(dns_cfg: Dns, key_secret: str, timeout_s: float = 3.0) -> None:
    """Check that the primary accepts the TSIG key, changing nothing.

    Raises:
        TsigRefused: the key is refused.
        DnsUnavailable: no answer, or an answer that says nothing about the key.
    """
    import dns.rcode
    import dns.rdataset

    upd, _zone, alias = _update(dns_cfg, key_secret)
    # 192.0.2.0/24 is reserved for documentation: the alias never holds exactly this
    upd.present(alias, dns.rdataset.from_text("IN", "A", 0, "192.0.2.255"))  # type: ignore[attr-defined]
    rcode = _send(dns_cfg, upd, "a key check", timeout_s)
    if rcode not in (dns.rcode.NXRRSET, dns.rcode.NOERROR):
        raise DnsUnavailable(
            f"DNS server {dns_cfg.server}:{dns_cfg.port} answered {dns.rcode.to_text(rcode)} to "
            f"a key check of {dns_cfg.tsig_key_name!r}"
        )


def move_alias(
    dns_cfg: Dns,
    key_secret: str,
    expect: list[str],
    to: str,
    epoch: int,
    *,
    expect_epoch: int | None,
    timeout_s: float = 5.0,
) -> AliasState:
    """Point the alias at `to` and set its epoch, if and only if it holds exactly `expect` and
    `expect_epoch` now.

    Args:
        dns_cfg: the site's `dns` section (primary, zone, alias, TTL, key name and algorithm).
        key_secret: the TSIG secret (base64), resolved from `dns.tsig_key`.
        expect: the addresses the alias must hold now (the compare of compare-and-set).
        to: the new address.
        epoch: the new service epoch, written beside the alias in the same update.
        expect_epoch: the epoch the alias's TXT record must hold now (None: the alias must
            have no TXT record); part of the compare, so that a replayed update fails.
        timeout_s: the bound of the update.

    Returns:
        What the primary answers afterwards (read with the key).

    Raises:
        AliasChanged: the alias holds something else now (nothing was changed).
        TsigRefused: the key was refused (nothing was changed).
        DnsUnavailable: no answer in time, or another error answer (the update may or may not
            have been applied when the connection broke: read the alias again).
    """
    return replace_addresses(
        dns_cfg, key_secret, expect, [to], epoch, expect_epoch=expect_epoch, timeout_s=timeout_s
    )


def replace_addresses(
    dns_cfg: Dns,
    key_secret: str,
    expect: list[str],
    addresses: list[str],
    epoch: int | None = None,
    *,
    expect_epoch: int | None = None,
    timeout_s: float = 5.0,
) -> AliasState:
    """Replace the alias's A records by `addresses` (a round-robin set), if and only if it holds
    exactly `expect` now (`[]`: no A record); with an `epoch`, also replace its epoch, if and
    only if its TXT record holds `expect_epoch` now (None: no TXT record).

    Raises and returns as `move_alias`.
    """
    import dns.rcode
    import dns.rdataset

    upd, _zone, alias = _update(dns_cfg, key_secret)
    where = f"DNS server {dns_cfg.server}:{dns_cfg.port}"
    # value-dependent prerequisites: their RRs carry TTL 0 (RFC 2136, 2.4.2); all of an
    # update's prerequisites must hold for any of its changes to apply
    if expect:
        upd.present(alias, dns.rdataset.from_text("IN", "A", 0, *expect))  # type: ignore[attr-defined]
    else:
        upd.absent(alias, "A")  # type: ignore[attr-defined]
    if epoch is not None:
        if expect_epoch is not None:
            txt = dns.rdataset.from_text("IN", "TXT", 0, f'"epoch={expect_epoch}"')
            upd.present(alias, txt)  # type: ignore[attr-defined]
        else:
            upd.absent(alias, "TXT")  # type: ignore[attr-defined]
    upd.replace(alias, dns_cfg.ttl_s, "A", *addresses)  # type: ignore[attr-defined]
    if epoch is not None:
        upd.replace(alias, dns_cfg.ttl_s, "TXT", f'"epoch={epoch}"')  # type: ignore[attr-defined]
    rcode = _send(dns_cfg, upd, f"the update of {alias}", timeout_s)
    primary = dns_cfg.servers()[0]
    if rcode in (dns.rcode.NXRRSET, dns.rcode.YXRRSET, dns.rcode.NXDOMAIN):
        now = read_alias(dns_cfg, primary, timeout_s, key_secret=key_secret)
        held = ", ".join(expect) or "nothing"
        if epoch is not None:
            held += f" with epoch {expect_epoch}" if expect_epoch is not None else " (no epoch)"
        raise AliasChanged(
            f"{alias} no longer holds {held}: {where} has it at "
            f"{', '.join(now.addresses) or 'nothing'} (epoch {now.epoch}); somebody else moved "
            "it, nothing was changed",
            now,
        )
    if rcode != dns.rcode.NOERROR:
        raise DnsUnavailable(
            f"{where} answered {dns.rcode.to_text(rcode)} to the update of {alias}; nothing was "
            "changed"
        )
    return read_alias(dns_cfg, primary, timeout_s, key_secret=key_secret)
