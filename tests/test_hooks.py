"""The cluster hooks: the Pacemaker alert agent and the Heartbeat resource script, run as the
cluster runs them (subprocesses, a minimal environment) against a signed-webhook receiver on
127.0.0.1 that checks every signature."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from config.loader import load_site
from infra.gateway.alerts import parse_generic
from infra.gateway.alerts import sign as gateway_sign
from infra.hooks.crm import alert_from_crm, classify, encode
from infra.hooks.delivery import sign
from infra.hooks.spool import spool
from infra.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
AGENT = ROOT / "infra" / "hooks" / "pacemaker_alert.py"
SWITCH = ROOT / "infra" / "hooks" / "handover-switch"
SECRET = b"s3cret-for-the-hook-tests"
TIMEOUT_S = 1.0
#: the behavioural bound: the agent always exits within its timeout plus 2 seconds; measured from
#: outside, the interpreter's start on a loaded machine comes on top (a hung agent would take the
#: receiver's 30 s)
BOUND_S = TIMEOUT_S + 2.0 + 4.0
LAB = load_site(ROOT / "config" / "sites" / "lab.yaml")


# --- a signed-webhook receiver ------------------------------------------------------------------


@dataclass
class Received:
    body: bytes
    timestamp: int
    valid: bool
    path: str

    @property
    def alert(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


class Gateway:
    """``POST /alerts/webhook`` on 127.0.0.1: checks the signature (and its 5-minute window),
    records what it got and answers `status`."""

    def __init__(self, port: int = 0) -> None:
        self.received: list[Received] = []
        self.status = 202
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                ts = self.headers.get("X-Handover-Timestamp", "")
                signature = self.headers.get("X-Handover-Signature", "")
                valid = (
                    ts.isdigit()
                    and abs(time.time() - int(ts)) <= 300
                    and self.headers.get("Content-Type") == "application/json"
                    and hmac.compare_digest(
                        "sha256="
                        + hmac.new(SECRET, ts.encode() + b"." + body, hashlib.sha256).hexdigest(),
                        signature,
                    )
                )
                gateway.received.append(Received(body, int(ts or 0), valid, self.path))
                status = gateway.status if valid else 401
                answer = json.dumps({"ok": 200 <= status < 300}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    gw = Gateway()
    yield gw
    gw.close()


# --- running the hooks as the cluster does ------------------------------------------------------


@dataclass
class Hooks:
    tmp: Path
    url: str

    @property
    def spool(self) -> Path:
        return self.tmp / "spool"

    def spooled(self) -> list[Path]:
        return sorted(self.spool.glob("*.json")) if self.spool.is_dir() else []

    def env(self, **overrides: str) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HANDOVER_HOOK_CONFIG": str(self.tmp / "no-such-config"),
            "HANDOVER_GATEWAY_URL": self.url,
            "HANDOVER_SITE": "lab",
            "HANDOVER_SERVICE": "fts-lab",
            "HANDOVER_WEBHOOK_SECRET_FILE": str(self.tmp / "secret"),
            "HANDOVER_SPOOL_DIR": str(self.spool),
            "HANDOVER_TIMEOUT_S": str(TIMEOUT_S),
            "HANDOVER_HOST_MAP": "node1=fts101,node2=fts102",
            "HANDOVER_STATE_DIR": str(self.tmp / "state"),
        }
        env.update(overrides)
        return {k: v for k, v in env.items() if v != "-"}

    def run(
        self,
        script: Path,
        *args: str,
        env: Mapping[str, str],
        stdin: bytes | None = None,
        shebang: bool = False,
    ) -> tuple[subprocess.CompletedProcess[str], float]:
        cmd = [str(script), *args] if shebang else [sys.executable, str(script), *args]
        started = time.monotonic()
        proc = subprocess.run(
            cmd,
            env=dict(env),
            input=stdin.decode() if stdin is not None else None,
            capture_output=True,
            text=True,
            timeout=30,
        )
        return proc, time.monotonic() - started

    def agent(
        self, crm: Mapping[str, str], *args: str, shebang: bool = False, **overrides: str
    ) -> tuple[subprocess.CompletedProcess[str], float]:
        return self.run(AGENT, *args, env={**self.env(**overrides), **crm}, shebang=shebang)


@pytest.fixture
def hooks(tmp_path: Path, gateway: Gateway) -> Hooks:
    (tmp_path / "secret").write_bytes(SECRET + b"\n")
    return Hooks(tmp_path, gateway.url)


def crm(kind: str, node: str, seq: int = 1, **fields: str) -> dict[str, str]:
    """A Pacemaker event's variables, as the cluster sets them."""
    env = {
        "CRM_alert_kind": kind,
        "CRM_alert_node": node,
        "CRM_alert_nodeid": "1",
        "CRM_alert_node_sequence": str(seq),
        "CRM_alert_recipient": "gateway",
        "CRM_alert_version": "2.1.5",
        "CRM_alert_timestamp": "10:00:00.000001",
        "CRM_alert_timestamp_epoch": "1700000000",
        "CRM_alert_timestamp_usec": "1",
    }
    env.update({f"CRM_alert_{k}": v for k, v in fields.items()})
    return env


