"""The geo lab's secrets and certificates, made once per state directory and kept.

* the zone's TSIG key (base64 of 32 random bytes) where ``geo.tsig_key`` points;
* the passwords of handover's admin account and of the replication account, where each tool's
  ``database.password`` and ``database.replication_password`` point, and of the tool's own
  account (``portal_app``: not handover's, so not in the site file) in the state directory;
* the lab's CA (`infra.lab.tls`) where each tool's ``ca_file`` points, and per tool and site a
  server certificate for the tool's FIRST name, a host name of its site and its address, never
  its other names: a planted mismatch the product's remap check must find.

Every secret is written private from its first byte (``os.open`` with mode 0600, in a
directory of mode 0700), as handover refuses a secret file others may read.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
from pathlib import Path

from config.private_files import SecretError, read_secret_file
from config.site import Geo, SecretRef, Tool
from infra.lab import tls
from infra.lab.errors import LabError
from infra.lab.geo.paths import GeoPaths

#: the tool's own database account (SELECT, INSERT, UPDATE, DELETE on its schema only)
APP_USER = "portal_app"
#: the domain of the sites' host names (``tool-a.site-a.handover.test``)
HOST_DOMAIN = "handover.test"


def private_dir(path: Path) -> Path:
    """`path` as a directory of mode 0700 (made if missing, tightened if it was looser)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def write_secret(path: Path, value: str) -> None:
    """Write `value` to `path` unless the file exists: mode 0600 from its first byte.

    Raises:
        LabError: the file could not be written.
    """
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise LabError(f"cannot write the secret file {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")


def secret_file(ref: SecretRef, what: str) -> Path:
    """The file of a secret reference the lab makes.

    Raises:
        LabError: the reference is not a file (the lab makes its secrets as files).
    """
    if ref.file is None:
        raise LabError(
            f"{what}: the geo lab makes its secrets as files; give `{{file: PATH}}` "
            f"(not {ref.describe()})"
        )
    return ref.file


def read(path: Path) -> str:
    """A secret the lab made (checked private, as handover reads it).

    Raises:
        LabError: the file is missing or not private (with the fix).
    """
    try:
        return read_secret_file(path)
    except SecretError as exc:
        raise LabError(str(exc)) from exc


def make_secrets(geo: Geo, paths: GeoPaths) -> None:
    """Make every secret of the lab that does not exist yet (module docstring)."""
    write_secret(
        secret_file(geo.tsig_key, "geo.tsig_key"),
        base64.b64encode(os.urandom(32)).decode(),
    )
    for tool in geo.tools:
        db = tool.database
        write_secret(secret_file(db.password, f"{tool.name}.database.password"), _password())
        write_secret(
            secret_file(db.replication_password, f"{tool.name}.database.replication_password"),
            _password(),
        )
    write_secret(paths.app_password, _password())


def _password() -> str:
    return secrets.token_urlsafe(24)


def ca_file(tool: Tool, paths: GeoPaths) -> Path:
    """Where the CA certificate of `tool` is (its ``ca_file``, else the lab's default)."""
    return Path(tool.ca_file) if tool.ca_file else paths.tls_dir / "ca.pem"


def host_name(geo: Geo, tool: Tool, site: str) -> str:
    """The site-specific host name of `tool` at `site` (``tool-a.site-a.handover.test``): the
    site's first host, else the tool's name."""
    hosts = geo.site(site).hosts
    return f"{hosts[0] if hosts else tool.name}.{site}.{HOST_DOMAIN}"


def make_certificates(geo: Geo, paths: GeoPaths) -> dict[tuple[str, str], tuple[Path, Path]]:
    """The CA (made once) and, per tool and site, a server certificate (made afresh).

    Returns:
        (tool, site) -> (certificate, key).
    """
    out: dict[tuple[str, str], tuple[Path, Path]] = {}
    for tool in geo.tools:
        want = ca_file(tool, paths)
        private_dir(want.parent)
        ca_cert, ca_key = tls.make_ca(want.parent, "handover geo lab CA")
        if ca_cert != want and not want.exists():
            shutil.copyfile(ca_cert, want)
        for site, placement in tool.sites.items():
            out[(tool.name, site)] = tls.issue_cert(
                ca_cert,
                ca_key,
                [tool.names[0].rstrip("."), host_name(geo, tool, site)],
                [placement.address],
                paths.tls_dir,
                f"{tool.name}-{site}",
            )
    return out
