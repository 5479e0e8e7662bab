"""The site's hosts as SSH endpoints, one run's SSH client (`SiteShell`), and the retry rule.

Contract:
    * A `SiteShell` is one run's client: one connection per host, shared by the run's threads,
      closed when the run ends; runs in one process (`handover serve`) never share connections.
    * `SiteShell.run(host, command, **values)` runs one command built from a command-profile
      template; the values are validated names and every word is shell-quoted.
    * Only transient SSH errors are retried (`retry_if_transient` for Prefect's
      `retry_condition_fn`); permanent ones (host key, authentication, a command that failed)
      end the task at once with their message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from config.site import Site
from tasks.adapters.ssh import (
    CommandResult,
    PermanentSshError,
    SshEndpoint,
    SshError,
    SshPool,
    SshSettings,
    TransientSshError,
)


class HostUnreachable(PermanentSshError):
    """The run recorded the host as not answering (`SiteShell.mark_unreachable`): the command
    was not sent, and no connect waited for it."""


def ssh_settings(site: Site) -> SshSettings:
    """The SSH layer's settings for a site."""
    s = site.ssh
    return SshSettings(
        user=s.user,
        key_file=s.key_file,
        known_hosts=s.known_hosts,
        connect_timeout=s.connect_timeout_s,
        command_timeout=s.command_timeout_s,
        parallelism=s.parallelism,
    )


def endpoint(site: Site, host: str) -> SshEndpoint:
    """The SSH endpoint of a host of the site (KeyError names the known hosts)."""
    h = site.host(host)
    return SshEndpoint(host=h.name, address=h.address, port=h.port)


class SiteShell:
    """The SSH client of one run (or one test, one CLI command): the site's hosts over one pool.

    Every verb takes it as its first parameter. It is thread-safe (the chains of a run share
    it) and holds one connection per host; `close()` (or leaving a ``with`` block) closes them
    without touching another run's connections.

    Example:
        >>> with SiteShell(site) as shell:  # doctest: +SKIP
        ...     shell.run("fts101", "list_processes").stdout
    """

    def __init__(self, site: Site, pool: SshPool | None = None) -> None:
        self.site = site
        self.pool = pool if pool is not None else SshPool(ssh_settings(site))
        #: the hosts this run found not answering, and why: no step connects to them again
        self.unreachable: dict[str, str] = {}

    def mark_unreachable(self, host: str, why: str) -> None:
        """Record that `host` does not answer (a probe found its port silent): every later
        command for it in this run fails at once with `HostUnreachable` instead of waiting for
        a connect timeout, and is not retried."""
        self.unreachable[host] = why
        self.pool.drop(host)

    def _reachable(self, host: str, what: str) -> None:
        why = self.unreachable.get(host)
        if why is not None:
            raise HostUnreachable(
                f"{host}: not tried ({why}, recorded by this run)", host=host, command=what
            )

    def run(
        self,
        host: str,
        command: str,
        *,
        timeout: float | None = None,
        stdin: str | None = None,
        **values: str,
    ) -> CommandResult:
        """Run a command-profile command (`Commands.argv(command, **values)`) on a host."""
        argv = self.site.commands.argv(command, **values)
        self._reachable(host, command)
        return self.pool.run(endpoint(self.site, host), argv, timeout=timeout, stdin=stdin)

    def run_argv(
        self,
        host: str,
        argv: list[str],
        *,
        timeout: float | None = None,
        stdin: str | None = None,
    ) -> CommandResult:
        """Run an argv (each word quoted) on a host."""
        self._reachable(host, argv[0] if argv else "")
        return self.pool.run(endpoint(self.site, host), argv, timeout=timeout, stdin=stdin)

    def run_many(
        self,
        host: str,
        commands: Sequence[tuple[str, Mapping[str, str]] | list[str]],
        *,
        timeout: float | None = None,
    ) -> list[CommandResult]:
        """Run read-only commands on a host in one round trip (`SshPool.run_many`): each a
        command-profile name with its values, or an argv."""
        argvs = [
            c if isinstance(c, list) else self.site.commands.argv(c[0], **c[1]) for c in commands
        ]
        self._reachable(host, "read")
        return self.pool.run_many(endpoint(self.site, host), argvs, timeout=timeout)

    def drop(self, host: str) -> None:
        """Forget the host's connection (a hung one): the next command opens a new one."""
        self.pool.drop(host)

    def close(self) -> None:
        """Close every connection of this shell."""
        self.pool.close()

    def __enter__(self) -> SiteShell:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SiteShell({self.site.site})"


def retry_if_transient(_task: Any, _task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry only when the task failed with a transient SSH error."""
    try:
        state.result(raise_on_failure=True)
    except TransientSshError:
        return True
    except SshError:
        return False
    except Exception:  # noqa: BLE001 - anything else is not ours to retry
        return False
    return False


#: The one retry rule of every verb run as a Prefect task: transient SSH errors only, twice, 2 s
#: apart. A permanent error (host key, authentication, a failed post-condition) ends the task at
#: once with its message.
TRANSIENT_RETRIES: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": 2,
    "retry_condition_fn": retry_if_transient,
}
