"""The adapter's errors, classed by the recovery they call for (retry, or fix first), and the
phrases every message uses to say where and what."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.adapters.ssh.models import CommandResult, SshEndpoint

_MESSAGE_COMMAND_MAX = 200
_STDERR_TAIL_MAX = 500


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
        self.stderr_tail = tail(result.stderr)


def clip(text: str, limit: int = _MESSAGE_COMMAND_MAX) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def tail(text: str, limit: int = _STDERR_TAIL_MAX) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-(limit - 3) :]


def where(endpoint: SshEndpoint) -> str:
    address = f"[{endpoint.address}]" if ":" in endpoint.address else endpoint.address
    return f"{endpoint.host} ({address}:{endpoint.port})"


def cmd(command: str) -> str:
    return f"command '{clip(command)}'"