NODE_LOST = crm("node", "node1", desc="lost")
NODE_MEMBER = crm("node", "node1", seq=2, desc="member")
MONITOR_FAILED = crm(
    "resource",
    "node2",
    seq=3,
    rsc="fts-agents",
    task="monitor",
    interval="10000",
    rc="7",
    target_rc="0",
    status="0",
    desc="not running",
)
FENCED = crm("fencing", "node1", seq=4, task="reboot", rc="0", desc="Operation reboot: OK")
FENCING_FAILED = crm(
    "fencing", "node1", seq=5, task="reboot", rc="1", desc="Operation reboot: Error"
)


def expect_delivered(gw: Gateway, n: int) -> list[dict[str, Any]]:
    assert len(gw.received) == n, gw.received
    assert all(r.valid and r.path == "/alerts/webhook" for r in gw.received)
    return [r.alert for r in gw.received]


# --- the Pacemaker agent ------------------------------------------------------------------------


def test_node_lost_sends_a_signed_host_down_through_the_shebang(
    hooks: Hooks, gateway: Gateway
) -> None:
    assert os.access(AGENT, os.X_OK)
    proc, _ = hooks.agent(NODE_LOST, shebang=True)
    assert proc.returncode == 0, proc.stderr
    [alert] = expect_delivered(gateway, 1)
    assert alert["site"] == "lab" and alert["service"] == "fts-lab"
    assert (alert["kind"], alert["host"], alert["severity"]) == ("host_down", "fts101", "critical")
    assert alert["source"] == "pacemaker"
    assert alert["dedup_key"] == "pacemaker:1@1700000000.1:host_down:node1:"
    assert alert["time"] == "2023-11-14T22:13:20.000001+00:00"
    assert alert["pacemaker"]["node"] == "node1" and alert["pacemaker"]["desc"] == "lost"
    assert "delivered host_down fts101" in proc.stderr
    assert hooks.spooled() == []
    # what the gateway itself makes of it
    parsed = parse_generic(LAB, gateway.received[0].body)
    assert (parsed.kind, parsed.host, parsed.source) == ("host_down", "fts101", "pacemaker")


