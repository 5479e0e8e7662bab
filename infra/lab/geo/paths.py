"""Where the geo lab keeps its state: one directory, the site file's ``lab.state_dir``.

Layout::

    STATE_DIR/
      geo-lab.json            the running lab's record (PIDs): `GeoLab.down` reads it
      site.yaml               the site the running lab was started with
      secrets/                0700: tsig-key, db-password, repl-password, app-password (0600)
      tls/                    ca.pem (the site file's ``ca_file``), ca-key.pem, the tools' pairs
      db/TOOL-SITE/           my.cnf, data/, the socket, error.log
      dns/SITE-masterN/       named.conf, zone.db (+ its journal), named.log
      dns/SITE-resolverN/     named.conf, named.log
      tool/TOOL-SITE/         tool.json, tool.log

The secrets and the CA are where the site file's references point (they may lie elsewhere);
`GeoPaths` gives the defaults the lab's own site file uses.
"""

from __future__ import annotations

from pathlib import Path


class GeoPaths:
    """The paths of one geo lab's state directory (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def record(self) -> Path:
        """The running lab's record (JSON: PIDs of everything it started)."""
        return self.root / "geo-lab.json"

    @property
    def site_file(self) -> Path:
        """The site the running lab was started with."""
        return self.root / "site.yaml"

    @property
    def secrets_dir(self) -> Path:
        """The secrets the site file does not name (the tool's own account)."""
        return self.root / "secrets"

    @property
    def app_password(self) -> Path:
        """The password of the tool's own database account."""
        return self.secrets_dir / "app-password"

    @property
    def tls_dir(self) -> Path:
        """The CA and the tools' certificates, when the site file names no CA file."""
        return self.root / "tls"

    def db_dir(self, tool: str, site: str) -> Path:
        """The MariaDB server of `tool` at `site`: its configuration, data and logs."""
        return self.root / "db" / f"{tool}-{site}"

    def dns_dir(self, key: str) -> Path:
        """A DNS server's configuration, zone and logs (`key`: ``SITE-masterN``...)."""
        return self.root / "dns" / key

    def tool_dir(self, tool: str, site: str) -> Path:
        """The web application of `tool` at `site`: its configuration and log."""
        return self.root / "tool" / f"{tool}-{site}"
