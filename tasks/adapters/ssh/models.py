"""What the SSH adapter takes and gives: where a host's sshd listens, how the pool connects, and
a command's result."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pydantic


class SshEndpoint(pydantic.BaseModel, frozen=True):
    """Where one host's sshd listens.

    Attributes:
        host: Logical host name used in results, errors and the pool's cache (e.g. ``fts101``).
        address: IP address or DNS name to connect to. The known_hosts file must hold the key
            under this name (``[address]:port`` when the port is not 22).
        port: TCP port of sshd.

    Example:
        >>> SshEndpoint(host="fts101", address="127.0.1.1", port=2222).port
        2222
    """

    host: str = pydantic.Field(min_length=1)
    address: str = pydantic.Field(min_length=1)
    port: int = pydantic.Field(default=22, ge=1, le=65535)


class SshSettings(pydantic.BaseModel, frozen=True):
    """How the pool connects and how long it waits.

    Attributes:
        user: Remote user name.
        key_file: Unencrypted private key (OpenSSH or PEM format; RSA, ECDSA or Ed25519).
        known_hosts: OpenSSH known_hosts file with an explicit entry per host (paramiko does not
            understand ``@cert-authority`` or ``@revoked`` lines; they are ignored).
        connect_timeout: Seconds for each connection phase (TCP, banner/handshake, auth).
        command_timeout: Default wall-clock bound of one command, in seconds.
        parallelism: Most threads :meth:`SshPool.fan_out` uses at once.
    """

    user: str = pydantic.Field(min_length=1)
    key_file: Path
    known_hosts: Path
    connect_timeout: float = pydantic.Field(default=5.0, gt=0)
    command_timeout: float = pydantic.Field(default=30.0, gt=0)
    parallelism: int = pydantic.Field(default=8, ge=1)


class CommandResult(pydantic.BaseModel):
    """The outcome of one remote command that ran to its end.

    Attributes:
        host: Logical host name of the endpoint.
        command: The exact command line sent to the server.
        exit_code: The command's exit status; ``-1`` when the server sent none (the command was
            killed by a signal).
        stdout: Standard output, decoded as UTF-8 (invalid bytes replaced).
        stderr: Standard error, decoded likewise.
        duration_s: Seconds from sending the command to its completion.
    """

    host: str
    command: str
    exit_code: int
    stdout: str
    stderr: str
    duration_s: float

    @property
    def ok(self) -> bool:
        """True when the command exited with status 0."""
        return self.exit_code == 0


#: a command: a command line run by the remote user's shell as is, or an argv whose words are
#: each quoted (`shell_command`)
CommandSpec = str | Sequence[str]