@pytest.mark.parametrize(
    ("event", "kind", "host", "severity", "summary"),
    [
        (NODE_MEMBER, "recovered", "fts101", "info", "cluster node node1 is a cluster member"),
        (MONITOR_FAILED, "resource_failed", "fts102", "critical", "fts-agents monitor (10000"),
        (FENCED, "host_down", "fts101", "critical", "node node1 fenced"),
        (FENCING_FAILED, "host_down", "fts101", "critical", "fencing of node1 failed (rc 1)"),
    ],
)
def test_events_become_the_right_alerts(
    hooks: Hooks,
    gateway: Gateway,
    event: dict[str, str],
    kind: str,
    host: str,
    severity: str,
    summary: str,
) -> None:
    proc, _ = hooks.agent(event)
    assert proc.returncode == 0, proc.stderr
    [alert] = expect_delivered(gateway, 1)
    assert (alert["kind"], alert["host"], alert["severity"]) == (kind, host, severity)
    assert alert["summary"].startswith(summary), alert["summary"]
    if event is MONITOR_FAILED:
        assert alert["resource"] == "fts-agents"
        assert "rc 7, expected 0" in alert["summary"]
    assert parse_generic(LAB, gateway.received[0].body).kind == kind


def test_attribute_events_send_nothing(hooks: Hooks, gateway: Gateway) -> None:
    event = crm("attribute", "node1", attribute_name="pingd", attribute_value="100")
    proc, _ = hooks.agent(event)
    assert proc.returncode == 0
    assert gateway.received == []
    assert hooks.spooled() == []
    assert "attribute event (pingd) ignored" in proc.stderr


def test_gateway_down_spools_then_the_next_alert_delivers_in_order(
    hooks: Hooks, tmp_path: Path
) -> None:
    port = free_port()
    down = f"http://127.0.0.1:{port}"
    proc, elapsed = hooks.agent(NODE_LOST, HANDOVER_GATEWAY_URL=down)
    assert proc.returncode == 0 and elapsed < BOUND_S
    assert "gateway unavailable" in proc.stderr
    hooks.agent(MONITOR_FAILED, HANDOVER_GATEWAY_URL=down)
    first, second = hooks.spooled()
    assert stat.S_IMODE(first.stat().st_mode) == 0o600
    spooled_bodies = [first.read_bytes(), second.read_bytes()]
    assert json.loads(spooled_bodies[0])["kind"] == "host_down"
    assert json.loads(spooled_bodies[1])["kind"] == "resource_failed"
    spooled_at = int(time.time())

    gw = Gateway(port)  # the gateway comes back
    try:
        proc, _ = hooks.agent(NODE_MEMBER, HANDOVER_GATEWAY_URL=down)
        assert proc.returncode == 0, proc.stderr
        got = expect_delivered(gw, 3)
        # the spooled ones first, oldest first, bytes intact, signed at send time
        assert [r.body for r in gw.received[:2]] == spooled_bodies
        assert all(r.timestamp >= spooled_at for r in gw.received)
        assert [a["kind"] for a in got] == ["host_down", "resource_failed", "recovered"]
        assert hooks.spooled() == []
    finally:
        gw.close()


def test_flush_sends_the_spool(hooks: Hooks, tmp_path: Path) -> None:
    port = free_port()
    down = f"http://127.0.0.1:{port}"
    hooks.agent(FENCED, HANDOVER_GATEWAY_URL=down)
    hooks.agent(FENCING_FAILED, HANDOVER_GATEWAY_URL=down)
    assert len(hooks.spooled()) == 2
    gw = Gateway(port)
    try:
        proc, _ = hooks.run(AGENT, "--flush", env=hooks.env(HANDOVER_GATEWAY_URL=down))
        assert proc.returncode == 0
        assert [a["dedup_key"] for a in expect_delivered(gw, 2)] == [
            "pacemaker:4@1700000000.1:host_down:node1:",
            "pacemaker:5@1700000000.1:host_down:node1:",
        ]
        assert "flush: 2 sent, 0 dropped, 0 left" in proc.stderr
        assert hooks.spooled() == []
    finally:
        gw.close()


def test_a_hanging_gateway_cannot_hold_the_agent(hooks: Hooks) -> None:
    with socket.socket() as listener:  # accepts connections (the kernel does) and never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        proc, elapsed = hooks.agent(NODE_LOST, HANDOVER_GATEWAY_URL=url)
    assert proc.returncode == 0
    assert elapsed < BOUND_S
    assert len(hooks.spooled()) == 1
    assert "no answer within" in proc.stderr or "timed out" in proc.stderr


