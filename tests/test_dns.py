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
from tasks.alias import read_aliases
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
        move_alias(
            cfg, _secret(cfg), now.addresses, first, (now.epoch or 0) + 1, expect_epoch=now.epoch
        )


def _secret(cfg: Dns) -> str:
    return cfg.tsig_key.resolve().get_secret_value()


def _everywhere(cfg: Dns) -> list[AliasState]:
    return [read_alias(cfg, s, key_secret=_secret(cfg)) for s in cfg.servers()]


def test_every_authoritative_server_answers_the_alias(lab: RunningLab, dns_cfg: Dns) -> None:
    # asked over TSIG: both servers hold the key and sign their answers with it
    states = _everywhere(dns_cfg)
    assert len(states) == 2  # the primary and its secondary, both real named processes
    first = lab.site.hosts[0].address
    for st in states:
        assert st.addresses == [first] and st.epoch is not None
        assert st.ttl_s == dns_cfg.ttl_s
    assert len({st.serial for st in states}) == 1
    assert [a.model_dump() for a in read_aliases(lab.site)] == [
        {
            "server": st.server,
            "addresses": st.addresses,
            "epoch": st.epoch,
            "serial": st.serial,
            "error": "",
        }
        for st in states
    ]


def test_compare_and_set_moves_the_alias_and_the_secondary_follows(
    lab: RunningLab, dns_cfg: Dns
) -> None:
    before = read_alias(dns_cfg, dns_cfg.servers()[0])
    to = lab.site.hosts[1].address
    after = move_alias(
        dns_cfg,
        _secret(dns_cfg),
        before.addresses,
        to,
        (before.epoch or 0) + 1,
        expect_epoch=before.epoch,
    )
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
    move_alias(
        dns_cfg,
        _secret(dns_cfg),
        before.addresses,
        somebody,
        (before.epoch or 0) + 5,
        expect_epoch=before.epoch,
    )
    with pytest.raises(AliasChanged) as info:
        move_alias(
            dns_cfg,
            _secret(dns_cfg),
            before.addresses,
            lab.site.hosts[1].address,
            99,
            expect_epoch=before.epoch,
        )
    assert info.value.now.addresses == [somebody]
    assert somebody in str(info.value) and "nothing was changed" in str(info.value)
    now = read_alias(dns_cfg, dns_cfg.servers()[0])
    assert now.addresses == [somebody] and now.epoch == (before.epoch or 0) + 5


def test_a_wrong_tsig_key_or_key_name_is_refused_and_changes_nothing(
    lab: RunningLab, dns_cfg: Dns
) -> None:
    before = read_alias(dns_cfg, dns_cfg.servers()[0])
    wrong = base64.b64encode(os.urandom(32)).decode()
    to = lab.site.hosts[1].address
    with pytest.raises(TsigRefused) as info:
        move_alias(dns_cfg, wrong, before.addresses, to, 99, expect_epoch=before.epoch)
    assert dns_cfg.tsig_key_name in str(info.value)
    assert f"{dns_cfg.server}:{dns_cfg.port}" in str(info.value)
    # an unknown key name is refused too
    other = dns_cfg.model_copy(update={"tsig_key_name": "not-the-lab-key"})
    with pytest.raises(TsigRefused):
        move_alias(other, _secret(dns_cfg), before.addresses, to, 99, expect_epoch=before.epoch)
    assert read_alias(dns_cfg, dns_cfg.servers()[0]) == before
    # and so are queries signed with either
    for cfg, secret in ((dns_cfg, wrong), (other, _secret(dns_cfg))):
        for server in dns_cfg.servers():
            with pytest.raises(TsigRefused, match=f"refused the TSIG key {cfg.tsig_key_name!r}"):
                read_alias(cfg, server, key_secret=secret)


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
        move_alias(
            down, _secret(dns_cfg), ["127.0.0.9"], "127.0.0.8", 2, expect_epoch=1, timeout_s=2
        )
    assert time.monotonic() - started < 5


def _send_raw(cfg: Dns, wire: bytes) -> int:
    """Send `wire` (one DNS message, as captured) to the primary over TCP; its answer's rcode."""
    import socket
    import struct

    import dns.message

    with socket.create_connection((cfg.server, cfg.port), timeout=5) as s:
        s.sendall(struct.pack("!H", len(wire)) + wire)
        head = s.recv(2, socket.MSG_WAITALL)
        (size,) = struct.unpack("!H", head)
        body = s.recv(size, socket.MSG_WAITALL)
    # the answer is signed with the key; its signature is not what this test is about
    return int(dns.message.from_wire(body, keyring=False).rcode())


