"""The SSH layer: run commands on the site's hosts over pooled, host-key-checked connections.

This module holds no Prefect code. The tasks that act on agents, channels and hosts call it.

Contract of the adapter (what callers may rely on):

* **Host keys are checked, never learned.** Only ``SshSettings.known_hosts`` is consulted (not
  ``~/.ssh/known_hosts``, not the system file). An unknown or changed host key raises
  :class:`HostKeyError`; nothing is ever written to the known_hosts file.
* **Only the configured key authenticates.** No agent, no ``~/.ssh/id_*`` discovery.
* **Every wait has a bound.** Connecting is bounded by ``connect_timeout`` per phase (TCP, SSH
  banner/handshake, authentication); a command is bounded, wall clock, by its ``timeout`` (from the
  moment the connection is available to the last byte of output). On timeout the channel is closed
  and :class:`CommandTimeout` raised; the remote process may still run (SSH has no reliable kill).
* **Errors are classified by the recovery they call for.** :class:`TransientSshError`: worth a
  retry (refused, timed out, dropped). :class:`PermanentSshError`: a retry cannot help (auth
  failed, host key, key file, known_hosts, a failed command with ``check=True``). Every error has
  ``.host`` and ``.command`` and a message that says what happened, where, and what to do next.
* **One connection per host, reused.** Commands on one host share one transport (concurrent
  channels, at most ``MAX_SESSIONS_PER_HOST`` at once, below OpenSSH's ``MaxSessions`` default
  of 10). A cached connection that died is reconnected transparently, once, before the command is
  sent; a command that was already sent is never re-sent.
* **A command gets EOF on stdin** right after the ``stdin`` text (or at once if there is none), so
  a remote ``cat`` or ``read`` never hangs the flow.
* **Secrets:** the command line appears in results and error messages. Pass secrets through
  ``stdin``, never on the command line. Private key material never appears in any message.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import paramiko
import pydantic
from paramiko.hostkeys import InvalidHostKey
from paramiko.pkey import UnknownKeyType
from paramiko.ssh_exception import IncompatiblePeer, NoValidConnectionsError

from flows.plans.argv import shell_command

__all__ = [
    "MAX_SESSIONS_PER_HOST",
    "CommandFailed",
    "CommandResult",
    "CommandTimeout",
    "HostKeyError",
    "PermanentSshError",
    "SshEndpoint",
    "SshError",
    "SshPool",
    "SshSettings",
    "TransientSshError",
    "shell_command",
]

log = logging.getLogger(__name__)

MAX_SESSIONS_PER_HOST = 8
"""Concurrent commands on one host; OpenSSH refuses more than ``MaxSessions`` (default 10)."""

_CHUNK = 65536
MAX_OUTPUT_BYTES = 16 * 1024 * 1024
"""What a command's stdout and stderr each keep (read on past it, dropped): a remote command
that prints without end must not fill the flow's memory."""
_EOF_GRACE_S = 0.5
"""How long to wait for EOF after the exit status (a daemon started by the command may hold the
output open forever; its output after the command exits is not collected)."""
_POLL_MIN_S = 0.001
_POLL_MAX_S = 0.02
_KEEPALIVE_S = 15
_SETTLE_S = 0.2
_MESSAGE_COMMAND_MAX = 200
_STDERR_TAIL_MAX = 500


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def _restore_error(cls: type[SshError], args: tuple[Any, ...], state: dict[str, Any]) -> SshError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class SshError(Exception):
    """Base of every error of this module.

    Attributes:
        host: Logical host name of the endpoint.
        command: The command line concerned, or None when the failure happened while connecting.
    """

    def __init__(self, message: str, *, host: str, command: str | None = None) -> None:
        super().__init__(message)
        self.host = host
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only constructor arguments defeat Exception's default pickling; errors cross
        # thread and process boundaries (Prefect results), so keep them picklable.
        return (_restore_error, (type(self), self.args, dict(self.__dict__)))


class TransientSshError(SshError):
    """Worth a retry: refused, timed out, handshake failed, connection dropped."""


