"""A tool's names on every DNS master of its zone, and what the clients' resolvers answer.

Each master is a primary of its own: handover reads and changes the names on each one, each
read signed with the zone's TSIG key (an answer not signed with it is not trusted) and each
change one compare-and-set update (`tasks.adapters.dns.move_alias`: the name's address and
its epoch, both). Epochs only grow: a master that holds a newer epoch than the change expects
was moved by somebody else, and is left alone.

Contract:
    * `read_names(geo, tool)` asks every master for every name (the masters side by side, each
      bounded); a master that does not answer is a `NameAnswer` with its error.
    * `keys_accepted(geo)` asks every master whether it accepts the key (a no-op update).
    * `repoint(geo, tool, to, epoch, ...)` moves every name on every master that answers, and
      says which masters were left behind (silent) and which refused (an error).
    * `resolvers_answer(geo, name)` asks each site's resolvers (recursive queries, as clients
      do) and returns what each answers.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from pydantic import BaseModel, Field

from config.site import Dns, DnsServer, Geo, Tool
from flows.plans.geo_state import NameAnswer
from tasks.adapters.dns import (
    AliasChanged,
    DnsError,
    DnsUnavailable,
    check_key,
    move_alias,
    read_alias,
)

#: the bound of each query to a master
QUERY_TIMEOUT_S = 2.0


def dns_for(geo: Geo, master: DnsServer, name: str) -> Dns:
    """The `Dns` section the alias adapter takes, for one name on one master."""
    return Dns(
        server=master.address,
        port=master.port,
        zone=geo.zone,
        alias=name,
        ttl_s=geo.ttl_s,
        tsig_key_name=geo.tsig_key_name,
        tsig_algorithm=geo.tsig_algorithm,
        tsig_key=geo.tsig_key,
    )


def master_id(master: DnsServer) -> str:
    """How a master is named in answers and reports: ``address:port``."""
    return f"{master.address}:{master.port}"


def _secret(geo: Geo) -> tuple[str | None, str]:
    try:
        return geo.tsig_key.resolve().get_secret_value(), ""
    except Exception as exc:  # noqa: BLE001 - no key, no trusted answer: said per master
        return None, f"the TSIG secret ({geo.tsig_key.describe()}) cannot be read: {exc}"


def read_name(geo: Geo, name: str, timeout_s: float = QUERY_TIMEOUT_S) -> list[NameAnswer]:
    """`name` on every master, side by side (module docstring)."""
    return read_names(geo, [name], timeout_s)


def read_names(
    geo: Geo, tool: Tool | list[str], timeout_s: float = QUERY_TIMEOUT_S
) -> list[NameAnswer]:
    """Every name of `tool` (or every name listed) on every master (module docstring)."""
    secret, why = _secret(geo)
    names = tool.names if isinstance(tool, Tool) else tool

    def one(site: str, m: DnsServer, name: str) -> NameAnswer:
        where = master_id(m)
        if secret is None:
            return NameAnswer(site=site, master=where, name=name, error=why)
        try:
            st = read_alias(dns_for(geo, m, name), m, timeout_s, key_secret=secret)
        except DnsError as exc:
            return NameAnswer(site=site, master=where, name=name, error=str(exc))
        return NameAnswer(
            site=site, master=where, name=name, addresses=st.addresses, epoch=st.epoch
        )

    jobs = [(s, m, n) for s, m in geo.masters() for n in names]
    with ThreadPoolExecutor(max_workers=min(16, len(jobs))) as ex:
        return list(ex.map(lambda j: one(*j), jobs))


def keys_accepted(geo: Geo, tool: Tool) -> tuple[dict[str, bool | None], dict[str, str]]:
    """Per master: True (accepts the key), False (refuses it), None (did not answer); and why."""
    from tasks.adapters.dns import TsigRefused

    secret, why = _secret(geo)
    ok: dict[str, bool | None] = {}
    errors: dict[str, str] = {}
    for _site, m in geo.masters():
        where = master_id(m)
        if secret is None:
            ok[where], errors[where] = False, why
            continue
        try:
            check_key(dns_for(geo, m, tool.names[0]), secret)
        except TsigRefused as exc:
            ok[where], errors[where] = False, str(exc)
        except DnsError as exc:
            ok[where], errors[where] = None, str(exc)
        else:
            ok[where] = True
    return ok, errors


class Repointed(BaseModel):
    """What a repoint did on every master."""

    #: masters that hold the new address and epoch for every name (changed or already)
    moved: list[str] = Field(default_factory=list)
    changed: list[str] = Field(default_factory=list)
    #: masters that did not answer (left behind: the drift watch repairs them)
    silent: dict[str, str] = Field(default_factory=dict)
    #: masters that answered but refused or hold a newer epoch (somebody else moved them)
    refused: dict[str, str] = Field(default_factory=dict)


def repoint(
    geo: Geo,
    tool: Tool,
    to: str,
    epoch: int,
    *,
    timeout_s: float = QUERY_TIMEOUT_S,
    only: set[str] | None = None,
) -> Repointed:
    """Point every name of `tool` at `to` with `epoch` on every master that answers (or on
    the masters of `only`, by ``address:port``).

    On each master and for each name: read what it holds (signed); the new address with the
    new epoch already: nothing to do; an epoch newer than `epoch`: refused (somebody else
    moved it); else one compare-and-set from what it holds. The masters are done side by side.
    """
    secret, why = _secret(geo)
    out = Repointed()
    if secret is None:
        out.refused = {master_id(m): why for _s, m in geo.masters()}
        return out

    def one(m: DnsServer) -> tuple[str, str, str]:
        """(master, outcome, detail) with outcome moved, changed, silent or refused."""
        where = master_id(m)
        changed = False
        for name in tool.names:
            cfg = dns_for(geo, m, name)
            try:
                now = read_alias(cfg, m, timeout_s, key_secret=secret)
                if now.addresses == [to] and now.epoch == epoch:
                    continue
                if now.epoch is not None and now.epoch > epoch:
                    return (
                        where,
                        "refused",
                        f"{name} holds epoch {now.epoch} ({', '.join(now.addresses)}), newer "
                        f"than {epoch}: somebody else moved it",
                    )
                try:
                    move_alias(cfg, secret, now.addresses, to, epoch, expect_epoch=now.epoch)
                except DnsUnavailable:
                    # the connection broke: the update may have been applied
                    again = read_alias(cfg, m, timeout_s, key_secret=secret)
                    if not (again.addresses == [to] and again.epoch == epoch):
                        raise
                changed = True
            except DnsUnavailable as exc:
                return where, "silent", str(exc)
            except AliasChanged as exc:
                return where, "refused", f"{name} changed under the update: {exc}"
            except DnsError as exc:
                return where, "refused", str(exc)
        return where, "changed" if changed else "moved", ""

    masters = [m for _s, m in geo.masters() if only is None or master_id(m) in only]
    if not masters:
        return out
    with ThreadPoolExecutor(max_workers=len(masters)) as ex:
        for where, outcome, detail in ex.map(one, masters):
            if outcome in ("moved", "changed"):
                out.moved.append(where)
                if outcome == "changed":
                    out.changed.append(where)
            elif outcome == "silent":
                out.silent[where] = detail
            else:
                out.refused[where] = detail
    return out


def resolvers_answer(geo: Geo, name: str, timeout_s: float = 1.0) -> dict[str, list[str] | str]:
    """What each site's resolvers answer for `name` (a recursive query, as a client asks):
    the addresses, or the error as a string."""
    import dns.exception
    import dns.message
    import dns.query
    import dns.rdatatype

    out: dict[str, list[str] | str] = {}
    for gs in geo.sites:
        for r in gs.resolvers:
            where = f"{gs.name} {r.address}:{r.port}"
            q = dns.message.make_query(name if name.endswith(".") else name + ".", "A")
            try:
                ans = dns.query.udp(q, r.address, port=r.port, timeout=timeout_s)
            except (dns.exception.DNSException, OSError) as exc:
                out[where] = f"no answer ({type(exc).__name__})"
                continue
            out[where] = sorted(
                rd.to_text() for rs in ans.answer if rs.rdtype == dns.rdatatype.A for rd in rs
            )
    return out
