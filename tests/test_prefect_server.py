"""`handover server start`'s Prefect server: on loopback, requiring its auth string, which
handover's commands send (a real server started and stopped by PID)."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from infra import prefect_server
from tests.conftest import ROOT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, auth: str | None = None) -> int:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_local_server_requires_its_auth_string(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "prefect"
    port = _free_port()
    monkeypatch.delenv("PREFECT_API_AUTH_STRING", raising=False)
    url, started = prefect_server.ensure_server("127.0.0.1", port, home=home)
    try:
        assert started
        auth = (home / "api-auth").read_text().strip()
        assert auth.startswith("handover:") and len(auth) > 30
        assert (home / "api-auth").stat().st_mode & 0o777 == 0o600
        assert os.environ["PREFECT_API_AUTH_STRING"] == auth
        assert _get(f"{url}/health") == 200  # probes need no credentials
        assert _get(f"{url}/flows/count") in (401, 405)  # nothing without them
        assert _get(f"{url}/admin/version") == 401
        assert _get(f"{url}/admin/version", auth) == 200
        assert _get(f"{url}/admin/version", "handover:guess") == 401
        # a client of handover's (here Prefect's own, in another process) gets in with it
        code = (
            "from prefect.client.orchestration import get_client\n"
            "with get_client(sync_client=True) as c:\n"
            "    print(c.api_healthcheck() is None and c.read_flows() is not None)\n"
        )
        env = {**os.environ, "PREFECT_API_URL": url}
        ok = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert ok.stdout.strip() == "True", ok.stderr[-1500:]
        env.pop("PREFECT_API_AUTH_STRING")
        denied = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert denied.returncode != 0 and "401" in denied.stderr
    finally:
        assert prefect_server.stop_server(home)