def test_a_refusal_is_dropped_and_a_503_spooled(hooks: Hooks, gateway: Gateway) -> None:
    gateway.status = 400
    proc, _ = hooks.agent(NODE_LOST)
    assert proc.returncode == 0
    assert len(gateway.received) == 1
    assert "refused" in proc.stderr and "dropped" in proc.stderr
    assert hooks.spooled() == []

    gateway.status = 503
    proc, _ = hooks.agent(NODE_LOST)
    assert proc.returncode == 0
    assert len(hooks.spooled()) == 1
    assert "503" in proc.stderr


def test_an_unwritable_spool_still_exits_0(hooks: Hooks, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    spool_dir = tmp_path / "a-file" / "spool"  # not creatable, even by root
    proc, elapsed = hooks.agent(
        NODE_LOST,
        HANDOVER_GATEWAY_URL=f"http://127.0.0.1:{free_port()}",
        HANDOVER_SPOOL_DIR=str(spool_dir),
    )
    assert proc.returncode == 0 and elapsed < BOUND_S
    assert "cannot spool" in proc.stderr and "alert lost" in proc.stderr


def test_a_missing_configuration_still_exits_0(hooks: Hooks, gateway: Gateway) -> None:
    env = {"PATH": os.environ.get("PATH", ""), "HANDOVER_HOOK_CONFIG": "/nonexistent", **NODE_LOST}
    proc, elapsed = hooks.run(AGENT, env=env)
    assert proc.returncode == 0 and elapsed < BOUND_S
    assert "HANDOVER_SITE is not set" in proc.stderr
    assert gateway.received == []

    # a malformed environment: no event kind, a timeout that is not a number
    proc, _ = hooks.agent({"CRM_alert_kind": ""}, HANDOVER_TIMEOUT_S="soon")
    assert proc.returncode == 0
    assert "unknown event kind" in proc.stderr


def test_without_a_secret_the_alert_waits_in_the_spool(hooks: Hooks, gateway: Gateway) -> None:
    proc, _ = hooks.agent(NODE_LOST, HANDOVER_WEBHOOK_SECRET_FILE="-")
    assert proc.returncode == 0
    assert "not configured" in proc.stderr
    assert len(hooks.spooled()) == 1 and gateway.received == []


def test_the_config_file_completes_the_environment(
    hooks: Hooks, gateway: Gateway, tmp_path: Path
) -> None:
    conf = tmp_path / "hooks.env"
    conf.write_text(
        "# the hook's settings\n"
        f"HANDOVER_GATEWAY_URL={gateway.url}\n"
        "export HANDOVER_SITE='lab'\n"
        'HANDOVER_SERVICE="fts-lab"\n'
        "HANDOVER_HOST_MAP=node1=fts105\n"
    )
    env = hooks.env(
        HANDOVER_HOOK_CONFIG=str(conf),
        HANDOVER_GATEWAY_URL="-",
        HANDOVER_SITE="-",
        HANDOVER_SERVICE="-",
        HANDOVER_HOST_MAP="-",
    )
    proc, _ = hooks.run(AGENT, env={**env, **NODE_LOST})
    assert proc.returncode == 0, proc.stderr
    [alert] = expect_delivered(gateway, 1)
    assert (alert["site"], alert["host"]) == ("lab", "fts105")


def test_dry_run_prints_the_alert_and_sends_nothing(hooks: Hooks, gateway: Gateway) -> None:
    proc, _ = hooks.agent(MONITOR_FAILED, "--dry-run")
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["kind"] == "resource_failed"
    assert gateway.received == [] and hooks.spooled() == []


def test_send_json_sends_a_body_from_stdin(hooks: Hooks, gateway: Gateway) -> None:
    body = {"site": "lab", "host": "fts106", "service": "fts-lab", "kind": "service_down"}
    body |= {"time": "2024-01-01T00:00:00+00:00", "summary": "a test", "source": "test"}
    proc, _ = hooks.run(AGENT, "--send-json", env=hooks.env(), stdin=json.dumps(body).encode())
    assert proc.returncode == 0, proc.stderr
    assert expect_delivered(gateway, 1) == [body]

    proc, _ = hooks.run(AGENT, "--send-json", env=hooks.env(), stdin=b"not json")
    assert proc.returncode == 0 and "not JSON" in proc.stderr
    assert len(gateway.received) == 1


def test_the_watchdog_ends_a_stuck_agent(hooks: Hooks) -> None:
    """Whatever holds the agent (here: standard input that never ends), it exits 0 in time."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, str(AGENT), "--send-json"],
        env=hooks.env(),
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.wait(timeout=BOUND_S + 5) == 0
        assert time.monotonic() - started < BOUND_S
        assert proc.stderr is not None and "deadline" in proc.stderr.read()
    finally:
        proc.kill()
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait()


def test_the_spool_is_bounded(tmp_path: Path) -> None:
    lines: list[str] = []
    for i in range(5):
        spool(tmp_path, encode({"n": i}), max_files=3, log=lines.append)
    kept = sorted(tmp_path.glob("*.json"))
    assert [json.loads(p.read_bytes())["n"] for p in kept] == [2, 3, 4]
    assert len(lines) == 2 and all("dropped the oldest" in line for line in lines)
    assert list(tmp_path.glob(".tmp-*")) == []


# --- the mapping (pure) -------------------------------------------------------------------------


def _map(env: Mapping[str, str]) -> dict[str, Any] | None:
    return alert_from_crm(env, site="lab", service="fts-lab", host_map={"node1": "fts101"})


def test_dedup_key_is_stable_for_the_same_event() -> None:
    first = _map(MONITOR_FAILED)
    again = _map({**MONITOR_FAILED, "CRM_alert_recipient": "another-gateway"})
    assert first is not None and again is not None
    assert (
        first["dedup_key"]
        == again["dedup_key"]
        == "pacemaker:3@1700000000.1:resource_failed:node2:fts-agents"
    )
    assert encode(first) == encode(_map(MONITOR_FAILED) or {})
    other = _map({**MONITOR_FAILED, "CRM_alert_node_sequence": "9"})
    assert other is not None and other["dedup_key"] != first["dedup_key"]
    # Pacemaker restarted: its node sequence starts again, and a later failure with a sequence
    # seen before is a new alert, not a repeat (the gateway would drop its event as one)
    later = _map({**MONITOR_FAILED, "CRM_alert_timestamp_epoch": "1700086400"})
    assert later is not None and later["dedup_key"] != first["dedup_key"]


@pytest.mark.parametrize(
    ("fields", "kind"),
    [
        ({"task": "start", "rc": "0", "target_rc": "0", "status": "0"}, "recovered"),
        ({"task": "start", "rc": "1", "target_rc": "0", "status": "0"}, "resource_failed"),
        ({"task": "monitor", "interval": "0", "rc": "0", "target_rc": "7"}, None),  # a probe
        ({"task": "monitor", "interval": "10000", "rc": "0", "target_rc": "0"}, "recovered"),
        ({"task": "monitor", "interval": "10000", "rc": "0", "status": "2"}, "resource_failed"),
        ({"task": "monitor", "interval": "10000", "status": "1", "desc": "Cancelled"}, None),
        ({"task": "stop", "rc": "0", "target_rc": "0", "status": "0"}, None),
        ({"task": "stop", "rc": "1", "target_rc": "0", "status": "0"}, "resource_failed"),
        ({"task": "notify", "rc": "1", "target_rc": "0", "status": "0"}, None),
    ],
)
def test_resource_operations(fields: dict[str, str], kind: str | None) -> None:
    event = crm("resource", "node1", rsc="fts-agents", target_rc="0")
    event.update({f"CRM_alert_{k}": v for k, v in fields.items()})
    alert = _map(event)
    assert (alert or {}).get("kind") == kind
    # the same operation of the front end's resource: its failure asks for the switch
    alert = _map({**event, "CRM_alert_rsc": "fts-frontend"})
    want = "frontend_down" if kind == "resource_failed" else kind
    assert (alert or {}).get("kind") == want


def test_ignored_events_say_why() -> None:
    for event, reason in [
        (crm("attribute", "node1", attribute_name="x"), "attribute event"),
        (crm("node", "node1", desc="pending"), "state 'pending' ignored"),
        (crm("bogus", "node1"), "unknown event kind 'bogus'"),
        ({"CRM_alert_kind": "node"}, "without CRM_alert_node"),
    ]:
        alert, why = classify(event, site="lab", service="fts-lab")
        assert alert is None and reason in why


def test_without_a_timestamp_the_alert_takes_now() -> None:
    event = {k: v for k, v in NODE_LOST.items() if "timestamp" not in k}
    now = dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC)
    alert = alert_from_crm(event, site="lab", service="fts-lab", now=now)
    assert alert is not None and alert["time"] == now.isoformat()


def test_the_signature_is_the_gateways() -> None:
    body = b'{"kind":"host_down"}'
    assert sign(SECRET, 1700000000, body) == gateway_sign(SECRET, 1700000000, body)
    assert sign(SECRET, 1700000000, body).startswith("sha256=")


# --- the Heartbeat script -----------------------------------------------------------------------


def test_heartbeat_start_status_stop(hooks: Hooks, gateway: Gateway) -> None:
    assert os.access(SWITCH, os.X_OK)
    env = hooks.env()
    proc, _ = hooks.run(SWITCH, "node2", "start", env=env, shebang=True)
    assert proc.returncode == 0, proc.stderr
    [alert] = expect_delivered(gateway, 1)
    assert (alert["kind"], alert["host"], alert["source"]) == (
        "frontend_down",
        "fts102",
        "heartbeat",
    )
    node = os.uname().nodename
    assert alert["takeover_node"] == node
    assert alert["summary"] == f"heartbeat takeover on {node}: switch the service here"
    assert parse_generic(LAB, gateway.received[0].body).kind == "frontend_down"

    proc, _ = hooks.run(SWITCH, "node2", "status", env=env)
    assert (proc.returncode, proc.stdout.strip()) == (0, "running")

    # start again: still served here, nothing asked twice
    proc, _ = hooks.run(SWITCH, "node2", "start", env=env)
    assert proc.returncode == 0
    assert len(gateway.received) == 1
    proc, _ = hooks.run(SWITCH, "status", env=env)
    assert (proc.returncode, proc.stdout.strip()) == (0, "running")

    for _ in range(2):  # stop is idempotent
        proc, _ = hooks.run(SWITCH, "node2", "stop", env=env)
        assert proc.returncode == 0
        proc, _ = hooks.run(SWITCH, "status", env=env)
        assert (proc.returncode, proc.stdout.strip()) == (3, "stopped")


def test_heartbeat_start_with_the_gateway_down_spools_and_succeeds(hooks: Hooks) -> None:
    env = hooks.env(
        HANDOVER_GATEWAY_URL=f"http://127.0.0.1:{free_port()}", HANDOVER_PEER_HOST="fts101"
    )
    proc, elapsed = hooks.run(SWITCH, "start", env=env)
    assert proc.returncode == 0 and elapsed < BOUND_S
    [spooled] = hooks.spooled()
    alert = json.loads(spooled.read_bytes())
    assert (alert["host"], alert["kind"]) == ("fts101", "frontend_down")
    proc, _ = hooks.run(SWITCH, "status", env=env)
    assert (proc.returncode, proc.stdout.strip()) == (0, "running")


def test_the_ha_group_daemons_election_asks_for_the_switch(hooks: Hooks, gateway: Gateway) -> None:
    # hagd calls SCRIPT ACTION GROUP, with the group's last master in its environment
    env = hooks.env(HAGD_GROUP="fts", HAGD_MASTER="fts101", HAGD_ID="fts102")
    proc, _ = hooks.run(SWITCH, "start", "fts", env=env)
    assert proc.returncode == 0, proc.stderr
    [alert] = expect_delivered(gateway, 1)
    assert (alert["kind"], alert["host"], alert["source"]) == ("frontend_down", "fts101", "hagd")
    assert "hagd group fts elected" in alert["summary"]
    proc, _ = hooks.run(SWITCH, "status", "fts", env=env)
    assert (proc.returncode, proc.stdout.strip()) == (0, "running")
    proc, _ = hooks.run(SWITCH, "stop", "fts", env=env)
    assert proc.returncode == 0
    proc, _ = hooks.run(SWITCH, "status", "fts", env=env)
    assert (proc.returncode, proc.stdout.strip()) == (3, "stopped")


def test_heartbeat_rejects_an_unknown_action(hooks: Hooks) -> None:
    proc, _ = hooks.run(SWITCH, "reticulate", env=hooks.env())
    assert proc.returncode == 2 and "usage" in proc.stderr


# --- inputs that must not lose the alert or hold the agent --------------------------------------


def test_a_fifo_as_config_file_cannot_hold_the_agent(hooks: Hooks, gateway: Gateway) -> None:
    fifo = hooks.tmp / "hooks.env"
    os.mkfifo(fifo)  # nobody ever writes to it: reading it would block forever
    proc, elapsed = hooks.agent(NODE_LOST, HANDOVER_HOOK_CONFIG=str(fifo))
    assert proc.returncode == 0 and elapsed < BOUND_S, proc.stderr
    expect_delivered(gateway, 1)


def test_a_fifo_as_secret_file_is_ended_by_the_watchdog(hooks: Hooks) -> None:
    fifo = hooks.tmp / "secret-fifo"
    os.mkfifo(fifo)
    proc, elapsed = hooks.agent(NODE_LOST, HANDOVER_WEBHOOK_SECRET_FILE=str(fifo))
    assert proc.returncode == 0 and elapsed < BOUND_S, proc.stderr
    assert "deadline" in proc.stderr


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "soon"])
def test_a_timeout_that_is_no_number_of_seconds_still_delivers(
    hooks: Hooks, gateway: Gateway, value: str
) -> None:
    proc, elapsed = hooks.agent(NODE_LOST, HANDOVER_TIMEOUT_S=value)
    assert proc.returncode == 0 and elapsed < BOUND_S + 3.0, proc.stderr
    expect_delivered(gateway, 1)


def test_a_timestamp_no_clock_can_show_is_timed_now(hooks: Hooks, gateway: Gateway) -> None:
    event = {**NODE_LOST, "CRM_alert_timestamp_epoch": "99999999999999999"}
    proc, _ = hooks.agent(event)
    assert proc.returncode == 0, proc.stderr
    [alert] = expect_delivered(gateway, 1)
    when = dt.datetime.fromisoformat(alert["time"])
    assert abs((dt.datetime.now(dt.UTC) - when).total_seconds()) < 300


def test_a_long_description_is_truncated_not_refused(hooks: Hooks) -> None:
    event = {**MONITOR_FAILED, "CRM_alert_desc": "x" * 5000}
    alert = alert_from_crm(event, site="lab", service="fts-lab", host_map={"node2": "fts102"})
    assert alert is not None
    assert len(alert["summary"]) <= 1000 and alert["summary"].endswith("(truncated)")
    assert len(alert["pacemaker"]["desc"]) <= 1000
    # the gateway takes it
    parsed = parse_generic(LAB, encode(alert))
    assert parsed.kind == "resource_failed"
