"""The lab's TLS helper: a certificate it issues verifies against its CA for a name it covers,
and fails hostname verification for a name it does not."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

import pytest

from infra.lab.tls import issue_cert, make_ca


def _handshake(ca: Path, cert: Path, key: Path, server_name: str) -> None:
    """A TLS handshake in memory: a client trusting `ca` asks for `server_name`.

    Raises:
        ssl.SSLCertVerificationError: the client refused the server's certificate.
    """
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(ca))
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_name)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for side, obj in (("client", client), ("server", server)):
            if done[side]:
                continue
            try:
                obj.do_handshake()
                done[side] = True
            except ssl.SSLWantReadError:
                pass
        if c_out.pending:
            s_in.write(c_out.read())
        if s_out.pending:
            c_in.write(s_out.read())
        if all(done.values()):
            return
    raise AssertionError("the handshake did not finish")


def test_certificate_verifies_for_covered_names_only(tmp_path: Path) -> None:
    ca, ca_key = make_ca(tmp_path / "ca")
    assert make_ca(tmp_path / "ca") == (ca, ca_key)
    assert ca.read_bytes() == make_ca(tmp_path / "ca")[0].read_bytes()  # reused, not remade
    assert stat.S_IMODE(ca_key.stat().st_mode) == 0o600
    cert, key = issue_cert(
        ca, ca_key, ["portal.ops.handover.test"], ["127.0.40.11"], tmp_path / "out", "portal"
    )
    assert (cert.name, key.name) == ("portal.pem", "portal-key.pem")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    _handshake(ca, cert, key, "portal.ops.handover.test")
    _handshake(ca, cert, key, "127.0.40.11")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(ca, cert, key, "cic.ops.handover.test")


def test_certificate_from_another_ca_is_refused(tmp_path: Path) -> None:
    ca, _ = make_ca(tmp_path / "ca")
    other, other_key = make_ca(tmp_path / "other", name="another CA")
    cert, key = issue_cert(other, other_key, ["portal.ops.handover.test"], [], tmp_path, "p")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(ca, cert, key, "portal.ops.handover.test")
