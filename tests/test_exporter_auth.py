"""Who may read `handover exporter`'s metrics: requests without its bearer token, or with a wrong
one, get 401; it binds 127.0.0.1 unless told otherwise, refuses another address without a token,
and refuses a token file its group or others can read, or another user owns, with the fix.

Prometheus' side (the lab's real Prometheus scraping with and without the credentials file) is in
`tests/test_monitoring_loop.py`, which shares its lab.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import Gauge, make_wsgi_app
from prometheus_client.registry import CollectorRegistry

from infra.ports import free_port
from tests.conftest import LAB_DB_PORT_BASE, ROOT, _lab_numbers, make_test_site, wait_for

TOKEN = "exporter-test-token-0123456789abcdef"
NOBODY = 65534


def get(port: int, authorization: str | None = None, path: str = "/metrics") -> tuple[int, str]:
    """(HTTP status, body) of a GET to the server on 127.0.0.1:`port`."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if authorization is not None:
        req.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:  # nothing listens (yet)
        return 0, str(exc)


@pytest.fixture
def guarded() -> Iterator[int]:
    """The exporter's HTTP server, behind `TOKEN`, on a registry with one gauge; its port."""
    from infra.exporter import require_bearer, start_server

    registry = CollectorRegistry()
    Gauge("handover_test_gauge", "a gauge", registry=registry).set(7)
    port = free_port()
    server, _ = start_server(require_bearer(make_wsgi_app(registry), TOKEN), "127.0.0.1", port)
    try:
        yield port
    finally:
        server.shutdown()
        server.server_close()


def test_a_request_without_the_token_or_with_a_wrong_one_gets_401(guarded: int) -> None:
    refused = {
        "no header": None,
        "a wrong token": "Bearer " + TOKEN[:-1] + "X",
        "the token's prefix": "Bearer " + TOKEN[:8],
        "the token and more": "Bearer " + TOKEN + "X",
        "an empty token": "Bearer ",
        "another scheme": "Basic " + TOKEN,
        "the token without a scheme": TOKEN,
    }
    for what, header in refused.items():
        for path in ("/metrics", "/"):
            status, body = get(guarded, header, path)
            assert status == 401, (what, path, status)
            assert "handover_test_gauge" not in body, (what, path)
    status, body = get(guarded, f"Bearer {TOKEN}")
    assert status == 200 and "handover_test_gauge 7.0" in body, (status, body)
    # the scheme is case-insensitive (RFC 7235)
    assert get(guarded, f"bearer {TOKEN}")[0] == 200


def test_the_401_asks_for_a_bearer_token(guarded: int) -> None:
    req = urllib.request.Request(f"http://127.0.0.1:{guarded}/metrics")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=10)
    assert refused.value.code == 401
    assert refused.value.headers["WWW-Authenticate"].startswith("Bearer ")


def private_token(tmp_path: Path, text: str = TOKEN) -> Path:
    path = tmp_path / "exporter.token"
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def test_a_token_file_others_can_read_or_that_another_user_owns_is_refused(
    tmp_path: Path,
) -> None:
    from infra.exporter import ExporterError, read_token

    path = private_token(tmp_path)
    assert read_token(path) == TOKEN
    for mode in (0o640, 0o604, 0o620):
        path.chmod(mode)
        with pytest.raises(ExporterError) as refused:
            read_token(path)
        assert f"chmod 600 {path}" in str(refused.value), str(refused.value)
    path.chmod(0o600)
    assert os.geteuid() == 0, "the lab's tests run as root"
    os.chown(path, NOBODY, -1)
    with pytest.raises(ExporterError) as refused:
        read_token(path)
    assert f"chown root {path}" in str(refused.value), str(refused.value)


def test_an_empty_short_or_unsendable_token_is_refused(tmp_path: Path) -> None:
    from infra.exporter import ExporterError, read_token

    for text, said in (
        ("", "empty"),
        ("short-token", "too short"),
        ("a token with spaces in it", "printable ASCII"),
    ):
        with pytest.raises(ExporterError) as refused:
            read_token(private_token(tmp_path, text))
        assert said in str(refused.value) and "openssl rand -hex 32" in str(refused.value)
    with pytest.raises(ExporterError) as refused:
        read_token(tmp_path / "absent.token")
    assert "cannot be read" in str(refused.value)


def test_another_address_than_loopback_needs_a_token(tmp_path: Path) -> None:
    from infra.exporter import ExporterError, exporter_token

    for address in ("0.0.0.0", "::", ""):
        with pytest.raises(ExporterError) as refused:
            exporter_token(address, None)
        assert "--token-file" in str(refused.value) and "127.0.0.1" in str(refused.value)
    for address in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert exporter_token(address, None) is None, address
    assert exporter_token("0.0.0.0", private_token(tmp_path)) == TOKEN


@pytest.fixture(scope="module")
def site_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test lab's site file, on addresses of its own where no lab runs: the exporter's
    readings fail at once, and never reach a lab an operator runs."""
    n = next(_lab_numbers)
    return make_test_site(tmp_path_factory.mktemp("site"), f"labtest{n}", n, LAB_DB_PORT_BASE + n)


def exporter(site_file: Path, *args: str) -> subprocess.Popen[bytes]:
    """`handover exporter` as a process."""
    argv = ["exporter", "--site", str(site_file), "--runs", "off", *args]
    return subprocess.Popen(
        [sys.executable, "-m", "infra.cli", *argv],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "COLUMNS": "1000"},
    )


@pytest.mark.server
def test_the_exporter_refuses_to_start_on_every_interface_without_a_token(
    site_file: Path,
) -> None:
    proc = exporter(site_file, "--address", "0.0.0.0", "--port", str(free_port()))
    try:
        _, errors = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    text = errors.decode()
    assert proc.returncode == 2, text
    assert "is not a loopback address and there is no --token-file" in text, text


@pytest.mark.server
def test_the_exporter_binds_loopback_by_default(site_file: Path) -> None:
    port = free_port()
    proc = exporter(site_file, "--port", str(port), "--interval", "3600")
    try:
        wait_for(lambda: get(port)[0] == 200, 60, "the exporter to answer on 127.0.0.1")
        # every 127.0.0.0/8 address reaches a socket bound to 0.0.0.0; not one bound to 127.0.0.1
        with socket.socket() as s, pytest.raises(ConnectionRefusedError):
            s.settimeout(10)
            s.connect(("127.0.0.2", port))
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
