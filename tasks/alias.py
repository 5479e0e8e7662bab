"""The alias verbs: read the service alias on every authoritative server, and move it.

`move_service_alias` is idempotent (an alias already at the new address with the new epoch is
left alone), sends one compare-and-set update (`tasks.adapters.dns.move_alias`: the address and
the epoch the alias holds now, both), and verifies that every authoritative server answers the
new address and epoch within a bound (the secondaries transfer the zone after the primary's
NOTIFY).

Every read here is signed with the site's TSIG key and takes only answers signed with it: what
the switch plans from and what it verifies is what the servers that hold the key answered.
"""

from __future__ import annotations

import time

from config.site import Site
from flows.plans.switch import AliasAnswer
from tasks.adapters.dns import DnsError, DnsUnavailable, check_key, move_alias, read_alias
from tasks.outcome import StepFailed, StepResult, now

#: how long the secondaries may take to answer what the primary answers
SECONDARIES_WAIT_S = 10.0


def read_aliases(site: Site, timeout_s: float = 3.0) -> list[AliasAnswer]:
    """What every authoritative server answers for the alias (the primary first), each asked
    with queries signed with the site's TSIG key; an answer not signed with it is an error."""
    assert site.dns is not None
    try:
        secret: str | None = site.dns.tsig_key.resolve().get_secret_value()
        unreadable = ""
    except Exception as exc:  # noqa: BLE001 - no key, no trusted answer: said per server
        secret, unreadable = None, str(exc)
    out = []
    for srv in site.dns.servers():
        where = f"{srv.address}:{srv.port}"
        if secret is None:
            out.append(
                AliasAnswer(
                    server=where,
                    error=f"not asked: the TSIG secret ({site.dns.tsig_key.describe()}) to "
                    f"sign the queries with cannot be read: {unreadable}",
                )
            )
            continue
        try:
            st = read_alias(site.dns, srv, timeout_s, key_secret=secret)
        except DnsError as exc:
            out.append(AliasAnswer(server=where, error=str(exc)))
        else:
            out.append(
                AliasAnswer(server=where, addresses=st.addresses, epoch=st.epoch, serial=st.serial)
            )
    return out


def key_accepted(site: Site) -> tuple[bool | None, str]:
    """(True, "") when the primary accepts the TSIG key; (False, why) when it refuses it;
    (None, why) when it could not be asked."""
    from tasks.adapters.dns import TsigRefused

    assert site.dns is not None
    try:
        secret = site.dns.tsig_key.resolve().get_secret_value()
    except Exception as exc:  # noqa: BLE001 - a secret that cannot be read is a refusal
        return False, f"the TSIG secret ({site.dns.tsig_key.describe()}) cannot be read: {exc}"
    try:
        check_key(site.dns, secret)
    except TsigRefused as exc:
        return False, str(exc)
    except DnsError as exc:
        return None, str(exc)
    return True, ""


def _agree(answers: list[AliasAnswer], to: str, epoch: int) -> list[str]:
    return [
        f"{a.server} ({a.error or ', '.join(a.addresses) or 'nothing'}, epoch {a.epoch})"
        for a in answers
        if a.error or a.addresses != [to] or a.epoch != epoch
    ]


def move_service_alias(
    site: Site, expect: list[str], to: str, epoch: int, expect_epoch: int | None
) -> StepResult:
    """Point the alias at `to` with `epoch` if it holds `expect` and `expect_epoch` (see the
    module docstring).

    Raises:
        AliasChanged: somebody else moved the alias (nothing was changed).
        TsigRefused: the key was refused (nothing was changed).
        DnsUnavailable: the primary did not answer and the alias was not moved.
        StepFailed: the update was applied but a server still answers otherwise after the bound.
    """
    assert site.dns is not None
    dns_cfg = site.dns
    verb = "move-alias"
    host = f"{dns_cfg.server}:{dns_cfg.port}"
    started = now()
    secret = dns_cfg.tsig_key.resolve().get_secret_value()
    primary = read_alias(dns_cfg, dns_cfg.servers()[0], key_secret=secret)
    changed = not (primary.addresses == [to] and primary.epoch == epoch)
    if changed:
        try:
            move_alias(dns_cfg, secret, expect, to, epoch, expect_epoch=expect_epoch)
        except DnsUnavailable:
            # the connection broke: the update may have been applied
            again = read_alias(dns_cfg, dns_cfg.servers()[0], key_secret=secret)
            if not (again.addresses == [to] and again.epoch == epoch):
                raise
    deadline = time.monotonic() + SECONDARIES_WAIT_S
    lagging = _agree(read_aliases(site), to, epoch)
    while lagging and time.monotonic() < deadline:
        time.sleep(0.1)
        lagging = _agree(read_aliases(site), to, epoch)
    if lagging:
        raise StepFailed(
            f"the alias {dns_cfg.alias} was moved to {to} (epoch {epoch}) on the primary, but "
            f"after {SECONDARIES_WAIT_S:g} s these servers still answer otherwise: "
            f"{'; '.join(lagging)}; check their zone transfers (`rndc retransfer "
            f"{dns_cfg.zone}`)",
            host=host,
            verb=verb,
        )
    servers = len(dns_cfg.servers())
    return StepResult(
        host=host,
        verb=verb,
        changed=[dns_cfg.alias] if changed else [],
        unchanged=[] if changed else [dns_cfg.alias],
        sentence=(
            f"{dns_cfg.alias} moved from {', '.join(expect)} to {to} with epoch {epoch} "
            "(compare-and-set)"
            if changed
            else f"{dns_cfg.alias} already pointed at {to} with epoch {epoch}"
        )
        + f"; all {servers} authoritative servers answer it",
        commands=[
            f"UPDATE {dns_cfg.zone}: prereq {dns_cfg.alias} A {' '.join(expect)}, "
            + (f'TXT "epoch={expect_epoch}"' if expect_epoch is not None else "no TXT")
            + f'; replace A {to}, TXT "epoch={epoch}" (TSIG {dns_cfg.tsig_key_name})'
        ]
        if changed
        else [],
        started_at=started,
        ended_at=now(),
    )
