"""What a failure means: each exception of connecting, and each way a command can fail to end,
turned into an error of the right class whose message says what happened, where, and what to do
next."""

from __future__ import annotations

import errno
import socket
from typing import Literal

import paramiko
from paramiko.ssh_exception import IncompatiblePeer, NoValidConnectionsError

from tasks.adapters.ssh.errors import (
    CommandTimeout,
    PermanentSshError,
    SshError,
    TransientSshError,
    cmd,
    where,
)
from tasks.adapters.ssh.host_keys import host_key_error
from tasks.adapters.ssh.models import SshEndpoint, SshSettings


def connect_error(
    settings: SshSettings, endpoint: SshEndpoint, exc: Exception, *, transport_alive: bool
) -> SshError:
    """Classify an exception raised by ``SSHClient.connect``.

    Args:
        settings: the pool's settings (user, key, timeouts, named in the message).
        endpoint: the host it was connecting to.
        exc: what ``connect`` raised.
        transport_alive: whether the transport was still up when it raised.

    Returns:
        The error to raise: transient (worth a retry) or permanent (fix first).
    """
    host = endpoint.host
    here = where(endpoint)
    timeout = settings.connect_timeout
    key_error = host_key_error(endpoint, exc, settings.known_hosts)
    if key_error is not None:
        return key_error
    if isinstance(exc, paramiko.AuthenticationException):
        text = str(exc)
        # paramiko reports a timeout and a connection lost during auth with this same class.
        if "timeout" in text.lower() or not transport_alive:
            return TransientSshError(
                f"{here}: authentication did not complete ({text}) within {timeout} s "
                "or the connection was lost during it; the host may be overloaded; retry",
                host=host,
            )
        return PermanentSshError(
            f"{here}: authentication as {settings.user!r} with key {settings.key_file} "
            f"was refused ({text}); put the key's public half in the host's "
            "authorized_keys or fix user/key_file; retrying will not help",
            host=host,
        )
    if isinstance(exc, IncompatiblePeer):
        return PermanentSshError(
            f"{here}: no SSH algorithm in common with the server ({exc}); "
            "align the server's or paramiko's algorithms",
            host=host,
        )
    if isinstance(exc, NoValidConnectionsError):
        codes = {getattr(error, "errno", None) for error in exc.errors.values()}
        what = "connection refused" if errno.ECONNREFUSED in codes else "host unreachable"
        return TransientSshError(
            f"{here}: {what}; sshd is not running or not listening there, or the host is "
            "down; check that the host is up and sshd runs, then retry",
            host=host,
        )
    if isinstance(exc, socket.gaierror):
        if exc.errno == socket.EAI_AGAIN:
            return TransientSshError(
                f"{here}: the name {endpoint.address!r} could not be resolved right now "
                f"({exc.strerror}); DNS may be down; retry",
                host=host,
            )
        return PermanentSshError(
            f"{here}: the name {endpoint.address!r} does not resolve ({exc.strerror}); "
            "fix the host's address in the site config",
            host=host,
        )
    if isinstance(exc, TimeoutError):
        return TransientSshError(
            f"{here}: no TCP connection within {timeout} s; the host may be down, "
            "frozen or firewalled; check it, then retry",
            host=host,
        )
    if isinstance(exc, paramiko.SSHException | EOFError):
        return TransientSshError(
            f"{here}: the SSH handshake failed or did not complete within {timeout} s "
            f"({type(exc).__name__}: {exc}); sshd may be overloaded, frozen or restarting; "
            "retry, or check sshd on the host",
            host=host,
        )
    if isinstance(exc, OSError):
        return TransientSshError(
            f"{here}: network error while connecting ({exc.strerror or exc}); "
            "check the host and the network, then retry",
            host=host,
        )
    return SshError(
        f"{here}: unexpected {type(exc).__name__} while connecting: {exc}; "
        "this is a bug or an unsupported server; report it with the host's sshd version",
        host=host,
    )


def command_timeout(
    endpoint: SshEndpoint,
    line: str,
    limit: float,
    *,
    phase: Literal["open", "start", "run"],
) -> CommandTimeout:
    """The error of a command that did not end within `limit`, saying whether it may have run
    (`phase`: the session did not open, the start was not confirmed, or it ran too long)."""
    details = {
        "open": "the host did not even open a session, so the command did not run; it may "
        "be overloaded or frozen; the connection was dropped; retry or check the host",
        "start": "the host did not confirm the start of the command (it may or may not "
        "run); it may be overloaded or frozen; the connection was dropped; check the host "
        "before retrying",
        "run": "the host may be overloaded or frozen, or the command hangs (it may still be "
        "running there); retry or check the host",
    }
    return CommandTimeout(
        f"{where(endpoint)}: {cmd(line)} did not finish within {limit} s; {details[phase]}",
        host=endpoint.host,
        command=line,
        timeout=limit,
    )


def dropped_before(endpoint: SshEndpoint, line: str) -> TransientSshError:
    """The error of a connection lost before the command was sent (it did not run)."""
    return TransientSshError(
        f"{where(endpoint)}: the connection dropped before {cmd(line)} was sent, so it "
        "did not run; check that the host is up and sshd runs, then retry",
        host=endpoint.host,
        command=line,
    )


def dropped_during(endpoint: SshEndpoint, line: str) -> TransientSshError:
    """The error of a connection lost while the command ran (it may or may not have run)."""
    return TransientSshError(
        f"{where(endpoint)}: the connection dropped while {cmd(line)} ran; it may or may "
        "not have completed; check the host's state before retrying",
        host=endpoint.host,
        command=line,
    )
