"""The lab's monitoring (`handover lab up --monitoring`): Debian's Prometheus and Alertmanager
on handover's sensors, so that a fault reaches the gateway with nothing typed.

* `handover exporter` reads the lab every half second (`infra.exporter`), and answers requests that
  carry its bearer token (``<state>/monitoring/exporter.token``, made at each start) only;
* Prometheus scrapes it every half second as the shipped configuration does
  (`infra/monitoring/prometheus.yml`: the token from a ``credentials_file``) and evaluates the
  shipped rules (`infra/monitoring/handover-rules.yml`) every half second, with the lab site's
  shorter ``for`` (`alerts.rule_for_s`, `handover rules`: a crash is acted on after 2 s of a host
  down, not a minute);
* Alertmanager routes the alerts that carry ``handover_kind`` as the shipped configuration does
  (`infra/monitoring/alertmanager.yml`), to the gateway that `route_to` names (with its bearer
  token in a file); until then to no receiver.

Everything listens on 127.0.0.1 on ports chosen free at start, keeps its data under
``<state>/monitoring``, and is stopped by PID with the lab.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from config.loader import load_site
from infra.lab.errors import LabError
from infra.lab.host import alive
from infra.ports import free_port
from infra.rules import rules_text

ROOT = Path(__file__).resolve().parents[2]
ALERTMANAGER = ROOT / "infra" / "monitoring" / "alertmanager.yml"
PROMETHEUS = ROOT / "infra" / "monitoring" / "prometheus.yml"
BINARIES = {"prometheus": "prometheus", "alertmanager": "prometheus-alertmanager"}


def missing() -> list[str]:
    """The binaries the lab's monitoring needs and does not find."""
    return [f"{b} (Debian package {b})" for b in BINARIES.values() if shutil.which(b) is None]