class PermanentSshError(SshError):
    """A retry cannot help: fix the configuration, the host or the command first."""


class HostKeyError(PermanentSshError):
    """The host's key is not in known_hosts, or differs from it (possible man-in-the-middle).

    Attributes:
        known_hosts: The known_hosts file consulted.
        presented: Type and SHA256 fingerprint of the key the host presented.
        expected: Type and fingerprint known_hosts holds, or None when it holds no entry.
    """

    def __init__(
        self,
        message: str,
        *,
        host: str,
        known_hosts: Path,
        presented: str,
        expected: str | None,
    ) -> None:
        super().__init__(message, host=host, command=None)
        self.known_hosts = known_hosts
        self.presented = presented
        self.expected = expected

    @property
    def changed(self) -> bool:
        """True when known_hosts holds a different key (rather than no key) for the host."""
        return self.expected is not None


class CommandTimeout(TransientSshError):
    """A command did not finish within its timeout.

    Attributes:
        timeout: The bound, in seconds.
    """

    def __init__(self, message: str, *, host: str, command: str, timeout: float) -> None:
        super().__init__(message, host=host, command=command)
        self.timeout = timeout


class CommandFailed(PermanentSshError):
    """A command run with ``check=True`` exited with a non-zero status.

    Attributes:
        exit_code: The exit status (``-1``: none, killed by a signal).
        stderr_tail: The last part of the command's standard error.
        result: The full result.
    """

    def __init__(self, message: str, *, result: CommandResult) -> None:
        super().__init__(message, host=result.host, command=result.command)
        self.result = result
        self.exit_code = result.exit_code
        self.stderr_tail = _tail(result.stderr)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _clip(text: str, limit: int = _MESSAGE_COMMAND_MAX) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tail(text: str, limit: int = _STDERR_TAIL_MAX) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-(limit - 3) :]


def _where(endpoint: SshEndpoint) -> str:
    address = f"[{endpoint.address}]" if ":" in endpoint.address else endpoint.address
    return f"{endpoint.host} ({address}:{endpoint.port})"


def _cmd(command: str) -> str:
    return f"command '{_clip(command)}'"


def _describe_key(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.fingerprint}"


def _known_hosts_name(endpoint: SshEndpoint) -> str:
    if endpoint.port == 22:
        return endpoint.address
    return f"[{endpoint.address}]:{endpoint.port}"


def _has_exit_status(channel: paramiko.Channel) -> bool:
    """Whether the server sent an exit status.

    Not ``Channel.exit_status_ready()``: that is also True for a channel closed without any exit
    status (dropped connection, or a command killed by a signal: paramiko ignores "exit-signal").
    """
    return channel.status_event.is_set() and channel.exit_status >= 0


def _still_active(transport: paramiko.Transport | None) -> bool:
    """Whether the transport is alive, after letting a dying one finish dying.

    When the connection drops, paramiko closes the channels *before* it marks the transport
    inactive, so a channel closed without exit status may look like "killed by a signal" on a
    live transport for a moment. Give the transport thread a bounded moment to settle.
    """
    if transport is None:
        return False
    deadline = time.monotonic() + _SETTLE_S
    while transport.is_active():
        if time.monotonic() >= deadline:
            return True
        time.sleep(0.005)
    return False


class _UnknownHostKey(paramiko.SSHException):
    """Raised by :class:`_RejectUnknownHostKey`; carries the key, so no message parsing."""

    def __init__(self, lookup_name: str, key: paramiko.PKey) -> None:
        super().__init__(f"Server {lookup_name!r} not found in known_hosts")
        self.lookup_name = lookup_name
        self.key = key


class _RejectUnknownHostKey(paramiko.RejectPolicy):
    """paramiko's RejectPolicy, raising a distinct exception type (never adds a key)."""

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> Any:
        raise _UnknownHostKey(hostname, key)


@dataclass(eq=False)
class _Slot:
    """The cached connection of one logical host."""

    connect_lock: threading.Lock = field(default_factory=threading.Lock)
    sessions: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(MAX_SESSIONS_PER_HOST)
    )
    client: paramiko.SSHClient | None = None
    endpoint: SshEndpoint | None = None


