"""The service alias on the lab's real BIND9 primary and secondary: read on every authoritative
server, moved by compare-and-set with TSIG, refused when somebody else moved it or the key is
wrong (nothing changed), and a server that is down is said to be down, fast."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator

import pytest

from config.site import Dns, DnsServer
from tasks.adapters.dns import (
    AliasChanged,
    AliasState,
    DnsUnavailable,
    TsigRefused,
    move_alias,
    read_alias,
)
from tests.conftest import RunningLab, wait_for


@pytest.fixture
def dns_cfg(lab: RunningLab) -> Iterator[Dns]:
    """The lab's DNS section; the alias is put back at the first host afterwards."""
    cfg = lab.site.dns
    assert cfg is not None
    yield cfg
    first = lab.site.hosts[0].address
    now = read_alias(cfg, cfg.servers()[0])
    if now.addresses != [first]:
        move_alias(cfg, _secret(cfg), now.addresses, first, (now.epoch or 0) + 1)


def _secret(cfg: Dns) -> str:
    return cfg.tsig_key.resolve().get_secret_value()


def _everywhere(cfg: Dns) -> list[AliasState]:
    return [read_alias(cfg, s) for s in cfg.servers()]


def test_every_authoritative_server_answers_the_alias(lab: RunningLab, dns_cfg: Dns) -> None:
    states = _everywhere(dns_cfg)
    assert len(states) == 2  # the primary and its secondary, both real named processes
    first = lab.site.hosts[0].address
    for st in states:
        assert st.addresses == [first] and st.epoch is not None
        assert st.ttl_s == dns_cfg.ttl_s
    assert len({st.serial for st in states}) == 1


def test_compare_and_set_moves_the_alias_and_the_secondary_follows(
    lab: RunningLab, dns_cfg: Dns
) -> None:
    before = read_alias(dns_cfg, dns_cfg.servers()[0])
    to = lab.site.hosts[1].address
    after = move_alias(dns_cfg, _secret(dns_cfg), before.addresses, to, (before.epoch or 0) + 1)
    assert after.addresses == [to] and after.epoch == (before.epoch or 0) + 1
    assert after.serial > before.serial
    secondary = dns_cfg.secondaries[0]
    wait_for(
        lambda: read_alias(dns_cfg, secondary).serial == after.serial,
        10,
        "the secondary to transfer the new zone (NOTIFY, then IXFR/AXFR)",
    )
    st = read_alias(dns_cfg, secondary)
    assert st.addresses == [to] and st.epoch == after.epoch


def test_a_stale_compare_changes_nothing_and_says_what_is_there(
    lab: RunningLab, dns_cfg: Dns
) -> None:
    before = read_alias(dns_cfg, dns_cfg.servers()[0])
    somebody = lab.site.hosts[2].address
    # somebody else moves the alias behind the procedure's back
    move_alias(dns_cfg, _secret(dns_cfg), before.addresses, somebody, (before.epoch or 0) + 5)
    with pytest.raises(AliasChanged) as info:
        move_alias(dns_cfg, _secret(dns_cfg), before.addresses, lab.site.hosts[1].address, 99)
    assert info.value.now.addresses == [somebody]
    assert somebody in str(info.value) and "nothing was changed" in str(info.value)
    now = read_alias(dns_cfg, dns_cfg.servers()[0])
    assert now.addresses == [somebody] and now.epoch == (before.epoch or 0) + 5


def test_a_wrong_tsig_key_or_key_name_is_refused_and_changes_nothing(
    lab: RunningLab, dns_cfg: Dns
) -> None:
    before = read_alias(dns_cfg, dns_cfg.servers()[0])
    wrong = base64.b64encode(os.urandom(32)).decode()
    with pytest.raises(TsigRefused) as info:
        move_alias(dns_cfg, wrong, before.addresses, lab.site.hosts[1].address, 99)
    assert dns_cfg.tsig_key_name in str(info.value)
    assert f"{dns_cfg.server}:{dns_cfg.port}" in str(info.value)
    # an unknown key name is refused too
    other = dns_cfg.model_copy(update={"tsig_key_name": "not-the-lab-key"})
    with pytest.raises(TsigRefused):
        move_alias(other, _secret(dns_cfg), before.addresses, lab.site.hosts[1].address, 99)
    assert read_alias(dns_cfg, dns_cfg.servers()[0]) == before


def test_a_server_that_is_down_is_said_to_be_down_at_once(dns_cfg: Dns) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = dns_cfg.model_copy(update={"port": port})
    started = time.monotonic()
    with pytest.raises(DnsUnavailable, match=f"127.0.0.1:{port}"):
        read_alias(down, DnsServer(address="127.0.0.1", port=port), timeout_s=2)
    with pytest.raises(DnsUnavailable, match="did not answer the update"):
        move_alias(down, _secret(dns_cfg), ["127.0.0.9"], "127.0.0.8", 2, timeout_s=2)
    assert time.monotonic() - started < 5
