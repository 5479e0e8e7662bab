"""The lab: a simulated FTS site on one machine, started with one command and stopped completely.

See infra/lab/README.md. `Lab` is the programmatic interface used by the
CLI (`handover lab ...`), the tests, the demo and the benchmarks.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from config.loader import load_site
from config.site import Agent, Host, Site
from infra.lab import db as labdb
from infra.lab.faults import FAULT_KINDS
from infra.lab.host import (
    INIT_SCRIPT,
    SSHD_CONFIG,
    HostProc,
    kill_host,
    launch,
    ns_inode,
    processes_by_namespace,
    signal_all,
)
from infra.lab.paths import EDGUSER_UID, LabPaths
from infra.lab.runtime import HostRuntime, read_disabled, read_state, serves

REQUIRED_COMMANDS = {
    "unshare": "util-linux",
    "nsenter": "util-linux",
    "mount": "mount",
    "runuser": "util-linux",
    "ps": "procps",
    "nft": "nftables",
    "ssh-keygen": "openssh-client",
    "service": "init-system-helpers",
}
APT_PACKAGES = "openssh-server openssh-client postgresql nftables procps util-linux"


class LabError(RuntimeError):
    """The lab cannot do what was asked; the message says why and what to do."""


Progress = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


# --- typed views --------------------------------------------------------------------------------


class AgentView(BaseModel):
    """An agent process on a host, as seen from outside."""

    name: str
    pid: int
    user: str
    state: str


class HostView(BaseModel):
    """One lab host."""

    name: str
    address: str
    port: int
    up: bool
    fault: str | None
    sshd: bool
    agents: list[AgentView]
    transfers: dict[str, int]
    disabled: list[str]
    processes: int


class ChannelView(BaseModel):
    """One channel's state in the lab database."""

    state: str
    pending: int
    active: int


class LabStatus(BaseModel):
    """`handover lab status`."""

    site: str
    site_file: str
    up: bool
    database: str
    labd: bool
    hosts: list[HostView]
    channels: dict[str, ChannelView]


class TwiceView(BaseModel):
    """An interval during which one agent was seen on two hosts."""

    agent: str
    hosts: list[str]
    first_seen: str
    last_seen: str


class Score(BaseModel):
    """`handover lab score`: what happened to the work since the lab started or the last reset."""

    since: str
    jobs: dict[str, int]
    jobs_done: int
    jobs_lost: int
    downtime_s: dict[str, float]
    downtime_total_s: float
    downtime_max_s: float
    agents_running_twice: list[TwiceView]
    agents_alive_on_two_hosts: list[TwiceView]


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


