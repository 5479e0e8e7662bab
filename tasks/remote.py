"""The site's hosts as SSH endpoints, one connection pool per site in a process, and retry rules.

Contract:
    * `pool_for(site)` returns the same `SshPool` for the same site within a process, so a flow
      run reuses one connection per host across its tasks; `close_pools()` closes them all.
    * `run(site, host, argv)` runs one command built from a command-profile template; the values
      are validated names and every word is shell-quoted.
    * Only transient SSH errors are retried (`retry_if_transient` for Prefect's
      `retry_condition_fn`); permanent ones (host key, authentication, a command that failed)
      end the task at once with their message.
"""

from __future__ import annotations

import threading
from typing import Any

from config.site import Site
from tasks.adapters.ssh import (
    CommandResult,
    SshEndpoint,
    SshError,
    SshPool,
    SshSettings,
    TransientSshError,
)

_pools: dict[tuple[str, SshSettings], SshPool] = {}
_lock = threading.Lock()


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


def pool_for(site: Site) -> SshPool:
    """The process-wide connection pool of a site."""
    key = (site.site, ssh_settings(site))
    with _lock:
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = SshPool(key[1])
        return pool


def close_pools() -> None:
    """Close every pooled connection (end of a flow run, tests)."""
    with _lock:
        pools = list(_pools.values())
        _pools.clear()
    for p in pools:
        p.close()


def run(
    site: Site,
    host: str,
    command: str,
    *,
    timeout: float | None = None,
    stdin: str | None = None,
    **values: str,
) -> CommandResult:
    """Run a command-profile command (`Commands.argv(command, **values)`) on a host."""
    argv = site.commands.argv(command, **values)
    return pool_for(site).run(endpoint(site, host), argv, timeout=timeout, stdin=stdin)


def run_argv(
    site: Site,
    host: str,
    argv: list[str],
    *,
    timeout: float | None = None,
    stdin: str | None = None,
) -> CommandResult:
    """Run an argv (each word quoted) on a host."""
    return pool_for(site).run(endpoint(site, host), argv, timeout=timeout, stdin=stdin)


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
