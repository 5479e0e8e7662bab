"""Host keys: checked against the site's known_hosts only, never learned; an unknown key and a
changed key are refused with different messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import paramiko
from paramiko.hostkeys import InvalidHostKey

from tasks.adapters.ssh.errors import HostKeyError, PermanentSshError, where
from tasks.adapters.ssh.models import SshEndpoint


def describe_key(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.fingerprint}"


def known_hosts_name(endpoint: SshEndpoint) -> str:
    if endpoint.port == 22:
        return endpoint.address
    return f"[{endpoint.address}]:{endpoint.port}"


class UnknownHostKey(paramiko.SSHException):
    """Raised by :class:`RejectUnknownHostKey`; carries the key, so no message parsing."""

    def __init__(self, lookup_name: str, key: paramiko.PKey) -> None:
        super().__init__(f"Server {lookup_name!r} not found in known_hosts")
        self.lookup_name = lookup_name
        self.key = key


class RejectUnknownHostKey(paramiko.RejectPolicy):
    """paramiko's RejectPolicy, raising a distinct exception type (never adds a key)."""

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> Any:
        raise UnknownHostKey(hostname, key)


def load_known_hosts(client: paramiko.SSHClient, known_hosts: Path, endpoint: SshEndpoint) -> None:
    """Load the site's known_hosts into `client`, and refuse any host not in it.

    Raises:
        PermanentSshError: the file is missing, unreadable or has a line with invalid key data.
    """
    here = where(endpoint)
    try:
        client.load_host_keys(str(known_hosts))
    except FileNotFoundError as exc:
        raise PermanentSshError(
            f"{here}: known_hosts file {known_hosts} does not exist; create it with an "
            "explicit entry per host (keys verified out of band), e.g. from "
            f"'ssh-keyscan -p {endpoint.port} {endpoint.address}' checked against the host",
            host=endpoint.host,
        ) from exc
    except OSError as exc:
        raise PermanentSshError(
            f"{here}: cannot read known_hosts file {known_hosts} ({exc.strerror}); "
            "fix its path or permissions",
            host=endpoint.host,
        ) from exc
    except InvalidHostKey as exc:
        raise PermanentSshError(
            f"{here}: known_hosts file {known_hosts} has a line with invalid key data; "
            "fix or remove that line",
            host=endpoint.host,
        ) from exc
    client.set_missing_host_key_policy(RejectUnknownHostKey())


def host_key_error(endpoint: SshEndpoint, exc: Exception, known_hosts: Path) -> HostKeyError | None:
    """The `HostKeyError` that a connection's exception means, or None when it is not about
    the host's key."""
    host = endpoint.host
    here = where(endpoint)
    if isinstance(exc, UnknownHostKey):
        presented = describe_key(exc.key)
        return HostKeyError(
            f"{here}: host key {presented} is not in known_hosts {known_hosts} "
            f"(no entry for {exc.lookup_name}); not connecting; verify the key on the host "
            f"(ssh-keygen -lf on its host key) and add it to {known_hosts}",
            host=host,
            known_hosts=known_hosts,
            presented=presented,
            expected=None,
        )
    if isinstance(exc, paramiko.BadHostKeyException):
        presented = describe_key(exc.key)
        expected = describe_key(exc.expected_key)
        return HostKeyError(
            f"{here}: host key CHANGED: known_hosts says {expected}, host presented "
            f"{presented}; possible man-in-the-middle; do not connect, verify and update "
            f"{known_hosts} (entry {known_hosts_name(endpoint)})",
            host=host,
            known_hosts=known_hosts,
            presented=presented,
            expected=expected,
        )
    return None