def test_an_update_replayed_after_a_switch_back_is_refused(
    lab: RunningLab, dns_cfg: Dns, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dns.opcode
    import dns.query
    import dns.rcode

    sent: list[bytes] = []
    real_send = dns.query.send_tcp

    def capture(sock: object, what: bytes, expiration: float | None = None) -> tuple[int, float]:
        if dns.opcode.from_flags(int.from_bytes(what[2:4], "big")) == dns.opcode.UPDATE:
            sent.append(what)
        return real_send(sock, what, expiration)

    monkeypatch.setattr(dns.query, "send_tcp", capture)
    a = read_alias(dns_cfg, dns_cfg.servers()[0])
    b_address = lab.site.hosts[1].address
    # the switch A -> B, its UPDATE captured off the wire ...
    move_alias(
        dns_cfg, _secret(dns_cfg), a.addresses, b_address, (a.epoch or 0) + 1, expect_epoch=a.epoch
    )
    [captured] = sent
    # ... and the switch back B -> A, with a newer epoch
    move_alias(
        dns_cfg,
        _secret(dns_cfg),
        [b_address],
        a.addresses[0],
        (a.epoch or 0) + 2,
        expect_epoch=(a.epoch or 0) + 1,
    )
    back = read_alias(dns_cfg, dns_cfg.servers()[0])
    assert back.addresses == a.addresses and back.epoch == (a.epoch or 0) + 2
    # the captured UPDATE replayed within the key's time window: its prerequisite names the
    # epoch it replaced, which no longer holds
    assert dns.rcode.to_text(dns.rcode.Rcode(_send_raw(dns_cfg, captured))) == "NXRRSET"
    now = read_alias(dns_cfg, dns_cfg.servers()[0])
    assert (now.addresses, now.epoch, now.serial) == (back.addresses, back.epoch, back.serial)


class _Impostor:
    """A DNS server on loopback that answers every query with the alias at 127.0.0.66, either
    unsigned or signed with a key of the same name but another secret (a spoofed answer)."""

    def __init__(self, cfg: Dns, sign_with: str | None) -> None:
        import socket
        import threading

        self.cfg, self.sign_with = cfg, sign_with
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        import struct

        import dns.message
        import dns.name
        import dns.rrset
        import dns.tsig

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            with conn:
                (size,) = struct.unpack("!H", conn.recv(2, 0x100))
                q = dns.message.from_wire(conn.recv(size, 0x100), keyring=False)
                r = dns.message.make_response(q)
                name = q.question[0].name
                r.answer.append(dns.rrset.from_text(name, 5, "IN", "A", "127.0.0.66"))
                if self.sign_with is not None:
                    key = dns.tsig.Key(
                        self.cfg.tsig_key_name, self.sign_with, self.cfg.tsig_algorithm
                    )
                    r.use_tsig(key)
                wire = r.to_wire()
                conn.sendall(struct.pack("!H", len(wire)) + wire)

    def close(self) -> None:
        import socket

        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.sock.close()
        self.thread.join(5)
        assert not self.thread.is_alive()


@pytest.mark.parametrize("sign_with", [None, "another secret"])
def test_an_answer_not_signed_with_the_key_is_not_trusted(
    lab: RunningLab, dns_cfg: Dns, sign_with: str | None
) -> None:
    secret = base64.b64encode(sign_with.encode()).decode() if sign_with else None
    impostor = _Impostor(dns_cfg, secret)
    try:
        fake = DnsServer(address="127.0.0.1", port=impostor.port)
        # the impostor stands where the secondary should be
        site = lab.site.model_copy(
            update={"dns": dns_cfg.model_copy(update={"secondaries": [fake]})}
        )
        primary, second = read_aliases(site)
    finally:
        impostor.close()
    assert not primary.error and primary.addresses == [lab.site.hosts[0].address]
    assert second.addresses == [] and second.epoch is None, second
    assert f"127.0.0.1:{impostor.port}" in second.error and "not trusted" in second.error
    assert dns_cfg.tsig_key_name in second.error