def _port_open(address: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        try:
            s.connect((address, port))
        except OSError:
            return False
        # a frozen sshd accepts the TCP connection but never sends its banner
        try:
            return s.recv(4).startswith(b"SSH-")
        except OSError:
            return False


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def scaled_site(base: Site, hosts: int) -> Site:
    """A lab site with `hosts` hosts, each the primary of one channel agent, backed by the next."""
    if not 2 <= hosts <= 250:
        raise LabError(f"--hosts must be between 2 and 250, got {hosts}")
    assert base.lab is not None
    data = base.model_dump(mode="json", exclude_defaults=False)
    data["site"] = f"{base.site}-x{hosts}"
    data["hosts"] = [
        {
            "name": f"fts{101 + i}",
            "address": f"127.0.{2 + i // 200}.{1 + i % 200}",
            "port": base.hosts[0].port,
            "roles": ["channel-agents"],
        }
        for i in range(hosts)
    ]
    data["service"]["agents"] = [
        {
            "channel": f"CERN-T{i + 1:03d}",
            "primary": f"fts{101 + i}",
            "backup": f"fts{101 + (i + 1) % hosts}",
        }
        for i in range(hosts)
    ] + [{"vo": "atlas", "primary": "fts101", "backup": "fts102"}]
    for a in data["service"]["agents"]:
        a.pop("name", None)
    return Site.model_validate(data)


def derive_site_file(
    base_file: Path,
    out: Path,
    *,
    name: str,
    octet: int,
    db_port: int,
    state_dir: Path,
    lab: dict[str, Any] | None = None,
    procedures: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """Write a copy of a lab site with its own name, addresses (127.0.OCTET.x), DB port and state
    directory, so that tests and benchmarks never touch a lab an operator runs."""
    data = yaml.safe_load(base_file.read_text())
    data["site"] = name
    for h in data["hosts"]:
        h["address"] = f"127.0.{octet}.{h['address'].rsplit('.', 1)[1]}"
    data["ssh"]["key_file"] = str(state_dir / "ssh" / "id_ed25519")
    data["ssh"]["known_hosts"] = str(state_dir / "ssh" / "known_hosts")
    data["database"]["port"] = db_port
    data["database"]["password"] = {"file": str(state_dir / "secrets" / "db-password")}
    data["lab"].update({"state_dir": str(state_dir), "db_port": db_port, **(lab or {})})
    for proc, policy in (procedures or {}).items():
        data.setdefault("procedures", {}).setdefault(proc, {}).update(policy)
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


# --- the lab ------------------------------------------------------------------------------------


class Lab:
    """A lab for one site (the state directory is `site.lab.state_dir`)."""

    def __init__(self, site: Site) -> None:
        if site.lab is None:
            raise LabError(
                f"site {site.site} has no `lab:` section; the lab runs only lab sites "
                "(e.g. config/sites/lab.yaml)"
            )
        self.base_site = site
        self.paths = LabPaths(site.lab.state_dir)
        self.db = labdb.LabDatabase(self.paths, site.lab.db_address, site.lab.db_port)

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
        return bool(rec) and _alive(rec.get("labd_pid"))

    # --- up ------------------------------------------------------------------------------------

    def up(self, *, hosts: int | None = None, progress: Progress = _quiet) -> dict[str, Any]:
        """Start everything; on failure, stop what was started and raise LabError.

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
        assert site.lab is not None
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
            t1 = time.monotonic()
            progress(f"hosts: starting {len(site.hosts)} hosts")
            self._write_bin()
            self._apply_firewall({}, site)
            for h in site.hosts:
                self._prepare_host(site, h)
            self._write_known_hosts(site)
            for h in site.hosts:
                rec["hosts"][h.name] = self._launch(h)
                self._save(rec)
            self._wait(
                lambda: [h.name for h in site.hosts if not _port_open(h.address, h.port)],
                20,
                "sshd did not listen on",
            )
            phases["hosts"] = time.monotonic() - t1
            t2 = time.monotonic()
            progress("agents: waiting for every agent to serve on its primary host")
            self._wait_agents(site, rec, site.lab.lock_wait_s + 30)
            phases["agents"] = time.monotonic() - t2
            rec["labd_pid"] = self._start_labd()
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
        }

    def _wait(self, pending: Callable[[], list[str]], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        left = pending()
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = pending()
        if left:
            raise LabError(f"lab: {what} {', '.join(left)} within {timeout:g} s")

    def _wait_agents(self, site: Site, rec: dict[str, Any], timeout: float) -> None:
        want = {a.name: a.primary for a in site.service.agents}

        def pending() -> list[str]:
            serving = self.serving(site, rec)
            return [f"{n} on {h}" for n, h in want.items() if h not in serving.get(n, set())]

        try:
            self._wait(pending, timeout, "agents did not serve:")
        except LabError as exc:
            logs = []
            for h in {a.primary for a in site.service.agents}:
                with contextlib.suppress(OSError):
                    logs.append((self.paths.host_dir(h) / "boot-agents.log").read_text()[-400:])
            raise LabError(f"{exc}; boot logs: {' | '.join(logs)}") from None

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
            f.write_text(f'#!/bin/sh\nexec {sys.executable} -m infra.lab.hostcmd {sub} "$@"\n')
            f.chmod(0o755)

    def _prepare_host(self, site: Site, h: Host) -> None:
        assert site.lab is not None
        d = self.paths.host_dir(h.name)
        for sub in ("etc.upper", "etc.work"):
            shutil.rmtree(d / sub, ignore_errors=True)
        for sub in ("etc.upper/init.d", "etc.upper/transfer-agents", "etc.work", "log"):
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
            "agents": [{"name": a.name, "channel": a.channel, "vo": a.vo} for a in configured],
            "db_address": site.lab.db_address,
            "db_port": site.lab.db_port,
            "db_password_file": str(self.paths.db_password),
            "lock_wait_s": site.lab.lock_wait_s,
            "tick_s": site.lab.tick_s,
            "max_active": site.lab.max_active_per_channel,
            "agent_uid": EDGUSER_UID,
            "python": sys.executable,
            "log_dir": str(d / "log"),
            "disabled_file": str(site.commands.disabled_file),
        }
        (upper / "transfer-agents" / "lab.json").write_text(json.dumps(rt, indent=2))
        init_d = upper / "init.d" / "transfer-agents"
        init_d.write_text(
            "#!/bin/sh\n# FTS transfer agents (lab). start|stop|restart|status [--instance NAME]\n"
            f'exec {sys.executable} -m infra.lab.hostcmd service "$@"\n'
        )
        init_d.chmod(0o755)
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
        )
        return {
            "address": h.address,
            "port": h.port,
            "unshare_pid": unshare_pid,
            "init_pid": init_pid,
            "ns": ns_inode(init_pid),
        }

    def _start_labd(self) -> int:
        with open(self.paths.log_dir / "labd.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "infra.lab.labd", "--state-dir", str(self.paths.root)],
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
        if _alive(labd_pid):
            os.kill(labd_pid, signal.SIGTERM)
        hosts = rec.get("hosts", {})
        nss = {int(h["ns"]) for h in hosts.values() if h.get("ns")}
        for h in hosts.values():
            kill_host(h["unshare_pid"], h["init_pid"])
        self._delete_firewall()
        with contextlib.suppress(labdb.LabDbError):
            self.db.stop()
        deadline = time.monotonic() + 5
        while _alive(labd_pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _alive(labd_pid):
            os.kill(labd_pid, signal.SIGKILL)
        leftovers: list[str] = []
        while time.monotonic() < deadline:
            procs = [p for plist in processes_by_namespace(nss).values() for p in plist]
            leftovers = [f"{p.pid} {p.title}" for p in procs]
            if _alive(rec.get("pg_pid")):
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

    # --- firewall (faults that cut a host off the network) -------------------------------------

    def _table(self) -> str:
        return f"handover_lab_{self.base_site.site.replace('-', '_')}"

    def _apply_firewall(
        self, faults: dict[str, str], site: Site, ghosts: dict[str, list[int]] | None = None
    ) -> None:
        assert site.lab is not None
        rules = []
        # the TCP connections of a crashed host are dead for good, even after it reboots: the
        # database server must never hear them close (it would release their locks)
        for host, ports in (ghosts or {}).items():
            if ports:
                addr = site.host(host).address
                plist = ", ".join(str(p) for p in sorted(set(ports)))
                rules.append(f"ip saddr {addr} tcp sport {{ {plist} }} drop")
        for host, kind in faults.items():
            addr = site.host(host).address
            if kind == "crash":
                rules += [f"ip daddr {addr} drop", f"ip saddr {addr} drop"]
            elif kind == "db-unreachable":
                rules += [
                    f"ip saddr {addr} ip daddr {site.lab.db_address} tcp dport {site.lab.db_port}"
                    " drop",
                ]
        table = self._table()
        script = (
            f"table inet {table}\ndelete table inet {table}\n"
            f"table inet {table} {{\n chain out {{\n  type filter hook output priority 0; "
            "policy accept;\n" + "".join(f"  {r}\n" for r in rules) + " }\n}\n"
        )
        proc = subprocess.run(
            ["nft", "-f", "-"],
            input=script,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if proc.returncode != 0:
            raise LabError(f"lab: nft failed: {proc.stderr.strip()}")

    def _delete_firewall(self) -> None:
        table = self._table()
        subprocess.run(
            ["nft", "-f", "-"],
            input=f"table inet {table}\ndelete table inet {table}\n",
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )

    # --- observing -----------------------------------------------------------------------------

    def host_processes(self, rec: dict[str, Any] | None = None) -> dict[str, list[HostProc]]:
        """Processes of each running host (one /proc scan)."""
        rec = rec if rec is not None else self.record()
        by_ns = {int(h["ns"]): n for n, h in rec.get("hosts", {}).items() if h.get("ns")}
        procs = processes_by_namespace(set(by_ns))
        return {by_ns[ns]: plist for ns, plist in procs.items()}

    def serving(self, site: Site, rec: dict[str, Any]) -> dict[str, set[str]]:
        """Hosts on which each agent currently serves, as the score counts it (`serves`)."""
        names = {a.name for a in site.service.agents}
        with contextlib.closing(self.db.connect()) as conn:
            live = {int(r[0]) for r in conn.run("SELECT pid FROM pg_stat_activity")}
        out: dict[str, set[str]] = {}
        for host, plist in self.host_processes(rec).items():
            for p in plist:
                if p.title in names:
                    st = read_state(p.title, Path(f"/proc/{p.pid}/root"))
                    if serves(st, p.nspid, live):
                        out.setdefault(p.title, set()).add(host)
        return out

    def status(self) -> LabStatus:
        """Every host, its agents, transfers and disabled list; every channel's state."""
        rec = self.record()
        site = self.site
        agent_names = {a.name for a in site.service.agents}
        procs = self.host_processes(rec) if rec else {}
        hosts: list[HostView] = []
        for h in site.hosts:
            hrec = rec.get("hosts", {}).get(h.name, {})
            plist = procs.get(h.name, [])
            up = bool(hrec) and _alive(hrec.get("init_pid")) and bool(plist)
            agents = []
            transfers: dict[str, int] = {}
            sshd = False
            for p in plist:
                first = p.title.split(" ", 1)[0]
                if p.title in agent_names:
                    st = read_state(p.title, Path(f"/proc/{p.pid}/root")) or {}
                    agents.append(
                        AgentView(
                            name=p.title,
                            pid=p.nspid,
                            user="edguser" if p.uid == EDGUSER_UID else str(p.uid),
                            state=str(st.get("state", "unknown")),
                        )
                    )
                elif "__" in first and p.state != "Z":
                    ch = first.split("__", 1)[0]
                    transfers[ch] = transfers.get(ch, 0) + 1
                elif p.title.startswith("sshd: /usr/sbin/sshd"):
                    sshd = True
            disabled_path = site.commands.disabled_file
            if up:
                root = Path(f"/proc/{hrec['init_pid']}/root")
                disabled = read_disabled(str(root / str(disabled_path).lstrip("/")))
            else:
                disabled = read_disabled(
                    str(
                        self.paths.host_dir(h.name)
                        / "etc.upper"
                        / disabled_path.relative_to("/etc")
                    )
                )
            hosts.append(
                HostView(
                    name=h.name,
                    address=h.address,
                    port=h.port,
                    up=up,
                    fault=rec.get("faults", {}).get(h.name),
                    sshd=sshd,
                    agents=sorted(agents, key=lambda a: a.name),
                    transfers=dict(sorted(transfers.items())),
                    disabled=disabled,
                    processes=len(plist),
                )
            )
        channels: dict[str, ChannelView] = {}
        db_state = "down"
        if rec and self.db.pid() is not None:
            try:
                with contextlib.closing(self.db.connect(timeout=3)) as conn:
                    for name, state, pending, active in conn.run(
                        "SELECT c.name, c.state, count(*) FILTER (WHERE j.state = 'Pending'), "
                        "count(*) FILTER (WHERE j.state = 'Active') FROM channels c LEFT JOIN "
                        "jobs j ON j.channel = c.name GROUP BY c.name, c.state ORDER BY c.name"
                    ):
                        channels[name] = ChannelView(state=state, pending=pending, active=active)
                db_state = f"up on {self.db.address}:{self.db.port}"
            except Exception as exc:  # noqa: BLE001 - status reports, it does not fail
                db_state = f"unreachable: {exc}"
        return LabStatus(
            site=site.site,
            site_file=str(self.paths.site_file if rec else "(lab down)"),
            up=bool(rec) and self.is_up(),
            database=db_state,
            labd=_alive(rec.get("labd_pid")),
            hosts=hosts,
            channels=channels,
        )

    def score(self, *, reset: bool = False) -> Score:
        """The score since the lab started (or since the last reset, which `reset` performs)."""
        self._require_up()
        with contextlib.closing(self.db.connect(timeout=5)) as conn:
            if reset:
                conn.run("UPDATE score_downtime SET seconds = 0")
                conn.run("DELETE FROM score_twice")
                conn.run(
                    "INSERT INTO lab_control VALUES ('score_since', clock_timestamp()::text) "
                    "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
                )
            since_rows = conn.run("SELECT value FROM lab_control WHERE key = 'score_since'")
            since = since_rows[0][0] if since_rows else "1970-01-01 00:00:00+00"
            counts = dict(conn.run("SELECT state, count(*) FROM jobs GROUP BY state"))
            done, lost = conn.run(
                "SELECT count(*) FILTER (WHERE state = 'Done'), count(*) FILTER (WHERE state = "
                "'Lost') FROM jobs WHERE finished_at >= CAST(:s AS timestamptz)",
                s=since,
            )[0]
            downtime = {
                c: round(float(s), 2)
                for c, s in conn.run("SELECT channel, seconds FROM score_downtime ORDER BY channel")
            }
            twice: dict[str, list[TwiceView]] = {"serving": [], "alive": []}
            for kind, agent, hosts, first, last in conn.run(
                "SELECT kind, agent, hosts, first_seen, last_seen FROM score_twice ORDER BY id"
            ):
                twice[kind].append(
                    TwiceView(
                        agent=agent,
                        hosts=hosts.split(","),
                        first_seen=first.isoformat(timespec="milliseconds"),
                        last_seen=last.isoformat(timespec="milliseconds"),
                    )
                )
        return Score(
            since=str(since),
            jobs={
                s: int(counts.get(s, 0)) for s in ("Submitted", "Pending", "Active", "Done", "Lost")
            },
            jobs_done=int(done),
            jobs_lost=int(lost),
            downtime_s=downtime,
            downtime_total_s=round(sum(downtime.values()), 2),
            downtime_max_s=max(downtime.values(), default=0.0),
            agents_running_twice=twice["serving"],
            agents_alive_on_two_hosts=twice["alive"],
        )

    def _require_up(self) -> dict[str, Any]:
        rec = self.record()
        if not rec:
            raise LabError("the lab is down; start it with `handover lab up`")
        return rec

    # --- load ----------------------------------------------------------------------------------

    def set_load(self, *, on: bool | None = None, rate: float | None = None) -> None:
        """Switch the load generator on or off, or change its rate (jobs/s per channel)."""
        self._require_up()
        with contextlib.closing(self.db.connect(timeout=5)) as conn:
            for key, value in (
                ("load", None if on is None else ("on" if on else "off")),
                ("rate", None if rate is None else str(rate)),
            ):
                if value is not None:
                    conn.run(
                        "INSERT INTO lab_control VALUES (:k, :v) ON CONFLICT (key) DO UPDATE "
                        "SET value = EXCLUDED.value",
                        k=key,
                        v=value,
                    )

    # --- faults --------------------------------------------------------------------------------

    def fault(self, host: str, kind: str) -> str:
        """Inject a fault into a host. Returns a sentence saying what was done.

        Kinds: ``sshd-down`` (sshd killed; the host and its agents run), ``frozen`` (every process
        stopped: TCP connects hang), ``crash`` (the host vanishes from the network, then every
        process dies; its DB sessions stay open on the server, as after a real crash),
        ``db-unreachable`` (the host's packets to the database are dropped), ``slow`` (its
        processes run a quarter of the time).
        """
        if kind not in FAULT_KINDS:
            raise LabError(f"unknown fault kind {kind!r}; use one of {', '.join(FAULT_KINDS)}")
        rec = self._require_up()
        site = self.site
        h = site.host(host)
        hrec = rec["hosts"][h.name]
        current = rec.get("faults", {}).get(host)
        if current == kind:
            return f"{host}: already {kind}"
        if current is not None:
            raise LabError(f"{host} already has fault {current}; `handover lab heal {host}` first")
        procs = self.host_processes(rec).get(host, [])
        if kind == "sshd-down":
            signal_all([p for p in procs if p.title.startswith("sshd:")], signal.SIGKILL)
            self._wait(
                lambda: [host] if _port_open(h.address, h.port) else [], 5, "sshd still up on"
            )
            done = f"{host}: sshd killed; the host and its agents keep running"
        elif kind == "frozen":
            signal_all(procs, signal.SIGSTOP)
            done = f"{host}: every process stopped ({len(procs)}); connections to it hang"
        elif kind == "crash":
            faults = {**rec.get("faults", {}), host: kind}
            ghosts = rec.setdefault("ghost_ports", {})
            ghosts[host] = ghosts.get(host, []) + self._db_client_ports(h.address)
            self._apply_firewall(faults, site, ghosts)
            kill_host(hrec["unshare_pid"], hrec["init_pid"])
            done = (
                f"{host}: crashed ({len(procs)} processes killed, its packets dropped; its DB "
                "sessions remain open on the server)"
            )
        elif kind == "db-unreachable":
            self._apply_firewall(
                {**rec.get("faults", {}), host: kind}, site, rec.get("ghost_ports")
            )
            done = f"{host}: its packets to the database are dropped"
        else:
            self._control(f"fault:{host}", "slow")
            done = f"{host}: slowed down (its processes run a quarter of the time)"
        rec.setdefault("faults", {})[host] = kind
        self._save(rec)
        return done

    def heal(self, host: str) -> str:
        """Undo a host's fault (a crashed host reboots: sshd, then its enabled agents)."""
        rec = self._require_up()
        site = self.site
        h = site.host(host)
        kind = rec.get("faults", {}).pop(host, None)
        if kind is None:
            return f"{host}: no fault to heal"
        hrec = rec["hosts"][host]
        if kind == "sshd-down":
            os.kill(hrec["init_pid"], signal.SIGUSR1)
            self._wait(
                lambda: [] if _port_open(h.address, h.port) else [host],
                10,
                "sshd did not come back on",
            )
            done = f"{host}: sshd restarted"
        elif kind == "frozen":
            signal_all(self.host_processes(rec).get(host, []), signal.SIGCONT)
            done = f"{host}: processes resumed"
        elif kind == "crash":
            self._apply_firewall(rec["faults"], site, rec.get("ghost_ports"))
            rec["hosts"][host] = self._launch(h, boot_agents=True)
            self._wait(
                lambda: [] if _port_open(h.address, h.port) else [host],
                20,
                "sshd did not come back on",
            )
            booted = self.paths.host_dir(host) / "boot-agents.log"
            done = f"{host}: rebooted; it ran `service transfer-agents start` (see {booted})"
        elif kind == "db-unreachable":
            self._apply_firewall(rec["faults"], site, rec.get("ghost_ports"))
            done = (
                f"{host}: can reach the database again; the sessions it left on the server keep "
                "their locks until they are killed (drop-db-lock)"
            )
        else:
            self._control(f"fault:{host}", None)
            signal_all(self.host_processes(rec).get(host, []), signal.SIGCONT)
            done = f"{host}: runs at full speed again"
        self._save(rec)
        return done

    def _db_client_ports(self, address: str) -> list[int]:
        with contextlib.closing(self.db.connect(timeout=5)) as conn:
            rows = conn.run(
                "SELECT client_port FROM pg_stat_activity WHERE host(client_addr) = :a", a=address
            )
        return [int(r[0]) for r in rows]

    def _control(self, key: str, value: str | None) -> None:
        with contextlib.closing(self.db.connect(timeout=5)) as conn:
            if value is None:
                conn.run("DELETE FROM lab_control WHERE key = :k", k=key)
            else:
                conn.run(
                    "INSERT INTO lab_control VALUES (:k, :v) ON CONFLICT (key) DO UPDATE SET "
                    "value = EXCLUDED.value",
                    k=key,
                    v=value,
                )

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


def agent_names(agents: list[Agent]) -> list[str]:
    """Names of agents, for messages."""
    return [a.name for a in agents]
