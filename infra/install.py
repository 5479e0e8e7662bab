"""`handover install`: handover's long-running processes as systemd services on this machine.

The unit templates are shipped in deployments/systemd/; this module fills in this machine's paths
(the interpreter and the `handover` command of the installation that runs it), the site, the
user, the addresses, and the hardening every unit but the HA group daemon's gets. A role is a
set of units: `server` (the database's migration, the Prefect API and its background services),
`balancer` (HAProxy in front of several API servers), `serve` (one machine serving the
procedures), `worker`, `gateway`, `exporter`, `hagd`. With `--ha` the server processes share
Redis (messages, event order, concurrency leases) and the clients use the balancer.

Nothing is enabled or started here: the command writes the units (and the environment files
they read, when missing, mode 0600) and says what to run. `--dry-run` prints them instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from string import Template

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "deployments" / "systemd"
#: each role and its units, in the order they start
ROLES: dict[str, tuple[str, ...]] = {
    "server": ("handover-prefect-migrate", "handover-prefect-api", "handover-prefect-services"),
    "balancer": ("handover-balancer",),
    "serve": ("handover-serve",),
    "worker": ("handover-worker",),
    "gateway": ("handover-gateway",),
    "exporter": ("handover-exporter",),
    "hagd": ("handover-hagd",),
}
#: the hardening of every unit that runs as handover's own user
HARDENING = """UMask=0077
StateDirectory=handover
StateDirectoryMode=0700
ConfigurationDirectory=handover
NoNewPrivileges=yes
PrivateTmp=yes
ProtectSystem=strict
ProtectHome=read-only
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes
LockPersonality=yes
Restart=on-failure
RestartSec=5"""
#: the environment files the units read, and what a new one holds (values to fill in)
ENV_FILES = {
    "prefect-server.env": (
        "# the Prefect server's database and its API auth string (this file: mode 0600)\n"
        "PREFECT_SERVER_DATABASE_CONNECTION_URL="
        "postgresql+asyncpg://prefect:PASSWORD@127.0.0.1:5432/prefect\n"
        "PREFECT_SERVER_API_AUTH_STRING=handover:{auth}\n"
        "{ha}"
    ),
    "client.env": (
        "# how handover's processes reach the Prefect API (this file: mode 0600)\n"
        "PREFECT_API_URL={api_url}\n"
        "PREFECT_API_AUTH_STRING=handover:{auth}\n"
    ),
}


#: with --ha, what every Prefect server process adds: Redis for messages, the events' order,
#: the background services' coordination and the concurrency leases (Prefect's documented set-up
#: for several API servers; `infra.control_plane` starts the same on one machine)
HA_ENV = (
    "# Redis, shared by every API server and the background services (--ha)\n"
    "PREFECT_MESSAGING_BROKER=prefect_redis.messaging\n"
    "PREFECT_MESSAGING_CACHE=prefect_redis.messaging\n"
    "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING=prefect_redis.ordering\n"
    "PREFECT_REDIS_MESSAGING_HOST=REDIS-HOST\n"
    "PREFECT_REDIS_MESSAGING_PORT=6379\n"
    "PREFECT_REDIS_MESSAGING_DB=0\n"
    "PREFECT_REDIS_MESSAGING_PASSWORD=REDIS-PASSWORD\n"
    "PREFECT_SERVER_DOCKET_URL=redis://:REDIS-PASSWORD@REDIS-HOST:6379/1\n"
)


class InstallError(RuntimeError):
    """The units cannot be written as asked; says why and the fix."""


@dataclass(frozen=True)
class Settings:
    """What the units are filled in with."""

    site: Path
    site_name: str
    pool: str = "handover"
    #: more sites that the serve, worker and gateway units serve besides `site` (file, name)
    more_sites: tuple[tuple[Path, str], ...] = ()
    user: str = "handover"
    etc: Path = Path("/etc/handover")
    state: Path = Path("/var/lib/handover")
    host: str = "127.0.0.1"
    port: int = 4200
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8787
    exporter_address: str = "127.0.0.1"
    exporter_port: int = 9480
    python: Path = Path(sys.executable)
    #: Prefect without a single server: the server processes share Redis, clients use the
    #: balancer
    ha: bool = False
    #: with `ha`: the balancer's address and port (what clients use)
    balancer: tuple[str, int] = ("127.0.0.1", 4200)
    #: the API servers the balancer sends to (`host:port` each)
    api_servers: tuple[str, ...] = ("127.0.0.1:4201", "127.0.0.1:4202")
    #: where the balancer's Prometheus metrics answer (`/metrics`)
    balancer_metrics: tuple[str, int] = ("127.0.0.1", 8405)

    @property
    def all_sites(self) -> tuple[tuple[Path, str], ...]:
        """Every site the serve, worker and gateway units serve: `site`, then `more_sites`."""
        return ((self.site, self.site_name), *self.more_sites)

    @property
    def api_url(self) -> str:
        """The API's URL as the clients on this machine reach it (the balancer's with `ha`)."""
        if self.ha:
            return f"http://{self.balancer[0]}:{self.balancer[1]}/api"
        return f"http://{self.host}:{self.port}/api"

    @property
    def lease_storage(self) -> str:
        """Where the server keeps concurrency leases: on disk for one server, in Redis for
        several."""
        from flows.service_lock import LEASE_STORAGE
        from infra.control_plane import LEASE_STORAGE as HA_LEASE_STORAGE

        return HA_LEASE_STORAGE if self.ha else LEASE_STORAGE


def balancer_config(s: Settings) -> str:
    """The balancer's HAProxy configuration for these settings.

    Raises:
        InstallError: an API server is not `host:port`.
    """
    from infra.plane_config import haproxy_config

    servers = []
    for item in s.api_servers:
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise InstallError(f"--api-servers: {item!r} is not HOST:PORT")
        servers.append((host, int(port)))
    return haproxy_config(s.balancer[0], s.balancer[1], servers, s.balancer_metrics)


def render(unit: str, s: Settings) -> str:
    """One unit's text for this machine.

    Raises:
        InstallError: a template names a value this module does not fill in.
    """
    text = (TEMPLATES / f"{unit}.service").read_text()
    values = {
        "user": s.user,
        "etc": str(s.etc),
        "state": str(s.state),
        "host": s.host,
        "port": str(s.port),
        "api_url": s.api_url,
        "python": str(s.python),
        "handover": str(s.python.parent / "handover"),
        "site": str(s.site),
        "site_name": s.site_name,
        "site_args": " ".join(f"--site {f}" for f, _ in s.all_sites),
        "site_names": ("sites " if s.more_sites else "site ")
        + ", ".join(n for _, n in s.all_sites),
        "pool": s.pool,
        "gateway_host": s.gateway_host,
        "gateway_port": str(s.gateway_port),
        "exporter_address": s.exporter_address,
        "exporter_port": str(s.exporter_port),
        "lease_storage": s.lease_storage,
        "haproxy": shutil.which("haproxy", path="/usr/sbin:/usr/bin") or "/usr/sbin/haproxy",
        "hardening": HARDENING,
    }
    try:
        return Template(text).substitute(values)
    except KeyError as exc:
        raise InstallError(
            f"{unit}.service names ${{{exc.args[0]}}}, which is not filled in"
        ) from None


#: the roles whose unit reads one site (the others serve every site given)
ONE_SITE_ROLES = ("exporter",)


def units(roles: list[str], s: Settings) -> dict[str, str]:
    """Each unit's file name and text, for the roles asked (in their order).

    Raises:
        InstallError: a role whose unit reads one site (the exporter) asked with several.
    """
    one = [r for r in roles if r in ONE_SITE_ROLES]
    if one and s.more_sites:
        raise InstallError(
            f"the {', '.join(one)} unit reads one site: install it with one --site (its "
            "--role alone), the serve, worker and gateway units with every site"
        )
    out: dict[str, str] = {}
    for role in roles:
        for unit in ROLES[role]:
            out[f"{unit}.service"] = render(unit, s)
    return out


def write(roles: list[str], s: Settings, unit_dir: Path) -> list[str]:
    """Write the units into `unit_dir` and the missing environment files into `s.etc`; returns
    what the operator must still do, in order.

    Raises:
        InstallError: not root, or a directory cannot be written.
    """
    import secrets

    if os.geteuid() != 0:
        raise InstallError("writing system units needs root; --dry-run prints them")
    unit_dir.mkdir(parents=True, exist_ok=True)
    written = units(roles, s)
    for name, text in written.items():
        (unit_dir / name).write_text(text)
    s.etc.mkdir(mode=0o755, parents=True, exist_ok=True)
    (s.etc / "secrets").mkdir(mode=0o700, exist_ok=True)
    auth = secrets.token_urlsafe(24)
    todo: list[str] = []
    for name, template in ENV_FILES.items():
        path = s.etc / name
        if path.exists():
            continue
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(template.format(auth=auth, api_url=s.api_url, ha=HA_ENV if s.ha else ""))
        todo.append(f"check {path} (made now, mode 0600): the values it holds are to be filled in")
    if "balancer" in roles:
        cfg = s.etc / "haproxy.cfg"
        cfg.write_text(balancer_config(s))
        cfg.chmod(0o644)
        todo.append(f"check {cfg}: the API servers it sends to are {', '.join(s.api_servers)}")
    if (
        shutil.which("getent")
        and subprocess.run(
            ["getent", "passwd", s.user], capture_output=True, check=False
        ).returncode
        != 0
    ):
        todo.insert(
            0,
            f"useradd --system --home-dir {s.state} --shell /usr/sbin/nologin {s.user}",
        )
    todo.append(f"chown -R {s.user}: {s.etc}/*.env {s.etc}/secrets")
    todo.append("systemctl daemon-reload")
    todo.append("systemctl enable --now " + " ".join(written))
    return todo
