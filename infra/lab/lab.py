"""The lab: a simulated FTS site on one machine, started with one command and stopped completely.

See docs/explanations/lab-internals.md. `Lab` is the programmatic interface used by the
CLI (`handover lab ...`), the tests, the demo and the benchmarks.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from config.loader import load_site
from config.site import Agent, Host, Site
from infra.lab import cmdclient, faults, firewall, observe, software
from infra.lab import db as labdb
from infra.lab.derive import derive_site_file, scaled_site
from infra.lab.dns import LabDns
from infra.lab.errors import LabError
from infra.lab.host import (
    INIT_SCRIPT,
    SSHD_CONFIG,
    HostProc,
    alive,
    kill_host,
    launch,
    ns_inode,
    port_open,
    processes_by_namespace,
    signal_all,
)
from infra.lab.paths import EDGUSER_UID, LabPaths
from infra.lab.runtime import AgentRuntime, HostRuntime
from infra.lab.settings import LabSettings, lab_settings
from infra.lab.views import LabStatus, Score

REQUIRED_COMMANDS = {
    "unshare": "util-linux",
    "nsenter": "util-linux",
    "mount": "mount",
    "runuser": "util-linux",
    "ps": "procps",
    "nft": "nftables",
    "ssh-keygen": "openssh-client",
    "service": "init-system-helpers",
    "named": "bind9",
}
APT_PACKAGES = "openssh-server openssh-client postgresql nftables procps util-linux bind9"


Progress = Callable[[str], None]

__all__ = [
    "Lab",
    "LabError",
    "LabStatus",
    "Score",
    "derive_site_file",
    "missing_prerequisites",
    "scaled_site",
]


def _quiet(_msg: str) -> None:
    pass


def command_script(module: str, *fixed: str, about: str = "") -> str:
    """A lab host's command: a shell script that runs `module` with `fixed` arguments, then
    its own, through the host's command server (`infra.lab.cmdserver`; the module itself when
    no server answers)."""
    words = " ".join([sys.executable, "-I", "-S", cmdclient.__file__, module, *fixed])
    return "#!/bin/sh\n" + (f"# {about}\n" if about else "") + f'exec {words} "$@"\n'


# --- helpers ------------------------------------------------------------------------------------


def missing_prerequisites() -> list[str]:
    """What the lab needs that this machine lacks, each with the package that provides it."""
    missing: list[str] = []
    if os.geteuid() != 0:
        missing.append("root (the lab creates namespaces, mounts and firewall rules)")
    for cmd, pkg in REQUIRED_COMMANDS.items():
        if shutil.which(cmd) is None:
            missing.append(f"{cmd} (Debian package {pkg})")
    if not Path("/usr/sbin/sshd").exists():
        missing.append("/usr/sbin/sshd (Debian package openssh-server)")
    if labdb.pg_bin_dir() is None:
        missing.append("PostgreSQL server (Debian package postgresql)")
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        missing.append("the postgres system user (Debian package postgresql)")
    try:
        import setproctitle  # noqa: F401
    except ImportError:
        missing.append("Python package setproctitle (pip install -e .)")
    return missing


# --- the lab ------------------------------------------------------------------------------------


class Lab:
    """A lab for one site (the state directory is the site's `lab.state_dir`)."""

    def __init__(self, site: Site) -> None:
        if site.lab is None:
            raise LabError(
                f"site {site.site} has no `lab:` section; the lab runs only lab sites "
                "(e.g. config/sites/lab.yaml)"
            )
        self.base_site = site
        self.settings = lab_settings(site)
        self.paths = LabPaths(self.settings.state_dir)
        self.db = labdb.LabDatabase(self.paths, self.settings.db_address, self.settings.db_port)

    @classmethod
    def from_file(cls, path: str | Path) -> Lab:
        """The lab of a site file."""
        return cls(load_site(path))

    # --- state ---------------------------------------------------------------------------------

    def record(self) -> dict[str, Any]:
        """The running lab's record, or {} when the lab is down."""
        try:
            data: dict[str, Any] = json.loads(self.paths.state_file.read_text())
        except (OSError, ValueError):
            return {}
        return data

    def _save(self, rec: dict[str, Any]) -> None:
        tmp = self.paths.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(rec, indent=2))
        os.replace(tmp, self.paths.state_file)

    @property
    def site(self) -> Site:
        """The site the running lab was started with (the base site when it is down)."""
        if self.record() and self.paths.site_file.exists():
            return load_site(self.paths.site_file)
        return self.base_site

    def is_up(self) -> bool:
        """Whether the lab daemon and at least one host run."""
        rec = self.record()
        return bool(rec) and alive(rec.get("labd_pid"))

    # --- up ------------------------------------------------------------------------------------

    def up(
        self,
        *,
        hosts: int | None = None,
        hagd: bool = False,
        monitoring: bool = False,
        progress: Progress = _quiet,
    ) -> dict[str, Any]:
        """Start everything; on failure, stop what was started and raise LabError.

        Args:
            hosts: a generated site of this many hosts instead of the site's own.
            hagd: run the HA group daemon on the front-end hosts, their front end its service
                (`hagd_files`).
            monitoring: run the exporter, Prometheus and Alertmanager on the lab
                (`infra.lab.monitoring`; `monitoring_to` names the gateway).
            progress: where progress lines go.

        Returns:
            A report: site file, hosts, agents serving, and seconds per phase.
        """
        missing = missing_prerequisites()
        if missing:
            raise LabError(
                "the lab cannot start; missing: "
                + "; ".join(missing)
                + f". As root: apt-get install -y {APT_PACKAGES}"
            )
        if self.record():
            if self.is_up():
                raise LabError(
                    f"the lab is already up (site {self.record().get('site')}); "
                    "run `handover lab down` first"
                )
            progress("a previous lab did not stop cleanly; cleaning up first")
            self.down()
        site = scaled_site(self.base_site, hosts) if hosts else self.base_site
        if (
            hagd
            and (site.frontend is None or len(site.frontend.hosts) < 2)
            and not lab_settings(site).hagd.watch
        ):
            raise LabError(
                f"--hagd needs a site whose `frontend:` has at least two hosts, or hosts in "
                f"`lab.hagd.watch` ({site.site} has "
                + ("no front end" if site.frontend is None else "one front-end host")
                + " and no watch)"
            )
        t0 = time.monotonic()
        phases: dict[str, float] = {}
        self.paths.root.mkdir(parents=True, exist_ok=True)
        self.paths.log_dir.mkdir(parents=True, exist_ok=True)
        self.paths.site_file.write_text(
            yaml.safe_dump(site.model_dump(mode="json", exclude_defaults=True), sort_keys=False)
        )
        rec: dict[str, Any] = {
            "site": site.site,
            "site_file": str(self.paths.site_file),
            "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "hosts": {},
            "faults": {},
            "hagd": hagd,
        }
        self._save(rec)
        try:
            progress("database: starting PostgreSQL")
            self._ssh_client_key()
            self.db.ensure_cluster()
            self.db.start()
            rec["pg_pid"] = self.db.pid()
            self._save(rec)
            self.db.reset(site.channels)
            phases["database"] = time.monotonic() - t0
            if site.dns is not None:
                progress("dns: starting the BIND9 primary and secondaries")
                t_dns = time.monotonic()
                lab_dns = LabDns(self.paths, site)
                lab_dns.prepare()
                rec["dns_pids"] = {}
                self._save(rec)
                rec["dns_pids"] = lab_dns.start()
                self._save(rec)
                phases["dns"] = time.monotonic() - t_dns
            t1 = time.monotonic()
            progress(f"hosts: starting {len(site.hosts)} hosts")
            self._write_bin()
            # the agents' software repository and the site-info file: a new lab's hosts all run
            # version 1 with the default configuration
            software.write_repository(self.paths.repo_dir, lab_settings(site).extra_versions)
            self.paths.site_info.parent.mkdir(parents=True, exist_ok=True)
            self.paths.site_info.write_text(software.DEFAULT_SITE_INFO)
            self._apply_firewall({}, site)
            if hagd:
                self.hagd_files(site)
            for h in site.hosts:
                self._prepare_host(site, h, hagd=hagd)
            self._write_known_hosts(site)
            for h in site.hosts:
                rec["hosts"][h.name] = self._launch(h)
                self._save(rec)
            self._wait_sshd(site, rec)
            phases["hosts"] = time.monotonic() - t1
            t2 = time.monotonic()
            progress("agents: waiting for every agent to serve on its primary host")
            self._wait_agents(site, rec, lab_settings(site).lock_wait_s + 30)
            phases["agents"] = time.monotonic() - t2
            rec["labd_pid"] = self._start_labd()
            self._save(rec)
            if site.frontend is not None:
                progress("front ends: waiting for the master, starting the clients")
                self._wait(
                    lambda: [] if self._frontend_answers(site) else [site.frontend.hosts[0]],  # type: ignore[union-attr]
                    20,
                    "the front end did not answer as the master on",
                )
                rec["clients_pid"] = self._start_labd("clients")
                self._save(rec)
            if monitoring:
                progress("monitoring: the exporter, Prometheus and Alertmanager")
                rec["monitoring"] = self._monitoring().start()
                self._save(rec)
        except BaseException:
            with contextlib.suppress(Exception):
                self.down()
            raise
        phases["total"] = time.monotonic() - t0
        return {
            "site": site.site,
            "site_file": str(self.paths.site_file),
            "hosts": [h.name for h in site.hosts],
            "agents": len(site.service.agents),
            "seconds": {k: round(v, 2) for k, v in phases.items()},
            "hagd": {h: str(self.paths.hagd_control(h)) for h in hagd_hosts(site) if hagd},
        }

    def _frontend_answers(self, site: Site) -> bool:
        from tasks.http_probe import ask_ready

        assert site.frontend is not None
        first = site.frontend.hosts[0]
        if self.record().get("hagd") and self.hagd_mode(first) != "master":
            return False  # its daemon stops the boot's master at start, then its group elects
        answer = ask_ready(site.host(first).address, site.frontend.port, 1.0)
        return answer is not None and answer[0] == 200

    def hagd_mode(self, host: str) -> str | None:
        """The mode of a host's HA group daemon in the front end's group (None: no answer)."""
        from infra.hagd.daemon import ask

        try:
            answer = ask(str(self.paths.hagd_control(host)), "status", timeout_s=2.0)
        except OSError:
            return None
        group = answer.get("groups", {}).get(hagd_group(self.site), {})
        mode = group.get("mode")
        return str(mode) if mode else None

    def _wait(self, pending: Callable[[], list[str]], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        left = pending()
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = pending()
        if left:
            raise LabError(f"lab: {what} {', '.join(left)} within {timeout:g} s")

    def _relaunch(self, rec: dict[str, Any], hosts: list[str], why: str) -> None:
        """Kill hosts that did not come up and launch them again (said on stderr).

        On a loaded machine a host has been seen to hang from its first moment (sshd accepting
        without answering, every process of its boot silent) while the hosts launched with it
        came up; a second boot of that host alone has come up.
        """
        print(f"lab: {why}; launching {', '.join(hosts)} again", file=sys.stderr)
        for name in hosts:
            hrec = rec["hosts"][name]
            kill_host(hrec["unshare_pid"], hrec["init_pid"])
            rec["hosts"][name] = self._launch(self.site.host(name))
            self._save(rec)

    def _wait_sshd(self, site: Site, rec: dict[str, Any]) -> None:
        """Wait until every host's sshd answers; a host that does not is launched once more."""

        def silent() -> list[str]:
            return [h.name for h in site.hosts if not port_open(h.address, h.port)]

        try:
            self._wait(silent, 20, "sshd did not listen on")
        except LabError as exc:
            self._relaunch(rec, silent(), str(exc))
            self._wait(silent, 20, "sshd did not listen (after a second boot) on")

    def _wait_agents(self, site: Site, rec: dict[str, Any], timeout: float) -> None:
        """Wait until every agent serves on its primary host.

        A host whose agents do not all serve is launched once more (`_relaunch`); a second
        failure raises with each host's boot log and each late agent's log.
        """
        want = {a.name: a.primary for a in site.service.agents}

        def pending() -> list[str]:
            serving = self.serving(site, rec)
            return [f"{n} on {h}" for n, h in want.items() if h not in serving.get(n, set())]

        try:
            self._wait(pending, timeout, "agents did not serve:")
            return
        except LabError as exc:
            first = f"{exc}; {self._boot_report(site, want)}"
        left = pending()
        late_hosts = sorted({h for n, h in want.items() if f"{n} on {h}" in left})
        if late_hosts:
            self._relaunch(rec, late_hosts, first)
            self._wait_sshd(site, rec)
        try:
            self._wait(pending, timeout, "agents did not serve:")
        except LabError as exc:
            raise LabError(
                f"{exc} (after a second boot); {self._boot_report(site, want)}; "
                f"the first boot: {first}"
            ) from None

    def _boot_report(self, site: Site, want: dict[str, str]) -> str:
        """Each primary host's boot log, and the last lines of each agent's own log."""
        parts = []
        for h in sorted(set(want.values())):
            with contextlib.suppress(OSError):
                boot = (self.paths.host_dir(h) / "boot-agents.log").read_text().strip()
                parts.append(f"{h} boot log: {boot!r}")
        for n, h in want.items():
            log = self.paths.host_dir(h) / "log" / f"{n}.log"
            with contextlib.suppress(OSError):
                tail = log.read_text().strip().splitlines()[-3:]
                parts.append(f"{n} on {h}: {' / '.join(tail)!r}")
        return "; ".join(parts)

    def _ssh_client_key(self) -> None:
        self.paths.ssh_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.paths.client_key.exists():
            subprocess.run(
                [
                    "ssh-keygen",
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    "handover-lab",
                    "-f",
                    str(self.paths.client_key),
                ],
                check=True,
                timeout=30,
            )

    def _write_bin(self) -> None:
        b = self.paths.bin_dir
        b.mkdir(parents=True, exist_ok=True)
        for name, sub in (
            ("glite-transfer-channel-set", "channel-set"),
            ("glite-transfer-channel-list", "channel-list"),
        ):
            f = b / name
            f.write_text(command_script("infra.lab.hostcmd", sub))
            f.chmod(0o755)
        for name, module in (("fts-frontend", "frontend"), ("fts-frontend-ha", "frontend_ha")):
            f = b / name
            f.write_text(command_script(f"infra.lab.{module}"))
            f.chmod(0o755)
        for name, sub in (("spma_wrapper.sh", "spma"), ("rpm", "rpm")):
            f = b / name
            f.write_text(command_script("infra.lab.software", sub))
            f.chmod(0o755)

    def hagd_files(self, site: Site) -> None:
        """The HA group daemons' key and reporting settings (the gateway is added by
        `report_to`)."""
        self.paths.secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.paths.hagd_key.exists():
            self.paths.hagd_key.touch(mode=0o600)
            self.paths.hagd_key.write_text(secrets.token_hex(32) + "\n")
        self.paths.hagd_dir.mkdir(parents=True, exist_ok=True)
        self.paths.hagd_report.write_text(
            f"# the lab's HA group daemons report with these (`handover lab report-to`)\n"
            f"HANDOVER_SITE={site.site}\nHANDOVER_SERVICE={site.service.name}\n"
        )

    def _monitoring(self) -> Any:
        from infra.lab.monitoring import LabMonitoring

        return LabMonitoring(self.paths.root, self.paths.site_file, self.paths.log_dir)

    def monitoring_to(self, gateway: str, token_file: Path) -> str:
        """Route the lab's Alertmanager to a gateway (its Alertmanager bearer token in a file);
        the running Alertmanager reloads its configuration."""
        mon = self.record().get("monitoring")
        if not mon:
            raise LabError("the lab runs no monitoring (`handover lab up --monitoring`)")
        if not token_file.is_file():
            raise LabError(f"--token-file {token_file}: no such file")
        self._monitoring().write_alertmanager(gateway, token_file.resolve())
        self._monitoring().reload_alertmanager(int(mon["ports"]["alertmanager"]))
        return f"the lab's Alertmanager sends handover's alerts to {gateway}"

    def report_to(self, gateway: str, secret_file: Path) -> str:
        """Make the lab's HA group daemons (and their `handover-switch`) report to a gateway.

        Read at every report: daemons already running use it from their next one.
        """
        site = self.site
        if not self.record().get("hagd"):
            raise LabError("the lab runs no HA group daemon (`handover lab up --hagd`)")
        if not secret_file.is_file():
            raise LabError(f"--secret-file {secret_file}: no such file")
        self.hagd_files(site)
        with open(self.paths.hagd_report, "a") as f:
            f.write(
                f"HANDOVER_GATEWAY_URL={gateway}\n"
                f"HANDOVER_WEBHOOK_SECRET_FILE={secret_file.resolve()}\n"
            )
        return f"the lab's HA group daemons report to {gateway}"

    def _hagd_config(self, site: Site, h: Host) -> dict[str, Any]:
        """A host's daemon: the front end's group on front-end hosts, the watch group on the
        watched agents' hosts (either or both)."""
        cfg = lab_settings(site).hagd
        fronts = site.frontend.hosts if site.frontend is not None else []
        groups: dict[str, int] = {}
        peers: set[str] = set()
        if h.name in fronts:
            groups[hagd_group(site)] = 10 * (len(fronts) - fronts.index(h.name))
            peers.update(fronts)
        if h.name in cfg.watch:
            groups[hagd_watch_group(site)] = 10 * (len(cfg.watch) - cfg.watch.index(h.name))
            peers.update(cfg.watch)
        peers.discard(h.name)
        return {
            "id": h.name,
            "address": h.address,
            "port": cfg.port,
            "peers": {o: site.host(o).address for o in sorted(peers)},
            "group": groups,
            **({"script": str(self.paths.bin_dir / "fts-frontend-ha")} if h.name in fronts else {}),
            **({"watch": [hagd_watch_group(site)]} if h.name in cfg.watch else {}),
            "timeout": cfg.timeout_s,
            "debug": 3,
            "key": {"file": str(self.paths.hagd_key)},
            "dt1": cfg.dt1_s,
            "dt2": cfg.dt2_s,
            "interval": cfg.interval_s,
            "check": cfg.check_s,
            "control": str(self.paths.hagd_control(h.name)),
            "report": str(self.paths.hagd_report),
        }

    def _prepare_host(self, site: Site, h: Host, *, hagd: bool = False) -> None:
        lab = lab_settings(site)
        d = self.paths.host_dir(h.name)
        hagd_yaml = self.paths.hagd_config(h.name)
        hagd_yaml.unlink(missing_ok=True)
        if hagd and h.name in hagd_hosts(site):
            d.mkdir(parents=True, exist_ok=True)
            hagd_yaml.write_text(yaml.safe_dump(self._hagd_config(site, h), sort_keys=False))
        for sub in ("etc.upper", "etc.work", "opt.upper", "opt.work"):
            shutil.rmtree(d / sub, ignore_errors=True)
        for sub in ("etc.upper/init.d", "etc.upper/transfer-agents", "etc.work", "opt.work", "log"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        key = d / "ssh_host_ed25519_key"
        if not key.exists():
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", h.name, "-f", str(key)],
                check=True,
                timeout=30,
            )
        upper = d / "etc.upper"
        # root's home on a lab host is its own: the machine's ~/.bashrc (which may set up
        # language version managers) would otherwise run on every SSH command
        home = d / "root"
        home.mkdir(exist_ok=True)
        passwd = "".join(
            (":".join([*f[:5], str(home), *f[6:]]) if f[0] == "root" else line) + "\n"
            for line in Path("/etc/passwd").read_text().splitlines()
            if (f := line.split(":"))
        )
        group = Path("/etc/group").read_text()
        if "\nedguser:" not in "\n" + passwd:
            passwd += (
                f"edguser:x:{EDGUSER_UID}:{EDGUSER_UID}:FTS agents:/nonexistent:/usr/sbin/nologin\n"
            )
            group += f"edguser:x:{EDGUSER_UID}:\n"
        (upper / "passwd").write_text(passwd)
        (upper / "group").write_text(group)
        (upper / "hostname").write_text(h.name + "\n")
        configured = site.agents_configured_on(h.name)
        rt: HostRuntime = {
            "host": h.name,
            "address": h.address,
            "agents": [agent_runtime(a, lab) for a in configured],
            "db_address": lab.db_address,
            "db_port": lab.db_port,
            "db_password_file": str(self.paths.db_password),
            "ghost_ports_file": str(self.paths.ghost_ports),
            "lock_wait_s": lab.lock_wait_s,
            "tick_s": lab.tick_s,
            "max_active": lab.max_active_per_channel,
            "agent_uid": EDGUSER_UID,
            "python": sys.executable,
            "log_dir": str(d / "log"),
            "disabled_file": str(site.commands.disabled_file),
            "frontend_port": site.frontend.port
            if site.frontend and h.name in site.frontend.hosts
            else 0,
            "repo_dir": str(self.paths.repo_dir),
        }
        (upper / "transfer-agents" / "lab.json").write_text(json.dumps(rt, indent=2))
        # the first version of the agents' software, installed and configured as on a new box
        opt = d / "opt.upper"
        software.install_into(
            self.paths.repo_dir,
            lab.installed.get(h.name, "1"),
            opt / software.INSTALLED_DIR.relative_to("/opt"),
        )
        yaim = opt / software.CONFIGURE_NODE.relative_to("/opt")
        yaim.parent.mkdir(parents=True, exist_ok=True)
        yaim.write_text(
            command_script(
                "infra.lab.software",
                "configure-node",
                about="YAIM's configure_node (lab): configure_node SITE-INFO FTA",
            )
        )
        yaim.chmod(0o755)
        # the site-info file every host reads at the profile's default path: the lab's shared
        # one (a real site's lives on AFS)
        shared = opt / "glite" / "yaim" / "etc" / "site-info.def"
        shared.parent.mkdir(parents=True, exist_ok=True)
        shared.symlink_to(self.paths.site_info)
        software.configure(
            self.paths.site_info,
            [{"name": a["name"], "channel": a["channel"], "vo": a["vo"]} for a in rt["agents"]],
            opt / software.INSTALLED_DIR.relative_to("/opt"),
            upper / software.CONF_DIR.relative_to("/etc"),
        )
        init_d = upper / "init.d" / "transfer-agents"
        init_d.write_text(
            command_script(
                "infra.lab.hostcmd",
                "service",
                about="FTS transfer agents (lab). start|stop|restart|status [--instance NAME]",
            )
        )
        init_d.chmod(0o755)
        if rt["frontend_port"]:
            assert site.frontend is not None
            fe_init = upper / "init.d" / "fts-frontend"
            fe_init.write_text(
                command_script(
                    "infra.lab.frontend", about="FTS web front end (lab). start|stop|status"
                )
            )
            fe_init.chmod(0o755)
            # the first front-end host starts as the master with the first epoch (the alias
            # points at it); the others as slaves
            master = h.name == site.frontend.hosts[0]
            (upper / "fts-frontend.role").write_text(
                json.dumps(
                    {
                        "role": "master" if master else "slave",
                        "epoch": 1 if master else None,
                        "redirect": None,
                        "redirect_until": 0,
                    }
                )
                + "\n"
            )
        # agents this host backs up stay disabled until a procedure moves them here
        backups = [a.name for a in site.service.agents if a.backup == h.name]
        disabled = upper / site.commands.disabled_file.relative_to("/etc")
        if backups:
            disabled.write_text("".join(f"{n}\n" for n in backups))
        (d / "sshd_config").write_text(
            SSHD_CONFIG.format(
                host=h.name,
                address=h.address,
                port=h.port,
                host_key=key,
                authorized_keys=self.paths.client_key.with_suffix(".pub"),
            )
        )
        (d / "init.sh").write_text(INIT_SCRIPT)

    def _write_known_hosts(self, site: Site) -> None:
        lines = []
        for h in site.hosts:
            pub = (self.paths.host_dir(h.name) / "ssh_host_ed25519_key.pub").read_text().split()
            host = h.address if h.port == 22 else f"[{h.address}]:{h.port}"
            lines.append(f"{host} {pub[0]} {pub[1]}\n")
        self.paths.known_hosts.write_text("".join(lines))

    def _launch(self, h: Host, *, boot_agents: bool = True) -> dict[str, Any]:
        d = self.paths.host_dir(h.name)
        unshare_pid, init_pid = launch(
            h.name,
            d,
            self.paths.bin_dir,
            self.paths.log_dir / f"{h.name}.log",
            boot_agents=boot_agents,
            hagd_report=self.paths.hagd_report,
        )
        return {
            "address": h.address,
            "port": h.port,
            "unshare_pid": unshare_pid,
            "init_pid": init_pid,
            "ns": ns_inode(init_pid),
        }

    def _start_labd(self, module: str = "labd") -> int:
        with open(self.paths.log_dir / f"{module}.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", f"infra.lab.{module}", "--state-dir", str(self.paths.root)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        return proc.pid

    # --- down ----------------------------------------------------------------------------------

    def down(self) -> dict[str, Any]:
        """Stop every process the lab started and remove its firewall rules.

        Returns:
            A report with the number of hosts stopped, leftovers (expected empty) and seconds.
        """
        t0 = time.monotonic()
        rec = self.record()
        labd_pid = int(rec.get("labd_pid") or 0)
        if alive(labd_pid):
            os.kill(labd_pid, signal.SIGTERM)
        clients_pid = int(rec.get("clients_pid") or 0)
        if alive(clients_pid):
            os.kill(clients_pid, signal.SIGKILL)
        if rec.get("monitoring"):
            from infra.lab.monitoring import LabMonitoring

            LabMonitoring.stop({k: int(v) for k, v in rec["monitoring"]["pids"].items()})
        hosts = rec.get("hosts", {})
        nss = {int(h["ns"]) for h in hosts.values() if h.get("ns")}
        for h in hosts.values():
            kill_host(h["unshare_pid"], h["init_pid"])
        self._delete_firewall()
        LabDns.stop(rec.get("dns_pids") or {})
        with contextlib.suppress(labdb.LabDbError):
            self.db.stop()
        deadline = time.monotonic() + 5
        while alive(labd_pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if alive(labd_pid):
            os.kill(labd_pid, signal.SIGKILL)
        leftovers: list[str] = []
        while time.monotonic() < deadline:
            procs = [p for plist in processes_by_namespace(nss).values() for p in plist]
            leftovers = [f"{p.pid} {p.title}" for p in procs]
            if alive(rec.get("pg_pid")):
                leftovers.append(f"{rec['pg_pid']} postgres")
            if not leftovers:
                break
            signal_all(procs, signal.SIGKILL)
            time.sleep(0.05)
        with contextlib.suppress(FileNotFoundError):
            self.paths.state_file.unlink()
        return {
            "hosts_stopped": len(hosts),
            "leftovers": leftovers,
            "seconds": round(time.monotonic() - t0, 2),
        }

    def remove_state(self) -> None:
        """Delete the lab's state directory (database cluster, host roots, logs) after `down`.

        For throw-away labs (tests, benchmarks), which would otherwise leave some 50 MB each.

        Raises:
            LabError: the lab still runs, or something is mounted under its state directory.
        """
        root = self.paths.root.resolve()
        if self.paths.state_file.exists():
            raise LabError(f"lab {self.base_site.site} still runs: `handover lab down` first")
        with open("/proc/self/mountinfo") as f:
            mounted = [line.split()[4] for line in f if Path(line.split()[4]).is_relative_to(root)]
        if mounted:
            raise LabError(f"not removing {root}: mounted under it: {', '.join(mounted)}")
        shutil.rmtree(root, ignore_errors=True)

    # --- firewall, observing, load and faults (infra/lab/firewall.py, observe.py, faults.py) ----

    def _table(self) -> str:
        return firewall.table_name(self.base_site.site)

    def _apply_firewall(
        self, faults: dict[str, str], site: Site, ghosts: dict[str, list[int]] | None = None
    ) -> None:
        by_address = {site.host(h).address: sorted(set(p)) for h, p in (ghosts or {}).items()}
        tmp = self.paths.ghost_ports.with_suffix(".tmp")
        tmp.write_text(json.dumps(by_address))
        tmp.chmod(0o644)
        os.replace(tmp, self.paths.ghost_ports)
        firewall.apply(self._table(), faults, site, ghosts)

    def _delete_firewall(self) -> None:
        firewall.delete(self._table())

    def host_processes(self, rec: dict[str, Any] | None = None) -> dict[str, list[HostProc]]:
        """Processes of each running host (one /proc scan)."""
        return observe.host_processes(self, rec)

    def serving(self, site: Site, rec: dict[str, Any]) -> dict[str, set[str]]:
        """Hosts on which each agent currently serves, as the score counts it (`serves`)."""
        return observe.serving(self, site, rec)

    def status(self) -> LabStatus:
        """Every host, its agents, transfers and disabled list; every channel's state."""
        return observe.status(self)

    def score(self, *, reset: bool = False) -> Score:
        """The score since the lab started (or since the last reset, which `reset` performs)."""
        return observe.score(self, reset=reset)

    def require_up(self) -> dict[str, Any]:
        """The lab's record (LabError when the lab is down)."""
        rec = self.record()
        if not rec:
            raise LabError("the lab is down; start it with `handover lab up`")
        return rec

    _require_up = require_up

    def set_load(self, *, on: bool | None = None, rate: float | None = None) -> None:
        """Switch the load generator on or off, or change its rate (jobs/s per channel)."""
        self.require_up()
        if on is not None:
            faults.control(self, "load", "on" if on else "off")
        if rate is not None:
            faults.control(self, "rate", str(rate))

    def fault(self, host: str, kind: str) -> str:
        """Inject a fault into a host (`infra.lab.faults.inject`); a sentence says what was done."""
        return faults.inject(self, host, kind)

    def heal(self, host: str) -> str:
        """Undo a host's fault (a crashed host reboots: sshd, then its enabled agents)."""
        return faults.heal(self, host)

    def fault_database(self, kind: str) -> str:
        """Inject a fault into the database server (`infra.lab.faults.inject_database`)."""
        return faults.inject_database(self, kind)

    def heal_database(self) -> str:
        """Undo the database's fault (after a crash it starts again)."""
        return faults.heal_database(self)

    # --- inside a host -------------------------------------------------------------------------

    def exec(
        self, host: str, argv: list[str], timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside a host's namespaces (not through SSH), e.g. `ps` for checks."""
        rec = self._require_up()
        init = rec["hosts"][host]["init_pid"]
        return subprocess.run(
            ["nsenter", "-t", str(init), "-u", "-p", "-m", "--", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def agent_runtime(a: Agent, lab: LabSettings) -> AgentRuntime:
    """What a host's init script knows of one agent it runs."""
    spec: AgentRuntime = {"name": a.name, "channel": a.channel, "vo": a.vo}
    if a.channel in lab.active_per_channel:
        spec["max_active"] = lab.active_per_channel[a.channel]
    return spec


def hagd_group(site: Site) -> str:
    """The HA group of the lab's front end."""
    return f"{site.service.name}-frontend"


def hagd_watch_group(site: Site) -> str:
    """The watch group of the lab's agents' hosts (`lab.hagd.watch`)."""
    return f"{site.service.name}-agents"


def hagd_hosts(site: Site) -> list[str]:
    """The hosts that run the HA group daemon with `--hagd`: the front ends and the watched."""
    fronts = site.frontend.hosts if site.frontend is not None else []
    return [
        h.name for h in site.hosts if h.name in fronts or h.name in lab_settings(site).hagd.watch
    ]


def agent_names(agents: list[Agent]) -> list[str]:
    """Names of agents, for messages."""
    return [a.name for a in agents]
