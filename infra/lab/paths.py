"""Where the lab keeps its state. Everything the lab creates lives below `lab.state_dir`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: The uid/gid of `edguser` inside lab hosts (added to each host's own /etc/passwd).
EDGUSER_UID = 7777


@dataclass(frozen=True)
class LabPaths:
    """The lab's files, derived from its state directory."""

    root: Path

    @property
    def state_file(self) -> Path:
        """The running lab's record: PIDs, site file, start times."""
        return self.root / "lab.json"

    @property
    def site_file(self) -> Path:
        """The site the running lab was started from (a copy, or a generated one for --hosts N)."""
        return self.root / "site.yaml"

    @property
    def ssh_dir(self) -> Path:
        """Client key and known_hosts used by handover to log in to lab hosts."""
        return self.root / "ssh"

    @property
    def client_key(self) -> Path:
        """The private key handover logs in with."""
        return self.ssh_dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        """Host keys of every lab host, written by the lab (never learnt on first use)."""
        return self.ssh_dir / "known_hosts"

    @property
    def secrets_dir(self) -> Path:
        """Secrets the lab generates (mode 0700)."""
        return self.root / "secrets"

    @property
    def db_password(self) -> Path:
        """The password of the lab database's `fts` account."""
        return self.secrets_dir / "db-password"

    @property
    def pg_dir(self) -> Path:
        """The PostgreSQL cluster."""
        return self.root / "pg"

    @property
    def pg_data(self) -> Path:
        """PGDATA."""
        return self.pg_dir / "data"

    @property
    def pg_socket_dir(self) -> Path:
        """The cluster's Unix socket directory."""
        return self.pg_dir / "run"

    @property
    def bin_dir(self) -> Path:
        """Commands every host sees in /usr/local/bin (glite-transfer-channel-set, ...)."""
        return self.root / "bin"

    @property
    def log_dir(self) -> Path:
        """Logs of the lab daemon, PostgreSQL and each host."""
        return self.root / "log"

    @property
    def repo_dir(self) -> Path:
        """The lab's package repository (every version of the agents' software)."""
        return self.root / "repo"

    @property
    def site_info(self) -> Path:
        """The YAIM site-info file the agents' configuration is rendered from (shared by every
        host, as a site's file on AFS is)."""
        return self.root / "yaim" / "site-info.def"

    @property
    def ghost_ports(self) -> Path:
        """The DB client ports of crashed hosts' dead sessions, by host address (JSON, world
        readable): a host's new connections must not take one while the firewall drops it."""
        return self.root / "ghost-ports.json"

    def host_dir(self, host: str) -> Path:
        """A host's own files: host key, sshd config, /etc overlay, init script."""
        return self.root / "hosts" / host

    @property
    def hagd_dir(self) -> Path:
        """The HA group daemons' shared files: their key and the hooks' settings they report
        with (`handover lab up --hagd`)."""
        return self.root / "hagd"

    @property
    def hagd_key(self) -> Path:
        """The key the lab's HA group daemons sign their heartbeats with."""
        return self.secrets_dir / "hagd-key"

    @property
    def hagd_report(self) -> Path:
        """The hooks' settings (``KEY=VALUE``) the daemons and `handover-switch` report with."""
        return self.hagd_dir / "hooks.env"

    def hagd_config(self, host: str) -> Path:
        """A front-end host's daemon configuration (its presence starts the daemon at boot)."""
        return self.host_dir(host) / "hagd.yaml"

    def hagd_control(self, host: str) -> Path:
        """A host's daemon control socket (outside the host's /run, so `handover hagd status
        --control` reaches it from the machine)."""
        return self.host_dir(host) / "hagd.sock"
