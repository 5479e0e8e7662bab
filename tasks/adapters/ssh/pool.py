"""The pool: one cached, host-key-checked connection per host, shared by the commands run on it
(at most `MAX_SESSIONS_PER_HOST` at once), reconnected once when it died before a command was
sent; one command, a batch of read-only commands, or one command on many hosts at once."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import paramiko

from flows.plans.argv import shell_command
from tasks.adapters.ssh.channel import SessionLost, collect, open_and_exec
from tasks.adapters.ssh.connect import connect, load_private_key
from tasks.adapters.ssh.diagnosis import dropped_before
from tasks.adapters.ssh.errors import (
    CommandFailed,
    CommandTimeout,
    SshError,
    clip,
    cmd,
    tail,
    where,
)
from tasks.adapters.ssh.models import CommandResult, CommandSpec, SshEndpoint, SshSettings

log = logging.getLogger("tasks.adapters.ssh")

MAX_SESSIONS_PER_HOST = 8
"""Concurrent commands on one host; OpenSSH refuses more than ``MaxSessions`` (default 10)."""


@dataclass(eq=False)
class _Slot:
    """The cached connection of one logical host."""

    connect_lock: threading.Lock = field(default_factory=threading.Lock)
    sessions: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(MAX_SESSIONS_PER_HOST)
    )
    client: paramiko.SSHClient | None = None
    endpoint: SshEndpoint | None = None


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
            stderr = tail(result.stderr) or "(empty)"
            raise CommandFailed(
                f"{where(endpoint)}: {cmd(line)} failed with {status}; stderr: {stderr}; "
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
                log.info("%s: cached connection %s; reconnecting", where(endpoint), reason)
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
            if self._key is None:
                self._key = load_private_key(self._settings.key_file, endpoint)
            return self._key

    def _connect(self, endpoint: SshEndpoint) -> paramiko.SSHClient:
        return connect(self._settings, endpoint, self._private_key(endpoint))

    # ---- commands -------------------------------------------------------------------------

    @staticmethod
    def _command_line(command: CommandSpec) -> str:
        if isinstance(command, str):
            if not command.strip():
                raise ValueError("the command is empty")
            if "\x00" in command:
                raise ValueError(f"the command {clip(command)!r} contains NUL")
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
                f"{where(endpoint)}: {cmd(line)} did not start within {limit} s: "
                f"{MAX_SESSIONS_PER_HOST} commands were already running on the host; "
                "retry later or raise the timeout",
                host=endpoint.host,
                command=line,
                timeout=limit,
            )
        try:
            try:
                channel = open_and_exec(
                    endpoint, client, line, deadline, limit, lambda: self._discard(slot, client)
                )
            except SessionLost:
                if not cached:
                    raise dropped_before(endpoint, line) from None
                log.info("%s: cached connection lost; reconnecting once", where(endpoint))
                self._discard(slot, client)
                client, _ = self._client(endpoint, slot)
                try:
                    channel = open_and_exec(
                        endpoint, client, line, deadline, limit, lambda: self._discard(slot, client)
                    )
                except SessionLost:
                    raise dropped_before(endpoint, line) from None
            try:
                return collect(endpoint, client, channel, line, stdin, deadline, limit)
            finally:
                channel.close()
        finally:
            slot.sessions.release()