def prometheus_config(
    exporter_port: int, alertmanager_port: int, rules: Path, token_file: Path
) -> dict[str, Any]:
    """The shipped Prometheus configuration with the lab's addresses, rules, token file and
    half-second intervals."""
    data: dict[str, Any] = yaml.safe_load(PROMETHEUS.read_text())
    data["global"] = {"scrape_interval": "500ms", "evaluation_interval": "500ms"}
    data["rule_files"] = [str(rules)]
    [am] = data["alerting"]["alertmanagers"]
    am["static_configs"] = [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]
    # the lab's Prometheus scrapes the exporter only: the gateways' and the balancer's jobs
    # would name hosts the lab does not have, and page as down
    data["scrape_configs"] = [j for j in data["scrape_configs"] if j["job_name"] == "handover"]
    [job] = data["scrape_configs"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{exporter_port}"]}]
    job["authorization"]["credentials_file"] = str(token_file)
    return data


def write_token(path: Path) -> str:
    """A new random bearer token in `path` (mode 0600, this user's), replacing any old one."""
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(token + "\n")
    return token


def alertmanager_config(gateway: str | None, token_file: Path | None) -> dict[str, Any]:
    """The shipped Alertmanager configuration, its gateway and token replaced (no gateway: the
    handover receiver sends nothing)."""
    data: dict[str, Any] = yaml.safe_load(ALERTMANAGER.read_text())
    data["route"]["group_interval"] = "5s"
    for r in data["receivers"]:
        if r["name"] != "handover":
            continue
        if gateway is None or token_file is None:
            r.pop("webhook_configs", None)
            continue
        hook = r["webhook_configs"][0]
        hook["url"] = gateway.rstrip("/") + "/alerts/alertmanager"
        hook["http_config"]["authorization"]["credentials_file"] = str(token_file)
    return data


class LabMonitoring:
    """The exporter, Prometheus and Alertmanager of one lab."""

    def __init__(self, root: Path, site_file: Path, log_dir: Path) -> None:
        self.dir = root / "monitoring"
        self.site_file = site_file
        self.log_dir = log_dir
        #: the exporter's bearer token, which Prometheus reads as its credentials_file
        self.token_file = self.dir / "exporter.token"
        self.token = ""

    def start(self) -> dict[str, Any]:
        """Start the three processes; their PIDs, ports and the exporter's token file (for the
        lab's record)."""
        absent = missing()
        if absent:
            raise LabError("--monitoring needs " + "; ".join(absent))
        self.dir.mkdir(parents=True, exist_ok=True)
        ports = {"exporter": free_port(), "prometheus": free_port(), "alertmanager": free_port()}
        (self.dir / "rules.yml").write_text(rules_text(load_site(self.site_file)))
        self.token = write_token(self.token_file)
        (self.dir / "prometheus.yml").write_text(
            yaml.safe_dump(
                prometheus_config(
                    ports["exporter"],
                    ports["alertmanager"],
                    self.dir / "rules.yml",
                    self.token_file,
                ),
                sort_keys=False,
            )
        )
        self.write_alertmanager(None, None)
        pids = {
            "exporter": self._spawn(
                "exporter",
                [
                    sys.executable,
                    "-m",
                    "infra.cli",
                    "exporter",
                    "--site",
                    str(self.site_file),
                    "--port",
                    str(ports["exporter"]),
                    "--interval",
                    "0.5",
                    "--timeout",
                    "5",
                    "--runs",
                    "off",
                    "--token-file",
                    str(self.token_file),
                ],
            ),
            "prometheus": self._spawn(
                "prometheus",
                [
                    BINARIES["prometheus"],
                    f"--config.file={self.dir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.dir / 'prometheus-data'}",
                    f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
                    "--storage.tsdb.retention.time=1d",
                ],
            ),
            "alertmanager": self._spawn(
                "alertmanager",
                [
                    BINARIES["alertmanager"],
                    f"--config.file={self.dir / 'alertmanager.yml'}",
                    f"--storage.path={self.dir / 'alertmanager-data'}",
                    f"--web.listen-address=127.0.0.1:{ports['alertmanager']}",
                    "--cluster.listen-address=",
                ],
            ),
        }
        self._wait_ready(pids, ports)
        return {"pids": pids, "ports": ports, "exporter_token_file": str(self.token_file)}

    def _wait_ready(
        self, pids: dict[str, int], ports: dict[str, int], timeout_s: float = 60
    ) -> None:
        """Wait until the three answer (the lab is up when its monitoring serves)."""
        paths = {"exporter": "/metrics", "prometheus": "/-/ready", "alertmanager": "/-/ready"}
        deadline = time.monotonic() + timeout_s
        waiting = dict(paths)
        while waiting and time.monotonic() < deadline:
            for name, path in list(waiting.items()):
                if not alive(pids[name]):
                    self.stop(pids)
                    raise LabError(f"monitoring: {name} exited; see {self.log_dir / name}.log")
                with contextlib.suppress(OSError):
                    req = urllib.request.Request(f"http://127.0.0.1:{ports[name]}{path}")
                    if name == "exporter":
                        req.add_header("Authorization", f"Bearer {self.token}")
                    with urllib.request.urlopen(req, timeout=2):  # noqa: S310 - loopback
                        del waiting[name]
            time.sleep(0.2)
        if waiting:
            self.stop(pids)
            raise LabError(f"monitoring: {', '.join(waiting)} did not answer in {timeout_s:g} s")

    @staticmethod
    def reload_alertmanager(port: int) -> None:
        """Make the running Alertmanager read its configuration again (`POST /-/reload`)."""
        req = urllib.request.Request(f"http://127.0.0.1:{port}/-/reload", method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10):  # noqa: S310 - loopback
                pass
        except OSError as exc:
            raise LabError(
                f"monitoring: Alertmanager did not reload its configuration: {exc}"
            ) from None

    def write_alertmanager(self, gateway: str | None, token_file: Path | None) -> None:
        """Write Alertmanager's configuration (a running one reloads it on SIGHUP)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "alertmanager.yml").write_text(
            yaml.safe_dump(alertmanager_config(gateway, token_file), sort_keys=False)
        )

    def _spawn(self, name: str, argv: list[str]) -> int:
        with open(self.log_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        return proc.pid

    @staticmethod
    def stop(pids: dict[str, int]) -> None:
        """Stop the processes by PID (SIGTERM, SIGKILL after 5 s)."""
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for pid in pids.values():
            while time.monotonic() < deadline and alive(pid):
                time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