class _SessionLost(Exception):
    """Internal: the cached transport died before the command was sent (safe to reconnect)."""


CommandSpec = str | Sequence[str]


# --------------------------------------------------------------------------------------------
# The pool
# --------------------------------------------------------------------------------------------


class SshPool:
    """Runs commands on hosts over one cached, host-key-checked SSH connection per host.

    Thread-safe: any number of threads may call :meth:`run` at once. Commands on one host share
    one transport (at most ``MAX_SESSIONS_PER_HOST`` running at once; more wait, within their
    timeout). Closing the pool closes every connection; the pool can still be used afterwards
    and reconnects on demand.

    Args:
        settings: User, key, known_hosts, timeouts and parallelism.

    Example:
        >>> settings = SshSettings(
        ...     user="root", key_file=Path("/etc/handover/id_ed25519"),
        ...     known_hosts=Path("/etc/handover/known_hosts"), command_timeout=60,
        ... )
        >>> fts101 = SshEndpoint(host="fts101", address="127.0.1.1", port=2222)
        >>> with SshPool(settings) as pool:  # doctest: +SKIP
        ...     result = pool.run(fts101, ["service", "transfer-agents", "stop"], check=True)
        ...     print(result.stdout)
        ...     states = pool.fan_out([fts101], "pgrep -fc glite-transfer-channel-agent")
    """

    def __init__(self, settings: SshSettings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._slots: dict[str, _Slot] = {}
        self._key_lock = threading.Lock()
        self._key: paramiko.PKey | None = None

    @property
    def settings(self) -> SshSettings:
        """The settings this pool was built with."""
        return self._settings

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---- public operations ------------------------------------------------------------------

    def run(
        self,
        endpoint: SshEndpoint,
        command: CommandSpec,
        *,
        timeout: float | None = None,
        check: bool = False,
        stdin: str | None = None,
    ) -> CommandResult:
        """Run one command on one host and collect its exit code, stdout and stderr.

        Args:
            endpoint: The host.
            command: A command line (run by the remote user's shell as is), or an argv whose
                words are each quoted with :func:`shell_command`. Prefer the argv form for
                anything that contains a name from a config or an alert.
            timeout: Wall-clock bound in seconds; defaults to ``settings.command_timeout``.
            check: Raise :class:`CommandFailed` when the exit code is not 0.
            stdin: Text written to the command's standard input, followed by EOF. Without it
                the command reads EOF at once. The place for secrets.

        Returns:
            The result, whatever the exit code (unless ``check``).

        Raises:
            ValueError: The command is empty or malformed (see :func:`shell_command`).
            CommandTimeout: The command did not finish in time (the channel is closed; the
                remote process may still run).
            CommandFailed: ``check`` is set and the exit code is not 0.
            TransientSshError: Connecting failed in a way worth a retry, or the connection
                dropped (when it dropped mid-command, the command may or may not have run).
            PermanentSshError: Authentication, key file or known_hosts problem.
            HostKeyError: The host key is unknown or changed.
        """
        line = self._command_line(command)
        limit = self._settings.command_timeout if timeout is None else float(timeout)
        if not limit > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        result = self._run_once(endpoint, line, limit, stdin)
        if check and not result.ok:
            status = (
                "no exit status (killed by a signal?)"
                if result.exit_code == -1
                else f"exit code {result.exit_code}"
            )
            stderr = _tail(result.stderr) or "(empty)"
            raise CommandFailed(
                f"{_where(endpoint)}: {_cmd(line)} failed with {status}; stderr: {stderr}; "
                "fix the cause on the host (see the command's stderr) before re-running",
                result=result,
            )
        return result

    def run_many(
        self,
        endpoint: SshEndpoint,
        commands: Sequence[CommandSpec],
        *,
        timeout: float | None = None,
    ) -> list[CommandResult]:
        """Run read-only commands on one host in one round trip (`tasks.adapters.ssh_batch`).

        One session on the host instead of one per command: what a snapshot of many hosts
        needs. The commands run one after the other, each in a subshell with its stdin closed.

        Args:
            endpoint: The host.
            commands: Command lines or argvs, as in :meth:`run`.
            timeout: Bound on the whole batch; defaults to ``settings.command_timeout``.

        Returns:
            Each command's result, in order (any exit code; each with the batch's duration).

        Raises:
            ValueError: No command, or a malformed one.
            CommandTimeout, TransientSshError, PermanentSshError, HostKeyError: as for
                :meth:`run`, for the batch as a whole (also when it ended before its last
                command).
        """
        from tasks.adapters.ssh_batch import batch_script, new_nonce, split_batch

        lines = [self._command_line(c) for c in commands]
        if len(lines) == 1:
            return [self.run(endpoint, lines[0], timeout=timeout)]
        nonce = new_nonce()
        whole = self.run(endpoint, ["sh", "-c", batch_script(lines, nonce)], timeout=timeout)
        return split_batch(whole, lines, nonce)

    def fan_out(
        self,
        endpoints: Sequence[SshEndpoint],
        command: CommandSpec | Callable[[SshEndpoint], CommandSpec],
        *,
        timeout: float | None = None,
    ) -> dict[str, CommandResult | SshError]:
        """Run a read-only command on many hosts in parallel; collect results and errors.

        Meant for queries (state snapshots), not for changes: an error on one host does not
        stop the others, and nothing is retried. At most ``settings.parallelism`` hosts are
        contacted at once. Commands built by a callable are all built (and validated) before
        any is sent.

        Args:
            endpoints: The hosts; each logical host name at most once.
            command: One command for all, or a function building each host's command.
            timeout: Per-command bound, as in :meth:`run`.

        Returns:
            For each endpoint's ``host``, in the order given: its :class:`CommandResult` (any
            exit code) or the :class:`SshError` that prevented it.

        Raises:
            ValueError: A host name appears twice, or a command is malformed.
        """
        hosts = [endpoint.host for endpoint in endpoints]
        duplicates = sorted({host for host in hosts if hosts.count(host) > 1})
        if duplicates:
            raise ValueError(f"fan_out got these hosts more than once: {', '.join(duplicates)}")
        if not endpoints:
            return {}
        lines = {
            endpoint.host: self._command_line(command(endpoint) if callable(command) else command)
            for endpoint in endpoints
        }

        def one(endpoint: SshEndpoint) -> CommandResult | SshError:
            try:
                return self.run(endpoint, lines[endpoint.host], timeout=timeout)
            except SshError as error:
                return error

        workers = min(self._settings.parallelism, len(endpoints))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ssh-fan-out") as pool:
            futures = {endpoint.host: pool.submit(one, endpoint) for endpoint in endpoints}
            return {host: future.result() for host, future in futures.items()}

    def drop(self, host: str) -> None:
        """Close the cached connection of one logical host (the next command reconnects).

        Commands running on it at that moment fail with :class:`TransientSshError`.

        Args:
            host: Logical host name, as in ``SshEndpoint.host``.
        """
        with self._lock:
            slot = self._slots.get(host)
        if slot is None:
            return
        with slot.connect_lock:
            if slot.client is not None:
                log.debug("closing the connection to %s on request", host)
                slot.client.close()
                slot.client = None
                slot.endpoint = None

    def close(self) -> None:
        """Close every cached connection."""
        with self._lock:
            hosts = list(self._slots)
        for host in hosts:
            self.drop(host)

    # ---- connections --------------------------------------------------------------------------

    def _slot(self, host: str) -> _Slot:
        with self._lock:
            slot = self._slots.get(host)
            if slot is None:
                slot = self._slots[host] = _Slot()
            return slot

    def _client(self, endpoint: SshEndpoint, slot: _Slot) -> tuple[paramiko.SSHClient, bool]:
        """The host's connection and whether it was cached (True) or just made (False)."""
        with slot.connect_lock:
            client = slot.client
            if client is not None:
                transport = client.get_transport()
                if slot.endpoint == endpoint and transport is not None and transport.is_active():
                    return client, True
                reason = "is no longer active" if slot.endpoint == endpoint else "has a new address"
                log.info("%s: cached connection %s; reconnecting", _where(endpoint), reason)
                client.close()
                slot.client = None
                slot.endpoint = None
            client = self._connect(endpoint)
            slot.client = client
            slot.endpoint = endpoint
            return client, False

    def _discard(self, slot: _Slot, client: paramiko.SSHClient) -> None:
        with slot.connect_lock:
            if slot.client is client:
                slot.client = None
                slot.endpoint = None
        client.close()

    def _private_key(self, endpoint: SshEndpoint) -> paramiko.PKey:
        with self._key_lock:
            if self._key is not None:
                return self._key
            path = self._settings.key_file
            where = _where(endpoint)
            try:
                key = paramiko.PKey.from_path(path)
            except FileNotFoundError as exc:
                raise PermanentSshError(
                    f"{where}: private key file {path} does not exist; "
                    "set key_file to the key whose public half is in the hosts' authorized_keys",
                    host=endpoint.host,
                ) from exc
            except PermissionError as exc:
                raise PermanentSshError(
                    f"{where}: private key file {path} is not readable by this process; "
                    "fix its owner/mode (0600, owned by the user running handover)",
                    host=endpoint.host,
                ) from exc
            except OSError as exc:
                raise PermanentSshError(
                    f"{where}: cannot read private key file {path} ({exc.strerror}); "
                    "point key_file at a readable private key file",
                    host=endpoint.host,
                ) from exc
            except (ValueError, TypeError, paramiko.SSHException, UnknownKeyType) as exc:
                # The exception text is deliberately not included: it could echo key material.
                raise PermanentSshError(
                    f"{where}: private key file {path} is not an unencrypted RSA, ECDSA or "
                    f"Ed25519 private key ({type(exc).__name__}); provide a key without "
                    "passphrase in OpenSSH or PEM format",
                    host=endpoint.host,
                ) from exc
            self._key = key
            return key

    def _connect(self, endpoint: SshEndpoint) -> paramiko.SSHClient:
        settings = self._settings
        where = _where(endpoint)
        pkey = self._private_key(endpoint)
        client = paramiko.SSHClient()
        known_hosts = settings.known_hosts
        try:
            client.load_host_keys(str(known_hosts))
        except FileNotFoundError as exc:
            raise PermanentSshError(
                f"{where}: known_hosts file {known_hosts} does not exist; create it with an "
                "explicit entry per host (keys verified out of band), e.g. from "
                f"'ssh-keyscan -p {endpoint.port} {endpoint.address}' checked against the host",
                host=endpoint.host,
            ) from exc
        except OSError as exc:
            raise PermanentSshError(
                f"{where}: cannot read known_hosts file {known_hosts} ({exc.strerror}); "
                "fix its path or permissions",
                host=endpoint.host,
            ) from exc
        except InvalidHostKey as exc:
            raise PermanentSshError(
                f"{where}: known_hosts file {known_hosts} has a line with invalid key data; "
                "fix or remove that line",
                host=endpoint.host,
            ) from exc
        client.set_missing_host_key_policy(_RejectUnknownHostKey())
        timeout = settings.connect_timeout
        connected = False
        try:
            client.connect(
                hostname=endpoint.address,
                port=endpoint.port,
                username=settings.user,
                pkey=pkey,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
                look_for_keys=False,
                allow_agent=False,
            )
            connected = True
        except Exception as exc:
            transport = client.get_transport()
            alive = transport is not None and transport.is_active()
            raise self._connect_error(endpoint, exc, transport_alive=alive) from exc
        finally:
            if not connected:
                client.close()
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(_KEEPALIVE_S)
            # SSH messages are small and answered one by one: without TCP_NODELAY, Nagle's
            # algorithm and delayed ACKs add ~40 ms to every command (measured: 47 ms -> 3 ms)
            if isinstance(transport.sock, socket.socket):
                with contextlib.suppress(OSError):
                    transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        log.debug("%s: connected as %s", where, settings.user)
        return client

    def _connect_error(
        self, endpoint: SshEndpoint, exc: Exception, *, transport_alive: bool
    ) -> SshError:
        """Classify an exception raised by ``SSHClient.connect``."""
        settings = self._settings
        host = endpoint.host
        where = _where(endpoint)
        timeout = settings.connect_timeout
        known_hosts = settings.known_hosts
        if isinstance(exc, _UnknownHostKey):
            presented = _describe_key(exc.key)
            return HostKeyError(
                f"{where}: host key {presented} is not in known_hosts {known_hosts} "
                f"(no entry for {exc.lookup_name}); not connecting; verify the key on the host "
                f"(ssh-keygen -lf on its host key) and add it to {known_hosts}",
                host=host,
                known_hosts=known_hosts,
                presented=presented,
                expected=None,
            )
        if isinstance(exc, paramiko.BadHostKeyException):
            presented = _describe_key(exc.key)
            expected = _describe_key(exc.expected_key)
            return HostKeyError(
                f"{where}: host key CHANGED: known_hosts says {expected}, host presented "
                f"{presented}; possible man-in-the-middle; do not connect, verify and update "
                f"{known_hosts} (entry {_known_hosts_name(endpoint)})",
                host=host,
                known_hosts=known_hosts,
                presented=presented,
                expected=expected,
            )
        if isinstance(exc, paramiko.AuthenticationException):
            text = str(exc)
            # paramiko reports a timeout and a connection lost during auth with this same class.
            if "timeout" in text.lower() or not transport_alive:
                return TransientSshError(
                    f"{where}: authentication did not complete ({text}) within {timeout} s "
                    "or the connection was lost during it; the host may be overloaded; retry",
                    host=host,
                )
            return PermanentSshError(
                f"{where}: authentication as {settings.user!r} with key {settings.key_file} "
                f"was refused ({text}); put the key's public half in the host's "
                "authorized_keys or fix user/key_file; retrying will not help",
                host=host,
            )
        if isinstance(exc, IncompatiblePeer):
            return PermanentSshError(
                f"{where}: no SSH algorithm in common with the server ({exc}); "
                "align the server's or paramiko's algorithms",
                host=host,
            )
        if isinstance(exc, NoValidConnectionsError):
            codes = {getattr(error, "errno", None) for error in exc.errors.values()}
            what = "connection refused" if errno.ECONNREFUSED in codes else "host unreachable"
            return TransientSshError(
                f"{where}: {what}; sshd is not running or not listening there, or the host is "
                "down; check that the host is up and sshd runs, then retry",
                host=host,
            )
        if isinstance(exc, socket.gaierror):
            if exc.errno == socket.EAI_AGAIN:
                return TransientSshError(
                    f"{where}: the name {endpoint.address!r} could not be resolved right now "
                    f"({exc.strerror}); DNS may be down; retry",
                    host=host,
                )
            return PermanentSshError(
                f"{where}: the name {endpoint.address!r} does not resolve ({exc.strerror}); "
                "fix the host's address in the site config",
                host=host,
            )
        if isinstance(exc, TimeoutError):
            return TransientSshError(
                f"{where}: no TCP connection within {timeout} s; the host may be down, "
                "frozen or firewalled; check it, then retry",
                host=host,
            )
        if isinstance(exc, paramiko.SSHException | EOFError):
            return TransientSshError(
                f"{where}: the SSH handshake failed or did not complete within {timeout} s "
                f"({type(exc).__name__}: {exc}); sshd may be overloaded, frozen or restarting; "
                "retry, or check sshd on the host",
                host=host,
            )
        if isinstance(exc, OSError):
            return TransientSshError(
                f"{where}: network error while connecting ({exc.strerror or exc}); "
                "check the host and the network, then retry",
                host=host,
            )
        return SshError(
            f"{where}: unexpected {type(exc).__name__} while connecting: {exc}; "
            "this is a bug or an unsupported server; report it with the host's sshd version",
            host=host,
        )

    # ---- commands -------------------------------------------------------------------------

    @staticmethod
    def _command_line(command: CommandSpec) -> str:
        if isinstance(command, str):
            if not command.strip():
                raise ValueError("the command is empty")
            if "\x00" in command:
                raise ValueError(f"the command {_clip(command)!r} contains NUL")
            return command
        return shell_command(command)

    def _run_once(
        self, endpoint: SshEndpoint, line: str, limit: float, stdin: str | None
    ) -> CommandResult:
        slot = self._slot(endpoint.host)
        client, cached = self._client(endpoint, slot)
        deadline = time.monotonic() + limit
        if not slot.sessions.acquire(timeout=limit):
            raise CommandTimeout(
                f"{_where(endpoint)}: {_cmd(line)} did not start within {limit} s: "
                f"{MAX_SESSIONS_PER_HOST} commands were already running on the host; "
                "retry later or raise the timeout",
                host=endpoint.host,
                command=line,
                timeout=limit,
            )
        try:
            try:
                channel = self._open_and_exec(endpoint, slot, client, line, deadline, limit)
            except _SessionLost:
                if not cached:
                    raise self._dropped_before(endpoint, line) from None
                log.info("%s: cached connection lost; reconnecting once", _where(endpoint))
                self._discard(slot, client)
                client, _ = self._client(endpoint, slot)
                try:
                    channel = self._open_and_exec(endpoint, slot, client, line, deadline, limit)
                except _SessionLost:
                    raise self._dropped_before(endpoint, line) from None
            try:
                return self._collect(endpoint, client, channel, line, stdin, deadline, limit)
            finally:
                channel.close()
        finally:
            slot.sessions.release()

    def _timeout(
        self,
        endpoint: SshEndpoint,
        line: str,
        limit: float,
        *,
        phase: Literal["open", "start", "run"],
    ) -> CommandTimeout:
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
            f"{_where(endpoint)}: {_cmd(line)} did not finish within {limit} s; {details[phase]}",
            host=endpoint.host,
            command=line,
            timeout=limit,
        )

    @staticmethod
    def _dropped_before(endpoint: SshEndpoint, line: str) -> TransientSshError:
        return TransientSshError(
            f"{_where(endpoint)}: the connection dropped before {_cmd(line)} was sent, so it "
            "did not run; check that the host is up and sshd runs, then retry",
            host=endpoint.host,
            command=line,
        )

    def _open_and_exec(
        self,
        endpoint: SshEndpoint,
        slot: _Slot,
        client: paramiko.SSHClient,
        line: str,
        deadline: float,
        limit: float,
    ) -> paramiko.Channel:
        """Open a session channel and start the command, within the deadline.

        Raises:
            _SessionLost: the transport is dead and the command was not sent (safe to retry on
                a new connection). Once the exec request is out, a loss is a TransientSshError.
        """
        transport = client.get_transport()
        if transport is None or not transport.is_active():
            raise _SessionLost
        try:
            channel = transport.open_session(timeout=max(deadline - time.monotonic(), 0.001))
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if not transport.is_active():
                raise _SessionLost from exc
            if time.monotonic() >= deadline:
                self._discard(slot, client)
                raise self._timeout(endpoint, line, limit, phase="open") from exc
            raise TransientSshError(
                f"{_where(endpoint)}: the server refused a session for {_cmd(line)} ({exc}); "
                "too many sessions on the host? retry later",
                host=endpoint.host,
                command=line,
            ) from exc
        channel.settimeout(max(deadline - time.monotonic(), 0.001))
        # Channel.exec_command waits for the server's reply without any timeout: a watchdog
        # closes the channel at the deadline, which wakes it up.
        watchdog = threading.Timer(max(deadline - time.monotonic(), 0.0), channel.close)
        watchdog.daemon = True
        watchdog.start()
        try:
            channel.exec_command(line)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            channel.close()
            # The request went out: the command may have started, so never re-send it.
            if time.monotonic() >= deadline:
                self._discard(slot, client)
                raise self._timeout(endpoint, line, limit, phase="start") from exc
            if not transport.is_active():
                raise self._dropped_during(endpoint, line) from exc
            raise TransientSshError(
                f"{_where(endpoint)}: the server refused to run {_cmd(line)} ({exc}); "
                "check sshd's configuration (ForceCommand, MaxSessions), then retry",
                host=endpoint.host,
                command=line,
            ) from exc
        finally:
            watchdog.cancel()
        return channel

    def _collect(
        self,
        endpoint: SshEndpoint,
        client: paramiko.SSHClient,
        channel: paramiko.Channel,
        line: str,
        stdin: str | None,
        deadline: float,
        limit: float,
    ) -> CommandResult:
        """Feed stdin, read stdout/stderr until exit (or deadline), and build the result."""
        started = time.monotonic()
        transport = client.get_transport()
        stdout = bytearray()
        stderr = bytearray()
        dropped = [0, 0]  # bytes read past MAX_OUTPUT_BYTES, per stream

        def keep(buf: bytearray, data: bytes, stream: int) -> None:
            room = MAX_OUTPUT_BYTES - len(buf)
            buf += data[: max(room, 0)]
            dropped[stream] += max(len(data) - max(room, 0), 0)

        pending = memoryview(stdin.encode("utf-8")) if stdin else None
        exit_seen: float | None = None
        pause = _POLL_MIN_S
        try:
            if pending is None:
                channel.shutdown_write()
            while True:
                progressed = False
                while channel.recv_ready():
                    keep(stdout, channel.recv(_CHUNK), 0)
                    progressed = True
                while channel.recv_stderr_ready():
                    keep(stderr, channel.recv_stderr(_CHUNK), 1)
                    progressed = True
                if pending is not None and channel.send_ready() and not channel.closed:
                    sent = channel.send(bytes(pending[:_CHUNK]))
                    pending = pending[sent:]
                    progressed = progressed or sent > 0
                    if not pending:
                        channel.shutdown_write()
                        pending = None
                now = time.monotonic()
                if _has_exit_status(channel):
                    if channel.eof_received or channel.closed:
                        break
                    exit_seen = now if exit_seen is None else exit_seen
                    if now - exit_seen >= _EOF_GRACE_S:
                        log.debug(
                            "%s: %s exited but its output stays open (a daemon?); not waiting",
                            _where(endpoint),
                            _cmd(line),
                        )
                        break
                elif channel.closed:
                    if now >= deadline:  # closed by the watchdog of _open_and_exec
                        raise self._timeout(endpoint, line, limit, phase="run")
                    break
                if now >= deadline:
                    raise self._timeout(endpoint, line, limit, phase="run")
                pause = _POLL_MIN_S if progressed else min(pause * 2, _POLL_MAX_S)
                wait = min(pause, max(deadline - now, 0.0))
                if exit_seen is None:
                    channel.status_event.wait(wait)  # set by the exit status or the close
                else:
                    time.sleep(wait)  # the event stays set once the exit status is in
            while channel.recv_ready():
                keep(stdout, channel.recv(_CHUNK), 0)
            while channel.recv_stderr_ready():
                keep(stderr, channel.recv_stderr(_CHUNK), 1)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if time.monotonic() >= deadline:
                raise self._timeout(endpoint, line, limit, phase="run") from exc
            raise self._dropped_during(endpoint, line) from exc
        if _has_exit_status(channel):
            exit_code = channel.exit_status
        elif _still_active(transport):
            exit_code = -1  # the server closed the channel without exit status: killed by a signal
        else:
            raise self._dropped_during(endpoint, line)
        cut = [f"\n[handover: {n} more bytes not kept]" if n else "" for n in dropped]
        return CommandResult(
            host=endpoint.host,
            command=line,
            exit_code=exit_code,
            stdout=stdout.decode("utf-8", errors="replace") + cut[0],
            stderr=stderr.decode("utf-8", errors="replace") + cut[1],
            duration_s=round(time.monotonic() - started, 6),
        )

    @staticmethod
    def _dropped_during(endpoint: SshEndpoint, line: str) -> TransientSshError:
        return TransientSshError(
            f"{_where(endpoint)}: the connection dropped while {_cmd(line)} ran; it may or may "
            "not have completed; check the host's state before retrying",
            host=endpoint.host,
            command=line,
        )
